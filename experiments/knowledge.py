"""Sec. 3 — knowledge: HellaSwag and MathQA layer sweeps, acc and acc_norm.

Knowledge sits in shallow layers: skipping an early layer costs far more accuracy than skipping
a deep one.
"""

import sys

from depthprobe import cli, plots

STUDY = ("hellaswag", "mathqa")
ORGANISM = ("organism_knowledge",)


def main(argv: list[str] | None = None) -> int:
    parser = cli.experiment_parser(
        __doc__,
        default_model="organism-base",
        study_example="python experiments/knowledge.py --model qwen3-8b --limit 2000",
    )
    args = parser.parse_args(argv)
    model = cli.load(args)
    for task in ORGANISM if cli.is_organism(args.model) else STUDY:
        df = cli.sweep(model, task, "layers", args, "knowledge", task)
        print(cli.summary(df, ["acc", "acc_norm"], title=task))
        title = plots.run_title(f"{task}, layer skips", df, model=args.model, task=task, limit=args.limit)
        cli.save(plots.layer_curves(df, ["acc", "acc_norm"], title=title), args, f"knowledge_{task}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
