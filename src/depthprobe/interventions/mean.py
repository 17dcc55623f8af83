"""Mean ablation of a query head: its output replaced by its mean over a reference distribution.

Zero ablation takes a head off-distribution (its output is never zero in practice); mean
ablation keeps the downstream layers on-distribution and removes only what the head says
about *this* input. ``mean_head(layer, head, reference)`` replaces the head's ``hook_z`` slice
(its o_proj input) at every position by its mean over all non-padding positions of
``reference`` under the unablated model. The mean is computed when the value is bound to a
model, once per (model, layer, reference) for all heads of the layer.

``reference`` is a task name with an optional limit (``"organism_knowledge:50"``, the
documents' prompts), a :class:`MeanReference`, or a list of texts. Interventions sit below the
tasks, so a task's prompts are read by a resolver that :mod:`depthprobe.tasks` registers here
(:func:`register_reference_resolver`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from depthprobe import adapter
from depthprobe.interventions.base import Bound, Intervention, OneHead, check_index, model_cache, register
from depthprobe.interventions.hooks import partial, set_heads
from depthprobe.models import ModelDims

__all__ = ["MeanHead", "MeanReference", "head_means", "mean_head", "register_reference_resolver"]

_LABEL_RE = re.compile(
    r"^(?P<task>[A-Za-z0-9_.-]+)(?::(?P<limit>\d+))?(?:/(?P<shots>\d+)shot)?(?:\[(?P<opts>[^\]]*)\])?$"
)


#: Reads a task reference's texts (its prompts); registered by ``depthprobe.tasks``.
_resolver: Callable[[MeanReference], list[str]] | None = None


def register_reference_resolver(fn: Callable[[MeanReference], list[str]]) -> None:
    """Set how a task reference becomes texts: ``fn(reference)`` returns the prompts of ``reference.task``
    (its ``limit``, ``num_fewshot``, ``options`` and ``data_dir``). ``depthprobe.tasks`` registers its own."""
    global _resolver
    _resolver = fn


def _option_value(text: str) -> Any:
    return int(text) if re.fullmatch(r"-?\d+", text) else text


@dataclass(frozen=True)
class MeanReference:
    """The texts a head's mean output is taken over: a task's prompts, or explicit ``texts``.

    A task reference is ``task`` with ``limit`` documents, ``num_fewshot`` shots and task
    ``options`` (sorted ``(name, value)`` pairs); its ``label`` (``organism_knowledge:50``,
    ``kv_retrieval:4[n_pairs=4,seed=3]``) is part of the intervention id. ``data_dir`` says
    where to read the task's data from and is not part of the identity.
    """

    task: str | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    options: tuple[tuple[str, Any], ...] = ()
    texts: tuple[str, ...] | None = None
    data_dir: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.task is None) == (self.texts is None):
            raise ValueError("a mean reference is either a task name or a list of texts, not both or neither")
        if self.texts is not None and (not self.texts or not all(isinstance(t, str) and t for t in self.texts)):
            raise ValueError("mean reference texts must be a non-empty list of non-empty strings")
        if self.limit is not None:
            check_index("limit", self.limit)
            if self.limit < 1:
                raise ValueError(f"limit must be a positive number of documents, got {self.limit}")

    @staticmethod
    def of(reference: str | Sequence[str] | MeanReference) -> MeanReference:
        """``"task"``, ``"task:limit"`` (a label), a list of texts, or a MeanReference."""
        if isinstance(reference, MeanReference):
            return reference
        if isinstance(reference, str):
            m = _LABEL_RE.match(reference.strip())
            if m is None or m.group("task") == "texts":
                raise ValueError(
                    f"bad mean reference {reference!r}; expected a task name, 'task:limit', or a list of texts"
                )
            opts = tuple(
                sorted(
                    (k, _option_value(v))
                    for k, v in (kv.split("=", 1) for kv in (m.group("opts") or "").split(",") if kv)
                )
            )
            return MeanReference(
                task=m.group("task"),
                limit=int(m.group("limit")) if m.group("limit") else None,
                num_fewshot=int(m.group("shots")) if m.group("shots") else None,
                options=opts,
            )
        if isinstance(reference, Sequence):
            return MeanReference(texts=tuple(reference))
        raise ValueError(
            f"mean reference must be a task name, 'task:limit' or a list of texts; got {type(reference).__name__}"
        )

    @staticmethod
    def for_task(
        task: str,
        *,
        limit: int | None = None,
        num_fewshot: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> MeanReference:
        """A task's prompts as the reference (the documents ``evaluate`` would score)."""
        return MeanReference(
            task=task,
            limit=limit,
            num_fewshot=num_fewshot,
            options=tuple(sorted(options.items())),
            data_dir=None if data_dir is None else str(data_dir),
        )

    @property
    def label(self) -> str:
        """Short stable name used in ids: the task form, or ``texts:<digest>``."""
        if self.texts is not None:
            digest = hashlib.sha256("\x00".join(self.texts).encode()).hexdigest()[:12]
            return f"texts:{digest}"
        out = str(self.task)
        if self.limit is not None:
            out += f":{self.limit}"
        if self.num_fewshot is not None:
            out += f"/{self.num_fewshot}shot"
        if self.options:
            out += "[" + ",".join(f"{k}={v}" for k, v in self.options) + "]"
        return out

    def resolve(self) -> list[str]:
        """The reference texts (a task's prompts, read now by the registered resolver)."""
        if self.texts is not None:
            return list(self.texts)
        if _resolver is None:
            raise RuntimeError(
                f"mean reference {self.label!r} names a task, but no task resolver is registered: "
                "import depthprobe.tasks (it registers one), or pass the texts"
            )
        return list(_resolver(self))

    def to_dict(self) -> dict[str, Any]:
        if self.texts is not None:
            return {"texts": list(self.texts)}
        out: dict[str, Any] = {
            "task": self.task,
            "limit": self.limit,
            "num_fewshot": self.num_fewshot,
            "options": {k: v for k, v in self.options},
        }
        if self.data_dir is not None:
            out["data_dir"] = self.data_dir
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> MeanReference:
        if "texts" in data:
            return MeanReference(texts=tuple(data["texts"]))
        return MeanReference(
            task=data["task"],
            limit=data.get("limit"),
            num_fewshot=data.get("num_fewshot"),
            options=tuple(sorted((data.get("options") or {}).items())),
            data_dir=data.get("data_dir"),
        )


def _active_hooks(model: torch.nn.Module) -> bool:
    hook_dict = getattr(model, "hook_dict", {}) or {}
    return any(len(getattr(hp, "_forward_hooks", ())) for hp in hook_dict.values())


@torch.no_grad()
def head_means(model: torch.nn.Module, layer: int, texts: Sequence[str], *, batch_size: int = 8) -> Tensor:
    """Mean of every head's ``hook_z`` [n_heads, d_head] at ``layer`` over all non-padding positions of ``texts``.

    Each text is tokenized as the tokenizer does by default (BOS where it adds one); batches
    are right-padded with an attention mask, and padding positions are left out of the mean.
    Computed under the model as it is: refused while hooks are active on it.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("mean ablation needs a model with a tokenizer to read its reference texts")
    if not texts:
        raise ValueError("mean ablation needs at least one reference text")
    if _active_hooks(model):
        raise ValueError(
            "mean_head's reference mean must be computed on the unablated model, but hooks are active: "
            "bind it outside other interventions (pass all of them to one ablate call)"
        )
    device = next(model.parameters()).device
    pad = adapter.pad_token_id(tokenizer)
    name = f"blocks.{layer}.attn.hook_z"
    grabbed: dict[str, Tensor] = {}

    def grab(z: Tensor, hook: Any) -> None:
        grabbed["z"] = z.detach()

    total: Tensor | None = None
    count = 0
    for start in range(0, len(texts), batch_size):
        rows = [list(tokenizer(t)["input_ids"]) for t in texts[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
        with model.hooks(fwd_hooks=[(name, grab)]):
            model(ids, attention_mask=mask, stop_at_layer=layer + 1)
        z = grabbed.pop("z").double()
        part = (z * mask[:, :, None, None].double()).sum(dim=(0, 1))
        total = part if total is None else total + part
        count += int(mask.sum())
    assert total is not None
    return (total / count).float()


@register
@dataclass(frozen=True)
class MeanHead(OneHead):
    """Query head ``head`` of ``layer`` mean-ablated: its ``hook_z`` slice := its mean over ``reference``."""

    reference: MeanReference

    kind = "mean_head"
    grid = "mean_heads"
    binds_to_model = True
    weight_edit = "zero the o_proj columns of the head and add W_O[:, head] @ mean to the o_proj bias"

    @property
    def id(self) -> str:
        return f"mean_head:L{self.layer}H{self.head}@{self.reference.label}"

    def means(self, model: torch.nn.Module) -> Tensor:
        """The reference means [n_heads, d_head] of this layer on ``model`` (computed once per model)."""
        key = ("head_means", self.layer, self.reference)
        return model_cache(model, key, lambda: head_means(model, self.layer, self.reference.resolve()))

    def _make_hooks(self, model: torch.nn.Module, dims: ModelDims) -> Bound:
        values = self.means(model)[self.head : self.head + 1]
        fn = partial(set_heads, heads=(self.head,), values=values)
        return Bound(self, ((f"blocks.{self.layer}.attn.hook_z", fn),))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "head": self.head, "reference": self.reference.to_dict()}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Intervention:
        ref = fields["reference"]
        return cls(fields["layer"], fields["head"], MeanReference.from_dict(ref) if isinstance(ref, dict) else ref)

    @classmethod
    def _from_id_rest(cls, rest: str) -> Intervention:
        m = re.match(r"^L(\d+)H(\d+)@(.+)$", rest)
        if m is None:
            raise ValueError(
                f"bad mean_head id mean_head:{rest!r}; expected mean_head:L<layer>H<head>@<task>[:<limit>]"
            )
        if m.group(3).startswith("texts:"):
            raise ValueError(
                f"mean_head:{rest} names its reference texts only by digest: rebuild it with "
                f"Intervention.from_dict(iv.to_dict())"
            )
        return cls(int(m.group(1)), int(m.group(2)), MeanReference.of(m.group(3)))

    @classmethod
    def grid_condition(cls, layer: int, index: int, context: dict[str, Any]) -> Intervention:
        if context.get("reference") is None:
            raise ValueError(
                "grid mean_heads:L needs a reference (run_sweep uses its task; parse_grid(..., reference='task:limit'))"
            )
        return cls(layer, index, MeanReference.of(context["reference"]))


def mean_head(layer: int, head: int, reference: str | Sequence[str] | MeanReference) -> Intervention:
    """Mean-ablate query head ``head`` of ``layer``: its output := its mean over ``reference`` (unablated model).

    ``reference``: a task name with an optional limit (``"organism_knowledge:50"``), a list of
    texts, or a :class:`MeanReference` (``MeanReference.for_task(name, limit=, **options)``).
    Equal to zeroing the head's o_proj columns and adding ``W_O[:, head] @ mean`` as an o_proj bias.
    """
    return MeanHead(check_index("layer", layer), check_index("head", head), MeanReference.of(reference))
