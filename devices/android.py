"""Android facts read over a transport: build properties, temperatures and CPU frequencies.

* ``device_facts``: ``getprop`` → model, SoC, Android version, ABI;
* ``snapshot``: one shell round trip for ``dumpsys thermalservice`` (the thermal HAL's current
  temperatures), ``dumpsys battery`` (battery temperature, tenths of °C) and every CPU's
  ``/sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq`` (kHz); the result has the keys of
  the runner's ``thermal_state`` (temps_c, max_temp_c, freq_mhz, at, source) with the Android
  extras (thermal status, sensor types, battery) under ``android``.

devices/trial.py calls ``facts``/``snapshot`` (as ADBTransport methods) around every trial.

Any object with ``exec(argv, timeout) -> ExecResult`` works (ADBTransport, or LocalTransport
on a host that has these tools). The parsers are pure functions over the tools' text output.
"""

from __future__ import annotations

import datetime
import re
from typing import Protocol

from .transports.base import ExecResult, TransportError


class _Execs(Protocol):
    name: str

    def exec(self, argv: list[str], timeout: float) -> ExecResult: ...


# Which property answers which question; the first one present wins (SoC naming varies by
# vendor and Android version: ro.soc.model exists from Android 12).
FACT_PROPS: dict[str, tuple[str, ...]] = {
    "model": ("ro.product.model",),
    "manufacturer": ("ro.product.manufacturer",),
    "device": ("ro.product.device",),
    "soc": ("ro.soc.model", "ro.board.platform", "ro.hardware"),
    "soc_manufacturer": ("ro.soc.manufacturer",),
    "android_version": ("ro.build.version.release",),
    "sdk": ("ro.build.version.sdk",),
    "abi": ("ro.product.cpu.abi",),
    "abilist": ("ro.product.cpu.abilist",),
    "fingerprint": ("ro.build.fingerprint",),
}

# android.os.Temperature.TYPE_* names, for readable reports.
TEMPERATURE_TYPES = {
    0: "cpu",
    1: "gpu",
    2: "battery",
    3: "skin",
    4: "usb_port",
    5: "power_amplifier",
    6: "bcl_voltage",
    7: "bcl_current",
    8: "bcl_percentage",
    9: "npu",
}

_MARK = "@@defakeq:"
SNAPSHOT_SCRIPT = (
    f"echo '{_MARK}thermal'; dumpsys thermalservice 2>&1; "
    f"echo '{_MARK}battery'; dumpsys battery 2>&1; "
    f"echo '{_MARK}cpufreq'; grep -H . /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq 2>/dev/null; "
    f"echo '{_MARK}end'"
)

_PROP_LINE = re.compile(r"^\[([^\]]*)\]: \[(.*)\]\s*$")
_TEMP = re.compile(
    r"Temperature\{mValue=(-?[0-9.]+(?:[eE][-+]?\d+)?|NaN), mType=(-?\d+), mName=([^,}]*), mStatus=(-?\d+)\}"
)
_CPUFREQ = re.compile(r"/cpu(\d+)/cpufreq/scaling_cur_freq:\s*(\d+)\s*$")


def parse_getprop(text: str) -> dict[str, str]:
    """``getprop`` with no arguments: ``[key]: [value]`` lines."""
    props = {}
    for line in text.splitlines():
        m = _PROP_LINE.match(line)
        if m:
            props[m.group(1)] = m.group(2)
    return props


def facts_from_props(props: dict[str, str]) -> dict:
    facts: dict = {}
    for fact, keys in FACT_PROPS.items():
        hit = next((k for k in keys if props.get(k)), None)
        facts[fact] = props[hit] if hit else None
        if fact == "soc":
            facts["soc_source"] = hit
    sdk = facts.get("sdk")
    facts["sdk"] = int(sdk) if sdk and sdk.isdigit() else None
    return facts


def device_facts(transport: _Execs, timeout: float = 30.0) -> dict:
    """Model, SoC, Android version and ABI from ``getprop``."""
    res = transport.exec(["getprop"], timeout=timeout)
    if res.rc != 0:
        raise TransportError(
            f"{transport.name}: getprop failed (exit {res.rc}): {res.stderr.strip()[-300:]}"
        )
    props = parse_getprop(res.stdout)
    if not props:
        raise TransportError(f"{transport.name}: getprop printed no [key]: [value] lines")
    facts = facts_from_props(props)
    facts["props"] = {k: props[k] for keys in FACT_PROPS.values() for k in keys if k in props}
    return facts


def parse_thermalservice(text: str) -> dict:
    """``dumpsys thermalservice``: the HAL's current temperatures (°C) and the thermal status.

    The "Current temperatures from HAL" block is authoritative; "Cached temperatures" (the
    last values pushed to listeners, possibly stale) is used only when the HAL block is absent.
    """
    status = re.search(r"^Thermal Status: (\d+)", text, re.M)
    sections: dict[str, list[tuple[float, int, str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("Current temperatures from HAL:"):
            current = "hal"
            continue
        if line.startswith("Cached temperatures:"):
            current = "cached"
            continue
        if line and not line[0].isspace():
            current = None
            continue
        m = _TEMP.search(line)
        if m and current:
            value = float(m.group(1))
            if value == value:  # NaN: the sensor is not fitted
                sections.setdefault(current, []).append(
                    (value, int(m.group(2)), m.group(3).strip())
                )
    rows = sections.get("hal") or sections.get("cached") or []
    return {
        "status": int(status.group(1)) if status else None,
        "source": "hal" if sections.get("hal") else ("cached" if rows else None),
        "temps_c": {name: value for value, _, name in rows},
        "types": {name: TEMPERATURE_TYPES.get(t, str(t)) for _, t, name in rows},
    }


def parse_battery(text: str) -> dict:
    """``dumpsys battery``: temperature (reported in tenths of °C), level, voltage (mV)."""
    out: dict = {"temp_c": None, "level": None, "voltage_mv": None}
    m = re.search(r"^\s*temperature: (-?\d+)\s*$", text, re.M)
    if m:
        out["temp_c"] = int(m.group(1)) / 10.0
    m = re.search(r"^\s*level: (\d+)\s*$", text, re.M)
    if m:
        out["level"] = int(m.group(1))
    m = re.search(r"^\s*voltage: (\d+)\s*$", text, re.M)
    if m:
        out["voltage_mv"] = int(m.group(1))
    return out


def parse_cpufreq(text: str) -> dict[str, float]:
    """``grep -H . …/cpu*/cpufreq/scaling_cur_freq`` lines → {"cpuN": MHz} (offline CPUs are absent)."""
    freqs = {}
    for line in text.splitlines():
        m = _CPUFREQ.search(line)
        if m:
            freqs[f"cpu{m.group(1)}"] = int(m.group(2)) / 1000.0
    return dict(sorted(freqs.items(), key=lambda kv: int(kv[0][3:])))


def _sections(text: str) -> dict[str, str]:
    parts: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(_MARK):
            current = line[len(_MARK) :].strip()
            parts.setdefault(current, [])
        elif current:
            parts[current].append(line)
    return {k: "\n".join(v) for k, v in parts.items()}


def parse_snapshot(text: str) -> dict:
    sec = _sections(text)
    if "end" not in sec:
        raise ValueError("snapshot output is truncated (no end marker)")
    thermal = parse_thermalservice(sec.get("thermal", ""))
    battery = parse_battery(sec.get("battery", ""))
    temps = dict(thermal["temps_c"])
    return {
        "temps_c": temps,
        "max_temp_c": max(temps.values()) if temps else None,
        "freq_mhz": parse_cpufreq(sec.get("cpufreq", "")),
        "source": "dumpsys",
        # Not temperatures of zones (a level is a percentage): kept apart from temps_c.
        "android": {
            "thermal_status": thermal["status"],
            "thermal_source": thermal["source"],
            "temp_types": thermal["types"],
            "battery_temp_c": battery["temp_c"],
            "battery_level": battery["level"],
            "battery_voltage_mv": battery["voltage_mv"],
        },
    }


def snapshot(transport: _Execs, timeout: float = 30.0) -> dict:
    """Temperatures and CPU frequencies now, in one round trip."""
    at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    res = transport.exec(["sh", "-c", SNAPSHOT_SCRIPT], timeout=timeout)
    try:
        snap = parse_snapshot(res.stdout)
    except ValueError as exc:
        raise TransportError(
            f"{transport.name}: thermal snapshot failed (exit {res.rc}): {exc}; "
            f"stderr: {res.stderr.strip()[-300:]}"
        ) from exc
    snap["at"] = at
    return snap
