"""Part 1 of ``benchmarks/device_check.py``: correctness on the device, each check a dict of figures with ``passed``.

Every check compares depthprobe with an independent reference on a random model built on the
device: the Hugging Face model itself (logits), Hugging Face weight surgery on a separate copy
(``tests/surgery.py``: every registered intervention kind), the hook path (hook-free and batched
decoding), a naive forward per choice (the multiple-choice engine) and an in-process run (Ray).
Bounds are the suite's policy for the model's dtype (``tests/tolerance.py``: float32 or
bfloat16). Greedy tokens are compared up to each row's first step whose top-2 margin is within
the logit bound (a near-tie rounding may flip); a check that compares nothing fails.
"""

from __future__ import annotations

import copy
import inspect
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

import depthprobe as dp
from depthprobe.evaluation.fast_decode import BlockDecoder, HookFreeDecoder
from depthprobe.evaluation.generation import greedy_generate
from depthprobe.evaluation.loglikelihood import encode_pair
from depthprobe.interventions import INTERVENTION_TYPES
from depthprobe.sweep import condition_id, score_conditions_reuse
from depthprobe.tasks import get_task
from tests import surgery
from tests.tolerance import ForwardShape, bound_for, logit_scale, top2_margins

TEXTS = ["Once upon a time, there was a little girl named Lily.", "Q: 3 plus 4?\nA: The answer is 7."]


def _ids(model: Any, rows: int, tokens: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, min(model.cfg.d_vocab, 30000), (rows, tokens), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids.to(next(model.parameters()).device)


def bridge_logits(model: Any, ref: Any) -> dict[str, Any]:
    """The bridge's logits equal the Hugging Face model's on the same weights."""
    ids = _ids(model, 2, 24, 0)
    with torch.no_grad():
        got, expected = model(ids), ref(ids).logits
    bound = bound_for(expected.dtype)[0](ForwardShape.of(ref), logit_scale(expected))
    diff = float((got.float() - expected.float()).abs().max())
    return {"passed": diff <= bound, "max_abs_diff": diff, "bound": bound}


def _mean_surgery(ref: Any, layer: int, head: int, tokenizer: Any) -> Any:
    """mean_head as weight surgery: the head's o_proj columns zeroed, their product with the head's mean input
    (over every position of TEXTS, one unpadded forward each) added as an o_proj bias."""
    attn, d = surgery.layers(ref)[layer].self_attn, surgery.d_head(ref)
    rows: list[torch.Tensor] = []
    handle = attn.o_proj.register_forward_pre_hook(lambda m, a: rows.append(a[0][0, :, head * d : (head + 1) * d]))
    try:
        with torch.no_grad():
            for text in TEXTS:
                ref(torch.tensor([tokenizer(text)["input_ids"]], device=ref.device))
    finally:
        handle.remove()
    mean = torch.cat(rows).double().mean(0)
    w = attn.o_proj.weight
    bias = (w[:, head * d : (head + 1) * d].double() @ mean).to(w.dtype)
    w.data[:, head * d : (head + 1) * d] = 0
    attn.o_proj.bias = torch.nn.Parameter(bias, requires_grad=False)
    return ref


def intervention_cases(model: Any, ref: Any) -> dict[str, tuple[list, Any]]:
    """One condition and its weight surgery per registered kind, plus a composite condition."""
    cfg = ref.config
    last, h = cfg.num_hidden_layers - 1, cfg.num_attention_heads
    r = h // cfg.num_key_value_heads
    g = torch.Generator().manual_seed(3)
    w = surgery.layers(ref)[1].self_attn.o_proj.weight
    source = (torch.randn(w.shape, generator=g) * float(w.float().std())).to(w.device, w.dtype)

    def zero(module: str, layer: int) -> Any:
        def edit(m: Any) -> Any:
            owner = surgery.layers(m)[layer]
            getattr(owner.self_attn if module == "o_proj" else owner.mlp, module).weight.data.zero_()
            return m

        return edit

    cases = {
        "skip": ([dp.skip_layer(1)], lambda m: surgery.delete_layers(m, [1])),
        "skip_attn": ([dp.skip_attn(last)], zero("o_proj", last)),
        "skip_mlp": ([dp.skip_mlp(0)], zero("down_proj", 0)),
        "head": ([dp.zero_head(1, 3 % h)], lambda m: surgery.zero_o_proj_heads(m, 1, [3 % h])),
        "group": ([dp.zero_kv_group(last, 1)], lambda m: surgery.zero_o_proj_heads(m, last, range(r, 2 * r))),
        "head_weights": ([dp.zero_head_weights(1, 2)], lambda m: surgery.zero_head_weights(m, 1, 2)),
        "o_proj": ([dp.patch_o_proj(1, source)], lambda m: surgery.set_o_proj(m, 1, source)),
        "mean_head": ([dp.mean_head(0, 1, TEXTS)], lambda m: _mean_surgery(m, 0, 1, model.tokenizer)),
    }

    def composite(m: Any) -> Any:  # zero by the original layer indices first, then delete layer 0
        surgery.zero_o_proj_heads(m, 1, [0])
        surgery.zero_o_proj_heads(m, last, range(r))
        return surgery.delete_layers(m, [0])

    cases["composite"] = ([dp.skip_layer(0), dp.zero_head(1, 0), dp.zero_kv_group(last, 0)], composite)
    return cases


def interventions_vs_surgery(model: Any, ref: Any) -> dict[str, Any]:
    """Every intervention kind under ``ablate`` equals its weight surgery on a Hugging Face copy (one forward).

    An edit that moves no logit by more than the bound cannot tell an intervention from none: in
    float32 that fails the check; in bfloat16, whose bound is wide, such kinds are listed
    (``not_discriminating``) and the float32 run is the one that proves them.
    """
    ids = _ids(model, 2, 16, 1)
    shape, logit_bound = ForwardShape.of(ref), bound_for(ref.dtype)[0]
    cases = intervention_cases(model, ref)
    missing = sorted(set(INTERVENTION_TYPES.names()) - set(cases))
    with torch.no_grad():
        unedited = ref(ids).logits
    kinds: dict[str, Any] = {}
    for kind, (condition, edit) in cases.items():
        with torch.no_grad():
            expected = edit(copy.deepcopy(ref))(ids).logits
            with dp.ablate(model, *condition):
                got = model(ids)
        bound = logit_bound(shape, logit_scale(expected))
        diff = float((got.float() - expected.float()).abs().max())
        moved = float((expected.float() - unedited.float()).abs().max())
        kinds[kind] = {
            "condition": condition_id(condition),
            "max_abs_diff": diff,
            "bound": bound,
            "edit_moves_logits": moved,
            "passed": diff <= bound and (moved > bound or ref.dtype != torch.float32),
        }
        del expected, got
    return {
        "passed": not missing and all(k["passed"] for k in kinds.values()),
        "kinds_checked": len(kinds),
        "kinds_without_surgery": missing,
        "failed": [k for k, v in kinds.items() if not v["passed"]],
        "not_discriminating": [k for k, v in kinds.items() if v["edit_moves_logits"] <= v["bound"]],
        "max_diff_over_bound": max(v["max_abs_diff"] / v["bound"] for v in kinds.values()),
        "kinds": kinds,
    }


def decode_conditions(model: Any) -> list[list]:
    last = model.cfg.n_layers - 1
    return [
        [],
        [dp.skip_layer(1)],
        [dp.zero_head(last, 1)],
        [dp.zero_kv_group(1, 0)],
        [dp.zero_head_weights(1, 2)],
        [dp.skip_layer(0), dp.zero_head(1, 0), dp.zero_kv_group(last, 0)],
    ]


def _step_margins(model: Any, condition: list, ids: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Top-2 margins of the reference's greedy steps (hook path, one full forward) and the logit bound."""
    full = torch.cat([ids, new], dim=1)
    with torch.no_grad(), dp.ablate(model, *condition):
        logits = model(full)[:, ids.shape[1] - 1 : -1]
    shape = ForwardShape.of(model)
    return top2_margins(logits), bound_for(logits.dtype)[0](shape, logit_scale(logits))


def compare_tokens(got: torch.Tensor, ref: torch.Tensor, margins: torch.Tensor, bound: float) -> dict[str, int]:
    """Tokens compared up to each row's first near-tie step (margin <= bound); mismatches among them."""
    compared = mismatched = 0
    for row in range(ref.shape[0]):
        near = (margins[row] <= bound).nonzero()
        stop = int(near[0]) if len(near) else ref.shape[1]
        compared += stop
        mismatched += int((got[row, :stop] != ref[row, :stop]).sum())
    return {"compared": compared, "mismatched": mismatched, "identical": int((got == ref).sum()), "total": ref.numel()}


def decoding(model: Any, *, new_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hook-free decoding (per condition) and batched conditions (one BlockDecoder batch) against the hook path."""
    conds = decode_conditions(model)
    ids = _ids(model, 3, 20, 2)
    mask = torch.ones_like(ids)
    k, b = len(conds), ids.shape[0]
    batched = greedy_generate(
        model, ids.repeat(k, 1), mask.repeat(k, 1), max_new_tokens=new_tokens, decoder=BlockDecoder(conds)
    )
    free_sum: dict[str, int] = {}
    block_sum: dict[str, int] = {}
    per: dict[str, Any] = {}
    baseline, moved = None, 0
    for j, cond in enumerate(conds):
        with dp.ablate(model, *cond):
            ref = greedy_generate(model, ids, mask, max_new_tokens=new_tokens)
        baseline = ref if baseline is None else baseline
        moved += not torch.equal(ref, baseline)
        free = greedy_generate(model, ids, mask, max_new_tokens=new_tokens, decoder=HookFreeDecoder(cond))
        margins, bound = _step_margins(model, cond, ids, ref)
        a = compare_tokens(free, ref, margins, bound)
        c = compare_tokens(batched[j * b : (j + 1) * b, : ref.shape[1]], ref, margins, bound)
        per[condition_id(cond)] = {"hook_free": a, "batched": c, "min_margin_over_bound": float(margins.min()) / bound}
        for total, part in ((free_sum, a), (block_sum, c)):
            for key, value in part.items():
                total[key] = total.get(key, 0) + value
    common = {"conditions": len(conds), "rows": b, "new_tokens": new_tokens, "conditions_that_change_tokens": moved}
    free_rec = {
        "passed": free_sum["mismatched"] == 0 and free_sum["compared"] > 0,
        **free_sum,
        **common,
        "per_condition": {
            cid: v["hook_free"] | {"min_margin_over_bound": v["min_margin_over_bound"]} for cid, v in per.items()
        },
    }
    block_rec = {
        "passed": block_sum["mismatched"] == 0 and block_sum["compared"] > 0,
        **block_sum,
        **common,
        "per_condition": {cid: v["batched"] for cid, v in per.items()},
    }
    return free_rec, block_rec


def mc_engine(model: Any) -> dict[str, Any]:
    """score_conditions_reuse equals a naive forward under ``ablate``: every (context + choice)[:-1] of a condition
    right-padded into one batch (no cache, no reuse), log-softmax in the model's dtype, as lm-eval scores."""
    last = model.cfg.n_layers - 1
    conds = [[], [dp.skip_layer(1)], [dp.zero_head(1, 0)], [dp.zero_kv_group(last, 1)], [dp.skip_mlp(0)]]
    reqs = [(i.prompt, list(i.continuations)) for i in get_task("organism_openbook").instances(limit=3)]
    got = score_conditions_reuse(model, reqs, conds, batch_size=2, max_rows=4)
    shape, ll_bound = ForwardShape.of(model), bound_for(next(model.parameters()).dtype)[1]
    device = next(model.parameters()).device
    pairs = [
        (doc, j, *encode_pair(model.tokenizer, context, cont))
        for doc, (context, conts) in enumerate(reqs)
        for j, cont in enumerate(conts)
    ]
    width = max(len(ctx) + len(tail) - 1 for _, _, ctx, tail in pairs)
    tokens = torch.zeros((len(pairs), width), dtype=torch.long, device=device)
    for row, (_, _, ctx, tail) in enumerate(pairs):
        tokens[row, : len(ctx) + len(tail) - 1] = torch.tensor((ctx + tail)[:-1])
    worst, worst_ratio = 0.0, 0.0
    for cond in conds:
        with torch.no_grad(), dp.ablate(model, *cond):
            logits = model(tokens)
        lp = torch.log_softmax(logits, dim=-1)
        for row, (doc, j, ctx, tail) in enumerate(pairs):
            picked = lp[row, len(ctx) - 1 : len(ctx) - 1 + len(tail)].gather(
                1, torch.tensor(tail, device=device)[:, None]
            )
            ll = float(picked.sum())
            engine = got[condition_id(cond)][doc].loglikelihoods[j]
            bound = ll_bound(shape, logit_scale(logits[row]), len(tail), ll)
            worst, worst_ratio = max(worst, abs(engine - ll)), max(worst_ratio, abs(engine - ll) / bound)
    return {
        "passed": worst_ratio <= 1.0,
        "max_abs_diff": worst,
        "max_diff_over_bound": worst_ratio,
        "loglikelihoods": len(pairs) * len(conds),
        "conditions": len(conds),
    }


def _metrics(df: Any) -> dict[str, list]:
    cols = [c for c in df.columns if c.startswith(("acc", "exact_match")) and not c.endswith("stderr")]
    return {c: df[c].tolist() for c in cols} | {"condition": df["condition"].tolist()}


def sweep_resumes(model: Any, tmp: Path) -> dict[str, Any]:
    """A layer sweep's run directory: a condition file removed is recomputed alone, equal; a rerun computes nothing."""
    out = tmp / "resume"
    kw = dict(out_dir=out, limit=6, batch_size=3, progress=False)
    first = dp.run_sweep(model, "organism_knowledge", "layers", **kw)
    files = sorted((out / "conditions").glob("[!.]*.json"))
    files[-1].unlink()
    second = dp.run_sweep(model, "organism_knowledge", "layers", **kw)
    third = dp.run_sweep(model, "organism_knowledge", "layers", **kw)
    same = _metrics(first) == _metrics(second)
    return {
        "passed": same and len(second.attrs["computed"]) == 1 and not third.attrs["computed"],
        "conditions": len(first),
        "recomputed": second.attrs["computed"],
        "rerun_computed": third.attrs["computed"],
        "results_equal": same,
    }


def draft_vs_plain(model: Any, tmp: Path, new_tokens: int) -> dict[str, Any]:
    """A generation sweep verified against the baseline (``draft="baseline"``) gives plain decoding's generations."""
    if "draft" not in inspect.signature(dp.run_sweep).parameters:
        return {"status": "not available", "passed": None, "note": "run_sweep has no draft= parameter (issue 22)"}
    last = model.cfg.n_layers - 1
    conds = [[dp.skip_layer(1)], [dp.zero_head(last, 1)], [dp.zero_kv_group(1, 0)]]
    kw = dict(limit=4, batch_size=4, max_gen_toks=new_tokens, progress=False)
    plain = dp.run_sweep(model, "organism_reasoning", conds, out_dir=tmp / "plain", draft=None, **kw)
    drafted = dp.run_sweep(model, "organism_reasoning", conds, out_dir=tmp / "draft", draft="baseline", **kw)
    a = dp.load_results(tmp / "plain", samples=True).sort_values(["condition", "doc_id"])
    b = dp.load_results(tmp / "draft", samples=True).sort_values(["condition", "doc_id"])
    same = a["generation"].tolist() == b["generation"].tolist()
    differ = int(sum(x != y for x, y in zip(a["generation"], b["generation"])))
    return {
        "passed": same and _metrics(plain) == _metrics(drafted),
        "generations": len(a),
        "generations_differing": differ,
        "generated_tokens": int(a["n_generated_tokens"].sum()),
    }


def ray_one_gpu_worker(device: str, tmp: Path) -> dict[str, Any]:
    """RayExecutor with one worker holding one GPU (a logical one on CPU) writes the in-process run directory."""
    try:
        import ray
    except ImportError:
        return {"status": "not run", "passed": None, "note": "ray is not installed here (too large to carry)"}

    from depthprobe.tiny import make_tiny_model

    os.environ.update({"RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": tempfile.mkdtemp(prefix="dcray", dir="/tmp")})
    path = make_tiny_model(tmp / "ray_model", arch="llama", n_layers=3, seed=4)
    spec = dp.ModelSpec(path, dtype="float32", device=device)
    kw = dict(limit=4, batch_size=4, progress=False)
    local = dp.run_sweep(dp.load_model(spec), "organism_knowledge", "layers", out_dir=tmp / "ray_local", **kw)
    gpus = 1 if device.startswith("cuda") else None
    ray.init(
        num_cpus=2,
        num_gpus=gpus if gpus else 1,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=os.environ["RAY_TMPDIR"],
    )
    executor = dp.RayExecutor(num_workers=1, num_gpus_per_worker=1, num_cpus_per_worker=1)
    try:
        remote = dp.run_sweep(spec, "organism_knowledge", "layers", out_dir=tmp / "ray_remote", executor=executor, **kw)
        workers = executor.workers()
    finally:
        executor.close()
        ray.shutdown()
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
    same = _metrics(local) == _metrics(remote)
    return {
        "passed": same and len(workers) == 1 and len(workers[0].get("gpu_ids", [])) == 1,
        "conditions": len(remote),
        "results_equal": same,
        "worker_gpu_ids": [w.get("gpu_ids") for w in workers],
        "cuda_visible_devices": [w.get("cuda_visible_devices") for w in workers],
    }
