"""Sweeps: grids of conditions, a logits engine that reuses the unablated computation, and ``run_sweep``.

A *condition* is a list of :class:`~depthprobe.interventions.Intervention`; its id is the
``"+"``-join of the interventions' ids (``"baseline"`` for the empty list).

The engine rests on one fact: before the first layer a condition touches, its residual
stream equals the unablated one. So per batch the baseline is run once, caching
``blocks.{l}.hook_resid_pre``, and each condition runs only the decoder layers from its first
intervened layer on (a real tail-only forward: the Hugging Face layer list is temporarily
replaced by its tail, the same block objects, so hook names, rotary embeddings, the mask,
the final norm and the unembedding are the model's own). Skipped layers are left out of the
tail (a skipped layer is the identity). Conditions with the same tail run together as row
blocks of one batch, each block with its own hooks, so the per-head sweep of a layer costs
one batched pass through one layer.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import pandas as pd
import torch
from depthprobe.types import TokenMask, Tokens
from torch import Tensor
from tqdm.auto import tqdm

from depthprobe.interventions import (
    Intervention,
    ablate,
    collect_hooks,
    skip_layer,
    validate,
    zero_head,
    zero_head_weights,
    zero_kv_group,
)
from depthprobe.models import ModelDims, model_dims

if TYPE_CHECKING:
    from depthprobe.results import RunDir

__all__ = [
    "BASELINE",
    "Condition",
    "block_grid",
    "condition_id",
    "condition_logits",
    "group_grid",
    "head_grid",
    "head_weights_grid",
    "iter_condition_logits",
    "layer_grid",
    "parse_grid",
    "run_sweep",
    "score_conditions",
    "sweep_conditions",
]

BASELINE = "baseline"
Condition = Sequence[Intervention]
#: 1 for real tokens, 0 for padding (an alias, so ``TokenMask | None`` type-checks under typeguard).


def condition_id(condition: Condition) -> str:
    """``"+"``-joined intervention ids, or ``"baseline"`` for the empty condition."""
    return "+".join(iv.id for iv in condition) if len(condition) else BASELINE


# ---------------------------------------------------------------------------------------
# Grids.


def _dims(model_or_dims: ModelDims | torch.nn.Module) -> ModelDims:
    return model_or_dims if isinstance(model_or_dims, ModelDims) else model_dims(model_or_dims)


def _check_layer(dims: ModelDims, layer: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < dims.n_layers:
        raise ValueError(f"layer {layer!r} out of range; the model has layers 0..{dims.n_layers - 1}")
    return layer


def layer_grid(model_or_dims: ModelDims | torch.nn.Module) -> list[list[Intervention]]:
    """Every layer skipped in turn: ``[[skip:L0], [skip:L1], ...]``."""
    return [[skip_layer(layer)] for layer in range(_dims(model_or_dims).n_layers)]


def head_grid(model_or_dims: ModelDims | torch.nn.Module, layer: int) -> list[list[Intervention]]:
    """Every query head of ``layer`` zero-ablated in turn (true per-head ablation)."""
    dims = _dims(model_or_dims)
    _check_layer(dims, layer)
    return [[zero_head(layer, h)] for h in range(dims.n_heads)]


def group_grid(model_or_dims: ModelDims | torch.nn.Module, layer: int) -> list[list[Intervention]]:
    """Every GQA group (all query heads of one KV head) of ``layer`` ablated in turn."""
    dims = _dims(model_or_dims)
    _check_layer(dims, layer)
    return [[zero_kv_group(layer, g)] for g in range(dims.n_kv_heads)]


def head_weights_grid(model_or_dims: ModelDims | torch.nn.Module, layer: int) -> list[list[Intervention]]:
    """Every head of ``layer`` pruned the study's original way (q, shared k/v and o_proj columns zeroed)."""
    dims = _dims(model_or_dims)
    _check_layer(dims, layer)
    return [[zero_head_weights(layer, h, group_size=dims.group_size)] for h in range(dims.n_heads)]


def block_grid(model_or_dims: ModelDims | torch.nn.Module, n: int, *, stride: int = 1) -> list[list[Intervention]]:
    """Contiguous blocks of ``n`` layers skipped together, starting every ``stride`` layers."""
    dims = _dims(model_or_dims)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= dims.n_layers:
        raise ValueError(f"block size n={n!r} out of range; valid: 1..{dims.n_layers}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    return [[skip_layer(s + i) for i in range(n)] for s in range(0, dims.n_layers - n + 1, stride)]


_GRID_RE = re.compile(r"^(layers|heads|groups|head_weights|blocks)(?::(\d+))?$")


def parse_grid(model_or_dims: ModelDims | torch.nn.Module, spec: str) -> list[list[Intervention]]:
    """A grid from its command-line spelling: ``layers``, ``heads:L``, ``heads:all``, ``groups:L``, ``head_weights:L``, ``blocks:N``."""
    if spec.strip() == "heads:all":  # every query head of every layer
        return [c for layer in range(_dims(model_or_dims).n_layers) for c in head_grid(model_or_dims, layer)]
    m = _GRID_RE.match(spec.strip())
    if m is None:
        raise ValueError(f"unknown grid {spec!r}; valid: layers, heads:L, groups:L, head_weights:L, blocks:N, heads:all")
    kind, arg = m.group(1), m.group(2)
    if kind == "layers":
        if arg is not None:
            raise ValueError(f"grid 'layers' takes no argument, got {spec!r}")
        return layer_grid(model_or_dims)
    if arg is None:
        raise ValueError(f"grid {kind!r} needs a number, e.g. '{kind}:3'")
    fn = {"heads": head_grid, "groups": group_grid, "head_weights": head_weights_grid, "blocks": block_grid}[kind]
    return fn(model_or_dims, int(arg))


# ---------------------------------------------------------------------------------------
# The engine.


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face decoder whose ``layers`` list the tail-only forward swaps."""
    decoder = getattr(getattr(model, "original_model", None), "model", None)
    if not isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList):
        raise ValueError("the sweep engine needs a TransformerBridge over a Hugging Face decoder "
                         "with model.layers (Llama/Qwen-style); use run_sweep's naive path instead")
    return decoder


def _row_hook(fn: Callable[..., Tensor | None], rows: slice) -> Callable[..., Tensor | None]:
    """Run an intervention's hook on one row block of the batch only."""

    def hook(tensor: Tensor, hook: Any) -> Tensor | None:
        out = fn(tensor[rows], hook)
        if out is None:
            return None
        tensor = tensor.clone()
        tensor[rows] = out
        return tensor

    hook.__name__ = getattr(fn, "__name__", "hook")
    return hook


@contextlib.contextmanager
def _tail_only(model: torch.nn.Module, layers: Sequence[int]) -> Iterator[None]:
    """Make the model's forward run only decoder layers ``layers`` (same block objects), then restore."""
    decoder = _decoder(model)
    full = decoder.layers
    config = decoder.config
    layer_types = getattr(config, "layer_types", None)
    decoder.layers = torch.nn.ModuleList([full[i] for i in layers])
    if layer_types is not None:  # Qwen3 picks each layer's mask by its position in the list
        config.layer_types = [layer_types[i] for i in layers]
    try:
        yield
    finally:
        decoder.layers = full
        if layer_types is not None:
            config.layer_types = layer_types


def _plan(conditions: Sequence[Condition], n_layers: int) -> dict[tuple[int, tuple[int, ...]], list[int]]:
    """Group condition indices by (start layer, tail layers); skipped layers are dropped from the tail."""
    groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for i, cond in enumerate(conditions):
        if not len(cond):
            continue
        start = min(iv.layer for iv in cond)
        skipped = {iv.layer for iv in cond if iv.kind == "skip"}
        tail = tuple(layer for layer in range(start, n_layers) if layer not in skipped)
        groups.setdefault((start, tail), []).append(i)
    return groups


def _chunks(conditions: Sequence[Condition], members: list[int], size: int) -> list[list[int]]:
    """Pack conditions into forwards of at most ``size``; conditions sharing a stateful
    intervention (an o_proj patch stashes ``z`` between two hooks) go to different forwards."""
    chunks: list[tuple[list[int], set[str]]] = []
    for i in members:
        stateful = {iv.id for iv in conditions[i] if iv.kind == "o_proj"}
        for chunk, used in chunks:
            if len(chunk) < size and not (stateful & used):
                chunk.append(i)
                used |= stateful
                break
        else:
            chunks.append(([i], set(stateful)))
    return [chunk for chunk, _ in chunks]


def iter_condition_logits(
    model: torch.nn.Module,
    input_ids: Tokens,
    attention_mask: TokenMask | None,
    conditions: Sequence[Condition],
    *,
    max_rows: int | None = None,
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(condition id, logits [batch, pos, vocab])`` for every condition, equal to a full forward under ``ablate``.

    The baseline runs once; each condition runs only from its first intervened layer on,
    conditions sharing a tail together as row blocks (at most ``max_rows`` rows per forward).
    The baseline's logits are yielded first (as ``"baseline"``) when it is among the conditions.
    Conditions come out grouped by tail, not in input order.
    """
    dims = model_dims(model)
    for cond in conditions:
        validate(dims, list(cond))
    if max_rows is not None and max_rows < input_ids.shape[0]:
        raise ValueError(f"max_rows={max_rows} is smaller than the batch ({input_ids.shape[0]} rows)")
    return _iter_condition_logits(model, input_ids, attention_mask, conditions, dims, max_rows)


def _iter_condition_logits(model, input_ids, attention_mask, conditions, dims, max_rows):  # type: ignore[no-untyped-def]
    # A plain generator: typeguard cannot instrument jaxtyping annotations on generator functions.
    plan = _plan(conditions, dims.n_layers)
    starts = sorted({start for start, _ in plan})
    cache: dict[int, Tensor] = {}

    def keep(layer: int) -> Callable[..., None]:
        def hook(resid: Tensor, hook: Any) -> None:
            cache[layer] = resid.detach()

        return hook

    with torch.no_grad():
        with model.hooks(fwd_hooks=[(f"blocks.{s}.hook_resid_pre", keep(s)) for s in starts]):
            base = model(input_ids, attention_mask=attention_mask, use_cache=False)
        if any(not len(c) for c in conditions):
            yield BASELINE, base
        del base
        batch = input_ids.shape[0]
        per_forward = len(conditions) if max_rows is None else max(1, max_rows // batch)
        for (start, tail), members in plan.items():
            for chunk in _chunks(conditions, members, per_forward):
                k = len(chunk)
                resid = cache[start].repeat(k, 1, 1)
                hooks: list[tuple[str, Callable[..., Any]]] = [("hook_embed", lambda x, hook, r=resid: r)]
                for j, i in enumerate(chunk):
                    rows = slice(j * batch, (j + 1) * batch)
                    hooks += [(name, _row_hook(fn, rows)) for name, fn in collect_hooks(list(conditions[i]))]
                ids = input_ids.repeat(k, 1)
                mask = attention_mask.repeat(k, 1) if attention_mask is not None else None
                with _tail_only(model, tail), model.hooks(fwd_hooks=hooks):
                    logits = model(ids, attention_mask=mask, use_cache=False)
                for j, i in enumerate(chunk):
                    yield condition_id(conditions[i]), logits[j * batch : (j + 1) * batch]


def condition_logits(
    model: torch.nn.Module,
    input_ids: Tokens,
    attention_mask: TokenMask | None,
    conditions: Sequence[Condition],
    *,
    max_rows: int | None = None,
) -> dict[str, Tensor]:
    """Logits ``[batch, pos, vocab]`` of every condition (in input order), reusing the unablated computation; see :func:`iter_condition_logits`."""
    ids = [condition_id(c) for c in conditions]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate conditions: {', '.join(dup)}; each condition must be unique")
    out = dict(iter_condition_logits(model, input_ids, attention_mask, conditions, max_rows=max_rows))
    return {i: out[i] for i in ids}


def score_conditions(
    model: torch.nn.Module,
    requests: Sequence[tuple[str, Sequence[str]]],
    conditions: Sequence[Condition],
    *,
    batch_size: int = 16,
    max_rows: int | None = None,
) -> dict[str, list[Any]]:
    """Multiple-choice log-likelihoods of every request under every condition, through the engine.

    ``requests[i] = (context, [continuation, ...])`` as for
    ``depthprobe.evaluation.loglikelihood.score_choices``; returns ``{condition id: [DocScores]}``.
    Tokenization is lm-eval's (``encode_pair``) and each request is scored on lm-eval's own
    window ``(ctx+cont)[-(max_len+1):][:-1]``, right-padded with id 0 and no mask; identical
    windows share a row. Each batch of windows runs the baseline once for all conditions.
    """
    from depthprobe.evaluation.loglikelihood import DocScores, encode_pair, model_max_length

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer = model.tokenizer
    max_len = model_max_length(model, tokenizer)
    device = next(model.parameters()).device
    windows: dict[tuple[int, ...], int] = {}
    where: list[list[tuple[int, int, list[int]]]] = []  # per request, per choice: (row, window length, cont)
    truncated = []
    for i, (context, continuations) in enumerate(requests):
        per_choice, cut = [], False
        for cont in continuations:
            ctx_ids, cont_ids = encode_pair(tokenizer, context, cont)
            if not cont_ids:
                raise ValueError(f"request {i}: continuation {cont!r} tokenizes to zero tokens")
            cut |= len(ctx_ids) + len(cont_ids) > max_len + 1
            window = tuple((ctx_ids + cont_ids)[-(max_len + 1):][:-1])
            per_choice.append((windows.setdefault(window, len(windows)), len(window), cont_ids))
        where.append(per_choice)
        truncated.append(cut)
    rows = list(windows)
    ids = [condition_id(c) for c in conditions]
    lls = {cid: [[0.0] * len(w) for w in where] for cid in ids}
    greedy = {cid: [[True] * len(w) for w in where] for cid in ids}
    by_row: dict[int, list[tuple[int, int, int, list[int]]]] = {}
    for i, per_choice in enumerate(where):
        for j, (r, n, cont) in enumerate(per_choice):
            by_row.setdefault(r, []).append((i, j, n, cont))
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
    for at in range(0, len(order), batch_size):
        batch = order[at : at + batch_size]
        width = max(len(rows[r]) for r in batch)
        tokens = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        for b, r in enumerate(batch):
            tokens[b, : len(rows[r])] = torch.tensor(rows[r], dtype=torch.long, device=device)
        for cid, logits in iter_condition_logits(model, tokens, None, conditions, max_rows=max_rows):
            logprobs = torch.log_softmax(logits, dim=-1)
            for b, r in enumerate(batch):
                for i, j, n, cont in by_row[r]:
                    target = torch.tensor(cont, dtype=torch.long, device=device)
                    lp = logprobs[b, n - len(cont) : n]
                    lls[cid][i][j] = lp.gather(1, target[:, None])[:, 0].sum().item()
                    greedy[cid][i][j] = bool((lp.argmax(-1) == target).all())
    return {
        cid: [DocScores(tuple(lls[cid][i]), tuple(greedy[cid][i]), tuple(len(c) for _, _, c in where[i]), truncated[i])
              for i in range(len(where))]
        for cid in ids
    }


# ---------------------------------------------------------------------------------------
# Resumable sweeps.

ConditionsOrGrid = Union[str, Sequence[Condition]]
EvaluateCondition = Callable[[list[Intervention]], tuple[Mapping[str, float], "pd.DataFrame | None"]]


def _condition_info(condition: Condition) -> dict[str, Any]:
    """What plots and tables need to place a condition: kind, first/last layer, head or group index."""
    if not len(condition):
        return {"kind": BASELINE, "layer": None, "layer_max": None, "index": None, "n_interventions": 0,
                "interventions": []}
    kinds = sorted({iv.kind for iv in condition})
    layers = [iv.layer for iv in condition]
    return {
        "kind": "+".join(kinds),
        "layer": min(layers),
        "layer_max": max(layers),
        "index": condition[0].index if len(condition) == 1 else None,
        "n_interventions": len(condition),
        "interventions": [iv.id for iv in condition],
    }


def _with_baseline(conditions: Sequence[Condition]) -> list[list[Intervention]]:
    out = [list(c) for c in conditions]
    ids = [condition_id(c) for c in out]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate conditions: {', '.join(dup)}; each condition must be unique")
    if BASELINE not in ids:
        out.insert(0, [])
    return out


def sweep_conditions(
    run_dir: "RunDir",
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
        todo = [c for c in conditions if not run_dir.done(condition_id(c))]
        bar = tqdm(total=len(conditions), initial=len(conditions) - len(todo), desc=desc, unit="cond",
                   disable=not progress, dynamic_ncols=True)
        ran = []
        try:
            for cond in todo:
                cid = condition_id(cond)
                bar.set_postfix_str(cid[:40])
                start = time.perf_counter()
                metrics, samples = evaluate_condition(list(cond))
                run_dir.write(cid, metrics, samples, **_condition_info(cond), wall_s=time.perf_counter() - start,
                              n_samples=None if samples is None else len(samples),
                              n_truncated=_n_truncated(samples), **(extras or {}).get(cid, {}))
                ran.append(cid)
                bar.update(1)
        finally:
            bar.close()
    return ran


def _n_truncated(samples: "pd.DataFrame | None") -> int | None:
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
        digest.update(json.dumps([inst.prompt, inst.choices, inst.target, inst.target_delimiter],
                                 default=str).encode())
    return digest.hexdigest()


def _chunked_choice_scorer(
    model: torch.nn.Module, task: Any, instances: Sequence[Any], todo: Sequence[Condition], config: dict[str, Any],
    *, batch_size: int, chunk: int,
) -> EvaluateCondition:
    """An ``evaluate_condition`` for multiple-choice tasks that scores ``chunk`` pending conditions per engine pass.

    The first condition of a chunk triggers the pass; the others are then answered from memory.
    """
    from depthprobe.evaluation.api import choice_result

    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    requests = [(i.prompt, i.continuations) for i in instances]
    order = [condition_id(c) for c in todo]
    by_id = dict(zip(order, todo))
    ready: dict[str, tuple[Mapping[str, float], pd.DataFrame]] = {}

    def evaluate_condition(condition: list[Intervention]) -> tuple[Mapping[str, float], pd.DataFrame]:
        cid = condition_id(condition)
        if cid not in ready:
            start = order.index(cid)
            group = [by_id[i] for i in order[start:start + chunk]]
            scores = score_conditions(model, requests, group, batch_size=batch_size)
            for gid, doc_scores in scores.items():
                result = choice_result(task, instances, doc_scores, dict(config), {"n_docs": len(instances)})
                ready[gid] = (result.metrics, result.samples)
        return ready.pop(cid)

    return evaluate_condition


def _import_evaluate() -> Callable[..., Any]:
    try:
        from depthprobe.evaluation import evaluate
    except ImportError as err:
        raise ImportError(f"run_sweep needs depthprobe.evaluation.evaluate, which is not available ({err})") from None
    return evaluate


def run_sweep(
    model: torch.nn.Module,
    task: Any,
    conditions_or_grid: ConditionsOrGrid,
    *,
    out_dir: str | os.PathLike[str],
    limit: int | None = None,
    batch_size: int = 16,
    num_fewshot: int | None = None,
    progress: bool = True,
    engine: bool = True,
    chunk: int = 8,
    prescreen: Any = None,
    **evaluate_options: Any,
) -> pd.DataFrame:
    """Evaluate ``task`` under the baseline and every condition; store, resume, and return ``load_results(out_dir)``.

    ``conditions_or_grid`` is a list of conditions or a grid spec (``"layers"``, ``"heads:12"``,
    ...; see :func:`parse_grid`). Multiple-choice tasks go through the engine
    (:func:`score_conditions`: the unablated prefix computed once per batch, ``chunk``
    conditions at a time, so a killed sweep loses at most one chunk); generation tasks, and
    every task with ``engine=False``, run ``depthprobe.evaluation.evaluate`` under ``ablate``
    per condition. ``evaluate_options`` go to ``evaluate`` (``data_dir``, ``max_gen_toks``,
    ``chat``, ``enable_thinking``, task options).

    ``prescreen=depthprobe.Prescreen(top_k, random_k)`` attributes every condition first
    (``depthprobe.attribute``) and exact-ablates only the ``top_k`` by ``estimate_abs`` plus a
    random sample of the rest; their rows also hold ``estimate``, ``estimate_abs``, ``screen``
    and the exact delta of the screen's metric, and ``df.attrs["prescreen"]`` reports top-k recall.
    """
    from depthprobe.data import record_reads
    from depthprobe.evaluation.api import TruncationWarning, require_loaded_model, warn_truncated
    from depthprobe.results import RunDir, build_manifest, load_results

    evaluate = _import_evaluate()
    from depthprobe.tasks import get_task

    # Validate everything first: nothing is written to out_dir for a command that is refused.
    require_loaded_model(model, "run_sweep")
    data_dir = evaluate_options.pop("data_dir", None)
    max_gen_toks = evaluate_options.pop("max_gen_toks", None)
    chat_options = {k: evaluate_options.pop(k) for k in ("chat", "enable_thinking") if k in evaluate_options}
    task_options = dict(evaluate_options)
    t = get_task(task, **task_options) if isinstance(task, str) else task
    conditions = parse_grid(model, conditions_or_grid) if isinstance(conditions_or_grid, str) else conditions_or_grid
    conditions = _with_baseline(conditions)
    dims = model_dims(model)
    for cond in conditions:
        validate(dims, cond)
    if max_gen_toks is not None and (isinstance(max_gen_toks, bool) or not isinstance(max_gen_toks, int)
                                     or max_gen_toks < 1):
        raise ValueError(f"max_gen_toks must be a positive integer, got {max_gen_toks!r}")
    with record_reads() as files_read:
        instances = t.instances(limit=limit, num_fewshot=num_fewshot, data_dir=data_dir)
    shots = t.default_num_fewshot if num_fewshot is None else num_fewshot
    protocol = "loglikelihood" if t.output_type == "multiple_choice" else "generate_until"
    manifest = build_manifest(
        model, task=t.name, protocol=protocol, num_fewshot=shots, seed=task_options.get("seed"), limit=limit,
        task_options={**task_options, **chat_options},
        max_gen_toks=max_gen_toks if protocol == "generate_until" else None,
        data={"files": dict(sorted(files_read.items())), "documents": _documents_digest(instances)},
        data_dir=None if data_dir is None else str(Path(data_dir).expanduser().resolve()),
    )
    run_dir = RunDir(out_dir, manifest)
    extras = None
    if prescreen is not None:
        from depthprobe.attribution import prescreen_report, screen_conditions

        def finish(df: pd.DataFrame) -> pd.DataFrame:
            report = prescreen_report(df, prescreen, t.metric_names if protocol == "loglikelihood" else
                                      [f"exact_match,{f.name}" for f in t.generation.filters])
            df.attrs["prescreen"] = report
            if progress:
                tqdm.write(f"prescreen: measured {report['n_top']} top + {report['n_random']} random conditions; "
                           f"top-{report['top_k']} recall {report['recall']:.2f} among them")
            return df
    else:
        def finish(df: pd.DataFrame) -> pd.DataFrame:
            return df

    with run_dir.writing():
        if prescreen is not None:  # under the lock: prescreen.json belongs to this run directory's one writer
            conditions, extras = screen_conditions(model, t, conditions, prescreen, run_dir=run_dir, limit=limit,
                                                   num_fewshot=num_fewshot, data_dir=data_dir, batch_size=batch_size)
        if engine and t.output_type == "multiple_choice" and t.scorer == "depthprobe":
            todo = [c for c in conditions if not run_dir.done(condition_id(c))]
            config = {"task": t.name, "limit": limit, "num_fewshot": shots, "batch_size": batch_size,
                      "engine": True, **task_options}
            scorer = _chunked_choice_scorer(model, t, instances, todo, config, batch_size=batch_size, chunk=chunk)
            ran = sweep_conditions(run_dir, conditions, scorer, progress=progress, desc=f"{t.name} sweep",
                                   extras=extras)
        else:
            def evaluate_condition(condition: list[Intervention]) -> tuple[Mapping[str, float], pd.DataFrame]:
                kwargs: dict[str, Any] = {"limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
                                          "data_dir": data_dir}
                if max_gen_toks is not None:
                    kwargs["max_gen_toks"] = max_gen_toks
                kwargs.update(chat_options)
                with ablate(model, *condition), warnings.catch_warnings():
                    warnings.simplefilter("ignore", category=TruncationWarning)  # said once below, not per condition
                    result = evaluate(model, t, **kwargs)
                return result.metrics, result.samples

            ran = sweep_conditions(run_dir, conditions, evaluate_condition, progress=progress,
                                   desc=f"{t.name} sweep", extras=extras)
    df = load_results(out_dir)
    df.attrs["computed"] = ran  # the conditions this call evaluated (the rest were on disk)
    if "n_truncated" in df.columns and df["n_truncated"].notna().any():
        warn_truncated(t.name, int(df["n_truncated"].max()), len(instances), model, stacklevel=2)
    return finish(df)
