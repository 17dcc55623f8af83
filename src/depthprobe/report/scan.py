"""Run directories found under report roots, each read into a :class:`Sweep` or kept with what is wrong.

A run directory is a folder holding ``manifest.json`` or ``conditions/`` (see
:mod:`depthprobe.results`). Reading one never raises: a damaged manifest or condition file, a
run made by another depthprobe, or a sweep that stopped before its last condition becomes a
``Sweep`` whose ``status`` and ``problem`` say so, and the report shows it in its index.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from depthprobe.report.checks import Dims, infer_grid, missing_conditions, model_dims, primary_metric, warnings_for
from depthprobe.results import (
    DamagedRunError,
    ManifestMismatchError,
    identity_digest,
    load_results,
)
from depthprobe.uncertainty import significant

__all__ = ["Dims", "Sweep", "find_run_dirs", "read_sweep", "scan"]

#: Statuses of a run directory: the first two have results and a page, the others only an index row.
OK, INCOMPLETE, DAMAGED, OTHER_VERSION = "ok", "incomplete", "damaged", "other version"


@dataclass
class Sweep:
    """One run directory as the report sees it."""

    path: Path
    label: str
    slug: str = ""
    status: str = OK
    problem: str | None = None
    warnings: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    results: pd.DataFrame | None = None
    grid: str = "?"
    metric: str | None = None
    dims: Dims | None = None

    # --- what the index and the study views group by -----------------------------------
    @property
    def page(self) -> str | None:
        """The sweep page's path relative to the report root (None: no results to show)."""
        return f"sweeps/{self.slug}.html" if self.results is not None else None

    @property
    def model(self) -> str:
        name = str(self.manifest.get("model") or "?")
        return Path(name).name if os.path.sep in name and Path(name).is_absolute() else name

    @property
    def model_short(self) -> str:
        return self.model.rsplit("/", 1)[-1]

    @property
    def task(self) -> str:
        return str(self.manifest.get("task") or "?")

    @property
    def protocol(self) -> str:
        return {"loglikelihood": "log-likelihood", "generate_until": "generation"}.get(
            str(self.manifest.get("protocol")), str(self.manifest.get("protocol") or "?")
        )

    @property
    def shots(self) -> int | None:
        shots = self.manifest.get("num_fewshot")
        return shots if isinstance(shots, int) else None

    @property
    def thinking(self) -> bool | None:
        value = (self.manifest.get("task_options") or {}).get("enable_thinking")
        return value if isinstance(value, bool) else None

    @property
    def limit(self) -> int | None:
        limit = self.manifest.get("limit")
        return limit if isinstance(limit, int) else None

    @property
    def setting(self) -> tuple[Any, ...]:
        """What two sweeps must share to be compared: model, shots, thinking, limit."""
        return (self.model, self.shots, self.thinking, self.limit)

    @property
    def n_documents(self) -> int | None:
        df = self.results
        if df is None or "n_samples" not in df.columns:
            return None
        base = df.loc[df["condition"] == "baseline", "n_samples"].dropna()
        return (
            int(base.iloc[0]) if len(base) else (int(df["n_samples"].max()) if df["n_samples"].notna().any() else None)
        )

    @property
    def baseline(self) -> float | None:
        df = self.results
        if df is None or self.metric is None:
            return None
        base = df.loc[df["condition"] == "baseline", self.metric]
        return float(base.iloc[0]) if len(base) and pd.notna(base.iloc[0]) else None

    @property
    def has_intervals(self) -> bool:
        return self.results is not None and f"delta_{self.metric}_ci_low" in self.results.columns

    def distinguishable(self) -> pd.DataFrame:
        """Conditions whose delta of the metric is distinguishable from 0 at 95%, largest |delta| first."""
        df = self.results
        if df is None or not self.has_intervals:
            return pd.DataFrame(columns=["condition"])
        rows = df[(df["condition"] != "baseline") & significant(df, str(self.metric))]
        return rows.reindex(rows[f"delta_{self.metric}"].abs().sort_values(ascending=False).index)


# --- finding run directories ---------------------------------------------------------------


def _is_run_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path / "conditions").is_dir()


def find_run_dirs(root: Path) -> Iterator[Path]:
    """Every run directory at or below ``root`` (not descending into one), in sorted order."""
    if _is_run_dir(root):
        yield root
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        yield from find_run_dirs(child)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.,=@+-]+", "_", text.replace("/", "__")).strip("_") or "run"


def scan(roots: Sequence[str | os.PathLike[str]]) -> list[Sweep]:
    """Every run directory under ``roots``, read (never raising for a bad one); a root without any is a ValueError."""
    if not roots:
        raise ValueError("report needs at least one ROOT: a run directory or a folder holding run directories")
    found: list[tuple[Path, str]] = []
    for root in map(Path, roots):
        if not root.exists():
            raise ValueError(f"report root {str(root)!r} does not exist")
        dirs = list(find_run_dirs(root))
        if not dirs:
            raise ValueError(
                f"no run directories under {str(root)!r} (a run directory holds manifest.json and "
                f"conditions/); run a sweep or a campaign into it first"
            )
        for d in dirs:
            rel = d.relative_to(root).as_posix()
            name = root.resolve().name if rel == "." else rel
            found.append((d, name if len(roots) == 1 or rel == "." else f"{root.resolve().name}/{rel}"))
    sweeps, seen = [], set()
    for path, label in found:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        sweep = read_sweep(path, label)
        slug, k = _slug(label), 1
        while any(s.slug == slug for s in sweeps):
            k += 1
            slug = f"{_slug(label)}-{k}"
        sweep.slug = slug
        sweeps.append(sweep)
    return sweeps


# --- reading one -----------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    return " ".join((str(err) or type(err).__name__).split())


def read_sweep(path: Path, label: str) -> Sweep:
    """One run directory as a :class:`Sweep`; what is wrong with it goes to ``status``/``problem``."""
    sweep = Sweep(path=path, label=label)
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        sweep.status, sweep.problem = (
            INCOMPLETE,
            (
                "no manifest.json: the sweep stopped before it started, or the "
                "directory was copied in part; re-run its command"
            ),
        )
        return sweep
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError(f"it holds a JSON {type(manifest).__name__}, not an object")
    except (ValueError, UnicodeDecodeError) as err:
        sweep.status, sweep.problem = DAMAGED, f"manifest.json cannot be read ({_first_line(err)})"
        return sweep
    sweep.manifest = manifest
    if "identity_digest" not in manifest:
        sweep.status, sweep.problem = (
            OTHER_VERSION,
            (
                "made by an older depthprobe whose run directories lack a run "
                "identity; re-run its command into another directory"
            ),
        )
        return sweep
    if manifest["identity_digest"] != identity_digest(manifest):
        made = (manifest.get("versions") or {}).get("depthprobe")
        sweep.status, sweep.problem = (
            OTHER_VERSION,
            (
                f"its manifest's identity digest does not match its fields: written by another depthprobe version "
                f"({made or 'unknown'}) or edited by hand; re-run its command into another directory"
            ),
        )
        return sweep
    try:
        df = load_results(path)
    except (DamagedRunError, ManifestMismatchError) as err:
        status = DAMAGED if isinstance(err, DamagedRunError) else OTHER_VERSION
        sweep.status, sweep.problem = status, _first_line(err)
        return sweep
    except Exception as err:  # anything else unreadable: the report goes on
        sweep.status, sweep.problem = DAMAGED, f"{type(err).__name__}: {_first_line(err)}"
        return sweep
    if df.empty:
        sweep.status, sweep.problem = INCOMPLETE, "no finished condition yet; re-run its command"
        return sweep
    sweep.results = df
    sweep.metric = primary_metric(df)
    sweep.dims = model_dims(str(manifest.get("model")), manifest.get("revision"))
    sweep.grid = infer_grid(df, sweep.dims, path.name)
    missing = missing_conditions(df, sweep.dims, path)
    if "baseline" not in set(df["condition"]):
        sweep.status, sweep.problem = (
            INCOMPLETE,
            "no baseline: deltas and intervals cannot be computed; re-run its command",
        )
    elif missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        sweep.status, sweep.problem = (
            INCOMPLETE,
            (f"{len(missing)} condition(s) of the grid not finished ({shown}); re-run its command to finish it"),
        )
    sweep.warnings = warnings_for(sweep)
    return sweep
