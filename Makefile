# Two commands do all the set-up on a fresh clone: `make test` and `make demo`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.depthprobe-installed
PYTEST_ARGS ?=

.PHONY: install test test-numerics lint demo figures organisms bench wheelhouse clean

install: $(STAMP)

# torch==2.13.0 is the CPU build that lies on this project's machines; elsewhere fall back to the range in pyproject.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0" || true
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,docs]"
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest $(PYTEST_ARGS)

# The layering of docs/architecture.md (import-linter, configured in pyproject.toml), then ruff's format and lint.
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check src tests benchmarks experiments
	$(VENV)/bin/ruff check src tests benchmarks experiments

# The float32 comparisons again under the other CPU kernel sets and thread counts (`make test` is the native
# set with 2 threads): the tolerances of tests/tolerance.py must hold under all of them. The greedy-generation
# tests are not rerun: each asserts that every step's top-2 margin exceeds the logit bound these files check,
# so no kernel set can flip a token; the float64 twins do not depend on the kernel set by construction.
NUMERICS_TESTS := tests/test_interventions.py tests/test_sweep.py tests/test_run_sweep_engine.py \
  tests/test_loglikelihood.py tests/test_lm_eval_agreement.py tests/test_results.py
test-numerics: $(STAMP)
	for run in default:1 avx2:2 native:1; do kernels=$${run%:*}; threads=$${run#*:}; \
	  echo "== ATEN_CPU_CAPABILITY=$$kernels, $$threads torch thread(s) =="; \
	  env $$( [ $$kernels = native ] || echo ATEN_CPU_CAPABILITY=$$kernels ) DEPTHPROBE_TEST_THREADS=$$threads \
	    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
	    $(PY) -m pytest -q -p no:cacheprovider $(NUMERICS_TESTS) || exit 1; \
	done

# The main job: every head of organism-base's last layer ablated three ways on chain-of-thought reasoning,
# then its report (a static site: open the printed index.html in a browser, offline).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) experiments/reasoning_heads.py
	$(PY) -m depthprobe report runs/organism-base/reasoning_heads -o runs/report

# Every experiment script on the organisms: the figures committed under figures/ (about 8 minutes on 2 CPU cores).
EXPERIMENTS := reasoning_heads protocols knowledge retrieval retrieval_heads reasoning_layers distilled delta_model
figures: $(STAMP)
	for s in $(EXPERIMENTS); do \
	  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) experiments/$$s.py --no-progress \
	    $$( [ $$s = reasoning_layers ] && echo --limit 100 ) || exit 1; \
	done

# Retrain the organisms into the package (deterministic for a given thread count; about 20 minutes).
organisms: $(STAMP)
	$(PY) -m depthprobe.organisms.train --out src/depthprobe/organisms/checkpoints

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/sweep_speed.py

# Wheels for the GPU machine (docs/gpu.md): what depthprobe and benchmarks/device_check.py need that the machine's
# image lacks, for CPython 3.12 manylinux x86-64, one exact version each (the versions this venv runs), and
# depthprobe's own wheel; at most 48 MiB (a device call carries 64 MiB in all). transformer-lens goes without its
# declared extras (wandb, beartype, ...), which its import does not need.
WHEELS       := transformer-lens datasets dill multiprocess wonderwords
WHEEL_TARGET := --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
                --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
wheelhouse: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download -q --no-deps $(WHEEL_TARGET) -d .whl $$($(PY) -c "import importlib.metadata as m; \
	  print(' '.join(d + '==' + m.version(d) for d in '$(WHEELS)'.split()))")
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w .whl .
	@ls -l .whl; total=$$(cat .whl/*.whl | wc -c); \
	  echo "wheelhouse .whl/: $$(ls .whl | wc -l) wheels, $$total bytes = $$(awk "BEGIN {printf \"%.1f\", $$total / 1048576}") MiB (limit 48 MiB)"; \
	  test $$total -le 50331648 || { echo "the wheelhouse exceeds 48 MiB"; exit 1; }

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
