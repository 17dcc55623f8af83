"""Sec. 6.3 and 7.2 — reasoning heads: every head of one layer ablated on GSM8K chain of thought.

Three ablations side by side: the true per-head ablation (``zero_head``), the per-group one
(``zero_kv_group``) and the study's original weight zeroing (``zero_head_weights``), which under
grouped-query attention silences the whole group, so every head of a group scores the same.
The table and a figure also show how much of the baseline's generation each ablation keeps
(``identical``: the share of problems whose whole generation is unchanged; ``diverge_at``: the mean
index of the first generated token that differs), a finer measure than exact match.
"""

import sys

from depthprobe import cli, model_dims, plots
from depthprobe.sweep import group_grid, head_grid, head_weights_grid

STUDY_TASK, ORGANISM_TASK = "gsm8k_cot", "organism_reasoning"


def main(argv: list[str] | None = None) -> int:
    parser = cli.experiment_parser(
        __doc__,
        default_model="organism-base",
        study_example="python experiments/reasoning_heads.py --model qwen3-8b --layer 35 --shots 8 --limit 250",
    )
    parser.add_argument(
        "--layer",
        type=int,
        default=None,
        help="the layer whose heads to ablate (default: 35 for the study's models, the last for organisms)",
    )
    parser.add_argument("--shots", type=int, default=None, help="few-shot count (default: the task's)")
    args = parser.parse_args(argv)
    model = cli.load(args)
    dims = model_dims(model)
    organism = cli.is_organism(args.model)
    layer = args.layer if args.layer is not None else (dims.n_layers - 1 if organism else 35)
    (layer,) = cli.check_layers(model, [layer])
    task = ORGANISM_TASK if organism else STUDY_TASK
    metric = cli.primary_metric(task)
    options = {} if args.shots is None else {"num_fewshot": args.shots}
    grids = {
        "head": head_grid(model, layer),
        "group": group_grid(model, layer),
        "head_weights": head_weights_grid(model, layer),
    }
    conditions = [c for grid in grids.values() for c in grid]
    df = cli.sweep(model, task, conditions, args, "reasoning_heads", task, f"L{layer}", **options)
    print(cli.summary(df, [metric], title=f"{task}: heads, groups and weight-zeroed heads of layer {layer}"))
    for kind in ("head", "head_weights"):
        title = plots.run_title(
            f"{task}, layer {layer}, {kind} ablation", df, model=args.model, task=task, limit=args.limit
        )
        cli.save(
            plots.head_attribution(df, layer, metric=metric, group_size=dims.group_size, kind=kind, title=title),
            args,
            f"reasoning_heads_{kind}_L{layer}",
        )
    cli.save(
        plots.divergence(
            df,
            group_size=dims.group_size,
            title=plots.run_title(
                f"{task}, layer {layer}: how much of the baseline's generation each ablation keeps",
                df,
                model=args.model,
                task=task,
                limit=args.limit,
            ),
        ),
        args,
        f"reasoning_heads_divergence_L{layer}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
