"""Train the model organisms: ``python -m depthprobe.organisms.train --out DIR``.

``organism-base`` is trained from scratch on a mixture of every task family; ``organism-distilled``
continues from it on mostly chain-of-thought reasoning (with some replay of the other families),
the miniature of base vs reasoning-distilled model in the study. Training is deterministic for a
given seed and thread count: seeded initialisation, data drawn from seeded generators, a fixed
batch order, deterministic CPU kernels.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from depthprobe.organisms import data
from depthprobe.organisms.evaluate import evaluate_all, multiple_choice_accuracy, reasoning_accuracy
from depthprobe.organisms.tokenizer import build_tokenizer

__all__ = [
    "ARCH",
    "BASE_MIX",
    "CIRCUIT_WEIGHT",
    "DISTILL_MIX",
    "PREVIOUS_BUT_ONE_HEAD",
    "RETRIEVAL_HEAD",
    "attention_loss",
    "build_model",
    "evaluate_all",
    "head_output",
    "main",
    "readout_loss",
    "train",
]

#: Llama architecture: RMSNorm, rotary, gated MLP, GQA (8 query heads over 2 KV heads), no biases.
ARCH: dict[str, Any] = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=True,
    initializer_range=0.02,
)

#: Sampling weights of the training families (``data.TRAINING_FAMILIES``). Distillation adds
#: 4-step chains of thought, which base training never shows.
BASE_MIX = {"statement": 0.2, "closedbook": 0.12, "openbook": 0.08, "retrieval": 0.4, "reasoning": 0.2}
DISTILL_MIX = {
    "statement": 0.05,
    "closedbook": 0.04,
    "openbook": 0.03,
    "retrieval": 0.08,
    "reasoning": 0.4,
    "long_reasoning": 0.4,
}

#: The planted retrieval circuit, (layer, head). On retrieval documents auxiliary losses teach the
#: first head to attend, from each answer's position and from that value's position in the
#: dictionary, to the token two back (the queried key; the value's own key); and the second head
#: to attend from the answer's position to the value and to write that value: its direct logit
#: attribution must predict it (``readout_loss``). Next-token loss alone left the circuit unformed
#: within the training budget (8-pair accuracy at chance after 6000 steps); with the attention
#: planted but not the readout, whether and when the copy formed varied from seed to seed.
PREVIOUS_BUT_ONE_HEAD = (0, 0)
RETRIEVAL_HEAD = (1, 2)
CIRCUIT_WEIGHT = 0.1


def build_model(tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **ARCH,
    )
    config._attn_implementation = "eager"
    return LlamaForCausalLM(config)


def _encode(tokenizer: PreTrainedTokenizerBase, segments: list[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    """Token ids (BOS + segments + EOS) and a loss flag per token (for predicting that token)."""
    ids, flags = [tokenizer.bos_token_id], [False]
    for text, has_loss in segments:
        seg = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
        ids += seg
        flags += [has_loss] * len(seg)
    ids.append(tokenizer.eos_token_id)
    flags.append(flags[-1])
    return ids, flags


def _retrieval_targets(ids: list[int], flags: list[bool], eos: int) -> list[tuple[int, int]]:
    """(position predicting an answer value, that value's position in the dictionary) per answer.

    Values are unique within a retrieval document and the dictionary comes first, so a value's
    dictionary position is its first occurrence.
    """
    out = []
    for p in range(1, len(ids)):
        if flags[p] and ids[p] != eos:
            value = ids.index(ids[p])
            if value < p - 1:
                out.append((p - 1, value))
    return out


#: (input ids, attention mask, labels: each ``batch pos``; retrieval targets: ``n 3``). Shapes vary
#: between batches, so the list of them is not annotated with named shapes.
Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def _batches(
    tokenizer: PreTrainedTokenizerBase, mix: dict[str, float], rng: random.Random, chunk: int, tokens_per_batch: int
) -> list[Batch]:
    """Draw ``chunk`` documents, bucket them by length into batches of about ``tokens_per_batch``.

    A batch is (input ids, attention mask, labels, retrieval targets as rows of (row, from, to)).
    """
    fams, weights = list(mix), list(mix.values())
    examples = []
    for _ in range(chunk):
        family = rng.choices(fams, weights)[0]
        ids, flags = _encode(tokenizer, data.training_example(family, rng))
        targets = _retrieval_targets(ids, flags, tokenizer.eos_token_id) if family == "retrieval" else []
        examples.append((ids, flags, targets))
    examples.sort(key=lambda e: len(e[0]))
    batches, cur = [], []
    for ex in examples:
        if cur and (len(cur) + 1) * len(ex[0]) > tokens_per_batch:
            batches.append(cur)
            cur = []
        cur.append(ex)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    out = []
    for b in batches:
        width = max(len(ids) for ids, _, _ in b)
        ids = torch.full((len(b), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(b), width), dtype=torch.long)
        labels = torch.full((len(b), width), -100, dtype=torch.long)
        targets = []
        for i, (toks, flags, tgt) in enumerate(b):
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = 1
            labels[i, : len(toks)] = torch.tensor([t if f else -100 for t, f in zip(toks, flags)])
            targets += [(i, a, v) for a, v in tgt]
        out.append((ids, mask, labels, torch.tensor(targets, dtype=torch.long).reshape(-1, 3)))
    return out


def attention_loss(
    attentions: Sequence[Float[Tensor, "batch head pos pos"]], targets: Int[Tensor, "n 3"]
) -> Float[Tensor, ""]:
    """Mean negative log attention on the planted circuit's targets (see ``RETRIEVAL_HEAD``); 0 without targets."""
    if not len(targets):
        return attentions[0].new_zeros(())
    rows, src, dst = targets.unbind(-1)
    layer, head = PREVIOUS_BUT_ONE_HEAD
    rows2, pos = torch.cat([rows, rows]), torch.cat([src, dst])
    loss = -(attentions[layer][rows2, head, pos, pos - 2] + 1e-6).log().mean()
    layer, head = RETRIEVAL_HEAD
    return loss - (attentions[layer][rows, head, src, dst] + 1e-6).log().mean()


def head_output(
    model: LlamaForCausalLM, layer: int, head: int, o_proj_input: Float[Tensor, "*n head_x_dim"]
) -> Float[Tensor, "*n d_model"]:
    """One head's contribution to the residual stream: its slice of ``o_proj``'s input times its columns."""
    d = model.config.head_dim
    w = model.model.layers[layer].self_attn.o_proj.weight[:, head * d : (head + 1) * d]
    return o_proj_input[..., head * d : (head + 1) * d] @ w.T


def readout_loss(
    model: LlamaForCausalLM,
    o_proj_input: Float[Tensor, "batch pos head_x_dim"],
    input_ids: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "n 3"],
) -> Float[Tensor, ""]:
    """Cross-entropy of the retrieval head's direct logit attribution against the value it should copy.

    At each answer position the head's output (RMS-normalised, then unembedded) must predict the
    dictionary value at the target position; 0 without targets.
    """
    if not len(targets):
        return o_proj_input.new_zeros(())
    rows, src, dst = targets.unbind(-1)
    out = head_output(model, *RETRIEVAL_HEAD, o_proj_input[rows, src])
    logits = model.lm_head(out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-6))
    return torch.nn.functional.cross_entropy(logits, input_ids[rows, dst])


def train(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    *,
    mix: dict[str, float],
    steps: int,
    lr: float,
    seed: int,
    warmup: int = 100,
    tokens_per_batch: int = 1024,
    log_every: int = 100,
    monitor_every: int = 0,
    chunk: int = 2048,
    circuit_weight: float = CIRCUIT_WEIGHT,
    log: Any = print,
) -> list[dict[str, float]]:
    """AdamW with linear warm-up and cosine decay to 10%; returns the logged losses.

    The loss is next-token cross-entropy on answer tokens plus ``circuit_weight`` times the sum of
    ``attention_loss`` and ``readout_loss`` (0 turns the planted circuit off).
    """
    rng = random.Random(f"train-{seed}")
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    captured: dict[str, Tensor] = {}
    hook = model.model.layers[RETRIEVAL_HEAD[0]].self_attn.o_proj.register_forward_pre_hook(
        lambda module, args: captured.__setitem__("o_proj_input", args[0])
    )
    model.train()
    queue: list[Batch] = []
    history, running, running_circuit, n_run, t0 = [], 0.0, 0.0, 0, time.time()
    for step in range(steps):
        if not queue:
            queue = _batches(tokenizer, mix, rng, chunk=chunk, tokens_per_batch=tokens_per_batch)
        ids, mask, labels, targets = queue.pop()
        out = model(input_ids=ids, attention_mask=mask, labels=labels, output_attentions=circuit_weight > 0)
        loss = out.loss
        if circuit_weight > 0:
            aux = attention_loss(out.attentions, targets) + readout_loss(model, captured["o_proj_input"], ids, targets)
            loss = loss + circuit_weight * aux
            running_circuit += aux.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running, n_run = running + loss.item(), n_run + 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append(
                {"step": step + 1, "loss": round(running / n_run, 5), "circuit_loss": round(running_circuit / n_run, 5)}
            )
            log(
                f"step {step + 1}/{steps} loss {running / n_run:.4f} circuit {running_circuit / n_run:.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f}s"
            )
            running, running_circuit, n_run = 0.0, 0.0, 0
        if monitor_every and (step + 1) % monitor_every == 0 and step + 1 < steps:
            model.eval()
            log(
                f"monitor step {step + 1}: knowledge "
                f"{multiple_choice_accuracy(model, tokenizer, data.knowledge_docs()):.3f} retrieval_8 "
                f"{multiple_choice_accuracy(model, tokenizer, data.retrieval_docs(100, 8)):.3f} reasoning "
                f"{reasoning_accuracy(model, tokenizer, data.reasoning_docs(50)):.3f}"
            )
            model.train()
    hook.remove()
    model.eval()
    return history


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, out: Path, info: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", type=Path, required=True, help="directory that receives organism-base/ and organism-distilled/"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-steps", type=int, default=7000)
    p.add_argument("--distill-steps", type=int, default=1200)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--distill-lr", type=float, default=1e-3)
    p.add_argument("--tokens-per-batch", type=int, default=1024)
    p.add_argument("--monitor-every", type=int, default=1000, help="quick accuracy check every N steps (0: never)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (results are deterministic per thread count)"
    )
    p.add_argument("--eval-n", type=int, default=200)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    tok_dir = args.out / "organism-base"
    tokenizer = build_tokenizer(data.corpus_for_vocabulary(), tok_dir)
    common = {
        "seed": args.seed,
        "threads": args.threads,
        "torch": torch.__version__,
        "arch": ARCH,
        "tokens_per_batch": args.tokens_per_batch,
        "circuit_supervision": {
            "previous_but_one_head": list(PREVIOUS_BUT_ONE_HEAD),
            "retrieval_head": list(RETRIEVAL_HEAD),
            "readout": True,
            "weight": CIRCUIT_WEIGHT,
        },
    }

    model = build_model(tokenizer, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"organism-base: {n_params} parameters, vocabulary {len(tokenizer)}", flush=True)
    hist = train(
        model,
        tokenizer,
        mix=BASE_MIX,
        steps=args.base_steps,
        lr=args.lr,
        seed=args.seed,
        tokens_per_batch=args.tokens_per_batch,
        monitor_every=args.monitor_every,
        log=lambda s: print("[base]", s, flush=True),
    )
    acc = evaluate_all(model, tokenizer, args.eval_n)
    print("[base] accuracies", acc, flush=True)
    _save(
        model,
        tokenizer,
        args.out / "organism-base",
        {
            **common,
            "model": "organism-base",
            "parameters": n_params,
            "steps": args.base_steps,
            "lr": args.lr,
            "mix": BASE_MIX,
            "losses": hist,
            "accuracies": acc,
            "seconds": round(time.time() - t_start, 1),
        },
    )

    t_distill = time.time()
    hist = train(
        model,
        tokenizer,
        mix=DISTILL_MIX,
        steps=args.distill_steps,
        lr=args.distill_lr,
        seed=args.seed + 1,
        tokens_per_batch=args.tokens_per_batch,
        monitor_every=args.monitor_every,
        log=lambda s: print("[distilled]", s, flush=True),
    )
    acc = evaluate_all(model, tokenizer, args.eval_n)
    print("[distilled] accuracies", acc, flush=True)
    _save(
        model,
        tokenizer,
        args.out / "organism-distilled",
        {
            **common,
            "model": "organism-distilled",
            "parameters": n_params,
            "init": "organism-base",
            "steps": args.distill_steps,
            "lr": args.distill_lr,
            "mix": DISTILL_MIX,
            "losses": hist,
            "accuracies": acc,
            "seconds": round(time.time() - t_distill, 1),
        },
    )
    print(f"total {time.time() - t_start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
