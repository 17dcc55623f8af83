"""GPU readiness: decoding throughput and one layer-sweep step on a random Llama-3.1-8B-shaped model, and projections.

Builds a random-weight model with the Llama-3.1-8B configuration (32 layers, d_model 4096, 32
query heads over 8 KV heads, vocab 128256) in bfloat16 on the device, with no download, and
measures:

1. tokens per second of greedy decoding (``--prompts`` prompts of ``--prompt-tokens`` tokens,
   ``--new-tokens`` new tokens, no EOS) through Hugging Face ``generate``, depthprobe's hook
   path and depthprobe's hook-free path (eager, and SDPA with ``--sdpa``);
2. tokens per second of the generation engine's batched decoding: ``--sweep-conditions``
   conditions (the baseline and layer skips spread over depth) as row blocks of one batch
   (:class:`~depthprobe.evaluation.fast_decode.BlockDecoder`, ``conditions x prompts`` rows);
3. one batched layer-sweep step of the multiple-choice engine (every layer skip plus the
   baseline on one batch of ``--batch`` contexts of ``--mc-tokens`` tokens);

and prints the projected wall time of the full GSM8K 8-shot CoT layer sweep (33 conditions x
1,319 problems, every problem generating ``--new-tokens``: an upper bound) and of the MMLU
3-protocol layer sweep (14,042 questions: letters and continuation through the engine, one step
per batch each; generative decoding ``--mmlu-gen-tokens`` tokens per question hook-free).

``--tiny`` uses a 2-layer configuration so the script runs (and is tested) on CPU in seconds.

Usage: python benchmarks/gpu_sweep.py [--device cuda] [--sdpa]      (on an H200: about 10 minutes)
       python benchmarks/gpu_sweep.py --tiny --device cpu --prompts 2 --prompt-tokens 16 --new-tokens 4
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import depthprobe as dp
from depthprobe.evaluation.fast_decode import BlockDecoder, HookFreeDecoder
from depthprobe.evaluation.generation import greedy_generate
from depthprobe.interventions.weights import plain_model
from depthprobe.sweep import condition_logits, layer_grid
from depthprobe.tiny import make_tokenizer

LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                   rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
GSM8K_PROBLEMS, GSM8K_CONDITIONS = 1319, 33
MMLU_QUESTIONS = 14042


def build(tiny: bool, device: str, dtype: torch.dtype, tmp: Path) -> torch.nn.Module:
    """A bridge over a random model of the chosen configuration, built on the device (nothing downloaded)."""
    config = LlamaConfig(**(TINY if tiny else LLAMA_31_8B), bos_token_id=1, eos_token_id=2)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(tmp)
    make_tokenizer().save_pretrained(tmp)
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    from transformers import AutoTokenizer

    return dp.load_model(tmp, dtype=dtype, device=device, hf_model=hf.eval(), tokenizer=AutoTokenizer.from_pretrained(tmp))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def fmt(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a 2-layer configuration (CPU smoke run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=900)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=16, help="contexts per multiple-choice engine step")
    p.add_argument("--mc-tokens", type=int, default=600, help="tokens per MMLU context (5-shot is about 600)")
    p.add_argument("--mmlu-gen-tokens", type=int, default=8)
    p.add_argument("--sdpa", action="store_true", help="also time the hook-free decoder with SDPA attention")
    p.add_argument("--sweep-conditions", type=int, default=4, help="conditions decoded together as row blocks")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = build(args.tiny, args.device, dtype, Path(tmp))
        cfg = model.cfg
        print(f"random {'tiny' if args.tiny else 'Llama-3.1-8B'} model: {cfg.n_layers} layers, d_model {cfg.d_model}, "
              f"{args.dtype} on {args.device}; {args.prompts} prompts x {args.prompt_tokens} tokens + "
              f"{args.new_tokens} new")
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, min(cfg.d_vocab, 30000), (args.prompts, args.prompt_tokens), generator=g).to(args.device)
        mask = torch.ones_like(ids)
        n = args.new_tokens
        hf = plain_model(model)

        def hf_generate() -> torch.Tensor:
            with torch.inference_mode():
                return hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                   eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]

        runs = {
            "HF generate (eager)": hf_generate,
            "depthprobe hook-free (eager)": lambda: greedy_generate(model, ids, mask, max_new_tokens=n,
                                                                   decoder=HookFreeDecoder()),
            "depthprobe hook path": lambda: greedy_generate(model, ids, mask, max_new_tokens=n),
        }
        if args.sdpa:
            runs["depthprobe hook-free (sdpa)"] = lambda: greedy_generate(
                model, ids, mask, max_new_tokens=n, decoder=HookFreeDecoder(attn_implementation="sdpa"))
        hf_generate()  # warm-up
        tokens = args.prompts * n
        for name, fn in runs.items():
            t, _ = timed(fn, args.device)
            out[name] = tokens / t
            print(f"{name:30s} {t:8.2f} s  {tokens / t:9.1f} tokens/s  {out[name] / out['HF generate (eager)']:.2f}x of HF")

        conditions = [[]] + layer_grid(model)
        k = max(1, min(args.sweep_conditions, len(conditions)))
        spread = [conditions[0]] + conditions[1:][:: max(1, cfg.n_layers // max(1, k - 1))][: k - 1]
        impl = "sdpa" if args.sdpa else None
        t_block, _ = timed(lambda: greedy_generate(model, ids.repeat(len(spread), 1), mask.repeat(len(spread), 1),
                                                   max_new_tokens=n, decoder=BlockDecoder(spread, attn_implementation=impl)),
                           args.device)
        out["batched conditions"] = len(spread) * tokens / t_block
        print(f"{'conditions batched (' + str(len(spread)) + ' x ' + str(args.prompts) + ' rows)':30s} {t_block:8.2f} s  "
              f"{out['batched conditions']:9.1f} tokens/s  {out['batched conditions'] / out['HF generate (eager)']:.2f}x of HF")
        mc = torch.randint(3, min(cfg.d_vocab, 30000), (args.batch, args.mc_tokens), generator=g).to(args.device)
        condition_logits(model, mc[:1, :8], None, conditions[:2])  # warm-up
        t_step, _ = timed(lambda: condition_logits(model, mc, None, conditions, max_rows=args.batch), args.device)
        out["layer_sweep_step_s"] = t_step
        print(f"one layer-sweep step: {len(conditions)} conditions x {args.batch} contexts of {args.mc_tokens} "
              f"tokens in {t_step:.2f} s")

        best = max([out[name] for name in runs if "hook-free" in name] + [out["batched conditions"]])
        per_batch = args.prompts * n / best  # one decode batch of --prompts problems
        gsm8k = GSM8K_CONDITIONS * math.ceil(GSM8K_PROBLEMS / args.prompts) * per_batch
        steps = math.ceil(MMLU_QUESTIONS / args.batch)
        mmlu_gen = (cfg.n_layers + 1) * math.ceil(MMLU_QUESTIONS / args.prompts) * args.prompts * args.mmlu_gen_tokens / best
        mmlu = 2 * steps * t_step + mmlu_gen
        out["gsm8k_projected_s"], out["mmlu_projected_s"] = gsm8k, mmlu
        print(f"projected GSM8K 8-shot CoT layer sweep ({GSM8K_CONDITIONS} conditions x {GSM8K_PROBLEMS} problems, "
              f"{n} tokens each, at the best decoder's {best:.0f} tokens/s): {fmt(gsm8k)}")
        print(f"projected MMLU 3-protocol layer sweep ({MMLU_QUESTIONS} questions: letters + continuation "
              f"{2 * steps} engine steps, generative {args.mmlu_gen_tokens} tokens each): {fmt(mmlu)}")
    return out


if __name__ == "__main__":
    main()
