"""Campaigns: models x tasks x grids (with shots, limits, thinking on/off), each sweep in its own run directory.

A campaign file (TOML) lists the matrix::

    root = "runs/study"                 # every sweep's run directory lies under it
    [defaults]                          # any sweep setting, overridable per model or task
    limit = 200
    batch_size = 16

    [[models]]
    name = "qwen3-8b"                   # alias, hub id or directory (a ModelSpec)
    dtype = "bfloat16"
    chat = true                         # generation tasks render the chat template
    thinking = [false, true]            # one sweep per value (generation tasks of chat models)

    [[tasks]]
    name = "gsm8k_cot"
    grids = ["layers", "heads:35"]
    shots = [1, 4, 8]                   # one sweep per value
    max_gen_toks = 256

Each (model, task, shots, thinking, grid) is one :func:`~depthprobe.sweep.run_sweep` into
``<root>/<model>/<task>[_<k>shot][_think|_nothink]/<grid>``, with the run directory's manifest
check and resume, so re-running a campaign resumes every sweep. With an executor that runs
remote workers (:class:`~depthprobe.executors.ray.RayExecutor`) the sweeps go to it as
:class:`~depthprobe.model_spec.ModelSpec` values, several at a time so no worker idles between
sweeps; in-process, each model is loaded once and its sweeps run one after another.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from depthprobe.model_spec import ModelSpec
from depthprobe.sweep import InProcessExecutor, run_sweep
from depthprobe.tasks import get_task

__all__ = ["CampaignSweep", "load_campaign", "plan_campaign", "run_campaign"]

#: Settings a campaign may give (in ``[defaults]``, a model or a task) and where each goes.
SWEEP_KEYS = {"limit", "batch_size", "max_gen_toks", "chunk", "engine", "data_dir", "options"}
MODEL_KEYS = {"name", "dtype", "device", "chat", "thinking", "load_options"}
TASK_KEYS = {"name", "grids", "shots"}


@dataclass(frozen=True)
class CampaignSweep:
    """One sweep of a campaign: which model, task and grid, with which settings, into which directory."""

    model: ModelSpec
    model_name: str
    task: str
    grid: str
    num_fewshot: int | None
    thinking: bool | None
    chat: bool
    out_dir: Path
    settings: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def label(self) -> str:
        return str(self.out_dir)


def load_campaign(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A campaign TOML file as a dict (``root`` relative to the file unless absolute)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ImportError("reading a campaign file on Python 3.10 needs tomli: pip install tomli") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"campaign file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        spec = tomllib.load(f)
    spec.setdefault("root", str(Path("runs") / path.stem))
    return spec


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_keys(where: str, given: Mapping[str, Any], allowed: set[str]) -> None:
    bad = sorted(set(given) - allowed)
    if bad:
        raise ValueError(
            f"unknown campaign setting(s) {', '.join(bad)} in {where}; valid: {', '.join(sorted(allowed))}"
        )


def _slug(text: str) -> str:
    return str(text).replace("/", "__").replace(":", "_")


def plan_campaign(
    spec: Mapping[str, Any] | str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[CampaignSweep]:
    """Every sweep of the campaign, grouped by model (so each model's sweeps run together)."""
    if not isinstance(spec, Mapping):
        spec = load_campaign(spec)
    _check_keys("the campaign", spec, {"root", "defaults", "models", "tasks", "name", "description"})
    defaults = dict(spec.get("defaults", {}))
    _check_keys("[defaults]", defaults, SWEEP_KEYS | {"dtype", "device"})
    models, tasks = spec.get("models") or [], spec.get("tasks") or []
    if not models or not tasks:
        raise ValueError("a campaign needs at least one [[models]] and one [[tasks]] entry")
    base = Path(root if root is not None else spec.get("root", "runs/campaign"))
    out: list[CampaignSweep] = []
    for m in models:
        m = {"name": m} if isinstance(m, str) else dict(m)
        _check_keys(f"model {m.get('name')!r}", m, MODEL_KEYS | SWEEP_KEYS)
        if "name" not in m:
            raise ValueError("every [[models]] entry needs a name (alias, hub id or directory)")
        model = ModelSpec(
            m["name"],
            dtype=m.get("dtype", defaults.get("dtype")),
            device=m.get("device", defaults.get("device")),
            **dict(m.get("load_options", {})),
        )
        chat = bool(m.get("chat", False))
        model_name = Path(str(m["name"])).name or str(m["name"])
        for t in tasks:
            t = {"name": t} if isinstance(t, str) else dict(t)
            _check_keys(f"task {t.get('name')!r}", t, TASK_KEYS | SWEEP_KEYS)
            task = get_task(t["name"], **dict(t.get("options", defaults.get("options", {}))))
            generation = task.output_type == "generate_until"
            thinkings = _as_list(m.get("thinking", [None])) if chat and generation else [None]
            shots_list = _as_list(t.get("shots", [None]))
            grids = _as_list(t.get("grids", ["layers"]))
            settings = {
                k: v
                for k, v in {
                    **defaults,
                    **{k: v for k, v in m.items() if k in SWEEP_KEYS},
                    **{k: v for k, v in t.items() if k in SWEEP_KEYS},
                }.items()
                if k in SWEEP_KEYS
            }
            if limit is not None:
                settings["limit"] = limit
            if not generation:
                settings.pop("max_gen_toks", None)
            for shots in shots_list:
                for thinking in thinkings:
                    leaf = t["name"] + ("" if shots is None else f"_{shots}shot")
                    leaf += "" if thinking is None else ("_think" if thinking else "_nothink")
                    for grid in grids:
                        out.append(
                            CampaignSweep(
                                model,
                                model_name,
                                t["name"],
                                grid,
                                shots,
                                thinking,
                                chat and generation,
                                base / _slug(model_name) / leaf / _slug(grid),
                                tuple(sorted(settings.items(), key=lambda kv: kv[0])),
                            )
                        )
    return out


def _sweep_kwargs(s: CampaignSweep, progress: bool) -> dict[str, Any]:
    kw = dict(s.settings)
    options = dict(kw.pop("options", {}) or {})
    kw.update(options)
    if s.num_fewshot is not None:
        kw["num_fewshot"] = s.num_fewshot
    if s.chat:
        kw["chat"] = True
        if s.thinking is not None:
            kw["enable_thinking"] = s.thinking
    kw["progress"] = progress
    return kw


def run_campaign(
    spec: Mapping[str, Any] | str | os.PathLike[str],
    *,
    executor: Any = None,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    concurrency: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) every sweep of a campaign; one row per sweep: model, task, shots, thinking, grid,
    run directory, conditions stored, wall time.

    ``spec`` is a TOML path or the dict it holds; ``root`` and ``limit`` override the file's (a
    smaller limit is a different run, stored in its own directories only if ``root`` differs).
    ``executor`` runs every sweep (default: in this process); with a remote executor
    ``concurrency`` sweeps are in flight at once (default: its number of workers).
    """
    from tqdm.auto import tqdm

    sweeps = plan_campaign(spec, root=root, limit=limit)
    remote = (
        executor is not None
        and not isinstance(executor, InProcessExecutor)
        and callable(getattr(executor, "worker_device", None))
    )
    if concurrency is None:
        resources = getattr(executor, "_resources", None)
        concurrency = resources()[0] if remote and callable(resources) else 1
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if concurrency > 1 and not remote:
        raise ValueError(
            f"concurrency={concurrency} needs an executor with remote workers (RayExecutor); "
            f"in this process sweeps run one at a time (concurrency=1)"
        )
    bar = tqdm(total=len(sweeps), desc="campaign", unit="sweep", disable=not progress, dynamic_ncols=True)
    lock = threading.Lock()
    rows: list[dict[str, Any] | None] = [None] * len(sweeps)
    loaded: dict[ModelSpec, Any] = {}

    def one(i: int, s: CampaignSweep) -> None:
        start = time.perf_counter()
        if remote:
            model: Any = s.model
        else:
            if s.model not in loaded:
                loaded.clear()  # one model in memory at a time; sweeps come grouped by model
                loaded[s.model] = s.model.load()
            model = loaded[s.model]
        df = run_sweep(model, s.task, s.grid, out_dir=s.out_dir, executor=executor, **_sweep_kwargs(s, False))
        rows[i] = {
            "model": s.model_name,
            "task": s.task,
            "num_fewshot": s.num_fewshot,
            "thinking": s.thinking,
            "grid": s.grid,
            "run_dir": str(s.out_dir),
            "n_conditions": len(df),
            "wall_s": time.perf_counter() - start,
        }
        with lock:
            bar.update(1)
            bar.set_postfix_str(f"{s.model_name} {s.task} {s.grid}"[:50])

    try:
        if concurrency == 1:
            for i, s in enumerate(sweeps):
                one(i, s)
        else:
            pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="campaign")
            try:
                for future in [pool.submit(one, i, s) for i, s in enumerate(sweeps)]:
                    future.result()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return pd.DataFrame([r for r in rows if r is not None])
