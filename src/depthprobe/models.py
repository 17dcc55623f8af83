"""Loading decoder LLMs as TransformerLens hooked models (``TransformerBridge``).

The bridge wraps the real Hugging Face model and puts named hook points on it. Weight
processing is never applied, so every weight stays 1:1 with the checkpoint and the
bridge's logits equal the Hugging Face model's exactly. ``load_model`` records the fingerprint
of the parameters it loaded (:func:`loaded_fingerprint`), so that weights edited in memory
afterwards are told apart from the checkpoint's (:mod:`depthprobe.identity`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformer_lens.model_bridge import TransformerBridge

from depthprobe.adapter import install_kv_cache_shim
from depthprobe.hashing import parameters_fingerprint
from depthprobe.organisms import CHECKPOINTS_DIR, ORGANISMS

__all__ = [
    "MODEL_ALIASES",
    "ModelDescription",
    "ModelDims",
    "ModelNotFoundError",
    "as_dtype",
    "default_device",
    "list_models",
    "load_model",
    "loaded_fingerprint",
    "model_dims",
    "resolve_model",
]

#: Short names for the study's models, mapped to their Hugging Face hub ids.
MODEL_ALIASES: dict[str, str] = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "llama-1-7b": "huggyllama/llama-7b",
    "r1-distill-llama-8b": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
}


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither a local directory nor in the Hugging Face cache (when offline)."""


@dataclass(frozen=True)
class ModelDims:
    """The sizes interventions are validated against."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


def model_dims(model: TransformerBridge) -> ModelDims:
    """Layer and head counts of a loaded model, read from its Hugging Face config."""
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    return ModelDims(
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_head=int(cfg.d_head),
        d_model=int(cfg.d_model),
    )


def list_models() -> dict[str, str]:
    """Every short name ``load_model`` accepts, mapped to what it loads (hub id or directory)."""
    names = dict(MODEL_ALIASES)
    for name in ORGANISMS:
        names[name] = str(CHECKPOINTS_DIR / name)
    return names


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"} or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in {"1", "true", "yes"}


def resolve_model(name_or_path: str | os.PathLike[str]) -> str:
    """Turn an alias, a local directory or a hub id into what ``boot_transformers`` loads.

    Raises ``ModelNotFoundError`` with one readable line when the model cannot be found
    locally and the hub cannot be reached (``HF_HUB_OFFLINE=1``) or does not have it.
    """
    name = str(name_or_path)
    known = list_models()
    if name in known:
        name = known[name]
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a directory but holds no config.json; point at a Hugging Face model directory"
            )
        return str(path)
    if path.is_file():
        raise ModelNotFoundError(
            f"{path} is a file; pass the model directory that holds config.json and the weights "
            f"(perhaps {str(path.parent)!r})"
        )
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"model directory {name!r} does not exist")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return name
    if _offline():
        raise ModelNotFoundError(
            f"model {name!r} is not in the local Hugging Face cache and the hub is offline; "
            f"pass a local directory with config.json and weights (load_model('/path/to/model')), "
            f"or one of: {', '.join(sorted(known))}"
        )
    return name


def default_device() -> str:
    """Where models load by default: the GPU when this process sees one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def as_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    """``dtype`` (a torch dtype or a name such as ``"bf16"``) as a torch dtype; None: bf16 on GPU, fp32 on CPU."""
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    valid = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in valid:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(valid)}")
    return valid[dtype]


@runtime_checkable
class ModelDescription(Protocol):
    """A model described, not loaded (a :class:`~depthprobe.model_spec.ModelSpec`): what ``load_model`` reads."""

    name_or_path: str
    dtype: str | None
    device: str | None
    load_options: tuple[tuple[str, Any], ...]


#: The attribute under which ``load_model`` keeps the fingerprint of the parameters it loaded.
_LOADED_ATTR = "_depthprobe_loaded_fingerprint"


def loaded_fingerprint(model: Any) -> str | None:
    """The fingerprint of ``model``'s parameters when ``load_model`` returned it (None: not from ``load_model``)."""
    return getattr(model, _LOADED_ATTR, None)


def load_model(
    name_or_path: str | os.PathLike[str] | ModelDescription,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    **kw: Any,
) -> TransformerBridge:
    """Load a decoder LLM as a TransformerLens ``TransformerBridge``, ready for hooked inference.

    ``name_or_path`` is a short alias (``list_models()``), a local Hugging Face directory
    or a hub id. Defaults: bfloat16 on GPU, float32 on CPU. The model is in eval mode with
    gradients off and no weight processing, so hooks see the checkpoint's own activations.
    Extra keyword arguments go to ``TransformerBridge.boot_transformers``. A
    :class:`~depthprobe.model_spec.ModelSpec` is loaded as it describes (keywords given here win).
    The fingerprint of the loaded parameters is recorded (:func:`loaded_fingerprint`).
    """
    if isinstance(name_or_path, ModelDescription):
        spec = name_or_path
        kw = {**dict(spec.load_options), **kw}
        dtype = spec.dtype if dtype is None else dtype
        device = spec.device if device is None else device
        name_or_path = spec.name_or_path
    install_kv_cache_shim()
    source = resolve_model(name_or_path)
    device = device or default_device()
    torch_dtype = as_dtype(dtype, device)
    try:
        model = TransformerBridge.boot_transformers(source, dtype=torch_dtype, device=device, **kw)
    except OSError as err:  # hub lookups that fail deep inside transformers
        raise ModelNotFoundError(
            f"could not load model {str(name_or_path)!r}: {str(err).splitlines()[0]}; "
            f"pass a local directory with config.json and weights"
        ) from None
    model.eval()
    model.requires_grad_(False)
    setattr(model, _LOADED_ATTR, parameters_fingerprint(model.named_parameters()))
    return model


# The bridge passes the cache under its old name; transformers >= 5.24 warns on every forward.
warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)
