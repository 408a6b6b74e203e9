"""Trials: what runs next to a device (no torch, so a farm host needs only devices/), and
turning a runner result into a store row (on the controller)."""

from __future__ import annotations

import atexit
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devices.inventory import ADBDevice, LocalDevice, SSHDevice
from devices.transports import open_transport
from devices.trial import TrialOutcome, TrialSpec, run_trial

_transports: dict[str, object] = {}
_lock = threading.Lock()


@dataclass
class TrialTask:
    """Everything a device-side worker needs for one trial (plain, picklable)."""

    key: str  # TrialJob.key
    device: LocalDevice | SSHDevice | ADBDevice
    spec: TrialSpec


def _transport(device):
    """One open transport per device per process: SSH/ADB sessions are reused across trials."""
    ident = f"{device.name}:{device.model_dump_json()}"
    with _lock:
        t = _transports.get(ident)
        if t is None:
            t = _transports[ident] = open_transport(device)
        return t


def drop_transport(device) -> None:
    ident = f"{device.name}:{device.model_dump_json()}"
    with _lock:
        t = _transports.pop(ident, None)
    if t is not None:
        try:
            t.close()
        except Exception:  # closing a broken session must not mask the trial's own error
            pass


@atexit.register
def _close_all() -> None:
    for t in list(_transports.values()):
        try:
            t.close()
        except Exception:
            pass
    _transports.clear()


def execute_trial(task: TrialTask) -> TrialOutcome:
    """Run one trial; a transport that failed is dropped so the next trial reconnects."""
    try:
        outcome = run_trial(_transport(task.device), task.spec)
    except Exception as exc:  # e.g. the device is unreachable: record, never raise
        outcome = TrialOutcome(False, error=f"{type(exc).__name__}: {exc}")
    if not outcome.ok:
        drop_transport(task.device)
    return outcome


def execute_trial_with_files(task: TrialTask, model_bytes: bytes, inputs_bytes: bytes, workdir: str) -> TrialOutcome:
    """Ray variant: the artifact and inputs arrive as bytes (top-level arguments, so Ray resolves
    them from the object store) and are written next to the worker, content-addressed."""
    import hashlib

    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, data in (("model", model_bytes), ("inputs", inputs_bytes)):
        digest = hashlib.sha256(data).hexdigest()
        suffix = task.spec.model.suffix if role == "model" else ".npy"
        p = root / f"{role}-{digest[:16]}{suffix}"
        if not p.is_file():
            tmp = p.with_suffix(p.suffix + f".{time.time_ns()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(p)
        paths[role] = p
    spec = TrialSpec(**{**task.spec.__dict__, "model": paths["model"], "inputs": paths["inputs"]})
    return execute_trial(TrialTask(task.key, task.device, spec))


def latency_values(result: dict, throttle_drift: float) -> dict:
    lat = result.get("latency", {})
    drift = lat.get("drift")
    return {
        "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"), "mean_ms": lat.get("mean"),
        "std_ms": lat.get("std"), "fps": lat.get("fps"), "n_runs": lat.get("n"),
        "throttled": int(bool(drift and drift > throttle_drift)),
    }


def scores_of(result: dict) -> np.ndarray:
    return np.asarray(result["scores"], dtype=np.float64)
