"""Running a suite: data -> detectors -> quantize -> export -> trials -> store -> report.

Each stage hands plain values to the next (frames, models, QuantResult, Artifact, TrialRow);
nothing calls back up. Trials run one at a time per device, devices in parallel.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from devices.inventory import Inventory
from devices.runner.defakeq_runner import open_model, score_all, softmax_fake
from devices.transports import TransportError, open_transport
from devices.trial import TrialSpec, run_trial
from quant import METHODS, QuantParams, QuantResult, build_sim, fold_bn, place, quantize

from .cache import (
    EXPORT_CODE_VERSION,
    QUANT_CODE_VERSION,
    Cache,
    CorruptEntry,
    key_of,
    tool_versions,
)
from .datasets import DATASETS, FrameSet, normalise
from .detectors import DETECTORS, load_deepfakebench_checkpoint
from .export import EXPORTERS, Artifact, CannotRepresent, ExportRequest
from .metrics import bootstrap_auc_ci, detection_metrics, parity
from .plan import ExportJob, Plan, QuantJob, TrialJob, make_plan
from .store import Store, TrialRow
from .suite import DetectorEntry, Suite
from .train import TrainConfig, load_or_train, predict_logits

log = logging.getLogger("defakeq")


@dataclass
class EvalSet:
    name: str
    frames: FrameSet

    @property
    def labels(self) -> np.ndarray:
        return self.frames.labels


@dataclass
class DetectorState:
    entry: DetectorEntry
    model: torch.nn.Module
    key: str  # identity of the weights
    input_size: int
    mean: tuple
    std: tuple
    calib_x: torch.Tensor
    calib_y: torch.Tensor
    calib_manifest: str


@dataclass
class Deployable:
    """An exported artifact (or the reason there is none) and what trials compare it with."""

    job: ExportJob
    quant: QuantResult
    artifact: Artifact | None
    status: str  # ok | simulated-only | failed
    reason: str | None
    sim_scores: dict[str, np.ndarray] = field(default_factory=dict)
    host_parity: dict[str, dict] = field(default_factory=dict)
    fp32: dict[str, np.ndarray] = field(default_factory=dict)  # the unquantized detector's scores


@dataclass
class RunSummary:
    run_id: str
    store: Path
    rows: int
    failed: int
    report: Path | None
    gates_passed: bool | None


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class SuiteRunner:
    def __init__(self, suite: Suite, suite_text: str, inventory: Inventory, run_id: str, console: Console | None = None, show_progress: bool = True):
        self.suite = suite
        self.suite_text = suite_text
        self.inventory = inventory
        self.run_id = run_id
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.show_progress = show_progress
        self.cache = Cache(suite.cache_dir)
        self.store = Store(suite.store)
        self.plan: Plan = make_plan(suite, inventory)
        self._quarantine: dict[str, int] = {}
        self._lock = threading.Lock()

    # --- stages --------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        log.info(msg)
        self.console.print(msg)

    def load_eval_sets(self) -> dict[str, EvalSet]:
        out = {}
        for ds in self.suite.datasets:
            info = DATASETS[ds.name]
            fs = info.load(ds.split, self.suite.data_root, ds.options, cache_dir=self.suite.cache_dir)
            if len(fs) > ds.frames:
                # evenly spaced, class-interleaved subset: deterministic, keeps the balance
                idx = np.linspace(0, len(fs) - 1, ds.frames).round().astype(int)
                fs = fs.subset(np.unique(idx))
            out[ds.name] = EvalSet(ds.name, fs)
            self.say(f"dataset {ds.name}: {len(fs)} {ds.split} frames, {int(fs.labels.sum())} fake (manifest {fs.manifest_sha256[:12]})")
        return out

    def prepare_detector(self, entry: DetectorEntry) -> DetectorState:
        info = DETECTORS[entry.name]
        train_on = entry.train_on or self.suite.datasets[0].name
        ds = next(d for d in self.suite.datasets if d.name == train_on)
        dinfo = DATASETS[ds.name]
        size = info.small_input_size if entry.variant == "small" else info.input_size
        if entry.checkpoint:
            model = info.build(variant=entry.variant, **entry.options)
            load_deepfakebench_checkpoint(model, entry.checkpoint)
            from .export.base import sha256_file

            key, cached = sha256_file(Path(entry.checkpoint))[:16], True
            train = None
        else:
            train = dinfo.load("train", self.suite.data_root, ds.options, cache_dir=self.suite.cache_dir)
            cfg = TrainConfig(steps=entry.train.steps, batch=entry.train.batch, lr=entry.train.lr,
                              weight_decay=entry.train.weight_decay, seed=self.suite.seed)
            model, key, cached = load_or_train(entry.name, train, cfg, Path(self.suite.cache_dir), entry.options,
                                               log=self.say, show_progress=self.show_progress)
        self.say(f"detector {entry.name} ({entry.variant}, {sum(p.numel() for p in model.parameters())} params): "
                 f"{'cached' if cached else 'trained'} weights {key}")
        calib = self._calibration(ds, train)
        x = torch.from_numpy(normalise(calib.load(size=size), info.mean, info.std))
        return DetectorState(entry, model.eval(), key, size, info.mean, info.std, x, torch.from_numpy(calib.labels), calib.manifest_sha256)

    def _calibration(self, ds, train: FrameSet | None) -> FrameSet:
        n, seed = self.suite.calibration.frames, self.suite.calibration.seed
        if ds.name == "synthetic":
            opts = {**ds.options, "n_calib": n}
            return DATASETS["synthetic"].load("calib", None, opts, cache_dir=self.suite.cache_dir)
        from .datasets.calibration import calibration_subset

        train = train or DATASETS[ds.name].load("train", self.suite.data_root, ds.options, cache_dir=self.suite.cache_dir)
        return calibration_subset(train, n=n, seed=seed)

    def quantize(self, state: DetectorState, job: QuantJob) -> QuantResult:
        options = {k: eval(v) for k, v in job.options}  # noqa: S307 - our own repr() of suite values
        if not METHODS[job.method].quantizes:
            return quantize(state.model, job.method, None, state.calib_x, state.calib_y, seed=self.suite.seed)
        key = key_of({
            "weights": state.key, "method": job.method, "bits": job.bits, "options": options,
            "calib": state.calib_manifest, "n": len(state.calib_x), "seed": self.suite.seed,
            "first_last": self.suite.calibration.first_last_bits, "v": QUANT_CODE_VERSION,
        })
        try:
            rec = self.cache.lookup("quant", key)
        except CorruptEntry as exc:
            self.say(f"[yellow]{exc}; recomputing[/]")
            self.cache.evict("quant", key)
            rec = None
        if rec is not None:
            params = QuantParams.from_bytes((self.cache.entry("quant", key) / "params.npz").read_bytes())
            folded = fold_bn(state.model)
            placement = place(folded)
            sim = build_sim(folded, placement, params)
            self.say(f"  {job.key}: cached quantization ({rec['stats'].get('wall_s', 0):.1f} s when computed)")
            return QuantResult(job.method, job.bits, folded, placement, sim, params, {**rec["stats"], "cached": True})
        res = quantize(state.model, job.method, job.bits, state.calib_x, state.calib_y, options=options,
                       seed=self.suite.seed, first_last_bits=self.suite.calibration.first_last_bits, log=self.say)
        tmp = Path(self.suite.cache_dir) / f".params-{key}.npz"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(res.params.to_bytes())
        self.cache.store("quant", key, {"params.npz": tmp}, {"stats": res.stats, "job": job.key})
        tmp.unlink()
        self.say(f"  {job.key}: quantized in {res.stats['wall_s']:.1f} s, {res.stats['avg_weight_bits']:.2f} bits/weight, "
                 f"{res.stats['packed_bytes']} packed bytes")
        return res

    def export(self, state: DetectorState, qres: QuantResult, job: ExportJob) -> Artifact:
        exporter = EXPORTERS[job.format]
        ident = qres.params.code_hash() if qres.params else state.key
        key = key_of({"model": ident, "weights": state.key, "format": job.format, "size": state.input_size,
                      "tools": tool_versions(), "v": EXPORT_CODE_VERSION})
        try:
            rec = self.cache.lookup("artifacts", key)
        except CorruptEntry as exc:
            self.say(f"[yellow]{exc}; re-exporting[/]")
            self.cache.evict("artifacts", key)
            rec = None
        if rec is None:
            folder = Path(self.suite.cache_dir) / f".export-{key}"
            folder.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            req = ExportRequest(qres, state.calib_x.numpy(), state.calib_x[:8], state.input_size, folder / "model")
            art = exporter.fn(req)
            record = art.record()
            record["export_s"] = time.perf_counter() - t
            rec = self.cache.store("artifacts", key, {art.path.name: art.path}, record)
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
            self.say(f"  {job.key}: exported in {rec['export_s']:.1f} s ({rec['size_bytes']} bytes, codes exact: {rec['codes_exact']})")
        path = self.cache.entry("artifacts", key) / Path(rec["path"]).name
        return Artifact(path, rec["format"], rec["family"], rec["sha256"], rec["size_bytes"], rec.get("packed_bytes"),
                        rec.get("codes_exact"), rec.get("op_counts", {}), rec.get("unmatched", []), {**rec.get("info", {}), "cache_key": key})

    def inputs_file(self, ev: EvalSet, state: DetectorState) -> Path:
        key = key_of({"frames": ev.frames.manifest_sha256, "n": len(ev.frames), "size": state.input_size,
                      "mean": state.mean, "std": state.std, "idx": ev.frames.video_ids[:3]})
        path = Path(self.suite.cache_dir) / "inputs" / f"{ev.name}-{key}.npy"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            x = normalise(ev.frames.load(size=state.input_size), state.mean, state.std)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, x)
            tmp.replace(path)
        return path

    # --- the run --------------------------------------------------------------------------
    def run(self) -> RunSummary:
        env = {"python": platform.python_version(), "platform": platform.platform(), "tools": tool_versions()}
        self.store.start_run(self.run_id, self.suite.name, self.suite.digest(), self.suite_text, git_commit(), env)
        self.say(f"run {self.run_id}: {len(self.plan.quant)} quantizations, {len(self.plan.export)} artifacts, "
                 f"{len(self.plan.trials)} trials; store {self.suite.store}")
        for w in self.plan.warnings:
            self.say(f"[yellow]warning: {w}[/]")
        evals = self.load_eval_sets()
        pending: list[tuple[TrialJob, Deployable, DetectorState, EvalSet]] = []
        for entry in self.suite.detectors:
            state = self.prepare_detector(entry)
            fp32_scores = {n: softmax_fake(predict_logits(state.model, np.load(self.inputs_file(ev, state)))) for n, ev in evals.items()}
            for qjob in [q for q in self.plan.quant if q.detector == entry.name]:
                deployables = self._deployables(state, qjob, evals)
                for dep in deployables:
                    dep.fp32 = fp32_scores
                    for tjob in [t for t in self.plan.trials if t.export == dep.job]:
                        pending.append((tjob, dep, state, evals[tjob.dataset]))
        rows = self._run_trials(pending)
        self.store.finish_run(self.run_id)
        failed = sum(1 for r in rows if r.status == "failed")
        report, gates_ok = self._report()
        return RunSummary(self.run_id, Path(self.suite.store), len(rows), failed, report, gates_ok)

    def _deployables(self, state: DetectorState, qjob: QuantJob, evals: dict[str, EvalSet]) -> list[Deployable]:
        exports = [e for e in self.plan.export if e.quant == qjob]
        try:
            qres = self.quantize(state, qjob)
        except Exception as exc:  # one broken method must not sink the night
            reason = f"quantization failed: {type(exc).__name__}: {exc}"
            self.say(f"[red]{qjob.key}: {reason}[/]")
            log.debug(traceback.format_exc())
            return [Deployable(e, None, None, "failed", reason) for e in exports]
        sim_scores = {}
        for name, ev in evals.items():
            x = np.load(self.inputs_file(ev, state))
            sim_scores[name] = softmax_fake(predict_logits(qres.sim, x))
        out = []
        for ejob in exports:
            try:
                art = self.export(state, qres, ejob)
            except CannotRepresent as exc:
                out.append(Deployable(ejob, qres, None, "simulated-only", str(exc), sim_scores))
                self.say(f"  {ejob.key}: simulated-only ({exc})")
                continue
            except Exception as exc:
                reason = f"export failed: {type(exc).__name__}: {exc}"
                self.say(f"[red]  {ejob.key}: {reason}[/]")
                out.append(Deployable(ejob, qres, None, "failed", reason, sim_scores))
                continue
            dep = Deployable(ejob, qres, art, "ok", None, sim_scores)
            self._host_parity(dep, state, evals)
            out.append(dep)
        return out

    def _host_parity(self, dep: Deployable, state: DetectorState, evals: dict[str, EvalSet]) -> None:
        """Run the artifact on this host's runtime and compare with the simulation."""
        art = dep.artifact
        runtime = "onnxruntime-cpu" if art.family == "onnx" else "litert"
        model = open_model(str(art.path), runtime, 0)
        tol = self.suite.parity
        for name, ev in evals.items():
            x = np.load(self.inputs_file(ev, state))
            scores = softmax_fake(score_all(model, x, 64))
            par = parity(dep.sim_scores[name], scores, ev.labels)
            dep.host_parity[name] = par
            bad = []
            if par["parity_max_abs"] > tol.max_abs:
                bad.append(f"max |p_sim - p_deployed| {par['parity_max_abs']:.4f} > {tol.max_abs}")
            if abs(par["sim_auc"] - par["deployed_auc"]) > tol.auc:
                bad.append(f"AUC sim {par['sim_auc']:.4f} vs deployed {par['deployed_auc']:.4f} differ by more than {tol.auc}")
            if par["decision_agreement"] < tol.agreement_min:
                bad.append(f"decision agreement {par['decision_agreement']:.3f} < {tol.agreement_min}")
            if art.codes_exact is False:
                bad.append("integer codes read back from the file differ from the quantizer's")
            if bad and dep.status == "ok":
                dep.status, dep.reason = "failed", f"parity ({name}): " + "; ".join(bad)
                self.say(f"[red]  {dep.job.key}: {dep.reason}[/]")

    def _run_trials(self, pending) -> list[TrialRow]:
        by_device: dict[str, list] = {}
        for item in pending:
            by_device.setdefault(item[0].device, []).append(item)
        rows: list[TrialRow] = []
        devices = self.inventory.by_name()

        def worker(dev_name: str, items: list) -> list[TrialRow]:
            out = []
            transport = None
            try:
                for tjob, dep, state, ev in items:
                    if dep.status != "ok":
                        row = self._row(tjob, dep, state, ev, status=dep.status, reason=dep.reason)
                    elif self._quarantine.get(dev_name, 0) >= 3:
                        row = self._row(tjob, dep, state, ev, status="failed", reason=f"device {dev_name} quarantined after repeated failures")
                    else:
                        if transport is None:
                            transport = open_transport(devices[dev_name])
                        row = self._trial(transport, devices[dev_name], tjob, dep, state, ev)
                    self.store.add_trial(row)
                    self.say(f"  trial {tjob.key}: {row.status}" + (f" AUC {row.values.get('auc'):.4f}" if row.values.get("auc") is not None else "")
                             + (f", {row.values['fps']:.0f} FPS" if row.values.get("fps") else "") + (f" ({row.values['reason']})" if row.values.get("reason") else ""))
                    out.append(row)
            except TransportError as exc:
                for tjob, dep, state, ev in items[len(out):]:
                    row = self._row(tjob, dep, state, ev, status="failed", reason=f"device {dev_name} unreachable: {exc}")
                    self.store.add_trial(row)
                    out.append(row)
            finally:
                if transport is not None:
                    transport.close()
            return out

        with ThreadPoolExecutor(max_workers=max(1, len(by_device))) as pool:
            for fut in [pool.submit(worker, d, items) for d, items in by_device.items()]:
                rows.extend(fut.result())
        return rows

    def _trial(self, transport, device, tjob: TrialJob, dep: Deployable, state: DetectorState, ev: EvalSet) -> TrialRow:
        t = self.suite.trials
        spec = TrialSpec(
            model=dep.artifact.path, inputs=self.inputs_file(ev, state), runtime=tjob.runtime,
            model_sha256=dep.artifact.sha256, threads=t.threads or device.threads, warmup=t.warmup, runs=t.runs,
            min_secs=t.min_secs, max_secs=t.max_secs, cooldown_s=t.cooldown_s, cooldown_temp_c=t.cooldown_temp_c,
            timeout_s=min(t.timeout_s, device.timeout_s), batch=1,
        )
        outcome = None
        for attempt in range(t.retries + 1):
            outcome = run_trial(transport, spec)
            if outcome.ok:
                break
            if attempt < t.retries:
                time.sleep(min(2.0 * 2**attempt, 30.0))  # back off before retrying a transient failure
        if not outcome.ok:
            with self._lock:
                self._quarantine[device.name] = self._quarantine.get(device.name, 0) + 1
            return self._row(tjob, dep, state, ev, status="failed", reason=outcome.error, extra={"timings": outcome.timings})
        with self._lock:
            self._quarantine[device.name] = 0
        res = outcome.result
        scores = np.asarray(res["scores"], dtype=np.float64)
        return self._row(tjob, dep, state, ev, status="ok", deployed=scores, result=res, extra={"timings": outcome.timings}, device=device)

    def _row(self, tjob: TrialJob, dep: Deployable, state: DetectorState, ev: EvalSet, status: str, reason: str | None = None,
             deployed: np.ndarray | None = None, result: dict | None = None, extra: dict | None = None, device=None) -> TrialRow:
        q = tjob.export.quant
        family = METHODS[q.method].family
        values: dict = {
            "suite": self.suite.name, "suite_hash": self.suite.digest(), "method_family": family, "reason": reason,
            "seed": self.suite.seed, "started_at": time.time(),
            "device_tags": list(self.inventory.by_name()[tjob.device].tags),
        }
        extra = dict(extra or {})
        extra["manifest_sha256"] = ev.frames.manifest_sha256
        extra["method_label"] = q.label
        fp32 = dep.fp32.get(tjob.dataset)
        if fp32 is not None:
            values["fp32_auc"] = detection_metrics(fp32, ev.labels)["auc"]
        if dep.quant is not None:
            values["quant_wall_s"] = dep.quant.stats.get("wall_s")
            if dep.quant.params is not None:
                values["packed_bytes"] = dep.quant.stats.get("packed_bytes")
                values["avg_weight_bits"] = dep.quant.stats.get("avg_weight_bits")
                extra["code_hash"] = dep.quant.stats.get("code_hash")
        sim = dep.sim_scores.get(tjob.dataset)
        if sim is not None:
            values["sim_auc"] = detection_metrics(sim, ev.labels)["auc"]
        if dep.artifact is not None:
            values.update(size_bytes=dep.artifact.size_bytes, artifact_sha256=dep.artifact.sha256, artifact_path=str(dep.artifact.path),
                          codes_exact=None if dep.artifact.codes_exact is None else int(dep.artifact.codes_exact))
            extra["op_counts"] = dep.artifact.op_counts
            extra["unmatched_quant_points"] = dep.artifact.unmatched
        if tjob.dataset in dep.host_parity:
            extra["host_parity"] = dep.host_parity[tjob.dataset]
        scores = deployed if deployed is not None else (sim if status == "simulated-only" else None)
        if scores is not None:
            m = detection_metrics(scores, ev.labels, ev.frames.video_ids)
            values.update(auc=m["auc"], eer=m["eer"], ap=m["ap"], acc=m["acc"], video_auc=m.get("video_auc"), n_frames=m["n_frames"])
            extra["auc_ci"] = bootstrap_auc_ci(scores, ev.labels, n=500, seed=self.suite.seed)
        if deployed is not None and sim is not None:
            par = parity(sim, deployed, ev.labels)
            values.update(parity_max_abs=par["parity_max_abs"], parity_mean_abs=par["parity_mean_abs"], decision_agreement=par["decision_agreement"])
        if result is not None:
            lat = result.get("latency", {})
            values.update(p50_ms=lat.get("p50"), p90_ms=lat.get("p90"), p99_ms=lat.get("p99"), mean_ms=lat.get("mean"),
                          std_ms=lat.get("std"), fps=lat.get("fps"), n_runs=lat.get("n"))
            drift = lat.get("drift")
            values["throttled"] = int(bool(drift and drift > self.suite.trials.throttle_drift))
            env = dict(result.get("env", {}))
            extra["thermal_before"] = env.pop("thermal_before", None)
            extra["thermal_after"] = env.pop("thermal_after", None)
            env.update(runtime=result.get("runtime"), runtime_version=result.get("runtime_version"), io=result.get("io"))
            values["env_json"] = env
            samples = lat.get("samples_ms") or []
            step = max(1, len(samples) // 2000)
            extra["latency_ms"] = [round(s, 4) for s in samples[::step]]
            extra["latency_drift"] = drift
        values["extra_json"] = extra
        values["finished_at"] = time.time()
        return TrialRow(self.run_id, q.detector, tjob.dataset, q.label, q.bits, tjob.export.format, tjob.device, tjob.runtime, status, values)

    def _report(self) -> tuple[Path | None, bool | None]:
        try:
            import reports
        except ImportError as exc:  # reports/ is optional for a run; the store is the contract
            self.say(f"[yellow]no report: {exc}[/]")
            return None, None
        out = Path(self.suite.out_dir) / self.run_id
        res = reports.build_report(self.suite.store, self.run_id, out, gates=self.suite.gates, history=self.suite.report.history,
                                   tolerance={"auc": self.suite.report.auc_tolerance, "fps": self.suite.report.fps_tolerance})
        return Path(res.html), res.gates_passed


def new_run_id(suite: Suite) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{suite.name}-{stamp}-{key_of([suite.digest(), time.time_ns()])[:6]}"

