"""Cost of the live-weights fingerprint (``depthprobe.hashing.parameters_fingerprint``) on a model's device.

Builds random tensors with the parameter shapes of a Llama-3.1-8B config (bf16 on GPU, float32
on CPU; ``--layers`` decoder layers, default all 32) on the device, then prints, best of
``--repeats``: the fingerprint, one read of every parameter (``x.sum()``, the memory-bound floor)
and a float32 seeded random projection (a random vector generated on the device, dotted with the
tensor: the float design that depends on the kernel set), and each one's ratio to the read.
Needs only torch and depthprobe.hashing (no weights, no TransformerLens model).

Usage: python benchmarks/parameters_fingerprint.py [--device cuda] [--layers 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from depthprobe.hashing import parameters_fingerprint

# Llama-3.1-8B: hidden 4096, 32 layers, 32 heads, 8 KV heads (d_head 128), intermediate 14336, vocab 128256.
HIDDEN, KV, MLP, VOCAB = 4096, 1024, 14336, 128256


def shapes(n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    out = [("embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(n_layers):
        out += [
            (f"layers.{i}.{name}", shape)
            for name, shape in [
                ("q_proj.weight", (HIDDEN, HIDDEN)),
                ("k_proj.weight", (KV, HIDDEN)),
                ("v_proj.weight", (KV, HIDDEN)),
                ("o_proj.weight", (HIDDEN, HIDDEN)),
                ("gate_proj.weight", (MLP, HIDDEN)),
                ("up_proj.weight", (MLP, HIDDEN)),
                ("down_proj.weight", (HIDDEN, MLP)),
                ("input_layernorm.weight", (HIDDEN,)),
                ("post_attention_layernorm.weight", (HIDDEN,)),
            ]
        ]
    return out + [("norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def best(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device).manual_seed(0)
    params = [
        (name, torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype))
        for name, shape in shapes(args.layers)
    ]
    n = sum(p.numel() for _, p in params)

    def read() -> None:
        for _, p in params:
            p.sum()

    def float_projection() -> None:
        g = torch.Generator(device).manual_seed(1234)
        for _, p in params:
            r = torch.randn(p.numel(), generator=g, device=device)
            torch.dot(r, p.reshape(-1).float()).item()

    floor = best(read, device, args.repeats)
    print(
        f"{n / 1e9:.2f}B {str(dtype).replace('torch.', '')} parameters in {len(params)} tensors on "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} ({args.layers} layers)"
    )
    print(f"  read every parameter once      {floor * 1e3:9.1f} ms   1.00x")
    for label, fn in [
        ("parameters_fingerprint (exact)", lambda: parameters_fingerprint(params)),
        ("float32 random projection", float_projection),
    ]:
        t = best(fn, device, args.repeats)
        print(f"  {label:30s} {t * 1e3:9.1f} ms   {t / floor:.2f}x")


if __name__ == "__main__":
    main()
