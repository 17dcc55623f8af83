"""Run lm-evaluation-harness 0.4.13 on an in-memory Hugging Face model over local data, as the reference.

Each reference task is a YAML that ``include:``s the installed lm-eval task and swaps only the
data source for local JSON Lines files (``dataset_path: json``), so lm-eval's own prompt,
request construction, tokenization and metrics are what depthprobe is compared against.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lm_eval  # noqa: E402

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"


@dataclass(frozen=True)
class RefTask:
    """One reference task: the installed YAML it includes and its local data files by split."""

    name: str
    include: str  # relative to lm_eval/tasks
    data_files: dict[str, str]
    overrides: dict[str, Any]


def write_jsonl(path: Path, docs: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d) + "\n")
    return path


def write_task_yaml(directory: Path, task: RefTask) -> Path:
    """A task YAML for lm-eval: the installed task with only its data source replaced."""
    config: dict[str, Any] = {
        "include": str(LM_EVAL_TASKS / task.include),
        "task": task.name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": task.data_files},
        "training_split": None,
        "validation_split": None,
        **task.overrides,
    }
    path = directory / f"{task.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def make_task_manager(include_dir: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_dir))


def run_lm_eval(hf_model, tokenizer, task_names: list[str], task_manager, *, limit: int, batch_size: int = 1):
    """lm-eval samples per task, sorted by doc_id (each with ``resps``, ``arguments``, ``acc``...)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=hf_model, tokenizer=tokenizer, batch_size=batch_size)
    out = simple_evaluate(
        model=lm,
        tasks=task_names,
        task_manager=task_manager,
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        use_cache=None,
    )
    return {name: sorted(out["samples"][name], key=lambda s: s["doc_id"]) for name in task_names}, out["results"]


def request_args(sample: dict[str, Any]) -> list[tuple[str, str]]:
    """The (context, continuation) pairs lm-eval scored for one sample, in choice order."""
    args = sample["arguments"]
    if isinstance(args, dict):
        args = [tuple(v.values()) for v in args.values()]
    return [(a[0], a[1]) for a in args]


def request_results(sample: dict[str, Any]) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of each request of one sample, in choice order."""
    return [(float(r[0][0]), bool(r[0][1])) for r in sample["resps"]]
