"""Render the one-file HTML report (jinja2, autoescaped; only our own SVG is marked safe)."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import jinja2
from markupsafe import Markup

TEMPLATES = Path(__file__).parent / "templates"


def _fmt(v: object, spec: str = ".3f", empty: str = "—") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return empty
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _signed(v: float | None, decimals: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{'−' if v < 0 else '+'}{abs(v):.{decimals}f}"  # true minus sign for print


def _mb(v: float | None) -> str:
    return _fmt(None if v is None else v / 1e6, ".2f")


def _when(ts: float | None) -> str:
    if ts is None or (isinstance(ts, float) and math.isnan(ts)):
        return "—"
    return dt.datetime.fromtimestamp(float(ts), tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(fmt=_fmt, signed=_signed, mb=_mb, when=_when,
                       svg=lambda s: Markup(s))  # our own matplotlib output only
    return env


def render(context: dict) -> str:
    return environment().get_template("report.html.j2").render(**context)
