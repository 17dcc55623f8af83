"""depthprobe.evaluation.filters against lm-eval 0.4.13's own filter classes and exact_match metric."""

from __future__ import annotations

import itertools

import pytest
from lm_eval.api.metrics import exact_match_hf_evaluate
from lm_eval.filters.extraction import RegexFilter, WhitespaceFilter
from lm_eval.filters.selection import TakeFirstFilter

from depthprobe.evaluation.filters import (
    FILTERS,
    FLEXIBLE,
    GSM8K_COT_STRICT,
    GSM8K_EXACT_MATCH,
    GSM8K_STRICT,
    MMLU_GENERATIVE_EXACT_MATCH,
    exact_match,
    first_line,
    flexible_extract,
    regex_extract,
    strict_match,
    take_first,
)

TRICKY = [
    "",
    " ",
    "\n",
    "no numbers here",
    "#### 42",
    "#### -3.5",
    "#### 1,234.\nQuestion: next",
    "The answer is 18.",
    "The answer is 18",
    "The answer is $18.00.",
    "The answer is -7, so\nThe answer is 9.",
    "He had 3 apples and 4 pears, 7 in total. The answer is 7.",
    "costs $1,200.50 in total",
    "Result: -12 then 5",
    "5",
    "x 5.",
    "...,,, $$ 12",
    "  B. Paris\nC. London",
    "\n\nA",
    "a) 3 b) 4.5.",
    "1.2.3.4",
    "#### 70000\n#### 5",
    "The answer is 1000. The answer is 2000.",
    "nul\x00 tail\x00",
    "Ünïcödé 12 ✓",
]


def _lm_eval_chain(text: str, *filters) -> str:
    resps = [[text]]
    for f in filters:
        resps = list(f.apply(resps, [{}]))
    return resps[0]


@pytest.mark.parametrize("text", TRICKY)
def test_regex_filters_equal_lm_eval(text):
    for pattern, group in [(GSM8K_STRICT, 0), (GSM8K_COT_STRICT, 0), (FLEXIBLE, -1), (FLEXIBLE, 0)]:
        ref = _lm_eval_chain(text, RegexFilter(regex_pattern=pattern, group_select=group), TakeFirstFilter())
        assert regex_extract(text, pattern, group_select=group) == ref, (pattern, group)
    assert strict_match(text) == _lm_eval_chain(text, RegexFilter(GSM8K_STRICT), TakeFirstFilter())
    assert strict_match(text, GSM8K_COT_STRICT) == FILTERS["gsm8k_cot"]["strict-match"](text)
    assert flexible_extract(text) == _lm_eval_chain(text, RegexFilter(FLEXIBLE, group_select=-1), TakeFirstFilter())


@pytest.mark.parametrize("text", TRICKY)
def test_first_line_equals_mmlu_generative_pipeline(text):
    ref = _lm_eval_chain(
        text,
        RegexFilter(regex_pattern="^(.*?)(?=\\n|$)"),
        WhitespaceFilter(),
        RegexFilter(regex_pattern="^(.*?)\\s*$"),
        TakeFirstFilter(),
    )
    assert first_line(text) == ref == FILTERS["mmlu_generative"]["get_response"](text)


def test_fallback_and_take_first():
    assert strict_match("nothing") == "[invalid]"
    assert flexible_extract("") == "[invalid]"
    assert take_first(["a", "b"]) == "a"
    with pytest.raises(ValueError):
        take_first([])


REFERENCES = ["18", "1,234", "$1,234.", "paris", "B", "b.", "The answer is 7. #### 7", "7", "nul"]
OPTIONS = [
    {},
    {"ignore_case": True},
    {"ignore_punctuation": True},
    {"ignore_case": True, "ignore_punctuation": True},
    {"ignore_numbers": True},
    GSM8K_EXACT_MATCH,
    MMLU_GENERATIVE_EXACT_MATCH,
    {"regexes_to_ignore": ["\\s+"], "ignore_case": True},
]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_exact_match_equals_lm_eval(options):
    predictions = TRICKY + ["18", "1234", "Paris", "PARIS!", "b", "7", "$7.", "nul\x00"]
    matches = 0
    for pred, ref in itertools.product(predictions, REFERENCES):
        expected = exact_match_hf_evaluate(predictions=[pred], references=[ref], **options)["exact_match"]
        got = exact_match(pred, ref, **options)
        assert got == expected, (pred, ref)
        matches += got == 1.0
    assert matches > 0  # the table exercises agreement on hits, not only on misses
