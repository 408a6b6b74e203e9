"""suite.yaml: the schema (pydantic), profiles, and validation with clear errors.

Every problem is reported with the file, the key path and what is allowed, before any work
starts; the CLI exits with code 2.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quant import METHODS, BitSpec

from . import native_methods  # noqa: F401  (registers ort-static, pt2e-native)
from .datasets import DATASETS
from .detectors import DETECTORS
from .export import EXPORTERS

# Gates the report evaluates (reports/gates.py holds their semantics; a test keeps both in step).
GATE_KEYS = ("auc_drop_max", "fps_min", "parity_max_abs", "decision_agreement_min", "max_failed_trials", "no_regressions")


class SuiteError(ValueError):
    """An unusable suite file; `str()` names the file, the key path and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetEntry(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    frames: int = Field(default=1000, ge=2, description="evaluation frames from the test split (at most)")
    split: str = Field(default="test", pattern="^(test|val)$")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; allowed: {sorted(DATASETS)}")
        return v


class TrainEntry(_Strict):
    steps: int = Field(default=1200, ge=1)
    batch: int = Field(default=64, ge=2)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)


class DetectorEntry(_Strict):
    name: str
    variant: str = Field(default="small", pattern="^(small|full)$")
    checkpoint: str | None = None  # DeepfakeBench *_best.pth (full variant)
    train_on: str | None = None  # dataset to train on when no checkpoint is given (default: first)
    train: TrainEntry = Field(default_factory=TrainEntry)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DETECTORS:
            raise ValueError(f"unknown detector {v!r}; allowed: {sorted(DETECTORS)}")
        return v


class MethodEntry(_Strict):
    name: str
    bits: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None  # how reports name this entry (default: the method name)

    @field_validator("bits", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("bits")
    @classmethod
    def _parse(cls, v: list[str]) -> list[str]:
        return [BitSpec.parse(b).label for b in v]

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; allowed: {sorted(METHODS)}")
        return v

    @model_validator(mode="after")
    def _bits_needed(self):
        info = METHODS[self.name]
        if info.quantizes and not self.bits:
            raise ValueError(f"method {self.name!r} needs bits, e.g. bits: [W8A8, W4A4]")
        if not info.quantizes and self.bits:
            raise ValueError(f"method {self.name!r} does not quantize; remove bits")
        unknown = set(self.options) - set(info.defaults) if info.defaults else set()
        if info.defaults and unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for {self.name}; allowed: {sorted(info.defaults)}")
        return self

    @property
    def display(self) -> str:
        return self.label or self.name


class CalibrationEntry(_Strict):
    frames: int = Field(default=512, ge=8)
    seed: int = 0
    first_last_bits: int | None = Field(default=8, ge=2, le=8)


class ParityEntry(_Strict):
    max_abs: float = Field(default=0.1, gt=0)  # limit on |p_sim - p_deployed| at `quantile` over frames
    # 1 = the maximum. Below 8 bits an integer runtime's requantization can round one
    # activation code differently from the float simulation, and a 4-bit grid turns that one
    # code into a visible score change on a few frames: 0.99 judges the bulk, AUC and decisions
    # the rest (measured, tiny-resnet min-max W4A4 ONNX: AUC equal to 1e-4, mean 0.007, p99
    # 0.13, max 0.26)
    quantile: float = Field(default=1.0, gt=0, le=1)
    auc: float = Field(default=0.01, gt=0)  # |AUC_sim - AUC_deployed|
    agreement_min: float = Field(default=0.95, gt=0, le=1)


class TrialsEntry(_Strict):
    devices: list[str] = Field(default_factory=lambda: ["local"])
    warmup: int = Field(default=10, ge=0)
    runs: int = Field(default=200, ge=0)
    min_secs: float = Field(default=0.0, ge=0)
    max_secs: float = Field(default=600.0, gt=0)
    threads: int = Field(default=0, ge=0)
    cooldown_s: float = Field(default=0.0, ge=0)
    cooldown_temp_c: float | None = None
    throttle_drift: float = Field(default=1.15, gt=1)  # last/first decile latency ratio that flags throttling
    retries: int = Field(default=2, ge=0)
    timeout_s: float = Field(default=900.0, gt=0)


class ReportEntry(_Strict):
    history: int = Field(default=10, ge=1)
    auc_tolerance: float = Field(default=0.01, ge=0)
    fps_tolerance: float = Field(default=0.1, ge=0)


class Suite(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    seed: int = 0
    store: str = "runs/results.db"
    cache_dir: str = "runs/cache"
    out_dir: str = "runs"
    data_root: str | None = None
    devices: str | None = None  # devices.yaml; None = only the local machine
    datasets: list[DatasetEntry] = Field(min_length=1)
    detectors: list[DetectorEntry] = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    formats: list[str] = Field(default_factory=lambda: ["onnx", "tflite"], min_length=1)
    calibration: CalibrationEntry = Field(default_factory=CalibrationEntry)
    parity: ParityEntry = Field(default_factory=ParityEntry)
    trials: TrialsEntry = Field(default_factory=TrialsEntry)
    gates: dict[str, Any] = Field(default_factory=dict)
    report: ReportEntry = Field(default_factory=ReportEntry)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        allowed = {"onnx", "tflite", *EXPORTERS}
        bad = [f for f in v if f not in allowed]
        if bad:
            raise ValueError(f"unknown format(s) {bad}; allowed: {sorted(allowed)}")
        return v

    @field_validator("gates")
    @classmethod
    def _gates(cls, v: dict) -> dict:
        bad = set(v) - set(GATE_KEYS)
        if bad:
            raise ValueError(f"unknown gate(s) {sorted(bad)}; allowed: {sorted(GATE_KEYS)}")
        for key in ("auc_drop_max", "parity_max_abs", "decision_agreement_min"):
            if key in v and (isinstance(v[key], bool) or not isinstance(v[key], (int, float)) or v[key] < 0):
                raise ValueError(f"gates.{key}: expected a number >= 0, got {v[key]!r}")
        fps = v.get("fps_min")
        if fps is not None:
            items = fps.items() if isinstance(fps, dict) else [("*", fps)]
            for tag, limit in items:
                if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
                    raise ValueError(f"gates.fps_min[{tag!r}]: expected a number >= 0 (per device name, tag or '*'), got {limit!r}")
        if "max_failed_trials" in v and (isinstance(v["max_failed_trials"], bool) or not isinstance(v["max_failed_trials"], int) or v["max_failed_trials"] < 0):
            raise ValueError(f"gates.max_failed_trials: expected an integer >= 0, got {v['max_failed_trials']!r}")
        if "no_regressions" in v and not isinstance(v["no_regressions"], bool):
            raise ValueError(f"gates.no_regressions: expected true or false, got {v['no_regressions']!r}")
        return v

    @model_validator(mode="after")
    def _cross(self):
        labels = [m.display for m in self.methods]
        dupes = sorted({n for n in labels if labels.count(n) > 1})
        if dupes:
            raise ValueError(f"methods: entries {dupes} appear twice with the same label; give them distinct `label`s")
        names = [d.name for d in self.datasets]
        for i, det in enumerate(self.detectors):
            if det.train_on and det.train_on not in names:
                raise ValueError(f"detectors.{i}.train_on: {det.train_on!r} is not a dataset of this suite; allowed: {names}")
            if det.variant == "full" and not det.checkpoint:
                raise ValueError(f"detectors.{i}: the full variant needs a checkpoint (DeepfakeBench *_best.pth)")
        needs_root = [d.name for d in self.datasets if DATASETS[d.name].needs_root]
        if needs_root and not self.data_root:
            raise ValueError(f"data_root: datasets {needs_root} read files; set data_root to the folder holding them")
        return self

    # ---------------------------------------------------------------------------------
    def digest(self) -> str:
        blob = json.dumps(self.model_dump(exclude={"profiles"}), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def format_errors(path: Path | str, exc: ValidationError, prefix: str = "") -> str:
    lines = [f"{path}: invalid suite ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = prefix + (".".join(str(p) for p in err["loc"]) or "(top level)")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key missing"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_suite(path: str | Path, profile: str | None = None, overrides: dict | None = None) -> tuple[Suite, str]:
    """Validated suite and the exact text it came from."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: suite file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if profile:
        profiles = data.get("profiles") or {}
        if profile not in profiles:
            raise SuiteError(f"{path}: profiles.{profile}: no such profile; allowed: {sorted(profiles)}")
        data = _merge({k: v for k, v in data.items() if k != "profiles"}, profiles[profile])
        data["profiles"] = profiles
    if overrides:
        data = _merge(data, overrides)
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(format_errors(path, exc)) from exc
    if not profile:  # a bad edit to any profile is caught now, not on the night it is used
        for name, over in (data.get("profiles") or {}).items():
            if not isinstance(over, dict):
                raise SuiteError(f"{path}: invalid suite\n  profiles.{name}: expected a mapping of overrides")
            try:
                Suite.model_validate(_merge({k: v for k, v in data.items() if k != "profiles"}, over))
            except ValidationError as exc:
                raise SuiteError(format_errors(path, exc, prefix=f"profiles.{name}.")) from exc
    base = path.parent
    for key in ("store", "cache_dir", "out_dir", "data_root", "devices"):
        value = getattr(suite, key)
        if value and not Path(value).expanduser().is_absolute():
            setattr(suite, key, str((base / value).resolve()))
    if suite.devices and not Path(suite.devices).is_file():
        raise SuiteError(f"{path}: devices: file not found: {suite.devices}")
    if suite.data_root and not Path(suite.data_root).is_dir():
        raise SuiteError(
            f"{path}: data_root: folder not found: {suite.data_root} (point it at DeepfakeBench's preprocessed data; "
            "see https://github.com/SCLBD/DeepfakeBench#2-download-data)"
        )
    for i, det in enumerate(suite.detectors):
        if det.checkpoint and not Path(det.checkpoint).expanduser().is_file():
            raise SuiteError(f"{path}: detectors.{i}.checkpoint: file not found: {det.checkpoint}")
    return suite, text
