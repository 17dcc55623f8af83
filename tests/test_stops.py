"""StopWatch stops every row where StopPolicy.is_done, checked at every step, stops it (the naive rule).

Token sequences are random ids of three real tokenizers (byte-level BPE of the tiny models, with
multi-byte characters split across tokens; stories260K's SentencePiece with byte fallback; the
organisms' word-level tokenizer), with stop strings spliced in at random places, one of them
longer than the window, with and without a think-end; EOS ids end rows too. Each test asserts that
the stops it is about really occur, so it cannot pass vacuously.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from depthprobe.evaluation.stops import WHOLE_EVERY, StopPolicy, StopWatch
from depthprobe.tiny import make_tokenizer

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"


def tokenizers() -> list:
    from transformers import AutoTokenizer

    from depthprobe.organisms import CHECKPOINTS_DIR

    found = [("byte-level BPE", make_tokenizer())]
    found.append(("organisms", AutoTokenizer.from_pretrained(CHECKPOINTS_DIR / "organism-base")))
    if STORIES.is_dir():
        found.append(("stories260K", AutoTokenizer.from_pretrained(STORIES)))
    return found


def naive(policy: StopPolicy, tokens: list[int]) -> int | None:
    """The per-step rule: the first prefix length at which is_done holds."""
    return next((m for m in range(1, len(tokens) + 1) if policy.is_done(tokens[:m])), None)


def watched(policy: StopPolicy, tokens: list[int], budget: int) -> tuple[int | None, int]:
    """What the decode loop keeps of a row fed ``tokens`` one at a time under StopWatch (None: runs to budget),
    and how many tokens it had when it found that out."""
    watch, out = StopWatch(policy), []
    for tok in tokens[:budget]:
        out.append(tok)
        keep = watch.done_at(0, out, final=len(out) >= budget)
        if keep is not None:
            return keep, len(out)
    return None, len(out)


def round_trips(tok, text: str) -> bool:
    return tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=True) == text


@pytest.mark.parametrize("name,tok", tokenizers(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("think", [False, True])
def test_stopwatch_stops_where_every_step_checking_stops(name: str, tok, think: bool) -> None:
    rng = random.Random(0)
    stops = ("\n\n", "Question:", "The end. And then, after all of that, they lived happily ever after")
    think_end = next(t for t in ("</think>", "Answer:") if round_trips(tok, t)) if think else None
    policy = StopPolicy(frozenset({tok.eos_token_id}), stops, think_end, tok)
    pieces = [tok.encode(s, add_special_tokens=False) for s in (*stops, "é漢字 ", " so")]
    # the long stop spelled a character at a time: more tokens than the window, which then misses it
    pieces.append([t for ch in stops[2] for t in tok.encode(ch, add_special_tokens=False)])
    assert len(pieces[-1]) > StopWatch(policy).window
    vocab = len(tok)

    def random_ids(n: int) -> list[int]:
        ids = [rng.randrange(vocab) for _ in range(n)]
        for _ in range(rng.randrange(0, 4)):
            at = rng.randrange(len(ids) + 1)
            ids[at:at] = pieces[rng.randrange(len(pieces))]
        return ids

    by_kind = {"stop": 0, "eos": 0, "none": 0}
    late = 0  # stops after WHOLE_EVERY tokens: where the window and the periodic whole-text checks decide
    missed = 0  # stops the window did not show: found later by a whole-text check, then the scan back
    for trial in range(60):
        ids = random_ids(rng.randrange(1, 25))
        if think_end is not None:  # the reasoning closes, then stop strings apply
            ids += tok.encode(think_end, add_special_tokens=False) + random_ids(rng.randrange(0, 20))
        if rng.random() < 0.25:  # a stop the window cannot show, then more tokens
            ids += pieces[-1] + random_ids(rng.randrange(0, 10))
        if rng.random() < 0.1:
            ids.insert(rng.randrange(len(ids)), tok.eos_token_id)
        budget = len(ids) if rng.random() < 0.5 else rng.randrange(1, len(ids) + 1)
        expected = naive(policy, ids[:budget])
        kept, seen = watched(policy, ids, budget)
        assert kept == expected, (name, trial, ids[:budget])
        if expected is None:
            by_kind["none"] += 1
        elif ids[expected - 1] == tok.eos_token_id and not policy.stopped(ids[:expected]):
            by_kind["eos"] += 1
        else:
            by_kind["stop"] += 1
            late += expected > WHOLE_EVERY
            missed += seen > expected
    assert all(n >= 3 for n in by_kind.values()) and late >= 5, (by_kind, late)
    spelled = stops[2] in tok.decode(pieces[-1], skip_special_tokens=True)  # not so in SentencePiece or words
    assert missed >= 1 or not spelled, missed  # each such row fails without the scan back
