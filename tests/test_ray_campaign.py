"""The organisms campaign (campaigns/organisms.toml) end to end on the session's Ray workers: every sweep
complete in its own run directory, equal to an in-process sweep, and resumed without re-running anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import depthprobe as dp
from depthprobe.campaign import _sweep_kwargs, plan_campaign, run_campaign
from depthprobe.sweep import parse_grid

pytest.importorskip("ray")

CAMPAIGN = Path(__file__).resolve().parents[1] / "campaigns" / "organisms.toml"
LIMIT = 2


def _files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "conditions").glob("[!.]*.json"))


def test_the_organisms_campaign_runs_on_ray_and_resumes(ray_executor, tmp_path: Path) -> None:
    root = tmp_path / "ray"
    plan = plan_campaign(CAMPAIGN, root=root, limit=LIMIT)
    assert {s.model_name for s in plan} == {"organism-base", "organism-distilled"}
    assert {s.num_fewshot for s in plan if s.task == "organism_reasoning"} == {0, 1}
    df = run_campaign(CAMPAIGN, executor=ray_executor, root=root, limit=LIMIT, progress=False)
    assert list(df["run_dir"]) == [str(s.out_dir) for s in plan] and len({s.out_dir for s in plan}) == len(plan)
    for s, n in zip(plan, df["n_conditions"]):
        expected = 1 + len(parse_grid(s.model.dims(), s.grid))
        assert n == expected == len(_files(s.out_dir)), s.out_dir
        manifest = json.loads((s.out_dir / "manifest.json").read_text())
        assert (manifest["task"], manifest["limit"]) == (s.task, LIMIT)
        assert Path(manifest["model"]).name == s.model_name

    # a log-likelihood and a generation sweep, each equal to the same sweep run in this process
    picks = [
        s
        for s in plan
        if (s.model_name, s.task, s.grid, s.num_fewshot)
        in {
            ("organism-base", "organism_retrieval", "heads:1", None),
            ("organism-distilled", "organism_closedbook_generative", "layers", None),
        }
    ]
    assert len(picks) == 2
    for s in picks:
        local_dir = tmp_path / "local" / s.out_dir.relative_to(root)
        dp.run_sweep(s.model.load(), s.task, s.grid, out_dir=local_dir, **_sweep_kwargs(s, False))
        ray_rows, local_rows = dp.load_results(s.out_dir, samples=True), dp.load_results(local_dir, samples=True)
        cols = ["condition", "doc_id", "prediction", "correct"]
        cols += ["loglikelihoods"] if "loglikelihoods" in local_rows else ["generation"]
        for col in cols:
            assert list(ray_rows[col]) == list(local_rows[col]), (s.out_dir, col)

    # re-running resumes: nothing is sent to the workers
    units = ray_executor.stats["units"]
    again = run_campaign(CAMPAIGN, executor=ray_executor, root=root, limit=LIMIT, progress=False)
    assert ray_executor.stats["units"] == units and list(again["n_conditions"]) == list(df["n_conditions"])

    # what a killed campaign loses (a whole sweep, one condition of another) is all that is re-run
    before = {s.out_dir: dp.load_results(s.out_dir) for s in picks}
    shutil.rmtree(picks[0].out_dir)
    _files(picks[1].out_dir)[-1].unlink()
    run_campaign(CAMPAIGN, executor=ray_executor, root=root, limit=LIMIT, progress=False)
    assert all(len(_files(s.out_dir)) == n for s, n in zip(plan, df["n_conditions"]))
    for s in picks:
        metric = "acc" if s.task == "organism_retrieval" else "exact_match,first-line"
        assert list(dp.load_results(s.out_dir)[metric]) == list(before[s.out_dir][metric])


def test_campaign_errors_name_what_is_valid(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown campaign setting.*valid:"):
        plan_campaign({"models": ["organism-base"], "tasks": [{"name": "organism_knowledge", "grid": "layers"}]})
    with pytest.raises(ValueError, match="at least one"):
        plan_campaign({"models": [], "tasks": ["organism_knowledge"]})
    with pytest.raises(ValueError, match="unknown task"):
        plan_campaign({"models": ["organism-base"], "tasks": ["organism_knowlege"]})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plan_campaign(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="concurrency=2 needs an executor with remote workers"):
        run_campaign({"models": ["organism-base"], "tasks": ["organism_knowledge"]}, root=tmp_path, concurrency=2)


def test_the_study_campaign_plans_every_model_task_and_protocol() -> None:
    plan = plan_campaign(CAMPAIGN.parent / "study.toml")
    assert {s.model_name for s in plan} == {"llama-3.1-8b", "qwen3-8b", "llama-1-7b", "r1-distill-llama-8b"}
    assert {s.model.dtype for s in plan} == {"bfloat16"}
    qwen_cot = {(s.num_fewshot, s.thinking) for s in plan if s.model_name == "qwen3-8b" and s.task == "gsm8k_cot"}
    assert qwen_cot == {(k, t) for k in (1, 4, 8) for t in (False, True)}
    assert all(s.thinking is None and not s.chat for s in plan if s.model_name != "qwen3-8b" or s.task == "mmlu")
    assert len({s.out_dir for s in plan}) == len(plan)
