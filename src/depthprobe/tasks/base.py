"""What a task is: documents, lm-eval's prompt template, choices or generation settings.

A task turns a dataset split into ``Instance`` objects (one per document) whose ``prompt``
is exactly the context string lm-eval 0.4.13 would build: description, then each few-shot
example as ``text + target_delimiter + answer + fewshot_delimiter``, then the document's text.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from depthprobe.data import DataFormatError, DatasetRef, Record, load_split, record_source
from depthprobe.evaluation.filters import regex_extract

__all__ = ["AnswerFilter", "GenerationConfig", "Instance", "Task"]

OutputType = Literal["multiple_choice", "generate_until"]


@dataclass(frozen=True)
class Instance:
    """One document ready to evaluate: the full prompt and the choices or target."""

    doc_id: int
    prompt: str
    target: int | str
    choices: tuple[str, ...] | None = None
    #: String put between the prompt and each choice when scoring (lm-eval ``target_delimiter``).
    target_delimiter: str = " "
    doc: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def continuations(self) -> list[str]:
        """The scored continuation of each choice, as lm-eval requests it."""
        assert self.choices is not None
        return [self.target_delimiter + c for c in self.choices]


@dataclass(frozen=True)
class AnswerFilter:
    """An lm-eval answer-extraction pipeline (``filter_list`` entry), declared and runnable.

    ``steps`` are lm-eval filter functions: ``("regex", pattern, group_select)``,
    ``("remove_whitespace",)`` (strip leading spaces) and ``("take_first",)``.
    """

    name: str
    steps: tuple[tuple[Any, ...], ...]
    fallback: str = "[invalid]"

    def apply(self, text: str) -> str:
        """The extracted answer for one generation, as lm-eval's filters compute it."""
        out = text
        for step in self.steps:
            kind = step[0]
            if kind == "regex":
                out = regex_extract(out, step[1], group_select=step[2] if len(step) > 2 else 0, fallback=self.fallback)
            elif kind == "remove_whitespace":
                out = out.lstrip()
            elif kind == "take_first":
                pass  # one generation per document: the first is the only one
            else:
                raise ValueError(f"unknown filter step {kind!r}; valid: regex, remove_whitespace, take_first")
        return out


@dataclass(frozen=True)
class GenerationConfig:
    """How a ``generate_until`` task decodes and scores (lm-eval ``generation_kwargs`` etc.)."""

    until: tuple[str, ...]
    filters: tuple[AnswerFilter, ...]
    max_gen_toks: int = 256
    ignore_case: bool = False
    ignore_punctuation: bool = False
    regexes_to_ignore: tuple[str, ...] = ()


def check_counts(limit: Any, num_fewshot: Any) -> int:
    """The one rule for ``limit`` (a positive integer or None) and shots (an integer >= 0); returns the shots."""
    k = num_fewshot
    if not isinstance(k, bool) and isinstance(k, int) and k < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {k}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"num_fewshot must be a whole number >= 0, got {k!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer number of documents, got {limit!r}")
    return k


class Task:
    """Base class: subclasses set the dataset and override the ``doc_to_*`` templates."""

    name: str = ""
    output_type: OutputType = "multiple_choice"
    dataset: DatasetRef | None = None
    test_split: str = "test"
    fewshot_split: str | None = None
    default_num_fewshot: int = 0
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    generation: GenerationConfig | None = None
    #: Metrics reported for multiple-choice tasks (all are always computed per sample).
    metric_names: tuple[str, ...] = ("acc", "acc_norm", "acc_token_norm")
    #: Who scores the task: "depthprobe" (its instances, through depthprobe's evaluator and
    #: the sweep engine) or "lm_eval" (the task evaluates itself with ``run``: lm-eval tasks).
    scorer: str = "depthprobe"

    def __init__(self, **options: Any) -> None:
        if options:
            raise ValueError(f"task {self.name!r} takes no options; got {', '.join(sorted(options))}")

    # --- templates (lm-eval doc_to_text / doc_to_choice / doc_to_target) -------------
    def doc_to_text(self, doc: dict[str, Any]) -> str:
        raise NotImplementedError

    def doc_to_choice(self, doc: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        raise NotImplementedError

    def description(self, doc: dict[str, Any]) -> str:
        return ""

    def fewshot_answer(self, doc: dict[str, Any]) -> str:
        """The answer text of a few-shot example (the gold choice, or the target string)."""
        target = self.doc_to_target(doc)
        if isinstance(target, int):
            return self.doc_to_choice(doc)[target]
        return target

    # --- documents ----------------------------------------------------------------------
    def process_docs(self, docs: list) -> list:
        return docs

    def _process(self, docs: list) -> list:
        """``process_docs``, with a record lacking a field named by file and line, and records rebuilt
        one for one keeping where they were read from."""
        try:
            out = self.process_docs(docs)
        except KeyError:
            for doc in docs:  # find the record: only on the error path
                try:
                    self.process_docs([doc])
                except KeyError:
                    self._read(lambda d: self.process_docs([d]), doc, "document")
                except Exception:  # noqa: BLE001 (another complaint about one record alone is not the error)
                    continue
            raise
        if len(out) == len(docs):
            for i, (new, old) in enumerate(zip(out, docs)):
                source = record_source(old)
                if source and isinstance(new, dict) and record_source(new) is None:
                    out[i] = Record(new)
                    out[i].source = source
        return out

    def test_docs(self, data_dir: str | os.PathLike[str] | None) -> list:
        assert self.dataset is not None
        return self._process(load_split(self.dataset, self.test_split, data_dir))

    def fewshot_pool(self, doc: dict[str, Any], data_dir: str | os.PathLike[str] | None) -> Sequence:
        """The documents few-shot examples for ``doc`` are drawn from, in sampling order."""
        if self.fewshot_split is None:
            return []
        assert self.dataset is not None
        if not hasattr(self, "_pool_cache"):
            self._pool_cache = self._process(load_split(self.dataset, self.fewshot_split, data_dir))
        return self._pool_cache

    def fewshot_examples(
        self, doc: dict[str, Any], k: int, doc_index: int, data_dir: str | os.PathLike[str] | None
    ) -> Sequence:
        """The ``k`` examples shown before ``doc`` (lm-eval's ``first_n`` sampler by default)."""
        pool = self.fewshot_pool(doc, data_dir)
        if k > len(pool):
            raise ValueError(
                f"num_fewshot={k} exceeds the {len(pool)} few-shot examples task {self.name!r} has for this document"
            )
        return pool[:k]

    def build_prompt(self, doc: dict[str, Any], shots: Sequence) -> str:
        """lm-eval's plain-text ``fewshot_context``: description + shots + document text."""
        parts = [self._read(self.description, doc, "document")]
        for shot in shots:
            parts.append(
                self._read(self.doc_to_text, shot, "few-shot example")
                + self.target_delimiter
                + self._read(self.fewshot_answer, shot, "few-shot example")
                + self.fewshot_delimiter
            )
        parts.append(self._read(self.doc_to_text, doc, "document"))
        return "".join(parts)

    def _read(self, fn: Any, doc: dict[str, Any], what: str, index: int | None = None) -> Any:
        """``fn(doc)``, with a record that lacks a field or holds a wrong value named by file and line."""
        try:
            return fn(doc)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
            if isinstance(err, DataFormatError):
                raise
            where = record_source(doc) or (f"{what} {index}" if index is not None else what)
            fields = ", ".join(sorted(map(str, doc))) if isinstance(doc, dict) else type(doc).__name__
            if isinstance(err, KeyError):
                problem = f"the record has no field {err.args[0]!r}"
            else:
                problem = f"a field holds a value the task cannot read ({type(err).__name__}: {err})"
            raise DataFormatError(
                f"{where}: {problem}, which task {self.name!r} needs; the record has: {fields}"
            ) from None

    def instances(
        self,
        *,
        limit: int | None = None,
        num_fewshot: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> list[Instance]:
        """The first ``limit`` documents of the test split as ready-to-score instances."""
        k = check_counts(limit, self.default_num_fewshot if num_fewshot is None else num_fewshot)
        docs = self.test_docs(data_dir)
        if not docs:
            raise ValueError(f"task {self.name!r}: the dataset has no documents")
        docs = docs[:limit] if limit is not None else docs
        out = []
        for i, doc in enumerate(docs):
            shots = self.fewshot_examples(doc, k, i, data_dir) if k else []
            prompt = self.build_prompt(doc, shots)
            target = self._read(self.doc_to_target, doc, "document", i)
            choices = None
            if self.output_type == "multiple_choice":
                choices = tuple(self._read(self.doc_to_choice, doc, "document", i))
                if len(choices) < 2:
                    raise ValueError(
                        f"task {self.name!r} document {i} has {len(choices)} choice(s); "
                        "multiple choice needs at least 2"
                    )
                if not (isinstance(target, int) and 0 <= target < len(choices)):
                    raise ValueError(f"task {self.name!r} document {i}: target {target!r} is not a choice index")
            out.append(Instance(i, prompt, target, choices, self.target_delimiter, doc))
        return out
