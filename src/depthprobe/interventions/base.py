"""The :class:`Intervention` value, the registry of its types, and binding to a model.

An intervention is data: a frozen, hashable, picklable dataclass naming what it edits (kind,
layer, head or group, parameters, and for data-carrying kinds a reference to the data). It
holds no model, no hook closure and no tensor read from a model. :meth:`Intervention.bind`
turns it into hooks for one model; that is where ranges are checked against the model and
weights or activations are read (cached per model, see :func:`model_cache`).

What the sweep engine, ``collect_hooks`` and plots need to know about a type is declared on
the type (``identity_block``, ``stateful``, ``weight_edit``, ``binds_to_model``, ``unit``,
``grid``, :attr:`Intervention.first_layer`, :meth:`Intervention.touched_heads`,
:meth:`Intervention.touched_groups`), so adding a type touches one module: subclass, declare,
implement ``_make_hooks``, decorate with :func:`register`.

Serialisation: ``iv.to_dict()`` / ``Intervention.from_dict(d)`` round-trip every kind (JSON-safe
dicts, ``{"kind": ..., "layer": ..., ...}``); ``Intervention.from_id(iv.id)`` rebuilds every kind
whose id carries all its data (not ``o_proj``, whose id does not name its source, nor a
``mean_head`` over a list of texts).
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import torch

from depthprobe.interventions.hooks import HookFn
from depthprobe.models import ModelDims, model_dims

__all__ = [
    "Bound",
    "Intervention",
    "INTERVENTION_TYPES",
    "check_index",
    "model_cache",
    "register",
]

Hook = tuple[str, HookFn]
T = TypeVar("T", bound=type)


def check_index(name: str, value: Any) -> int:
    """``value`` if it is a non-negative int; otherwise a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


@dataclass(frozen=True)
class Bound:
    """An intervention bound to one model: its hooks, split into edits and observers.

    Observers (hooks that only read an activation, e.g. the o_proj patch's ``stash_z``) must
    run after every edit of the same activation; :func:`collect_hooks` orders them so.
    """

    intervention: Intervention
    edits: tuple[Hook, ...]
    observers: tuple[Hook, ...] = ()

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return self.edits + self.observers


@dataclass(frozen=True)
class Intervention:
    """One edit of the forward pass, as a value. Subclasses are the intervention types.

    Declared capabilities (class attributes):

    - ``kind``: the type's name, the prefix of its id (``skip``, ``head``, ...).
    - ``identity_block``: the intervention makes its whole decoder layer the identity
      (the sweep engine leaves that layer out of the tail it runs).
    - ``stateful``: its bound hooks share state within one forward (two copies must not run
      in one batched forward).
    - ``weight_edit``: the weight edit it equals (a sentence), or None when none does.
    - ``binds_to_model``: binding reads the model (its sizes, weights or activations), so
      ``.hooks`` without a model is refused.
    - ``unit``: ``"head"`` or ``"group"`` when the type ablates one head or one GQA group
      per value (its per-layer grid then has one condition per unit), else None.
    - ``grid``: the name of that per-layer grid in ``parse_grid`` (``heads:L``), or None.
    - ``exact_weight_edit``: ``weight_edit`` holds bit for bit (the edit only zeroes what the hook
      zeroes, removes an identity layer, or puts in the very tensor the hook multiplies by), and
      :meth:`edit_weights` implements it; the hook-free decoder
      (:mod:`depthprobe.evaluation.fast_decode`) then runs the plain Hugging Face model instead.
    - ``edit_phase``: order of weight edits within one condition, as the hooks compose:
      replacing a tensor (0, the o_proj patch) before zeroing parts of it (1).
    """

    layer: int

    kind: ClassVar[str] = ""
    identity_block: ClassVar[bool] = False
    stateful: ClassVar[bool] = False
    weight_edit: ClassVar[str | None] = None
    binds_to_model: ClassVar[bool] = False
    unit: ClassVar[Literal["head", "group"] | None] = None
    grid: ClassVar[str | None] = None
    exact_weight_edit: ClassVar[bool] = False
    edit_phase: ClassVar[int] = 1

    def __post_init__(self) -> None:
        check_index("layer", self.layer)

    # --- identity -----------------------------------------------------------------------
    @property
    def index(self) -> int | None:
        """The head or group this intervention targets (None for layer-wide kinds)."""
        return None

    @property
    def id(self) -> str:
        """Stable string id, e.g. ``skip:L12``, ``head:L35H7``; joined with ``+`` into condition ids."""
        return f"{self.kind}:L{self.layer}"

    def __str__(self) -> str:
        return self.id

    # --- declared geometry --------------------------------------------------------------
    @property
    def first_layer(self) -> int:
        """The first decoder layer whose computation this intervention changes."""
        return self.layer

    def touched_heads(self, dims: ModelDims) -> tuple[int, ...]:
        """The query heads of ``self.layer`` whose output this intervention changes."""
        return tuple(range(dims.n_heads))

    def touched_groups(self, dims: ModelDims) -> tuple[int, ...]:
        """The GQA groups (KV heads) with at least one head in :meth:`touched_heads`."""
        return tuple(sorted({h // dims.group_size for h in self.touched_heads(dims)}))

    # --- binding ------------------------------------------------------------------------
    def check(self, dims: ModelDims) -> None:
        """Raise a one-line ValueError naming the valid range if this does not fit a model of ``dims``."""
        if self.layer >= dims.n_layers:
            raise ValueError(f"{self.id}: layer {self.layer} out of range; the model has layers 0..{dims.n_layers - 1}")
        if self.unit == "head" and self.index is not None and self.index >= dims.n_heads:
            raise ValueError(f"{self.id}: head {self.index} out of range; the model has heads 0..{dims.n_heads - 1}")
        if self.unit == "group" and self.index is not None and self.index >= dims.n_kv_heads:
            raise ValueError(
                f"{self.id}: KV group {self.index} out of range; the model has groups 0..{dims.n_kv_heads - 1}"
            )

    def bind(self, model: torch.nn.Module | None) -> Bound:
        """Check against ``model`` and build the hooks; reads weights or activations where the type needs them."""
        if model is None:
            if self.binds_to_model:
                raise ValueError(f"{self.id} needs the model it runs on: use iv.bind(model) or ablate(model, iv)")
            return self._make_hooks(None, None)
        dims = model_dims(model)
        self.check(dims)
        return self._make_hooks(model, dims)

    def _make_hooks(self, model: torch.nn.Module | None, dims: ModelDims | None) -> Bound:
        raise NotImplementedError

    def edit_weights(self, editor: Any) -> None:
        """Apply the exact weight edit through a :class:`~depthprobe.interventions.weights.WeightEditor`."""
        raise ValueError(f"{self.id} has no exact weight edit (exact_weight_edit is False); run it through hooks")

    @classmethod
    def grid_condition(cls, layer: int, index: int, context: dict[str, Any]) -> Intervention:
        """The value for one ``unit`` (head or group) of ``layer`` in the type's grid (``context``: grid options)."""
        return cls(layer, index)

    @property
    def hooks(self) -> tuple[Hook, ...]:
        """``(hook_name, fn)`` pairs of a type that needs no model (``skip``, ``head``, ``group``); else use ``bind``."""
        return self.bind(None).hooks

    # --- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict ``{"kind": ..., "layer": ..., ...}`` that :meth:`from_dict` turns back into this value."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Intervention:
        return cls(**fields)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Intervention:
        """The intervention :meth:`to_dict` described (any registered kind)."""
        if not isinstance(data, dict) or "kind" not in data:
            raise ValueError(f"an intervention dict needs a 'kind' key; got {data!r}")
        cls = INTERVENTION_TYPES.get(data["kind"])
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k != "kind"}
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ValueError(
                f"{data['kind']}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        return cls._from_fields(fields)

    _ID_RE: ClassVar[re.Pattern[str]] = re.compile(r"^L(\d+)(?:([HG])(\d+))?$")

    @classmethod
    def _from_id_rest(cls, rest: str) -> Intervention:
        """Parse the part of an id after ``kind:`` (default grammar ``L<layer>[H<head>|G<group>]``)."""
        m = cls._ID_RE.match(rest)
        letter = {"head": "H", "group": "G", None: None}[cls.unit]
        if m is None or m.group(2) != letter:
            form = f"{cls.kind}:L<layer>" + (f"{letter}<{cls.unit}>" if letter else "")
            raise ValueError(f"bad {cls.kind} id {cls.kind}:{rest!r}; expected {form}")
        layer = int(m.group(1))
        return cls(layer) if letter is None else cls(layer, int(m.group(3)))

    @staticmethod
    def from_id(id: str) -> Intervention:
        """The intervention with this id, for every kind whose id carries all its data.

        ``Intervention.from_id("head:L35H7") == zero_head(35, 7)``. An ``o_proj`` id does not
        name its source, so it is refused with a pointer to :meth:`from_dict`.
        """
        if not isinstance(id, str) or ":" not in id:
            raise ValueError(
                f"bad intervention id {id!r}; expected <kind>:L<layer>..., kinds: "
                f"{', '.join(INTERVENTION_TYPES.names())}"
            )
        kind, rest = id.split(":", 1)
        return INTERVENTION_TYPES.get(kind)._from_id_rest(rest)


@dataclass(frozen=True)
class OneHead(Intervention):
    """Base of the types that target one query head of ``layer`` (not registered itself): the
    ``head`` field, its check, ``index`` and ``touched_heads``; subclasses say what they do to it."""

    head: int
    unit: ClassVar[Literal["head", "group"] | None] = "head"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_index("head", self.head)

    @property
    def index(self) -> int | None:
        return self.head

    def touched_heads(self, dims: ModelDims) -> tuple[int, ...]:
        return (self.head,)


def _encode(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


class Registry:
    """Intervention types by kind; an unknown kind is a ValueError listing the valid ones."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, type[Intervention]] = {}

    def register(self, cls: type[Intervention]) -> type[Intervention]:
        if not cls.kind:
            raise ValueError(f"{cls.__name__} needs a kind")
        if cls.kind in self._items and self._items[cls.kind] is not cls:
            raise ValueError(f"{self.what} {cls.kind!r} is already registered")
        self._items[cls.kind] = cls
        return cls

    def get(self, kind: str) -> type[Intervention]:
        if kind not in self._items:
            raise ValueError(f"unknown {self.what} {kind!r}; valid: {', '.join(self.names())}")
        return self._items[kind]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __iter__(self) -> Iterator[type[Intervention]]:
        return iter(self._items.values())

    def __contains__(self, kind: object) -> bool:
        return kind in self._items


#: Every intervention type, by kind.
INTERVENTION_TYPES = Registry("intervention kind")


def register(cls: T) -> T:
    """Class decorator: make an :class:`Intervention` subclass known to ``from_id``, ``from_dict`` and grids."""
    INTERVENTION_TYPES.register(cls)
    return cls


# --- per-model cache of what binding reads --------------------------------------------------

_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()


def model_cache(model: torch.nn.Module, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per (model, key): weights and activation statistics read at bind time.

    Lives as long as the model; the model's weights are never modified by depthprobe, so a
    cached value stays valid.
    """
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = compute()
    return per_model[key]


# --- flattening -------------------------------------------------------------------------------


def flatten(items: Iterable[Any]) -> Iterator[Intervention]:
    """Interventions from nested lists of them; anything else is a TypeError."""
    for item in items:
        if isinstance(item, Intervention):
            yield item
        elif isinstance(item, Iterable) and not isinstance(item, (str, bytes)):
            yield from flatten(item)
        else:
            raise TypeError(f"expected an Intervention or a list of them, got {type(item).__name__}")
