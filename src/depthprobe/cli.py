"""What every experiment script shares: its common flags, model loading, range checks, a summary table."""

import argparse
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where experiment scripts write figures: the repository's figures/ folder when run from a checkout.
FIGURES_DIR = REPO_ROOT / "figures" if (REPO_ROOT / "pyproject.toml").is_file() else Path("figures")

STUDY_MODELS_HELP = (
    "the study's settings: --model llama-3.1-8b | qwen3-8b | llama-1-7b | r1-distill-llama-8b "
    "(or any local Hugging Face directory), with --device cuda --dtype bfloat16"
)


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` with its errors on one line (the usage is one ``--help`` away); exit status 2."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


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


def prescreen(text: str) -> Any:
    """``argparse`` type: ``TOP_K`` or ``TOP_K,RANDOM_K`` as a ``depthprobe.Prescreen`` (``--prescreen``)."""
    from depthprobe.attribution import Prescreen

    top, _, rand = text.partition(",")
    if not top.strip().isdigit() or not (rand.strip().isdigit() or not rand):
        raise argparse.ArgumentTypeError(f"{text!r} is not TOP_K or TOP_K,RANDOM_K; give e.g. 10,10")
    return Prescreen(top_k=int(top), random_k=int(rand or 0))


def experiment_parser(description: str, *, default_model: str, study_example: str) -> argparse.ArgumentParser:
    """An ``argparse`` parser with the flags every experiment script takes.

    ``default_model`` is the embedded default (a small model that runs on a laptop CPU);
    ``study_example`` is the command line of the paper's own setting, shown in ``--help``.
    """
    parser = OneLineParser(
        description=description,
        epilog=f"{STUDY_MODELS_HELP}. Example: {study_example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=default_model, help=f"alias, hub id or directory (default: {default_model})")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)"
    )
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


#: The run directory the current command is writing (for the Ctrl-C message).
_current_run: Path | None = None


def _error_line(err: BaseException) -> str:
    """One line for a user error: the message, or for an OS error what failed on which path."""
    if isinstance(err, OSError) and err.strerror and err.filename and str(err).startswith("[Errno"):
        text = f"{err.strerror.lower()}: {err.filename}"
        if isinstance(err, PermissionError):
            text += " (choose a writable --out)"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def _interrupted() -> str:
    if _current_run is None:
        return "depthprobe: interrupted; nothing was being written"
    conditions = _current_run / "conditions"
    n = sum(1 for _ in conditions.glob("[!.]*.json")) if conditions.is_dir() else 0
    return (
        f"depthprobe: interrupted; {n} condition(s) are saved in {_current_run}; "
        f"run the same command again to resume (saved conditions are not recomputed)"
    )


def _show_warning(
    message: Any, category: type, filename: str, lineno: int, file: Any = None, line: str | None = None
) -> None:
    print(f"depthprobe: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def guard(main: Callable[..., int], argv: list[str] | None = None) -> int:
    """Run a command's ``main(argv)`` the way a person should see it: a user error (bad value, missing
    file, refused run directory) is one line on stderr and exit status 2, a warning one line, Ctrl-C
    one line saying what is saved and how to resume (exit status 130). ``--debug`` anywhere in
    ``argv`` keeps the tracebacks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    global _current_run
    _current_run = None
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
        try:
            return main(argv)
        except KeyboardInterrupt:
            if debug:
                raise
            print(_interrupted(), file=sys.stderr)
            return 130
        except (ValueError, OSError, ImportError) as err:
            if debug:
                raise
            print(f"depthprobe: error: {_error_line(err)}", file=sys.stderr)
            return 2


def run_dir(args: argparse.Namespace, *parts: str) -> Path:
    """``<--out>/<model name>/<parts...>``: one run directory per model and setting."""
    model_name = Path(str(args.model)).name or str(args.model)
    return Path(args.out, model_name.replace("/", "__"), *parts)


def summary(df: pd.DataFrame, metrics: Sequence[str], *, title: str) -> str:
    """A plain-text table of the metric and its change from the baseline, one row per condition.

    Where the results carry paired uncertainty, each delta is followed by its standard error,
    its 95% t interval and ``*`` when that interval excludes 0 (paired t-test, two-sided, 5%).
    """
    from depthprobe.uncertainty import significant

    table = df[["condition"]].copy()
    marked = False
    for metric in metrics:
        if metric in df.columns:
            table[metric] = df[metric]
            if f"delta_{metric}" in df.columns:
                table[f"delta_{metric}"] = df[f"delta_{metric}"]
            if f"delta_{metric}_ci_low" in df.columns:
                tag = f" {metric}" if len(metrics) > 1 else ""
                table[f"delta_{metric}_stderr"] = df[f"delta_{metric}_stderr"]
                table[f"95% CI{tag}"] = [
                    f"[{lo:+.3f}, {hi:+.3f}]"
                    for lo, hi in zip(df[f"delta_{metric}_ci_low"], df[f"delta_{metric}_ci_high"])
                ]
                table[f"sig{tag}"] = significant(df, metric).map({True: "*", False: ""})
                marked = True
    if "identical_to_baseline" in df.columns:  # generation: the share of generations equal to the baseline's
        table["identical"] = df["identical_to_baseline"]
        if "delta_identical_to_baseline_ci_low" in df.columns:  # the baseline's own is 1: its delta's interval, shifted
            table["identical 95% CI"] = [
                f"[{lo + 1:.3f}, {hi + 1:.3f}]"
                for lo, hi in zip(df["delta_identical_to_baseline_ci_low"], df["delta_identical_to_baseline_ci_high"])
            ]
        table["diverge_at"] = df["diverge_at"]  # mean index of the first token that differs from the baseline's
    if "n_truncated" in df.columns and (df["n_truncated"].fillna(0) > 0).any():
        table["n_truncated"] = df["n_truncated"]
    text = table.to_string(index=False, float_format=lambda x: f"{x:.3f}")
    note = (
        "\n* the delta's paired 95% t interval excludes 0 (paired t-test on per-document differences)" if marked else ""
    )
    return f"\n== {title} ==\n{text}{note}\n"


def is_organism(name: str) -> bool:
    """True for the bundled model organisms (``organism-base``, ``organism-distilled``)."""
    return str(name).startswith("organism-")


def primary_metric(task: Any) -> str:
    """The metric a figure plots for ``task``: ``acc`` for log-likelihood tasks, the first exact-match filter otherwise."""
    from depthprobe.tasks import get_task

    t = get_task(task) if isinstance(task, str) else task
    if t.scorer == "lm_eval":
        return t.primary_metric
    if t.output_type == "generate_until":
        return f"exact_match,{t.generation.filters[0].name}"
    return "acc"


def sweep(model: Any, task: Any, grid: Any, args: argparse.Namespace, *parts: str, **options: Any) -> pd.DataFrame:
    """``run_sweep`` with the script's common flags, into ``run_dir(args, *parts)``; resumes by default."""
    from depthprobe.sweep import run_sweep

    global _current_run
    _current_run = run_dir(args, *parts)
    return run_sweep(
        model,
        task,
        grid,
        out_dir=_current_run,
        limit=args.limit,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        **options,
    )


def grid_figure(df: pd.DataFrame, grid: str, metric: str, model: Any, *, title: str) -> Any:
    """The figure of one grid's results: layer curves, a layer's head bars, the head heatmap, or one bar per condition."""
    from depthprobe import plots
    from depthprobe.models import model_dims

    kind, _, arg = grid.strip().partition(":")
    if kind == "layers":
        return plots.layer_curves(df, [metric], title=title)
    if kind in ("heads", "groups", "head_weights") and arg.isdigit():
        dims = model.dims() if callable(getattr(model, "dims", None)) else model_dims(model)  # a ModelSpec, or loaded
        size = dims.group_size if kind != "groups" else 1
        return plots.head_attribution(
            df,
            int(arg),
            metric=metric,
            group_size=size,
            kind={"heads": "head", "groups": "group"}.get(kind, kind),
            title=title,
        )
    if grid.strip() == "heads:all":
        return plots.head_heatmap(df, metric=metric, title=title)
    return plots.condition_bars(df, metric=metric, title=title)


def save(fig: Any, args: argparse.Namespace, name: str, *, png: bool = True) -> None:
    """Write ``fig`` under ``--figures`` as HTML (and PNG when a browser is available and ``png``) and say where."""
    from depthprobe.plots import save_figure

    for path in save_figure(fig, Path(args.figures) / name, png=png):
        print(f"wrote {path}")


def with_model(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """A copy of ``args`` naming another model (for scripts that sweep two models)."""
    return argparse.Namespace(**{**vars(args), "model": name})
