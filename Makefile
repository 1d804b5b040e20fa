# parascribe: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PARASCRIBE := $(VENV)/bin/parascribe
EXTRAS := offline,nemo,deepgram,local,api,dev
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR := .parascribe/demo
DEMO_TEXT := Welcome to parascribe. This clip was spoken by a speech synthesizer, uploaded to a storage bucket, \
split into chunks, transcribed, and stitched back together into one transcript.

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

system-deps:  ## espeak-ng (test speech) from Debian; gcloud + java (Pub/Sub emulator) must be present
	@command -v espeak-ng >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq espeak-ng >/dev/null; }
	@command -v gcloud >/dev/null || { echo "gcloud (Google Cloud CLI with the beta Pub/Sub emulator) is required" >&2; exit 1; }
	@command -v java >/dev/null || { echo "java is required by the Pub/Sub emulator" >&2; exit 1; }

$(STAMP): shared/pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so pip takes the CPU wheel rather than several GB of CUDA packages
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e "shared[$(EXTRAS)]"
	touch $(STAMP)

setup: system-deps $(STAMP)  ## create the virtualenv with everything the stack and tests need

CONVEX_STAMP := examples/convex/node_modules/.installed
$(CONVEX_STAMP): examples/convex/package-lock.json
	@if command -v npm >/dev/null; then \
	  (cd examples/convex && npm ci --no-audit --no-fund --silent) && touch $(CONVEX_STAMP); \
	else echo "npm not found: the Convex signature test will be skipped" >&2; fi

convex-deps: $(CONVEX_STAMP)  ## the Convex example's packages, so its verifier runs in the tests

BROWSER_STAMP := $(VENV)/.browser-installed
$(BROWSER_STAMP): $(STAMP) console/package-lock.json
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@if command -v npm >/dev/null; then (cd console && npm ci --no-audit --no-fund --silent); \
	else echo "npm not found: the vendored-uPlot provenance test will be skipped" >&2; fi
	touch $(BROWSER_STAMP)

browser-deps: $(BROWSER_STAMP)  ## Debian's chromium (Playwright drives it; no browser download) for the console's tests

test: setup convex-deps browser-deps  ## unit, integration (real emulators), NeMo, end-to-end and browser tests, then lint and types
	$(PY) -m pytest -q tests
	$(VENV)/bin/ruff check shared services tests bench
	$(VENV)/bin/mypy

test-unit: setup  ## the fast tests only
	$(PY) -m pytest -q tests/unit -m "not nemo"

up: setup  ## start the local stack in the background
	$(PARASCRIBE) up --detach

down:  ## stop the local stack
	@[ ! -x $(PARASCRIBE) ] || $(PARASCRIBE) down

demo: setup  ## start the stack, transcribe a spoken sample, print transcript, outputs and webhook
	mkdir -p $(DEMO_DIR)
	espeak-ng -s 150 -w $(DEMO_DIR)/welcome.wav "$(DEMO_TEXT)"
	$(PARASCRIBE) down >/dev/null 2>&1 || true
	CHUNK_DURATION_MINUTES=0.1 $(PARASCRIBE) up --detach
	trap '$(PARASCRIBE) down' EXIT; \
	  $(PARASCRIBE) submit --wait $(DEMO_DIR)/welcome.wav; \
	  $(PY) -m parascribe.local.webhook_receiver --show .parascribe/webhooks.jsonl

bench-quick: setup  ## Parakeet throughput, full-size architecture, random weights (< 3 min on 2 cores)
	$(PY) bench/asr_throughput.py --quick

bench: setup  ## all benchmarks
	$(PY) bench/asr_throughput.py
	$(PY) bench/attention_crossover.py
	$(PY) bench/engine_memory.py
	$(PY) bench/stitch_speed.py
	$(PY) bench/status_writes.py
	$(PY) bench/pipeline_load.py

bench-load: setup  ## the load and fault run: 200 uploads, SIGKILLs, bad inputs, a 60-minute file (about 30 min)
	$(PY) bench/pipeline_load.py

infra-names: setup  ## regenerate infra/names.auto.tfvars.json from shared/parascribe/names.py
	$(PY) infra/scripts/gen_names.py

router-zip: setup  ## package the router's Cloud Functions source (parascribe vendored) into build/router.zip
	$(PY) infra/scripts/package_router.py

infra-check:  ## terraform formatting (validate/plan need the provider and credentials)
	terraform fmt -check -recursive infra

clean: down  ## remove local state (keeps the virtualenv)
	rm -rf .parascribe .pytest_cache .mypy_cache .ruff_cache

gpu-kit: setup  ## wheels for one GPU validation run (bench/gpu/wheels, ~58 MB); see bench/gpu/README.md
	$(PY) bench/gpu/prepare.py

gpu-kit-cpu: setup  ## the GPU kit end to end on this CPU, small sizes (a few minutes)
	$(PY) bench/gpu/run.py --device cpu --quick --out .parascribe/gpu-cpu.json

.PHONY: help system-deps setup convex-deps browser-deps gpu-kit gpu-kit-cpu test test-unit up down demo bench-quick bench bench-load clean infra-names router-zip infra-check
