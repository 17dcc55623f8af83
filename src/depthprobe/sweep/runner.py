"""``run_sweep``: a task under the baseline and every condition, stored in a resumable run directory.

The runner checks the conditions once at its boundary (flattened, unique, in range for the
model), writes or checks the manifest, skips conditions already on disk, plans the rest as
:class:`~depthprobe.sweep.executor.WorkUnit` values and hands them to an executor
(:class:`~depthprobe.sweep.executor.InProcessExecutor` unless told otherwise), storing each
condition as soon as it is reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import pandas as pd
import torch
from tqdm.auto import tqdm

from depthprobe.data import record_reads
from depthprobe.engine.grids import (
    BASELINE,
    Condition,
    condition_digest,
    condition_id,
    condition_info,
    flat_conditions,
    parse_grid,
    unique_ids,
)
from depthprobe.evaluator import require_loaded_model, warn_truncated
from depthprobe.identity import ResolvedModel, resolved
from depthprobe.interventions import Intervention, MeanReference, validate
from depthprobe.model_spec import ModelSpec
from depthprobe.results import RunDir, build_manifest, load_results
from depthprobe.sweep.executor import ConditionResult, Executor, InProcessExecutor, SweepSpec, WorkUnit
from depthprobe.sweep.prescreen import prescreen_report, screen_conditions
from depthprobe.tasks import get_task

__all__ = ["plan_units", "run_sweep", "sweep_conditions"]

ConditionsOrGrid = Union[str, Sequence[Condition]]
EvaluateCondition = Callable[[list[Intervention]], tuple[Mapping[str, float], "pd.DataFrame | None"]]


def _done(run_dir: RunDir, condition: Condition) -> bool:
    return run_dir.done(condition_id(condition), condition_digest(condition))


def _with_baseline(conditions: Sequence[Condition]) -> list[list[Intervention]]:
    out = flat_conditions(conditions)
    ids = unique_ids(out)
    if BASELINE not in ids:
        out.insert(0, [])
    return out


def _progress(total: int, done: int, desc: str, progress: bool) -> Any:
    return tqdm(total=total, initial=done, desc=desc, unit="cond", disable=not progress, dynamic_ncols=True)


class _Throughput:
    """Documents (and generated tokens) per second since the sweep started, for the progress bar;
    tqdm itself shows conditions done, conditions per second and the ETA."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.docs = 0
        self.tokens = 0

    def add(self, samples: pd.DataFrame | None) -> str:
        if samples is not None:
            self.docs += len(samples)
            if "n_generated_tokens" in samples:
                self.tokens += int(samples["n_generated_tokens"].sum())
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        text = f"{self.docs / elapsed:.1f} docs/s"
        if self.tokens:
            text += f", {self.tokens / elapsed:.0f} tok/s"
        return text


def _store(
    run_dir: RunDir,
    condition: Condition,
    metrics: Mapping[str, float],
    samples: pd.DataFrame | None,
    wall_s: float,
    extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    cid = condition_id(condition)
    run_dir.write(
        cid,
        metrics,
        samples,
        **condition_info(condition),
        wall_s=wall_s,
        n_samples=None if samples is None else len(samples),
        n_truncated=_n_truncated(samples),
        **(extras or {}).get(cid, {}),
    )
    return cid


def _n_truncated(samples: pd.DataFrame | None) -> int | None:
    """How many of a condition's prompts were cut from the left (None when the samples do not say)."""
    if samples is None or "truncated" not in samples.columns:
        return None
    return int(samples["truncated"].astype(bool).sum())


def _documents_digest(instances: Sequence[Any]) -> str:
    """SHA-256 of exactly what is evaluated: every prompt, choice list and target, in order."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for inst in instances:
        digest.update(json.dumps([inst.prompt, inst.choices, inst.target, inst.target_delimiter], default=str).encode())
    return digest.hexdigest()


def sweep_conditions(
    run_dir: RunDir,
    conditions: Sequence[Condition],
    evaluate_condition: EvaluateCondition,
    *,
    progress: bool = True,
    desc: str = "conditions",
    extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Evaluate every condition not yet stored in ``run_dir`` (baseline first), storing each as it finishes.

    ``evaluate_condition(condition)`` returns ``(metrics, samples)``. Returns the ids evaluated
    by this call; conditions already on disk are skipped, so re-running resumes. ``extras``
    adds fields to a condition's result row (the pre-screen's estimates).
    """
    conditions = _with_baseline(conditions)
    with run_dir.writing():  # one writer at a time; a second process with the same settings waits here
        todo = [c for c in conditions if not _done(run_dir, c)]
        bar = _progress(len(conditions), len(conditions) - len(todo), desc, progress)
        ran = []
        try:
            for cond in todo:
                bar.set_postfix_str(condition_id(cond)[:40])
                start = time.perf_counter()
                metrics, samples = evaluate_condition(list(cond))
                ran.append(_store(run_dir, cond, metrics, samples, time.perf_counter() - start, extras))
                bar.update(1)
        finally:
            bar.close()
    return ran


def _attn_implementation(model: ResolvedModel, protocol: str, hook_free: bool, requested: str | None) -> str | None:
    """The attention implementation the run computes with (eager and SDPA round differently)."""
    if requested is not None and not (hook_free and protocol == "generate_until"):
        raise ValueError(
            "attn_implementation applies to the hook-free decoder of generation sweeps; "
            "pass it with hook_free=True on a generation task, or leave it None"
        )
    own = model.identity.get("attn_implementation")
    return own if requested is None else f"{own} (hooks), {requested} (hook-free decoding)"


def plan_units(conditions: Sequence[Condition], *, engine: bool, chunk: int) -> list[WorkUnit]:
    """Consecutive groups of ``chunk`` conditions scored together (engine), or one unit per condition."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    conds = [tuple(c) for c in conditions]
    if not engine:
        return [WorkUnit((c,), engine=False) for c in conds]
    return [WorkUnit(tuple(conds[i : i + chunk]), engine=True) for i in range(0, len(conds), chunk)]


def run_sweep(
    model: torch.nn.Module | ModelSpec,
    task: Any,
    conditions_or_grid: ConditionsOrGrid,
    *,
    out_dir: str | os.PathLike[str],
    limit: int | None = None,
    batch_size: int = 16,
    num_fewshot: int | None = None,
    progress: bool = True,
    engine: bool = True,
    chunk: int | None = None,
    executor: Executor | None = None,
    prescreen: Any = None,
    hook_free: bool = True,
    attn_implementation: str | None = None,
    max_rows: int | None = 256,
    draft: str | None = "baseline",
    **evaluate_options: Any,
) -> pd.DataFrame:
    """Evaluate ``task`` under the baseline and every condition; store, resume, and return ``load_results(out_dir)``.

    ``conditions_or_grid`` is a list of conditions or a grid spec (``"layers"``, ``"heads:12"``,
    ``"mean_heads:12"`` with the task's own documents as the reference; see
    :func:`~depthprobe.engine.grids.parse_grid`). Multiple-choice tasks go through the engine
    (:func:`~depthprobe.engine.logits.score_conditions`: the unablated prefix computed once per
    batch, ``chunk`` conditions at a time (default: all of them, so the prefix is computed once per
    batch for the whole grid; a killed sweep loses the chunk in flight: pass ``chunk`` to bound it), at
    most ``max_rows`` rows (conditions x documents) per forward, which bounds the logits held on a GPU.
    Generation tasks go through the generation engine
    (:func:`~depthprobe.engine.generation.generate_conditions`): ``max_rows // batch_size``
    conditions per unit (default ``chunk``), decoded together as row blocks of every batch, with
    the few-shot prefix and each batch's prompts computed unablated once below each condition's
    first edited layer. Chat generation, and every task with ``engine=False``, run
    ``depthprobe.evaluate`` per condition. ``executor`` runs the planned units (default: in this process).
    ``evaluate_options`` go to ``evaluate`` (``data_dir``, ``max_gen_toks``, ``chat``,
    ``enable_thinking``, task options). ``model`` is a loaded model or a
    :class:`~depthprobe.model_spec.ModelSpec`: the manifest is then built from its config and
    weight files, and the executor's workers (or this process, by default) load it.

    ``prescreen=depthprobe.Prescreen(top_k, random_k)`` attributes every condition first
    (``depthprobe.attribute``) and exact-ablates only the ``top_k`` by ``estimate_abs`` plus a
    random sample of the rest; their rows also hold ``estimate``, ``estimate_abs``, ``screen``
    and the exact delta of the screen's metric, and ``df.attrs["prescreen"]`` reports top-k recall.
    Nothing is written to ``out_dir`` before every argument has been checked.

    Generation conditions whose every intervention has an exact weight edit decode on the plain
    Hugging Face model with edited weights (:mod:`~depthprobe.evaluation.fast_decode`;
    token-identical to the hooks), unless ``hook_free=False``; ``attn_implementation``
    (``"sdpa"``) changes that decoder's attention and is recorded in the manifest.

    ``draft="baseline"`` (default) decodes a generation task's baseline first, verifies its
    generation under every condition in one teacher-forced tail-only pass and decodes each row
    only from its first differing token (:mod:`~depthprobe.engine.verify`: exact greedy decoding);
    ``draft=None`` decodes every token. The results are the same, so the choice is recorded in
    the manifest but is not part of the run identity. Generation samples carry ``diverge_at`` and
    ``identical_to_baseline``, and each condition their means (either way).
    """
    # Validate everything first: nothing is written to out_dir for a command that is refused.
    if not isinstance(model, ModelSpec):
        require_loaded_model(model, "run_sweep")
    elif prescreen is not None:
        raise ValueError(
            "prescreen= needs a loaded model (attribution runs in this process); "
            "pass dp.load_model(...) instead of a ModelSpec, or drop prescreen="
        )
    data_dir = evaluate_options.pop("data_dir", None)
    max_gen_toks = evaluate_options.pop("max_gen_toks", None)
    chat_options = {k: evaluate_options.pop(k) for k in ("chat", "enable_thinking") if k in evaluate_options}
    task_options = dict(evaluate_options)
    t = get_task(task, **task_options) if isinstance(task, str) else task
    if isinstance(model, ModelSpec):  # described, not loaded: the executor's workers load it
        model = model.for_executor(executor)
    resolved_model = resolved(model)  # dimensions, identity and adapter, read once for the whole sweep
    dims = resolved_model.dims
    if isinstance(conditions_or_grid, str):
        reference = (
            MeanReference.for_task(t.name, limit=limit, num_fewshot=num_fewshot, data_dir=data_dir, **task_options)
            if t.scorer == "depthprobe"
            else None
        )
        conditions = parse_grid(dims, conditions_or_grid, reference=reference)
    else:
        conditions = conditions_or_grid
    conditions = _with_baseline(conditions)
    for cond in conditions:
        validate(dims, cond)
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"max_rows must be a positive integer or None, got {max_rows!r}")
    if draft not in ("baseline", None):
        raise ValueError(f"draft must be 'baseline' or None, got {draft!r}")
    if max_gen_toks is not None and (
        isinstance(max_gen_toks, bool) or not isinstance(max_gen_toks, int) or max_gen_toks < 1
    ):
        raise ValueError(f"max_gen_toks must be a positive integer, got {max_gen_toks!r}")
    with record_reads() as files_read:
        instances = t.instances(limit=limit, num_fewshot=num_fewshot, data_dir=data_dir)
    shots = t.default_num_fewshot if num_fewshot is None else num_fewshot
    protocol = "loglikelihood" if t.output_type == "multiple_choice" else "generate_until"
    manifest = build_manifest(
        resolved_model,
        task=t.name,
        protocol=protocol,
        num_fewshot=shots,
        seed=task_options.get("seed"),
        limit=limit,
        task_options={**task_options, **chat_options},
        max_gen_toks=max_gen_toks if protocol == "generate_until" else None,
        data={"files": dict(sorted(files_read.items())), "documents": _documents_digest(instances)},
        data_dir=None if data_dir is None else str(Path(data_dir).expanduser().resolve()),
        attn_implementation=_attn_implementation(resolved_model, protocol, hook_free, attn_implementation),
        draft=draft if protocol == "generate_until" else None,  # recorded, not identity: results are the same
    )
    run_dir = RunDir(out_dir, manifest)
    spec = SweepSpec(
        task if isinstance(task, str) else t,
        tuple(sorted(task_options.items())),
        limit,
        num_fewshot,
        batch_size,
        None if data_dir is None else str(data_dir),
        max_gen_toks,
        tuple(chat_options.items()),
        hook_free,
        attn_implementation,
        max_rows,
        draft,
    )
    extras: dict[str, dict[str, Any]] | None = None
    ran: list[str] = []
    with run_dir.writing():
        if prescreen is not None:  # under the lock: prescreen.json belongs to this run directory's one writer
            conditions, extras = screen_conditions(
                resolved_model,
                t,
                conditions,
                prescreen,
                run_dir=run_dir,
                limit=limit,
                num_fewshot=num_fewshot,
                data_dir=data_dir,
                batch_size=batch_size,
            )
            conditions = _with_baseline(conditions)
        todo = [c for c in conditions if not _done(run_dir, c)]
        generation = t.output_type == "generate_until"
        use_engine = engine and t.scorer == "depthprobe" and not (generation and chat_options.get("chat"))
        executor = executor or InProcessExecutor()
        if chunk is None and generation:  # one unit per decode batch's row blocks: a kill loses at most that
            chunk = max(1, len(todo)) if max_rows is None else max(1, max_rows // batch_size)
        if chunk is None:  # in-process: one engine pass over the whole grid; remote workers: chunks to share out
            chunk = max(1, len(todo)) if isinstance(executor, InProcessExecutor) else 8
        units = plan_units(todo, engine=use_engine, chunk=chunk)
        bar = _progress(len(conditions), len(conditions) - len(todo), f"{t.name} sweep", progress)
        rate = _Throughput()

        def on_result(result: ConditionResult) -> None:
            ran.append(_store(run_dir, result.condition, result.metrics, result.samples, result.wall_s, extras))
            bar.set_postfix_str(rate.add(result.samples), refresh=False)
            bar.update(1)

        run_model: Any = model
        if isinstance(model, ModelSpec) and units and isinstance(executor, InProcessExecutor):
            run_model = model = model.load()  # described for the manifest; run here, so load it here
        elif isinstance(executor, InProcessExecutor):
            run_model = resolved_model  # in this process the engines receive what was resolved
        try:
            executor.run(run_model, spec, units, on_result)
        finally:
            bar.close()
    df = load_results(out_dir)
    df.attrs["computed"] = ran  # the conditions this call evaluated (the rest were on disk)
    if "n_truncated" in df.columns and df["n_truncated"].notna().any():
        warn_truncated(t.name, int(df["n_truncated"].max()), len(instances), model, stacklevel=2)
    if prescreen is not None:
        report = prescreen_report(
            df,
            prescreen,
            t.metric_names if protocol == "loglikelihood" else [f"exact_match,{f.name}" for f in t.generation.filters],
        )
        df.attrs["prescreen"] = report
        if progress:
            tqdm.write(
                f"prescreen: measured {report['n_top']} top + {report['n_random']} random conditions; "
                f"top-{report['top_k']} recall {report['recall']:.2f} among them"
            )
    return df
