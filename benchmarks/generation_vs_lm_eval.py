"""Greedy generation: depthprobe (TransformerLens bridge, KV cache, shared few-shot prefix) vs lm-eval's HFLM.

Runs gsm8k_cot's k-shot prompts through ``depthprobe.evaluate``'s generation path
(``generate_until`` with the exemplar prefix cached once) and through lm-eval 0.4.13's
``HFLM.generate_until`` on an in-memory Hugging Face copy of the same model; prints both wall
times, generated tokens per second and the ratio, and checks the generations are identical.
The bridge's per-token Python hook dispatch is a real cost: this reports it, it does not hide it.

    HF_HUB_OFFLINE=1 python benchmarks/generation_vs_lm_eval.py --model ../shared/models/stories260K \\
        --data-dir ../shared/data --limit 16 --shots 4 --max-gen-toks 64
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import depthprobe as dp  # noqa: E402
from depthprobe.evaluation.generation import generate_until  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="../shared/models/stories260K")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--max-gen-toks", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    task = dp.get_task("gsm8k_cot")
    prompts = [i.prompt for i in task.instances(limit=args.limit, num_fewshot=args.shots, data_dir=args.data_dir)]
    until = list(task.generation.until)

    bridge = dp.load_model(args.model)
    prefix = os.path.commonprefix(prompts)
    prefix = prefix[: prefix.rfind(task.fewshot_delimiter) + len(task.fewshot_delimiter)] if args.shots else ""
    start = time.perf_counter()
    ours = generate_until(
        bridge,
        [p[len(prefix) :] for p in prompts],
        until=until,
        max_gen_toks=args.max_gen_toks,
        batch_size=args.batch_size,
        prefix=prefix or None,
    )
    t_ours = time.perf_counter() - start

    hf = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="eager").eval()
    lm = HFLM(pretrained=hf, tokenizer=AutoTokenizer.from_pretrained(args.model), batch_size=args.batch_size)
    kwargs = {"until": until, "max_gen_toks": args.max_gen_toks, "do_sample": False, "temperature": 0.0}
    requests = [Instance(request_type="generate_until", doc={}, arguments=(p, dict(kwargs)), idx=0) for p in prompts]
    start = time.perf_counter()
    theirs = lm.generate_until(requests, disable_tqdm=True)
    t_theirs = time.perf_counter() - start

    n_tokens = sum(g.n_tokens for g in ours)
    same = sum(a.text == b for a, b in zip(ours, theirs))
    print(
        f"model {args.model}, gsm8k_cot {args.shots}-shot, {len(prompts)} prompts, max_gen_toks {args.max_gen_toks}, "
        f"batch {args.batch_size}"
    )
    print(f"depthprobe (bridge, prefix cache): {t_ours:7.2f} s  {n_tokens / t_ours:7.1f} generated tok/s")
    print(f"lm-eval HFLM (Hugging Face):       {t_theirs:7.2f} s")
    print(f"wall-time ratio lm-eval / depthprobe: {t_theirs / t_ours:.2f}x")
    print(
        f"identical generations: {same}/{len(prompts)}; prefix reused for "
        f"{sum(g.prefix_reused for g in ours)}/{len(prompts)}"
    )


if __name__ == "__main__":
    main()
