"""One trial on one device: push runner + artifact + inputs, run, pull the JSON result."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .runner import RUNNER_PATH
from .transports.base import Transport, TransportError, sha256_file


@dataclass
class TrialSpec:
    model: Path
    inputs: Path  # .npy float32 [N, C, H, W], already normalised
    runtime: str
    model_sha256: str = ""
    threads: int = 0
    warmup: int = 10
    runs: int = 100
    min_secs: float = 0.0
    max_secs: float = 600.0
    accuracy: bool = True
    batch: int = 1
    cooldown_s: float = 0.0
    cooldown_temp_c: float | None = None
    cooldown_max_s: float = 120.0
    timeout_s: float = 900.0

    def runner_settings(self, model_name: str, inputs_name: str, out_name: str) -> dict:
        return {
            "model": model_name,
            "inputs": inputs_name,
            "out": out_name,
            "runtime": self.runtime,
            "threads": self.threads,
            "warmup": self.warmup,
            "runs": self.runs,
            "min_secs": self.min_secs,
            "max_secs": self.max_secs,
            "accuracy": self.accuracy,
            "batch": self.batch,
            "expect_sha256": self.model_sha256 or None,
            "cooldown_s": self.cooldown_s,
            "cooldown_temp_c": self.cooldown_temp_c,
            "cooldown_max_s": self.cooldown_max_s,
        }


@dataclass
class TrialOutcome:
    ok: bool
    result: dict = field(default_factory=dict)
    error: str | None = None
    timings: dict = field(default_factory=dict)  # push_s, exec_s, pull_s, overhead_s

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _push(transport: Transport, local: Path, name: str, sha: str) -> bool:
    """Push `local` unless the device already holds the same content; True if it was sent."""
    if transport.exists(name, sha):
        return False
    transport.put(local, name, sha256=sha)
    return True


def run_trial(transport: Transport, spec: TrialSpec) -> TrialOutcome:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        runner_sha = sha256_file(RUNNER_PATH)
        model_sha = spec.model_sha256 or sha256_file(spec.model)
        inputs_sha = sha256_file(spec.inputs)
        # Content-addressed names: a file already on the device is never sent twice.
        runner_name = f"defakeq_runner-{runner_sha[:12]}.py"
        model_name = f"model-{model_sha[:16]}{spec.model.suffix}"
        inputs_name = f"inputs-{inputs_sha[:16]}.npy"
        _push(transport, RUNNER_PATH, runner_name, runner_sha)
        _push(transport, spec.model, model_name, model_sha)
        _push(transport, spec.inputs, inputs_name, inputs_sha)
        tag = uuid.uuid4().hex[:12]
        settings_name, out_name = f"settings-{tag}.json", f"result-{tag}.json"
        settings = spec.runner_settings(model_name, inputs_name, out_name)
        settings["expect_sha256"] = model_sha
        with tempfile.TemporaryDirectory() as tmp:
            sfile = Path(tmp) / settings_name
            sfile.write_text(json.dumps(settings))
            transport.put(sfile, settings_name)
            timings["push_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            res = transport.exec(["python3", runner_name, "--settings", settings_name], timeout=spec.timeout_s)
            timings["exec_s"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            local_out = Path(tmp) / out_name
            try:
                transport.get(out_name, local_out)
                result = json.loads(local_out.read_text())
            except (TransportError, ValueError) as exc:
                return TrialOutcome(
                    False,
                    error=f"no result from the runner (exit {res.rc}): {exc}; stderr: {res.stderr.strip()[-500:]}",
                    timings=timings,
                )
            timings["pull_s"] = time.perf_counter() - t2
        try:
            transport.exec(["rm", "-f", settings_name, out_name], timeout=30)
        except TransportError:
            pass  # leftovers in the work folder are harmless
    except TransportError as exc:
        return TrialOutcome(False, error=str(exc), timings=timings)
    timings["overhead_s"] = time.perf_counter() - t0 - result.get("accuracy_s", 0.0) - result.get("latency", {}).get("total_s", 0.0)
    if res.rc != 0 or result.get("status") != "ok":
        return TrialOutcome(False, result, error=result.get("error") or f"runner exited {res.rc}: {res.stderr.strip()[-500:]}", timings=timings)
    return TrialOutcome(True, result, timings=timings)
