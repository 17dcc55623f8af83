"""Attribution: every head's (and layer's) zero-ablation effect estimated from gradients.

An exact per-head map costs one ablation per head; :func:`attribute` estimates them all from
one forward and one backward pass per batch (``method="atp"``, attribution patching towards
zero). Each component's output is multiplied by a mask of ones that autograd differentiates:

- head h of layer l: ``z[:, :, h] *= m[l, h]`` on ``hook_z``; ``dM/dm = sum_{pos, d_head} z * dM/dz``,
  so the estimated delta of zeroing it is ``-dM/dm`` (the linearisation at the unablated run);
- a GQA group (``zero_kv_group``): the sum of its heads' estimates (zeroing its values zeroes
  exactly those heads' outputs);
- a layer skip: one mask on both ``hook_attn_out`` and ``hook_mlp_out``; estimate
  ``-(attn_out . dM/dresid_mid + mlp_out . dM/dresid_post)``.

``method="ig"`` (integrated gradients) integrates ``dM/dm`` along the path that scales one
layer's heads (or its skip) from 1 to 0, ``steps`` midpoints per layer; the heads of a layer
then sum exactly to ablating them all together (completeness), at ``steps`` passes per layer.

Metrics ``M`` per document: ``logit_diff`` (multiple choice): the gold choice's log-likelihood
minus the best distractor's, lm-eval's summed log-probabilities on its own windows; for
single-token choices this is exactly the logit difference at the answer position. ``logprob``
(generation tasks): the teacher-forced log-probability of the reference answer. Both are
unsaturated: log P(gold | choices) saturates and its gradients vanish.

What it is good for: ranking by *mean absolute* effect (``estimate_abs``) — on the organism the
Spearman correlation with exact ablation was 0.99 on retrieval and knowledge — not for signs or
signed means (0.11-0.39; integrated gradients 0.69-0.72). Confirm with exact ablation
(``run_sweep(..., prescreen=Prescreen(...))``).

TransformerLens 4.3's ``tools.analysis.attribution_patching`` captures gradients with
backward hooks for clean/corrupt patching one example at a time, without a zero-ablation mode;
masks give the per-row, per-head gradients of a whole batch, and the scaled paths integrated
gradients need, directly, so that module is not used here.
"""

from depthprobe.attribution.estimate import attribute
from depthprobe.attribution.exact import exact_effects, per_document_metric, recall, select
from depthprobe.attribution.requests import METHODS, METRICS, MetricRequest, Prescreen, metric_requests

__all__ = [
    "METHODS",
    "METRICS",
    "MetricRequest",
    "Prescreen",
    "attribute",
    "exact_effects",
    "metric_requests",
    "per_document_metric",
    "recall",
    "select",
]
