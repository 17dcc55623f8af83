"""depthprobe's evaluator vs lm-evaluation-harness 0.4.13 on the same model and documents.

For each multiple-choice task, runs lm-eval (``HFLM`` on an in-memory Hugging Face copy) and
``depthprobe.evaluate`` (the TransformerLens bridge), then prints wall times, forward calls,
token-forwards (token positions fed to the model, padding included) and their ratios, and
checks the two agree (max |Δ log-likelihood|, identical predictions). Not a test: numbers
depend on the machine.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/evaluator_vs_lm_eval.py \\
        --model ../shared/models/stories260K --data-dir ../shared/data --limit 40
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from depthprobe.evaluator import evaluate  # noqa: E402
from depthprobe.models import load_model  # noqa: E402
from tests.lm_eval_reference import (  # noqa: E402
    RefTask,
    make_task_manager,
    request_results,
    run_lm_eval,
    write_jsonl,
    write_task_yaml,
)


def _subject_file(src: Path, dst: Path, subject: str) -> str:
    import json

    with src.open(encoding="utf-8") as fh:
        docs = [d for d in map(json.loads, fh) if d["subject"] == subject]
    return str(write_jsonl(dst, docs))


def reference_tasks(data_dir: Path, work: Path, subject: str) -> dict[str, tuple[RefTask, dict]]:
    mmlu = {
        "test": _subject_file(data_dir / "mmlu/all/test.jsonl", work / "mmlu_test.jsonl", subject),
        "dev": _subject_file(data_dir / "mmlu/all/dev.jsonl", work / "mmlu_dev.jsonl", subject),
    }
    tasks = {
        "mmlu": (RefTask("bench_mmlu", f"mmlu/default/mmlu_{subject}.yaml", mmlu, {}), {"subjects": subject}),
        "mmlu_continuation": (
            RefTask("bench_mmlu_continuation", f"mmlu/continuation/mmlu_{subject}.yaml", mmlu, {}),
            {"subjects": subject},
        ),
        "mathqa": (
            RefTask("bench_mathqa", "mathqa/mathqa.yaml", {"test": str(data_dir / "mathqa/default/test.jsonl")}, {}),
            {},
        ),
        "openbookqa": (
            RefTask(
                "bench_openbookqa",
                "openbookqa/openbookqa.yaml",
                {"test": str(data_dir / "openbookqa/main/test.jsonl")},
                {},
            ),
            {},
        ),
    }
    hs = data_dir / "hellaswag/default/validation.jsonl"
    if hs.is_file():
        tasks["hellaswag"] = (
            RefTask(
                "bench_hellaswag",
                "hellaswag/hellaswag.yaml",
                {"validation": str(hs)},
                {"validation_split": "validation", "test_split": None},
            ),
            {},
        )
    return tasks


class ForwardCounter:
    """Counts forward calls and token positions entering a model's input embedding."""

    def __init__(self, module: torch.nn.Module):
        self.calls = self.tokens = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        self.calls += 1
        self.tokens += args[0].numel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        default=str(REPO.parent / "shared/models/stories260K"),
        help='a Hugging Face model directory, or "tiny" for a random tiny Llama (2048-token context)',
    )
    p.add_argument("--data-dir", default=str(REPO.parent / "shared/data"))
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--subject", default="college_medicine", help="MMLU subject (one lm-eval subtask)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data_dir = Path(args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="depthprobe_bench_"))
    if args.model == "tiny":
        from depthprobe.tiny import make_tiny_model

        args.model = str(make_tiny_model(work / "tiny_llama", arch="llama", n_layers=4, d_model=128))
    tasks = reference_tasks(data_dir, work, args.subject)
    if args.tasks:
        tasks = {k: v for k, v in tasks.items() if k in args.tasks}
    for spec, _ in tasks.values():
        write_task_yaml(work, spec)
    tm = make_task_manager(work)

    hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    bridge = load_model(args.model, dtype="float32", device="cpu")
    ref_counter = ForwardCounter(hf.get_input_embeddings())
    our_counter = ForwardCounter(bridge.original_model.get_input_embeddings())

    header = (
        f"{'task':18} {'docs':>4} {'lm-eval s':>9} {'ours s':>7} {'speedup':>7} {'lm fwd':>6} {'our fwd':>7} "
        f"{'lm tok-fwd':>10} {'our tok-fwd':>11} {'tok ratio':>9} {'max|Δll|':>9} {'same pred':>9}"
    )
    print(f"model {args.model}, limit {args.limit}, batch size {args.batch_size}, threads {torch.get_num_threads()}")
    print(header)
    for name, (spec, options) in tasks.items():
        ref_counter.calls = ref_counter.tokens = 0
        t0 = time.perf_counter()
        samples, _ = run_lm_eval(hf, tok, [spec.name], tm, limit=args.limit, batch_size=args.batch_size)
        t_ref = time.perf_counter() - t0
        ref = samples[spec.name]
        our_counter.calls = our_counter.tokens = 0
        t0 = time.perf_counter()
        result = evaluate(bridge, name, limit=args.limit, batch_size=args.batch_size, data_dir=data_dir, **options)
        t_ours = time.perf_counter() - t0
        diff, same = 0.0, True
        for row, s in zip(result.samples.itertuples(), ref):
            lls = [ll for ll, _ in request_results(s)]
            diff = max(diff, max(abs(a - b) for a, b in zip(row.loglikelihoods, lls)))
            same &= row.correct == bool(s["acc"])
        print(
            f"{name:18} {len(ref):>4} {t_ref:>9.2f} {t_ours:>7.2f} {t_ref / t_ours:>6.2f}x {ref_counter.calls:>6} "
            f"{our_counter.calls:>7} {ref_counter.tokens:>10} {our_counter.tokens:>11} "
            f"{ref_counter.tokens / max(our_counter.tokens, 1):>8.2f}x {diff:>9.1e} {str(same):>9}"
        )
        if result.stats["n_truncated"]:
            print(f"{'':18} ({result.stats['n_truncated']} requests left-truncated to the model context on both sides)")
    print("speedup and tok ratio: lm-eval / depthprobe (higher is better for depthprobe)")


if __name__ == "__main__":
    main()
