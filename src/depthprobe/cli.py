"""What every experiment script shares: its common flags, model loading, range checks, a summary table."""

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where experiment scripts write figures: the repository's figures/ folder when run from a checkout.
FIGURES_DIR = REPO_ROOT / "figures" if (REPO_ROOT / "pyproject.toml").is_file() else Path("figures")

STUDY_MODELS_HELP = (
    "the study's settings: --model llama-3.1-8b | qwen3-8b | llama-1-7b | r1-distill-llama-8b "
    "(or any local Hugging Face directory), with --device cuda --dtype bfloat16"
)


def positive_int(text: str) -> int:
    """``argparse`` type: a whole number >= 1 (``--limit``, ``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive; give a positive integer")
    return value


def non_negative_int(text: str) -> int:
    """``argparse`` type: a whole number >= 0 (``--num-fewshot``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give an integer >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give an integer >= 0")
    return value


def experiment_parser(description: str, *, default_model: str, study_example: str) -> argparse.ArgumentParser:
    """An ``argparse`` parser with the flags every experiment script takes.

    ``default_model`` is the embedded default (a small model that runs on a laptop CPU);
    ``study_example`` is the command line of the paper's own setting, shown in ``--help``.
    """
    parser = argparse.ArgumentParser(
        description=description,
        epilog=f"{STUDY_MODELS_HELP}. Example: {study_example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=default_model, help=f"alias, hub id or directory (default: {default_model})")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N documents")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--data-dir", default=None, help="local data laid out <dataset>/<config>/<split>.jsonl")
    parser.add_argument("--out", default="runs", help="run directory root; re-running resumes (default: runs/)")
    parser.add_argument("--figures", default=str(FIGURES_DIR), help=f"figure directory (default: {FIGURES_DIR})")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def load(args: argparse.Namespace, name: str | None = None) -> Any:
    """Load ``name`` (default ``args.model``) with the script's device and dtype."""
    from depthprobe.models import load_model

    if getattr(args, "no_progress", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bar too
    return load_model(name or args.model, dtype=args.dtype, device=args.device)


def check_layers(model: Any, layers: Iterable[int], flag: str = "--layer") -> list[int]:
    """Stop at once, with the model's valid range, when a requested layer is not in the model."""
    from depthprobe.models import model_dims

    n = model_dims(model).n_layers
    layers = list(layers)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        sys.exit(f"error: {flag} {' '.join(map(str, bad))} is outside the model: it has layers 0..{n - 1}")
    return layers


def run_dir(args: argparse.Namespace, *parts: str) -> Path:
    """``<--out>/<model name>/<parts...>``: one run directory per model and setting."""
    model_name = Path(str(args.model)).name or str(args.model)
    return Path(args.out, model_name.replace("/", "__"), *parts)


def summary(df: pd.DataFrame, metrics: Sequence[str], *, title: str) -> str:
    """A plain-text table of the metric and its change from the baseline, one row per condition."""
    cols = ["condition"]
    for metric in metrics:
        if metric in df.columns:
            cols.append(metric)
            if f"delta_{metric}" in df.columns:
                cols.append(f"delta_{metric}")
    if "n_truncated" in df.columns and (df["n_truncated"].fillna(0) > 0).any():
        cols.append("n_truncated")
    table = df[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}")
    return f"\n== {title} ==\n{table}\n"


def is_organism(name: str) -> bool:
    """True for the bundled model organisms (``organism-base``, ``organism-distilled``)."""
    return str(name).startswith("organism-")


def primary_metric(task: Any) -> str:
    """The metric a figure plots for ``task``: ``acc`` for log-likelihood tasks, the first exact-match filter otherwise."""
    from depthprobe.tasks import get_task

    t = get_task(task) if isinstance(task, str) else task
    if t.output_type == "generate_until":
        return f"exact_match,{t.generation.filters[0].name}"
    return "acc"


def sweep(model: Any, task: Any, grid: Any, args: argparse.Namespace, *parts: str, **options: Any) -> pd.DataFrame:
    """``run_sweep`` with the script's common flags, into ``run_dir(args, *parts)``; resumes by default."""
    from depthprobe.sweep import run_sweep

    return run_sweep(model, task, grid, out_dir=run_dir(args, *parts), limit=args.limit,
                     batch_size=args.batch_size, data_dir=args.data_dir, progress=not args.no_progress, **options)


def save(fig: Any, args: argparse.Namespace, name: str) -> None:
    """Write ``fig`` under ``--figures`` as HTML (and PNG when a browser is available) and say where."""
    from depthprobe.plots import save_figure

    for path in save_figure(fig, Path(args.figures) / name):
        print(f"wrote {path}")


def with_model(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """A copy of ``args`` naming another model (for scripts that sweep two models)."""
    return argparse.Namespace(**{**vars(args), "model": name})
