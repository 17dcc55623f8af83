"""Every Python example of the documentation runs: README.md and every page under docs/.

A page's ```python blocks run in order in one namespace (a fresh module per page), in a temporary
working directory, so later blocks see what earlier ones defined and run directories land in the
temporary folder. Blocks that must not run here (a GPU command, a shell session, expected output)
are fenced ```bash or ```text: nothing fenced ```python is ever skipped.

The pages name the study's 8B models, GPUs and full benchmark sizes. Before a page runs, its source
is rewritten by SUBSTITUTIONS, in order, and nothing else:

- every 8B model becomes a bundled organism (``organism-base``; the distilled 8B becomes
  ``organism-distilled``), a local 8B directory the real ``../shared/models/stories260K``;
- ``device="cuda"`` becomes ``device="cpu"`` and ``dtype="bfloat16"`` ``dtype="float32"``;
- ``../shared/...`` becomes the absolute path of the shared folder (tests may run from anywhere);
- ``limit=N`` becomes ``limit=min(N, 4)``;
- Ray's ``num_workers=N`` becomes one worker with half a CPU and no GPU, on the suite's shared local
  Ray cluster (the ``ray_cluster`` fixture: two logical GPUs that other tests' workers may hold).

A page that still names an 8B model after the rewrite fails (add a substitution rather than skip it).
Pages share this process, so whatever a page registers (a task, an intervention type, a model
adapter) is unregistered after it.
"""

from __future__ import annotations

import os
import re
import sys
import time
import types
from pathlib import Path

import pytest

from tests.conftest import DATA, SHARED, STORIES

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PAGES = [p for p in PAGES if "figures" not in p.relative_to(REPO).parts[1:]]  # docs/figures links figures/

#: The study's models by every name a page uses, and what runs in their place (see the module docstring).
STUDY_MODELS = {
    '"meta-llama/Llama-3.1-8B"': '"organism-base"',
    '"Qwen/Qwen3-8B"': '"organism-base"',
    '"deepseek-ai/DeepSeek-R1-Distill-Llama-8B"': '"organism-distilled"',
    '"huggyllama/llama-7b"': '"organism-base"',
    '"llama-3.1-8b"': '"organism-base"',
    '"qwen3-8b"': '"organism-base"',
    '"llama-1-7b"': '"organism-base"',
    '"r1-distill-llama-8b"': '"organism-distilled"',
    '"/models/DeepSeek-R1-Distill-Llama-8B"': '"organism-distilled"',
    '"/models/Llama-3.1-8B"': repr(str(STORIES)),
}
LIMIT = 4
SUBSTITUTIONS: list[tuple[str, str]] = [
    *((re.escape(name), small.replace("\\", "\\\\")) for name, small in STUDY_MODELS.items()),
    (r'device="cuda(:\d+)?"', 'device="cpu"'),
    (r'dtype="bfloat16"', 'dtype="float32"'),
    (r'"\.\./shared/', '"' + str(SHARED).replace("\\", "\\\\") + "/"),
    (r"\blimit=(\d+)", rf"limit=min(\1, {LIMIT})"),
    (r"\bnum_workers=\d+", "num_workers=1, num_gpus_per_worker=0, num_cpus_per_worker=0.5"),
]
#: Any of these left in a page's rewritten source is an 8B model the test would try to load.
STUDY_NAMES = re.compile(r"Llama-3\.1-8B|Qwen3-8B|R1-Distill|llama-7b|llama-1-7b|qwen3-8b|llama-3\.1-8b", re.I)

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """The ```python blocks of a page with the line each starts on."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


def rewrite(source: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        source = re.sub(pattern, replacement, source)
    return source


def _registries() -> list[tuple[object, str]]:
    """(object, attribute) of every registry a page may extend: tasks, intervention types, model adapters."""
    import depthprobe.adapter as adapter
    import depthprobe.interventions.base as base
    import depthprobe.tasks as tasks

    return [(tasks, "_REGISTRY"), (base.INTERVENTION_TYPES, "_items"), (adapter, "_ADAPTERS")]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A temporary working directory, the shared data as the default data directory, one torch thread (the
    pages' models are tiny: a second thread only contends with the machine's other jobs), registries restored."""
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEPTHPROBE_DATA_DIR", str(DATA))
    saved = [(obj, name, getattr(obj, name).copy()) for obj, name in _registries() if hasattr(obj, name)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)
    for obj, name, value in saved:
        setattr(obj, name, value)


def test_pages_are_found():
    """The test sees the pages it should (a renamed docs folder must not turn it into a no-op)."""
    names = {p.name for p in PAGES}
    assert {"README.md", "getting-started.md", "interventions.md", "extending.md"} <= names
    assert sum(len(python_blocks(p)) for p in PAGES) >= 35


def test_no_python_hides_under_another_fence():
    """Python is fenced ```python at the start of a line (run here) or it is not Python: ```py, ```pycon or an
    indented fence would escape the test."""
    fences = re.compile(r"^(?:[ \t]+```[ \t]*python|```[ \t]*(?:py|python3|pycon|ipython|Python)\b)", re.M)
    hidden = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in PAGES for m in fences.finditer(p.read_text("utf-8"))]
    assert not hidden, f"fence Python examples as ```python so they run: {hidden}"


def test_readme_is_a_front_page():
    """The README stays a front page (issue 25: at most 250 lines); the guide lives under docs/."""
    assert len((REPO / "README.md").read_text("utf-8").splitlines()) <= 250


def test_rewrite_is_what_the_docstring_says():
    src = 'dp.load_model("qwen3-8b", dtype="bfloat16", device="cuda")\n'
    src += 'dp.evaluate(m, "mmlu", limit=200, data_dir="../shared/data")'
    out = rewrite(src)
    assert '"organism-base"' in out and 'dtype="float32"' in out and 'device="cpu"' in out
    assert f"limit=min(200, {LIMIT})" in out and str(SHARED) + "/data" in out and not STUDY_NAMES.search(out)


def _needs(text: str) -> str | None:
    """Why a page cannot run here (the shared model or data it reads is absent), or None."""
    if (
        re.search(r"\.\./shared/models|stories260K|/models/Llama-3\.1-8B", text)
        and not (STORIES / "config.json").is_file()
    ):
        return f"the page runs on the real stories260K model, absent here ({STORIES})"
    if "../shared/data" in text and not DATA.is_dir():
        return f"the page reads the real benchmark data, absent here ({DATA})"
    return None


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_examples_run(page: Path, isolated, capsys, request):
    blocks = python_blocks(page)
    text = "\n".join(source for _, source in blocks)
    if "RayExecutor" in text:
        request.getfixturevalue("ray_cluster")  # the suite's one local cluster (no ~/.ray token, private temp dir)
    if _needs(text):
        pytest.skip(_needs(text))
    name = "docs_" + re.sub(r"\W", "_", str(page.relative_to(REPO)))
    module = types.ModuleType(name)  # a real module, so classes a page defines pickle (Ray, run_sweep's units)
    module.__file__ = str(page)
    sys.modules[name] = module
    start, times = time.perf_counter(), []
    try:
        for line, source in blocks:
            times.append((line, time.perf_counter()))
            code = rewrite(source)
            left = STUDY_NAMES.search(code)
            assert left is None, f"{page.name}:{line}: {left.group(0)!r} is not substituted (see SUBSTITUTIONS)"
            try:
                exec(compile(code, f"{page}:{line}", "exec"), module.__dict__)
            except Exception as err:
                raise AssertionError(
                    f"{page.relative_to(REPO)}, the block at line {line} failed: "
                    f"{type(err).__name__}: {err}\n--- rewritten source ---\n{code}"
                ) from err
    finally:
        sys.modules.pop(name, None)
    with capsys.disabled():
        if os.environ.get("DEPTHPROBE_DOCS_TIMES"):
            ends = [t for _, t in times[1:]] + [time.perf_counter()]
            each = ", ".join(f"line {line} {end - t:.1f} s" for (line, t), end in zip(times, ends))
            print(f"\n{page.relative_to(REPO)}: {len(blocks)} block(s), {time.perf_counter() - start:.1f} s ({each})")
