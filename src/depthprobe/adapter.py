"""The model adapter: the only code that reaches into Hugging Face or TransformerBridge internals.

Everything else in depthprobe talks to a model through TransformerLens's public surface
(``model(tokens, ...)``, ``model.hooks(fwd_hooks=...)``, ``model.cfg``, ``model.tokenizer``)
and, for what that surface lacks, through the functions here: a tail-only forward, the o_proj
weight of a layer, the context length, EOS and pad ids, the KV-cache keyword, the transformers
5.24 KV-cache shim and what the backend knows of the model's identity (name, hub revision, dtype,
device, attention), which :mod:`depthprobe.identity` completes for run manifests.

They are written against :class:`HookedModel`, a small structural interface in the style of
TransformerLens's ``model_protocol.py``; :func:`adapter_for` picks the :class:`ModelAdapter`
that implements them for a given model (today :class:`HFAdapter`, for a ``TransformerBridge``
over a Hugging Face decoder or a bare Hugging Face model). A second backend is one more
adapter class registered with :func:`register_adapter`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "HFAdapter",
    "HookedModel",
    "ModelAdapter",
    "adapter_for",
    "cache_kwargs",
    "eos_token_ids",
    "install_kv_cache_shim",
    "max_context_length",
    "model_type",
    "o_proj_weight",
    "pad_token_id",
    "register_adapter",
    "tail_only",
]

#: lm-eval's fallback context length when neither config nor tokenizer names one.
DEFAULT_MAX_LENGTH = 2048
#: ``tokenizer.model_max_length`` when the tokenizer sets none (transformers' sentinel, int(1e30)).
TOKENIZER_INFINITY = 1000000000000000019884624838656


@runtime_checkable
class HookedModel(Protocol):
    """What depthprobe needs of a hooked model (a ``TransformerBridge`` satisfies it).

    ``cfg`` carries ``n_layers``, ``n_heads``, ``d_head``, ``d_model`` (and ``n_key_value_heads``
    under GQA); the hook names are TransformerLens's (``blocks.{l}.attn.hook_z``, ...).
    """

    cfg: Any
    tokenizer: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def hooks(self, fwd_hooks: Any = ..., **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...


class ModelAdapter(Protocol):
    """The backend-specific operations; one implementation per kind of model."""

    def o_proj_weight(self, layer: int) -> torch.Tensor: ...

    def model_type(self) -> str | None: ...

    def tail_only(self, layers: Sequence[int]) -> contextlib.AbstractContextManager[None]: ...

    def max_context_length(self, tokenizer: Any = None) -> int: ...

    def eos_token_ids(self) -> set[int]: ...

    def cache_kwargs(self, cache: Any) -> dict[str, Any]: ...

    def identity(self) -> dict[str, Any]: ...


class HFAdapter:
    """A ``TransformerBridge`` over a Hugging Face decoder (Llama/Qwen-style), or a bare Hugging Face model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.hf = getattr(model, "original_model", model)
        self.is_bridge = hasattr(model, "blocks") and hasattr(model, "original_model")

    @staticmethod
    def accepts(model: Any) -> bool:
        hf = getattr(model, "original_model", model)
        return hasattr(hf, "config")

    # --- weights ------------------------------------------------------------------------
    def o_proj_weight(self, layer: int) -> torch.Tensor:
        """The o_proj weight [d_model, n_heads * d_head] of ``layer``: the very Parameter Hugging Face uses."""
        if self.is_bridge:
            return self.model.blocks[layer].attn.o.original_component.weight
        return self.hf.get_decoder().layers[layer].self_attn.o_proj.weight

    def model_type(self) -> str | None:
        return getattr(getattr(self.hf, "config", None), "model_type", None)

    # --- tail-only forward --------------------------------------------------------------
    def decoder(self) -> torch.nn.Module:
        """The Hugging Face decoder whose ``layers`` list the tail-only forward swaps."""
        decoder = getattr(self.hf, "model", None) if self.is_bridge else None
        if not isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList):
            raise ValueError(
                "the sweep engine needs a TransformerBridge over a Hugging Face decoder "
                "with model.layers (Llama/Qwen-style); use run_sweep's naive path instead"
            )
        return decoder

    @contextlib.contextmanager
    def tail_only(self, layers: Sequence[int]) -> Iterator[None]:
        """Make the forward run only decoder layers ``layers`` (the same block objects), then restore."""
        decoder = self.decoder()
        full = decoder.layers
        config = decoder.config
        layer_types = getattr(config, "layer_types", None)
        decoder.layers = torch.nn.ModuleList([full[i] for i in layers])
        if layer_types is not None:  # Qwen3 picks each layer's mask by its position in the list
            config.layer_types = [layer_types[i] for i in layers]
        try:
            yield
        finally:
            decoder.layers = full
            if layer_types is not None:
                config.layer_types = layer_types

    # --- evaluation ---------------------------------------------------------------------
    def max_context_length(self, tokenizer: Any = None) -> int:
        """The context length as lm-eval's HFLM resolves it: config, then tokenizer, then 2048."""
        config = getattr(self.hf, "config", None)
        cfg = getattr(config, "text_config", None) or config
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None)
            if value is not None:
                return int(value)
        if tokenizer is None:
            tokenizer = getattr(self.model, "tokenizer", None)
        limit = getattr(tokenizer, "model_max_length", None)
        if limit is not None and limit != TOKENIZER_INFINITY:
            return int(limit)
        return DEFAULT_MAX_LENGTH

    def eos_token_ids(self) -> set[int]:
        """EOS ids Hugging Face ``generate`` stops on: the generation config's, the config's, or the tokenizer's."""
        eos = getattr(getattr(self.hf, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(self.hf.config, "eos_token_id", None)
        tokenizer = getattr(self.model, "tokenizer", None)
        if eos is None and tokenizer is not None:
            eos = tokenizer.eos_token_id
        return as_id_set(eos)

    def cache_kwargs(self, cache: Any) -> dict[str, Any]:
        """Hand a KV cache to Hugging Face under the name its forward takes.

        transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name still works but
        warns); older 5.x only know ``past_key_values``. :func:`install_kv_cache_shim` makes the
        bridge's attention read either name.
        """
        params = inspect.signature(self.hf.forward).parameters
        name = "cache" if "cache" in params else "past_key_values"
        return {name: cache, "use_cache": True}

    # --- identity -----------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Name (hub id or directory), revision (the hub commit, or None), dtype, device kind, attention."""
        config = getattr(self.hf, "config", None)
        name = getattr(config, "_name_or_path", None) or getattr(getattr(self.model, "cfg", None), "model_name", None)
        param = next(self.model.parameters())
        return {
            "name": str(name),
            "revision": getattr(config, "_commit_hash", None),
            "dtype": str(param.dtype).replace("torch.", ""),
            "device": param.device.type,
            "attn_implementation": getattr(config, "_attn_implementation", None),
        }


_ADAPTERS: list[type] = [HFAdapter]


def register_adapter(cls: type) -> type:
    """Register a :class:`ModelAdapter` class (with a static ``accepts(model)``); newest first."""
    if not callable(getattr(cls, "accepts", None)):
        raise ValueError(f"{cls.__name__} needs a static accepts(model) -> bool")
    _ADAPTERS.insert(0, cls)
    return cls


def adapter_for(model: Any) -> HFAdapter:
    """The adapter of ``model``; a one-line ValueError names what is supported otherwise."""
    for cls in _ADAPTERS:
        if cls.accepts(model):
            return cls(model)
    raise ValueError(
        f"no model adapter for {type(model).__name__}; supported: "
        f"{', '.join(c.__name__ for c in _ADAPTERS)} (a TransformerBridge or a Hugging Face model)"
    )


# --- module-level shorthands -------------------------------------------------------------


def as_id_set(ids: int | Sequence[int] | None) -> set[int]:
    """Token id(s) as a set (``None``: empty)."""
    if ids is None:
        return set()
    if isinstance(ids, int):
        return {ids}
    return {int(i) for i in ids}


def o_proj_weight(model: Any, layer: int) -> torch.Tensor:
    """The o_proj weight [d_model, n_heads * d_head] of ``layer`` (bridge or Hugging Face model)."""
    return adapter_for(model).o_proj_weight(layer)


def model_type(model: Any) -> str | None:
    """The Hugging Face ``model_type`` (``llama``, ``qwen3``, ...) or None."""
    return adapter_for(model).model_type()


def tail_only(model: Any, layers: Sequence[int]) -> contextlib.AbstractContextManager[None]:
    """Context in which ``model``'s forward runs only decoder layers ``layers`` (see :class:`HFAdapter`)."""
    return adapter_for(model).tail_only(layers)


def max_context_length(model: Any, tokenizer: Any = None) -> int:
    """The model's context length as lm-eval resolves it (config, then tokenizer, then 2048)."""
    return adapter_for(model).max_context_length(tokenizer)


def eos_token_ids(model: Any) -> set[int]:
    """EOS ids Hugging Face ``generate`` stops on."""
    return adapter_for(model).eos_token_ids()


def pad_token_id(tokenizer: Any) -> int:
    """lm-eval's pad choice (``configure_pad_token``): pad, else unk, else eos, else 0."""
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """Keyword arguments that hand ``cache`` to the model's forward."""
    return adapter_for(model).cache_kwargs(cache)


# --- the transformers >= 5.24 KV-cache shim ----------------------------------------------

_SHIM_ATTR = "_depthprobe_cache_kwarg_shim"


def install_kv_cache_shim() -> None:
    """Make the bridge's KV cache work on transformers >= 5.24.

    transformers 5.24 renamed the attention keyword ``past_key_values`` to ``cache``; the
    bridge's ``AttentionBridge._update_kv_cache`` reads only the old name, so cached
    generation silently attends to the current token alone. This forwards the new name.
    Idempotent; a no-op for versions that still pass ``past_key_values``.
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    original: Callable[..., Any] = AttentionBridge._update_kv_cache
    if getattr(original, _SHIM_ATTR, False):
        return

    def _update_kv_cache(self: Any, k: torch.Tensor, v: torch.Tensor, **kwargs: Any):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    setattr(_update_kv_cache, _SHIM_ATTR, True)
    AttentionBridge._update_kv_cache = _update_kv_cache  # type: ignore[method-assign]
