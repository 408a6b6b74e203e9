"""Column names of the results store (copied from harness/store.py; reports/ never imports it).

`CONTRACT` is the DESIGN.md contract: a store without one of these is rejected. The others were
appended later; an older store that lacks one reads as NULL for it.
"""

from __future__ import annotations

CONTRACT: tuple[str, ...] = (
    "run_id", "detector", "dataset", "method", "bits", "format", "device", "runtime", "status",
    "auc", "eer", "ap", "acc", "size_bytes", "p50_ms", "p90_ms", "p99_ms", "fps",
)  # fmt: skip

OPTIONAL: tuple[str, ...] = (
    "trial_key", "suite", "suite_hash", "method_family", "reason", "video_auc", "sim_auc",
    "fp32_auc", "parity_max_abs", "parity_mean_abs", "decision_agreement", "codes_exact",
    "packed_bytes", "avg_weight_bits", "mean_ms", "std_ms", "n_frames", "n_runs", "throttled",
    "artifact_sha256", "artifact_path", "seed", "quant_wall_s", "device_tags", "env_json",
    "extra_json", "started_at", "finished_at",
)  # fmt: skip

TRIAL_COLUMNS: tuple[str, ...] = CONTRACT + OPTIONAL

RUN_COLUMNS: tuple[str, ...] = (
    "run_id", "suite", "suite_hash", "suite_yaml", "started_at", "finished_at", "status",
    "git_commit", "env_json",
)  # fmt: skip

# Values of `trials.status`.
OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"
SIM_ONLY = "simulated-only"
STATUSES: tuple[str, ...] = (OK, FAILED, SIM_ONLY, SKIPPED)

# Values of `trials.method_family`, in the order the paper tables group them.
FAMILY_ORDER: tuple[str, ...] = ("fp32", "baseline", "defakeq", "ablation", "other")
FAMILY_TITLES: dict[str, str] = {
    "fp32": "FP32 (reference)",
    "baseline": "Baselines",
    "defakeq": "DeFakeQ",
    "ablation": "Ablations",
    "other": "Other",
}
QUANTIZED_FAMILIES: tuple[str, ...] = ("baseline", "defakeq", "ablation", "other")

# Keys that name a trial apart from its dataset: one deployed model on one device/runtime.
DEPLOY_KEYS: list[str] = ["detector", "method", "bits", "format", "device", "runtime"]
MODEL_KEYS: list[str] = ["detector", "method", "bits"]
