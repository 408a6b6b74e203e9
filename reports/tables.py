"""Paper tables: main (method x dataset per detector and bit budget), cross-detector summary,
DeFakeQ ablations. Each cell knows its value, ΔAUC vs FP32, CI and its best/second mark.

Marks: per column, among the quantized rows (families baseline, defakeq, ablation, other; the
FP32 row is a reference and never marked), by competition ranking of the values rounded to the
displayed precision: every cell with the highest displayed value is best (bold); the cells with
the next value are second (underlined) only if exactly one cell is best, so two methods tied for
first leave no second. The mean column averages the table's datasets and is empty for a method
that misses one of them (a mean over fewer datasets is not comparable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reports.columns import FAMILY_ORDER, FAMILY_TITLES, QUANTIZED_FAMILIES

DECIMALS = 3
MEAN = "Mean"


@dataclass
class Cell:
    value: float | None
    delta: float | None = None  # vs FP32 of the same detector and dataset
    mark: str | None = None  # "best" | "second" | None
    ci: tuple[float, float] | None = None
    n: int = 0  # trials summarised
    spread: tuple[float, float] | None = None  # min, max over trials when n > 1
    simulated: bool = False

    @property
    def tooltip(self) -> str:
        parts = []
        if self.ci is not None:
            parts.append(f"95% CI {self.ci[0]:.{DECIMALS}f}–{self.ci[1]:.{DECIMALS}f}")
        if self.n > 1 and self.spread is not None:
            parts.append(f"median of {self.n} trials, "
                         f"range {self.spread[0]:.{DECIMALS}f}–{self.spread[1]:.{DECIMALS}f}")
        if self.simulated:
            parts.append("simulated only (not deployed)")
        return "; ".join(parts)


@dataclass
class Row:
    label: str
    method: str
    family: str
    cells: list[Cell]
    bits: str = ""
    reference: bool = False
    extra: dict = field(default_factory=dict)  # ablation switches, sizes


@dataclass
class Group:
    family: str
    title: str
    rows: list[Row]


@dataclass
class PaperTable:
    key: str  # stable id for HTML anchors and tests
    title: str
    caption: str
    columns: list[str]
    groups: list[Group]
    extra_columns: list[str] = field(default_factory=list)  # ablation switches
    detector: str = ""
    bits: str = ""

    def rows(self) -> list[Row]:
        return [r for g in self.groups for r in g.rows]

    def marked(self, mark: str) -> set[tuple[str, str]]:
        """{(row label, column)} carrying `mark` (used by tests and the JUnit summary)."""
        return {(r.label, c) for r in self.rows() for c, cell in zip(self.columns, r.cells)
                if cell.mark == mark}


def slug(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9]+", "_", p).strip("_").lower() for p in parts)


def assign_marks(cells: list[Cell], eligible: list[bool], decimals: int = DECIMALS) -> None:
    """Set best/second marks in place (see module doc for the tie rule)."""
    vals = [round(c.value, decimals) if (e and c.value is not None) else None
            for c, e in zip(cells, eligible)]
    present = sorted({v for v in vals if v is not None}, reverse=True)
    if not present:
        return
    best = present[0]
    n_best = sum(v == best for v in vals)
    second = present[1] if len(present) > 1 and n_best == 1 else None
    for c, v in zip(cells, vals):
        c.mark = "best" if v == best else "second" if (second is not None and v == second) else None


def _mark_columns(rows: list[Row], ncols: int) -> None:
    eligible = [r.family in QUANTIZED_FAMILIES and not r.reference for r in rows]
    for j in range(ncols):
        assign_marks([r.cells[j] for r in rows], eligible)


def _group(rows: list[Row]) -> list[Group]:
    out = []
    for fam in FAMILY_ORDER:
        members = [r for r in rows if r.family == fam]
        if members:
            out.append(Group(fam, FAMILY_TITLES[fam], members))
    return out


def _cells_for(sub: pd.DataFrame, datasets: list[str], ref: dict[str, float]) -> list[Cell]:
    by_ds = {r["dataset"]: r for r in sub.to_dict("records")}
    cells = []
    for ds in datasets:
        r = by_ds.get(ds)
        if r is None:
            cells.append(Cell(None))
            continue
        delta = r["auc"] - ref[ds] if ds in ref else None
        spread = (r["auc_min"], r["auc_max"]) if r["n"] > 1 else None
        cells.append(Cell(r["auc"], delta, None, r["ci"], r["n"], spread, bool(r["simulated"])))
    vals = [c.value for c in cells]
    if vals and all(v is not None for v in vals):
        mean = float(np.mean(vals))
        refs = [ref.get(ds) for ds in datasets]
        d = mean - float(np.mean(refs)) if all(x is not None for x in refs) else None
        cells.append(Cell(mean, d, n=1, simulated=any(c.simulated for c in cells)))
    else:
        cells.append(Cell(None))
    return cells


def _datasets(cells: pd.DataFrame, detector: str) -> list[str]:
    return list(dict.fromkeys(cells.loc[cells["detector"] == detector, "dataset"]))


def main_tables(cells: pd.DataFrame, ref: dict[tuple[str, str], float]) -> list[PaperTable]:
    """One table per (detector, bit budget) of quantized methods, FP32 as the reference row."""
    tables = []
    quant = cells[cells["method_family"] != "fp32"]
    for det, bits in quant[["detector", "bits"]].drop_duplicates().itertuples(index=False):
        datasets = _datasets(cells, det)
        dref = {ds: ref[(det, ds)] for ds in datasets if (det, ds) in ref}
        rows = []
        fp = cells[(cells["detector"] == det) & (cells["method_family"] == "fp32")]
        if fp.empty and dref:  # no FP32 trial: the fp32_auc column still gives the reference
            cs = [Cell(dref.get(ds)) for ds in datasets]
            full = all(c.value is not None for c in cs)
            cs.append(Cell(float(np.mean([c.value for c in cs])) if full else None))
            rows.append(Row("FP32 (fp32_auc)", "fp32", "fp32", cs, reference=True))
        for (method, fbits), g in fp.groupby(["method", "bits"], sort=False):
            rows.append(Row(method, method, "fp32", _cells_for(g, datasets, dref), fbits, True))
        sub = quant[(quant["detector"] == det) & (quant["bits"] == bits)]
        for method, g in sub.groupby("method", sort=False):
            rows.append(Row(method, method, g["method_family"].iloc[0],
                            _cells_for(g, datasets, dref), bits))
        for r in rows:  # the reference has no delta against itself
            if r.reference:
                for c in r.cells:
                    c.delta = None
        _mark_columns(rows, len(datasets) + 1)
        tables.append(PaperTable(
            key=slug("main", det, bits),
            title=f"{det} — {bits}",
            caption=(f"Frame AUC of {det} quantized at {bits} per dataset (ΔAUC vs FP32 in "
                     f"brackets). Best quantized result in bold, second underlined."),
            columns=datasets + [MEAN], groups=_group(rows), detector=det, bits=bits))
    return tables


def cross_detector(cells: pd.DataFrame, ref: dict[tuple[str, str], float]) -> list[PaperTable]:
    """Per bit budget: mean AUC over each detector's datasets for every method (FP32 on top)."""
    out = []
    fp = cells[cells["method_family"] == "fp32"]
    quant = cells[cells["method_family"] != "fp32"]
    for bits in dict.fromkeys(quant["bits"]):
        at = quant[quant["bits"] == bits]
        detectors = list(dict.fromkeys(at["detector"]))
        sub_all = pd.concat([fp[fp["detector"].isin(detectors)], at])
        rows = []
        for (method, mbits), g in sub_all.groupby(["method", "bits"], sort=False):
            fam = g["method_family"].iloc[0]
            cs = []
            for det in detectors:
                datasets = _datasets(cells, det)
                sub = g[g["detector"] == det]
                dref = {ds: ref[(det, ds)] for ds in datasets if (det, ds) in ref}
                cs.append(_cells_for(sub, datasets, dref)[-1] if not sub.empty else Cell(None))
            rows.append(Row(method, method, fam, cs, mbits, reference=(fam == "fp32")))
        for r in rows:
            if r.reference:
                for c in r.cells:
                    c.delta = None
        _mark_columns(rows, len(detectors))
        out.append(PaperTable(
            key=slug("cross", bits), title=f"Cross-detector summary — {bits}",
            caption=(f"Mean frame AUC over each detector's datasets at {bits} (ΔAUC vs FP32 in "
                     "brackets); empty where a method misses a dataset. Best quantized result "
                     "per detector in bold, second underlined."),
            columns=detectors, groups=_group(rows), bits=bits))
    return out


def _switches(df: pd.DataFrame, det: str, bits: str, method: str) -> dict:
    sel = df[(df["detector"] == det) & (df["bits"] == bits) & (df["method"] == method)]
    out: dict = {}
    for e in sel["extra"]:
        sw = e.get("switches")
        if isinstance(sw, dict):
            out.update(sw)
    return out


def ablation_tables(df: pd.DataFrame, cells: pd.DataFrame,
                    ref: dict[tuple[str, str], float]) -> list[PaperTable]:
    """DeFakeQ vs its ablations per (detector, bits); switches from extra_json.switches."""
    tables = []
    abl = cells[cells["method_family"] == "ablation"]
    for det, bits in abl[["detector", "bits"]].drop_duplicates().itertuples(index=False):
        datasets = _datasets(cells, det)
        dref = {ds: ref[(det, ds)] for ds in datasets if (det, ds) in ref}
        sub = cells[(cells["detector"] == det) & (cells["bits"] == bits)
                    & cells["method_family"].isin(["defakeq", "ablation"])]
        rows = []
        for method, g in sub.groupby("method", sort=False):
            sel = df[(df["detector"] == det) & (df["bits"] == bits) & (df["method"] == method)]
            rows.append(Row(method, method, g["method_family"].iloc[0],
                            _cells_for(g, datasets, dref), bits, extra={
                                "switches": _switches(df, det, bits, method),
                                "avg_weight_bits": _median(sel["avg_weight_bits"]),
                                "packed_bytes": _median(sel["packed_bytes"]),
                            }))
        full = next((r for r in rows if r.family == "defakeq"), None)
        for r in rows:
            m, f = r.cells[-1].value, (full.cells[-1].value if full else None)
            r.extra["delta_vs_full"] = m - f if (m is not None and f is not None
                                                 and r is not full) else None
        _mark_columns(rows, len(datasets) + 1)
        names = list(dict.fromkeys(k for r in rows for k in r.extra["switches"]))
        tables.append(PaperTable(
            key=slug("ablation", det, bits), title=f"Ablation — {det} {bits}",
            caption=(f"DeFakeQ's switches on {det} at {bits}: frame AUC (ΔAUC vs FP32 in "
                     "brackets), mean change vs full DeFakeQ, average weight bits and packed "
                     "size. Best in bold, second underlined."),
            columns=datasets + [MEAN], groups=_group(rows), extra_columns=names,
            detector=det, bits=bits))
    return tables


def _median(s: pd.Series) -> float | None:
    v = s.dropna()
    return float(v.median()) if len(v) else None
