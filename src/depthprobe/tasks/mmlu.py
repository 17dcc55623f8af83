"""MMLU in lm-eval's three formats: letters (``mmlu``), answer texts (``mmlu_continuation``),
generation (``mmlu_generative``).

Documents come from the ``all`` configuration of ``cais/mmlu`` (one record per question with
its ``subject``); lm-eval runs one task per subject, so the description and the ``first_n``
few-shot examples (from the ``dev`` split) are per subject, exactly as there.
"""

import difflib
import os
from collections.abc import Sequence
from typing import Any

from depthprobe.data import DatasetRef, load_split
from depthprobe.tasks.base import AnswerFilter, GenerationConfig, Task

__all__ = ["MMLU", "MMLUContinuation", "MMLUGenerative"]

LETTERS = ("A", "B", "C", "D")


class MMLU(Task):
    """lm-eval ``mmlu``: question, lettered options, "Answer:", choices " A" .. " D"."""

    name = "mmlu"
    dataset = DatasetRef("cais/mmlu", "all")
    test_split = "test"
    fewshot_split = "dev"
    _kind = "multiple choice questions"

    def __init__(self, subjects: str | Sequence[str] | None = None) -> None:
        self.subjects = [subjects] if isinstance(subjects, str) else (list(subjects) if subjects else None)

    def description(self, doc: dict[str, Any]) -> str:
        return f"The following are {self._kind} (with answers) about {doc['subject'].replace('_', ' ')}.\n\n"

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        c = doc["choices"]
        return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"

    def doc_to_choice(self, doc: dict[str, Any]) -> list[str]:
        return list(LETTERS)

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        return int(doc["answer"])

    def process_docs(self, docs: list) -> list:
        if self.subjects is None:
            return docs
        known = sorted({d["subject"] for d in docs})
        for s in self.subjects:
            if s not in known:
                close = difflib.get_close_matches(s, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(known)}"
                raise ValueError(f"unknown MMLU subject {s!r}{hint}")
        wanted = set(self.subjects)
        return [d for d in docs if d["subject"] in wanted]

    def fewshot_pool(self, doc: dict[str, Any], data_dir: str | os.PathLike[str] | None) -> Sequence:
        if not hasattr(self, "_dev_by_subject"):
            by: dict[str, list[dict[str, Any]]] = {}
            for d in load_split(self.dataset, self.fewshot_split, data_dir):
                by.setdefault(d["subject"], []).append(d)
            self._dev_by_subject = by
        return self._dev_by_subject.get(doc["subject"], [])


class MMLUContinuation(MMLU):
    """lm-eval ``mmlu_continuation``: "Question: ...\\nAnswer:" scored against the answer texts."""

    name = "mmlu_continuation"
    _kind = "questions"

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return f"Question: {doc['question'].strip()}\nAnswer:"

    def doc_to_choice(self, doc: dict[str, Any]) -> list[str]:
        return list(doc["choices"])


class MMLUGenerative(MMLU):
    """lm-eval ``mmlu_generative``: the letter prompt, greedy generation to the first newline, exact match."""

    name = "mmlu_generative"
    output_type = "generate_until"
    generation = GenerationConfig(
        until=("</s>", "\n"),
        filters=(
            AnswerFilter(
                "get_response",
                (("regex", r"^(.*?)(?=\n|$)"), ("remove_whitespace",), ("regex", r"^(.*?)\s*$"), ("take_first",)),
            ),
        ),
        ignore_case=True,
        ignore_punctuation=True,
    )

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        return LETTERS[int(doc["answer"])]
