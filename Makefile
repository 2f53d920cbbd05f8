# The verbs people type. `make` alone lists them.
.DEFAULT_GOAL := help
SHELL := bash
CARGO ?= cargo
DATA ?= ./data
ADDRESS ?= 127.0.0.1:9000
PYTHON_ENV := .venv

.PHONY: help build run test test-rust test-clients bench bench-cluster lint fix clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

build: ## Build the release binaries (ringstore, ringstore-loadgen)
	$(CARGO) build --release -p ringstore-server -p ringstore-loadgen

run: ## Run a single-node store on $(DATA) at $(ADDRESS) (credentials printed on first start)
	$(CARGO) run --release -p ringstore-server --bin ringstore -- server --data $(DATA) --address $(ADDRESS)

test: test-rust test-clients ## Run every test: unit, integration (real server + AWS SDK), boto3 and AWS CLI smoke

test-rust: ## Unit and integration tests of the workspace
	$(CARGO) test --workspace

test-clients: $(PYTHON_ENV)/.ready ## Smoke tests with boto3 and the AWS CLI against a real server
	# builds the debug ringstore with the same features as `cargo test`, so no rebuild
	$(CARGO) test --workspace --no-run
	PATH="$(CURDIR)/$(PYTHON_ENV)/bin:$$PATH" $(PYTHON_ENV)/bin/python e2e/s3-clients/smoke.py \
		--binary "$${CARGO_TARGET_DIR:-target}/debug/ringstore"

$(PYTHON_ENV)/.ready: e2e/s3-clients/requirements.txt
	python3 -m venv $(PYTHON_ENV)
	$(PYTHON_ENV)/bin/pip install --quiet --disable-pip-version-check -r e2e/s3-clients/requirements.txt
	touch $@

bench: ## Benchmark a fresh local 4-drive server: 4 KiB, 1 MiB, 64 MiB PUT/GET
	scripts/bench.sh

bench-cluster: ## Benchmark a 4-node EC 2+2 cluster against a single node, and with a node down
	scripts/bench-cluster.sh

lint: ## Check formatting and clippy (warnings are errors); changes nothing
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fix: ## Format the code and apply clippy's automatic fixes
	$(CARGO) fmt --all
	$(CARGO) clippy --workspace --all-targets --fix --allow-dirty --allow-staged

clean: ## Remove build output and the Python test environment
	$(CARGO) clean
	rm -rf $(PYTHON_ENV)
