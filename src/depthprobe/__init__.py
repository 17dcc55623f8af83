"""depthprobe: how much each layer and attention head of a decoder LLM contributes to a task,
and how that answer changes with the evaluation protocol."""

from depthprobe.attribution import Prescreen, attribute
from depthprobe.evaluation import EvalResult, evaluate
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
from depthprobe.results import load_results
from depthprobe.sweep import run_sweep
from depthprobe.tasks import get_task, list_tasks, register_task

__version__ = "0.1.0"

__all__ = [
    "EvalResult",
    "Intervention",
    "ModelNotFoundError",
    "Prescreen",
    "ablate",
    "attribute",
    "evaluate",
    "get_task",
    "list_tasks",
    "load_results",
    "register_task",
    "run_sweep",
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
