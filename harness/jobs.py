"""The units of work of a run, as plain functions of plain (picklable) values.

`deploy` (quantize + simulate + export + host parity for one QuantJob) runs in a worker
process or a Ray task; its inputs are files in the cache and small dataclasses, its output a
DeployResult. Everything heavy is cached by content hash, so a re-run or a resumed run only
re-does what is missing.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from devices.runner.defakeq_runner import open_model, score_all, softmax_fake
from quant import METHODS, QuantParams, QuantResult, build_sim, fold_bn, place, quantize

from .cache import (
    EXPORT_CODE_VERSION,
    QUANT_CODE_VERSION,
    Cache,
    key_of,
    tool_versions,
)
from .detectors import DETECTORS, load_deepfakebench_checkpoint
from .export import EXPORTERS, Artifact, CannotRepresent, ExportRequest, exporter_identity
from .metrics import parity
from .plan import ExportJob, QuantJob
from .suite import DetectorEntry, Suite
from .train import predict_logits

log = logging.getLogger("defakeq")


@dataclass
class EvalMeta:
    """One evaluation set: labels and ids in memory, frames as normalised .npy per detector."""

    name: str
    labels: np.ndarray
    video_ids: list[str]
    manifest: str


@dataclass
class DetectorRef:
    entry: DetectorEntry
    weights: Path  # state dict (trained, in the cache) or a DeepfakeBench checkpoint
    deepfakebench: bool
    key: str  # identity of the weights
    input_size: int
    mean: tuple
    std: tuple
    calib: Path  # .npz with x (normalised float32 NCHW) and y
    calib_manifest: str
    inputs: dict[str, Path] = field(default_factory=dict)  # dataset -> normalised eval frames (.npy)
    fp32_scores: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ExportOutcome:
    job: ExportJob
    status: str  # ok | simulated-only | failed
    reason: str | None = None
    artifact: Artifact | None = None
    host_parity: dict[str, dict] = field(default_factory=dict)


@dataclass
class DeployResult:
    qjob: QuantJob
    status: str  # ok | failed (quantization failed: every export fails with it)
    reason: str | None = None
    stats: dict = field(default_factory=dict)
    sim_scores: dict[str, np.ndarray] = field(default_factory=dict)
    exports: list[ExportOutcome] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def build_detector(ref: DetectorRef) -> torch.nn.Module:
    model = DETECTORS[ref.entry.name].build(variant=ref.entry.variant, **ref.entry.options)
    if ref.deepfakebench:
        load_deepfakebench_checkpoint(model, ref.weights)
    else:
        model.load_state_dict(torch.load(ref.weights, map_location="cpu", weights_only=True))
    return model.eval()


def _options(qjob: QuantJob) -> dict:
    import ast

    return {k: ast.literal_eval(v) for k, v in qjob.options}


def _quantize(suite: Suite, ref: DetectorRef, model, qjob: QuantJob, cache: Cache, say) -> QuantResult:
    z = np.load(ref.calib)
    calib_x, calib_y = torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
    if not METHODS[qjob.method].quantizes:
        return quantize(model, qjob.method, None, calib_x, calib_y, seed=suite.seed)
    options = _options(qjob)
    key = key_of({
        "weights": ref.key, "method": qjob.method, "bits": qjob.bits, "options": options, "calib": ref.calib_manifest,
        "n": len(calib_x), "seed": suite.seed, "first_last": suite.calibration.first_last_bits, "v": QUANT_CODE_VERSION,
    })
    rec = cache.lookup_or_evict("quant", key, say)
    if rec is not None:
        params = QuantParams.from_bytes((cache.entry("quant", key) / "params.npz").read_bytes())
        folded = fold_bn(model)
        placement = place(folded)
        say(f"{qjob.key}: cached quantization ({rec['stats'].get('wall_s', 0):.1f} s when computed)")
        return QuantResult(qjob.method, qjob.bits, folded, placement, build_sim(folded, placement, params), params,
                           {**rec["stats"], "cached": True})
    res = quantize(model, qjob.method, qjob.bits, calib_x, calib_y, options=options, seed=suite.seed,
                   first_last_bits=suite.calibration.first_last_bits, log=say)
    tmp = Path(suite.cache_dir) / f".params-{key}-{os.getpid()}.npz"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(res.params.to_bytes())
    cache.store("quant", key, {"params.npz": tmp}, {"stats": res.stats, "job": qjob.key})
    tmp.unlink()
    say(f"{qjob.key}: quantized in {res.stats['wall_s']:.1f} s, {res.stats['avg_weight_bits']:.2f} bits/weight, "
        f"{res.stats['packed_bytes']} packed bytes")
    return res


def _export(suite: Suite, ref: DetectorRef, qres: QuantResult, job: ExportJob, cache: Cache, say) -> Artifact:
    ident = qres.params.code_hash() if qres.params else ref.key
    key = key_of({"model": ident, "weights": ref.key, "format": job.format, "exporter": exporter_identity(job.format),
                  "size": ref.input_size, "tools": tool_versions(), "v": EXPORT_CODE_VERSION})
    rec = cache.lookup_or_evict("artifacts", key, say, "re-exporting")
    if rec is None:
        folder = Path(suite.cache_dir) / f".export-{key}-{os.getpid()}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            calib_x = torch.from_numpy(np.load(ref.calib)["x"])
            t = time.perf_counter()
            art = EXPORTERS[job.format].fn(ExportRequest(qres, calib_x.numpy(), calib_x[:8], ref.input_size, folder / "model"))
            record = {**art.record(), "export_s": time.perf_counter() - t}
            rec = cache.store("artifacts", key, {art.path.name: art.path}, record)
        finally:
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
        say(f"{job.key}: exported in {rec['export_s']:.1f} s ({rec['size_bytes']} bytes, codes exact: {rec['codes_exact']})")
    path = cache.entry("artifacts", key) / Path(rec["path"]).name
    return Artifact(path, rec["format"], rec["family"], rec["sha256"], rec["size_bytes"], rec.get("packed_bytes"),
                    rec.get("codes_exact"), rec.get("op_counts", {}), rec.get("unmatched", []), {**rec.get("info", {}), "cache_key": key})


def _host_parity(suite: Suite, ref: DetectorRef, out: ExportOutcome, sim_scores: dict, evals: dict[str, EvalMeta], say) -> None:
    """Run the artifact on this host's runtime and compare with the simulation."""
    art = out.artifact
    model = open_model(str(art.path), "onnxruntime-cpu" if art.family == "onnx" else "litert", 1)
    tol = suite.parity
    for name, ev in evals.items():
        scores = softmax_fake(score_all(model, np.load(ref.inputs[name]), 64))
        par = parity(sim_scores[name], scores, ev.labels, tol.quantile)
        out.host_parity[name] = par
        bad = []
        if par["parity_quantile_abs"] > tol.max_abs:
            what = "max" if tol.quantile == 1 else f"{tol.quantile:g} quantile of"
            bad.append(f"{what} |p_sim - p_deployed| {par['parity_quantile_abs']:.4f} > {tol.max_abs}")
        if abs(par["sim_auc"] - par["deployed_auc"]) > tol.auc:
            bad.append(f"AUC sim {par['sim_auc']:.4f} vs deployed {par['deployed_auc']:.4f} differ by more than {tol.auc}")
        if par["decision_agreement"] < tol.agreement_min:
            bad.append(f"decision agreement {par['decision_agreement']:.3f} < {tol.agreement_min}")
        if art.codes_exact is False:
            bad.append("integer codes read back from the file differ from the quantizer's")
        if bad and out.status == "ok":
            out.status, out.reason = "failed", f"parity ({name}): " + "; ".join(bad)
            say(f"{out.job.key}: {out.reason}")


def deploy(suite: Suite, ref: DetectorRef, qjob: QuantJob, exports: list[ExportJob], evals: dict[str, EvalMeta],
           threads: int = 1) -> DeployResult:
    """Quantize one (detector, method, bits), simulate it on the eval sets, export every format,
    and check each artifact against the simulation on this host. Never raises: failures are
    recorded in the result (one broken method must not sink the night)."""
    if threads:
        torch.set_num_threads(threads)  # fixed thread count: same float sums, same codes
    messages: list[str] = []

    def say(msg: str) -> None:
        messages.append(msg)
        log.info(msg)

    cache = Cache(suite.cache_dir)
    try:
        model = build_detector(ref)
        qres = _quantize(suite, ref, model, qjob, cache, say)
    except Exception as exc:
        reason = f"quantization failed: {type(exc).__name__}: {exc}"
        log.debug(traceback.format_exc())
        say(f"{qjob.key}: {reason}")
        return DeployResult(qjob, "failed", reason, exports=[ExportOutcome(e, "failed", reason) for e in exports], log=messages)
    sim_scores = {name: softmax_fake(predict_logits(qres.sim, np.load(ref.inputs[name]))) for name in evals}
    result = DeployResult(qjob, "ok", None, dict(qres.stats), sim_scores, log=messages)
    for ejob in exports:
        try:
            art = _export(suite, ref, qres, ejob, cache, say)
        except CannotRepresent as exc:
            result.exports.append(ExportOutcome(ejob, "simulated-only", str(exc)))
            say(f"{ejob.key}: simulated-only ({exc})")
            continue
        except Exception as exc:
            reason = f"export failed: {type(exc).__name__}: {exc}"
            log.debug(traceback.format_exc())
            say(f"{ejob.key}: {reason}")
            result.exports.append(ExportOutcome(ejob, "failed", reason))
            continue
        out = ExportOutcome(ejob, "ok", None, art)
        try:
            _host_parity(suite, ref, out, sim_scores, evals, say)
        except Exception as exc:
            out.status, out.reason = "failed", f"host runtime failed: {type(exc).__name__}: {exc}"
            say(f"{ejob.key}: {out.reason}")
        result.exports.append(out)
    return result
