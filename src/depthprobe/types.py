"""Named tensor shapes used at depthprobe's public boundaries.

Shapes are jaxtyping annotations, checked at run time under pytest by typeguard (2.13.3,
as vendored by jaxtyping: ``--jaxtyping-packages=depthprobe,jaxtyping._typeguard.typechecked``;
typeguard 4, which TransformerLens requires, cannot instrument modules compiled by jaxtyping's
import hook). Named once here so every module speaks of the same shapes.
"""

from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "HeadActs",
    "HeadValues",
    "KVHeadActs",
    "Logits",
    "LogProbs",
    "Mask",
    "OProjWeight",
    "Resid",
    "TokenMask",
    "Tokens",
]

#: Token ids of a batch of sequences.
Tokens = Int[Tensor, "batch pos"]
#: Attention mask, 1 for real tokens and 0 for padding.
TokenMask = Int[Tensor, "batch pos"]
#: A boolean mask over positions.
Mask = Bool[Tensor, "batch pos"]
#: Residual-stream-shaped activations (block input/output, attention or MLP output).
Resid = Float[Tensor, "batch pos d_model"]
#: Per-query-head activations (``hook_q``, ``hook_z``).
HeadActs = Float[Tensor, "batch pos head d_head"]
#: One fixed vector per listed query head (e.g. a head's mean output for mean ablation).
HeadValues = Float[Tensor, "heads d_head"]
#: Per-key/value-head activations (``hook_k``, ``hook_v``); fewer heads than queries under GQA.
KVHeadActs = Float[Tensor, "batch pos kv_head d_head"]
#: Logits over the vocabulary.
Logits = Float[Tensor, "batch pos vocab"]
#: Log-probabilities over the vocabulary.
LogProbs = Float[Tensor, "batch pos vocab"]
#: An o_proj weight in Hugging Face layout [d_model, n_heads * d_head].
OProjWeight = Float[Tensor, "d_model d_in"]
