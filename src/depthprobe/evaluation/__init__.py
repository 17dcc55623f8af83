"""The evaluator's low-level pieces, agreeing with lm-eval: tokenization, log-likelihood scoring, greedy
decoding and its stop rules, answer filters, chat templates, metrics, and ``EvalResult``.

``evaluate`` (which looks tasks up by name, so it sits above :mod:`depthprobe.tasks`) lives in
:mod:`depthprobe.evaluator`.
"""

from depthprobe.evaluation.generation import Generation, generate_until, greedy_generate
from depthprobe.evaluation.loglikelihood import DocScores, score_choices
from depthprobe.evaluation.result import EvalResult

__all__ = ["DocScores", "EvalResult", "Generation", "generate_until", "greedy_generate", "score_choices"]
