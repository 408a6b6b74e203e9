"""Figures as inline SVG strings (matplotlib's object API, no pyplot state, no files, no fonts
fetched: text stays <text> with generic font families).

Each SVG gets its own hash salt so the ids matplotlib writes (clip paths, markers) do not clash
when several figures share one HTML page.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from reports.gates import fps_threshold
from reports.tables import PaperTable

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]
MAX_LATENCY_ROWS = 40


@dataclass
class SvgFigure:
    key: str
    title: str
    caption: str
    svg: str


def to_svg(fig: Figure, key: str, title: str) -> str:
    FigureCanvasSVG(fig)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": key, "svg.fonttype": "none",
                                "font.family": ["DejaVu Sans", "sans-serif"]}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE (inline use)
    safe = title.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    svg = re.sub(r"<svg ", f'<svg role="img" aria-label="{safe}" data-figure="{key}" ', svg,
                 count=1)
    return svg


def pareto_front(sizes: list[float], aucs: list[float]) -> list[int]:
    """Indices of points no other point dominates (smaller-or-equal size and higher-or-equal
    AUC, strictly better in one), ordered by size."""
    idx = []
    for i, (s, a) in enumerate(zip(sizes, aucs)):
        dominated = any(
            (s2 <= s and a2 >= a) and (s2 < s or a2 > a)
            for j, (s2, a2) in enumerate(zip(sizes, aucs)) if j != i)
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: (sizes[i], -aucs[i]))


def auc_vs_size(models: pd.DataFrame, trials: pd.DataFrame) -> SvgFigure | None:
    """Mean AUC over datasets vs model size; each detector's Pareto front drawn and ringed."""
    ok = trials[trials["status"] == "ok"]
    pts = []
    for rec in models.to_dict("records"):
        sel = ok[(ok["detector"] == rec["detector"]) & (ok["method"] == rec["method"])
                 & (ok["bits"] == rec["bits"])]
        packed = sel["packed_bytes"].dropna()
        size = packed.median() if len(packed) else sel["size_bytes"].dropna().median()
        if size is not None and not pd.isna(size) and size > 0:
            pts.append(rec | {"size": float(size)})
    if not pts:
        return None
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.add_subplot()
    dets = list(dict.fromkeys(p["detector"] for p in pts))
    for c, det in enumerate(dets):
        sub = [p for p in pts if p["detector"] == det]
        color = PALETTE[c % len(PALETTE)]
        xs = [p["size"] / 1e6 for p in sub]
        ys = [p["mean_auc"] for p in sub]
        ax.scatter(xs, ys, color=color, s=28, label=det, zorder=3)
        front = pareto_front(xs, ys)
        ax.plot([xs[i] for i in front], [ys[i] for i in front], color=color, lw=1.2, ls="--",
                drawstyle="steps-post", zorder=2)
        ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=110, facecolors="none",
                   edgecolors=color, linewidths=1.4, zorder=4)
        for p, x, y in zip(sub, xs, ys):
            ax.annotate(f"{p['method']} {p['bits']}", (x, y), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("model size, MB (packed weights where recorded, else artifact file)")
    ax.set_ylabel("mean frame AUC over datasets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="detector (ringed: Pareto front)", title_fontsize=8)
    title = "AUC vs model size"
    return SvgFigure("auc-vs-size", title,
                     "Each point is one detector x method x bit budget; ringed points and the "
                     "dashed line form the Pareto front (no other model is both smaller and more "
                     "accurate).", to_svg(fig, "auc-vs-size", title))


def fps_per_device(dep: pd.DataFrame, fps_spec: object = None) -> SvgFigure | None:
    """Bars of FPS per device/runtime for each model; the fps_min gate drawn per device."""
    if dep.empty or dep["fps"].isna().all():
        return None
    d = dep[dep["fps"].notna()]
    dets = list(dict.fromkeys(d["detector"]))
    fig = Figure(figsize=(7.5, 2.6 * len(dets) + 0.6))
    for n, det in enumerate(dets):
        ax = fig.add_subplot(len(dets), 1, n + 1)
        sub = d[d["detector"] == det]
        targets = list(dict.fromkeys(sub["device"] + "/" + sub["runtime"]))
        models = list(dict.fromkeys(sub["method"] + " " + sub["bits"]))
        width = 0.8 / max(len(models), 1)
        for m_i, model in enumerate(models):
            ys = []
            for t in targets:
                hit = sub[(sub["device"] + "/" + sub["runtime"] == t)
                          & (sub["method"] + " " + sub["bits"] == model)]
                ys.append(float(hit["fps"].median()) if len(hit) else np.nan)
            xs = np.arange(len(targets)) + (m_i - (len(models) - 1) / 2) * width
            ax.bar(xs, ys, width=width, color=PALETTE[m_i % len(PALETTE)], label=model)
        if fps_spec is not None:
            for t_i, t in enumerate(targets):
                row = sub[sub["device"] + "/" + sub["runtime"] == t].iloc[0]
                th = fps_threshold(fps_spec, row["device"], row["device_tags"])
                if th is not None:
                    ax.hlines(th[0], t_i - 0.45, t_i + 0.45, colors="black", linestyles="dashed",
                              lw=1.2, label="fps_min gate" if t_i == 0 else None)
        ax.set_xticks(range(len(targets)), targets, fontsize=8)
        ax.set_ylabel("FPS")
        ax.set_title(det, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=3, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    title = "FPS per device"
    return SvgFigure("fps-per-device", title,
                     "Median FPS over the datasets' trials; dashed: the fps_min gate of that "
                     "device.", to_svg(fig, "fps-per-device", title))


def delta_heatmap(table: PaperTable) -> SvgFigure | None:
    """ΔAUC vs FP32, quantized method x dataset, diverging around zero."""
    rows = [r for r in table.rows() if not r.reference]
    cols = table.columns[:-1]  # without the mean
    if not rows or not cols:
        return None
    m = np.array([[c.delta if c.delta is not None else np.nan for c in r.cells[:-1]]
                  for r in rows], dtype=float)
    if np.isnan(m).all():
        return None
    lim = max(float(np.nanmax(np.abs(m))), 1e-3)
    fig = Figure(figsize=(1.2 + 1.1 * len(cols), 0.8 + 0.36 * len(rows)))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="RdBu", norm=TwoSlopeNorm(0.0, -lim, lim), aspect="auto")
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=8)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:+.3f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(m[i, j]) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, label="ΔAUC vs FP32")
    key = "heatmap-" + table.key
    title = f"ΔAUC heatmap — {table.title}"
    return SvgFigure(key, title, "Frame-AUC change vs FP32 (blue: better, red: worse).",
                     to_svg(fig, key, title))


def latency(dep: pd.DataFrame) -> SvgFigure | None:
    """Latency distributions: box plots from samples, else p50/p90/p99 markers."""
    if dep.empty:
        return None
    d = dep[dep["p50_ms"].notna() | dep["latency_samples"].map(bool)].head(MAX_LATENCY_ROWS)
    if d.empty:
        return None
    fig = Figure(figsize=(7.5, 0.9 + 0.32 * len(d)))
    ax = fig.add_subplot()
    recs = d.to_dict("records")
    labels = [f"{r['detector']}/{r['method']} {r['bits']} · {r['device']}/{r['runtime']}"
              for r in recs]
    boxed = [(i, r["latency_samples"]) for i, r in enumerate(recs) if r["latency_samples"]]
    if boxed:
        ax.boxplot([s for _, s in boxed], positions=[i for i, _ in boxed], vert=False,
                   widths=0.6, whis=(1, 99), showfliers=False, manage_ticks=False)
    for key, mk, col in (("p50_ms", "o", "#1f77b4"), ("p90_ms", "s", "#ff7f0e"),
                         ("p99_ms", "^", "#d62728")):
        pts = [(r[key], i) for i, r in enumerate(recs) if r[key] is not None]
        if pts:  # one collection per percentile keeps the SVG small
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=mk, color=col, s=22,
                       zorder=3, label=key.replace("_ms", ""))
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("latency per frame, ms")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    title = "Latency distributions"
    return SvgFigure("latency", title,
                     "Box: 1st–99th percentile of the latency samples where a trial stored them; "
                     "markers: the trial's p50 / p90 / p99.", to_svg(fig, "latency", title))


def trend(tr: pd.DataFrame, run_labels: list[str]) -> SvgFigure | None:
    """Mean AUC per model over the history runs, one panel per detector."""
    if tr.empty or tr["run_index"].nunique() < 2:
        return None
    dets = list(dict.fromkeys(tr["detector"]))
    fig = Figure(figsize=(7.5, 2.4 * len(dets) + 0.5))
    for n, det in enumerate(dets):
        ax = fig.add_subplot(len(dets), 1, n + 1)
        sub = tr[tr["detector"] == det]
        for c, (model, g) in enumerate(sub.groupby("model", sort=False)):
            ax.plot(g["run_index"], g["mean_auc"], marker="o", ms=3, lw=1.2,
                    color=PALETTE[c % len(PALETTE)], label=model)
        ax.set_xticks(range(len(run_labels)), run_labels, fontsize=7)
        ax.set_ylabel("mean AUC")
        ax.set_title(det, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    title = "Mean AUC over recent runs"
    return SvgFigure("trend", title, "Mean frame AUC over datasets per model, oldest run left.",
                     to_svg(fig, "trend", title))
