"""OpenBookQA closed book (lm-eval ``openbookqa``: the bare question stem) and open book
(``openbookqa_open``: the ``fact1`` evidence line of the ``additional`` configuration, a newline,
then the question stem), so retrieval from context can be contrasted with recall."""

from typing import Any

from depthprobe.data import DatasetRef
from depthprobe.tasks.base import Task

__all__ = ["OpenBookQA", "OpenBookQAOpen"]


class OpenBookQA(Task):
    name = "openbookqa"
    dataset = DatasetRef("allenai/openbookqa", "main")
    test_split = "test"
    fewshot_split = "train"

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return doc["question_stem"]

    def doc_to_choice(self, doc: dict[str, Any]) -> list[str]:
        return list(doc["choices"]["text"])

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        return list(doc["choices"]["label"]).index(doc["answerKey"].lstrip())


class OpenBookQAOpen(OpenBookQA):
    name = "openbookqa_open"
    dataset = DatasetRef("allenai/openbookqa", "additional")

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return f"{doc['fact1']}\n{doc['question_stem']}"
