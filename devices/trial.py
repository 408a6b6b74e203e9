"""One trial on one device: files in, the runner (or benchmark_model) run, one JSON result out.

`run_device_trial(device, transport, spec)` is the one entry point for every device; it holds
the device's lock (devices/lock.py) for the whole trial and dispatches:

* local, SSH boards, and ONNX runtimes on a phone with Python: the single-file runner
  (devices/runner/defakeq_runner.py) scores the frames and times the runs;
* TFLite on an ADB device: latency from the phone's stock ``benchmark_model``, scores from the
  runner where the phone has Python (inventory ``runner: python``), else from one
  benchmark_model run per frame (``--input_layer_value_files`` / ``--output_filepath``).

`run_trial(transport, spec)` is the same for a transport made by ``open_transport`` (which
attaches its inventory entry) or by hand.

Round trips are what a trial costs over a network (and a login shell that sources an rc file
costs 0.1-0.4 s per command), so a trial is ONE command in the steady state: a small POSIX sh
launcher checks that the content-addressed files are in the work folder and execs the runner,
whose settings travel on its command line and whose JSON comes back on stdout between marker
lines: no settings file to push, no result file to pull, nothing to delete. Only when the
launcher reports files missing are they pushed (once per device: names are content hashes)
and the launcher run again. Every file is verified by sha256 ON the device before it is used
(the runner hashes the model and the inputs before opening them; for benchmark_model the
launcher runs sha256sum); a mismatch fails the trial, deletes the bad copy so that the next
trial sends it again, and never runs it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import benchmark_model as bm
from .inventory import RUNTIMES, runtime_format
from .lock import DeviceBusy, device_lock
from .runner import RUNNER_PATH
from .runner.defakeq_runner import RESULT_BEGIN, RESULT_END
from .transports.base import ExecResult, Transport, TransportError, sha256_file

log = logging.getLogger(__name__)

MISSING_MARK = "@@DEFAKEQ_MISSING@@"
MISMATCH_MARK = "@@DEFAKEQ_MISMATCH@@"
RC_MISSING, RC_MISMATCH = 45, 46

# Runs as `sh -c LAUNCHER defakeq-launch N name1 sha1 ... nameN shaN cmd...` in the work folder.
# A sha of "-" means "the command verifies it" (the runner does, in Python); otherwise the file
# is hashed here and a mismatching copy is deleted. POSIX sh: BusyBox, toybox/mksh, dash, bash.
LAUNCHER = (
    "n=$1; shift; rc=0\n"
    'while [ "$n" -gt 0 ]; do\n'
    "  f=$1; want=$2; shift 2; n=$((n - 1))\n"
    '  if [ ! -f "$f" ]; then printf "%s%s\\n" "'
    + MISSING_MARK
    + '" "$f"; [ "$rc" = 0 ] && rc=45\n'
    '  elif [ "$want" != - ]; then\n'
    '    h=$(sha256sum < "$f") || exit 47; h=${h%% *}\n'
    '    if [ "$h" != "$want" ]; then\n'
    '      rm -f -- "$f"; printf "%s%s %s\\n" "' + MISMATCH_MARK + '" "$f" "$h"; rc=46\n'
    "    fi\n"
    "  fi\n"
    "done\n"
    '[ "$rc" = 0 ] || exit "$rc"\n'
    'exec "$@"\n'
)

# Runtimes the Python runner can open (the rest exist on Android only through benchmark_model).
PYTHON_RUNTIMES = frozenset(RUNTIMES) - {"litert-nnapi"}
ANDROID_PYTHON_LITERT = {"litert", "litert-xnnpack"}  # no GPU delegate .so for Python on phones


@dataclass
class TrialSpec:
    """What to run and the FPS protocol: warmup runs, then at least `runs` timed runs AND at
    least `min_secs` (capped by `max_secs`); cooldown first (a fixed wait, and/or until the
    hottest zone is at most `cooldown_temp_c`, for at most `cooldown_max_s`)."""

    model: Path
    inputs: Path  # .npy float32 [N, C, H, W], already normalised
    runtime: str
    model_sha256: str = ""
    threads: int = 0  # 0: the device's inventory `threads`, else the runtime's default
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
    cpu_affinity: list[int] | None = None  # None: the device's inventory `cpu_affinity`
    lock_timeout_s: float | None = None  # wait for a busy device; None: timeout_s

    def runner_settings(self, model_name: str, inputs_name: str, out_name: str = "-") -> dict:
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
    timings: dict = field(default_factory=dict)  # push_s, exec_s, pull_s, overhead_s, execs

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class TrialFailed(Exception):
    """A trial that cannot produce a result; the message is the recorded reason."""


# --- entry points -----------------------------------------------------------------------------
def run_trial(transport: Transport, spec: TrialSpec) -> TrialOutcome:
    """`run_device_trial` with the inventory entry `open_transport` attached to the transport
    (or one inferred from a transport made by hand)."""
    return run_device_trial(getattr(transport, "device", None), transport, spec)


def run_device_trial(device, transport: Transport, spec: TrialSpec) -> TrialOutcome:
    """Run one trial on `device` through `transport`; failures are outcomes, never exceptions."""
    device = device if device is not None else _device_of(transport)
    wait = spec.lock_timeout_s if spec.lock_timeout_s is not None else spec.timeout_s
    t0 = time.perf_counter()
    try:
        with device_lock(device, wait, what=f"{spec.runtime} {Path(spec.model).name}"):
            waited = time.perf_counter() - t0
            t = time.perf_counter()
            connect = getattr(transport, "connect", None)
            if callable(connect):  # (re)connect now, so that no later figure includes it
                try:
                    connect()
                except TransportError as exc:
                    return TrialOutcome(
                        False, error=str(exc), timings={"lock_wait_s": round(waited, 4)}
                    )
            connect_s = time.perf_counter() - t
            try:
                if runtime_format(spec.runtime) == "tflite" and device.transport == "adb":
                    outcome = _android_tflite_trial(device, transport, spec)
                else:
                    outcome = _runner_trial_with_env(device, transport, spec)
            except Exception as exc:  # one odd trial must not take the device's queue down
                log.exception("%s: trial failed unexpectedly", device.name)
                outcome = TrialOutcome(False, error=f"{type(exc).__name__}: {exc}")
    except DeviceBusy as exc:
        return TrialOutcome(
            False, error=str(exc), timings={"lock_wait_s": time.perf_counter() - t0}
        )
    outcome.timings["lock_wait_s"] = round(waited, 4)
    outcome.timings["connect_s"] = round(connect_s, 4)
    if "overhead_s" in outcome.timings:
        outcome.timings["overhead_s"] += connect_s  # a trial's cost includes reaching the device
    return outcome


def _device_of(transport) -> Any:
    """A stand-in inventory entry for a transport made without the inventory."""
    kind = {"SSHTransport": "ssh", "ADBTransport": "adb"}.get(type(transport).__name__, "local")
    return SimpleNamespace(
        name=transport.name,
        transport=kind,
        address=getattr(transport, "address", None),
        user=getattr(transport, "user", None),
        port=getattr(transport, "port", None),
        threads=0,
        cpu_affinity=None,
        runtimes=None,
        runner="python",
        python=getattr(transport, "python", "python3"),
        benchmark_model="/data/local/tmp/benchmark_model",
    )


# --- the launcher ------------------------------------------------------------------------------
def launch_argv(
    files: list[tuple[str, str | None]], command: list[str], cpu_affinity: list[int] | None = None
) -> list[str]:
    """argv that checks `files` (name, sha256 or None) in the work folder, then execs `command`
    (pinned to `cpu_affinity` with taskset's hex mask: util-linux, BusyBox and toybox agree)."""
    if cpu_affinity:
        mask = 0
        for cpu in cpu_affinity:
            mask |= 1 << cpu
        command = ["taskset", format(mask, "x"), *command]
    args = [str(len(files))]
    for name, sha in files:
        args += [name, sha or "-"]
    return ["sh", "-c", LAUNCHER, "defakeq-launch", *args, *command]


def _marked(text: str, mark: str) -> list[str]:
    return [line[len(mark) :] for line in text.splitlines() if line.startswith(mark)]


def _launch(
    transport: Transport,
    files: dict[str, tuple[Path, str, str | None]],
    command: list[str],
    spec: TrialSpec,
    affinity: list[int] | None,
    timings: dict,
) -> ExecResult:
    """Run `command` once its files are in place, pushing the ones the device lacks.

    `files`: device name -> (local path, sha256, sha256 for the launcher to check or None)."""
    argv = launch_argv([(n, f[2]) for n, f in files.items()], command, affinity)
    pushed: list[str] = []
    t_push = 0.0
    for attempt in range(2):
        t = time.perf_counter()
        res = transport.exec(argv, timeout=spec.timeout_s)
        timings["execs"] = timings.get("execs", 0) + 1
        if res.rc == RC_MISMATCH or _marked(res.stdout, MISMATCH_MARK):
            bad = ", ".join(_marked(res.stdout, MISMATCH_MARK))
            raise TrialFailed(
                f"{transport.name}: sha256 mismatch on the device ({bad}); the copy "
                "was deleted and the trial not run"
            )
        if res.rc != RC_MISSING or not _marked(res.stdout, MISSING_MARK):
            timings["exec_s"] = res.seconds if res.seconds else time.perf_counter() - t
            timings["push_s"] = t_push
            timings["pushed"] = pushed
            return res
        t_push += time.perf_counter() - t
        if attempt:
            raise TrialFailed(
                f"{transport.name}: files still missing after pushing them: "
                f"{_marked(res.stdout, MISSING_MARK)}"
            )
        t = time.perf_counter()
        for name in _marked(res.stdout, MISSING_MARK):
            if name not in files:
                raise TrialFailed(f"{transport.name}: launcher reported an unknown file {name!r}")
            local, sha, _ = files[name]
            # The launcher or the runner hashes it on the device before use: one hash per push.
            transport.put(local, name, sha256=sha, verify=False)
            pushed.append(name)
        t_push += time.perf_counter() - t
    raise AssertionError("unreachable")


def parse_runner_output(res: ExecResult) -> dict:
    """The runner's JSON from between its marker lines; TrialFailed when there is none."""
    out = res.stdout
    begin = out.rfind(RESULT_BEGIN)
    end = out.find(RESULT_END, begin) if begin >= 0 else -1
    if begin < 0 or end < 0:
        raise TrialFailed(
            f"no result from the runner (exit {res.rc}): "
            f"{(res.stderr.strip() or out.strip())[-500:]}"
        )
    try:
        return json.loads(out[begin + len(RESULT_BEGIN) : end])
    except ValueError as exc:
        raise TrialFailed(f"the runner's result is not JSON (exit {res.rc}): {exc}") from None


# --- the Python runner -----------------------------------------------------------------------
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha(path: Path) -> str:
    """sha256 of a controller file, remembered while its size and mtime stay the same."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def _suffix(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", path.suffix)[:12]


def _python_of(device, transport) -> str:
    """The device's python as the transport maps it (local: this interpreter)."""
    return getattr(transport, "python", None) or getattr(device, "python", None) or "python3"


def run_runner(
    device, transport: Transport, spec: TrialSpec, timings: dict, overrides: dict | None = None
) -> dict:
    """Launch the Python runner for `spec` and return its JSON (status "error" included)."""
    model, inputs = Path(spec.model), Path(spec.inputs)
    for p, what in ((model, "model"), (inputs, "inputs")):
        if not p.is_file():
            raise TrialFailed(f"{what} file not found on the controller: {p}")
    runner_sha = _sha(RUNNER_PATH)
    model_sha = spec.model_sha256 or _sha(model)
    inputs_sha = _sha(inputs)
    # Content-addressed names: a file already on the device is never sent twice.
    runner_name = f"defakeq_runner-{runner_sha[:12]}.py"
    model_name = f"model-{model_sha[:16]}.{_suffix(model) or 'bin'}"
    inputs_name = f"inputs-{inputs_sha[:16]}.npy"
    settings = spec.runner_settings(model_name, inputs_name, "-")
    settings.update(
        threads=spec.threads or getattr(device, "threads", 0) or 0,
        expect_sha256=model_sha,
        expect_inputs_sha256=inputs_sha,
        evict_on_mismatch=True,
        **(overrides or {}),
    )
    command = [
        _python_of(device, transport),
        runner_name,
        "--settings-json",
        json.dumps(settings, separators=(",", ":")),
    ]
    files = {
        runner_name: (RUNNER_PATH, runner_sha, None),
        model_name: (model, model_sha, None),
        inputs_name: (inputs, inputs_sha, None),
    }
    affinity = (
        spec.cpu_affinity
        if spec.cpu_affinity is not None
        else getattr(device, "cpu_affinity", None)
    )
    res = _launch(transport, files, command, spec, affinity, timings)
    t = time.perf_counter()
    result = parse_runner_output(res)
    timings["pull_s"] = time.perf_counter() - t
    if result.get("status") != "ok" and res.rc != 3:
        result.setdefault("error", f"runner exited {res.rc}: {res.stderr.strip()[-500:]}")
    if result.get("status") == "ok" and res.rc != 0:
        raise TrialFailed(f"runner exited {res.rc} after an ok result: {res.stderr.strip()[-300:]}")
    return result


def _failed(result: dict, timings: dict, default: str) -> TrialOutcome:
    err = result.get("error") or default
    if result.get("error_kind") == "sha256_mismatch":
        err = f"artifact verification failed on the device: {err}"
    return TrialOutcome(False, result, error=err, timings=timings)


def _overhead(t0: float, result: dict) -> float:
    lat = result.get("latency") or {}
    return (
        time.perf_counter() - t0 - (result.get("accuracy_s") or 0.0) - (lat.get("total_s") or 0.0)
    )


def _runner_trial_with_env(device, transport: Transport, spec: TrialSpec) -> TrialOutcome:
    """The runner does accuracy and latency; a transport with Android facts adds them."""
    timings: dict[str, Any] = {}
    t0 = time.perf_counter()
    if device.transport == "adb" and getattr(device, "runner", "python") != "python":
        return TrialOutcome(
            False,
            error=(
                f"device {device.name}: runtime {spec.runtime} needs Python on the phone "
                "(inventory runner: python); benchmark_model runs TFLite only"
            ),
        )
    snap = getattr(transport, "snapshot", None)
    try:
        extra_env: dict[str, Any] = {}
        if callable(snap):
            extra_env = _android_prologue(transport)
            _controller_cooldown(transport, spec)
            extra_env["thermal_before"] = snap()
            # The runner cannot read the phone's thermal HAL: the controller's snapshots bracket
            # the whole run, so the runner's own cooldown is not repeated.
            result = run_runner(
                device, transport, spec, timings, {"cooldown_s": 0.0, "cooldown_temp_c": None}
            )
            extra_env["thermal_after"] = snap()
        else:
            result = run_runner(device, transport, spec, timings)
    except (TransportError, TrialFailed) as exc:
        return TrialOutcome(False, error=str(exc), timings=timings)
    env = result.setdefault("env", {})
    for key in ("thermal_before", "thermal_after"):
        if key in extra_env and key in env:
            env[f"runner_{key}"] = env[key]  # what the runner itself read (sysfs)
    env.update(extra_env)
    timings["overhead_s"] = _overhead(t0, result)
    if result.get("status") != "ok":
        return _failed(result, timings, "runner failed")
    return TrialOutcome(True, result, timings=timings)


# --- Android + TFLite: benchmark_model --------------------------------------------------------
def _android_prologue(transport) -> dict:
    facts = getattr(transport, "facts", None)
    return {"android": facts()} if callable(facts) else {}


def _controller_cooldown(transport, spec: TrialSpec) -> dict:
    """The FPS protocol's cooldown, from the controller: a fixed wait, then poll the device's
    temperatures until the hottest is at most `cooldown_temp_c` (for at most cooldown_max_s)."""
    waited = 0.0
    if spec.cooldown_s:
        time.sleep(spec.cooldown_s)
        waited += spec.cooldown_s
    snap = getattr(transport, "snapshot", None)
    if spec.cooldown_temp_c is not None and callable(snap):
        t0 = time.monotonic()
        while time.monotonic() - t0 < spec.cooldown_max_s:
            hottest = snap().get("max_temp_c")
            if hottest is None or hottest <= spec.cooldown_temp_c:
                break
            time.sleep(min(2.0, max(0.0, spec.cooldown_max_s - (time.monotonic() - t0))))
        waited += time.monotonic() - t0
    return {"waited_s": round(waited, 3)}


def _android_tflite_trial(device, transport: Transport, spec: TrialSpec) -> TrialOutcome:
    timings: dict[str, Any] = {}
    t0 = time.perf_counter()
    binary = getattr(device, "benchmark_model", None) or "/data/local/tmp/benchmark_model"
    model = Path(spec.model)
    result: dict[str, Any] = {
        "status": "ok",
        "runner": "benchmark_model",
        "runtime": spec.runtime,
        "env": {},
    }
    try:
        if spec.runtime not in bm.RUNTIME_FLAGS:
            raise TrialFailed(
                f"benchmark_model cannot run {spec.runtime!r}; allowed: {sorted(bm.RUNTIME_FLAGS)}"
            )
        if model.suffix != ".tflite" or not model.is_file():
            raise TrialFailed(f"{model}: not an existing .tflite file")
        model_sha = spec.model_sha256 or _sha(model)
        result["model_sha256"] = model_sha
        env = result["env"]
        env.update(_android_prologue(transport))
        probe = transport.exec(
            ["sh", "-c", 'test -x "$1" && sha256sum < "$1"', "probe", binary], timeout=60
        )
        timings["execs"] = 1
        if probe.rc != 0 or not probe.stdout.split():
            raise TrialFailed(
                f"{transport.name}: no executable benchmark_model at {binary} on the "
                "device; push the prebuilt android_aarch64_benchmark_model there "
                "(inventory key: benchmark_model)"
            )
        tool_sha = probe.stdout.split()[0]
        result["runtime_version"] = f"benchmark_model sha256:{tool_sha[:16]}"
        env["benchmark_model"] = {"path": binary, "sha256": tool_sha}
        result["cooldown"] = _controller_cooldown(transport, spec)
        env["thermal_before"] = transport.snapshot()
        model_name = f"model-{model_sha[:16]}.tflite"
        threads = spec.threads or getattr(device, "threads", 0) or 0
        argv = bm.build_command(
            binary,
            model_name,
            spec.runtime,
            {
                "threads": threads,
                "warmup": spec.warmup,
                "warmup_min_secs": 0.0,
                "runs": max(1, spec.runs),
                "min_secs": spec.min_secs,
                "max_secs": spec.max_secs,
                "report_peak_memory": True,
            },
        )
        result["command"] = argv
        affinity = (
            spec.cpu_affinity
            if spec.cpu_affinity is not None
            else getattr(device, "cpu_affinity", None)
        )
        res = _launch(
            transport, {model_name: (model, model_sha, model_sha)}, argv, spec, affinity, timings
        )
        env["thermal_after"] = transport.snapshot()
        log = res.stdout + "\n" + res.stderr
        if res.rc != 0:
            raise TrialFailed(f"benchmark_model exited {res.rc}: {log.strip()[-500:]}")
        parsed = bm.parse_output(log)
        result["benchmark_model"] = parsed
        result["latency"] = bm.latency_from_output(parsed)
        if spec.accuracy:
            _android_scores(
                device, transport, spec, model_name, model_sha, threads, affinity, result, timings
            )
    except (TransportError, TrialFailed, bm.BenchmarkModelError, ValueError) as exc:
        result.update(status="error", error=str(exc))
        return TrialOutcome(False, result, error=str(exc), timings=timings)
    timings["overhead_s"] = _overhead(t0, result)
    return TrialOutcome(True, result, timings=timings)


def _android_scores(
    device,
    transport,
    spec: TrialSpec,
    model_name: str,
    model_sha: str,
    threads: int,
    affinity,
    result: dict,
    timings: dict,
) -> None:
    """Scores for every frame: the Python runner where the phone has one, else benchmark_model."""
    t = time.perf_counter()
    if (
        getattr(device, "runner", "benchmark_model") == "python"
        and spec.runtime in ANDROID_PYTHON_LITERT
    ):
        sub: dict = {}
        scored = run_runner(
            device, transport, spec, sub, {"runs": 0, "cooldown_s": 0.0, "cooldown_temp_c": None}
        )
        timings["accuracy_execs"] = sub.get("execs", 0)
        if scored.get("status") != "ok":
            raise TrialFailed(f"scoring with the Python runner failed: {scored.get('error')}")
        result.update(
            scores=scored["scores"],
            logits=scored["logits"],
            n_frames=scored["n_frames"],
            io=scored.get("io"),
        )
        result["env"]["accuracy_runner"] = {
            "runner": "python",
            "runtime_version": scored.get("runtime_version"),
            **{k: scored["env"].get(k) for k in ("python", "numpy")},
        }
    else:
        frames = np.load(spec.inputs).astype(np.float32)
        scored = bm.score_frames(
            transport,
            getattr(device, "benchmark_model", None) or "/data/local/tmp/benchmark_model",
            model_name,
            Path(spec.model),
            spec.runtime,
            frames,
            threads,
            affinity,
            spec.timeout_s,
        )
        result.update(scored)
        result["env"]["accuracy_runner"] = {"runner": "benchmark_model"}
    result["accuracy_s"] = time.perf_counter() - t
