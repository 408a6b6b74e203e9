"""Where work runs: a local process pool (default) or a Ray cluster.

Both offer the same two calls: `submit_deploy` (quantize + export; CPU/GPU work) and
`submit_trial` (one trial on one device; at most one at a time per device, devices in
parallel). The pipeline does not know which executor it drives.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from .trials import TrialTask, execute_trial, execute_trial_with_files


def available_memory_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 4.0


def default_workers(n_jobs: int, gb_per_worker: float = 2.0) -> int:
    """Bounded by cores and by memory (a worker holding torch + a small detector needs ~1-2 GB)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    by_mem = max(1, int(available_memory_gb() // gb_per_worker))
    return max(1, min(cores, by_mem, n_jobs))


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        # spawn, not fork: the parent already runs torch/onnxruntime threads
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
        self._devices: dict[str, ThreadPoolExecutor] = {}

    def submit_deploy(self, fn, *args) -> Future:
        if self._pool is None:  # one worker: run here, no process start-up cost
            fut: Future = Future()
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # surfaces through the future like a pool would
                fut.set_exception(exc)
            return fut
        return self._pool.submit(fn, *args)

    def submit_trial(self, task: TrialTask) -> Future:
        pool = self._devices.setdefault(task.device.name, ThreadPoolExecutor(1, thread_name_prefix=f"dev-{task.device.name}"))
        return pool.submit(execute_trial, task)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for p in self._devices.values():
            p.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Quantization as Ray tasks on the controller's node (its GPU when present); each trial as
    a task needing the custom resource `device:<name>` = 1, which only the farm host a device is
    attached to advertises (`ray start --resources '{"device:rpi5-a": 1}'`): Ray then runs the
    trial there, one at a time per device. Artifacts and inputs travel through the object store."""

    name = "ray"

    def __init__(self, address: str | None, device_names: list[str], workdir: str):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray = ray
        self.workdir = workdir
        if address:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:  # a local cluster on this machine that attaches every device here
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                     resources={f"device:{d}": 1 for d in device_names})
        have = ray.cluster_resources()
        missing = [d for d in device_names if f"device:{d}" not in have]
        if missing:
            raise RuntimeError(
                f"no Ray node advertises {['device:' + d for d in missing]}; start each farm host with "
                "`ray start --address <head> --resources '{\"device:<name>\": 1}'` for the devices attached to it"
            )
        node = ray.get_runtime_context().get_node_id()
        gpus = 1 if have.get("GPU", 0) >= 1 else 0
        self._deploy = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_deploy_task).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
        self._trial = ray.remote(num_cpus=0, max_retries=0)(execute_trial_with_files)
        self._refs: dict[str, object] = {}

    def submit_deploy(self, fn, *args) -> Future:
        return self._deploy.remote(fn, *args).future()

    def _file_ref(self, path: Path):
        key = str(path)
        if key not in self._refs:
            self._refs[key] = self.ray.put(path.read_bytes())
        return self._refs[key]

    def submit_trial(self, task: TrialTask) -> Future:
        opts = self._trial.options(resources={f"device:{task.device.name}": 1})
        return opts.remote(task, self._file_ref(task.spec.model), self._file_ref(task.spec.inputs), self.workdir).future()

    def shutdown(self) -> None:
        self._refs.clear()


def _deploy_task(fn, *args):
    return fn(*args)
