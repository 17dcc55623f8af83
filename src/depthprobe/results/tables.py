"""``load_results``: a run directory's conditions as one table, with paired uncertainty on every delta."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from depthprobe.results.manifest import CONDITIONS, MANIFEST, DamagedRunError, identity_digest
from depthprobe.results.rundir import mismatch_error, read_manifest, read_record
from depthprobe.uncertainty import add_delta_uncertainty

__all__ = ["load_results"]


def _read_records(run_dir: Path) -> list[dict[str, Any]]:
    cond_dir = run_dir / CONDITIONS
    if not (run_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {MANIFEST})")
    digest = identity_digest(read_manifest(run_dir / MANIFEST))
    records = []
    for path in sorted(cond_dir.glob("[!.]*.json")):
        record, problem = read_record(path)
        if record is None:
            raise DamagedRunError(
                f"{path} is damaged: {problem}; re-run the sweep command to move it aside and recompute it"
            )
        if record["run_digest"] != digest:
            raise mismatch_error(path, record, digest)
        records.append(record)
    return records


def load_results(run_dir: str | os.PathLike[str], samples: bool = False) -> pd.DataFrame:
    """The run's results: one row per condition (metrics, ``delta_<metric>`` vs baseline), or per-sample rows.

    Condition rows carry ``condition``, ``kind``, ``layer`` (first intervened layer),
    ``layer_max``, ``index`` (head or group of a single-intervention condition) and
    ``n_interventions``; ``baseline`` has layer NaN. Deltas are NaN until the baseline is done.
    Where samples carry a ``doc_id``, each delta has its paired standard error and 95% t
    interval (``delta_<metric>_stderr``, ``_ci_low``, ``_ci_high``; see ``depthprobe.uncertainty``).
    With ``samples=True`` every per-sample row is returned with its ``condition``.
    """
    records = _read_records(Path(run_dir))
    if samples:
        frames = [pd.DataFrame(r["samples"]).assign(condition=r["condition"]) for r in records if r["samples"]]
        if not frames:
            return pd.DataFrame(columns=["condition"])
        df = pd.concat(frames, ignore_index=True)
        return df[["condition"] + [c for c in df.columns if c != "condition"]]
    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in ("metrics", "samples", "run_digest", "condition_digest")}
        row.update({k: (math.nan if v is None else v) for k, v in r["metrics"].items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["condition"])
    metric_names = sorted({k for r in records for k in r["metrics"]})
    base = df[df["condition"] == "baseline"]
    for name in metric_names:
        if name.endswith("_stderr") or "_stderr," in name:
            continue
        ref = float(base[name].iloc[0]) if len(base) else math.nan
        df[f"delta_{name}"] = df[name].astype(float) - ref
    add_delta_uncertainty(df, records, [n for n in metric_names if not (n.endswith("_stderr") or "_stderr," in n)])
    order = {c: i for i, c in enumerate(["baseline"])}
    df["_order"] = df["condition"].map(order).fillna(1)
    sort_cols = ["_order"] + [c for c in ("layer", "layer_max", "index", "condition") if c in df.columns]
    df = df.sort_values(sort_cols, kind="stable", na_position="first").drop(columns="_order")
    return df.reset_index(drop=True)
