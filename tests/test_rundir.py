"""Run directories that cannot be fooled (issue 16): identity, per-file digests, repair, validation first, truncation.

Each test is one finding of the issue: a damaged file is named, moved aside and recomputed; a
missing manifest does not adopt results of other settings; a refused command writes nothing;
the data and the weights (edited in place) are part of the run's identity; left truncation is
counted, warned and shown. The processes tests (lock, concurrency, Ctrl-C) are in
``test_rundir_processes.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings
from pathlib import Path

import pandas as pd
import pytest

import depthprobe as dp
from depthprobe import hashing
from depthprobe.data import DataFormatError
from depthprobe.evaluator import TruncationWarning
from depthprobe.organisms import CHECKPOINTS_DIR
from depthprobe.results import DamagedRunError, ManifestMismatchError, load_results
from depthprobe.sweep import run_sweep

ORGANISM = CHECKPOINTS_DIR / "organism-base"


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path):
    return dp.load_model(tiny_llama_dir)


def sweep(model, out: Path, **kw):
    kw.setdefault("limit", 3)
    return run_sweep(
        model,
        kw.pop("task", "organism_knowledge"),
        kw.pop("grid", "layers"),
        out_dir=out,
        batch_size=4,
        progress=False,
        **kw,
    )


def condition_files(run: Path) -> list[Path]:
    return sorted((run / "conditions").glob("[!.]*.json"))


# ---------------------------------------------------------------------------------------
# Finding 6: damage is named and repaired.


def test_truncated_condition_file_is_named_moved_aside_and_recomputed(tiny, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    before = sweep(tiny, run)
    victim = condition_files(run)[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(DamagedRunError, match=f"{victim}.*not valid JSON.*re-run the sweep command"):
        load_results(run)
    again = sweep(tiny, run)
    assert again.attrs["computed"] == [json.loads(victim.read_text())["condition"]]  # only that one
    moved = list((run / "damaged").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith(victim.name)
    assert f"damaged condition file {victim}" in capsys.readouterr().err
    pd.testing.assert_frame_equal(again.drop(columns="wall_s"), before.drop(columns="wall_s"))


@pytest.mark.parametrize(
    "content,problem", [("{not json", "not valid JSON"), ("[1, 2]", "JSON list, not an object"), ("", "not valid JSON")]
)
def test_damaged_manifest_is_one_line_naming_the_file(tiny, tmp_path: Path, content: str, problem: str) -> None:
    run = tmp_path / "run"
    sweep(tiny, run, grid=[[dp.skip_layer(0)]])
    (run / "manifest.json").write_text(content)
    for action in (lambda: load_results(run), lambda: sweep(tiny, run, grid=[[dp.skip_layer(0)]])):
        with pytest.raises(DamagedRunError) as err:
            action()
        message = str(err.value)
        assert "\n" not in message and str(run / "manifest.json") in message and problem in message
        assert "delete it and re-run" in message
    (run / "manifest.json").unlink()  # the remedy the message gives: results of the same settings are kept
    assert sweep(tiny, run, grid=[[dp.skip_layer(0)]]).attrs["computed"] == []


# ---------------------------------------------------------------------------------------
# Finding 4: a missing manifest adopts only results of the same settings.


def test_missing_manifest_does_not_adopt_results_of_other_settings(tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = sweep(tiny, run, limit=4)
    (run / "manifest.json").unlink()
    with pytest.raises(ManifestMismatchError, match=r"conditions/.*\.json was computed under other settings"):
        sweep(tiny, run, limit=2)
    assert not (run / "manifest.json").exists()  # nothing written for the refused command
    again = sweep(tiny, run, limit=4)  # the same settings adopt their own results, recomputing nothing
    assert again.attrs["computed"] == [] and json.loads((run / "manifest.json").read_text())["limit"] == 4
    pd.testing.assert_frame_equal(again, first)


def test_rewritten_manifest_does_not_relabel_results(tiny, tmp_path: Path) -> None:
    sweep(tiny, tmp_path / "a", limit=4)
    sweep(tiny, tmp_path / "b", limit=2, grid=[[dp.skip_layer(0)]])
    shutil.copy(tmp_path / "b" / "manifest.json", tmp_path / "a" / "manifest.json")  # limit 2 over limit-4 files
    with pytest.raises(ManifestMismatchError, match=r"a/conditions/baseline-\w+\.json was computed under other"):
        load_results(tmp_path / "a")
    with pytest.raises(ManifestMismatchError, match=r"a/conditions/baseline-\w+\.json was computed under other"):
        sweep(tiny, tmp_path / "a", limit=2, grid=[[dp.skip_layer(0)]])


# ---------------------------------------------------------------------------------------
# Finding 5: validate first, then write.


@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(limit=0), "limit must be a positive integer"),
        (dict(limit=-3), "limit must be a positive integer number of documents, got -3"),
        (dict(num_fewshot=99, task="organism_reasoning"), "num_fewshot=99 exceeds the 8 few-shot examples"),
        (dict(grid="heads:9"), r"layer 9 out of range; the model has layers 0\.\.2"),
        (dict(task="organism_knowlege"), "unknown task 'organism_knowlege'; did you mean 'organism_knowledge'"),
    ],
)
def test_refused_command_writes_nothing_and_does_not_block_the_corrected_one(tiny, tmp_path: Path, bad, message):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        sweep(tiny, run, **{"grid": [[dp.skip_layer(0)]], **bad})
    assert not run.exists()
    df = sweep(tiny, run, limit=2, grid=[[dp.skip_layer(0)]])
    assert list(df["condition"]) == ["baseline", "skip:L0"] and (df["n_samples"] == 2).all()


def test_plain_hugging_face_model_is_refused_with_what_to_pass(tiny, tmp_path: Path) -> None:
    for call in (
        lambda: dp.evaluate(tiny.original_model, "organism_knowledge", limit=2),
        lambda: sweep(tiny.original_model, tmp_path / "run"),
    ):
        with pytest.raises(
            TypeError,
            match=r"needs a model from depthprobe\.load_model .* got a "
            r"transformers\.models\.llama\.modeling_llama\.LlamaForCausalLM; "
            r"pass dp\.load_model\('<model directory or hub id>'\) instead",
        ):
            call()
    assert not (tmp_path / "run").exists()


def test_load_model_of_a_file_names_the_directory_to_pass(tmp_path: Path) -> None:
    with pytest.raises(
        dp.ModelNotFoundError,
        match=r"model\.safetensors is a file; pass the model directory .*"
        r"organism-base",
    ):
        dp.load_model(ORGANISM / "model.safetensors")


# ---------------------------------------------------------------------------------------
# Finding 2: the data read is part of the run's identity.

SUBJECT = "abstract_algebra"


def write_mmlu(root: Path, n: int = 6, *, reverse: bool = False, lines: list[str] | None = None) -> Path:
    folder = root / "mmlu" / "all"
    folder.mkdir(parents=True)
    docs = [
        {"question": f"What is {i} + {i}?", "subject": SUBJECT, "choices": [str(2 * i), str(i), "7", "x"], "answer": 0}
        for i in range(n)
    ]
    if reverse:
        docs.reverse()
    text = lines if lines is not None else [json.dumps(d) for d in docs]
    (folder / "test.jsonl").write_text("\n".join(text) + "\n")
    (folder / "dev.jsonl").write_text("\n".join(json.dumps(d) for d in docs[:5]) + "\n")
    return root


def test_data_dir_is_part_of_the_identity(tiny, tmp_path: Path) -> None:
    data = write_mmlu(tmp_path / "data")
    run = tmp_path / "run"
    first = sweep(tiny, run, task="mmlu", data_dir=data, num_fewshot=0)
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["data"]["files"]) == {"mmlu/all/test.jsonl"}
    condition_files(run)[2].unlink()
    reversed_data = write_mmlu(tmp_path / "reversed", reverse=True)
    with pytest.raises(ManifestMismatchError, match=r"data\.documents="):
        sweep(tiny, run, task="mmlu", data_dir=reversed_data, num_fewshot=0)
    (run / "manifest.json").unlink()  # even without the manifest, the files refuse the other data
    with pytest.raises(ManifestMismatchError, match="computed under other settings"):
        sweep(tiny, run, task="mmlu", data_dir=reversed_data, num_fewshot=0)
    moved = shutil.copytree(data, tmp_path / "moved")  # the same data elsewhere is the same run
    again = sweep(tiny, run, task="mmlu", data_dir=moved, num_fewshot=0)
    assert len(again.attrs["computed"]) == 1
    pd.testing.assert_frame_equal(again.drop(columns="wall_s"), first.drop(columns="wall_s"))


def test_malformed_and_incomplete_records_name_file_line_and_field(tiny, tmp_path: Path) -> None:
    good = json.dumps({"question": "Q?", "subject": SUBJECT, "choices": ["a", "b", "c", "d"], "answer": 1})
    bad_json = write_mmlu(tmp_path / "a", lines=[good, "", good, '{"question": "Q?", "subject": '])
    path = bad_json / "mmlu" / "all" / "test.jsonl"
    with pytest.raises(DataFormatError, match=rf"^{path}:4: not a valid JSON record"):
        dp.evaluate(tiny, "mmlu", data_dir=bad_json, num_fewshot=0)
    no_answer = write_mmlu(tmp_path / "b", lines=[good, "", good.replace('"answer": 1', '"answr": 1')])
    path = no_answer / "mmlu" / "all" / "test.jsonl"
    with pytest.raises(
        DataFormatError,
        match=rf"^{path}:3: the record has no field 'answer', which task 'mmlu' "
        r"needs; the record has: answr, choices, question, subject$",
    ):
        dp.evaluate(tiny, "mmlu", data_dir=no_answer, num_fewshot=0)
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataFormatError, match=rf"{path}:3: the record has no field 'answer'"):
        sweep(tiny, tmp_path / "run", task="mmlu", data_dir=no_answer, num_fewshot=0)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------
# Finding 3: weights edited in place are a different model.


def zero_tensor_in_place(file: Path, name: str) -> None:
    """Overwrite one tensor of a safetensors file with zeros, keeping size and mtime (a careful in-place edit)."""
    with open(file, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    start, end = header[name]["data_offsets"]
    stat = file.stat()
    with open(file, "r+b") as f:
        f.seek(8 + n + start)
        f.write(bytes(end - start))
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_weights_edited_in_place_are_refused(tmp_path: Path, monkeypatch) -> None:
    ckpt = Path(shutil.copytree(ORGANISM, tmp_path / "organism-base"))
    run = tmp_path / "run"
    first = sweep(dp.load_model(ckpt), run, limit=2, grid=[[dp.skip_layer(0)]])
    revision = json.loads((run / "manifest.json").read_text())["revision"]
    zero_tensor_in_place(ckpt / "model.safetensors", "model.layers.3.self_attn.o_proj.weight")
    edited = dp.load_model(ckpt)
    assert not edited.original_model.model.layers[3].self_attn.o_proj.weight.any()
    with pytest.raises(ManifestMismatchError, match=rf"revision={revision!r}, but this command has revision='local-"):
        sweep(edited, run, limit=2, grid=[[dp.skip_layer(0)]])
    assert [p.name for p in condition_files(run)] == [p.name for p in condition_files(run)]  # nothing removed
    assert len(load_results(run)) == len(first)


def test_weight_hashes_are_cached_by_path_size_and_times(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(hashing.CACHE_DIR_ENV, str(tmp_path / "cache"))
    file = tmp_path / "w.safetensors"
    file.write_bytes(b"\x01" * 100_000)
    reads: list[Path] = []
    real = hashing._sha256
    monkeypatch.setattr(hashing, "_sha256", lambda p, *a: reads.append(p) or real(p, *a))
    digest = hashing.file_sha256(file)
    assert digest == hashing.hashlib.sha256(b"\x01" * 100_000).hexdigest()
    assert hashing.file_sha256(file) == digest and len(reads) == 1  # hashed once, then from the cache
    assert (tmp_path / "cache" / "file-sha256.json").is_file()
    stat = file.stat()
    with open(file, "r+b") as f:
        f.write(b"\x00")
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: ctime still tells
    assert hashing.file_sha256(file) != digest and len(reads) == 2


# ---------------------------------------------------------------------------------------
# Finding 9: left truncation is visible.


def test_left_truncation_is_warned_counted_and_titled(tiny, tmp_path: Path) -> None:
    from depthprobe.plots import layer_curves
    from depthprobe.tiny import make_tiny_model

    short = dp.load_model(
        make_tiny_model(tmp_path / "short", arch="llama", n_layers=2, seed=0, max_position_embeddings=48)
    )
    data = write_mmlu(tmp_path / "data")
    with pytest.warns(TruncationWarning, match=r"mmlu: 3 of 3 prompts were longer than the model's 48 positions"):
        df = sweep(short, tmp_path / "run", task="mmlu", data_dir=data, num_fewshot=5)
    assert list(df["n_truncated"]) == [3, 3, 3]
    assert load_results(tmp_path / "run", samples=True)["truncated"].all()
    assert "cut from the left" in layer_curves(df, ["acc"], title="mmlu").layout.title.text
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        fine = sweep(tiny, tmp_path / "zero-shot", task="mmlu", data_dir=data, num_fewshot=0)
    assert list(fine["n_truncated"]) == [0, 0, 0, 0]
    assert layer_curves(fine, ["acc"], title="mmlu").layout.title.text == "mmlu"


def test_a_fractional_limit_is_refused_by_name() -> None:
    """``limit=2.5`` used to reach a list slice; the check itself, unwrapped from the test-time type checker."""
    task = dp.get_task("organism_knowledge")
    instances = getattr(type(task).instances, "__wrapped__", type(task).instances)
    with pytest.raises(ValueError, match=r"^limit must be a positive integer number of documents, got 2\.5$"):
        instances(task, limit=2.5)
    assert len(instances(task, limit=2)) == 2


def test_run_directory_of_an_older_depthprobe_is_refused_by_name(tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sweep(tiny, run, grid=[[dp.skip_layer(0)]])
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["identity_digest"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestMismatchError, match=f"^{run} was made by an older depthprobe"):
        sweep(tiny, run, grid=[[dp.skip_layer(0)]])


def test_a_record_that_process_docs_cannot_read_is_named(tiny, tmp_path: Path) -> None:
    folder = tmp_path / "data" / "hellaswag" / "default"
    folder.mkdir(parents=True)
    doc = {
        "activity_label": "Cooking",
        "ctx_a": "She cracks an egg.",
        "ctx_b": "then she",
        "label": "0",
        "endings": ["fries it.", "sings.", "sleeps.", "runs."],
    }
    broken = {k: v for k, v in doc.items() if k != "ctx_b"}
    (folder / "validation.jsonl").write_text("\n".join(json.dumps(d) for d in (doc, doc, broken)) + "\n")
    with pytest.raises(DataFormatError, match=rf"^{folder / 'validation.jsonl'}:3: the record has no field 'ctx_b'"):
        dp.evaluate(tiny, "hellaswag", data_dir=tmp_path / "data")
