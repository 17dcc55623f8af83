"""Sec. 8 — delta model: the distilled model's o_proj put into the base model, per layer, reverse and accumulatively.

Per-layer replacement patches one layer at a time; accumulative patches layers 0..k; reverse
patches layers k..L-1 from the top down. Where the curves rise shows where distillation moved
the reasoning. Only the o_proj tensors of the source are read, never the whole source model.
"""

import sys

from depthprobe import cli, plots
from depthprobe.interventions import o_proj_accumulative, o_proj_per_layer, o_proj_reverse
from depthprobe.models import resolve_model

STUDY_TASK, ORGANISM_TASK = "gsm8k_cot", "organism_reasoning"
SCHEDULES = {"per-layer": o_proj_per_layer, "reverse": o_proj_reverse, "accumulative": o_proj_accumulative}


def main(argv: list[str] | None = None) -> int:
    parser = cli.experiment_parser(
        __doc__,
        default_model="organism-base",
        study_example="python experiments/delta_model.py --model llama-3.1-8b "
        "--source /models/DeepSeek-R1-Distill-Llama-8B --limit 250",
    )
    parser.add_argument(
        "--source",
        default=None,
        help="model whose o_proj weights are patched in: a local checkpoint directory or alias "
        "(default: organism-distilled for organisms, r1-distill-llama-8b otherwise)",
    )
    parser.add_argument("--alpha", type=float, default=1.0, help="W <- W + alpha (W_src - W); 1 replaces")
    parser.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), default=list(SCHEDULES))
    args = parser.parse_args(argv)
    organism = cli.is_organism(args.model)
    source = resolve_model(args.source or ("organism-distilled" if organism else "r1-distill-llama-8b"))
    model = cli.load(args)
    task = ORGANISM_TASK if organism else STUDY_TASK
    metric = cli.primary_metric(task)
    frames = {}
    for name in args.schedules:
        conditions = SCHEDULES[name](model, source, alpha=args.alpha)
        frames[name] = cli.sweep(model, task, conditions, args, "delta_model", task, name)
        print(cli.summary(frames[name], [metric], title=f"{task}: o_proj replacement, {name}"))
    title = plots.run_title(
        f"o_proj of {args.source or 'distilled'} patched in", frames, model=args.model, task=task, limit=args.limit
    )
    cli.save(plots.o_proj_curves(frames, metric=metric, title=title), args, "delta_model")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
