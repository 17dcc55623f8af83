"""The stop policy of greedy generation (lm-eval's ``generate_until``), and the think-end rule.

A row stops at an EOS id, or once its decoded text contains a stop string; with a think-end
token (``</think>``) stop strings apply only to what follows it. The returned text is what
follows the last think-end (when there is one), cut at the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["THINK_END", "StopPolicy", "first_stop", "strip_thinking"]

#: Closes the reasoning block of Qwen3 and DeepSeek-R1 style models.
THINK_END = "</think>"


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
        if tokens[-1] in self.eos_ids:
            return True
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
