"""depthprobe as an lm-eval model backend: equal to lm-eval's own ``hf`` backend unablated, equal to
``depthprobe.evaluate`` under ``ablate`` with interventions, and sweepable as ``lm_eval:<task>``.

Three local tasks cover lm-eval's three request types: OpenBookQA (multiple choice), a
wikitext-style document perplexity on local text (loglikelihood_rolling, one document longer
than stories260K's 512-token context, so several rolling windows), and GSM8K zero-shot
(generate_until with lm-eval's stop strings and both of its answer filters).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import depthprobe as dp
from depthprobe.evaluation.loglikelihood import encode_pair, model_max_length
from depthprobe.lm_eval_backend import DepthprobeLM, parse_interventions
from tests.lm_eval_reference import RefTask, make_task_manager, write_jsonl, write_task_yaml
from tests.tolerance import ForwardShape, loglikelihood_bound, text_logit_scale

LIMIT = 4
MC, ROLLING, GEN = "dp_obqa", "dp_pages", "dp_gsm8k"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, data_dir):
    """The three local task YAMLs and one TaskManager."""
    root = tmp_path_factory.mktemp("lm_eval_backend")
    gsm = [json.loads(line) for line in (data_dir / "gsm8k/main/test.jsonl").read_text().splitlines()[:LIMIT]]
    pages = [{"page": d["question"] + "\n" + d["answer"]} for d in gsm[:3]]
    pages.append(
        {
            "page": "\n\n".join(
                d["question"] + " " + d["answer"]
                for d in map(json.loads, (data_dir / "gsm8k/main/train.jsonl").read_text().splitlines()[:12])
            )
        }
    )
    page_file = write_jsonl(root / "pages.jsonl", pages)
    specs = [
        RefTask(MC, "openbookqa/openbookqa.yaml", {"test": str(data_dir / "openbookqa/main/test.jsonl")}, {}),
        RefTask(ROLLING, "wikitext/wikitext.yaml", {"test": str(page_file)}, {}),
        RefTask(
            GEN,
            "gsm8k/gsm8k.yaml",
            {"test": str(data_dir / "gsm8k/main/test.jsonl"), "train": str(data_dir / "gsm8k/main/train.jsonl")},
            {
                "num_fewshot": 0,
                "fewshot_config": None,
                "generation_kwargs": {
                    "until": ["Question:", "</s>", "<|im_end|>", "\n\n"],
                    "do_sample": False,
                    "temperature": 0.0,
                    "max_gen_toks": 24,
                },
            },
        ),
    ]
    yaml_dir = root / "yaml"
    yaml_dir.mkdir()
    for spec in specs:
        write_task_yaml(yaml_dir, spec)
    return yaml_dir, make_task_manager(yaml_dir)


def _evaluate(lm, tm, tasks=(MC, ROLLING, GEN), **kw):
    from lm_eval import simple_evaluate

    out = simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=tm, limit=LIMIT, log_samples=True, bootstrap_iters=0, **kw
    )
    samples = {t: sorted(out["samples"][t], key=lambda s: (s["doc_id"], s.get("filter", ""))) for t in tasks}
    return out["results"], samples


@pytest.fixture(scope="module", params=["tiny_llama", "stories260K"])
def model_path(request):
    return request.getfixturevalue({"tiny_llama": "tiny_llama_dir", "stories260K": "stories_dir"}[request.param])


@pytest.fixture(scope="module")
def reference(model_path, tasks):
    """lm-eval's own hf backend (batch size 1) on a separate Hugging Face copy."""
    from lm_eval.models.huggingface import HFLM

    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="eager").eval()
    lm = HFLM(pretrained=hf, tokenizer=AutoTokenizer.from_pretrained(model_path), batch_size=1)
    return hf, _evaluate(lm, tasks[1])


@pytest.fixture(scope="module")
def ours(model_path, tasks):
    """depthprobe by name through lm-eval's registry, as a user would call it."""
    return _evaluate(
        "depthprobe", tasks[1], model_args=f"pretrained={model_path},dtype=float32,device=cpu", batch_size=4
    )


def _lls(sample):
    return [float(r[0][0]) if isinstance(r[0], (list, tuple)) else float(r[0]) for r in sample["resps"]]


def test_unablated_equals_lm_eval_hf_backend(reference, ours, model_path):
    hf, (ref_results, ref_samples) = reference
    results, samples = ours
    shape = ForwardShape.of(hf)
    tok = AutoTokenizer.from_pretrained(model_path)
    for task in (MC, ROLLING, GEN):
        assert [s["doc_id"] for s in samples[task]] == [s["doc_id"] for s in ref_samples[task]]
    # multiple choice: every request's log-likelihood (float32 bound) and greedy flag; acc per document
    for s, r in zip(samples[MC], ref_samples[MC]):
        assert s["arguments"] == r["arguments"]
        scale = text_logit_scale(hf, [a[0] + a[1] for a in _args(r)])
        for (ll, greedy), (ref_ll, ref_greedy), (ctx, cont) in zip(_pairs(s), _pairs(r), _args(r)):
            n = len(encode_pair(tok, ctx, cont)[1])
            assert abs(ll - ref_ll) <= loglikelihood_bound(shape, scale, n, ref_ll)
            assert greedy == ref_greedy
        assert s["acc"] == r["acc"] and s["acc_norm"] == r["acc_norm"]
    # rolling: the document's summed log-likelihood over all its windows
    n_long = 0
    for s, r in zip(samples[ROLLING], ref_samples[ROLLING]):
        (ll,), (ref_ll,) = _lls(s), _lls(r)
        page = s["doc"]["page"]
        n = len(tok(page)["input_ids"])
        n_long += n > model_max_length(hf, tok)
        assert abs(ll - ref_ll) <= loglikelihood_bound(shape, text_logit_scale(hf, [page]), n, ref_ll), (ll, ref_ll)
    assert n_long >= (1 if "stories" in str(model_path) else 0)
    # generation: identical text, filtered answers and exact match per filter
    for s, r in zip(samples[GEN], ref_samples[GEN]):
        assert s["resps"] == r["resps"] and s["filtered_resps"] == r["filtered_resps"]
        assert s["exact_match"] == r["exact_match"]
    assert sum(len(s["resps"][0][0]) for s in samples[GEN]) > 0, "every generation is empty"
    for task, metric in (
        (MC, "acc,none"),
        (MC, "acc_norm,none"),
        (GEN, "exact_match,strict-match"),
        (GEN, "exact_match,flexible-extract"),
    ):
        assert results[task][metric] == ref_results[task][metric]
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert results[ROLLING][metric] == pytest.approx(ref_results[ROLLING][metric], rel=1e-3)


def _args(sample):
    from tests.lm_eval_reference import request_args

    return request_args(sample)


def _pairs(sample):
    return [(float(r[0][0]), bool(r[0][1])) for r in sample["resps"]]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return dp.load_model(tiny_llama_dir)


@pytest.mark.parametrize("spec", ["skip:L1 head:L2H3", "skip:L1,head:L2H3"])
def test_interventions_equal_evaluate_under_ablate(tiny, tiny_llama_dir, tasks, data_dir, spec):
    """model_args interventions (space- or comma-separated) = depthprobe.evaluate under ablate; they change results."""
    _, tm = tasks
    results, samples = _evaluate(
        "depthprobe", tm, tasks=(MC,), model_args=f"pretrained={tiny_llama_dir},interventions={spec}"
    )
    with dp.ablate(tiny, dp.skip_layer(1), dp.zero_head(2, 3)):
        ref = dp.evaluate(tiny, "openbookqa", limit=LIMIT, data_dir=data_dir)
    shape = ForwardShape.of(tiny)
    for s, row in zip(samples[MC], ref.samples.itertuples()):
        with dp.ablate(tiny, dp.skip_layer(1), dp.zero_head(2, 3)):
            scale = text_logit_scale(tiny, [row.prompt + " " + c for c in row.choices])
        for (ll, greedy), ref_ll, ref_greedy, n in zip(_pairs(s), row.loglikelihoods, row.is_greedy, row.n_tokens):
            assert abs(ll - ref_ll) <= loglikelihood_bound(shape, scale, n, ref_ll)
            assert greedy == ref_greedy
        assert bool(s["acc"]) == row.correct
    assert results[MC]["acc,none"] == pytest.approx(ref.metrics["acc"])
    _, plain = _evaluate("depthprobe", tm, tasks=(MC,), model_args=f"pretrained={tiny_llama_dir}")
    diff = max(abs(a - b) for s, p in zip(samples[MC], plain[MC]) for a, b in zip(_lls(s), _lls(p)))
    assert diff > 1e-3, "the interventions had no effect, so this test could not fail"


def test_live_model_with_active_hooks_equals_model_args(tiny, tiny_llama_dir, tasks):
    _, tm = tasks
    _, by_args = _evaluate(
        "depthprobe", tm, tasks=(MC,), model_args=f"pretrained={tiny_llama_dir},interventions=group:L1G0"
    )
    with dp.ablate(tiny, dp.zero_kv_group(1, 0)):
        _, live = _evaluate(dp.lm_eval_model(tiny), tm, tasks=(MC,))
    _, passed = _evaluate(dp.lm_eval_model(tiny, interventions="group:L1G0"), tm, tasks=(MC,))
    assert [_lls(s) for s in live[MC]] == [_lls(s) for s in by_args[MC]] == [_lls(s) for s in passed[MC]]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("head:L9H0", r"interventions: head:L9H0: layer 9 out of range; the model has layers 0\.\.2"),
        ("group:L0G5", r"KV group 5 out of range; the model has groups 0\.\.1"),
        ("bogus", r"interventions: bad intervention id 'bogus'.*valid forms: skip:L<l>.*head:L<l>H<h>"),
        ("skip:L1 skip:Lx", r"interventions: bad skip id .*Lx.*valid forms"),
        ("o_proj:L1", r"interventions: .*o_proj.*valid forms: .*o_proj:L<l>\[@<alpha>\]=<source path>"),
    ],
)
def test_bad_interventions_are_one_line(tiny, spec, message):
    with pytest.raises(ValueError, match=message) as err:
        DepthprobeLM(model=tiny, interventions=spec)
    assert "\n" not in str(err.value)


def test_bad_model_args(tiny_llama_dir, tiny):
    with pytest.raises(ValueError, match="unknown depthprobe model_args: nonsense; valid: pretrained"):
        DepthprobeLM(pretrained=str(tiny_llama_dir), nonsense=1)
    with pytest.raises(ValueError, match="exactly one of pretrained"):
        DepthprobeLM()
    with pytest.raises(ValueError, match="must come from depthprobe.load_model"):
        DepthprobeLM(model=torch.nn.Linear(2, 2))
    assert [iv.id for iv in parse_interventions("skip:L0, head:L1H2  group:L2G1", tiny)] == [
        "skip:L0",
        "head:L1H2",
        "group:L2G1",
    ]


def test_result_cache_never_mixes_conditions(tiny_llama_dir, tasks, tmp_path):
    """lm-eval keys its cache on request text only: a cache is bound to one model identity."""
    _, tm = tasks
    cache = str(tmp_path / "cache")
    base, _ = _evaluate("depthprobe", tm, tasks=(MC,), model_args=f"pretrained={tiny_llama_dir}", use_cache=cache)
    again, _ = _evaluate("depthprobe", tm, tasks=(MC,), model_args=f"pretrained={tiny_llama_dir}", use_cache=cache)
    assert again[MC]["acc,none"] == base[MC]["acc,none"]
    with pytest.raises(ValueError, match="cache database was written under .*baseline.*skip:L0"):
        _evaluate(
            "depthprobe",
            tm,
            tasks=(MC,),
            model_args=f"pretrained={tiny_llama_dir},interventions=skip:L0",
            use_cache=cache,
        )


def test_run_sweep_over_an_lm_eval_task_equals_lm_eval_per_condition(tiny, tiny_llama_dir, tasks, tmp_path):
    yaml_dir, tm = tasks
    df = dp.run_sweep(
        tiny,
        f"lm_eval:{MC}",
        "layers",
        out_dir=tmp_path / "run",
        limit=LIMIT,
        batch_size=4,
        progress=False,
        include_path=str(yaml_dir),
    )
    assert list(df["condition"]) == ["baseline", "skip:L0", "skip:L1", "skip:L2"]
    samples = dp.load_results(tmp_path / "run", samples=True)
    for cid in df["condition"]:
        args = f"pretrained={tiny_llama_dir}" + ("" if cid == "baseline" else f",interventions={cid}")
        results, ref = _evaluate("depthprobe", tm, tasks=(MC,), model_args=args)
        row = df[df["condition"] == cid].iloc[0]
        assert row["acc"] == pytest.approx(results[MC]["acc,none"])
        assert row["acc_norm"] == pytest.approx(results[MC]["acc_norm,none"])
        got = samples[samples["condition"] == cid]
        for stored, s in zip(got["loglikelihoods"], ref[MC], strict=True):
            assert list(stored) == pytest.approx(_lls(s), rel=1e-9, abs=0)  # the same computation, stored as JSON
    assert df["delta_acc"].notna().all()
    again = dp.run_sweep(
        tiny,
        f"lm_eval:{MC}",
        "layers",
        out_dir=tmp_path / "run",
        limit=LIMIT,
        batch_size=4,
        progress=False,
        include_path=str(yaml_dir),
    )
    assert again.equals(df)


def test_unknown_lm_eval_task_is_one_line(tasks):
    yaml_dir, _ = tasks
    with pytest.raises(ValueError, match=r"lm-eval has no task 'dp_obqa_x' \(did you mean dp_obqa"):
        dp.get_task("lm_eval:dp_obqa_x", include_path=str(yaml_dir))
    with pytest.raises(ValueError, match="output type 'loglikelihood_rolling'; sweeps take multiple_choice or"):
        dp.get_task(f"lm_eval:{ROLLING}", include_path=str(yaml_dir))


def test_command_line_forwards_to_lm_eval(tiny_llama_dir, tasks, tmp_path):
    yaml_dir, _ = tasks
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "depthprobe",
            "lm-eval",
            "run",
            "--model",
            "depthprobe",
            "--model_args",
            f"pretrained={tiny_llama_dir},interventions=skip:L1",
            "--tasks",
            MC,
            "--include_path",
            str(yaml_dir),
            "--limit",
            "2",
            "--output_path",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert "acc,none" in saved["results"][MC]
    assert saved["config"]["interventions"] == "skip:L1"
