"""Sec. 7.1 — base vs distilled: the same chain-of-thought layer sweep on both models.

Distillation spreads reasoning across depth: the distilled model's accuracy drops less, and at
other layers, when one layer is skipped.
"""

import sys

from depthprobe import cli, plots

STUDY_TASK, ORGANISM_TASK = "gsm8k_cot", "organism_reasoning"


def main(argv: list[str] | None = None) -> int:
    parser = cli.experiment_parser(
        __doc__,
        default_model="organism-base",
        study_example="python experiments/distilled.py --model llama-3.1-8b "
        "--distilled r1-distill-llama-8b --limit 250",
    )
    parser.add_argument(
        "--distilled",
        default=None,
        help="the distilled model (default: organism-distilled for organisms, r1-distill-llama-8b otherwise)",
    )
    args = parser.parse_args(argv)
    organism = cli.is_organism(args.model)
    distilled = args.distilled or ("organism-distilled" if organism else "r1-distill-llama-8b")
    task = ORGANISM_TASK if organism else STUDY_TASK
    metric = cli.primary_metric(task)
    frames = {}
    for name in (args.model, distilled):
        model = cli.load(args, name)
        args_for = cli.with_model(args, name)
        frames[name] = cli.sweep(model, task, "layers", args_for, "distilled", task)
        print(cli.summary(frames[name], [metric], title=f"{name}: {task}"))
        del model
    title = plots.run_title(
        f"base vs distilled: {task}, layer skips", frames, model=list(frames), task=task, limit=args.limit
    )
    cli.save(plots.layer_curves(frames, [metric], title=title), args, "distilled")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
