"""Task registry: every evaluation task by name, each with lm-eval 0.4.13's prompt.

Any other lm-eval task is available as ``"lm_eval:<name>"`` (lm-eval's own definition, see
``tasks.lm_eval_task``).

``get_task("mmlu", subjects=["anatomy"])`` builds a task; ``list_tasks()`` names them all;
``register_task`` adds one (a ``Task`` subclass with a unique ``name``).
"""

import difflib
from typing import Any

from depthprobe.interventions.mean import MeanReference, register_reference_resolver
from depthprobe.tasks.base import AnswerFilter, GenerationConfig, Instance, Task
from depthprobe.tasks.gsm8k import GSM8K, GSM8KCoT
from depthprobe.tasks.hellaswag import HellaSwag
from depthprobe.tasks.kv_retrieval import KVRetrieval
from depthprobe.tasks.lm_eval_task import LM_EVAL_PREFIX, LmEvalTask
from depthprobe.tasks.mathqa import MathQA
from depthprobe.tasks.mmlu import MMLU, MMLUContinuation, MMLUGenerative
from depthprobe.tasks.openbookqa import OpenBookQA, OpenBookQAOpen
from depthprobe.tasks.organisms import (
    OrganismClosedBook,
    OrganismClosedBookGenerative,
    OrganismKnowledge,
    OrganismOpenBook,
    OrganismReasoning,
    OrganismRetrieval,
)

__all__ = ["AnswerFilter", "GenerationConfig", "Instance", "Task", "get_task", "list_tasks", "register_task"]

_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task], *, overwrite: bool = False) -> type[Task]:
    """Register a ``Task`` subclass under its ``name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Task)) or not cls.name:
        raise ValueError(f"register_task needs a Task subclass with a name, got {cls!r}")
    if cls.name in _REGISTRY and not overwrite and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(_REGISTRY)


def get_task(name: str | Task, **options: Any) -> Task:
    """A task instance by name; ``options`` go to its constructor (e.g. ``n_pairs`` for kv_retrieval)."""
    if isinstance(name, Task):
        if options:
            raise ValueError("task options can only be given with a task name, not a Task instance")
        return name
    if isinstance(name, str) and name.startswith(LM_EVAL_PREFIX):
        return LmEvalTask(name[len(LM_EVAL_PREFIX) :], **options)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown task {name!r}; {hint}valid: {', '.join(list_tasks())}, or lm_eval:<any lm-eval task>"
        )
    try:
        return _REGISTRY[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for task {name!r}: {err}") from None


def reference_prompts(reference: MeanReference) -> list[str]:
    """The prompts of a mean reference's task: the documents ``evaluate`` would score (mean ablation's texts)."""
    task = get_task(str(reference.task), **dict(reference.options))
    return [
        i.prompt
        for i in task.instances(limit=reference.limit, num_fewshot=reference.num_fewshot, data_dir=reference.data_dir)
    ]


register_reference_resolver(reference_prompts)

for _cls in (
    MMLU,
    MMLUContinuation,
    MMLUGenerative,
    HellaSwag,
    MathQA,
    OpenBookQA,
    OpenBookQAOpen,
    KVRetrieval,
    GSM8K,
    GSM8KCoT,
    OrganismKnowledge,
    OrganismClosedBook,
    OrganismClosedBookGenerative,
    OrganismOpenBook,
    OrganismRetrieval,
    OrganismReasoning,
):
    register_task(_cls)
