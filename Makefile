# Two commands do all the set-up on a fresh clone: `make test` and `make demo`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.depthprobe-installed
PYTEST_ARGS ?=

.PHONY: install test test-numerics demo figures organisms bench clean

install: $(STAMP)

# torch==2.13.0 is the CPU build that lies on this project's machines; elsewhere fall back to the range in pyproject.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0" || true
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest $(PYTEST_ARGS)

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

# The main job: every head of organism-base's last layer ablated three ways on chain-of-thought reasoning.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) experiments/reasoning_heads.py

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

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
