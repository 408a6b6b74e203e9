"""What a trial costs beyond its timed runs, and whether the harness's latency is the model's.

1. Orchestration overhead per trial for a 20 MB ONNX artifact, on the local transport and
   over loopback SSH (a real sshd from tests/sshd.py), in three phases: "first push" (a new
   connection, an empty work folder), "cached" (a new connection, files already there) and
   "reused" (the next trial on the same connection: what the pipeline does per device).
   overhead_s = connect + push + result + runner start/warmup, i.e. everything but the timed
   runs and the accuracy pass (run_trial's own definition, plus the connection).
   transport_s = the part the transport adds (connect + push + command round trips).
   runner_*: where the runner's own start-up went (interpreter+imports, verify, open).
   Each phase is repeated REPEATS times; rows give the median (and min/max): the machine is
   shared, and a neighbour's burst is not the harness's cost.
   Target: overhead_s <= 1 s over loopback SSH.
2. Latency parity on a small CNN (a few ms per frame): the runner's latency vs onnxruntime's own
   profiler (`model_run` events, SessionOptions.enable_profiling). "paired": the runner's timing
   loop drives a profiling session, so each harness sample has ORT's time for the same run;
   "through trials": whole trials alternated with an in-process session (noisy on a shared
   machine). Target: within 3 %, judged on medians (per-run ratio; p50 through trials); the
   means are reported beside them.

    python benchmarks/trial_overhead.py   -> benchmarks/out/trial_overhead.json
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the suite, and the test sshd it reuses

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from devices.transports import LocalTransport, open_transport  # noqa: E402
from devices.trial import TrialSpec, run_trial  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "trial_overhead.json"
ARTIFACT_MB = 20
THREADS = 1
WARMUP, RUNS = 10, 200
OVERHEAD_TARGET_S = 1.0
PARITY_TARGET = 0.03
PARITY_REPEATS = 5
REPEATS = 3
console = Console(width=150)


def build_model(path: Path, mb: int = ARTIFACT_MB) -> None:
    """x[N,3,8,8] -> Flatten -> MatMul(192 x H) -> Relu -> MatMul(H x 2): mb MB of weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden = mb * (1 << 20) // 4 // 192
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((192, hidden)) / np.sqrt(192)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, 2)) / np.sqrt(hidden)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"], axis=1),
            helper.make_node("MatMul", ["f", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        ],
        "overhead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


def build_cnn(path: Path, width: int = 64) -> None:
    """A small detector-like CNN, x[N,3,64,64] -> 2 logits, a few ms per frame on one core:
    the latency parity model (a per-run harness cost shows against a realistic run time)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    nodes, inits, prev, ch = [], [], "x", 3
    for i, stride in enumerate((1, 1, 2, 1)):
        w = (rng.standard_normal((width, ch, 3, 3)) / np.sqrt(ch * 9)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(
            helper.make_node(
                "Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride, stride]
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, ch = f"r{i}", width
    fc = (rng.standard_normal((width, 2)) / np.sqrt(width)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


def timed_trial(label: str, phase: str, transport, spec: TrialSpec, connect_s: float) -> dict:
    t = time.perf_counter()
    outcome = run_trial(transport, spec)
    total_s = time.perf_counter() - t
    if not outcome.ok:
        raise RuntimeError(f"{label} {phase}: trial failed: {outcome.error}")
    r, tm = outcome.result, outcome.timings
    timed_s = r.get("accuracy_s", 0.0) + r["latency"]["total_s"]
    ph = r.get("phases_s", {})
    return {
        "transport": label,
        "phase": phase,
        "artifact_mb": round(spec.model.stat().st_size / (1 << 20), 2),
        "overhead_s": round(connect_s + tm["overhead_s"], 4),
        "transport_s": round(connect_s + total_s - tm["exec_s"], 4),
        "connect_s": round(connect_s, 4),
        "push_s": round(tm["push_s"], 4),
        "exec_s": round(tm["exec_s"], 4),
        "commands": tm.get("execs"),
        "runner_startup_s": ph.get("startup"),
        "runner_verify_s": ph.get("verify"),
        "runner_open_s": ph.get("open"),
        "timed_s": round(timed_s, 4),
    }


def connect(make_transport) -> tuple[object, float]:
    t = time.perf_counter()
    transport = make_transport()
    if callable(getattr(transport, "connect", None)):
        transport.connect()
    return transport, time.perf_counter() - t


def phases(label: str, make_transport, spec: TrialSpec, reset) -> list[dict]:
    """first push / cached / reused, REPEATS times; the work folder emptied before each."""
    out = []
    for _ in range(REPEATS):
        reset()
        transport, c = connect(make_transport)
        try:
            out.append(timed_trial(label, "first push", transport, spec, c))
        finally:
            transport.close()
        transport, c = connect(make_transport)
        try:
            out.append(timed_trial(label, "cached", transport, spec, c))
            out.append(timed_trial(label, "reused", transport, spec, 0.0))
        finally:
            transport.close()
    return out


def summarise(samples: list[dict]) -> list[dict]:
    rows = []
    for key in dict.fromkeys((s["transport"], s["phase"]) for s in samples):
        group = [s for s in samples if (s["transport"], s["phase"]) == key]
        row = dict(group[0])
        for col, value in group[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                vals = [g[col] for g in group if g[col] is not None]
                row[col] = round(float(np.median(vals)), 4) if vals else None
        over = [g["overhead_s"] for g in group]
        row.update(overhead_s_min=min(over), overhead_s_max=max(over), repeats=len(group))
        rows.append(row)
    return rows


def ort_reference(model: Path, x1: np.ndarray, runs: int = RUNS, warmup: int = WARMUP) -> dict:
    """onnxruntime's own view of one run: profiler model_run events, and a tight loop."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x1}
        for _ in range(warmup):
            sess.run(None, feed)
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs_us = [
        e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    ]
    profiled = np.asarray(runs_us[warmup:], dtype=np.float64) / 1000.0
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        sess.run(None, feed)
    loop = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        sess.run(None, feed)
        loop.append((time.perf_counter_ns() - t) / 1e6)
    return {
        "profile_mean_ms": float(profiled.mean()),
        "profile_p50_ms": float(np.median(profiled)),
        "loop_mean_ms": float(np.mean(loop)),
        "loop_p50_ms": float(np.median(loop)),
        "n": int(profiled.size),
    }


def paired_parity(model: Path, x1: np.ndarray, runs: int = 300, warmup: int = 20) -> dict:
    """The runner's own timing loop and onnxruntime's profiler on the SAME session and runs.

    The runner's OrtModel gets a profiling session; its `time_runs` times each call while the
    profiler records each `model_run`: sample i and event i describe one run, so a busy
    neighbour slows both alike and the ratio is the harness's own cost only.
    """
    import onnxruntime as ort

    from devices.runner.defakeq_runner import OrtModel, time_runs

    m = OrtModel(str(model), "onnxruntime-cpu", THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        m.sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        m.input = m.sess.get_inputs()[0]
        samples = time_runs(
            m, x1, {"warmup": warmup, "runs": runs, "min_secs": 0.0, "max_secs": 600.0}
        )
        events = json.loads(Path(m.sess.end_profiling()).read_text())
    durs = [
        e["dur"] / 1000.0
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    ]
    ort_ms = np.asarray(durs[-len(samples) :], dtype=np.float64)
    harness_ms = np.asarray(samples, dtype=np.float64)
    return {
        "n": int(harness_ms.size),
        "harness_mean_ms": float(harness_ms.mean()),
        "profile_mean_ms": float(ort_ms.mean()),
        "ratio_mean": float(harness_ms.sum() / ort_ms.sum()),
        "ratio_p50_per_run": float(np.median(harness_ms / ort_ms)),
        "harness_minus_profile_us_p50": float(np.median(harness_ms - ort_ms) * 1000),
    }


def latency_parity(
    make_transport, spec: TrialSpec, x1: np.ndarray, repeats: int = PARITY_REPEATS
) -> dict:
    """Runner (through the harness) vs onnxruntime's own timing, alternated to share the noise."""
    spec = replace(spec, warmup=20, runs=150, min_secs=0.0, accuracy=False)
    reps = []
    for _ in range(repeats):
        transport = make_transport()
        try:
            outcome = run_trial(transport, spec)
        finally:
            transport.close()
        if not outcome.ok:
            raise RuntimeError(f"parity trial failed: {outcome.error}")
        lat = outcome.result["latency"]
        ref = ort_reference(spec.model, x1, runs=lat["n"], warmup=spec.warmup)
        reps.append(
            {
                "harness_mean_ms": lat["mean"],
                "harness_p50_ms": lat["p50"],
                **ref,
                "ratio_mean_vs_profile": lat["mean"] / ref["profile_mean_ms"],
                "ratio_p50_vs_profile": lat["p50"] / ref["profile_p50_ms"],
                "ratio_mean_vs_loop": lat["mean"] / ref["loop_mean_ms"],
            }
        )
    # Medians over alternated repeats, p50 as the headline: on a shared machine the means
    # carry whichever neighbour happened to run; the median run is what the model costs.
    med = {k: float(np.median([r[k] for r in reps])) for k in reps[0]}
    return {**med, "repeats": reps, "target": f"p50 ratio within {PARITY_TARGET:.0%}"}


def main() -> int:
    from sshd import SSHServer, sshd_missing

    notes: list[str] = []
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="dfq-bench-") as tmp_s:
        tmp = Path(tmp_s)
        model = tmp / "model.onnx"
        build_model(model)
        x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
        np.save(tmp / "x.npy", x)
        spec = TrialSpec(
            model=model,
            inputs=tmp / "x.npy",
            runtime="onnxruntime-cpu",
            threads=THREADS,
            warmup=WARMUP,
            runs=RUNS,
        )

        samples: list[dict] = []

        def emptier(folder: Path):
            return lambda: shutil.rmtree(folder, ignore_errors=True)

        local_wd = tmp / "local-wd"
        samples += phases("local", lambda: LocalTransport("local", str(local_wd)), spec,
                          emptier(local_wd))

        why = sshd_missing()
        parity_server = None
        if why:
            notes.append(f"ssh rows skipped: {why}")
        else:
            for label, quiet in (("ssh-loopback", True), ("ssh-loopback+bashrc", False)):
                server = SSHServer(tmp / f"sshd-{label}", quiet_shell=quiet).start()
                wd = tmp / f"wd-{label}"
                device = server.device(wd, name=label.replace("+", "-"), python=sys.executable)
                try:
                    samples += phases(label, lambda d=device: open_transport(d), spec, emptier(wd))
                finally:
                    if quiet:
                        parity_server = (server, device)  # reused for the latency parity runs
                    else:
                        server.stop()
            notes.append(
                "ssh-loopback+bashrc: the login shell sources root's ~/.bashrc (pyenv init) for every "
                "command, as Debian's bash does under sshd; a device property, not the transport's: "
                "a trial costs one command once its files are on the device"
            )
        rows = summarise(samples)

        def make_parity_transport():
            if parity_server is None:  # no sshd: the local runner is the harness
                return LocalTransport("local", str(tmp / "local-wd"))
            return open_transport(parity_server[1])

        cnn = tmp / "cnn.onnx"
        build_cnn(cnn)
        xc = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
        np.save(tmp / "xc.npy", xc)
        cnn_spec = replace(spec, model=cnn, inputs=tmp / "xc.npy")
        paired = paired_parity(cnn, xc[:1])
        try:
            parity = latency_parity(make_parity_transport, cnn_spec, xc[:1])
        finally:
            if parity_server is not None:
                parity_server[0].stop()
    ssh_rows = [r for r in rows if r["transport"] == "ssh-loopback"]
    targets = {
        "overhead_target_s": OVERHEAD_TARGET_S,
        "ssh_overhead_max_s": max((r["overhead_s"] for r in ssh_rows), default=None),
        "ssh_overhead_met": all(r["overhead_s"] <= OVERHEAD_TARGET_S for r in ssh_rows)
        if ssh_rows
        else None,
        # The per-run median: a neighbour preempting the Python side of one call inflates the
        # mean of a loaded machine without being the harness's cost (both are reported).
        "paired_parity_met": abs(paired["ratio_p50_per_run"] - 1) <= PARITY_TARGET,
        "paired_parity_mean_met": abs(paired["ratio_mean"] - 1) <= PARITY_TARGET,
        "trial_parity_met": abs(parity["ratio_p50_vs_profile"] - 1) <= PARITY_TARGET,
    }
    env = {
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
        "cpus": os.cpu_count(),
        "loadavg_start": load_start,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "name": "trial_overhead",
                "rows": rows,
                "samples": samples,
                "latency_parity": {"paired": paired, "through_trials": parity},
                "targets": targets,
                "env": env,
                "notes": notes,
            },
            indent=2,
        )
    )

    table = Table(
        title=f"Trial overhead, {ARTIFACT_MB} MB ONNX artifact (target <= {OVERHEAD_TARGET_S:g} s over SSH)"
    )
    for col in (
        "transport",
        "phase",
        "artifact_mb",
        "overhead_s",
        "overhead_s_min",
        "transport_s",
        "connect_s",
        "push_s",
        "exec_s",
        "commands",
        "runner_startup_s",
        "runner_open_s",
        "timed_s",
    ):
        table.add_column(col, justify="left" if col in ("transport", "phase") else "right")
    for r in rows:
        table.add_row(
            *(
                str(r[c]) if isinstance(r[c], str) or r[c] is None else f"{r[c]:.3f}"
                for c in table_columns(table)
            )
        )
    console.print(table)
    console.print(
        f"latency, paired (runner's timing loop vs onnxruntime profiler, same session, {paired['n']} runs): "
        f"harness {paired['harness_mean_ms']:.3f} ms vs onnxruntime {paired['profile_mean_ms']:.3f} ms -> ratio "
        f"{paired['ratio_mean']:.4f} (per-run p50 {paired['ratio_p50_per_run']:.4f}, +{paired['harness_minus_profile_us_p50']:.1f} us); "
        f"target within {PARITY_TARGET:.0%}"
    )
    console.print(
        f"latency through trials, median of {PARITY_REPEATS} alternated repeats: harness p50 {parity['harness_p50_ms']:.3f} ms vs "
        f"onnxruntime profiler p50 {parity['profile_p50_ms']:.3f} ms -> ratio {parity['ratio_p50_vs_profile']:.3f} "
        f"(means: {parity['ratio_mean_vs_profile']:.3f}; vs in-process loop {parity['ratio_mean_vs_loop']:.3f}); "
        f"target within {PARITY_TARGET:.0%}; per repeat p50 ratios "
        + ", ".join(f"{r['ratio_p50_vs_profile']:.3f}" for r in parity["repeats"])
    )
    console.print(
        f"targets: {targets}; load average {load_start} -> {env['loadavg_end']} on {env['cpus']} cpus"
    )
    for note in notes:
        console.print(f"note: {note}")
    console.print(f"wrote {OUT}")
    return 0


def table_columns(table: Table) -> list[str]:
    return [str(c.header) for c in table.columns]


if __name__ == "__main__":
    sys.exit(main())
