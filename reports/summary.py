"""The at-a-glance matrix: per quantized model, worst ΔAUC and FPS per device, coloured by
the gates, so "does this detector keep its AUC and reach 30 FPS on our chip?" is one look."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from reports.gates import fps_threshold
from reports.tables import PaperTable


@dataclass
class GlanceCell:
    text: str
    state: str | None = None  # pass | fail | None (no gate)
    title: str = ""


@dataclass
class Glance:
    devices: list[str]
    rows: list[dict] = field(default_factory=list)  # label, family, auc: GlanceCell, fps: [...]


def build(tables: list[PaperTable], dep: pd.DataFrame, trials: pd.DataFrame,
          gates: dict) -> Glance:
    devices = list(dict.fromkeys(dep["device"])) if not dep.empty else []
    g = Glance(devices)
    seen: set[tuple[str, str]] = set()
    for t in tables:
        detector = t.detector
        for r in t.rows():
            if r.reference:  # FP32 once per detector, not once per bit budget
                if (detector, r.label) in seen:
                    continue
                seen.add((detector, r.label))
            deltas = [c.delta for c in r.cells[:-1] if c.delta is not None]
            if r.reference:
                auc = GlanceCell("reference")
            elif deltas:
                worst = min(deltas)
                lim = gates.get("auc_drop_max")
                state = None if lim is None else ("pass" if -worst <= lim + 1e-9 else "fail")
                auc = GlanceCell(f"{worst:+.3f}", state,
                                 f"worst ΔAUC over {len(deltas)} dataset(s)"
                                 + (f"; auc_drop_max {lim:g}" if lim is not None else ""))
            else:
                auc = GlanceCell("—", None, "no FP32 reference")
            fps_cells = []
            for dev in devices:
                sel = dep[(dep["detector"] == detector) & (dep["method"] == r.method)
                          & (dep["bits"] == r.bits) & (dep["device"] == dev)
                          & dep["fps_worst"].notna()]
                if sel.empty:
                    st = trials[(trials["detector"] == detector) & (trials["method"] == r.method)
                                & (trials["bits"] == r.bits) & (trials["device"] == dev)]
                    why = ", ".join(sorted(set(st["status"]))) or "not run on this device"
                    fps_cells.append(GlanceCell("—", None, why))
                    continue
                best = sel.sort_values("fps_worst", ascending=False).iloc[0]
                th = None
                if "fps_min" in gates and not r.reference:
                    th = fps_threshold(gates["fps_min"], dev, best["device_tags"])
                state = None if th is None else ("pass" if best["fps_worst"] >= th[0] - 1e-9
                                                 else "fail")
                tip = f"{best['runtime']} ({best['format']}), worst trial"
                if th is not None:
                    tip += f"; fps_min {th[0]:g} via {th[1]!r}"
                fps_cells.append(GlanceCell(f"{best['fps_worst']:.1f}", state, tip))
            g.rows.append({"detector": detector, "label": r.label, "bits": r.bits,
                           "family": r.family, "auc": auc, "fps": fps_cells})
    return g
