"""Sec. 6.1-6.2 — reasoning: GSM8K chain-of-thought layer sweeps at 1, 4 and 8 shots (greedy generation).

Reasoning needs the middle and deep layers (the study's Qwen3-8B: layers 6, 23 and 35), unlike
knowledge and retrieval. ``--thinking on off`` repeats the sweep with Qwen3's thinking switch.
"""

import sys

from depthprobe import cli, plots

STUDY_TASK, ORGANISM_TASK = "gsm8k_cot", "organism_reasoning"


def main(argv: list[str] | None = None) -> int:
    parser = cli.experiment_parser(
        __doc__,
        default_model="organism-base",
        study_example="python experiments/reasoning_layers.py --model qwen3-8b --shots 1 4 8 "
        "--thinking on off --limit 250",
    )
    parser.add_argument(
        "--shots",
        type=int,
        nargs="+",
        default=None,
        help="few-shot counts (default: 1 4 8 as in the study; 0 1 for the organisms, which never "
        "saw prompts longer than about 130 tokens in training)",
    )
    parser.add_argument(
        "--thinking",
        nargs="+",
        choices=["on", "off"],
        default=None,
        help="apply the chat template with Qwen3 thinking on and/or off (default: plain prompts)",
    )
    parser.add_argument("--max-gen-toks", type=int, default=None, help="generation budget per question")
    args = parser.parse_args(argv)
    model = cli.load(args)
    organism = cli.is_organism(args.model)
    task = ORGANISM_TASK if organism else STUDY_TASK
    args.shots = args.shots or ([0, 1] if organism else [1, 4, 8])
    metric = cli.primary_metric(task)
    frames = {}
    for thinking in args.thinking or [None]:
        for k in args.shots:
            options = {} if thinking is None else {"chat": True, "enable_thinking": thinking == "on"}
            if args.max_gen_toks:
                options["max_gen_toks"] = args.max_gen_toks
            label = f"{k}-shot" + ("" if thinking is None else f", thinking {thinking}")
            parts = ("reasoning_layers", task, f"{k}shot" + ("" if thinking is None else f"_think_{thinking}"))
            df = cli.sweep(model, task, "layers", args, *parts, num_fewshot=k, **options)
            frames[label] = df
            print(cli.summary(df, [metric], title=f"{task} {label}"))
    title = plots.run_title(f"{task}, layer skips", frames, model=args.model, task=task, limit=args.limit)
    cli.save(plots.layer_curves(frames, [metric], title=title), args, "reasoning_layers")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
