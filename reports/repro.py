"""Reproducibility appendix: what is needed to redo the run, gathered from the store."""

from __future__ import annotations

import json

import pandas as pd

MEASURED = ("thermal_before", "thermal_after")  # per-trial measurements, not device facts


def _flat(d: dict) -> list[tuple[str, str]]:
    return [(str(k), v if isinstance(v, str) else json.dumps(v, sort_keys=True))
            for k, v in sorted(d.items())]


def _distinct(values: list) -> list:
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            continue
        if v not in out:
            out.append(v)
    return out


def appendix(run: dict, df: pd.DataFrame) -> dict:
    env = run.get("env") or {}
    pk = env.get("packages")
    packages = _flat(pk) if isinstance(pk, dict) else []
    host = _flat({k: v for k, v in env.items() if k != "packages"})
    devices = []
    for dev, g in df.groupby("device", sort=False):
        facts: dict[str, list] = {}
        for e in g["env"]:
            for k, v in e.items():
                if k in MEASURED:
                    continue
                s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                facts.setdefault(k, [])
                if s not in facts[k]:
                    facts[k].append(s)
        tags = sorted({t for ts in g["device_tags"] for t in ts})
        devices.append({"device": dev, "tags": tags, "runtimes": _distinct(list(g["runtime"])),
                        "facts": sorted(facts.items())})
    manifests = []
    for ds, g in df.groupby("dataset", sort=False):
        hashes = _distinct([e.get("manifest_sha256") for e in g["extra"]])
        manifests.append({"dataset": ds, "hashes": hashes, "consistent": len(hashes) <= 1})
    artifacts = []
    for key, g in df.groupby(["detector", "method", "bits", "format"], sort=False):
        artifacts.append(dict(zip(["detector", "method", "bits", "format"], key)) | {
            "sha256": _distinct(list(g["artifact_sha256"])),
            "path": _distinct(list(g["artifact_path"])),
        })
    seeds = []
    for key, g in df.groupby(["detector", "method", "bits"], sort=False):
        seeds.append(dict(zip(["detector", "method", "bits"], key)) | {
            "seeds": [int(s) for s in _distinct(list(g["seed"]))]})
    return {
        "suite": run.get("suite"), "suite_hash": run.get("suite_hash"),
        "suite_yaml": run.get("suite_yaml"), "git_commit": run.get("git_commit"),
        "status": run.get("status"), "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"), "packages": packages, "host": host,
        "devices": devices, "manifests": manifests, "artifacts": artifacts, "seeds": seeds,
    }
