"""Artifacts are content-addressed: an unchanged input reuses its file, any changed input (a code,
the exporter's version, a converter's version, the weights) never does, and a corrupted file is
caught by its hash -- in the cache before any trial, and on the device by the runner."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_bn

import harness.jobs as jobs
from devices.runner import RUNNER_PATH
from devices.transports import LocalTransport
from devices.trial import TrialSpec, run_trial
from harness.cache import Cache, CorruptEntry
from harness.detectors import DETECTORS
from harness.export import EXPORTERS
from harness.export.base import sha256_file
from harness.export.onnx_export import codes_match, read_onnx_codes
from harness.plan import ExportJob, QuantJob
from harness.suite import Suite
from quant import QuantParams, QuantResult, build_sim, quantize

FMT = "onnx-qdq"


class Deployer:
    """The pipeline's export step (harness.jobs._export) with a suite, a cache and a log."""

    def __init__(self, tmp_path: Path):
        self.suite = Suite.model_validate({
            "name": "identity",
            "store": str(tmp_path / "results.db"),
            "cache_dir": str(tmp_path / "cache"),
            "datasets": [{"name": "synthetic"}],
            "detectors": [{"name": "tiny-dsnet"}],
            "methods": [{"name": "minmax", "bits": ["W8A8"]}],
            "formats": [FMT],
        })
        self.cache = Cache(self.suite.cache_dir)
        self.messages: list[str] = []
        self.tmp = tmp_path

    def ref(self, x: torch.Tensor, y: torch.Tensor, key: str = "weights-a") -> jobs.DetectorRef:
        calib = self.tmp / "calib.npz"
        np.savez(calib, x=x.numpy(), y=y.numpy())
        info = DETECTORS["tiny-dsnet"]
        return jobs.DetectorRef(self.suite.detectors[0], self.tmp / "unused.pt", False, key, 64, info.mean, info.std,
                                calib, "calib-manifest")

    def export(self, ref: jobs.DetectorRef, res: QuantResult):
        return jobs._export(self.suite, ref, res, JOB, self.cache, self.messages.append)


@pytest.fixture
def runner(tmp_path):
    return Deployer(tmp_path)


@pytest.fixture
def calls(monkeypatch):
    """Counts real exports (the exporter itself runs unchanged)."""
    count = {"n": 0}
    info = EXPORTERS[FMT]

    def counting(req):
        count["n"] += 1
        return info.fn(req)

    monkeypatch.setitem(EXPORTERS, FMT, replace(info, fn=counting))
    return count


@pytest.fixture(scope="module")
def quantized(calib_batch):
    x, y = calib_batch
    torch.manual_seed(1)
    model = randomize_bn(DETECTORS["tiny-dsnet"].build(), seed=1)
    return model, quantize(model, "minmax", "W8A8", x, y)


JOB = ExportJob(QuantJob("tiny-dsnet", "minmax", "minmax", "W8A8"), FMT)


def _with_changed_code(res: QuantResult) -> QuantResult:
    params = QuantParams.from_bytes(res.params.to_bytes())
    name = next(iter(params.weights))
    codes = params.weights[name].codes
    codes.flat[0] = codes.flat[0] - 1 if codes.flat[0] > -127 else codes.flat[0] + 1
    return QuantResult(res.method, res.bits, res.folded, res.placement, build_sim(res.folded, res.placement, params), params, res.stats)


def test_unchanged_input_reuses_the_file(runner, calls, quantized, calib_batch):
    model, res = quantized
    ref = runner.ref(*calib_batch)
    a = runner.export(ref, res)
    mtime = a.path.stat().st_mtime_ns
    b = runner.export(ref, res)
    assert calls["n"] == 1
    assert b.path == a.path and b.sha256 == a.sha256 and b.info["cache_key"] == a.info["cache_key"]
    assert b.path.stat().st_mtime_ns == mtime and sha256_file(b.path) == a.sha256


def test_changed_inputs_never_reuse(runner, calls, quantized, calib_batch, monkeypatch):
    model, res = quantized
    x, y = calib_batch
    ref = runner.ref(x, y)
    base = runner.export(ref, res)
    keys = {base.info["cache_key"]}
    shas = {base.sha256}

    changed = _with_changed_code(res)  # one integer code differs
    art = runner.export(ref, changed)
    assert art.info["cache_key"] not in keys and art.sha256 not in shas
    assert codes_match(changed.params, read_onnx_codes(art.path))[0]
    assert not codes_match(res.params, read_onnx_codes(art.path))[0]
    keys.add(art.info["cache_key"])

    art = runner.export(runner.ref(x, y, key="weights-b"), res)  # other detector weights
    assert art.info["cache_key"] not in keys
    keys.add(art.info["cache_key"])

    monkeypatch.setattr(jobs, "EXPORT_CODE_VERSION", jobs.EXPORT_CODE_VERSION + 1)  # exporter version
    art = runner.export(ref, res)
    assert art.info["cache_key"] not in keys
    keys.add(art.info["cache_key"])

    real = jobs.tool_versions()
    monkeypatch.setattr(jobs, "tool_versions", lambda: {**real, "onnxruntime": real["onnxruntime"] + "+other"})
    art = runner.export(ref, res)  # converter version
    assert art.info["cache_key"] not in keys
    assert calls["n"] == 5  # every changed input exported afresh


def test_corrupted_cache_entry_is_caught_and_re_exported(runner, calls, quantized, calib_batch):
    model, res = quantized
    ref = runner.ref(*calib_batch)
    good = runner.export(ref, res)
    data = bytearray(good.path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    good.path.write_bytes(bytes(data))
    with pytest.raises(CorruptEntry, match="sha256"):
        runner.cache.lookup("artifacts", good.info["cache_key"])
    again = runner.export(ref, res)
    assert calls["n"] == 2 and any("re-exporting" in m for m in runner.messages)
    assert sha256_file(again.path) == again.sha256
    assert again.sha256 == good.sha256  # the export is deterministic: the same bytes come back
    assert runner.cache.lookup("artifacts", good.info["cache_key"]) is not None


def _artifact_and_inputs(runner, quantized, calib_batch, tmp_path) -> tuple[Path, str, Path]:
    model, res = quantized
    art = runner.export(runner.ref(*calib_batch), res)
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, calib_batch[0][:4].numpy())
    return art.path, art.sha256, inputs


def test_tampered_model_never_runs_in_a_trial(runner, quantized, calib_batch, tmp_path):
    path, sha, inputs = _artifact_and_inputs(runner, quantized, calib_batch, tmp_path)
    tampered = tmp_path / "tampered.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    tampered.write_bytes(bytes(data))
    transport = LocalTransport(workdir=str(tmp_path / "device"))
    spec = TrialSpec(model=tampered, inputs=inputs, runtime="onnxruntime-cpu", model_sha256=sha, warmup=1, runs=2, timeout_s=120)
    outcome = run_trial(transport, spec)
    assert not outcome.ok and "checksum" in outcome.error and "scores" not in outcome.result
    assert not list((tmp_path / "device").glob("model-*"))  # never landed under its name
    # the untampered file runs
    ok = run_trial(transport, replace(spec, model=path))
    assert ok.ok, ok.error
    assert len(ok.result["scores"]) == 4 and ok.result["model_sha256"] == sha


def test_runner_refuses_a_model_whose_sha_differs(runner, quantized, calib_batch, tmp_path):
    """A file that changed on the device after it was pushed: the runner checks it itself."""
    path, sha, inputs = _artifact_and_inputs(runner, quantized, calib_batch, tmp_path)
    transport = LocalTransport(workdir=str(tmp_path / "device"))
    transport.put(RUNNER_PATH, "runner.py")
    transport.put(inputs, "inputs.npy")
    dev_model = Path(transport.put(path, "model.onnx", sha256=sha))
    data = bytearray(dev_model.read_bytes())
    data[-10] ^= 0xFF
    dev_model.write_bytes(bytes(data))
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"model": "model.onnx", "inputs": "inputs.npy", "out": "result.json",
                                    "runtime": "onnxruntime-cpu", "runs": 2, "warmup": 1, "expect_sha256": sha}))
    transport.put(settings, "settings.json")
    res = transport.exec(["python3", "runner.py", "--settings", "settings.json"], timeout=120)
    result = json.loads((tmp_path / "device" / "result.json").read_text())
    assert res.rc != 0 and result["status"] == "error"
    assert "sha256 mismatch" in result["error"] and "refusing" in result["error"] and "scores" not in result
