"""Sec. 2 — the same questions under three evaluation protocols, every layer skipped in turn.

Multiple-choice log-likelihood (letters), continuation log-likelihood and greedy generation:
under log-likelihood almost only the first layers matter; under generation the middle and deep
layers matter too.
"""

import sys

from depthprobe import cli, plots

STUDY = {"log-likelihood (letters)": "mmlu", "continuation": "mmlu_continuation", "generation": "mmlu_generative"}
ORGANISM = {
    "log-likelihood (choices)": "organism_knowledge",
    "continuation": "organism_closedbook",
    "generation": "organism_closedbook_generative",
}


def main(argv: list[str] | None = None) -> int:
    parser = cli.experiment_parser(
        __doc__,
        default_model="organism-base",
        study_example="python experiments/protocols.py --model llama-3.1-8b --limit 1000",
    )
    args = parser.parse_args(argv)
    model = cli.load(args)
    tasks = ORGANISM if cli.is_organism(args.model) else STUDY
    frames = {}
    for label, task in tasks.items():
        metric = cli.primary_metric(task)
        df = cli.sweep(model, task, "layers", args, "protocols", task)
        frames[label] = df.rename(
            columns={
                f"{pre}{metric}{post}": f"{pre}score{post}"
                for pre, post in [
                    ("", ""),
                    ("delta_", ""),
                    ("delta_", "_stderr"),
                    ("delta_", "_ci_low"),
                    ("delta_", "_ci_high"),
                ]
            }
        )
        print(cli.summary(df, [metric], title=f"{task}: {label}"))
    title = plots.run_title(
        "layer skips under three protocols", frames, model=args.model, task=list(tasks.values()), limit=args.limit
    )
    cli.save(plots.layer_curves(frames, ["score"], title=title), args, "protocols")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
