"""One TransformerBridge per checkpoint for the whole session: interventions never edit weights."""

from pathlib import Path

import torch

import depthprobe as dp

_BRIDGES: dict[Path, torch.nn.Module] = {}


def bridge(path: Path) -> torch.nn.Module:
    """The session's bridge of ``path`` (loaded on first use)."""
    if path not in _BRIDGES:
        _BRIDGES[path] = dp.load_model(path)
    return _BRIDGES[path]
