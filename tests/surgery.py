"""Weight surgery on a separate Hugging Face copy: the independent reference every intervention is proven against."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel


@cache
def pristine(path: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The unedited Hugging Face model of ``path``, loaded once; never edit it (use hf_copy)."""
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=dtype)
    return model.eval().requires_grad_(False)


def hf_copy(path: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A fresh, independent Hugging Face model (eager attention, ``dtype``, eval mode) to edit freely."""
    return copy.deepcopy(pristine(str(path), dtype))


def layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    return model.model.layers


def d_head(model: PreTrainedModel) -> int:
    cfg = model.config
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def delete_layers(model: PreTrainedModel, drop: Iterable[int]) -> PreTrainedModel:
    """Really remove decoder layers, re-indexing what the KV cache and config rely on."""
    drop = set(drop)
    kept = [layer for i, layer in enumerate(layers(model)) if i not in drop]
    model.model.layers = torch.nn.ModuleList(kept)
    for i, layer in enumerate(kept):
        layer.self_attn.layer_idx = i
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in drop]
    model.config.num_hidden_layers = len(kept)
    return model


def zero_o_proj_heads(model: PreTrainedModel, layer: int, heads: Iterable[int]) -> PreTrainedModel:
    """Zero the o_proj columns owned by ``heads``."""
    w = layers(model)[layer].self_attn.o_proj.weight
    dh = d_head(model)
    for h in heads:
        w.data[:, h * dh : (h + 1) * dh] = 0.0
    return model


def zero_head_weights(model: PreTrainedModel, layer: int, head: int) -> PreTrainedModel:
    """The study's original pruning: q rows of the head, k/v rows of its KV head, o_proj columns."""
    attn = layers(model)[layer].self_attn
    cfg = model.config
    dh = d_head(model)
    group = head // (cfg.num_attention_heads // cfg.num_key_value_heads)
    attn.q_proj.weight.data[head * dh : (head + 1) * dh] = 0.0
    attn.k_proj.weight.data[group * dh : (group + 1) * dh] = 0.0
    attn.v_proj.weight.data[group * dh : (group + 1) * dh] = 0.0
    attn.o_proj.weight.data[:, head * dh : (head + 1) * dh] = 0.0
    return model


def set_o_proj(model: PreTrainedModel, layer: int, weight: torch.Tensor) -> PreTrainedModel:
    layers(model)[layer].self_attn.o_proj.weight.data.copy_(weight)
    return model


def o_proj(model: PreTrainedModel, layer: int) -> torch.Tensor:
    return layers(model)[layer].self_attn.o_proj.weight.detach().clone()
