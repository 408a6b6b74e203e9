"""devices/: reaching a device and running a trial there (never imports torch, quant or harness)."""

from .inventory import Device, Inventory, load_inventory
from .trial import TrialOutcome, TrialSpec, run_device_trial, run_trial

__all__ = [
    "Device",
    "Inventory",
    "TrialOutcome",
    "TrialSpec",
    "load_inventory",
    "run_device_trial",
    "run_trial",
]
