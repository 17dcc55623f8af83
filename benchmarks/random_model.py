"""What the CPU benchmarks on a random Llama share: its shape flags, the model directory, and best-of-n timing."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from depthprobe.tiny import make_tiny_model


def add_shape_flags(p: argparse.ArgumentParser) -> None:
    """--layers, --d-model, --heads and --kv-heads of the random model (default: 16 layers, 256 wide, GQA 8/2)."""
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)


@contextmanager
def random_llama(args: argparse.Namespace) -> Iterator[Path]:
    """A temporary Hugging Face directory of a random Llama of the flags' shape (seed 0)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield make_tiny_model(
            Path(tmp) / "m",
            arch="llama",
            n_layers=args.layers,
            n_heads=args.heads,
            n_kv_heads=args.kv_heads,
            d_model=args.d_model,
            seed=0,
        )


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The fastest of ``repeats`` wall times of ``fn()``, and its last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out
