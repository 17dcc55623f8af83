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
3. the generation engine's verification (``draft="baseline"``, issue 22) against decoding every token
   (``draft=None``) for the same conditions (:func:`verify_overhead`: on random weights every condition
   departs from the baseline at once, so it measures the verification's overhead, not its saving);
4. one batched layer-sweep step of the multiple-choice engine (``score_conditions_reuse``: every
   layer skip plus the baseline on ``--batch`` contexts of ``--mc-tokens`` tokens, four one-token
   choices each, at most ``--mc-rows`` rows per forward);

and prints the projected wall time of the full GSM8K 8-shot CoT layer sweep (33 conditions x
1,319 problems, every problem generating 256 tokens: an upper bound) and of the MMLU 3-protocol
layer sweep (:func:`projections`, assumptions printed). On CUDA each run's peak GPU memory is
reported. ``benchmarks/device_check.py`` reuses these pieces (its part 2 and 3).

``--tiny`` uses a 2-layer configuration so the script runs (and is tested) on CPU in seconds.

Usage: python benchmarks/gpu_sweep.py [--device cuda] [--sdpa]
       python benchmarks/gpu_sweep.py --tiny --device cpu --prompts 2 --prompt-tokens 16 --new-tokens 4
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config

import depthprobe as dp
from depthprobe.evaluation.fast_decode import BlockDecoder, HookFreeDecoder
from depthprobe.evaluation.generation import greedy_generate
from depthprobe.interventions.weights import plain_model
from depthprobe.sweep import layer_grid, score_conditions_reuse
from depthprobe.tiny import make_tokenizer

LLAMA_31_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)
QWEN3_8B = dict(
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    tie_word_embeddings=False,
)
TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
TINY_QWEN3 = dict(TINY, head_dim=16, rms_norm_eps=1e-6)
SHAPES = {
    "llama": (LLAMA_31_8B, TINY, LlamaConfig, "LlamaForCausalLM"),
    "qwen3": (QWEN3_8B, TINY_QWEN3, Qwen3Config, "Qwen3ForCausalLM"),
}
GSM8K_PROBLEMS, GSM8K_CONDITIONS = 1319, 33
MMLU_QUESTIONS = 14042


@functools.lru_cache(maxsize=4)
def padded_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """depthprobe.tiny's BPE tokenizer with its vocabulary filled up to ``vocab_size`` by one-word tokens
    (``" xab"``, never produced by its merges), so every id a random full-vocabulary model generates
    decodes to text of its own: generations compared as text then compare their tokens."""
    from tokenizers import Tokenizer

    base = make_tokenizer()
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    i = 0
    while len(vocab) < vocab_size:
        word, n = "", i
        while True:
            word, n = "abcdefghijklmnopqrstuvwxyz"[n % 26] + word, n // 26
            if not n:
                break
        vocab.setdefault("Ġx" + word, len(vocab))
        i += 1
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=131072,
    )


def random_model(
    arch: str,
    *,
    tiny: bool,
    device: str,
    dtype: torch.dtype,
    tmp: Path,
    n_layers: int | None = None,
    reference: bool = False,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A bridge over a random ``arch`` model ("llama": Llama-3.1-8B, "qwen3": Qwen3-8B shape; ``tiny``: a
    64-wide one), built on ``device`` from its config (nothing downloaded), and with ``reference`` an
    independent Hugging Face copy of the same weights (eager attention) for weight surgery."""
    full, small, config_cls, architecture = SHAPES[arch]
    shape = dict(small if tiny else full)
    if n_layers is not None:
        shape["num_hidden_layers"] = n_layers
    config = config_cls(**shape, bos_token_id=1, eos_token_id=2)
    config.architectures = [architecture]
    tmp.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(tmp)
    padded_tokenizer(config.vocab_size).save_pretrained(tmp)
    torch.manual_seed(seed)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype).eval()
    hf.requires_grad_(False)
    ref = copy.deepcopy(hf) if reference else None
    model = dp.load_model(tmp, dtype=dtype, device=device, hf_model=hf, tokenizer=AutoTokenizer.from_pretrained(tmp))
    return model, ref


def build(tiny: bool, device: str, dtype: torch.dtype, tmp: Path) -> torch.nn.Module:
    """A bridge over a random Llama-3.1-8B-shaped model (``tiny``: 2 layers, 64 wide)."""
    return random_model("llama", tiny=tiny, device=device, dtype=dtype, tmp=tmp)[0]


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def measured(fn: Callable[[], Any], device: str) -> tuple[float, float | None, Any]:
    """``(seconds, peak GPU memory in GiB or None on CPU, result)`` of one call."""
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds, out = timed(fn, device)
    return seconds, (torch.cuda.max_memory_allocated() / 2**30 if cuda else None), out


def fmt(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def random_ids(model: Any, rows: int, tokens: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    return torch.randint(3, min(model.cfg.d_vocab, 30000), (rows, tokens), generator=g).to(device)


def spread_conditions(model: Any, k: int) -> list[list]:
    """The baseline and ``k - 1`` layer skips spread over depth."""
    conditions = [[]] + layer_grid(model)
    k = max(1, min(k, len(conditions)))
    return [conditions[0]] + conditions[1:][:: max(1, model.cfg.n_layers // max(1, k - 1))][: k - 1]


def decode_runs(
    model: Any, ids: torch.Tensor, n: int, *, sdpa: bool, block_conditions: list[list], device: str
) -> dict[str, dict[str, Any]]:
    """Greedy decoding of ``ids`` (``n`` new tokens, no EOS) by each decoder: tokens/s, seconds, peak GiB."""
    return dict(iter_decode_runs(model, ids, n, sdpa=sdpa, block_conditions=block_conditions, device=device))


def iter_decode_runs(
    model: Any, ids: torch.Tensor, n: int, *, sdpa: bool, block_conditions: list[list], device: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """:func:`decode_runs` one decoder at a time, so a caller can report each and stop between them."""
    mask = torch.ones_like(ids)
    hf = plain_model(model)

    def hf_generate(new: int = n) -> torch.Tensor:
        with torch.inference_mode():
            return hf.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new,
                min_new_tokens=new,
                eos_token_id=None,
                pad_token_id=0,
            )[:, ids.shape[1] :]

    runs: dict[str, Callable[[], Any]] = {
        "HF generate (eager)": hf_generate,
        "depthprobe hook-free (eager)": lambda: greedy_generate(
            model, ids, mask, max_new_tokens=n, decoder=HookFreeDecoder()
        ),
        "depthprobe hook path": lambda: greedy_generate(model, ids, mask, max_new_tokens=n),
    }
    if sdpa:
        runs["depthprobe hook-free (sdpa)"] = lambda: greedy_generate(
            model, ids, mask, max_new_tokens=n, decoder=HookFreeDecoder(attn_implementation="sdpa")
        )
    k = len(block_conditions)
    runs["batched conditions"] = lambda: greedy_generate(
        model,
        ids.repeat(k, 1),
        mask.repeat(k, 1),
        max_new_tokens=n,
        decoder=BlockDecoder(block_conditions, attn_implementation="sdpa" if sdpa else None),
    )
    hf_generate(2)  # warm-up: kernels, allocator
    for name, fn in runs.items():
        seconds, peak, _ = measured(fn, device)
        tokens = ids.shape[0] * n * (k if name == "batched conditions" else 1)
        yield (
            name,
            {
                "tokens_per_s": tokens / seconds,
                "seconds": seconds,
                "peak_gib": peak,
                "rows": tokens // n,
                "prompt_tokens": ids.shape[1],
                "new_tokens": n,
            },
        )


def mc_requests(model: Any, docs: int, tokens: int) -> tuple[list[tuple[str, list[str]]], float]:
    """``docs`` multiple-choice requests of about ``tokens`` context tokens (words the BPE encodes as one token
    each), four one-token choices; and their mean context length in tokens."""
    g = torch.Generator().manual_seed(1)
    pool = [
        w[1:]
        for w in model.tokenizer.get_vocab()
        if w.startswith("Ġ") and w[1:].isalpha() and len(w) > 2 and not w.startswith("Ġx")
    ] or ["a"]
    out, lengths = [], []
    for _ in range(docs):
        picks = torch.randint(0, len(pool), (tokens,), generator=g).tolist()
        context = " ".join(pool[i] for i in picks) + "\nAnswer:"
        out.append((context, [" A", " B", " C", " D"]))
        lengths.append(len(model.tokenizer(context)["input_ids"]))
    return out, sum(lengths) / len(lengths)


def mc_step(model: Any, docs: int, tokens: int, max_rows: int | None, device: str) -> dict[str, float | None]:
    """One batched step of the multiple-choice engine: every layer skip and the baseline on ``docs`` contexts."""
    conditions = [[]] + layer_grid(model)
    reqs, mean_tokens = mc_requests(model, docs, tokens)
    score_conditions_reuse(model, reqs[:1], conditions[:2], batch_size=1)  # warm-up
    seconds, peak, _ = measured(
        lambda: score_conditions_reuse(model, reqs, conditions, batch_size=docs, max_rows=max_rows), device
    )
    return {
        "seconds": seconds,
        "peak_gib": peak,
        "docs": docs,
        "context_tokens": mean_tokens,
        "conditions": len(conditions),
        "max_rows": max_rows,
    }


def rates(decoding: dict[str, dict[str, Any]], new_tokens: int, mc: dict[str, Any]) -> dict[str, float]:
    """Seconds per generated token of one row (the fastest depthprobe decoder, its prompts' prefill included)
    and seconds per context token of one document under one condition (the engine step)."""
    best = max(
        (v for k, v in decoding.items() if "hook-free" in k or k.startswith("batched")), key=lambda v: v["tokens_per_s"]
    )
    return {
        "gen_s_per_row_token": 1.0 / best["tokens_per_s"],
        "best_tokens_per_s": best["tokens_per_s"],
        "mc_s_per_doc_token": mc["seconds"] / (mc["docs"] * mc["conditions"] * mc["context_tokens"]),
    }


def projections(r: dict[str, float], *, conditions: int = GSM8K_CONDITIONS) -> list[dict[str, Any]]:
    """Projected wall times of the study's big layer sweeps on one GPU, each with its assumptions."""
    gen, mc = r["gen_s_per_row_token"], r["mc_s_per_doc_token"]
    gsm8k = conditions * GSM8K_PROBLEMS * 256 * gen
    letters = conditions * MMLU_QUESTIONS * 600 * mc
    cont = conditions * MMLU_QUESTIONS * 120 * mc
    generative = conditions * MMLU_QUESTIONS * 32 * gen
    return [
        {
            "name": "GSM8K 8-shot CoT layer sweep",
            "seconds": gsm8k,
            "assumptions": f"{conditions} conditions x {GSM8K_PROBLEMS} problems x 256 new tokens each (every problem "
            f"runs to max_gen_toks: an upper bound) at {1 / gen:.0f} tokens/s, the fastest decoder "
            f"measured (its ~900-token prompts' prefill included)",
        },
        {
            "name": "MMLU 3-protocol layer sweep",
            "seconds": letters + cont + generative,
            "parts_s": {"letters (5-shot)": letters, "continuation (0-shot)": cont, "generative": generative},
            "assumptions": f"{conditions} conditions x {MMLU_QUESTIONS} questions; letters: 5-shot contexts of ~600 "
            f"tokens, continuation: ~120 tokens of context and choices, both at the engine step's "
            f"{mc * 1e6:.3f} us per document-condition-token; generative: 32 new tokens at "
            f"{1 / gen:.0f} tokens/s",
        },
    ]


def verify_overhead(
    model: Any, ids: torch.Tensor, new_tokens: int, conditions: list[list], device: str, impl: str | None = None
) -> dict[str, float]:
    """The generation engine's verification (issue 22: ``draft="baseline"``, the baseline's generation verified
    under every condition, rows decoded from their first differing token) against decoding every token
    (``draft=None``), for the same conditions and prompts (the baseline decoded once beforehand, as ``run_sweep``
    does). On random weights every condition departs at once: nothing is saved, so the ratio is the overhead."""
    from depthprobe.engine.generation import generate_conditions
    from depthprobe.engine.verify import VerifyStats

    texts = model.tokenizer.batch_decode(ids.tolist())
    kw = dict(until=[], max_gen_toks=new_tokens, batch_size=len(texts), max_rows=None, attn_implementation=impl)
    base = [g.tokens for g in generate_conditions(model, texts, [[]], **kw)["baseline"]]
    others = [c for c in conditions if c]
    stats = VerifyStats()
    t_none, _ = timed(lambda: generate_conditions(model, texts, others, draft=None, **kw), device)
    t_verify, _ = timed(lambda: generate_conditions(model, texts, others, baseline=base, stats=stats, **kw), device)
    verified = stats.tokens_verified / max(1, stats.tokens_verified + stats.tokens_decoded)
    return {"none_s": t_none, "verify_s": t_verify, "verified_share": verified, "conditions": len(others)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a 2-layer configuration (CPU smoke run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=900)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="contexts per multiple-choice engine step")
    p.add_argument("--mc-tokens", type=int, default=600, help="tokens per MMLU context (5-shot is about 600)")
    p.add_argument("--mc-rows", type=int, default=128, help="rows per engine forward (bounds its logits' memory)")
    p.add_argument("--sdpa", action="store_true", help="also time the hook-free decoder with SDPA attention")
    p.add_argument("--sweep-conditions", type=int, default=4, help="conditions decoded together as row blocks")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = build(args.tiny, args.device, dtype, Path(tmp))
        cfg = model.cfg
        print(
            f"random {'tiny' if args.tiny else 'Llama-3.1-8B'} model: {cfg.n_layers} layers, d_model {cfg.d_model}, "
            f"{args.dtype} on {args.device}; {args.prompts} prompts x {args.prompt_tokens} tokens + "
            f"{args.new_tokens} new"
        )
        ids = random_ids(model, args.prompts, args.prompt_tokens)
        decoding = decode_runs(
            model,
            ids,
            args.new_tokens,
            sdpa=args.sdpa,
            device=args.device,
            block_conditions=spread_conditions(model, args.sweep_conditions),
        )
        hf_rate = decoding["HF generate (eager)"]["tokens_per_s"]
        for name, v in decoding.items():
            out[name] = v["tokens_per_s"]
            label = name if name != "batched conditions" else f"conditions batched ({v['rows']} rows)"
            peak = "" if v["peak_gib"] is None else f"  peak {v['peak_gib']:.1f} GiB"
            ratio = v["tokens_per_s"] / hf_rate
            print(f"{label:30s} {v['seconds']:8.2f} s  {v['tokens_per_s']:9.1f} tokens/s  {ratio:.2f}x of HF{peak}")
        check = verify_overhead(
            model,
            ids,
            args.new_tokens,
            spread_conditions(model, args.sweep_conditions),
            args.device,
            "sdpa" if args.sdpa else None,
        )
        out["verify_over_none"] = check["none_s"] / check["verify_s"]
        print(
            f'generation sweep of {check["conditions"]} conditions: verified first (draft="baseline") '
            f"{check['verify_s']:.2f} s, every token decoded (draft=None) {check['none_s']:.2f} s: "
            f"{out['verify_over_none']:.2f}x ({check['verified_share']:.0%} of tokens verified)"
        )
        mc = mc_step(model, args.batch, args.mc_tokens, args.mc_rows, args.device)
        out["layer_sweep_step_s"] = mc["seconds"]
        print(
            f"one layer-sweep step: {mc['conditions']} conditions x {args.batch} contexts of {args.mc_tokens} "
            f"tokens in {mc['seconds']:.2f} s"
        )
        for proj in projections(rates(decoding, args.new_tokens, mc), conditions=cfg.n_layers + 1):
            key = "gsm8k_projected_s" if proj["name"].startswith("GSM8K") else "mmlu_projected_s"
            out[key] = proj["seconds"]
            print(f"projected {proj['name']}: {fmt(proj['seconds'])}  ({proj['assumptions']})")
    return out


if __name__ == "__main__":
    main()
