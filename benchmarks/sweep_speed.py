"""Sweep engine vs naive per-condition forwards on a 16-layer random model (CPU, float32).

Multiple-choice log-likelihood style inputs (context + each choice, right-padded with an
attention mask). Times a full layer-skip sweep and a per-head sweep of the last layer both
ways, checks the summed continuation log-probabilities agree (<= 1e-5), and prints the
times, the speed-up and its share of the compute bound:

- layer sweep: naive (L+1)*L layer passes, engine L + L(L-1)/2 (each skip runs only the
  layers after it)  -> 2x for L = 16;  target >= 1.6x
- head sweep of the last layer: naive (H+1)*L, engine L + H -> 6x for L = 16, H = 8;
  target >= 4x

Usage: python benchmarks/sweep_speed.py [--layers 16] [--d-model 256] [--heads 8] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from random_model import add_shape_flags, best_of, random_llama

import depthprobe as dp
from depthprobe.sweep import condition_id, condition_logits, head_grid, layer_grid

CONTEXTS = [
    "Question: What is the capital of France?\nAnswer:",
    "Once upon a time, there was a little girl named Lily. She loved to play",
    "Memorize the following dictionary: apple:12 river:7 window:99 The value of the key 'river' is",
    "Q: There are 15 trees in the grove. After they are done, there will be 21 trees. How many trees did they plant?\nA:",
]
CHOICES = [" Paris", " outside in the park", " 7", " The answer is 6."]


def mc_batch(tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (context, choice) pair as one right-padded row; ``cont`` marks the scored target positions."""
    rows, conts = [], []
    for ctx in CONTEXTS:
        n_ctx = len(tokenizer(ctx)["input_ids"])
        for choice in CHOICES:
            ids = tokenizer(ctx + choice)["input_ids"]
            rows.append(ids)
            conts.append((n_ctx, len(ids)))
    width = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    cont = torch.zeros(len(rows), width - 1, dtype=torch.bool)
    for i, (r, (a, b)) in enumerate(zip(rows, conts)):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        cont[i, a - 1 : b - 1] = True  # logits at t score token t+1
    return input_ids, mask, cont


def scores(logits: torch.Tensor, input_ids: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(2, input_ids[:, 1:, None])[..., 0]
    return (lp * cont).sum(-1)


def naive(model, input_ids, mask, cont, conditions) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        for cond in conditions:
            with dp.ablate(model, *cond):
                out[condition_id(cond)] = scores(model(input_ids, attention_mask=mask), input_ids, cont)
    return out


def engine(model, input_ids, mask, cont, conditions) -> dict[str, torch.Tensor]:
    logits = condition_logits(model, input_ids, mask, conditions)
    return {cid: scores(lg, input_ids, cont) for cid, lg in logits.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_flags(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with random_llama(args) as path:
        model = dp.load_model(path, dtype=torch.float32, device="cpu")
    dims = dp.model_dims(model)
    input_ids, mask, cont = mc_batch(model.tokenizer)
    L, H = dims.n_layers, dims.n_heads
    print(
        f"model: {L} layers, d_model {dims.d_model}, {H} heads ({dims.n_kv_heads} KV), "
        f"batch {tuple(input_ids.shape)} (contexts x choices), {torch.get_num_threads()} thread(s)"
    )
    sweeps = {
        "layer-skip sweep": ([[]] + layer_grid(model), (L + 1) * L / (L + L * (L - 1) / 2), 1.6),
        f"head sweep, layer {L - 1}": ([[]] + head_grid(model, L - 1), (H + 1) * L / (L + H), 4.0),
    }
    engine(model, input_ids, mask, cont, sweeps["layer-skip sweep"][0][:2])  # warm-up
    ok = True
    for name, (conditions, bound, target) in sweeps.items():
        t_naive = t_engine = float("inf")
        for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
            tn, ref = best_of(lambda: naive(model, input_ids, mask, cont, conditions), 1)
            te, got = best_of(lambda: engine(model, input_ids, mask, cont, conditions), 1)
            t_naive, t_engine = min(t_naive, tn), min(t_engine, te)
        diff = max((ref[k] - got[k]).abs().max().item() for k in ref)
        ratio = t_naive / t_engine
        ok &= diff <= 1e-5
        print(
            f"{name}: {len(conditions)} conditions | naive {t_naive:.3f} s | engine {t_engine:.3f} s | "
            f"speed-up {ratio:.2f}x | bound {bound:.2f}x | share of bound {ratio / bound:.0%} | "
            f"target {target:.1f}x {'met' if ratio >= target else 'MISSED'} | "
            f"max |score diff| {diff:.2e} {'ok' if diff <= 1e-5 else 'MISMATCH'}"
        )
    if not ok:
        raise SystemExit("engine results differ from the naive computation")


if __name__ == "__main__":
    main()
