"""Command line: ``python -m depthprobe models`` lists the model aliases; ``demo`` runs a first layer sweep;
``sweep`` runs a custom sweep; ``lm-eval`` is lm-evaluation-harness's CLI with the depthprobe backend."""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

_STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball in the grass. She ran to the ball and picked it up."
)


def _find_shared_model() -> Path:
    here = Path.cwd()
    for base in (os.environ.get("DEPTHPROBE_SHARED"), here / "shared", here.parent / "shared"):
        if base and (Path(base) / "models" / "stories260K" / "config.json").is_file():
            return Path(base) / "models" / "stories260K"
    raise SystemExit("demo: ../shared/models/stories260K not found; set DEPTHPROBE_SHARED to the shared/ folder")


def cmd_models(args: argparse.Namespace) -> int:
    from depthprobe.models import list_models

    for alias, target in list_models().items():
        print(f"{alias:24s} {target}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Skip each layer of the real stories260K model in turn: story log-likelihood and greedy continuation."""
    import torch

    import depthprobe as dp

    path = Path(args.model) if args.model else _find_shared_model()
    model = dp.load_model(path)
    tok = model.tokenizer
    ids = tok(_STORY, return_tensors="pt").input_ids
    prompt = tok("Once upon a time", return_tensors="pt").input_ids

    def score() -> tuple[float, str]:
        with torch.no_grad():
            logp = model(ids).log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None]).mean().item()
            out = model.generate(
                prompt, max_new_tokens=16, do_sample=False, verbose=False, use_past_kv_cache=True, return_type="tokens"
            )
        return logp, tok.decode(out[0, prompt.shape[1] :], skip_special_tokens=True).replace("\n", " ")

    base_logp, base_text = score()
    n_layers = dp.model_dims(model).n_layers
    print(f"model: {path}  ({n_layers} layers)")
    print(f"{'condition':12s} {'logp/token':>10s} {'delta':>8s}  greedy continuation of 'Once upon a time'")
    print(f"{'baseline':12s} {base_logp:10.4f} {0.0:8.4f}  {base_text}")
    for layer in range(n_layers):
        with dp.ablate(model, dp.skip_layer(layer)):
            logp, text = score()
        print(f"{f'skip:L{layer}':12s} {logp:10.4f} {logp - base_logp:8.4f}  {text}")
    return 0


def _count(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def add_executor_flags(parser: argparse.ArgumentParser) -> None:
    """--executor inprocess|ray and the Ray cluster's flags."""
    group = parser.add_argument_group("executor")
    group.add_argument(
        "--executor",
        choices=["inprocess", "ray"],
        default="inprocess",
        help="where units of work run: this process (default) or Ray workers (pip install 'depthprobe[ray]')",
    )
    group.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto': the one `ray start --head` started); default: RAY_ADDRESS or a new local one",
    )
    group.add_argument(
        "--workers", type=_count(int), default=None, help="Ray workers (default: one per GPU, else one per CPU)"
    )
    group.add_argument(
        "--gpus-per-worker", type=float, default=None, help="GPUs per Ray worker (default: 1 if the cluster has GPUs)"
    )
    group.add_argument(
        "--cpus-per-worker", type=_count(float), default=1, help="CPUs (and torch threads) per Ray worker"
    )


def make_executor(args: argparse.Namespace) -> Any:
    """The executor the flags ask for (None: in this process)."""
    if args.executor != "ray":
        return None
    from depthprobe.executors.ray import RayExecutor

    return RayExecutor(
        args.address,
        num_workers=args.workers,
        num_gpus_per_worker=args.gpus_per_worker,
        num_cpus_per_worker=args.cpus_per_worker,
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    """A custom sweep: one task, one grid, stored and resumable under --out."""
    from depthprobe import cli
    from depthprobe.model_spec import ModelSpec
    from depthprobe.tasks import get_task

    metric = cli.primary_metric(get_task(args.task))  # an unknown task is refused before the model loads
    parts = ("sweep", args.task, args.grid.replace(":", "_"))
    executor = make_executor(args)
    # Ray workers load the model themselves: the driver only reads its config and weight fingerprint.
    model = cli.load(args) if executor is None else ModelSpec(args.model, dtype=args.dtype, device=args.device)
    options: dict[str, Any] = {} if args.num_fewshot is None else {"num_fewshot": args.num_fewshot}
    if args.prescreen is not None:
        options["prescreen"] = args.prescreen
    if args.max_rows is not None:
        options["max_rows"] = args.max_rows
    if args.attn_implementation is not None:
        options["attn_implementation"] = args.attn_implementation
    if args.draft == "none":
        options["draft"] = None
    try:
        df = cli.sweep(model, args.task, args.grid, args, *parts, executor=executor, **options)
    finally:
        if executor is not None:
            executor.close()
    print(cli.summary(df, [metric], title=f"{args.task}: {args.grid}"))
    computed = len(df.attrs.get("computed", []))
    print(f"computed {computed} condition(s); {len(df) - computed} were already saved in {cli.run_dir(args, *parts)}")
    if args.figures is None:  # by default the figure lives with its run directory
        args.figures = str(cli.run_dir(args, *parts))
    cli.save(
        cli.grid_figure(df, args.grid, metric, model, title=f"{args.model}: {args.task}, {args.grid}"),
        args,
        "_".join(parts),
        png=False,
    )
    return 0


def cmd_campaign(args: argparse.Namespace) -> int:
    """Every sweep of a campaign file, each in its own run directory under the campaign's root; resumes."""
    from depthprobe.campaign import run_campaign

    executor = make_executor(args)
    try:
        df = run_campaign(args.file, executor=executor, root=args.root, limit=args.limit, progress=not args.no_progress)
    finally:
        if executor is not None:
            executor.close()
    print(df.drop(columns=["run_dir"]).to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    print(f"{len(df)} sweeps, {int(df['n_conditions'].sum())} conditions, under {args.root or 'the campaign root'}")
    if args.report is not None and len(df):
        from depthprobe.report import report

        dirs = [str(d) for d in df["run_dir"]]
        print(f"report: {report(os.path.commonpath(dirs), args.report).resolve()}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """A static site of every run directory under the roots: index, sweep pages, study views (opens offline)."""
    from depthprobe.report import report

    print(f"report: {report(args.roots, args.out).resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line. A user error is one line on stderr (exit status 2; ``--debug`` shows the traceback);
    Ctrl-C says what is saved and how to resume (exit status 130)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # every other argument is lm-eval's own
        from depthprobe.lm_eval_backend import cli as lm_eval_cli

        return lm_eval_cli(argv[1:])
    from depthprobe.cli import guard

    return guard(_dispatch, argv)


def _dispatch(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def _parser() -> argparse.ArgumentParser:
    from depthprobe.cli import OneLineParser

    parser = OneLineParser(
        prog="depthprobe",
        description=__doc__,
        epilog="--debug (anywhere on the line) shows the full traceback of an error",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model aliases load_model accepts").set_defaults(func=cmd_models)
    demo = sub.add_parser("demo", help="skip each layer of stories260K in turn and report the damage")
    demo.add_argument("--model", help="a local model directory (default: ../shared/models/stories260K)")
    demo.set_defaults(func=cmd_demo)
    from depthprobe import cli

    sweep = cli.experiment_parser(
        "a custom sweep",
        default_model="organism-base",
        study_example="python -m depthprobe sweep --model qwen3-8b --task mmlu --grid layers",
    )
    sweep = sub.add_parser("sweep", parents=[sweep], add_help=False, help="run a custom sweep (resumable)")
    sweep.add_argument(
        "--task", required=True, help="a task name (python -c 'import depthprobe; print(depthprobe.list_tasks())')"
    )
    sweep.add_argument(
        "--grid", default="layers", help="layers | heads:L | heads:all | groups:L | head_weights:L | blocks:N"
    )
    sweep.add_argument("--num-fewshot", type=cli.non_negative_int, default=None)
    sweep.add_argument(
        "--prescreen",
        type=cli.prescreen,
        default=None,
        metavar="TOP_K[,RANDOM_K]",
        help="attribute every condition first, exact-ablate only the top-k and a random sample of the rest",
    )
    sweep.add_argument(
        "--max-rows",
        type=_count(int),
        default=None,
        help="generation: rows of one decode batch, conditions x documents (default 256); a unit of "
        "work is max_rows // batch_size conditions, and Ctrl-C loses at most the unit in flight",
    )
    sweep.add_argument(
        "--attn-implementation",
        choices=["eager", "sdpa"],
        default=None,
        help="generation: attention of the hook-free decoders (default: the model's own, eager; "
        "sdpa is faster and rounds differently; recorded in the run's manifest)",
    )
    sweep.add_argument(
        "--draft",
        choices=["baseline", "none"],
        default="baseline",
        help="generation: verify the baseline's generation under each condition and decode only from where "
        "it departs (default), or decode every token (none); the generations are the same",
    )
    add_executor_flags(sweep)
    sweep.set_defaults(func=cmd_sweep, figures=None)  # HTML figure under --figures, default: the run directory
    campaign = sub.add_parser("campaign", help="run a campaign file: models x tasks x grids, each sweep resumable")
    campaign.add_argument("file", help="a campaign TOML (campaigns/organisms.toml, campaigns/study.toml)")
    campaign.add_argument("--root", default=None, help="run directory root (default: the file's root)")
    campaign.add_argument("--limit", type=_count(int), default=None, help="override every sweep's document limit")
    campaign.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    campaign.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="afterwards, write the report of the campaign's sweeps into DIR (see `report`)",
    )
    add_executor_flags(campaign)
    campaign.set_defaults(func=cmd_campaign)
    report = sub.add_parser(
        "report",
        help="a static site of run directories: index, sweep pages with figures, "
        "study views; opens offline in a browser",
    )
    report.add_argument("roots", nargs="+", metavar="ROOT", help="a run directory or a folder holding run directories")
    report.add_argument("-o", "--out", default="report", help="output directory (default: ./report)")
    report.set_defaults(func=cmd_report)
    sub.add_parser(
        "lm-eval",
        help="lm-evaluation-harness's command line with --model depthprobe available "
        "(e.g. --model depthprobe --model_args pretrained=organism-base,interventions=skip:L1 --tasks ...)",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
