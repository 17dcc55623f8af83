"""The model organisms' synthetic tasks, usable on any model (``depthprobe.organisms.data``).

- ``organism_knowledge``: learned invented facts, multiple choice on the statement.
- ``organism_closedbook``: the same facts asked as "Question: ...\\nAnswer:", multiple choice;
  ``organism_closedbook_generative``: the same questions answered by greedy generation.
- ``organism_openbook``: facts given only in the prompt, then the question (open book).
- ``organism_retrieval``: key-value retrieval in exactly the ``kv_retrieval`` format.
- ``organism_reasoning``: arithmetic word problems of 2, 3 or 4 steps (4 only in organism-distilled's
  training), gsm8k_cot format, greedy generation and gsm8k_cot's answer extraction.
"""

import os
from collections.abc import Sequence
from typing import Any

from depthprobe.organisms import data
from depthprobe.tasks.base import AnswerFilter, GenerationConfig, Task
from depthprobe.tasks.gsm8k import GSM8KCoT

__all__ = [
    "OrganismClosedBook",
    "OrganismClosedBookGenerative",
    "OrganismKnowledge",
    "OrganismOpenBook",
    "OrganismReasoning",
    "OrganismRetrieval",
]


class _SyntheticChoice(Task):
    """Multiple choice over the generator's ``context`` / ``choices`` / ``gold`` documents."""

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return doc["context"]

    def doc_to_choice(self, doc: dict[str, Any]) -> list[str]:
        return list(doc["choices"])

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        return int(doc["gold"])


class OrganismKnowledge(_SyntheticChoice):
    """Invented facts learned in training, scored as a statement's continuation among 4 choices."""

    name = "organism_knowledge"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def test_docs(self, data_dir: str | os.PathLike[str] | None) -> list:
        return data.knowledge_docs(self.seed)


class OrganismClosedBook(_SyntheticChoice):
    """The learned facts asked as bare questions: the model must recall them."""

    name = "organism_closedbook"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def test_docs(self, data_dir: str | os.PathLike[str] | None) -> list:
        return data.closedbook_docs(self.seed)


class OrganismClosedBookGenerative(Task):
    """The closed-book questions answered by greedy generation, exact match on the first line."""

    name = "organism_closedbook_generative"
    output_type = "generate_until"
    generation = GenerationConfig(
        until=("\n", "."),
        filters=(AnswerFilter("first-line", (("remove_whitespace",), ("take_first",))),),
        max_gen_toks=8,
        ignore_case=True,
        ignore_punctuation=True,
    )

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def test_docs(self, data_dir: str | os.PathLike[str] | None) -> list:
        return data.closedbook_docs(self.seed)

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return doc["context"]

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        return doc["answer"]


class OrganismOpenBook(_SyntheticChoice):
    """Facts given only in the prompt (with a distractor fact), then the question."""

    name = "organism_openbook"

    def __init__(self, n_examples: int = 200, seed: int = 0) -> None:
        self.n_examples, self.seed = n_examples, seed

    def test_docs(self, data_dir: str | os.PathLike[str] | None) -> list:
        return data.openbook_docs(self.n_examples, self.seed)


class OrganismRetrieval(_SyntheticChoice):
    """In-context key-value lookup; all ``n_pairs`` values are the choices (chance 1/n_pairs)."""

    name = "organism_retrieval"
    target_delimiter = ""

    def __init__(self, n_pairs: int = 8, n_examples: int = 200, seed: int = 0) -> None:
        self.n_pairs, self.n_examples, self.seed = n_pairs, n_examples, seed
        data.retrieval_docs(1, n_pairs, seed)  # validate the options now

    def test_docs(self, data_dir: str | os.PathLike[str] | None) -> list:
        return data.retrieval_docs(self.n_examples, self.n_pairs, self.seed)


class OrganismReasoning(Task):
    """Arithmetic word problems with chain of thought, gsm8k_cot's prompt, stops and extraction."""

    name = "organism_reasoning"
    output_type = "generate_until"
    default_num_fewshot = 0
    fewshot_delimiter = "\n\n"
    generation = GenerationConfig(
        until=GSM8KCoT.generation.until,
        filters=GSM8KCoT.generation.filters,
        max_gen_toks=96,
        ignore_case=True,
        regexes_to_ignore=GSM8KCoT.generation.regexes_to_ignore,
    )

    def __init__(self, n_examples: int = 200, seed: int = 0) -> None:
        self.n_examples, self.seed = n_examples, seed

    def test_docs(self, data_dir: str | os.PathLike[str] | None) -> list:
        return data.reasoning_docs(self.n_examples, self.seed)

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return f"Q: {doc['question']}\nA:"

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        return doc["answer"]

    def fewshot_answer(self, doc: dict[str, Any]) -> str:
        return doc["cot"]

    def fewshot_pool(self, doc: dict[str, Any], data_dir: str | os.PathLike[str] | None) -> Sequence:
        return data.reasoning_fewshot(8)
