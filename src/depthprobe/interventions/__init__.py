"""Interventions as values: typed hook functions, bound to a model at use time, each equal to a weight edit.

An :class:`Intervention` is a frozen, hashable, picklable value with a stable string id
(``skip:L12``, ``head:L35H7``, ``group:L35G1``, ``o_proj:L12``, ``mean_head:L3H5@task:50``).
``iv.bind(model)`` checks it against the model and returns its hooks; ``ablate(model, *ivs)``
binds, installs and always removes them; ``collect_hooks(*ivs, model=model)`` gives plain
``(hook_name, fn)`` pairs for ``model.run_with_hooks``. The model's weights are never modified.

==================  =========================================  ==============================
constructor          hook                                       equal weight edit
==================  =========================================  ==============================
skip_layer           attn_out := 0 and mlp_out := 0             delete the decoder layer
skip_attn            attn_out := 0                              zero o_proj
skip_mlp             mlp_out := 0                               zero down_proj
zero_head            z[:, :, h] := 0                            zero o_proj columns of head h
zero_kv_group        v[:, :, g] := 0                            zero o_proj columns of every
                                                                query head reading KV head g
zero_head_weights    q[h], k[g], v[g], z[h] := 0                the study's original pruning
patch_o_proj         attn_out := z @ W'^T                       o_proj := W'
mean_head            z[:, :, h] := mean of z[..., h]            o_proj columns of h := 0,
                     over a reference                           o_proj bias += W_O[:, h] mean
==================  =========================================  ==============================

Modules: ``hooks`` (the typed hook functions), ``base`` (the value, its registry, binding),
``ablations``, ``o_proj``, ``mean`` (one module per family of types), ``apply`` (ablate).
"""

from typing import Literal

from depthprobe.interventions.ablations import (
    SkipAttn,
    SkipLayer,
    SkipMLP,
    ZeroHead,
    ZeroHeadWeights,
    ZeroKVGroup,
    skip_attn,
    skip_layer,
    skip_layers,
    skip_mlp,
    zero_head,
    zero_head_weights,
    zero_kv_group,
)
from depthprobe.interventions.apply import Interventions, ablate, bind_all, collect_hooks, order_hooks, validate
from depthprobe.interventions.base import INTERVENTION_TYPES, Bound, Intervention, model_cache, register
from depthprobe.interventions.hooks import (
    HookFn,
    replace_o_proj,
    set_heads,
    stash_z,
    zero_heads,
    zero_kv_heads,
    zero_output,
)
from depthprobe.interventions.mean import MeanHead, MeanReference, head_means, mean_head, register_reference_resolver
from depthprobe.interventions.o_proj import (
    OProjSource,
    PatchOProj,
    load_o_proj_weights,
    o_proj_accumulative,
    o_proj_per_layer,
    o_proj_reverse,
    patch_o_proj,
)
from depthprobe.interventions.weights import WeightEditor, edited_model, hook_free_allowed, plain_model

__all__ = [
    "Interventions",
    "Bound",
    "WeightEditor",
    "HookFn",
    "INTERVENTION_TYPES",
    "Intervention",
    "MeanHead",
    "MeanReference",
    "OProjSource",
    "PatchOProj",
    "SkipAttn",
    "SkipLayer",
    "SkipMLP",
    "ZeroHead",
    "ZeroHeadWeights",
    "ZeroKVGroup",
    "ablate",
    "bind_all",
    "collect_hooks",
    "edited_model",
    "head_means",
    "hook_free_allowed",
    "load_o_proj_weights",
    "mean_head",
    "register_reference_resolver",
    "model_cache",
    "o_proj_accumulative",
    "o_proj_per_layer",
    "o_proj_reverse",
    "order_hooks",
    "patch_o_proj",
    "plain_model",
    "register",
    "replace_o_proj",
    "set_heads",
    "skip_attn",
    "skip_layer",
    "skip_layers",
    "skip_mlp",
    "stash_z",
    "validate",
    "zero_head",
    "zero_head_weights",
    "zero_heads",
    "zero_kv_group",
    "zero_kv_heads",
    "zero_output",
]

#: The kinds of the built-in intervention types.
Kind = Literal["skip", "skip_attn", "skip_mlp", "head", "group", "head_weights", "o_proj", "mean_head"]
