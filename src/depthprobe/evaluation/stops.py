"""The stop policy of greedy generation (lm-eval's ``generate_until``), and the think-end rule.

A row stops at an EOS id, or once its decoded text contains a stop string; with a think-end
token (``</think>``) stop strings apply only to what follows it. The returned text is what
follows the last think-end (when there is one), cut at the first stop string.

Decoding a row's whole text at every step costs time in its length (a fifth of a stories260K
sweep's time); :class:`StopWatch` decodes the newest tokens each step (as lm-eval's
``MultiTokenEOSCriteria`` does) and the whole text every :data:`WHOLE_EVERY` steps, at EOS and
at the budget, and scans back to the first stopping prefix, so that rows stop where
:meth:`StopPolicy.is_done` at every step stops them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["THINK_END", "WHOLE_EVERY", "StopPolicy", "StopWatch", "first_stop", "strip_thinking"]

#: Closes the reasoning block of Qwen3 and DeepSeek-R1 style models.
THINK_END = "</think>"
#: generated tokens between two checks of a row's whole text (between them, only its newest tokens are decoded)
WHOLE_EVERY = 16
#: tokens of the newest-token window beyond the longest stop string's own tokens
WINDOW_MARGIN = 4


def strip_thinking(text: str, *, think_end: str = THINK_END) -> str:
    """The answer after the last ``think_end`` (left-stripped), or ``text`` unchanged when absent.

    Same rule as lm-eval's ``postprocess_generated_text`` with a string ``think_end_token``;
    a generation whose budget ran out inside the reasoning keeps its reasoning text.
    """
    if not think_end:
        raise ValueError("think_end must be a non-empty string")
    return text.split(think_end)[-1].lstrip()


def first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index where lm-eval would cut ``text`` (earliest occurrence of any non-empty stop)."""
    hits = [text.find(s) for s in stop if s]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None


@dataclass(frozen=True)
class StopPolicy:
    """When a generated row is finished, and what text it yields.

    ``eos_ids``: token ids that end a row; ``stops``: strings that end it once decoded text
    (after ``think_end``, when set) contains one; ``tokenizer`` decodes (needed with stops).
    """

    eos_ids: frozenset[int] = frozenset()
    stops: tuple[str, ...] = ()
    think_end: str | None = None
    tokenizer: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.stops and self.tokenizer is None:
            raise ValueError("stop strings need model.tokenizer to decode generations")

    def _answer(self, tokens: Sequence[int]) -> str | None:
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        if self.think_end is None:
            return text
        if self.think_end not in text:
            return None  # still reasoning: stop strings do not apply yet
        return strip_thinking(text, think_end=self.think_end)

    def is_done(self, tokens: Sequence[int]) -> bool:
        """Whether a row whose generated tokens are ``tokens`` (its newest last) has ended."""
        return tokens[-1] in self.eos_ids or self.stopped(tokens)

    def stopped(self, tokens: Sequence[int]) -> bool:
        """Whether the decoded text of ``tokens`` (after the think-end, when set) contains a stop string."""
        if not self.stops:
            return False
        text = self._answer(tokens)
        return text is not None and first_stop(text, self.stops) is not None

    def text(self, tokens: Sequence[int]) -> str:
        """The returned text of a finished row: after the think-end (if any), cut at the first stop."""
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        if self.think_end is not None:
            text = strip_thinking(text, think_end=self.think_end)
        cut = first_stop(text, self.stops)
        return text if cut is None else text[:cut]


class StopWatch:
    """Where each row of one decode loop stops, as :meth:`StopPolicy.is_done` checked at every step decides.

    Each step decodes only the row's newest tokens (enough for the longest stop string and
    :data:`WINDOW_MARGIN` more); the whole text is decoded when that window holds a stop string,
    every :data:`WHOLE_EVERY` tokens, at EOS and when the row's budget is reached. A whole-text
    check that finds a stop scans back, prefix by prefix, from the last whole-text check without
    one, so the row keeps exactly the tokens up to its first stopping prefix. This is the per-step
    rule's decision whenever a stop string shows in the window at the step it appears, or stays in
    the text once there; a decoded text can lose one (stories260K's byte fallback does, so the
    window is not optional), and ``tests/test_stops.py`` checks the two rules agree on three real
    tokenizers. A stop the window misses costs at most ``WHOLE_EVERY - 1`` extra steps of that row.
    """

    def __init__(self, policy: StopPolicy) -> None:
        self.policy = policy
        self.own_rule = type(policy).is_done is not StopPolicy.is_done  # a subclass's rule is asked at every step
        self.checked: dict[int, int] = {}  # row -> length of its longest prefix whose whole text was checked
        tok = policy.tokenizer
        longest = max((len(tok.encode(s, add_special_tokens=False)) for s in policy.stops), default=0)
        self.window = longest + WINDOW_MARGIN

    def done_at(self, row: int, tokens: Sequence[int], *, final: bool = False) -> int | None:
        """How many of ``tokens`` row ``row`` keeps if it has ended (None: it goes on); ``final``: its last step."""
        p, n = self.policy, len(tokens)
        if self.own_rule:
            return n if p.is_done(tokens) else None
        eos = tokens[-1] in p.eos_ids
        if not p.stops:
            return n if eos else None
        last = self.checked.get(row, 0)
        if not (eos or final or n - last >= WHOLE_EVERY or self._window_holds_stop(tokens)):
            return None
        if p.stopped(tokens):  # the first stopping prefix since the last check; all of them when none earlier
            return next((m for m in range(last + 1, n) if p.stopped(tokens[:m])), n)
        self.checked[row] = n
        return n if eos else None

    def _window_holds_stop(self, tokens: Sequence[int]) -> bool:
        text = self.policy.tokenizer.decode(list(tokens[-self.window :]), skip_special_tokens=True)
        return any(s in text for s in self.policy.stops if s)
