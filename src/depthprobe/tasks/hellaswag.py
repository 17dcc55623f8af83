"""HellaSwag (lm-eval ``hellaswag``): sentence completion over four endings, validation split."""

import re
from typing import Any

from depthprobe.data import DatasetRef
from depthprobe.tasks.base import Task

__all__ = ["HellaSwag", "preprocess"]


def preprocess(text: str) -> str:
    """lm-eval's HellaSwag text clean-up (WikiHow ``[title]`` and bracket artifacts)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


class HellaSwag(Task):
    """Context ``activity_label: ctx_a Ctx_b``; the four preprocessed endings are the choices."""

    name = "hellaswag"
    dataset = DatasetRef("Rowan/hellaswag")
    test_split = "validation"
    fewshot_split = "train"

    def process_docs(self, docs: list) -> list:
        out = []
        for doc in docs:
            ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
            out.append(
                {
                    **doc,
                    "query": preprocess(doc["activity_label"] + ": " + ctx),
                    "choices": [preprocess(e) for e in doc["endings"]],
                    "gold": int(doc["label"]),
                }
            )
        return out

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return doc["query"]

    def doc_to_choice(self, doc: dict[str, Any]) -> list[str]:
        return doc["choices"]

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        return int(doc["label"])
