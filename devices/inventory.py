"""The inventory (devices.yaml): what devices exist and how they are reached.

The YAML says what exists; transports (devices/transports/) say how to reach it. Credentials
are references (a key file path, the agent) — never a secret in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

RUNTIMES = (
    "onnxruntime-cpu",
    "onnxruntime-cuda",
    "onnxruntime-tensorrt",
    "onnxruntime-xnnpack",
    "litert",
    "litert-xnnpack",
    "litert-gpu",
    "litert-nnapi",
)


def runtime_format(runtime: str) -> str:
    """The artifact family a runtime executes: 'onnx' or 'tflite'."""
    return "onnx" if runtime.startswith("onnxruntime") else "tflite"


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    runtimes: list[str] = Field(default_factory=lambda: ["onnxruntime-cpu", "litert"])
    threads: int = Field(default=0, ge=0, le=256)
    cpu_affinity: list[int] | None = None
    tags: list[str] = Field(default_factory=list)
    workdir: str | None = None
    python: str = "python3"
    timeout_s: float = Field(default=900.0, gt=0)

    @field_validator("runtimes")
    @classmethod
    def _known_runtimes(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if r not in RUNTIMES]
        if bad:
            raise ValueError(f"unknown runtime(s) {bad}; allowed: {list(RUNTIMES)}")
        if not v:
            raise ValueError("at least one runtime is needed")
        return v


class LocalDevice(_Base):
    transport: Literal["local"] = "local"


class SSHDevice(_Base):
    transport: Literal["ssh"]
    address: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str
    key_file: str | None = None  # path to a private key; None = ssh-agent
    known_hosts: str = "~/.ssh/known_hosts"
    trust_on_first_use: bool = False  # explicit opt-in; unknown host keys are rejected otherwise
    connect_timeout_s: float = Field(default=10.0, gt=0)
    keepalive_s: float = Field(default=5.0, gt=0)
    workdir: str | None = "/tmp/defakeq"


class ADBDevice(_Base):
    transport: Literal["adb"]
    address: str  # host:port of the device's adbd (TCP)
    adbkey: str = "~/.android/adbkey"
    benchmark_model: str = "/data/local/tmp/benchmark_model"
    workdir: str | None = "/data/local/tmp/defakeq"
    connect_timeout_s: float = Field(default=10.0, gt=0)
    runtimes: list[str] = Field(default_factory=lambda: ["litert-xnnpack"])


Device = Annotated[LocalDevice | SSHDevice | ADBDevice, Field(discriminator="transport")]


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[Device]

    def by_name(self) -> dict[str, LocalDevice | SSHDevice | ADBDevice]:
        return {d.name: d for d in self.devices}

    @field_validator("devices")
    @classmethod
    def _unique(cls, v: list) -> list:
        names = [d.name for d in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"device names must be unique; repeated: {dupes}")
        return v


DEFAULT_INVENTORY = Inventory(devices=[LocalDevice(name="local", tags=["host"])])


class InventoryError(ValueError):
    """A devices.yaml that cannot be used; the message names the file and the key."""


def load_inventory(path: str | Path | None) -> Inventory:
    if path is None:
        return DEFAULT_INVENTORY
    path = Path(path)
    if not path.is_file():
        raise InventoryError(f"{path}: devices file not found (suite key: devices)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return Inventory.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(format_validation_error(path, exc)) from exc


def format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)
