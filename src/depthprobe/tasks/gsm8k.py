"""GSM8K: lm-eval ``gsm8k`` ("Question: ...\\nAnswer:", ``#### N``) and ``gsm8k_cot``
("Q: ...\\nA:", the first k of Wei et al.'s 8 chain-of-thought exemplars, k in {1, 4, 8}).

Both are greedy-generation tasks; their stop sequences, answer filters and exact-match
options are lm-eval 0.4.13's.
"""

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from depthprobe.data import DatasetRef, resolve_data_dir
from depthprobe.tasks.base import AnswerFilter, GenerationConfig, Task

__all__ = ["GSM8K", "GSM8KCoT", "COT_EXEMPLARS"]

_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
_FLEXIBLE = AnswerFilter("flexible-extract", (("regex", r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1), ("take_first",)))

# Wei et al. 2022, Table 20: the exemplars lm-eval's gsm8k_cot uses (fewshot_config.samples, first_n).
COT_EXEMPLARS: tuple[dict[str, str], ...] = (
    {
        "question": "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are "
        "done, there will be 21 trees. How many trees did the grove workers plant today?",
        "target": "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must "
        "have been 21 - 15 = 6. The answer is 6.",
    },
    {
        "question": "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "target": "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    },
    {
        "question": "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in "
        "total?",
        "target": "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After "
        "eating 35, they had 74 - 35 = 39. The answer is 39.",
    },
    {
        "question": "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
        "lollipops did Jason give to Denny?",
        "target": "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 "
        "= 8. The answer is 8.",
    },
    {
        "question": "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does "
        "he have now?",
        "target": "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + "
        "4 = 9. The answer is 9.",
    },
    {
        "question": "There were nine computers in the server room. Five more computers were installed each day, from "
        "monday to thursday. How many computers are now in the server room?",
        "target": "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
        "computers were added. 9 + 20 is 29. The answer is 29.",
    },
    {
        "question": "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How "
        "many golf balls did he have at the end of wednesday?",
        "target": "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 "
        "more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    },
    {
        "question": "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "target": "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 "
        "dollars left. 23 - 15 is 8. The answer is 8.",
    },
)


class GSM8K(Task):
    """lm-eval ``gsm8k``: 5 shots drawn from train by ``random.Random(1234)`` in document order."""

    name = "gsm8k"
    output_type = "generate_until"
    dataset = DatasetRef("openai/gsm8k", "main")
    test_split = "test"
    fewshot_split = "train"
    default_num_fewshot = 5
    generation = GenerationConfig(
        until=("Question:", "</s>", "<|im_end|>"),
        filters=(AnswerFilter("strict-match", (("regex", r"#### (\-?[0-9\.\,]+)"), ("take_first",))), _FLEXIBLE),
        ignore_case=True,
        regexes_to_ignore=_IGNORE,
    )

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return f"Question: {doc['question']}\nAnswer:"

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        return doc["answer"]

    def fewshot_examples(
        self, doc: dict[str, Any], k: int, doc_index: int, data_dir: str | os.PathLike[str] | None
    ) -> Sequence:
        # lm-eval's default sampler: one Random(1234) consumed in document order.
        pool = self.fewshot_pool(doc, data_dir)
        if k > len(pool):
            raise ValueError(f"num_fewshot={k} exceeds the {len(pool)} few-shot examples of task {self.name!r}")
        if doc_index == 0 or not hasattr(self, "_rnd"):
            self._rnd = random.Random(1234)
        return self._rnd.sample(list(pool), k)


class GSM8KCoT(Task):
    """lm-eval ``gsm8k_cot``: "Q: ...\\nA:" after the first k fixed exemplars (default 8)."""

    name = "gsm8k_cot"
    output_type = "generate_until"
    dataset = DatasetRef("openai/gsm8k", "main")
    test_split = "test"
    default_num_fewshot = 8
    generation = GenerationConfig(
        until=("Q:", "</s>", "<|im_end|>"),
        filters=(
            AnswerFilter("strict-match", (("regex", r"The answer is (\-?[0-9\.\,]+)."), ("take_first",))),
            _FLEXIBLE,
        ),
        ignore_case=True,
        regexes_to_ignore=_IGNORE,
    )

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        return f"Q: {doc['question']}\nA:"

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        return doc["answer"].split("####")[-1].strip() if "answer" in doc else doc["target"]

    def fewshot_answer(self, doc: dict[str, Any]) -> str:
        return doc["target"]

    def fewshot_pool(self, doc: dict[str, Any], data_dir: str | os.PathLike[str] | None) -> Sequence:
        local = resolve_data_dir(data_dir)
        path = Path(local, "gsm8k", "gsm8k_cot_8shot_exemplars.json") if local is not None else None
        if path is not None and path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))["exemplars"]
        return COT_EXEMPLARS
