"""Transports by name: how the controller reaches a device (the inventory says which).

`open_transport(device)` looks the device's `transport` up in TRANSPORTS; each entry is a
"module:Class" whose class has `from_device(device) -> Transport`; the transport it returns
carries the inventory entry as `.device`. Modules load lazily so that
a controller without paramiko/adb-shell can still drive local devices.
"""

from __future__ import annotations

import importlib

from .base import ExecResult, Transport, TransportError
from .local import LocalTransport

TRANSPORTS: dict[str, str] = {
    "local": "devices.transports.local:LocalTransport",
    "ssh": "devices.transports.ssh:SSHTransport",
    "adb": "devices.transports.adb:ADBTransport",
}


def open_transport(device) -> Transport:
    try:
        target = TRANSPORTS[device.transport]
    except KeyError:
        raise TransportError(f"device {device.name}: unknown transport {device.transport!r}; allowed: {sorted(TRANSPORTS)}") from None
    module, _, cls = target.partition(":")
    transport = getattr(importlib.import_module(module), cls).from_device(device)
    # The inventory entry travels with its transport: devices.trial.run_trial dispatches on it
    # (runner choice, benchmark_model path, CPU affinity, lock identity).
    transport.device = device
    return transport


__all__ = ["TRANSPORTS", "ExecResult", "LocalTransport", "Transport", "TransportError", "open_transport"]
