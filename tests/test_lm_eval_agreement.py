"""depthprobe's log-likelihood evaluator agrees with lm-eval 0.4.13 request by request.

Both run the same model weights on the same local documents: lm-eval through ``HFLM`` on a
separate Hugging Face copy, depthprobe through the TransformerLens bridge. Compared: the
prompt and continuation strings, every per-request log-likelihood (within the float32 bound of
``tests/tolerance.py``, at any batch size), every ``is_greedy`` flag, and ``acc`` / ``acc_norm`` per document.
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
from tests.lm_eval_reference import (
    RefTask,
    make_task_manager,
    request_args,
    request_results,
    run_lm_eval,
    write_jsonl,
    write_task_yaml,
)
from tests.tolerance import ForwardShape, loglikelihood_bound, text_logit_scale

LIMIT = 4
SUBJECT = "abstract_algebra"

HELLASWAG_DOCS = [
    {
        "ind": 4,
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
        "ctx_b": "then",
        "ctx": "",
        "endings": [
            ", the man adds wax to the windshield and cuts it.",
            ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.",
            ", the man puts on a christmas coat, knitted with netting.",
            ", the man continues removing the snow on his car.",
        ],
        "source_id": "activitynet~v_-1IBHYS3L-Y",
        "split": "val",
        "split_type": "indomain",
        "label": "3",
    },
    {
        "ind": 8,
        "activity_label": "Baking cookies",
        "ctx_a": "A female chef in white uniform shows a stack of baking pans in a large kitchen presenting them.",
        "ctx_b": "the pans",
        "ctx": "",
        "endings": [
            "contain egg yolks and baking soda.",
            "are then sprinkled with brown sugar.",
            "are placed in a strainer on the counter.",
            "are filled with pastries and loaded into the oven.",
        ],
        "source_id": "activitynet~v_-2dxp-mv2zo",
        "split": "val",
        "split_type": "indomain",
        "label": "3",
    },
    {
        "ind": 24,
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to make a terrarium [title] Choose a clear glass container.",
        "ctx_b": "[step] You can use a jar, a bowl or an old fish tank.",
        "ctx": "",
        "endings": [
            "[substeps] Make sure the [title] container is clean.",
            "Rinse the sand before you add it.",
            "[title] Add a layer of pebbles to the bottom.",
            "You will need a shovel [header] and gloves.",
        ],
        "source_id": "wikihow~1",
        "split": "val",
        "split_type": "zeroshot",
        "label": "2",
    },
    {
        "ind": 30,
        "activity_label": "Playing drums",
        "ctx_a": "A boy is sitting behind a drum set.",
        "ctx_b": "he",
        "ctx": "",
        "endings": [
            "starts playing the drums.",
            "eats a sandwich.",
            "stands up and leaves.",
            "plays the guitar loudly.",
        ],
        "source_id": "activitynet~v_x",
        "split": "val",
        "split_type": "indomain",
        "label": "0",
    },
]


def _subject_docs(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in map(json.loads, fh) if d["subject"] == SUBJECT]


@pytest.fixture(scope="module")
def reference_setup(tmp_path_factory, data_dir):
    """Local data (shared data plus written HellaSwag docs), the reference YAMLs and one TaskManager."""
    root = tmp_path_factory.mktemp("lm_eval_ref")
    ours = root / "data"
    # depthprobe reads the shared data, plus the HellaSwag docs written here.
    ours.mkdir()
    for sub in ("mmlu", "mathqa", "openbookqa"):
        (ours / sub).symlink_to(data_dir / sub)
    write_jsonl(ours / "hellaswag" / "default" / "validation.jsonl", HELLASWAG_DOCS)
    mmlu_test = write_jsonl(root / "ref" / "mmlu_test.jsonl", _subject_docs(data_dir / "mmlu/all/test.jsonl"))
    mmlu_dev = write_jsonl(root / "ref" / "mmlu_dev.jsonl", _subject_docs(data_dir / "mmlu/all/dev.jsonl"))
    mmlu_files = {"test": str(mmlu_test), "dev": str(mmlu_dev)}
    specs = {
        "mmlu": RefTask("dp_mmlu", f"mmlu/default/mmlu_{SUBJECT}.yaml", mmlu_files, {}),
        "mmlu_2shot": RefTask("dp_mmlu_2shot", f"mmlu/default/mmlu_{SUBJECT}.yaml", mmlu_files, {"num_fewshot": 2}),
        "mmlu_continuation": RefTask("dp_mmlu_continuation", f"mmlu/continuation/mmlu_{SUBJECT}.yaml", mmlu_files, {}),
        "hellaswag": RefTask(
            "dp_hellaswag",
            "hellaswag/hellaswag.yaml",
            {"validation": str(ours / "hellaswag/default/validation.jsonl")},
            {"validation_split": "validation", "test_split": None},
        ),
        "mathqa": RefTask("dp_mathqa", "mathqa/mathqa.yaml", {"test": str(data_dir / "mathqa/default/test.jsonl")}, {}),
        "openbookqa": RefTask(
            "dp_openbookqa", "openbookqa/openbookqa.yaml", {"test": str(data_dir / "openbookqa/main/test.jsonl")}, {}
        ),
    }
    yaml_dir = root / "yaml"
    yaml_dir.mkdir()
    for spec in specs.values():
        write_task_yaml(yaml_dir, spec)
    return ours, specs, make_task_manager(yaml_dir)


# (our task name, reference key, num_fewshot, task options)
CASES = [
    ("mmlu", "mmlu", None, {"subjects": SUBJECT}),
    ("mmlu", "mmlu_2shot", 2, {"subjects": SUBJECT}),
    ("mmlu_continuation", "mmlu_continuation", None, {"subjects": SUBJECT}),
    ("hellaswag", "hellaswag", None, {}),
    ("mathqa", "mathqa", None, {}),
    ("openbookqa", "openbookqa", None, {}),
]


@pytest.fixture(scope="module", params=["tiny_llama", "stories260K"])
def agreement_run(request, reference_setup):
    """lm-eval's samples (batch size 1) for every case on one model, and the bridge of that model."""
    path = request.getfixturevalue({"tiny_llama": "tiny_llama_dir", "stories260K": "stories_dir"}[request.param])
    ours, specs, tm = reference_setup
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(path)
    names = [specs[key].name for _, key, _, _ in CASES]
    samples, _ = run_lm_eval(hf, tok, names, tm, limit=LIMIT, batch_size=1)
    bridge = load_model(path, dtype="float32", device="cpu")
    return request.param, ours, specs, samples, bridge, hf


@pytest.mark.parametrize("task,ref_key,k,options", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("batch_size", [1, 8], ids=["bs1", "bs8"])
def test_agrees_with_lm_eval(agreement_run, task, ref_key, k, options, batch_size):
    model_name, ours, specs, samples, bridge, hf = agreement_run
    ref = samples[specs[ref_key].name]
    assert len(ref) == LIMIT
    result = evaluate(bridge, task, limit=LIMIT, num_fewshot=k, batch_size=batch_size, data_dir=ours, **options)
    got = result.samples
    assert list(got["doc_id"]) == [s["doc_id"] for s in ref]
    worst = 0.0
    for row, s in zip(got.itertuples(), ref):
        args = request_args(s)
        assert [a[0] for a in args] == [row.prompt] * len(args), "prompt differs from lm-eval's context"
        assert [a[1] for a in args] == [" " + c for c in row.choices]
        lls, greedy = zip(*request_results(s))
        # the cached continuation pass rounds differently from lm-eval's single forward: the float32 bound
        scale = text_logit_scale(hf, [a[0] + a[1] for a in args])
        tols = [loglikelihood_bound(ForwardShape.of(hf), scale, n, b) for n, b in zip(row.n_tokens, lls)]
        excess = [abs(a - b) - t for a, b, t in zip(row.loglikelihoods, lls, tols)]
        worst = max(worst, max(abs(a - b) for a, b in zip(row.loglikelihoods, lls)))
        assert max(excess) <= 0, (
            f"{model_name} {ref_key} doc {row.doc_id}: {row.loglikelihoods} vs {lls} (bounds {tols})"
        )
        assert list(row.is_greedy) == list(greedy)
        assert row.correct == bool(s["acc"]), f"doc {row.doc_id}: acc differs"
        if "acc_norm" in s:
            assert row.correct_norm == bool(s["acc_norm"]), f"doc {row.doc_id}: acc_norm differs"
        assert row.prediction == max(range(len(lls)), key=lambda j: (lls[j], -j))
    mean_acc = sum(float(s["acc"]) for s in ref) / len(ref)
    assert math.isclose(result.metrics["acc"], mean_acc)
    print(
        f"{model_name} {ref_key} bs{batch_size}: max |Δll| = {worst:.2e}, max |ll| = "
        f"{max(abs(x) for r in got.itertuples() for x in r.loglikelihoods):.1f}"
    )
