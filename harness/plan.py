"""Expanding a suite into its job graph: quantize -> export -> trial per device and runtime."""

from __future__ import annotations

from dataclasses import dataclass, field

from devices.inventory import Inventory, runtime_format
from quant import METHODS

from .export import EXPORTERS, formats_for
from .suite import Suite, SuiteError


@dataclass(frozen=True)
class QuantJob:
    detector: str
    method: str  # registry name
    label: str  # how results name it (suite label or method name)
    bits: str  # BitSpec label, or "fp32"
    options: tuple = ()  # sorted (key, value) pairs

    @property
    def key(self) -> str:
        return f"{self.detector}/{self.label}/{self.bits}"


@dataclass(frozen=True)
class ExportJob:
    quant: QuantJob
    format: str  # exporter name

    @property
    def family(self) -> str:
        return EXPORTERS[self.format].family

    @property
    def key(self) -> str:
        return f"{self.quant.key}/{self.format}"


@dataclass(frozen=True)
class TrialJob:
    export: ExportJob
    dataset: str
    device: str
    runtime: str

    @property
    def key(self) -> str:
        return f"{self.export.key}/{self.dataset}/{self.device}/{self.runtime}"


@dataclass
class Plan:
    quant: list[QuantJob] = field(default_factory=list)
    export: list[ExportJob] = field(default_factory=list)
    trials: list[TrialJob] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _freeze(options: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in options.items()))


def make_plan(suite: Suite, inventory: Inventory) -> Plan:
    plan = Plan()
    devices = inventory.by_name()
    unknown = [d for d in suite.trials.devices if d not in devices]
    if unknown:
        raise SuiteError(f"trials.devices: unknown device(s) {unknown}; the inventory has {sorted(devices)}")
    for det in suite.detectors:
        for m in suite.methods:
            quantizes = METHODS[m.name].quantizes
            for bits in m.bits or ["fp32"]:
                qjob = QuantJob(det.name, m.name, m.display, bits, _freeze(m.options))
                plan.quant.append(qjob)
                for fmt in suite.formats:
                    for name in formats_for(fmt, quantizes):
                        ejob = ExportJob(qjob, name)
                        if ejob in plan.export:
                            continue
                        plan.export.append(ejob)
                        for dev_name in suite.trials.devices:
                            dev = devices[dev_name]
                            runtimes = [r for r in dev.runtimes if runtime_format(r) == ejob.family]
                            if not runtimes:
                                plan.warnings.append(f"device {dev_name} has no runtime for {name} artifacts (has {dev.runtimes})")
                            for rt in runtimes:
                                for ds in suite.datasets:
                                    plan.trials.append(TrialJob(ejob, ds.name, dev_name, rt))
    plan.warnings = sorted(set(plan.warnings))
    return plan
