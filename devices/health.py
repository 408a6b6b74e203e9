"""`defakeq devices check`: is a device reachable, what is it, and can it run a trial?

`check(device)` never raises for a device problem: it returns one dict per device with
`ok`, `reachable`, `error`, `problems` (what blocks a trial), `warnings` and the facts found
(OS, CPU/SoC, memory, disk, temperatures, python/numpy/runtime versions on the device).

Checks are looked up by the device's transport in CHECKS. Local and SSH devices share one
probe that needs only the Transport protocol (`sh` for the OS facts, the device python for
the versions). A value may be a callable or a lazy "module:function" string, so the ADB
transport's module provides its own check without this file importing adb-shell.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .runner.defakeq_runner import LiteRTModel, OrtModel
from .transports import open_transport
from .transports.base import Transport, TransportError

HOT_C = 80.0  # a board this hot throttles: latency numbers would not be comparable
LOW_DISK_MB = 500.0
PROBE_TIMEOUT_S = 60.0

# Plain POSIX sh (BusyBox too): one `key=value` line per fact, read by parse_shell_probe.
SHELL_PROBE = r"""
echo "kernel=$(uname -sr 2>/dev/null)"
echo "machine=$(uname -m 2>/dev/null)"
echo "hostname=$(uname -n 2>/dev/null)"
[ -r /etc/os-release ] && sed -n 's/^PRETTY_NAME=/os=/p' /etc/os-release
[ -r /proc/cpuinfo ] && grep -m1 -i -E '^(model name|hardware|cpu model)[[:space:]]*:' /proc/cpuinfo | sed 's/^[^:]*:[[:space:]]*/cpu=/'
[ -r /proc/device-tree/model ] && echo "soc=$(tr -d '\000' < /proc/device-tree/model)"
echo "cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null)"
[ -r /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq ] && echo "freq_khz=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq)"
[ -r /proc/meminfo ] && sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\).*/mem_kb=\1/p' /proc/meminfo
[ -r /proc/loadavg ] && echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
echo "disk_kb=$(df -Pk . 2>/dev/null | tail -n 1 | awk '{print $4}')"
for z in /sys/class/thermal/thermal_zone*; do
  [ -r "$z/temp" ] && echo "temp=${z##*/}:$(cat "$z/type" 2>/dev/null):$(cat "$z/temp" 2>/dev/null)"
done
true
"""

# Runs with the device's python; reports what the runner would find there.
PYTHON_PROBE = r"""
import importlib, importlib.util, json, platform, sys
info = {"version": platform.python_version(), "executable": sys.executable}
try:
    import numpy
    info["numpy"] = numpy.__version__
except Exception as e:
    info["numpy_error"] = f"{type(e).__name__}: {e}"
try:
    import onnxruntime as ort
    info["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
except Exception as e:
    info["onnxruntime_error"] = f"{type(e).__name__}: {e}"
for mod, pkg in (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime")):
    try:
        importlib.import_module(mod)
    except Exception as e:
        info.setdefault("litert_errors", []).append(f"{mod}: {type(e).__name__}: {e}")
        continue
    try:
        from importlib.metadata import version
        v = version(pkg)
    except Exception:
        v = "unknown"
    info["litert"] = {"package": mod.split(".")[0], "version": v}
    break
if "litert" not in info and importlib.util.find_spec("tensorflow") is not None:
    try:
        from importlib.metadata import version
        info["litert"] = {"package": "tensorflow", "version": version("tensorflow")}
    except Exception:
        info["litert"] = {"package": "tensorflow", "version": "unknown"}
print(json.dumps(info))
"""


def parse_shell_probe(text: str) -> dict:
    """SHELL_PROBE output -> os/cpu/memory/disk/temperature facts (missing ones are None)."""
    kv: dict[str, str] = {}
    temps: dict[str, float] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if key == "temp":
            zone, _, rest = value.partition(":")
            kind, _, milli = rest.rpartition(":")
            if milli.lstrip("-").isdigit():
                temps[f"{zone}:{kind}" if kind else zone] = int(milli) / 1000.0
        else:
            kv[key] = value

    def num(key: str, scale: float = 1.0) -> float | None:
        try:
            return float(kv[key]) * scale
        except (KeyError, ValueError):
            return None

    load = kv.get("load", "").split()
    return {
        "os": {
            "kernel": kv.get("kernel") or None,
            "machine": kv.get("machine") or None,
            "hostname": kv.get("hostname") or None,
            "name": kv.get("os", "").strip("\"'") or None,
        },
        "cpu": {
            "model": kv.get("cpu") or None,
            "soc": kv.get("soc") or None,
            "count": int(num("cpus")) if num("cpus") else None,
            "freq_mhz": num("freq_khz", 1e-3),
        },
        "memory_mb": num("mem_kb", 1 / 1024),
        "disk_free_mb": num("disk_kb", 1 / 1024),
        "load": [float(x) for x in load] if len(load) == 3 else None,
        "temps_c": temps,
        "max_temp_c": max(temps.values()) if temps else None,
    }


def runtime_status(runtime: str, py: dict) -> dict:
    """Whether the device python can run `runtime` the way the on-device runner opens it."""
    if runtime.startswith("onnxruntime"):
        ort = py.get("onnxruntime")
        if not ort:
            return {
                "available": False,
                "version": None,
                "detail": py.get("onnxruntime_error", "onnxruntime missing"),
            }
        provider = OrtModel.PROVIDERS.get(runtime, ["?"])[0]
        have = provider in ort["providers"]
        detail = (
            f"{provider} available" if have else f"{provider} missing (have {ort['providers']})"
        )
        return {"available": have, "version": ort["version"], "detail": detail}
    lite = py.get("litert")
    if runtime not in LiteRTModel.DELEGATES:
        return {
            "available": False,
            "version": None,
            "detail": f"{runtime} runs through benchmark_model on Android, not the Python runner",
        }
    if not lite:
        return {
            "available": False,
            "version": None,
            "detail": "; ".join(py.get("litert_errors", [])) or "no LiteRT interpreter",
        }
    detail = f"{lite['package']} interpreter"
    if LiteRTModel.DELEGATES[runtime]:
        detail += f"; delegate {LiteRTModel.DELEGATES[runtime]} is loaded only at trial time"
    return {"available": True, "version": f"{lite['package']} {lite['version']}", "detail": detail}


def blank(device) -> dict[str, Any]:
    return {
        "device": device.name,
        "transport": device.transport,
        "ok": False,
        "reachable": False,
        "error": None,
        "problems": [],
        "warnings": [],
        "connect_s": None,
        "rtt_ms": None,
        "workdir": None,
        "python": None,
        "numpy": None,
        "runtimes": {},
    }


def probe(
    transport: Transport, device, result: dict[str, Any], timeout: float = PROBE_TIMEOUT_S
) -> dict[str, Any]:
    """Fill `result` from a connected POSIX transport (sh + the device python)."""
    t = time.perf_counter()
    res = transport.exec(["true"], timeout=timeout)
    result["rtt_ms"] = round((time.perf_counter() - t) * 1000, 2)
    result["reachable"] = res.rc == 0
    result["workdir"] = transport.workdir()
    facts = transport.exec(["sh", "-c", SHELL_PROBE], timeout=timeout)
    result.update(parse_shell_probe(facts.stdout))
    info = python_info(transport, device, result, timeout)
    for runtime in device.runtimes:
        status = runtime_status(runtime, info)
        result["runtimes"][runtime] = status
        if not status["available"]:
            result["problems"].append(f"runtime {runtime} unavailable: {status['detail']}")
    check_affinity(transport, device, result, timeout)
    add_warnings(result)
    return result


def python_info(transport: Transport, device, result: dict[str, Any], timeout: float) -> dict:
    """Run PYTHON_PROBE with the device's python; fill python/numpy (or a problem)."""
    py = transport.exec(["python3", "-c", PYTHON_PROBE], timeout=timeout)
    try:
        info = json.loads(py.stdout.strip().splitlines()[-1]) if py.rc == 0 else None
    except (ValueError, IndexError):
        info = None
    if info is None:
        result["problems"].append(
            f"python {device.python!r} not runnable on the device (exit {py.rc}): {py.stderr.strip()[-200:]}"
        )
        return {}
    result["python"] = {
        "path": device.python,
        "version": info["version"],
        "executable": info["executable"],
    }
    result["numpy"] = info.get("numpy")
    if not result["numpy"]:
        result["problems"].append(f"numpy missing: {info.get('numpy_error')}")
    return info


def check_affinity(transport: Transport, device, result: dict[str, Any], timeout: float) -> None:
    """A pinned device needs `taskset` and the CPUs it names."""
    cpus = getattr(device, "cpu_affinity", None)
    if not cpus:
        return
    mask = format(sum(1 << c for c in cpus), "x")
    res = transport.exec(["taskset", mask, "true"], timeout=timeout)
    if res.rc != 0:
        result["problems"].append(
            f"cpu_affinity {cpus}: `taskset {mask} true` failed (exit {res.rc}): "
            f"{(res.stderr or res.stdout).strip()[-200:]}"
        )


def add_warnings(result: dict[str, Any]) -> None:
    if result.get("max_temp_c") is not None and result["max_temp_c"] >= HOT_C:
        result["warnings"].append(f"hot: {result['max_temp_c']:.1f} C (>= {HOT_C:.0f} C throttles)")
    if result.get("disk_free_mb") is not None and result["disk_free_mb"] < LOW_DISK_MB:
        result["warnings"].append(
            f"low disk in the work folder: {result['disk_free_mb']:.0f} MB free"
        )


def check_posix(device) -> dict[str, Any]:
    """Health of a device reached through a POSIX transport (local, ssh)."""
    result = blank(device)
    t0 = time.perf_counter()
    transport = None
    try:
        transport = open_transport(device)
        connect = getattr(transport, "connect", None)
        if callable(connect):
            connect()  # separate the connection time from the probe time where the transport can
        result["connect_s"] = round(time.perf_counter() - t0, 4)
        probe(transport, device, result, timeout=min(PROBE_TIMEOUT_S, device.timeout_s))
    except TransportError as exc:
        result["error"] = str(exc)
    finally:
        if transport is not None:
            transport.close()  # a local scratch folder made for this check goes with it
            if device.transport == "local" and not device.workdir:
                result["workdir"] = None
    result["ok"] = result["reachable"] and not result["problems"] and result["error"] is None
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


# transport name -> check(device) -> dict; "module:function" strings load on first use.
CHECKS: dict[str, Callable[[Any], dict] | str] = {
    "local": check_posix,
    "ssh": check_posix,
    "adb": "devices.transports.adb:health_check",
}


def _resolve(transport: str) -> Callable[[Any], dict]:
    target = CHECKS[transport]
    if callable(target):
        return target
    module, _, func = target.partition(":")
    fn = getattr(importlib.import_module(module), func)
    CHECKS[transport] = fn
    return fn


def check(device) -> dict[str, Any]:
    """One device's health; failures land in the dict (`ok`, `error`), never as exceptions."""
    if device.transport not in CHECKS:
        result = blank(device)
        result["error"] = (
            f"no health check for transport {device.transport!r}; known: {sorted(CHECKS)}"
        )
        return result
    try:
        fn = _resolve(device.transport)
    except (ImportError, AttributeError) as exc:
        result = blank(device)
        result["error"] = (
            f"health check {CHECKS[device.transport]!r} for {device.transport} not loadable: {exc}"
        )
        return result
    return fn(device)


def summary(result: dict[str, Any]) -> dict[str, str]:
    """One line per column for `defakeq devices check`: reachable, os, cpu/soc, runtimes
    (with versions), temperature and a note (the error, else problems and warnings)."""
    os_ = result.get("os") or {}
    cpu = result.get("cpu") or {}
    runtimes = []
    for name, st in (result.get("runtimes") or {}).items():
        mark = "" if st.get("available") else " (unavailable)"
        runtimes.append(f"{name} {st.get('version') or ''}".strip() + mark)
    temp = result.get("max_temp_c")
    count = f" x{cpu['count']}" if cpu.get("count") else ""
    note = result.get("error") or "; ".join(
        [*result.get("problems", []), *result.get("warnings", [])]
    )
    return {
        "name": str(result.get("device", "")),
        "reachable": "yes" if result.get("reachable") else "no",
        "os": " / ".join(x for x in (os_.get("name"), os_.get("kernel"), os_.get("machine")) if x)
        or "-",
        "cpu/soc": " / ".join(x for x in (cpu.get("soc"), (cpu.get("model") or "") + count) if x)
        or "-",
        "runtimes": ", ".join(runtimes) or "-",
        "temp °C": "-" if temp is None else f"{temp:.1f}",
        "note": note or ("ok" if result.get("ok") else ""),
    }


def check_all(devices: list, workers: int = 8) -> list[dict[str, Any]]:
    """Check many devices in parallel (a dead one costs its own timeouts, not everyone's)."""
    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(devices)))) as pool:
        return list(pool.map(check, devices))
