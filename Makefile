# numbabn: `make test` (set-up + the whole test suite), `make demo` (set-up + the demo).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Numba's on-disk cache lives in the work tree, so a second run starts warm.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
STAMP := $(VENV)/.installed

ASV := ../$(PY) -m asv

.PHONY: install test demo bench bench-compare gpu-check asv-smoke lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,examples]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The suite runs twice: on the CPU (plus the CUDA compile proof and the
# docstring examples; GPU tests skip without a GPU), then the CUDA tests on
# Numba's CUDA simulator, which must be switched on before numba is imported,
# hence its own process.
test: $(STAMP) lint
	$(PY) -m pytest --doctest-modules numbabn tests
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -p no:cacheprovider tests/gpu
	$(MAKE) asv-smoke

# The asv suite must import and run: `asv check`, then every benchmark once on tiny shapes.
asv-smoke: $(STAMP)
	cd asv_bench && $(ASV) machine --yes > /dev/null
	cd asv_bench && NUMBABN_BENCH_SIZE=small $(ASV) check --python=same
	cd asv_bench && NUMBABN_BENCH_SIZE=small $(ASV) run --python=same --quick --show-stderr

# asv on the current commit (results kept for `asv publish`), in this environment.
bench: $(STAMP)
	cd asv_bench && $(ASV) machine --yes > /dev/null
	cd asv_bench && $(ASV) run --python=same --set-commit-hash $$(git rev-parse HEAD)

# The side-by-side comparison with the autodiff peers (installs the bench extra);
# writes the full tables to docs/performance.md and the plot to docs/bench.png.
bench-compare: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m numbabn bench --plot docs/bench.png --markdown docs/performance.md

# On a lent GPU machine, with its own Python and packages and no network (wheels
# it lacks, such as a NumPy its numba-cuda imports with, go in .whl/): the CUDA
# tests on the device, then the GPU tables written to $(OUT)/gpu_performance.md and
# the VGG-style HVP through numbabn.torch on CUDA tensors to $(OUT)/gpu_torch_net.txt.
OUT ?= docs
GPU_ENV := PYTHONPATH=/tmp/numbabn-site:$(CURDIR) NUMBA_CACHE_DIR=/tmp/numbabn-cache
gpu-check:
	if ls .whl/*.whl > /dev/null 2>&1; then \
	  python3 -m pip install --quiet --no-index --no-deps --target /tmp/numbabn-site .whl/*.whl; fi
	$(GPU_ENV) python3 -m pytest -p no:cacheprovider -q tests/gpu tests/test_cuda_compile.py
	$(GPU_ENV) python3 -m numbabn bench --backend cuda --markdown $(OUT)/gpu_performance.md
	$(GPU_ENV) python3 -m numbabn.bench.torch_net --device cuda > $(OUT)/gpu_torch_net.txt && cat $(OUT)/gpu_torch_net.txt

# The layer demo (checks against the NumPy closed form), then Hessian-free
# training on digits (fails below 0.95 test accuracy).
demo: $(STAMP)
	$(PY) -m numbabn demo
	$(PY) -m numbabn hf --plot docs/hf_digits.png

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache .ruff_cache
