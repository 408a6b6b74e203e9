"""Running a suite: data -> detectors -> deploy (quantize, export, parity) -> trials -> store -> report.

Each stage hands plain values to the next; nothing calls back up. Deploy jobs run on the
executor's workers; trials run one at a time per device, devices in parallel, and each lands
in the store as it finishes. A run interrupted at any point resumes (`--resume RUN`, or
automatically for an unfinished run of the same suite): recorded trials are not redone,
cached quantizations and artifacts are reused, a trial cut off mid-way is redone.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from devices.inventory import Inventory
from devices.runner.defakeq_runner import softmax_fake
from devices.trial import TrialSpec
from quant import METHODS

from .cache import key_of, tool_versions
from .datasets import DATASETS, FrameSet, normalise
from .detectors import DETECTORS
from .executors import LocalExecutor, RayExecutor, default_workers
from .export.base import sha256_file
from .jobs import DeployResult, DetectorRef, EvalMeta, ExportOutcome, deploy
from .metrics import bootstrap_auc_ci, detection_metrics, parity
from .plan import Plan, TrialJob, make_plan
from .store import Store, TrialRow
from .suite import DetectorEntry, Suite, SuiteError
from .train import TrainConfig, load_or_train, predict_logits
from .trials import TrialTask, latency_values, scores_of

log = logging.getLogger("defakeq")

QUARANTINE_AFTER = 3  # consecutive failed trials after which a device sits out the rest of the run


@dataclass
class RunSummary:
    run_id: str
    store: Path
    rows: int
    failed: int
    report: Path | None
    gates_passed: bool | None
    resumed: bool = False
    skipped_done: int = 0
    quarantined: list[str] = field(default_factory=list)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def new_run_id(suite: Suite) -> str:
    return f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}-{key_of([suite.digest(), time.time_ns()])[:6]}"


def resolve_run_id(suite: Suite, store: Store, run_id: str | None, resume: str | None, fresh: bool) -> tuple[str, bool]:
    """(run id, resumed?). An explicit --resume must name a run of this very suite."""
    if resume:
        row = store.conn.execute("SELECT suite_hash, status FROM runs WHERE run_id=?", (resume,)).fetchone()
        if row is None:
            raise SuiteError(f"--resume {resume}: no such run in {store.path}")
        if row[0] != suite.digest():
            raise SuiteError(f"--resume {resume}: that run was made by a different suite (or a different profile/edit of it)")
        return resume, True
    if run_id:
        return run_id, store.conn.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone() is not None
    if not fresh:
        row = store.conn.execute(
            "SELECT run_id FROM runs WHERE suite_hash=? AND status='running' ORDER BY started_at DESC LIMIT 1", (suite.digest(),)
        ).fetchone()
        if row:
            return row[0], True
    return new_run_id(suite), False


class SuiteRunner:
    def __init__(
        self,
        suite: Suite,
        suite_text: str,
        inventory: Inventory,
        run_id: str,
        console: Console | None = None,
        show_progress: bool = True,
        executor: str = "local",
        address: str | None = None,
        workers: int | None = None,
        resumed: bool = False,
        store: Store | None = None,
    ):
        self.suite = suite
        self.suite_text = suite_text
        self.inventory = inventory
        self.devices = inventory.by_name()
        self.run_id = run_id
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.show_progress = show_progress
        self.executor_name = executor
        self.address = address
        self.workers = workers
        self.resumed = resumed
        self.store = store or Store(suite.store)
        self.plan: Plan = make_plan(suite, inventory)

    def say(self, msg: str) -> None:
        log.info(msg)
        self.console.print(msg, highlight=False, markup=False)

    # --- data and detectors (controller side) -----------------------------------------------
    def load_eval_sets(self) -> dict[str, FrameSet]:
        out = {}
        for ds in self.suite.datasets:
            t = time.perf_counter()
            fs = DATASETS[ds.name].load(ds.split, self.suite.data_root, ds.options, cache_dir=self.suite.cache_dir)
            if len(fs) > ds.frames:
                # evenly spaced subset: deterministic, keeps the class mix of the split
                fs = fs.subset(np.unique(np.linspace(0, len(fs) - 1, ds.frames).round().astype(int)))
            out[ds.name] = fs
            self.say(f"dataset {ds.name}: {len(fs)} {ds.split} frames, {int(fs.labels.sum())} fake "
                     f"(manifest {fs.manifest_sha256[:12]}, {time.perf_counter() - t:.1f} s)")
        return out

    def _calibration(self, ds, train: FrameSet | None) -> FrameSet:
        n, seed = self.suite.calibration.frames, self.suite.calibration.seed
        if ds.name == "synthetic":
            return DATASETS["synthetic"].load("calib", None, {**ds.options, "n_calib": n}, cache_dir=self.suite.cache_dir)
        from .datasets.calibration import calibration_subset

        train = train or DATASETS[ds.name].load("train", self.suite.data_root, ds.options, cache_dir=self.suite.cache_dir)
        return calibration_subset(train, n=n, seed=seed)

    def _npy(self, name: str, key: str, make) -> Path:
        path = Path(self.suite.cache_dir) / "inputs" / f"{name}-{key}.npy"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npy")
            np.save(tmp, make())
            tmp.replace(path)  # atomic: a killed run never leaves half a file
        return path

    def prepare_detector(self, entry: DetectorEntry, evals: dict[str, FrameSet]) -> DetectorRef:
        info = DETECTORS[entry.name]
        train_on = entry.train_on or self.suite.datasets[0].name
        ds = next(d for d in self.suite.datasets if d.name == train_on)
        size = info.small_input_size if entry.variant == "small" else info.input_size
        train = None
        if entry.checkpoint:
            weights, deepfakebench = Path(entry.checkpoint), True
            key = sha256_file(weights)[:16]
            self.say(f"detector {entry.name} ({entry.variant}): DeepfakeBench weights {weights.name} ({key})")
        else:
            train = DATASETS[ds.name].load("train", self.suite.data_root, ds.options, cache_dir=self.suite.cache_dir)
            cfg = TrainConfig(steps=entry.train.steps, batch=entry.train.batch, lr=entry.train.lr,
                              weight_decay=entry.train.weight_decay, seed=self.suite.seed)
            model, key, cached = load_or_train(entry.name, train, cfg, Path(self.suite.cache_dir), entry.options,
                                               log=self.say, show_progress=self.show_progress)
            weights, deepfakebench = Path(self.suite.cache_dir) / "detectors" / f"{entry.name}-{key}.pt", False
            self.say(f"detector {entry.name} ({entry.variant}, {sum(p.numel() for p in model.parameters())} params): "
                     f"{'cached' if cached else 'trained'} weights {key}")
        calib = self._calibration(ds, train)
        ckey = key_of([calib.manifest_sha256, len(calib), size, info.mean, info.std])
        calib_path = Path(self.suite.cache_dir) / "inputs" / f"calib-{ckey}.npz"
        if not calib_path.is_file():
            calib_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = calib_path.with_name(calib_path.name + ".tmp.npz")
            np.savez(tmp, x=normalise(calib.load(size=size), info.mean, info.std), y=calib.labels)
            tmp.replace(calib_path)
        ref = DetectorRef(entry, weights, deepfakebench, key, size, tuple(info.mean), tuple(info.std), calib_path, calib.manifest_sha256)
        for name, fs in evals.items():
            ikey = key_of([fs.manifest_sha256, len(fs), fs.video_ids[:3], size, info.mean, info.std])
            ref.inputs[name] = self._npy(name, ikey, lambda fs=fs: normalise(fs.load(size=size), info.mean, info.std))
        from .jobs import build_detector

        model = build_detector(ref)
        for name in evals:
            ref.fp32_scores[name] = softmax_fake(predict_logits(model, np.load(ref.inputs[name])))
        return ref

    # --- the run ------------------------------------------------------------------------------
    def _executor(self, n_deploys: int):
        if self.executor_name == "ray":
            return RayExecutor(self.address, list(self.suite.trials.devices), str(Path(self.suite.cache_dir) / "ray-trials"))
        return LocalExecutor(self.workers or default_workers(n_deploys))

    def run(self) -> RunSummary:
        t_start = time.perf_counter()
        self.timings: dict[str, float] = {}
        env = {"python": platform.python_version(), "platform": platform.platform(), "tools": tool_versions()}
        self.store.start_run(self.run_id, self.suite.name, self.suite.digest(), self.suite_text, git_commit(), env)
        self.store.conn.execute("UPDATE runs SET status='running' WHERE run_id=?", (self.run_id,))
        from .cache import Cache

        stale = Cache(self.suite.cache_dir).clean_stale()
        if stale:
            self.say(f"removed {stale} temporary leftover(s) of interrupted runs from the cache")
        done = self.store.done_keys(self.run_id)
        todo = [t for t in self.plan.trials if self._row_key(t) not in done]
        if self.resumed:
            self.say(f"resuming run {self.run_id}: {len(self.plan.trials) - len(todo)} of {len(self.plan.trials)} trials already recorded")
        self.say(f"run {self.run_id}: {len(self.plan.quant)} quantizations, {len(self.plan.export)} artifacts, "
                 f"{len(todo)} trials to run; store {self.suite.store}")
        for w in self.plan.warnings:
            self.say(f"warning: {w}")
        rows: list[TrialRow] = []
        quarantined: set[str] = set()
        if todo:
            frames = self.load_eval_sets()
            evals = {n: EvalMeta(n, fs.labels, fs.video_ids, fs.manifest_sha256) for n, fs in frames.items()}
            refs = {}
            for entry in self.suite.detectors:
                if any(t.export.quant.detector == entry.name for t in todo):
                    refs[entry.name] = self.prepare_detector(entry, frames)
            self._refs = refs
            self.timings["prepare_s"] = time.perf_counter() - t_start
            rows, quarantined = self._deploy_and_trial(todo, refs, evals)
        t_report = time.perf_counter()
        self.timings["total_s"] = t_report - t_start
        self.store.finish_run(self.run_id, timings=self.timings)  # the report shows a finished run
        report, gates_ok = self._report()
        self.timings["report_s"] = time.perf_counter() - t_report
        self.timings["total_s"] = time.perf_counter() - t_start
        self.store.finish_run(self.run_id, timings=self.timings)
        failed = sum(1 for r in rows if r.status == "failed")
        return RunSummary(self.run_id, Path(self.suite.store), len(rows), failed, report, gates_ok, self.resumed,
                          len(self.plan.trials) - len(todo), sorted(quarantined))

    def _row_key(self, t: TrialJob) -> str:
        """The store's trial_key of a planned trial (see TrialRow.trial_key)."""
        q = t.export.quant
        return "|".join([self.run_id, q.detector, t.dataset, q.label, q.bits, t.export.format, t.device, t.runtime])

    def _deploy_and_trial(self, todo: list[TrialJob], refs: dict[str, DetectorRef], evals: dict[str, EvalMeta]):
        qjobs = [q for q in self.plan.quant if any(t.export.quant == q for t in todo)]
        cached: dict[object, DeployResult] = {}
        for q in qjobs:
            hit = self._cached_deploy(refs[q.detector], q)
            if hit is not None:
                cached[q] = hit
        remaining = [q for q in qjobs if q not in cached]
        executor = self._executor(max(1, len(remaining)))
        threads = 1  # every executor quantizes single-threaded: same float sums, same codes everywhere
        rows: list[TrialRow] = []
        deploy_futs: dict[Future, object] = {}
        for q in qjobs:
            if q in cached:
                fut: Future = Future()
                fut.set_result(cached[q])
            else:
                exports = [e for e in self.plan.export if e.quant == q]
                fut = executor.submit_deploy(deploy, self.suite, refs[q.detector], q, exports, evals, threads)
            deploy_futs[fut] = q
        self.say(f"{len(remaining)} deploy job(s) on the {executor.name} executor"
                 + (f" ({executor.workers} workers)" if executor.name == "local" else "")
                 + (f"; {len(cached)} reused from the cache" if cached else ""))
        queues: dict[str, deque] = {}
        deferred_local: list[tuple] = []
        in_flight: dict[Future, tuple] = {}
        failures: dict[str, int] = {}
        quarantined: set[str] = set()

        def record(row: TrialRow) -> None:
            self.store.add_trial(row)
            rows.append(row)
            v = row.values
            self.say(f"trial {row.detector}/{row.method}/{row.bits}/{row.format}/{row.dataset}/{row.device}/{row.runtime}: {row.status}"
                     + (f" AUC {v['auc']:.4f}" if v.get("auc") is not None else "") + (f", {v['fps']:.0f} FPS" if v.get("fps") else "")
                     + (f" ({v['reason']})" if v.get("reason") else ""))

        def pump(device: str) -> None:
            """Keep one trial in flight per device (the driver's queue is what quarantine acts on)."""
            if any(item[0].device == device for item in in_flight.values()):
                return
            q = queues.get(device)
            while q:
                tjob, dep, out, attempt = q.popleft()
                if device in quarantined:
                    record(self._row(tjob, dep, out, refs, evals, "failed", f"device {device} quarantined after {QUARANTINE_AFTER} consecutive failures"))
                    continue
                task = self._task(tjob, out, refs, attempt)
                in_flight[executor.submit_trial(task)] = (tjob, dep, out, attempt)
                return

        def enqueue(tjob, dep, out) -> None:
            queues.setdefault(tjob.device, deque()).append((tjob, dep, out, 0))

        pending_deploys = set(deploy_futs)
        t_deploy = time.perf_counter()
        while pending_deploys or in_flight:
            done_set, _ = wait(list(pending_deploys) + list(in_flight), return_when=FIRST_COMPLETED)
            for fut in done_set:
                if fut in pending_deploys:
                    pending_deploys.discard(fut)
                    dep = self._deploy_result(fut, deploy_futs[fut])
                    for out in dep.exports:
                        for tjob in [t for t in todo if t.export == out.job]:
                            if out.status != "ok":
                                record(self._row(tjob, dep, out, refs, evals, out.status, out.reason))
                            elif self.devices[tjob.device].transport == "local":
                                deferred_local.append((tjob, dep, out))  # measured once this host is quiet
                            else:
                                enqueue(tjob, dep, out)
                    for name in {t.device for t in todo}:
                        pump(name)
                    if not pending_deploys:
                        self.timings["deploy_s"] = time.perf_counter() - t_deploy
                        t_trials = time.perf_counter()
                        for tjob, d, out in deferred_local:
                            enqueue(tjob, d, out)
                        for name in {t.device for t in todo}:
                            pump(name)
                    continue
                tjob, dep, out, attempt = in_flight.pop(fut)
                outcome = fut.result()
                if outcome.ok:
                    failures[tjob.device] = 0
                    record(self._row(tjob, dep, out, refs, evals, "ok", None, outcome))
                elif attempt < self.suite.trials.retries and tjob.device not in quarantined:
                    self.say(f"trial {tjob.key}: attempt {attempt + 1} failed ({outcome.error}); retrying")
                    queues.setdefault(tjob.device, deque()).appendleft((tjob, dep, out, attempt + 1))
                else:
                    failures[tjob.device] = failures.get(tjob.device, 0) + 1
                    if failures[tjob.device] >= QUARANTINE_AFTER and tjob.device not in quarantined:
                        quarantined.add(tjob.device)
                        self.say(f"device {tjob.device} quarantined for the rest of the run after {QUARANTINE_AFTER} consecutive failures")
                    record(self._row(tjob, dep, out, refs, evals, "failed", outcome.error, outcome))
                pump(tjob.device)
        executor.shutdown()
        self.timings["trials_after_deploy_s"] = time.perf_counter() - t_trials if "deploy_s" in self.timings else 0.0
        return rows, quarantined

    def _deploy_key(self, ref: DetectorRef, qjob) -> str:
        exports = [e.format for e in self.plan.export if e.quant == qjob]
        return key_of({"weights": ref.key, "job": [qjob.method, qjob.bits, qjob.options], "exports": exports,
                       "calib": ref.calib_manifest, "inputs": {k: v.name for k, v in ref.inputs.items()},
                       "seed": self.suite.seed, "first_last": self.suite.calibration.first_last_bits,
                       "parity": self.suite.parity.model_dump(), "tools": tool_versions(), "v": 1})

    def _cached_deploy(self, ref: DetectorRef, qjob) -> DeployResult | None:
        """A finished deploy of the same inputs, its artifacts still intact (re-hashed)."""
        import pickle

        from .cache import Cache, CorruptEntry

        cache, key = Cache(self.suite.cache_dir), self._deploy_key(ref, qjob)
        try:
            if cache.lookup("deploys", key) is None:
                return None
            dep: DeployResult = pickle.loads((cache.entry("deploys", key) / "result.pkl").read_bytes())
            for out in dep.exports:
                if out.artifact is not None and (not out.artifact.path.is_file() or sha256_file(out.artifact.path) != out.artifact.sha256):
                    raise CorruptEntry(f"artifact {out.artifact.path} changed since it was exported")
        except (CorruptEntry, OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
            self.say(f"cached deploy {qjob.key} unusable ({exc}); redoing it")
            cache.evict("deploys", key)
            return None
        dep.log = [f"{qjob.key}: reused (quantization, export and parity cached)"]
        return dep

    def _deploy_result(self, fut: Future, qjob) -> DeployResult:
        import pickle
        import tempfile

        from .cache import Cache

        try:
            dep = fut.result()
        except Exception as exc:  # a worker died (e.g. out of memory): record and go on
            reason = f"deploy worker failed: {type(exc).__name__}: {exc}"
            dep = DeployResult(qjob, "failed", reason, exports=[ExportOutcome(e, "failed", reason) for e in self.plan.export if e.quant == qjob])
        for msg in dep.log:
            self.say(f"  {msg}")
        reused = any("reused (" in m for m in dep.log)
        if not reused and dep.status == "ok" and all(o.status != "failed" or o.reason and o.reason.startswith("parity") for o in dep.exports):
            ref = next(r for r in self._refs.values() if r.entry.name == qjob.detector)
            with tempfile.NamedTemporaryFile(dir=self.suite.cache_dir, suffix=".pkl", delete=False) as f:
                f.write(pickle.dumps(dep))
            Cache(self.suite.cache_dir).store("deploys", self._deploy_key(ref, qjob), {"result.pkl": Path(f.name)}, {"job": qjob.key})
            Path(f.name).unlink()
        return dep

    def _task(self, tjob: TrialJob, out: ExportOutcome, refs: dict[str, DetectorRef], attempt: int) -> TrialTask:
        t = self.suite.trials
        device = self.devices[tjob.device]
        spec = TrialSpec(
            model=out.artifact.path, inputs=refs[tjob.export.quant.detector].inputs[tjob.dataset], runtime=tjob.runtime,
            model_sha256=out.artifact.sha256, threads=t.threads or device.threads, warmup=t.warmup, runs=t.runs,
            min_secs=t.min_secs, max_secs=t.max_secs, cooldown_s=t.cooldown_s + (min(2.0 * 2 ** (attempt - 1), 30.0) if attempt else 0.0),
            cooldown_temp_c=t.cooldown_temp_c, timeout_s=min(t.timeout_s, device.timeout_s), batch=1,
        )
        return TrialTask(tjob.key, device, spec)

    def _row(self, tjob: TrialJob, dep: DeployResult, out: ExportOutcome, refs: dict[str, DetectorRef], evals: dict[str, EvalMeta],
             status: str, reason: str | None, outcome=None) -> TrialRow:
        q = tjob.export.quant
        ev = evals[tjob.dataset]
        ref = refs[q.detector]
        values: dict = {
            "suite": self.suite.name, "suite_hash": self.suite.digest(), "method_family": METHODS[q.method].family,
            "reason": reason, "seed": self.suite.seed, "device_tags": list(self.devices[tjob.device].tags),
            "fp32_auc": detection_metrics(ref.fp32_scores[tjob.dataset], ev.labels)["auc"],
        }
        extra: dict = {"manifest_sha256": ev.manifest, "method_label": q.label, "weights": ref.key}
        stats = dep.stats or {}
        values["quant_wall_s"] = stats.get("wall_s")
        if stats.get("packed_bytes") is not None:
            values.update(packed_bytes=stats["packed_bytes"], avg_weight_bits=stats.get("avg_weight_bits"))
            extra["code_hash"] = stats.get("code_hash")
        sim = dep.sim_scores.get(tjob.dataset)
        if sim is not None:
            values["sim_auc"] = detection_metrics(sim, ev.labels)["auc"]
        art = out.artifact
        if art is not None:
            values.update(size_bytes=art.size_bytes, artifact_sha256=art.sha256, artifact_path=str(art.path),
                          codes_exact=None if art.codes_exact is None else int(art.codes_exact))
            extra.update(op_counts=art.op_counts, unmatched_quant_points=art.unmatched)
        if tjob.dataset in out.host_parity:
            extra["host_parity"] = out.host_parity[tjob.dataset]
        result = outcome.result if outcome is not None and outcome.ok else None
        deployed = scores_of(result) if result else None
        scores = deployed if deployed is not None else (sim if status == "simulated-only" else None)
        if scores is not None:
            m = detection_metrics(scores, ev.labels, ev.video_ids)
            values.update(auc=m["auc"], eer=m["eer"], ap=m["ap"], acc=m["acc"], video_auc=m.get("video_auc"), n_frames=m["n_frames"])
            extra["auc_ci"] = bootstrap_auc_ci(scores, ev.labels, n=500, seed=self.suite.seed)
        if deployed is not None and sim is not None:
            par = parity(sim, deployed, ev.labels)
            values.update(parity_max_abs=par["parity_max_abs"], parity_mean_abs=par["parity_mean_abs"], decision_agreement=par["decision_agreement"])
        if outcome is not None:
            extra["timings"] = outcome.timings
        if result:
            values.update(latency_values(result, self.suite.trials.throttle_drift))
            env = dict(result.get("env", {}))
            extra["thermal_before"] = env.pop("thermal_before", None)
            extra["thermal_after"] = env.pop("thermal_after", None)
            env.update(runtime=result.get("runtime"), runtime_version=result.get("runtime_version"), io=result.get("io"))
            values["env_json"] = env
            lat = result.get("latency", {})
            samples = lat.get("samples_ms") or []
            extra["latency_ms"] = [round(s, 4) for s in samples[:: max(1, len(samples) // 2000)]]
            extra["latency_drift"] = lat.get("drift")
        values["extra_json"] = extra
        values["started_at"] = values["finished_at"] = time.time()
        return TrialRow(self.run_id, q.detector, tjob.dataset, q.label, q.bits, tjob.export.format, tjob.device, tjob.runtime, status, values)

    def _report(self) -> tuple[Path | None, bool | None]:
        try:
            import reports
        except ImportError as exc:  # reports/ is optional for a run; the store is the contract
            self.say(f"no report: {exc}")
            return None, None
        out = Path(self.suite.out_dir) / self.run_id
        res = reports.build_report(self.suite.store, self.run_id, out, gates=self.suite.gates, history=self.suite.report.history,
                                   tolerance={"auc": self.suite.report.auc_tolerance, "fps": self.suite.report.fps_tolerance})
        return Path(res.html), res.gates_passed
