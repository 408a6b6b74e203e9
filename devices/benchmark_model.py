"""TFLite's stock ``benchmark_model`` binary as the Android latency runner.

* ``build_command``: the argv for a runtime and settings (``--graph --num_threads
  --use_xnnpack/--use_gpu/--use_nnapi --warmup_runs --warmup_min_secs --num_runs --min_secs
  --max_secs``, and for scoring ``--input_layer_value_files`` / ``--output_filepath``);
* ``parse_output``: both summary formats — the current one (``Inference timings in us: Init:
  …, First inference: …, Warmup (avg): …, Inference (avg): …``) and the pre-2020 one
  (``Average inference timings in us: Warmup: …, Init: …, Inference: …``, which some builds
  print as ``no stats: …``) — the ``count=… first=… curr=… min=… max=… avg=… std=…
  [p5=… median=… p95=…]`` stat lines (warmup, then timed runs; per-operator profiling
  ``Timings (microseconds): count=…`` lines are ignored) and the memory lines (``Memory
  footprint delta from the start of the tool (MB): init=… overall=…``, the older ``Peak
  memory footprint (MB): init=… overall=…`` and ``Overall peak memory footprint (MB) via
  periodic monitoring: …``). Log prefixes (``INFO:``, logcat ``I tflite  :``) are accepted;
* ``latency_from_output``: the runner's ``latency`` shape in ms. benchmark_model prints no
  p90/p99 (and p50 only as ``median`` in recent builds): what it does not print is None;
* ``score_frames``: scores for phones without Python: every frame through benchmark_model
  (``--input_layer_value_files`` in, ``--output_filepath`` out), all frames in ONE shell
  command (one push of the frames, outputs back on stdout as hex), not a round trip per frame.

Running a trial (cooldown, snapshots, the latency run, which scorer) is devices/trial.py's job.

The parser is tested on verbatim outputs of the real tool (tests/fixtures/benchmark_model).
"""

from __future__ import annotations

import re
import tempfile
import uuid
from pathlib import Path

import numpy as np

from .transports.base import TransportError, sha256_file

RUNTIME_FLAGS: dict[str, list[str]] = {
    "litert": [],  # the tool's default CPU path (recent builds apply XNNPACK by default)
    "litert-xnnpack": ["--use_xnnpack=true"],
    "litert-gpu": ["--use_gpu=true"],
    "litert-nnapi": ["--use_nnapi=true"],
}

SETTINGS: dict[str, type] = {
    "threads": int,  # 0: the tool's default
    "warmup": int,
    "warmup_min_secs": float,
    "runs": int,
    "min_secs": float,
    "max_secs": float,
    "report_peak_memory": bool,
}
DEFAULT_SETTINGS = {
    "threads": 0,
    "warmup": 1,
    "warmup_min_secs": 0.5,
    "runs": 50,
    "min_secs": 1.0,
    "max_secs": 150.0,
    "report_peak_memory": True,
}


ESCAPED_COLON = "\\:"


class BenchmarkModelError(ValueError):
    """benchmark_model output that holds no result; the message says what is missing."""


def check_settings(settings: dict | None) -> dict:
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(
            f"benchmark_model settings: unknown key(s) {unknown}; allowed: {sorted(SETTINGS)}"
        )
    out = dict(DEFAULT_SETTINGS)
    for key, value in settings.items():
        kind = SETTINGS[key]
        if value is None:
            out[key] = None
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"benchmark_model settings: {key}={value!r} must be true/false")
            out[key] = value
        else:
            try:
                out[key] = kind(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"benchmark_model settings: {key}={value!r} is not a {kind.__name__}"
                ) from None
            if kind in (int, float) and out[key] < 0:
                raise ValueError(f"benchmark_model settings: {key}={value!r} must be >= 0")
    return out


def build_command(
    binary: str,
    graph: str,
    runtime: str,
    settings: dict | None = None,
    input_files: dict[str, str] | None = None,
    output_path: str | None = None,
) -> list[str]:
    """argv for one benchmark_model run (quoting is the transport's job)."""
    if runtime not in RUNTIME_FLAGS:
        raise ValueError(
            f"benchmark_model runs TFLite only; runtime {runtime!r} not allowed; "
            f"allowed: {sorted(RUNTIME_FLAGS)}"
        )
    s = check_settings(settings)
    argv = [binary, f"--graph={graph}"]
    if s["threads"]:
        argv.append(f"--num_threads={s['threads']}")
    argv += RUNTIME_FLAGS[runtime]
    argv += [
        f"--warmup_runs={s['warmup']}",
        f"--warmup_min_secs={s['warmup_min_secs']:g}",
        f"--num_runs={s['runs']}",
        f"--min_secs={s['min_secs']:g}",
        f"--max_secs={s['max_secs']:g}",
    ]
    if s["report_peak_memory"]:
        argv.append("--report_peak_memory_footprint=true")
    if input_files:
        for name, path in input_files.items():
            if "," in name or "," in path or ":" in path or "\\" in name:
                raise ValueError(
                    f"input layer {name!r} / file {path!r}: ',' (and ':' in a path) "
                    "cannot be passed through --input_layer_value_files"
                )
        # The tool splits each item at its first unescaped ':'; a ':' in a name is written '\:'.
        argv.append(
            "--input_layer_value_files="
            + ",".join(f"{n.replace(':', ESCAPED_COLON)}:{p}" for n, p in input_files.items())
        )
    if output_path:
        argv.append(f"--output_filepath={output_path}")
    return argv


# --- parsing --------------------------------------------------------------------------------
_PREFIX = re.compile(
    r"^(?:\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEF]\s+\S+\s*:\s?"  # logcat -v threadtime
    r"|[VDIWEF]/?\s*tflite\s*:\s?|\.\.\.\s+tflite\s*:\s?"  # logcat brief / docs
    r"|(?:INFO|WARNING|WARN|VERBOSE|ERROR):\s?)"
)
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_KV = re.compile(rf"(\w+)=({_NUM})")
_TIMINGS = re.compile(r"(Average inference timings|Inference timings) in us:\s*(.*)$")
_DELTA = re.compile(
    rf"Memory footprint delta from the start of the tool \(MB\): init=({_NUM}) overall=({_NUM})"
)
_PEAK_OLD = re.compile(rf"^Peak memory footprint \(MB\): init=({_NUM}) overall=({_NUM})")
_PERIODIC = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})")
_RUNNING = re.compile(r"^Running benchmark for (?:at least )?(\d+) iterations")
_LABELS = {
    "Init": "init_us",
    "First inference": "first_inference_us",
    "Warmup (avg)": "warmup_avg_us",
    "Inference (avg)": "inference_avg_us",
    "Warmup": "warmup_avg_us",
    "Inference": "inference_avg_us",
    "no stats": "inference_avg_us",
}
_INT_STATS = {"count", "first", "curr", "min", "max", "std", "p5", "median", "p95"}


def _clean(line: str) -> str:
    return _PREFIX.sub("", line.rstrip("\r\n")).strip()


def _stat(line: str) -> dict:
    stats = {}
    for k, v in _KV.findall(line):
        x = float(v)
        stats[k] = int(x) if k in _INT_STATS and x.is_integer() else x
    return stats


def parse_output(text: str) -> dict:
    """Parse benchmark_model's log (stdout+stderr or logcat); raises BenchmarkModelError."""
    phases: list[dict | None] = []  # one per "Running benchmark for …" line: [warmup, runs]
    loose: list[dict] = []  # stat lines seen with no phase header (truncated logs)
    out: dict = {"format": None, "warmup": None, "runs": None, "memory": {}}
    for raw in text.splitlines():
        line = _clean(raw)
        if not line:
            continue
        if _RUNNING.match(line):
            phases.append(None)
            continue
        if line.startswith("count="):
            stat = _stat(line)
            if phases and phases[-1] is None:
                phases[-1] = stat
            else:
                loose.append(stat)
            continue
        m = _TIMINGS.search(line)
        if m:
            out["format"] = "old" if m.group(1).startswith("Average") else "new"
            for part in m.group(2).split(","):
                label, _, value = part.strip().rpartition(":")
                key = _LABELS.get(label.strip())
                if key and re.fullmatch(_NUM, value.strip()):
                    out[key] = float(value)
            continue
        m = _DELTA.search(line)
        if m:
            out["memory"].update(
                init_mb=float(m.group(1)), overall_mb=float(m.group(2)), kind="delta"
            )
            continue
        m = _PEAK_OLD.search(line)
        if m:
            out["memory"].update(
                init_mb=float(m.group(1)), overall_mb=float(m.group(2)), kind="peak"
            )
            continue
        m = _PERIODIC.search(line)
        if m:
            out["memory"]["peak_mb"] = float(m.group(1))
    stats = [p for p in phases if p is not None] or loose
    if len(phases) >= 2:
        out["warmup"], out["runs"] = phases[0], phases[1]
    elif len(stats) >= 2:
        out["warmup"], out["runs"] = stats[0], stats[-1]
    elif len(stats) == 1:
        out["runs"] = stats[0]
    if out["format"] is None or "inference_avg_us" not in out:
        tail = " | ".join(text.strip().splitlines()[-3:])[-400:]
        raise BenchmarkModelError(
            f"no 'Inference timings in us' summary in benchmark_model output "
            f"(the run probably failed); last lines: {tail!r}"
        )
    for key in ("init_us", "first_inference_us", "warmup_avg_us"):
        out.setdefault(key, None)
    return out


def latency_from_output(parsed: dict) -> dict:
    """The runner's ``latency`` shape (ms) from what benchmark_model printed; missing → None."""
    runs = parsed.get("runs") or {}

    def ms(v):
        return None if v is None else float(v) / 1000.0

    mean = ms(parsed["inference_avg_us"])
    n = runs.get("count")
    return {
        "n": n,
        "p50": ms(runs.get("median")),  # benchmark_model's median; absent in older builds
        "p90": None,  # not printed by benchmark_model
        "p99": None,  # not printed by benchmark_model
        "p5": ms(runs.get("p5")),
        "p95": ms(runs.get("p95")),
        "mean": mean,
        "std": ms(runs.get("std")),
        "min": ms(runs.get("min")),
        "max": ms(runs.get("max")),
        "fps": 1000.0 / mean if mean else None,
        "drift": None,
        "warmup": (parsed.get("warmup") or {}).get("count"),
        "total_s": n * mean / 1000.0 if n and mean else None,  # count × mean, both printed
        "first_ms": ms(parsed.get("first_inference_us")),
        "init_ms": ms(parsed.get("init_us")),
        "warmup_avg_ms": ms(parsed.get("warmup_avg_us")),
        "memory_mb": dict(parsed.get("memory") or {}),
        "source": "benchmark_model",
    }


# --- scoring without Python -------------------------------------------------------------------
_OUT_MARK = "@@DEFAKEQ_FRAME@@"

# sh -c SCORER scorer FRAMES N FRAME_BYTES IN OUT cmd...: cut frame i out of FRAMES with dd,
# run the tool on it, print the output tensor as hex after a marker line. Everything stays in
# the work folder; the two scratch files are removed at the end.
SCORER = (
    "frames=$1; n=$2; bs=$3; in=$4; out=$5; shift 5; i=0\n"
    'while [ "$i" -lt "$n" ]; do\n'
    '  dd if="$frames" of="$in" bs="$bs" skip="$i" count=1 2>/dev/null || { echo "dd failed on frame $i" >&2; exit 90; }\n'
    '  rm -f -- "$out"\n'
    '  log=$("$@" 2>&1) || { printf "%s\\n" "$log" | tail -n 5 >&2; echo "benchmark_model failed on frame $i" >&2; exit 91; }\n'
    '  [ -f "$out" ] || { echo "no --output_filepath file for frame $i" >&2; exit 92; }\n'
    '  printf "%s%s\\n" "' + _OUT_MARK + '" "$i"; od -An -v -tx1 "$out"\n'
    "  i=$((i + 1))\n"
    "done\n"
    'rm -f -- "$in" "$out"\n'
)


def _io_details(tflite_path: Path) -> tuple[dict, dict]:
    """Input/output tensor facts read on the controller with the LiteRT interpreter."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:  # scoring needs the tensor names and quantisation
        raise RuntimeError(
            f"scoring with benchmark_model needs ai-edge-litert on the controller: {exc}"
        ) from exc
    it = Interpreter(model_path=str(tflite_path))
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(ins) != 1:
        raise ValueError(
            f"{tflite_path.name}: {len(ins)} inputs; scoring supports one input tensor"
        )
    return ins[0], outs[0]


def frame_bytes(x: np.ndarray, inp: dict) -> bytes:
    """One NCHW float frame as the raw bytes of the model's input tensor (layout, quantisation)."""
    shape = [int(s) for s in inp["shape"]]
    if len(shape) == 4 and shape[-1] == x.shape[1] and shape[1] != x.shape[1]:
        x = x.transpose(0, 2, 3, 1)  # channels-last model
    dtype = np.dtype(inp["dtype"])
    if dtype in (np.int8, np.uint8):
        scale, zp = inp["quantization"]
        info = np.iinfo(dtype)
        x = np.clip(np.round(x / scale) + zp, info.min, info.max)
    x = np.ascontiguousarray(x.astype(dtype))
    if list(x.shape) != shape:
        raise ValueError(f"frame shape {list(x.shape)} does not match the model input {shape}")
    return x.tobytes()


def logits_of(raw: bytes, out: dict) -> np.ndarray:
    dtype = np.dtype(out["dtype"])
    need = int(np.prod(out["shape"])) * dtype.itemsize
    if len(raw) < need:
        raise ValueError(f"output file has {len(raw)} bytes; the output tensor needs {need}")
    y = np.frombuffer(raw[:need], dtype=dtype)
    if dtype in (np.int8, np.uint8):
        scale, zp = out["quantization"]
        return (y.astype(np.float32) - zp) * scale
    return y.astype(np.float32)


def fake_prob(logits: np.ndarray) -> float:
    z = logits.reshape(-1).astype(np.float64)
    if z.size == 1:
        return float(1.0 / (1.0 + np.exp(-z[0])))
    e = np.exp(z - z.max())
    return float(e[1] / e.sum())


def parse_scored(text: str, n: int) -> list[bytes]:
    """The SCORER's stdout -> the raw output bytes of frames 0..n-1 (in order, all present)."""
    frames: dict[int, bytearray] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(_OUT_MARK):
            current = int(line[len(_OUT_MARK) :])
            frames[current] = bytearray()
        elif current is not None and line.strip():
            frames[current] += bytes.fromhex("".join(line.split()))
    missing = [i for i in range(n) if i not in frames]
    if missing:
        raise ValueError(f"benchmark_model outputs missing for frames {missing[:10]}")
    return [bytes(frames[i]) for i in range(n)]


def score_frames(
    transport,
    binary: str,
    model_name: str,
    tflite_path: Path,
    runtime: str,
    frames: np.ndarray,
    threads: int = 0,
    cpu_affinity: list[int] | None = None,
    timeout: float = 900.0,
) -> dict:
    """Scores of `frames` (float32 NCHW, normalised) through benchmark_model, one tool run per
    frame, in one command. The model must already be in the work folder as `model_name`."""
    if frames.ndim != 4:
        raise ValueError(f"expected [N, C, H, W] frames, got shape {list(frames.shape)}")
    inp, out = _io_details(Path(tflite_path))
    blob = b"".join(frame_bytes(frames[i : i + 1], inp) for i in range(len(frames)))
    size = len(blob) // max(1, len(frames))
    tag = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="defakeq-frames-") as tmp:
        local = Path(tmp) / "frames.bin"
        local.write_bytes(blob)
        sha = sha256_file(local)
        frames_name = f"frames-{sha[:16]}.bin"
        if not transport.exists(frames_name, sha):  # hashed on the device, as every push is
            transport.put(local, frames_name, sha256=sha)
    in_name, out_name = f"in-{tag}.bin", f"out-{tag}.bin"
    one = {
        "threads": threads,
        "warmup": 0,
        "warmup_min_secs": 0.0,
        "runs": 1,
        "min_secs": 0.0,
        "max_secs": 60.0,
        "report_peak_memory": False,
    }
    argv = build_command(binary, model_name, runtime, one, {inp["name"]: in_name}, out_name)
    if cpu_affinity:
        mask = sum(1 << c for c in cpu_affinity)
        argv = ["taskset", format(mask, "x"), *argv]
    res = transport.exec(
        [
            "sh",
            "-c",
            SCORER,
            "scorer",
            frames_name,
            str(len(frames)),
            str(size),
            in_name,
            out_name,
            *argv,
        ],
        timeout=timeout,
    )
    if res.rc != 0:
        raise TransportError(
            f"{transport.name}: scoring with benchmark_model failed (exit {res.rc}): "
            f"{(res.stderr or res.stdout).strip()[-400:]}"
        )
    logits = [logits_of(raw, out) for raw in parse_scored(res.stdout, len(frames))]
    return {
        "logits": [v.tolist() for v in logits],
        "scores": [fake_prob(v) for v in logits],
        "n_frames": len(logits),
        "io": {"input_name": inp["name"], "output_name": out["name"]},
    }
