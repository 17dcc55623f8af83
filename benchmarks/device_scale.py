"""Parts 2 and 3 of ``benchmarks/device_check.py``: batch sizes that fit the GPU, a generation sweep's rate end to
end, and the study's sweeps projected from two measured rates.

``rates`` (``gpu_sweep.rates``): seconds per generated token of one row (the fastest depthprobe
decoder, prompt prefill included) and seconds per context token of one document under one
condition (the multiple-choice engine step). Every projection returns its assumptions as text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from depthprobe.models import ModelDims

GSM8K_PROBLEMS = 1319
#: Documents of each task's evaluated split (the campaign's ``limit`` caps them).
DOCUMENTS = {
    "hellaswag": 10042,
    "mathqa": 2985,
    "mmlu": 14042,
    "mmlu_continuation": 14042,
    "mmlu_generative": 14042,
    "openbookqa": 500,
    "openbookqa_open": 500,
    "kv_retrieval": 100,
    "gsm8k": 1319,
    "gsm8k_cot": 1319,
}
#: Tokens per multiple-choice document (context once, plus every choice), Llama-3 tokenizer, estimated.
MC_TOKENS = {
    "hellaswag": 150,
    "mathqa": 80,
    "mmlu": 100,
    "mmlu_5shot": 600,
    "mmlu_continuation": 100,
    "openbookqa": 35,
    "openbookqa_open": 50,
    "kv_retrieval": 120,
}
#: (layers, query heads, KV heads, parameters) of the campaign's models.
MODELS = {
    "llama-3.1-8b": (32, 32, 8, 8.03e9),
    "qwen3-8b": (36, 32, 8, 8.19e9),
    "llama-1-7b": (32, 32, 32, 6.74e9),
    "r1-distill-llama-8b": (32, 32, 8, 8.03e9),
}
LOAD_S = 60.0  # one worker loading one 8B model from local disk
EFFICIENCY = 0.9  # share of 8 workers kept busy (units are chunks of conditions; the last wave is partial)


def heads_sweep(rates: dict[str, float], conditions: int = 96, max_gen_toks: int = 256) -> list[dict[str, Any]]:
    gen = rates["gen_s_per_row_token"]
    return [
        {
            "name": f"reasoning-heads sweep of one layer ({conditions} conditions)",
            "seconds": (conditions + 1) * GSM8K_PROBLEMS * max_gen_toks * gen,
            "assumptions": f"{conditions} conditions + the baseline x {GSM8K_PROBLEMS} GSM8K 8-shot CoT problems x "
            f"{max_gen_toks} new tokens each (upper bound) at {1 / gen:.0f} tokens/s, as the layer "
            f"sweep (experiments/reasoning_heads.py's grid on 32 heads over 8 KV heads is 72: "
            f"32 heads + 8 groups + 32 weight-zeroed heads)",
        }
    ]


def _sweep_seconds(sweep: Any, dims: ModelDims, params: float, rates: dict[str, float]) -> tuple[float, int, int]:
    from depthprobe.sweep import parse_grid

    settings = dict(sweep.settings)
    conditions = len(parse_grid(dims, sweep.grid)) + 1
    docs = DOCUMENTS[sweep.task]
    if settings.get("limit") is not None:
        docs = min(docs, int(settings["limit"]))
    scale = params / MODELS["llama-3.1-8b"][3]
    if sweep.task in ("gsm8k", "gsm8k_cot", "mmlu_generative"):
        tokens = int(settings.get("max_gen_toks") or 256)
        return conditions * docs * tokens * rates["gen_s_per_row_token"] * scale, conditions, docs
    key = "mmlu_5shot" if sweep.task == "mmlu" and (sweep.num_fewshot or 0) >= 5 else sweep.task
    return conditions * docs * MC_TOKENS[key] * rates["mc_s_per_doc_token"] * scale, conditions, docs


def campaign(rates: dict[str, float], path: Path, gpus: int = 8) -> list[dict[str, Any]]:
    """The whole campaign on one GPU, and on ``gpus`` GPUs through Ray (one worker per GPU)."""
    from depthprobe.campaign import plan_campaign

    sweeps = plan_campaign(path)
    total, by_model, conditions = 0.0, {}, 0
    for s in sweeps:
        layers, heads, kv, params = MODELS[s.model_name]
        seconds, n, _ = _sweep_seconds(s, ModelDims(layers, heads, kv, 128, 4096), params, rates)
        total += seconds
        conditions += n
        by_model[s.model_name] = by_model.get(s.model_name, 0.0) + seconds
    common = (
        f"{len(sweeps)} sweeps, {conditions} conditions of {path.name} (limit 500 documents each; splits: "
        f"{', '.join(f'{k} {v}' for k, v in DOCUMENTS.items())}); generation at {1 / rates['gen_s_per_row_token']:.0f} "
        f"tokens/s with every document running to max_gen_toks (upper bound); multiple choice at the engine step's "
        f"per-token rate with tokens per document {MC_TOKENS} (short contexts are overhead-bound: a lower bound); "
        f"other models scaled by parameters"
    )
    multi = total / (gpus * EFFICIENCY) + len(by_model) * LOAD_S
    return [
        {
            "name": f"{path.name} on one GPU",
            "seconds": total,
            "sweeps": len(sweeps),
            "conditions": conditions,
            "by_model_h": {k: round(v / 3600, 2) for k, v in by_model.items()},
            "assumptions": common,
        },
        {
            "name": f"{path.name} on {gpus} GPUs through Ray",
            "seconds": multi,
            "gpus": gpus,
            "assumptions": f"{common}; {gpus} RayExecutor workers, one GPU each, {EFFICIENCY:.0%} busy, each loading "
            f"each of the {len(by_model)} models once ({LOAD_S:.0f} s)",
        },
    ]


def plan_sizes(tiny: bool, gib: float) -> dict[str, Any]:
    """Batch sizes for the 32-layer Llama-3.1-8B shape in bfloat16 that fit ``gib`` GiB with 15% to spare."""
    if tiny:
        return {
            "prompts": 2,
            "prompt_tokens": 24,
            "new_tokens": 4,
            "conditions": 4,
            "mc_docs": 2,
            "mc_tokens": 16,
            "mc_rows": 8,
            "n_layers": 4,
        }
    weights, kv_row_token, heads, vocab, mlp = 8.03e9 * 2, 32 * 2 * 8 * 128 * 2, 32, 128256, 14336
    prompts, t, n, cap = 32, 900, 128, 0.85 * gib * 2**30
    eager_prefill = prompts * heads * t * t * 6  # one layer's scores (bf16) and softmax (float32)

    def decode(rows: int) -> float:  # the KV cache, plus half of it again while BlockDecoder joins its prefill
        return weights + rows * (t + n) * kv_row_token + rows * t * kv_row_token / 2 + eager_prefill + 2 * 2**30

    def engine(rows: int, ctx: int = 600) -> float:  # a tail forward: logits at every position, KV cache, attention
        return weights + rows * ctx * (vocab * 2 + kv_row_token + heads * ctx * 6 + mlp * 2 * 3) + 2 * 2**30

    k = next((k for k in (8, 6, 4, 2) if decode(k * prompts) <= cap), 1)
    rows = next((r for r in (256, 128, 64, 32) if engine(r) <= cap), 16)
    return {
        "prompts": prompts,
        "prompt_tokens": t,
        "new_tokens": n,
        "conditions": k,
        "mc_docs": 16,
        "mc_tokens": 600,
        "mc_rows": rows,
        "n_layers": 32,
        "estimated_decode_gib": round(decode(k * prompts) / 2**30, 1),
        "estimated_engine_gib": round(engine(rows) / 2**30, 1),
        "fits_gib": gib,
    }


def sweep_rate(model: Any, tmp: Path, sizes: dict[str, Any], conditions: list, draft: bool) -> dict[str, Any]:
    """A generation layer sweep end to end (``run_sweep``: batched conditions, run directory), tokens per second."""
    import inspect

    from gpu_sweep import measured

    import depthprobe as dp

    out = tmp / ("sweep_draft" if draft else "sweep_plain")
    kw = dict(
        limit=sizes["prompts"],
        batch_size=sizes["prompts"],
        max_gen_toks=sizes["new_tokens"],
        progress=False,
        max_rows=sizes["prompts"] * len(conditions),
        # draft="baseline" is run_sweep's default where it exists: the plain sweep must ask for draft=None
        **({"draft": "baseline" if draft else None} if "draft" in inspect.signature(dp.run_sweep).parameters else {}),
    )
    seconds, peak, _ = measured(
        lambda: dp.run_sweep(model, "organism_reasoning", conditions, out_dir=out, **kw),
        str(next(model.parameters()).device),
    )
    samples = dp.load_results(out, samples=True)
    tokens = int(samples["n_generated_tokens"].sum())
    return {
        "passed": True,
        "tokens_per_s": tokens / seconds,
        "generated_tokens": tokens,
        "peak_gib": peak,
        "conditions": len(conditions),
        "documents": sizes["prompts"],
        "mean_prompt_chars": float(samples["prompt"].str.len().mean()),
    }


def _check() -> None:  # the arithmetic at a glance: python benchmarks/device_projections.py
    rates = {"gen_s_per_row_token": 1 / 2000, "mc_s_per_doc_token": 1e-6}
    for p in heads_sweep(rates) + campaign(rates, Path(__file__).resolve().parents[1] / "campaigns" / "study.toml"):
        print(f"{p['name']}: {p['seconds'] / 3600:.1f} h")
    assert math.isfinite(p["seconds"])


if __name__ == "__main__":
    _check()
