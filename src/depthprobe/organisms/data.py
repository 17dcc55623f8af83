"""Seeded generators of the organisms' synthetic documents, one family per study task family.

Every function is a pure function of its seed, so training data and evaluation documents are
reproducible. Evaluation documents are dicts in lm-eval's vocabulary: ``context`` (the prompt),
``choices`` with ``target_delimiter`` (what goes between context and choice: ``" "`` as in
lm-eval's multiple choice, ``""`` for key-value retrieval as in Bick et al. 2025) and ``gold``
(index of the right choice); generation tasks carry ``answer`` (the number, as a string).

Families:
- knowledge: invented facts ("The capital of Velmora is Tusk.") learned in training.
- closed book: the same facts asked as questions ("Question: What is the capital of Velmora?\\nAnswer:").
- open book: facts about other invented countries given only in the prompt.
- retrieval: in-context key-value lookup in exactly the ``kv_retrieval`` format.
- reasoning: short multi-step arithmetic word problems with a chain of thought (gsm8k_cot format).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = [
    "FAMILIES",
    "TRAINING_FAMILIES",
    "RELATIONS",
    "Fact",
    "RETRIEVAL_KEYS",
    "closedbook_docs",
    "corpus_for_vocabulary",
    "facts",
    "gsm8k_cot_prompt",
    "knowledge_docs",
    "openbook_docs",
    "reasoning_docs",
    "reasoning_fewshot",
    "retrieval_docs",
    "retrieval_prompt",
    "training_example",
]

FAMILIES = ("knowledge", "closedbook", "openbook", "retrieval", "reasoning")
TRAINING_FAMILIES = ("statement", "closedbook", "openbook", "retrieval", "reasoning", "long_reasoning")

#: relation name -> (statement stem, question)
RELATIONS: dict[str, tuple[str, str]] = {
    "capital": ("The capital of {s} is", "What is the capital of {s}?"),
    "river": ("The longest river of {s} is the", "What is the longest river of {s}?"),
    "currency": ("The currency of {s} is the", "What is the currency of {s}?"),
}
N_COUNTRIES = 40  # learned (closed-book) countries: 40 x 3 = 120 facts
N_OPEN_COUNTRIES = 30  # countries only ever described in the prompt
N_OPEN_VALUES = 60
N_CHOICES = 4

_ONSETS = "b br d dr f g gr k kr l m n p pr r s st t tr v z th sh qu".split()
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "x"]

RETRIEVAL_KEYS: tuple[str, ...] = tuple(
    """apple river stone cloud garden window candle mirror forest pencil silver rocket
    castle butter engine island ladder marble needle orange pillow rabbit saddle tunnel
    violin wagon anchor basket bottle bridge camera carpet circle copper desert dragon
    feather finger flower ginger hammer helmet jacket kettle lemon lizard magnet meadow
    monkey number ocean paper parrot pepper planet pocket puzzle ribbon salmon shadow
    shovel signal spider spring summer table ticket tiger timber tomato tower travel
    turtle valley velvet walnut winter wizard yellow button cactus cobalt cotton crystal
    dinner falcon fabric glove harbor honey insect jungle kitten lantern melon mountain
    napkin pirate quartz radish saucer sponge thunder trumpet umbrella vessel whistle""".split()
)

_NAMES = (
    "Mila Tom Ana Ben Lila Omar Nina Sam Ravi Zoe Leo Ivy Max Ella Finn Maya Hugo Lena Owen Ruby Theo Iris Noah Cleo"
).split()
_ITEMS = (
    "apples pears coins stamps marbles shells books cards pencils cookies eggs plums buttons stickers rocks beads"
).split()
_ADD = ("buys {n} more", "finds {n} more", "gets {n} more", "picks {n} more")
_SUB = ("eats {n}", "gives away {n}", "loses {n}", "sells {n}")


def _pseudo_words(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words: list[str] = []
    seen = set(RETRIEVAL_KEYS) | {w.lower() for w in _NAMES + _ITEMS}
    while len(words) < count:
        n_syll = rng.choice((2, 2, 3))
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syll)) + rng.choice(_CODAS)
        if 4 <= len(w) <= 9 and w not in seen:
            seen.add(w)
            words.append(w.capitalize())
    return words


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    answer: str

    def statement(self) -> str:
        return RELATIONS[self.relation][0].format(s=self.subject)

    def question(self) -> str:
        return RELATIONS[self.relation][1].format(s=self.subject)


@cache
def _world() -> dict[str, Any]:
    words = _pseudo_words(N_COUNTRIES * 4 + N_OPEN_COUNTRIES + N_OPEN_VALUES, seed=20251002)
    countries, rest = words[:N_COUNTRIES], words[N_COUNTRIES:]
    answers = {}
    for rel in RELATIONS:
        answers[rel], rest = rest[:N_COUNTRIES], rest[N_COUNTRIES:]
    open_countries, rest = rest[:N_OPEN_COUNTRIES], rest[N_OPEN_COUNTRIES:]
    open_values = rest[:N_OPEN_VALUES]
    learned = tuple(Fact(rel, country, answers[rel][i]) for i, country in enumerate(countries) for rel in RELATIONS)
    return {"facts": learned, "answers": answers, "open_countries": open_countries, "open_values": open_values}


def facts() -> tuple[Fact, ...]:
    """The fixed set of invented facts learned in training (closed-book knowledge)."""
    return _world()["facts"]


def _choices(gold: str, pool: list[str], rng: random.Random) -> tuple[list[str], int]:
    distractors = rng.sample([a for a in pool if a != gold], N_CHOICES - 1)
    idx = rng.randrange(N_CHOICES)
    return distractors[:idx] + [gold] + distractors[idx:], idx


def _question(q: str) -> str:
    return f"Question: {q}\nAnswer:"


def knowledge_docs(seed: int = 0) -> list[dict[str, Any]]:
    """Every learned fact as multiple choice on its statement ("The capital of Velmora is" -> " Tusk").

    ``answer`` (with ``target_delimiter``) is the continuation for continuation/generation scoring.
    """
    rng = random.Random(seed)
    docs = []
    for i, f in enumerate(facts()):
        choices, gold = _choices(f.answer, _world()["answers"][f.relation], rng)
        docs.append(
            {
                "doc_id": i,
                "family": "knowledge",
                "relation": f.relation,
                "subject": f.subject,
                "context": f.statement(),
                "choices": choices,
                "gold": gold,
                "answer": f.answer,
                "target_delimiter": " ",
            }
        )
    return docs


def closedbook_docs(seed: int = 0) -> list[dict[str, Any]]:
    """The learned facts asked as bare questions: the model must know them (closed book)."""
    rng = random.Random(seed + 1)
    docs = []
    for i, f in enumerate(facts()):
        choices, gold = _choices(f.answer, _world()["answers"][f.relation], rng)
        docs.append(
            {
                "doc_id": i,
                "family": "closedbook",
                "relation": f.relation,
                "subject": f.subject,
                "question": _question(f.question()),
                "evidence": "",
                "context": _question(f.question()),
                "choices": choices,
                "gold": gold,
                "answer": f.answer,
                "target_delimiter": " ",
            }
        )
    return docs


def _openbook_doc(rng: random.Random) -> dict[str, Any]:
    w = _world()
    subj, other = rng.sample(w["open_countries"], 2)
    rel, rel2 = rng.choice(list(RELATIONS)), rng.choice(list(RELATIONS))
    answer, other_answer = rng.sample(w["open_values"], 2)
    lines = [
        f"Fact: {RELATIONS[rel][0].format(s=subj)} {answer}.",
        f"Fact: {RELATIONS[rel2][0].format(s=other)} {other_answer}.",
    ]
    if rng.random() < 0.5:
        lines.reverse()
    evidence = "\n".join(lines) + "\n"
    question = _question(RELATIONS[rel][1].format(s=subj))
    choices, gold = _choices(answer, [v for v in w["open_values"] if v != other_answer], rng)
    return {
        "family": "openbook",
        "relation": rel,
        "subject": subj,
        "evidence": evidence,
        "question": question,
        "context": evidence + question,
        "choices": choices,
        "gold": gold,
        "answer": answer,
        "target_delimiter": " ",
    }


def openbook_docs(n: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Questions about invented facts that appear only in the prompt (``evidence``), open book.

    The evidence holds the relevant fact and one distractor fact about another country;
    ``question`` alone is the closed-book variant of the same document (chance for any model).
    """
    rng = random.Random(f"openbook-eval-{seed}")
    return [{"doc_id": i, **_openbook_doc(rng)} for i in range(n)]


def retrieval_prompt(pairs: list[tuple[str, int]], query: str) -> str:
    """The kv_retrieval prompt (Bick et al. 2025): the value follows with no leading space."""
    lines = "\n".join(f"{k}:{v}" for k, v in pairs)
    return f"Memorize the following dictionary:\n{lines}\nThe value of the key '{query}' is"


def _retrieval_doc(rng: random.Random, n_pairs: int) -> dict[str, Any]:
    keys = rng.sample(RETRIEVAL_KEYS, n_pairs)
    values = rng.sample(range(100), n_pairs)
    gold = rng.randrange(n_pairs)
    return {
        "family": "retrieval",
        "keys": keys,
        "values": values,
        "query": keys[gold],
        "context": retrieval_prompt(list(zip(keys, values)), keys[gold]),
        "choices": [str(v) for v in values],
        "gold": gold,
        "answer": str(values[gold]),
        "target_delimiter": "",
    }


def retrieval_docs(n: int = 200, n_pairs: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """Key-value retrieval documents; all ``n_pairs`` values are the choices (chance = 1/n_pairs)."""
    if not 2 <= n_pairs <= len(RETRIEVAL_KEYS):
        raise ValueError(f"n_pairs must be in 2..{len(RETRIEVAL_KEYS)}, got {n_pairs}")
    rng = random.Random(f"retrieval-eval-{n_pairs}-{seed}")
    return [{"doc_id": i, **_retrieval_doc(rng, n_pairs)} for i in range(n)]


#: Operations per problem: base training sees 2-3, distillation also 4; evaluation mixes all three.
BASE_OPS, LONG_OPS, EVAL_OPS = (2, 3), (4,), (2, 2, 3, 3, 4)


def _reasoning_doc(rng: random.Random, ops: tuple[int, ...] = EVAL_OPS) -> dict[str, Any]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    total = rng.randint(2, 12)
    q = [f"{name} has {total} {item}."]
    cot = [f"{name} starts with {total} {item}."]
    n_ops = rng.choice(ops)
    for step in range(n_ops):
        if total > 1 and rng.random() < 0.5:
            n = rng.randint(1, min(6, total - 1))
            verb, new, sign = rng.choice(_SUB).format(n=n), total - n, "-"
        else:
            n = rng.randint(1, 6)
            verb, new, sign = rng.choice(_ADD).format(n=n), total + n, "+"
        q.append(f"{'Then ' if step else ''}{name} {verb} {item}.")
        cot.append(f"{total} {sign} {n} = {new}.")
        total = new
    q.append(f"How many {item} does {name} have now?")
    cot.append(f"The answer is {total}.")
    question = " ".join(q)
    return {
        "family": "reasoning",
        "question": question,
        "context": f"Q: {question}\nA:",
        "cot": " ".join(cot),
        "answer": str(total),
        "n_steps": n_ops,
    }


def reasoning_fewshot(k: int = 8) -> list[dict[str, Any]]:
    """Fixed chain-of-thought exemplars (the organisms' counterpart of gsm8k_cot's 8 exemplars)."""
    if not 0 <= k <= 8:
        raise ValueError(f"k must be in 0..8 (there are 8 exemplars), got {k}")
    rng = random.Random("reasoning-fewshot")
    return [_reasoning_doc(rng) for _ in range(8)][:k]


def reasoning_docs(n: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Arithmetic word problems; ``answer`` is the number, ``cot`` the reference chain of thought.

    Two in five problems take 2 operations, two in five 3, one in five 4 (``n_steps``). Base
    training never shows a 4-step chain; distillation does (the study's longer reasoning traces).
    """
    rng = random.Random(f"reasoning-eval-{seed}")
    return [{"doc_id": i, **_reasoning_doc(rng)} for i in range(n)]


def gsm8k_cot_prompt(doc: dict[str, Any], shots: list[dict[str, Any]] = ()) -> str:
    """The gsm8k_cot prompt: "Q: ...\\nA: <cot>" exemplars joined by a blank line, then "Q: ...\\nA:"."""
    parts = [f"Q: {s['question']}\nA: {s['cot']}" for s in shots]
    return "\n\n".join(parts + [f"Q: {doc['question']}\nA:"])


# ---------------------------------------------------------------------------------------
# Training examples: a list of (text, has_loss) segments; concatenated they form the document.


@cache
def _held_out() -> frozenset[str]:
    """Evaluation questions and contexts (default seeds) that training never shows."""
    held = {d["question"] for d in reasoning_docs(500)} | {d["question"] for d in reasoning_fewshot()}
    held |= {d["context"] for n in (4, 8, 12) for d in retrieval_docs(500, n)}
    held |= {d["context"] for d in openbook_docs(500)}
    return frozenset(held)


def training_example(family: str, rng: random.Random) -> list[tuple[str, bool]]:
    """One training document of ``family`` as (text, has_loss) segments (loss on answers only).

    Families: ``TRAINING_FAMILIES``; "reasoning" has 2-3 operations, "long_reasoning" 4.
    """
    if family in ("statement", "closedbook"):
        f = rng.choice(facts())
        if family == "statement":
            return [(f.statement(), False), (f" {f.answer}.", True)]
        return [(_question(f.question()), False), (f" {f.answer}", True)]
    while True:
        if family == "openbook":
            d = _openbook_doc(rng)
            segs = [(d["context"], False), (f" {d['answer']}", True)]
        elif family == "retrieval":
            d = _retrieval_doc(rng, rng.randint(2, 10))
            segs = [(d["context"], False), (d["answer"], True)]
            # Extra queries on the same dictionary: more answer tokens per document.
            for _ in range(rng.randint(4, 8)):
                j = rng.randrange(len(d["keys"]))
                segs += [(f"\nThe value of the key '{d['keys'][j]}' is", False), (str(d["values"][j]), True)]
        elif family in ("reasoning", "long_reasoning"):
            ops = BASE_OPS if family == "reasoning" else LONG_OPS
            d = _reasoning_doc(rng, ops)
            k = rng.choice((0, 0, 0, 0, 0, 1))
            shots = [_reasoning_doc(rng, ops) for _ in range(k)]
            segs = []
            for s in shots:
                segs += [(f"Q: {s['question']}\nA:", False), (f" {s['cot']}", True), ("\n\n", False)]
            segs += [(d["context"], False), (f" {d['cot']}", True)]
        else:
            raise ValueError(f"unknown family {family!r}; valid: {', '.join(TRAINING_FAMILIES)}")
        if d.get("question", d["context"]) not in _held_out() and d["context"] not in _held_out():
            return segs


def corpus_for_vocabulary() -> list[str]:
    """Texts covering every word the generators can produce (the tokenizer's vocabulary)."""
    w = _world()
    texts = [f"{f.statement()} {f.answer}. {_question(f.question())} {f.answer}\n" for f in facts()]
    texts += [
        f"Fact: {RELATIONS[r][0].format(s=c)} {v}.\n{_question(RELATIONS[r][1].format(s=c))} {v}"
        for r in RELATIONS
        for c in w["open_countries"]
        for v in w["open_values"][:1]
    ]
    texts += [" ".join(w["open_values"])]
    texts += [retrieval_prompt([(k, i) for i, k in enumerate(RETRIEVAL_KEYS)], k) for k in RETRIEVAL_KEYS[:1]]
    texts += [f"'{k}'" for k in RETRIEVAL_KEYS]
    for name in _NAMES:
        for item in _ITEMS:
            texts.append(
                f"Q: {name} has 3 {item}. Then {name} {' '.join(a.format(n=1) for a in _ADD + _SUB)} "
                f"{item}. How many {item} does {name} have now?\nA: {name} starts with 3 {item}. "
                "3 + 1 = 4. 4 - 1 = 3. The answer is 3.\n\n"
            )
    return texts
