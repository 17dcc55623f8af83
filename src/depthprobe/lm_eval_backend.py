"""depthprobe as a model backend of lm-evaluation-harness: any lm-eval task under any intervention.

``import depthprobe`` registers the model name ``depthprobe`` with lm-eval. lm-eval itself is
imported only when the backend is first used (:class:`DepthprobeLM` is built on lm-eval's
``LM`` on first access), so this module imports without it. Three ways to use it::

    lm_eval.simple_evaluate(model="depthprobe",
                            model_args="pretrained=organism-base,interventions=skip:L1 head:L2H3",
                            tasks=["hellaswag"])
    lm_eval.simple_evaluate(model=depthprobe.lm_eval_model(model), tasks=[...])  # hooks active on model
    python -m depthprobe lm-eval --model_args pretrained=...,interventions=skip:L3 --tasks ... [lm-eval flags]

Requests go through depthprobe's evaluator: log-likelihoods by ``score_choices`` (a context's
KV cache shared by its continuations), rolling log-likelihoods on lm-eval's own token windows
(``lm_eval.utils.get_rolling_token_windows``), generation by batched KV-cached greedy decoding
with lm-eval's stop semantics (``generate_until``). The interventions are active for every
request. lm-eval's result cache (``use_cache``) is keyed on request text only, so the backend
binds a cache database to one model identity (weights, dtype and intervention ids) and refuses
to read or extend one written under another.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from depthprobe import interventions as iv
from depthprobe.evaluation.generation import generate_until
from depthprobe.evaluation.loglikelihood import model_max_length, score_choices, score_encoded
from depthprobe.evaluation.tokenize import prefix_token_id, tok_encode
from depthprobe.identity import model_identity
from depthprobe.models import load_model

__all__ = ["DepthprobeLM", "lm_eval_model", "parse_interventions"]  # noqa: F822  (DepthprobeLM: made on first access)

#: The key a depthprobe-bound lm-eval cache database keeps its model identity under.
CACHE_IDENTITY_KEY = "__depthprobe_identity__"

_ID_FORMS = (
    "skip:L<l>, skip_attn:L<l>, skip_mlp:L<l>, head:L<l>H<h>, group:L<l>G<g>, head_weights:L<l>H<h>, "
    "o_proj:L<l>[@<alpha>]=<source path>"
)


def _from_id(text: str) -> Any:
    """One intervention from its id (``o_proj`` with ``=<source>``)."""
    m = re.fullmatch(r"o_proj:L(\d+)(?:@([-+0-9.eE]+))?=(.+)", text)
    if m:
        return iv.patch_o_proj(int(m.group(1)), m.group(3), alpha=float(m.group(2) or 1.0))
    return iv.Intervention.from_id(text)


def parse_interventions(spec: str | Iterable[str] | None, model: Any = None) -> list[Any]:
    """Interventions from ids separated by spaces or commas (``"skip:L3 head:L35H7,group:L35G1"``).

    With ``model``, every layer, head and group is checked against it. Raises one ``ValueError``
    line naming the id, the valid forms and (with a model) the valid ranges.
    """
    if spec is None:
        return []
    texts = spec if not isinstance(spec, str) else [spec]
    ids = [t for text in texts for t in re.split(r"[\s,]+", str(text).strip()) if t]
    out = []
    for text in ids:
        try:
            out.append(_from_id(text))
        except ValueError as err:
            raise ValueError(f"interventions: {err}; valid forms: {_ID_FORMS}") from None
    if model is not None:
        try:
            iv.validate(model, out)
        except ValueError as err:
            raise ValueError(f"interventions: {err}") from None
    return out


def _batch_size(value: Any) -> int:
    if isinstance(value, str) and value.startswith("auto"):
        return 16  # depthprobe batches by rows and padding itself; "auto" probing is not needed
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {value!r}") from None
    if size < 1:
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {value!r}")
    return size


def _available(device: str | None) -> str | None:
    """lm-eval's command line asks for ``cuda:0`` by default; like its ``hf`` backend, use the CPU without CUDA."""
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"device {device!r} requested but CUDA is not available; using the CPU", stacklevel=3)
        return "cpu"
    return device


class _Backend:
    """An lm-eval ``LM`` over a depthprobe model (a ``TransformerBridge``), under interventions.

    ``pretrained`` (alias, hub id or directory) is loaded with ``load_model(dtype=, device=)``;
    or pass a loaded ``model``. ``interventions`` are ids (see :func:`parse_interventions`);
    with a loaded model, hooks already active on it (``depthprobe.ablate``) apply as well.

    The methods of :class:`DepthprobeLM`, which puts them on lm-eval's ``LM`` (its base class
    comes from lm-eval, so the class is made when it is first used).
    """

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model: Any = None,
        interventions: str | Sequence[Any] | None = None,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | str = 16,
        max_batch_size: int | None = None,
        max_gen_toks: int = 256,
        **extra: Any,
    ) -> None:
        super().__init__()
        # lm-eval splits model_args on commas: "interventions=skip:L1,head:L2H3" arrives as
        # interventions="skip:L1" plus a key "head:L2H3" with an empty value.
        stray = [k for k, v in extra.items() if re.fullmatch(r"[a-z_]+:L\d+.*", k) and v in ("", None)]
        unknown = sorted(set(extra) - set(stray))
        if unknown:
            raise ValueError(
                f"unknown depthprobe model_args: {', '.join(unknown)}; valid: pretrained, "
                "interventions, dtype, device, batch_size, max_gen_toks"
            )
        if (pretrained is None) == (model is None):
            raise ValueError("pass exactly one of pretrained=<alias, hub id or directory> and model=<a loaded model>")
        if model is None:
            model = load_model(str(pretrained), dtype=dtype, device=_available(device))
        elif not hasattr(model, "tokenizer") or not hasattr(model, "hooks"):
            raise ValueError("model must come from depthprobe.load_model (a TransformerBridge with a tokenizer)")
        self.model = model
        self.batch_size = _batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        ivs: list[Any] = []
        if isinstance(interventions, str) or interventions is None:
            ivs = parse_interventions([interventions or "", *stray], model)
        else:
            ivs = iv.validate(model, list(interventions)) + parse_interventions(stray, model)
        self.interventions = ivs

    # --- identity --------------------------------------------------------------------------
    @property
    def condition(self) -> str:
        """The interventions' ids joined by ``+`` (``baseline`` for none), as in run directories."""
        return "+".join(i.id for i in self.interventions) if self.interventions else "baseline"

    @property
    def identity(self) -> str:
        """What a cached result depends on: model, weights revision, dtype, device kind, interventions,
        and the live weights when they were edited in memory after ``load_model``."""
        m = model_identity(self.model)
        edited = f"|weights={m['weights']}" if m.get("weights") is not None else ""
        return f"depthprobe|{m['name']}|{m['revision']}|{m['dtype']}|{m['device']}{edited}|{self.condition}"

    def get_model_info(self) -> dict[str, Any]:
        """Recorded by lm-eval in its results' config."""
        return {"depthprobe_identity": self.identity, "interventions": self.condition}

    def set_cache_hook(self, cache_hook: Any) -> None:
        """Bind lm-eval's result cache to this identity; refuse one written under another."""
        db = getattr(cache_hook, "dbdict", None)
        if db is not None:
            held = db.get(CACHE_IDENTITY_KEY)
            if held is None and len(db) > 0:
                raise ValueError(
                    "lm-eval cache database holds results not written by depthprobe under these "
                    f"settings ({self.condition}); pass another use_cache path"
                )
            if held is not None and held != self.identity:
                raise ValueError(
                    f"lm-eval cache database was written under {held!r}, not {self.identity!r}; "
                    "pass another use_cache path per model and intervention set"
                )
            if held is None:
                db[CACHE_IDENTITY_KEY] = self.identity
                db.commit()
        super().set_cache_hook(cache_hook)  # type: ignore[misc]  (lm-eval's LM, after this class)

    # --- lm-eval's three request types -----------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.model.tokenizer, "name_or_path", "depthprobe")).replace("/", "__")

    def _hooks(self) -> Any:
        return iv.ablate(self.model, *self.interventions)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Summed log-probability and greedy flag of each (context, continuation); one context pass per context."""
        by_context: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            by_context.setdefault(req.args[0], []).append(i)
        contexts = list(by_context)
        grouped = [(c, [requests[i].args[1] for i in by_context[c]]) for c in contexts]
        with self._hooks():
            scores, _ = score_choices(self.model, grouped, batch_size=self.batch_size)
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for context, doc in zip(contexts, scores):
            for i, ll, greedy in zip(by_context[context], doc.loglikelihoods, doc.is_greedy):
                out[i] = (float(ll), bool(greedy))
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Perplexity-style scores on lm-eval's own disjoint rolling windows (context length 1)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        tok = self.model.tokenizer
        max_len = model_max_length(self.model, tok)
        windows: list[tuple[int, list[int], list[int]]] = []
        for r, req in enumerate(requests):
            (text,) = req.args
            for ctx, cont in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=tok_encode(tok, text),
                    prefix_token=prefix_token_id(tok),
                    max_seq_len=max_len,
                    context_len=1,
                ),
            ):
                windows.append((r, ctx, cont))
        totals = [0.0] * len(requests)
        with self._hooks():
            scores, _ = score_encoded(
                self.model, [(ctx, [cont]) for _, ctx, cont in windows], batch_size=self.batch_size, max_length=max_len
            )
        for (r, _, _), doc in zip(windows, scores):
            totals[r] += doc.loglikelihoods[0]
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, stopped as lm-eval stops them; requests with the same settings run together."""
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        for i, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs)
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.pop("do_sample", False) or float(kwargs.pop("temperature", 0.0) or 0.0) > 0:
                raise ValueError(
                    "depthprobe decodes greedily; this task asks for sampling (do_sample=True or temperature > 0)"
                )
            groups.setdefault((tuple(until), max_gen), []).append(i)
        out: list[str | None] = [None] * len(requests)
        with self._hooks():
            for (until, max_gen), members in tqdm(
                groups.items(), disable=disable_tqdm or len(groups) < 2, desc="generation settings"
            ):
                gens = generate_until(
                    self.model,
                    [requests[i].args[0] for i in members],
                    until=list(until),
                    max_gen_toks=max_gen,
                    batch_size=self.batch_size,
                )
                for i, g in zip(members, gens):
                    out[i] = g.text
        return out  # type: ignore[return-value]


_LM_CLASS: type | None = None


def lm_class() -> type:
    """:class:`DepthprobeLM`: the backend on lm-eval's ``LM`` base class (imports lm-eval, once)."""
    global _LM_CLASS
    if _LM_CLASS is None:
        from lm_eval.api.model import LM

        _LM_CLASS = type("DepthprobeLM", (_Backend, LM), {"__doc__": _Backend.__doc__, "__module__": __name__})
    return _LM_CLASS


def __getattr__(name: str) -> Any:
    """``DepthprobeLM`` is made on first access (lm-eval's registry resolves it by this name)."""
    if name == "DepthprobeLM":
        return lm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def lm_eval_model(
    model: Any, *, interventions: str | Sequence[Any] | None = None, batch_size: int = 16, max_gen_toks: int = 256
) -> Any:
    """The lm-eval ``LM`` (a :class:`DepthprobeLM`) of a loaded model; hooks active on it and ``interventions``
    apply to every request."""
    return lm_class()(model=model, interventions=interventions, batch_size=batch_size, max_gen_toks=max_gen_toks)


def cli(argv: Sequence[str]) -> int:
    """``python -m depthprobe lm-eval ...``: lm-eval's own command line with the backend registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    # the backend is registered: importing this module ran depthprobe/__init__ (_register_lm_eval_backend)
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()
    return 0
