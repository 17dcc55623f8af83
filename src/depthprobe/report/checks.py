"""What the report reads about a run beyond its results: the grid, the metric it shows, the model's head
layout (from ``config.json``, never the network), unfinished conditions, and warnings for the reader."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from depthprobe.report.scan import Sweep

__all__ = ["Dims", "infer_grid", "missing_conditions", "model_dims", "primary_metric", "unit_kinds", "warnings_for"]

#: Per-condition metrics that describe generations rather than score them (issue 22's divergence).
_NOT_SCORES = ("identical_to_baseline", "diverge_at", "n_generated_tokens")


@dataclass(frozen=True)
class Dims:
    """The model's layer and head counts, read from its ``config.json`` when it is on this machine."""

    n_layers: int
    n_heads: int
    n_kv_heads: int

    @property
    def group_size(self) -> int:
        return max(1, self.n_heads // max(1, self.n_kv_heads))


def primary_metric(df: pd.DataFrame) -> str | None:
    """The metric the report shows: ``acc`` for multiple choice, else the first exact-match filter, else the first."""
    names = [
        c[len("delta_") :]
        for c in df.columns
        if c.startswith("delta_") and not c.endswith(("_stderr", "_ci_low", "_ci_high"))
    ]
    names = [n for n in names if n in df.columns and not n.startswith(_NOT_SCORES)]
    ordered = [c for c in df.columns if c in names]
    for pick in (lambda n: n == "acc", lambda n: n.startswith("exact_match,"), lambda n: True):
        for name in ordered:
            if pick(name):
                return name
    return None


@lru_cache(maxsize=64)
def model_dims(name: str, revision: str | None) -> Dims | None:
    """Layer and head counts from the model's ``config.json``: a local directory, or the hub cache (no network)."""
    config = Path(name) / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(
                name, "config.json", revision=None if str(revision).startswith("local-") else revision
            )
        except Exception:
            return None
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
        cfg = cfg.get("text_config") or cfg
        heads = int(cfg["num_attention_heads"])
        return Dims(int(cfg["num_hidden_layers"]), heads, int(cfg.get("num_key_value_heads") or heads))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def unit_kinds() -> dict[str, tuple[str, str]]:
    """Intervention kind -> (grid name, unit) for every kind that grids over heads or groups."""
    from depthprobe.interventions import INTERVENTION_TYPES

    return {
        cls.kind: (cls.grid, cls.unit)
        for cls in INTERVENTION_TYPES
        if getattr(cls, "grid", None) and getattr(cls, "unit", None)
    }


def infer_grid(df: pd.DataFrame, dims: Dims | None, dir_name: str) -> str:
    """The grid's spelling (``layers``, ``heads:3``, ``groups:1``, ``heads:all``) read from the conditions."""
    rows = df[df["condition"] != "baseline"]
    if rows.empty:
        return dir_name
    single = bool((rows["n_interventions"] == 1).all()) if "n_interventions" in rows.columns else False
    kinds = sorted(set(rows["kind"].astype(str)))
    if single and kinds == ["skip"]:
        return "layers"
    units = unit_kinds()
    if single and len(kinds) == 1 and kinds[0] in units:
        grid = units[kinds[0]][0]
        layers = sorted(int(v) for v in rows["layer"].dropna().unique())
        if dims is not None and layers == list(range(dims.n_layers)) and len(layers) > 1:
            return f"{grid}:all"
        return f"{grid}:{','.join(map(str, layers))}"
    if kinds == ["o_proj"]:
        return "o_proj"
    if not single and kinds == ["skip"]:
        return "blocks"
    return "mixed: " + " + ".join(kinds)


def missing_conditions(df: pd.DataFrame, dims: Dims | None, path: Path) -> list[str]:
    """Conditions of the grid that have no result yet (layers: every layer; heads or groups: every unit of a layer)."""
    if dims is None or (path / "prescreen.json").exists() or "screen" in df.columns:
        return []  # a pre-screened sweep measures only some conditions on purpose
    rows = df[(df["condition"] != "baseline") & (df.get("n_interventions", 1) == 1)]
    missing: list[str] = []
    if len(rows) and set(rows["kind"]) == {"skip"}:
        have = {int(v) for v in rows["layer"].dropna()}
        missing += [f"skip:L{layer}" for layer in range(dims.n_layers) if layer not in have]
    units = unit_kinds()
    for (kind, layer), part in rows[rows["kind"].isin(list(units))].groupby(["kind", "layer"]):
        n = dims.n_heads if units[kind][1] == "head" else dims.n_kv_heads
        have = {int(v) for v in part["index"].dropna()}
        missing += [f"{kind} {i} of layer {int(layer)}" for i in range(n) if i not in have]
    return missing


@lru_cache(maxsize=64)
def _task_size(task: str, options: str, data_dir: str | None) -> int | None:
    """How many documents the task has, when that can be read here without the network (else None)."""
    from depthprobe.tasks import get_task

    opts = {k: v for k, v in json.loads(options).items() if k not in ("chat", "enable_thinking")}
    with _hub_offline():
        try:
            t = get_task(task, **opts)
            if getattr(t, "scorer", "depthprobe") != "depthprobe":
                return None
            return len(t.test_docs(data_dir))
        except Exception:
            return None


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def warnings_for(sweep: Sweep) -> list[str]:
    """What a reader should know before trusting the numbers: cut prompts, a limit, another version."""
    out: list[str] = []
    df, n = sweep.results, sweep.n_documents
    if df is not None and "n_truncated" in df.columns and (df["n_truncated"].fillna(0) > 0).any():
        out.append(f"{int(df['n_truncated'].max())} of {n or '?'} prompt(s) cut from the left to fit the context")
    limit = sweep.limit
    if limit is not None:
        size = _task_size(
            sweep.task,
            json.dumps(sweep.manifest.get("task_options") or {}, sort_keys=True),
            sweep.manifest.get("data_dir"),
        )
        if size is not None and limit < size:
            out.append(f"limit {limit} of {size} documents")
        elif size is None and n is not None and n >= limit:
            out.append(f"limit {limit} (the task's size is not known here)")
    made = (sweep.manifest.get("versions") or {}).get("depthprobe")
    try:
        here = importlib.metadata.version("depthprobe")
    except importlib.metadata.PackageNotFoundError:
        here = None
    if made and here and made != here:
        out.append(f"made with depthprobe {made}; this report's is {here}")
    if not sweep.has_intervals and df is not None and len(df) > 1:
        out.append("no per-document samples with doc_id: no intervals, so no delta is marked distinguishable")
    return out
