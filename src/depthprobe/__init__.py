"""depthprobe: how much each layer and attention head of a decoder LLM contributes to a task,
and how that answer changes with the evaluation protocol."""

from depthprobe.interventions import (
    Intervention,
    ablate,
    patch_o_proj,
    skip_attn,
    skip_layer,
    skip_layers,
    skip_mlp,
    zero_head,
    zero_head_weights,
    zero_kv_group,
)
from depthprobe.models import ModelNotFoundError, list_models, load_model, model_dims

__version__ = "0.1.0"

__all__ = [
    "Intervention",
    "ModelNotFoundError",
    "ablate",
    "list_models",
    "load_model",
    "model_dims",
    "patch_o_proj",
    "skip_attn",
    "skip_layer",
    "skip_layers",
    "skip_mlp",
    "zero_head",
    "zero_head_weights",
    "zero_kv_group",
]
