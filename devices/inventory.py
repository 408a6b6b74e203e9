"""The inventory (devices.yaml): what devices exist and how they are reached.

The YAML says what exists; transports (devices/transports/) say how to reach it. Credentials
are references only — a key file path, the NAME of an environment variable holding a key
passphrase, or the ssh-agent — never a secret in the file: a key that looks like one
(`password:`, `token:`, an inline private key ...) is rejected with a message that names the
key and never echoes its value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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

# Keys whose name says "secret". The allowed reference keys are listed so the message can
# point at them; anything else matching is refused.
_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?$|^pw$|secret|token|api[_-]?key|private[_-]?key|credential|^auth$",
    re.IGNORECASE,
)
_REFERENCE_KEYS = {"key_file", "key_passphrase_env", "adbkey", "known_hosts"}
_INLINE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|PuTTY-User-Key-File")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*)):(?P<port>\d{1,5})$"
)
_HOSTNAME = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*|[A-Za-z0-9][A-Za-z0-9.-]*)$"
)


def runtime_format(runtime: str) -> str:
    """The artifact family a runtime executes: 'onnx' or 'tflite'."""
    return "onnx" if runtime.startswith("onnxruntime") else "tflite"


def _no_inline_secrets(data: Any, where: str = "") -> None:
    """Refuse keys that hold secrets and values that are private keys (never quoting them)."""
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and key not in _REFERENCE_KEYS and _SECRET_KEY.search(key):
                raise ValueError(
                    f"{path}: looks like an inline secret; devices.yaml holds references only: "
                    "key_file (a path to a private key), key_passphrase_env (the NAME of an "
                    "environment variable holding its passphrase) or the ssh-agent (no key_file)"
                )
            _no_inline_secrets(value, path)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _no_inline_secrets(value, f"{where}.{i}")
    elif isinstance(data, str) and _INLINE_KEY.search(data):
        raise ValueError(
            f"{where}: holds an inline private key; put the key in a file (mode 600) and set "
            "key_file to its path"
        )


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    runtimes: list[str] = Field(default_factory=lambda: ["onnxruntime-cpu", "litert"])
    threads: int = Field(default=0, ge=0, le=256)
    # CPUs the runner is pinned to (`taskset <mask>` in the command, Linux and Android).
    cpu_affinity: list[int] | None = None
    tags: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")]] = Field(
        default_factory=list
    )
    workdir: str | None = None
    python: str = Field(default="python3", min_length=1)
    timeout_s: float = Field(default=900.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _refuse_secrets(cls, data: Any) -> Any:
        _no_inline_secrets(data)
        return data

    @field_validator("runtimes")
    @classmethod
    def _known_runtimes(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if r not in RUNTIMES]
        if bad:
            raise ValueError(f"unknown runtime(s) {bad}; allowed: {list(RUNTIMES)}")
        if not v:
            raise ValueError("at least one runtime is needed")
        return v

    @field_validator("cpu_affinity")
    @classmethod
    def _cpus(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("an empty CPU list pins the runner nowhere; omit the key instead")
        if any(c < 0 or c > 1023 for c in v) or len(set(v)) != len(v):
            raise ValueError(f"CPU numbers must be distinct, 0..1023 (got {v})")
        return sorted(v)

    @field_validator("python")
    @classmethod
    def _python(cls, v: str) -> str:
        if "\0" in v or "\n" in v:
            raise ValueError("the python command must be one line")
        return v


class LocalDevice(_Base):
    transport: Literal["local"] = "local"


class SSHDevice(_Base):
    transport: Literal["ssh"]
    address: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
    key_file: str | None = None  # path to a private key; None = ssh-agent
    # NAME of the environment variable holding key_file's passphrase (never the passphrase).
    key_passphrase_env: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    trust_on_first_use: bool = False  # explicit opt-in; unknown host keys are rejected otherwise
    connect_timeout_s: float = Field(default=10.0, gt=0)
    keepalive_s: float = Field(default=5.0, gt=0)
    attempts: int = Field(default=3, ge=1, le=20)  # connection attempts on transient failures
    backoff_s: float = Field(default=0.5, ge=0)  # first retry delay, doubled per attempt
    io_timeout_s: float = Field(default=30.0, gt=0)  # each SFTP reply, each hash
    dead_after_s: float | None = Field(default=None, gt=0)  # TCP_USER_TIMEOUT; None: derived
    workdir: str | None = "/tmp/defakeq"

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not _HOSTNAME.match(v):
            raise ValueError(f"not a host name or IP address: {v!r} (the port goes in `port`)")
        return v

    @field_validator("key_passphrase_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            # Not echoed: a value that is not a variable name may be the passphrase itself.
            raise ValueError(
                "must be the NAME of an environment variable ([A-Za-z_][A-Za-z0-9_]*), "
                "not the passphrase"
            )
        return v


class ADBDevice(_Base):
    transport: Literal["adb"]
    address: str  # host:port of the device's adbd (TCP: `adb tcpip`, wireless debugging)
    adbkey: str = "~/.android/adbkey"
    benchmark_model: str = "/data/local/tmp/benchmark_model"
    # Who scores frames on the phone: `python` (Python 3 + numpy + a runtime on the phone: the
    # single-file runner) or `benchmark_model` (no Python: one benchmark_model run per frame).
    # TFLite latency always comes from benchmark_model; ONNX runtimes need `python`.
    runner: Literal["python", "benchmark_model"] = "benchmark_model"
    workdir: str | None = "/data/local/tmp/defakeq"
    connect_timeout_s: float = Field(default=10.0, gt=0)
    io_timeout_s: float = Field(default=60.0, gt=0)
    runtimes: list[str] = Field(default_factory=lambda: ["litert-xnnpack"])

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        m = _HOST_PORT.match(v)
        if not m or not 0 < int(m.group("port")) < 65536:
            raise ValueError(f"expected host:port (e.g. 192.168.1.20:5555), got {v!r}")
        return v

    @field_validator("workdir", "benchmark_model")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(
                f"must be an absolute device path (e.g. /data/local/tmp/...), got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _runner_fits_runtimes(self) -> ADBDevice:
        if self.runner == "benchmark_model":
            onnx = [r for r in self.runtimes if runtime_format(r) == "onnx"]
            if onnx:
                raise ValueError(
                    f"runtimes {onnx} need the Python runner on the phone (runner: python); "
                    "benchmark_model runs TFLite only"
                )
        return self


AnyDevice = LocalDevice | SSHDevice | ADBDevice
Device = Annotated[AnyDevice, Field(discriminator="transport")]


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[Device]

    @model_validator(mode="before")
    @classmethod
    def _refuse_secrets(cls, data: Any) -> Any:
        _no_inline_secrets(data)  # before the per-transport schemas: covers entries they reject
        return data

    def by_name(self) -> dict[str, AnyDevice]:
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
        # Only the position: the parser's context snippet could quote a secret-bearing line.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise InventoryError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise InventoryError(f"{path}: expected a mapping with a `devices:` list at the top level")
    try:
        return Inventory.model_validate(data)
    except ValidationError as exc:
        # `from None`: the chained ValidationError repr carries the input values.
        raise InventoryError(format_validation_error(path, exc)) from None


def format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key missing"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
