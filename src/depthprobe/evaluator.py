"""``evaluate``: run one task on a model (with whatever interventions are active) and return per-sample results.

The evaluator sits above the tasks (it looks them up by name) and below the sweep, whose engines
report through its seams (:func:`choice_result`, :func:`generation_result`). The low-level
pieces it composes (scoring, decoding, filters, metrics, ``EvalResult``) live in
:mod:`depthprobe.evaluation`.
"""

import os
import time
import warnings
from typing import Any

import pandas as pd

from depthprobe.evaluation.chat import generate_chat
from depthprobe.evaluation.generation import generate_until
from depthprobe.evaluation.loglikelihood import model_max_length, score_choices
from depthprobe.evaluation.metrics import choice_predictions, exact_match, mean_stderr
from depthprobe.evaluation.result import EvalResult
from depthprobe.tasks import Task, get_task

__all__ = [
    "EvalResult",
    "TruncationWarning",
    "choice_result",
    "evaluate",
    "generation_result",
    "require_loaded_model",
    "shared_prefix",
    "warn_truncated",
]


class TruncationWarning(UserWarning):
    """Some prompts were longer than the model's context and were cut from the left (as lm-eval does)."""


def warn_truncated(task: str, n: int, total: int, model: Any, *, stacklevel: int = 2) -> None:
    """One warning line when ``n`` of ``total`` prompts of ``task`` were cut from the left (nothing when n is 0)."""
    if n:
        max_len = model_max_length(model, getattr(model, "tokenizer", None))
        warnings.warn(
            f"{task}: {n} of {total} prompts were longer than the model's {max_len} positions and were "
            f"cut from the left; their scores see only the end of the prompt (n_truncated counts them)",
            TruncationWarning,
            stacklevel=stacklevel + 1,
        )


def require_loaded_model(model: Any, what: str) -> None:
    """Refuse, in one sentence, a model that did not come from ``depthprobe.load_model``."""
    if not all(hasattr(model, attr) for attr in ("tokenizer", "hooks", "cfg", "original_model")):
        kind = f"{type(model).__module__}.{type(model).__qualname__}"
        raise TypeError(
            f"{what} needs a model from depthprobe.load_model (a TransformerBridge with its tokenizer), "
            f"got a {kind}; pass dp.load_model('<model directory or hub id>') instead"
        )


def evaluate(
    model: Any,
    task: str | Task,
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    data_dir: str | os.PathLike[str] | None = None,
    max_gen_toks: int | None = None,
    chat: bool = False,
    enable_thinking: bool | None = None,
    decoder: Any = None,
    **task_options: Any,
) -> EvalResult:
    """Evaluate ``model`` (a ``TransformerBridge``) on ``task`` and return an ``EvalResult``.

    Multiple-choice tasks are scored by log-likelihood (see ``evaluation.loglikelihood``);
    generation tasks by greedy decoding with ``depthprobe.evaluation.generation``. Hooks active on the
    model (``depthprobe.ablate``) apply throughout. ``task_options`` go to the task
    (``subjects=`` for MMLU, ``n_pairs=`` for kv_retrieval, ...).

    ``chat=True`` renders each generation prompt as one user turn of the tokenizer's chat
    template; ``enable_thinking`` switches Qwen3's reasoning on or off, and with it on the
    answer is extracted after ``</think>`` and ``max_gen_toks`` is the whole budget.

    ``decoder`` decodes generation tasks (default: through the hooks;
    ``depthprobe.evaluation.fast_decode.decoder_for(condition)`` runs a condition hook-free).
    """
    if (chat or enable_thinking is not None) and get_task(task, **task_options).output_type != "generate_until":
        raise ValueError(
            "chat=/enable_thinking= apply to generation tasks only; log-likelihood tasks score plain prompts"
        )
    if enable_thinking is not None and not chat:
        raise ValueError("enable_thinking needs chat=True (it is a switch of the chat template)")
    require_loaded_model(model, "evaluate")
    t = get_task(task, **task_options)
    start = time.perf_counter()
    if t.scorer == "lm_eval":  # lm-eval's own evaluator on the depthprobe backend
        if chat or max_gen_toks is not None or data_dir is not None:
            raise ValueError(
                f"{t.name}: chat=, max_gen_toks= and data_dir= belong in the lm-eval task's YAML "
                "(pass include_path= for local YAMLs)"
            )
        result = t.run(model, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size)
        result.stats["wall_s"] = time.perf_counter() - start
        return result
    instances = t.instances(limit=limit, num_fewshot=num_fewshot, data_dir=data_dir)
    k = t.default_num_fewshot if num_fewshot is None else num_fewshot
    config = {"task": t.name, "limit": limit, "num_fewshot": k, "batch_size": batch_size, **task_options}
    if chat:
        config.update(chat=True, enable_thinking=enable_thinking)
    if t.output_type == "multiple_choice":
        result = _evaluate_choices(model, t, instances, batch_size, config)
    else:
        result = _evaluate_generation(
            model,
            t,
            instances,
            batch_size,
            max_gen_toks,
            config,
            chat=chat,
            enable_thinking=enable_thinking,
            decoder=decoder,
        )
    result.stats["wall_s"] = time.perf_counter() - start
    n_cut = result.stats.get("n_truncated", result.stats.get("n_prompt_truncated", 0))
    warn_truncated(t.name, int(n_cut or 0), len(instances), model)
    return result


def _aggregate(samples: pd.DataFrame, columns: dict[str, str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, column in columns.items():
        values = [float(v) for v in samples[column]]
        metrics[name] = sum(values) / len(values)
        stderr_name = name.replace(",", "_stderr,", 1) if "," in name else f"{name}_stderr"
        metrics[stderr_name] = mean_stderr(values)
    return metrics


def _evaluate_choices(model, task: Task, instances, batch_size: int, config) -> EvalResult:
    scores, stats = score_choices(model, [(i.prompt, i.continuations) for i in instances], batch_size=batch_size)
    return choice_result(
        task,
        instances,
        scores,
        config,
        {
            "n_docs": len(instances),
            "n_requests": stats.n_requests,
            "n_forwards": stats.n_forwards,
            "n_token_forwards": stats.n_token_forwards,
            "n_truncated": stats.n_truncated,
            "max_length": model_max_length(model, model.tokenizer),
        },
    )


def choice_result(task: Task, instances, scores, config: dict[str, Any], stats: dict[str, Any]) -> EvalResult:
    """Per-sample rows and metrics of a multiple-choice task from already computed ``DocScores``.

    The seam that lets a sweep score many conditions at once (``depthprobe.sweep``) and still
    report exactly what ``evaluate`` reports.
    """
    rows = []
    for inst, s in zip(instances, scores):
        preds = choice_predictions(s.loglikelihoods, inst.choices, s.n_tokens)
        rows.append(
            {
                "doc_id": inst.doc_id,
                "prompt": inst.prompt,
                "choices": list(inst.choices),
                "loglikelihoods": list(s.loglikelihoods),
                "is_greedy": list(s.is_greedy),
                "n_tokens": list(s.n_tokens),
                "truncated": s.truncated,
                "prediction": preds["acc"],
                "prediction_norm": preds["acc_norm"],
                "prediction_token_norm": preds["acc_token_norm"],
                "target": inst.target,
                "correct": preds["acc"] == inst.target,
                "correct_norm": preds["acc_norm"] == inst.target,
                "correct_token_norm": preds["acc_token_norm"] == inst.target,
            }
        )
    samples = pd.DataFrame(rows)
    columns = {"acc": "correct", "acc_norm": "correct_norm", "acc_token_norm": "correct_token_norm"}
    metrics = _aggregate(samples, columns)
    return EvalResult(task.name, metrics, samples, config, dict(stats))


def shared_prefix(prompts: list[str], delimiter: str) -> str:
    """The few-shot block every prompt starts with (cut after a shot delimiter), or ""."""
    if len(prompts) < 2 or not delimiter:
        return ""
    common = os.path.commonprefix(prompts)
    cut = common.rfind(delimiter)
    return common[: cut + len(delimiter)] if cut >= 0 else ""


def _evaluate_generation(
    model,
    task: Task,
    instances,
    batch_size: int,
    max_gen_toks: int | None,
    config,
    *,
    chat: bool = False,
    enable_thinking: bool | None = None,
    decoder: Any = None,
) -> EvalResult:
    gen = task.generation
    assert gen is not None
    budget = gen.max_gen_toks if max_gen_toks is None else max_gen_toks
    config["max_gen_toks"] = budget
    prompts = [i.prompt for i in instances]
    if chat:
        prefix = ""
        outputs = generate_chat(
            model,
            prompts,
            until=list(gen.until),
            enable_thinking=enable_thinking,
            max_gen_toks=budget,
            batch_size=batch_size,
            decoder=decoder,
        )
    else:
        prefix = shared_prefix(prompts, task.fewshot_delimiter)
        outputs = generate_until(
            model,
            [p[len(prefix) :] for p in prompts],
            until=list(gen.until),
            max_gen_toks=budget,
            batch_size=batch_size,
            prefix=prefix or None,
            decoder=decoder,
        )
    return generation_result(task, instances, outputs, config, prefix)


def generation_result(task: Task, instances, outputs, config: dict[str, Any], prefix: str = "") -> EvalResult:
    """Per-sample rows and metrics of a generation task from already decoded ``Generation`` values.

    The seam that lets a sweep decode many conditions at once
    (:func:`depthprobe.engine.generation.generate_conditions`) and still report exactly
    what ``evaluate`` reports; ``prefix`` is the shared few-shot block that was reused.
    """
    gen = task.generation
    assert gen is not None
    rows = []
    for inst, out in zip(instances, outputs):
        row: dict[str, Any] = {
            "doc_id": inst.doc_id,
            "prompt": inst.prompt,
            "generation": out.text,
            "n_generated_tokens": out.n_tokens,
            "hit_stop": out.hit_stop,
            "truncated": bool(getattr(out, "prompt_truncated", False)),
            "target": inst.target,
        }
        for f in gen.filters:
            extracted = f.apply(out.text)
            row[f"extracted,{f.name}"] = extracted
            row[f"exact_match,{f.name}"] = exact_match(
                extracted,
                str(inst.target),
                ignore_case=gen.ignore_case,
                ignore_punctuation=gen.ignore_punctuation,
                regexes_to_ignore=gen.regexes_to_ignore,
            )
        primary = gen.filters[0].name
        row["extracted"] = row[f"extracted,{primary}"]
        row["exact_match"] = row[f"exact_match,{primary}"]
        row["prediction"] = row["extracted"]
        row["correct"] = row["exact_match"]
        rows.append(row)
    samples = pd.DataFrame(rows)
    metrics = _aggregate(samples, {f"exact_match,{f.name}": f"exact_match,{f.name}" for f in gen.filters})
    run_stats = {
        "n_docs": len(instances),
        "n_generated_tokens": int(samples["n_generated_tokens"].sum()),
        "n_hit_max_gen_toks": int((~samples["hit_stop"].astype(bool)).sum()),
        "n_prompt_truncated": sum(bool(getattr(o, "prompt_truncated", False)) for o in outputs),
        "shared_prefix_chars": len(prefix),
        "n_prefix_reused": sum(bool(getattr(o, "prefix_reused", False)) for o in outputs),
    }
    return EvalResult(task.name, metrics, samples, config, run_stats, generations=list(outputs))
