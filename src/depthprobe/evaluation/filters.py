"""lm-eval 0.4.13's answer filters and ``exact_match``, replicated for one generation at a time.

gsm8k, gsm8k_cot and mmlu_generative score a generation by extracting an answer with a chain
of filters (``regex`` then ``take_first``) and comparing it to the target with
``exact_match``. These are the same semantics as ``lm_eval.filters`` and
``lm_eval.api.metrics.exact_match_hf_evaluate`` (tested against them), including the
``"[invalid]"`` fallback and numpy's string handling, so scores agree sample by sample.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "FALLBACK",
    "GSM8K_STRICT",
    "GSM8K_COT_STRICT",
    "FLEXIBLE",
    "GSM8K_EXACT_MATCH",
    "MMLU_GENERATIVE_EXACT_MATCH",
    "FILTERS",
    "regex_extract",
    "take_first",
    "strict_match",
    "flexible_extract",
    "first_line",
    "exact_match",
]

#: What lm-eval's regex filter returns when nothing matches.
FALLBACK = "[invalid]"
#: ``strict-match`` of gsm8k ("#### 72").
GSM8K_STRICT = r"#### (\-?[0-9\.\,]+)"
#: ``strict-match`` of gsm8k_cot ("The answer is 72.").
GSM8K_COT_STRICT = r"The answer is (\-?[0-9\.\,]+)."
#: ``flexible-extract`` of both (the last number-like match, ``group_select=-1``).
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"

#: ``exact_match`` options of gsm8k and gsm8k_cot.
GSM8K_EXACT_MATCH: dict = {
    "ignore_case": True,
    "ignore_punctuation": False,
    "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
}
#: ``exact_match`` options of mmlu_generative.
MMLU_GENERATIVE_EXACT_MATCH: dict = {"ignore_case": True, "ignore_punctuation": True}


def regex_extract(text: str, pattern: str, *, group_select: int = 0, fallback: str = FALLBACK) -> str:
    """lm-eval's ``regex`` filter on one response: ``findall``, pick a match, first non-empty group, strip."""
    if not isinstance(text, str):
        text = ""
    matches = re.findall(pattern, text)
    if not matches:
        return fallback
    match = matches[group_select]
    if isinstance(match, tuple):
        groups = [m for m in match if m]
        match = groups[0] if groups else fallback
    return match.strip()


def take_first(responses: Sequence[str]) -> str:
    """lm-eval's ``take_first``: the first of a document's responses."""
    if len(responses) == 0:
        raise ValueError("take_first needs at least one response")
    return responses[0]


def strict_match(text: str, pattern: str = GSM8K_STRICT) -> str:
    """``strict-match``: the first capture of ``pattern`` (gsm8k or gsm8k_cot), else ``"[invalid]"``."""
    return regex_extract(text, pattern)


def flexible_extract(text: str) -> str:
    """``flexible-extract``: the last number-like token in the text, else ``"[invalid]"``."""
    return regex_extract(text, FLEXIBLE, group_select=-1)


def first_line(text: str) -> str:
    """mmlu_generative's ``get_response``: first line, whitespace-stripped (regex, strip, regex)."""
    text = regex_extract(text, r"^(.*?)(?=\n|$)")
    text = text.strip()
    return regex_extract(text, r"^(.*?)\s*$")


#: Filter pipelines by lm-eval task and filter name, each mapping one generation to an answer.
FILTERS: dict[str, dict[str, Callable[[str], str]]] = {
    "gsm8k": {
        "strict-match": lambda t: strict_match(t, GSM8K_STRICT),
        "flexible-extract": flexible_extract,
    },
    "gsm8k_cot": {
        "strict-match": lambda t: strict_match(t, GSM8K_COT_STRICT),
        "flexible-extract": flexible_extract,
    },
    "mmlu_generative": {"get_response": first_line},
}


def exact_match(
    prediction: str,
    reference: str,
    *,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_numbers: bool = False,
    regexes_to_ignore: Sequence[str] | None = None,
) -> float:
    """lm-eval's ``exact_match`` for one pair: 1.0 or 0.0.

    Order as lm-eval: delete every ``regexes_to_ignore`` match, lower-case, delete ASCII
    punctuation, delete digits, compare. numpy string arrays are used as lm-eval does, so
    trailing NUL characters are ignored there as here.
    """
    preds = [prediction]
    refs = [reference]
    if regexes_to_ignore is not None:
        for pattern in regexes_to_ignore:
            preds = [re.sub(pattern, "", x) for x in preds]
            refs = [re.sub(pattern, "", x) for x in refs]
    p, r = np.asarray(preds), np.asarray(refs)
    if ignore_case:
        p, r = np.char.lower(p), np.char.lower(r)
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        p, r = np.char.translate(p, table=table), np.char.translate(r, table=table)
    if ignore_numbers:
        table = str.maketrans("", "", string.digits)
        p, r = np.char.translate(p, table=table), np.char.translate(r, table=table)
    return float(np.mean(p == r))
