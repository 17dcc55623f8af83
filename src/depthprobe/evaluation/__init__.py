"""The evaluator: log-likelihood scoring and greedy generation of registered tasks, agreeing with lm-eval."""

from depthprobe.evaluation.api import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
