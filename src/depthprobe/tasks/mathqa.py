"""MathQA (lm-eval ``mathqa``): "Question: {Problem}\\nAnswer:" over the five parsed options."""

import re
from typing import Any

from depthprobe.data import DatasetRef
from depthprobe.tasks.base import Task

__all__ = ["MathQA"]


class MathQA(Task):
    name = "mathqa"
    dataset = DatasetRef("regisss/math_qa")
    test_split = "test"
    fewshot_split = "train"

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return f"Question: {doc['Problem']}\nAnswer:"

    def doc_to_choice(self, doc: dict[str, Any]) -> list[str]:
        # lm-eval's regex; a malformed options string yields fewer than 5 choices (caught later).
        return [c[4:].rstrip(" ,") for c in re.findall(r"[abcd] \) .*?, |e \) .*?$", doc["options"])]

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        return ["a", "b", "c", "d", "e"].index(doc["correct"])
