"""Per-sample metrics and their aggregation, as lm-eval 0.4.13 defines them.

``acc``: argmax of the summed log-likelihoods; ``acc_norm``: argmax after dividing by each
choice's length in characters; ``acc_token_norm``: argmax of the mean per-token log-prob.
Ties go to the first choice (``numpy.argmax``). Standard errors are lm-eval's
``mean_stderr``: sample standard deviation over ``sqrt(n)``.
"""

import math
from collections.abc import Sequence

import numpy as np

from depthprobe.evaluation.filters import exact_match as exact_match_score

__all__ = ["choice_predictions", "exact_match", "mean_stderr"]


def choice_predictions(
    loglikelihoods: Sequence[float], choices: Sequence[str], n_tokens: Sequence[int]
) -> dict[str, int]:
    """Predicted choice index under each multiple-choice metric."""
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    chars = np.asarray([float(len(c)) for c in choices])
    toks = np.asarray([float(n) for n in n_tokens])
    return {
        "acc": int(np.argmax(lls)),
        "acc_norm": int(np.argmax(lls / chars)),
        "acc_token_norm": int(np.argmax(lls / toks)),
    }


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean (lm-eval ``mean_stderr``); NaN for fewer than two samples."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def exact_match(
    prediction: str,
    reference: str,
    *,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    regexes_to_ignore: Sequence[str] = (),
) -> bool:
    """lm-eval's ``exact_match`` for one pair, as a bool.

    The rule lives in :func:`depthprobe.evaluation.filters.exact_match`.
    """
    return (
        exact_match_score(
            prediction,
            reference,
            ignore_case=ignore_case,
            ignore_punctuation=ignore_punctuation,
            regexes_to_ignore=list(regexes_to_ignore),
        )
        == 1.0
    )
