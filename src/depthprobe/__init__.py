"""depthprobe: how much each layer and attention head of a decoder LLM contributes to a task,
and how that answer changes with the evaluation protocol."""

from depthprobe.attribution import Prescreen, attribute
from depthprobe.campaign import run_campaign
from depthprobe.evaluation.result import EvalResult
from depthprobe.evaluator import evaluate
from depthprobe.executors.ray import RayExecutor
from depthprobe.interventions import (
    Intervention,
    ablate,
    mean_head,
    patch_o_proj,
    skip_attn,
    skip_layer,
    skip_layers,
    skip_mlp,
    zero_head,
    zero_head_weights,
    zero_kv_group,
)
from depthprobe.lm_eval_backend import lm_eval_model
from depthprobe.model_spec import ModelSpec
from depthprobe.models import ModelNotFoundError, list_models, load_model, model_dims
from depthprobe.results import load_results
from depthprobe.sweep import run_sweep
from depthprobe.tasks import get_task, list_tasks, register_task

__version__ = "0.1.0"


def _register_lm_eval_backend() -> None:
    """Make ``model="depthprobe"`` known to lm-eval when it is installed (a lazy import path: cheap)."""
    try:
        from lm_eval.api.registry import model_registry
    except ImportError:  # lm-eval is an optional dependency
        return
    if "depthprobe" not in model_registry:
        model_registry.register("depthprobe", target="depthprobe.lm_eval_backend:DepthprobeLM")


_register_lm_eval_backend()


def __getattr__(name: str):
    """``report`` is imported on first use: it needs plotly, which the computing core does not."""
    if name == "report":  # the package, callable as depthprobe.report(roots, out) (plotly is needed only here)
        import importlib

        return importlib.import_module("depthprobe.report")
    raise AttributeError(f"module 'depthprobe' has no attribute {name!r}")


__all__ = [
    "EvalResult",
    "Intervention",
    "ModelNotFoundError",
    "ModelSpec",
    "RayExecutor",
    "run_campaign",
    "report",
    "Prescreen",
    "ablate",
    "attribute",
    "evaluate",
    "get_task",
    "list_tasks",
    "lm_eval_model",
    "load_results",
    "register_task",
    "run_sweep",
    "list_models",
    "load_model",
    "mean_head",
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
