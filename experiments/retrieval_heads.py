"""Sec. 5 — retrieval heads: every head and every GQA group of the given layers zero-ablated on KV retrieval.

The study finds a few heads in layers 8 and 10 of LLaMA-1 7B whose removal breaks retrieval. Heads
that duplicate each other each look harmless alone; the group ablation shows what they carry together.
"""

import sys

from depthprobe import cli, model_dims, plots
from depthprobe.sweep import group_grid, head_grid

STUDY_TASK, ORGANISM_TASK = "kv_retrieval", "organism_retrieval"


def main(argv: list[str] | None = None) -> int:
    parser = cli.experiment_parser(
        __doc__,
        default_model="organism-base",
        study_example="python experiments/retrieval_heads.py --model llama-1-7b --layers 8 10",
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        help="layers whose heads to sweep (default: 8 10 for the study's models, 0 1 for organisms)",
    )
    args = parser.parse_args(argv)
    model = cli.load(args)
    organism = cli.is_organism(args.model)
    layers = cli.check_layers(model, args.layers or ([0, 1] if organism else [8, 10]), "--layers")
    task = ORGANISM_TASK if organism else STUDY_TASK
    conditions = [c for layer in layers for c in head_grid(model, layer) + group_grid(model, layer)]
    df = cli.sweep(model, task, conditions, args, "retrieval_heads", task)
    print(cli.summary(df, ["acc"], title=f"{task}: heads and groups of layers {layers}"))
    r = model_dims(model).group_size
    for layer in layers:
        title = plots.run_title(f"{task}, heads of layer {layer}", df, model=args.model, task=task, limit=args.limit)
        cli.save(
            plots.head_attribution(df, layer, metric="acc", group_size=r, title=title),
            args,
            f"retrieval_heads_L{layer}",
        )
    if len(layers) > 1:
        title = plots.run_title(f"{task}, delta acc per head", df, model=args.model, task=task, limit=args.limit)
        cli.save(plots.head_heatmap(df, metric="acc", title=title), args, "retrieval_heads_heatmap")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
