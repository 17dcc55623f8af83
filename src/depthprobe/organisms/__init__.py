"""Model organisms: small Llama-architecture checkpoints trained on synthetic task families.

``organism-base`` (all families) and ``organism-distilled`` (continued on chain-of-thought
reasoning) ship inside the package; ``python -m depthprobe.organisms.train --out
src/depthprobe/organisms/checkpoints`` reproduces them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CHECKPOINTS_DIR", "ORGANISMS", "checkpoint_path"]

ORGANISMS = ("organism-base", "organism-distilled")
CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"


def checkpoint_path(name: str) -> Path:
    """The Hugging Face directory (config, safetensors, tokenizer) of the organism ``name``."""
    if name not in ORGANISMS:
        raise ValueError(f"unknown organism {name!r}; valid: {', '.join(ORGANISMS)}")
    path = CHECKPOINTS_DIR / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"organism checkpoint {path} is missing; build it with "
            "`python -m depthprobe.organisms.train --out src/depthprobe/organisms/checkpoints`"
        )
    return path
