"""Per-token greedy decoding: depthprobe (hook path and hook-free path) vs Hugging Face ``generate``.

Same model (a random Llama GQA checkpoint, eager attention, float32 on CPU by default), same
left-padded batch, same number of new tokens (no EOS, so every row runs to the end). Prints
tokens per second of each and its ratio to Hugging Face's, and checks the generated tokens are
identical: the hook path and the hook-free path with no intervention against ``generate``, and
the hook-free path under ``zero_head`` / ``skip_layer`` against the hook path under ``ablate``.

Target (issue 12): hook-free >= 0.9x of Hugging Face's throughput (the hook path is about 0.5x).

Usage: python benchmarks/decode_speed.py [--layers 16] [--d-model 256] [--batch 8] [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from random_model import add_shape_flags, best_of, random_llama
from transformers import AutoModelForCausalLM

import depthprobe as dp
from depthprobe import adapter
from depthprobe.evaluation.fast_decode import HookFreeDecoder
from depthprobe.evaluation.generation import greedy_generate
from depthprobe.evaluation.tokenize import left_pad

PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "Once upon a time, there was a little girl named Lily. She loved to play",
    "Memorize the following dictionary: apple:12 river:7 window:99 The value of the key 'river' is",
    "Q: There are 15 trees in the grove. After they are done, there will be 21 trees. How many?\nA:",
    "The quick brown fox jumps over the lazy dog.",
    "Science, history, mathematics and law.",
    "Q: 1 2 3\nA:",
    "She loved to play outside in the park with her",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_flags(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with random_llama(args) as path:
        model = dp.load_model(path, dtype=torch.float32, device="cpu")
        hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    tok = model.tokenizer
    pad = adapter.pad_token_id(tok)
    prompts = (PROMPTS * (args.batch // len(PROMPTS) + 1))[: args.batch]
    ids, mask = left_pad([tok(q)["input_ids"] for q in prompts], pad)
    n = args.new_tokens
    n_tokens = ids.shape[0] * n
    print(
        f"model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads ({args.kv_heads} KV), eager, "
        f"float32, {torch.get_num_threads()} thread(s); batch {ids.shape[0]} x prompt {ids.shape[1]} "
        f"+ {n} new tokens"
    )

    def hf_generate():
        with torch.inference_mode():
            out = hf.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                eos_token_id=None,
                pad_token_id=pad,
            )
        return out[:, ids.shape[1] :]

    runs = {
        "HF generate": hf_generate,
        "depthprobe hook path": lambda: greedy_generate(model, ids, mask, max_new_tokens=n),
        "depthprobe hook-free": lambda: greedy_generate(model, ids, mask, max_new_tokens=n, decoder=HookFreeDecoder()),
    }
    hf_generate()  # warm-up
    times: dict[str, float] = {k: float("inf") for k in runs}
    outs = {}
    for _ in range(args.repeats):  # interleaved, so load from other processes hits all alike
        for name, fn in runs.items():
            t, outs[name] = best_of(fn, 1)
            times[name] = min(times[name], t)
    ok = all(torch.equal(outs[k], outs["HF generate"]) for k in runs)
    for name, t in times.items():
        print(f"{name:24s} {t:7.3f} s  {n_tokens / t:8.1f} tokens/s  {times['HF generate'] / t:5.2f}x of HF")
    for cond in ([dp.zero_head(args.layers - 1, 1)], [dp.skip_layer(args.layers // 2)]):
        with dp.ablate(model, *cond):
            t_hook, ref = best_of(lambda: greedy_generate(model, ids, mask, max_new_tokens=n), args.repeats)
        t_free, got = best_of(
            lambda: greedy_generate(model, ids, mask, max_new_tokens=n, decoder=HookFreeDecoder(cond)), args.repeats
        )
        same = torch.equal(ref, got)
        ok &= same
        print(
            f"under {'+'.join(iv.id for iv in cond):10s} hook path {n_tokens / t_hook:8.1f} tokens/s | hook-free "
            f"{n_tokens / t_free:8.1f} tokens/s | {t_hook / t_free:4.2f}x | tokens {'identical' if same else 'DIFFER'}"
        )
    ratio = times["HF generate"] / times["depthprobe hook-free"]
    print(
        f"hook-free / HF throughput {ratio:.2f}x (target >= 0.90x: {'met' if ratio >= 0.9 else 'MISSED'}); "
        f"tokens {'identical' if ok else 'DIFFER'}"
    )
    if not ok:
        raise SystemExit("generated tokens differ")


if __name__ == "__main__":
    main()
