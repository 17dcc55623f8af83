"""Task registry, prompts, data loading, filters, metrics and bad input (no model needed except the last tests)."""

import json

import pytest

from depthprobe.data import DatasetNotFoundError, DatasetRef, load_split
from depthprobe.evaluation.metrics import choice_predictions, exact_match, mean_stderr
from depthprobe.evaluator import evaluate
from depthprobe.tasks import get_task, list_tasks
from depthprobe.tasks.gsm8k import COT_EXEMPLARS
from depthprobe.tasks.kv_retrieval import make_kv_examples, word_pool

ALL = [
    "gsm8k",
    "gsm8k_cot",
    "hellaswag",
    "kv_retrieval",
    "mathqa",
    "mmlu",
    "mmlu_continuation",
    "mmlu_generative",
    "openbookqa",
    "openbookqa_open",
]


def test_registry_lists_every_task_and_suggests_closest():
    assert set(ALL) <= set(list_tasks()) and list_tasks() == sorted(list_tasks())
    with pytest.raises(ValueError, match="did you mean 'hellaswag'"):
        get_task("helaswag")
    with pytest.raises(ValueError, match="task 'mathqa' takes no options; got subjects"):
        get_task("mathqa", subjects="x")
    with pytest.raises(ValueError, match="bad options for task .kv_retrieval."):
        get_task("kv_retrieval", pairs=3)


def test_mmlu_prompts_follow_lm_eval_templates(data_dir):
    doc = load_split(DatasetRef("cais/mmlu", "all"), "test", data_dir)[0]
    dev = [d for d in load_split(DatasetRef("cais/mmlu", "all"), "dev", data_dir) if d["subject"] == doc["subject"]]
    subj = doc["subject"].replace("_", " ")
    letters = lambda d: (
        f"{d['question'].strip()}\nA. {d['choices'][0]}\nB. {d['choices'][1]}\n"
        f"C. {d['choices'][2]}\nD. {d['choices'][3]}\nAnswer:"
    )
    inst = get_task("mmlu").instances(limit=1, num_fewshot=2, data_dir=data_dir)[0]
    shots = "".join(letters(d) + " " + "ABCD"[d["answer"]] + "\n\n" for d in dev[:2])
    assert (
        inst.prompt
        == f"The following are multiple choice questions (with answers) about {subj}.\n\n" + shots + letters(doc)
    )
    assert inst.continuations == [" A", " B", " C", " D"] and inst.target == doc["answer"]
    cont = get_task("mmlu_continuation").instances(limit=1, data_dir=data_dir)[0]
    assert (
        cont.prompt
        == f"The following are questions (with answers) about {subj}.\n\nQuestion: {doc['question'].strip()}\nAnswer:"
    )
    assert cont.choices == tuple(doc["choices"])
    gen = get_task("mmlu_generative").instances(limit=1, data_dir=data_dir)[0]
    assert gen.prompt == inst.prompt.replace(shots, "") and gen.target == "ABCD"[doc["answer"]]


def test_mmlu_subject_filter(data_dir):
    insts = get_task("mmlu", subjects=["anatomy"]).instances(data_dir=data_dir)
    assert len(insts) == 135 and all(i.doc["subject"] == "anatomy" for i in insts)
    with pytest.raises(ValueError, match="did you mean 'anatomy'"):
        get_task("mmlu", subjects="anatomyy").instances(data_dir=data_dir)


def test_openbookqa_closed_and_open(data_dir):
    closed = get_task("openbookqa").instances(limit=2, data_dir=data_dir)
    opened = get_task("openbookqa_open").instances(limit=2, data_dir=data_dir)
    for c, o in zip(closed, opened):
        assert c.prompt == c.doc["question_stem"]
        assert o.prompt == o.doc["fact1"] + "\n" + c.doc["question_stem"]
        assert c.choices == o.choices and c.target == o.target


def test_gsm8k_cot_shots_are_the_fixed_exemplars(data_dir):
    exemplars = json.loads((data_dir / "gsm8k" / "gsm8k_cot_8shot_exemplars.json").read_text())["exemplars"]
    assert [dict(e) for e in COT_EXEMPLARS] == exemplars
    for k in (1, 4, 8):
        inst = get_task("gsm8k_cot").instances(limit=1, num_fewshot=k, data_dir=data_dir)[0]
        shots = "".join(f"Q: {e['question']}\nA: {e['target']}\n\n" for e in exemplars[:k])
        assert inst.prompt == shots + f"Q: {inst.doc['question']}\nA:"
        assert inst.target == inst.doc["answer"].split("####")[-1].strip()
    with pytest.raises(ValueError, match="num_fewshot=9 exceeds the 8"):
        get_task("gsm8k_cot").instances(limit=1, num_fewshot=9, data_dir=data_dir)


def test_fewshot_beyond_pool_and_bad_limits(data_dir):
    with pytest.raises(ValueError, match="num_fewshot=6 exceeds the 5"):
        get_task("mmlu").instances(limit=1, num_fewshot=6, data_dir=data_dir)
    with pytest.raises(ValueError, match="limit must be"):
        get_task("mathqa").instances(limit=0, data_dir=data_dir)


def test_kv_retrieval_is_seeded_and_well_formed():
    a, b = make_kv_examples(10, 5, seed=3), make_kv_examples(10, 5, seed=3)
    assert a == b and a != make_kv_examples(10, 5, seed=4)
    pool = set(word_pool())
    for ex in a:
        assert len(set(ex["keys"])) == 10 and set(ex["keys"]) <= pool
        assert len(set(ex["values"])) == 10 and all(0 <= v < 100 for v in ex["values"])
    inst = get_task("kv_retrieval", n_pairs=3, n_examples=1, seed=0).instances()[0]
    d = inst.doc
    lines = "".join(f"{k}:{v}\n" for k, v in zip(d["keys"], d["values"]))
    assert (
        inst.prompt == f"Memorize the following dictionary:\n{lines}The value of the key '{d['keys'][d['query']]}' is"
    )
    assert inst.continuations == [str(v) for v in d["values"]] and inst.target == d["query"]
    with pytest.raises(ValueError, match="n_pairs must be between 2 and 100"):
        get_task("kv_retrieval", n_pairs=101)


def test_missing_empty_and_malformed_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DatasetNotFoundError, match=r"regisss/math_qa split 'test' has no local copy.*mathqa/default/test.jsonl"
    ):
        get_task("mathqa").instances(data_dir=tmp_path)
    (tmp_path / "mathqa" / "default").mkdir(parents=True)
    (tmp_path / "mathqa" / "default" / "test.jsonl").write_text("")
    with pytest.raises(ValueError, match="has no documents"):
        get_task("mathqa").instances(data_dir=tmp_path)
    doc = {"Problem": "1+1?", "options": "a ) 2", "correct": "a"}  # parses to no choice at all
    (tmp_path / "mathqa" / "default" / "test.jsonl").write_text(json.dumps(doc) + "\n")
    with pytest.raises(ValueError, match="has 0 choice"):
        get_task("mathqa").instances(data_dir=tmp_path)
    doc["options"] = "e ) 2"
    (tmp_path / "mathqa" / "default" / "test.jsonl").write_text(json.dumps(doc) + "\n")
    with pytest.raises(ValueError, match="has 1 choice"):
        get_task("mathqa").instances(data_dir=tmp_path)
    monkeypatch.setenv("DEPTHPROBE_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        get_task("mathqa").instances()


def test_filters_match_lm_eval():
    from lm_eval.filters.extraction import RegexFilter

    texts = ["The answer is 42.\nQ: next", "so #### 1,234 yes", "-3 and 7.5 and $12", "nothing", " B\nmore"]
    for task in ("gsm8k", "gsm8k_cot"):
        for f in get_task(task).generation.filters:
            step = f.steps[0]
            ref = RegexFilter(regex_pattern=step[1], group_select=step[2] if len(step) > 2 else 0)
            assert [f.apply(t) for t in texts] == [r[0] for r in ref.apply([[t] for t in texts], [])]
    first_line = get_task("mmlu_generative").generation.filters[0]
    assert first_line.apply(" B\nmore") == "B" and first_line.apply("  C.  ") == "C."


def test_metrics_match_lm_eval():
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.api.metrics import mean_stderr as ref_stderr

    cfg = get_task("gsm8k").generation
    preds, refs = ["$1,234.", "12", "Ab!"], ["blah #### 1234", "13", "ab"]
    for p, r in zip(preds, refs):
        kw = dict(ignore_case=cfg.ignore_case, ignore_punctuation=True, regexes_to_ignore=list(cfg.regexes_to_ignore))
        assert exact_match(p, r, **kw) == bool(exact_match_hf_evaluate([p], [r], **kw)["exact_match"])
    assert mean_stderr([1, 0, 1, 1]) == pytest.approx(ref_stderr([1, 0, 1, 1]))
    # ties go to the first choice; acc_norm divides by characters, acc_token_norm by tokens
    assert choice_predictions([-2.0, -2.0], ["a", "b"], [1, 1]) == {"acc": 0, "acc_norm": 0, "acc_token_norm": 0}
    assert choice_predictions([-4.0, -3.0], ["abcd", "a"], [4, 1]) == {"acc": 1, "acc_norm": 0, "acc_token_norm": 0}


def test_evaluate_generation_task_dispatches_and_scores(tiny_llama_dir, data_dir):
    from depthprobe.models import load_model

    model = load_model(tiny_llama_dir, dtype="float32", device="cpu")
    result = evaluate(model, "gsm8k_cot", limit=2, num_fewshot=1, data_dir=data_dir, max_gen_toks=8)
    s = result.samples
    assert list(s.columns[:3]) == ["doc_id", "prompt", "generation"]
    cfg = get_task("gsm8k_cot").generation
    for row in s.to_dict("records"):
        for f in cfg.filters:
            assert row[f"extracted,{f.name}"] == f.apply(row["generation"])
        assert row["exact_match"] == row["exact_match,strict-match"] == (row["extracted"] == row["target"])
    assert result.metrics["exact_match,strict-match"] == pytest.approx(s["exact_match,strict-match"].mean())
    assert result.stats["n_hit_max_gen_toks"] == int((~s["hit_stop"]).sum())
