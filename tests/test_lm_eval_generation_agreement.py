"""depthprobe's generation tasks agree with lm-eval 0.4.13 document by document.

``gsm8k_cot`` (1 fixed exemplar), ``gsm8k`` (5 shots from lm-eval's ``Random(1234)`` sampler,
which depthprobe re-implements) and ``mmlu_generative`` (0-shot) run on the same tiny random
GQA model and the same local documents: lm-eval through ``HFLM`` on a separate Hugging Face
copy, depthprobe through the TransformerLens bridge (KV-cached, shared few-shot prefix reused).
Compared per document and per filter: the prompt (lm-eval's logged ``arguments``), the stop
strings and budget lm-eval generated under, the raw generation, the filtered answer and
``exact_match``; and the aggregated ``exact_match`` per filter. GSM8K's 5-shot prompts are
longer than the tiny model's 2048 tokens minus the budget, so lm-eval's left truncation is
exercised as well; document 0 of each GSM8K task is re-targeted (see ``reference``) so that
``exact_match`` is 1 there and not trivially 0 everywhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from depthprobe.evaluator import evaluate
from depthprobe.models import load_model
from depthprobe.tasks import get_task
from tests.lm_eval_reference import RefTask, make_task_manager, run_lm_eval, write_jsonl, write_task_yaml

LIMIT = 3
MAX_GEN_TOKS = 16
#: depthprobe batches all documents (left padding, shared few-shot prefix cache); lm-eval runs at batch size 1.
BATCH_SIZE = LIMIT
SUBJECT = "abstract_algebra"

# The installed YAMLs' generation_kwargs with only the budget lowered (an ``include`` replaces
# the whole mapping, so the rest is restated as lm-eval 0.4.13 has it).
_GSM8K_GEN = {
    "until": ["Question:", "</s>", "<|im_end|>"],
    "do_sample": False,
    "temperature": 0.0,
    "max_gen_toks": MAX_GEN_TOKS,
}
_COT_GEN = {"do_sample": False, "until": ["Q:", "</s>", "<|im_end|>"], "max_gen_toks": MAX_GEN_TOKS}
_MMLU_GEN = {"until": ["</s>", "\n"], "max_gen_toks": MAX_GEN_TOKS}

# (our task name, num_fewshot, task options, filters lm-eval reports)
CASES = {
    "gsm8k_cot": (1, {}, ("strict-match", "flexible-extract")),
    "gsm8k": (None, {}, ("strict-match", "flexible-extract")),
    "mmlu_generative": (None, {"subjects": SUBJECT}, ("get_response",)),
}


def _subject_docs(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in map(json.loads, fh) if d["subject"] == SUBJECT]


def _retarget(src: Path, dst: Path, answers: dict[int, str]) -> None:
    """Copy the first LIMIT GSM8K test docs, replacing the final ``#### N`` of the docs in ``answers``.

    The question (hence prompt and generation) is unchanged; only the gold answer moves, so a
    document can be made correct on a random model and ``exact_match`` is not constant 0.
    """
    with src.open(encoding="utf-8") as fh:
        docs = [json.loads(line) for _, line in zip(range(LIMIT), fh)]
    for i, answer in answers.items():
        docs[i]["answer"] = docs[i]["answer"].rsplit("####", 1)[0] + "#### " + answer
    write_jsonl(dst / "gsm8k" / "main" / "test.jsonl", docs)
    for name in ("main/train.jsonl", "gsm8k_cot_8shot_exemplars.json"):
        (dst / "gsm8k" / name).symlink_to(src.parents[1] / name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, tiny_llama_dir):
    """Local data per task, lm-eval's logged samples for the three tasks (one TaskManager, one run), the bridge.

    For each GSM8K task, document 0's gold answer is set to the answer depthprobe's own
    flexible-extract filter takes from its generation on the real data; lm-eval then judges that
    document with its own generation, filter and metric, so any disagreement still shows.
    """
    root = tmp_path_factory.mktemp("lm_eval_gen_ref")
    bridge = load_model(tiny_llama_dir, dtype="float32", device="cpu")
    gsm = data_dir / "gsm8k" / "main"
    dirs = {"mmlu_generative": data_dir}
    for task in ("gsm8k_cot", "gsm8k"):
        k = CASES[task][0]
        first = evaluate(bridge, task, limit=1, num_fewshot=k, data_dir=data_dir, max_gen_toks=MAX_GEN_TOKS).samples
        dirs[task] = root / task
        _retarget(gsm / "test.jsonl", dirs[task], {0: first["extracted,flexible-extract"][0]})
    mmlu_test = write_jsonl(root / "ref" / "mmlu_test.jsonl", _subject_docs(data_dir / "mmlu/all/test.jsonl"))
    mmlu_dev = write_jsonl(root / "ref" / "mmlu_dev.jsonl", _subject_docs(data_dir / "mmlu/all/dev.jsonl"))
    specs = {
        "gsm8k_cot": RefTask(
            "dp_gsm8k_cot",
            "gsm8k/gsm8k-cot.yaml",
            {"test": str(dirs["gsm8k_cot"] / "gsm8k/main/test.jsonl")},
            {"num_fewshot": 1, "generation_kwargs": _COT_GEN},
        ),
        "gsm8k": RefTask(
            "dp_gsm8k",
            "gsm8k/gsm8k.yaml",
            {"test": str(dirs["gsm8k"] / "gsm8k/main/test.jsonl"), "train": str(gsm / "train.jsonl")},
            {"fewshot_split": "train", "generation_kwargs": _GSM8K_GEN},
        ),
        "mmlu_generative": RefTask(
            "dp_mmlu_generative",
            f"mmlu/generative/mmlu_{SUBJECT}.yaml",
            {"test": str(mmlu_test), "dev": str(mmlu_dev)},
            {"generation_kwargs": _MMLU_GEN},
        ),
    }
    yaml_dir = root / "yaml"
    yaml_dir.mkdir()
    for spec in specs.values():
        write_task_yaml(yaml_dir, spec)
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    samples, results = run_lm_eval(
        hf, tok, [s.name for s in specs.values()], make_task_manager(yaml_dir), limit=LIMIT, batch_size=1
    )
    return specs, dirs, samples, results, bridge


def _by_filter(samples: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for s in samples:
        out.setdefault(s["filter"], []).append(s)
    return {f: sorted(v, key=lambda s: s["doc_id"]) for f, v in out.items()}


def _gen_args(sample: dict) -> tuple[str, dict]:
    """The (context, generation kwargs) of the one generate_until request of a sample."""
    args = sample["arguments"]
    if isinstance(args, dict):
        (args,) = [tuple(v.values()) for v in args.values()]
    elif len(args) == 1 and isinstance(args[0], (list, tuple)):
        (args,) = args
    return args[0], args[1]


def _one(x):
    """Unwrap lm-eval's per-request list nesting down to the single string."""
    while isinstance(x, (list, tuple)):
        (x,) = x
    return x


@pytest.mark.parametrize("task", list(CASES))
def test_generation_agrees_with_lm_eval(reference, task):
    specs, dirs, samples, results, bridge = reference
    k, options, filters = CASES[task]
    ref = _by_filter(samples[specs[task].name])
    assert sorted(ref) == sorted(filters)
    result = evaluate(
        bridge,
        task,
        limit=LIMIT,
        num_fewshot=k,
        batch_size=BATCH_SIZE,
        data_dir=dirs[task],
        max_gen_toks=MAX_GEN_TOKS,
        **options,
    )
    got = result.samples
    stops = list(get_task(task, **options).generation.until)
    assert list(got["doc_id"]) == list(range(LIMIT))
    for f in filters:
        assert [s["doc_id"] for s in ref[f]] == list(range(LIMIT))
        for row, s in zip(got.to_dict("records"), ref[f]):
            where = f"{task} {f} doc {row['doc_id']}"
            context, gen_kwargs = _gen_args(s)
            assert row["prompt"] == context, f"{where}: prompt differs from lm-eval's context"
            assert gen_kwargs["max_gen_toks"] == MAX_GEN_TOKS == result.config["max_gen_toks"]
            assert list(gen_kwargs["until"]) == stops, f"{where}: stop strings differ"
            assert str(row["target"]) == str(s["target"]), f"{where}: target differs"
            assert row["generation"] == _one(s["resps"]), f"{where}: generation differs"
            assert row[f"extracted,{f}"] == _one(s["filtered_resps"]), f"{where}: filtered answer differs"
            assert float(row[f"exact_match,{f}"]) == float(s["exact_match"]), f"{where}: exact_match differs"
        mean = sum(float(s["exact_match"]) for s in ref[f]) / LIMIT
        assert math.isclose(result.metrics[f"exact_match,{f}"], mean)
        assert math.isclose(results[specs[task].name][f"exact_match,{f}"], mean)
    print(f"{task}: generations {list(got['generation'])!r}, hit_stop {list(got['hit_stop'])}, stats {result.stats}")
    # something must actually be generated, or the comparison proves little
    assert sum(len(g) for g in got["generation"]) > 0, f"{task}: every generation is empty"
    if "flexible-extract" in filters:
        scores = [float(s["exact_match"]) for s in ref["flexible-extract"]]
        assert scores[0] == 1.0 and 0.0 in scores, f"{task}: exact_match should vary across documents, got {scores}"
