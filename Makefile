# The verbs people type. `make` alone lists them.
.DEFAULT_GOAL := help
SHELL := bash
CARGO ?= cargo
DATA ?= ./data
ADDRESS ?= 127.0.0.1:9000
PYTHON_ENV := .venv

IMAGE_TAG ?= dev

.PHONY: help build run test test-rust test-clients test-linearizability linearizability e2e e2e-up control-plane generate verify-packaging \
	images kind-up kind-e2e kind-down bench bench-cluster bench-ab lint fix clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

build: ## Build the release binaries (ringstore, ringstore-operator, ringstore-loadgen)
	$(CARGO) build --release -p ringstore-server -p ringstore-operator -p ringstore-loadgen

run: ## Run a single-node store on $(DATA) at $(ADDRESS) (credentials printed on first start)
	$(CARGO) run --release -p ringstore-server --bin ringstore -- server --data $(DATA) --address $(ADDRESS)

test: test-rust test-clients test-linearizability verify-packaging ## Run every test: unit, integration, operator e2e, S3 clients, linearizability, packaging

# Every cargo command here builds the whole workspace with the same features, so the
# binaries the e2e runs (target/debug/ringstore, ringstore-operator) are built once.
test-rust: control-plane ## cargo test: unit and integration tests, real node processes, the operator e2e
	$(CARGO) test --workspace

e2e: control-plane ## Only the operator scenarios on a real kube-apiserver, with the kubelet stand-in running real nodes
	$(CARGO) test --workspace --no-run
	$(CARGO) test --workspace --test operator --test standin -- --nocapture

e2e-up: control-plane ## Start the e2e control plane, kubelet stand-in and operator to explore with kubectl
	$(CARGO) build --workspace --bins
	"$${CARGO_TARGET_DIR:-target}/debug/ringstore-e2e" up

control-plane: ## Build kube-apiserver, kube-controller-manager, kubectl and etcd from Go modules (cached)
	e2e/controlplane/build.sh

generate: ## Regenerate the CRD YAML from the Rust types, then the chart copies and snapshots
	$(CARGO) run -q -p ringstore-crds --bin crdgen
	scripts/check-packaging.sh --fix

verify-packaging: ## Lint and render the charts, validate manifests, compare CRD copies and snapshots
	scripts/check-packaging.sh

images: ## Build the node and operator container images (needs docker)
	docker build --target node -t ringstore:$(IMAGE_TAG) .
	docker build --target operator -t ringstore-operator:$(IMAGE_TAG) .

kind-up: ## kind cluster with the images loaded and the operator chart installed (needs docker, kind, helm)
	e2e/kind/kind-up.sh

kind-e2e: ## On kind: a 4-server Tenant, wait Ready, S3 PUT/GET, clean up
	e2e/kind/kind-e2e.sh

kind-down: ## Delete the kind cluster
	e2e/kind/kind-down.sh

test-clients: $(PYTHON_ENV)/.ready ## Smoke tests with boto3 and the AWS CLI against a real server
	# builds the debug ringstore with the same features as `cargo test`, so no rebuild
	$(CARGO) test --workspace --no-run
	PATH="$(CURDIR)/$(PYTHON_ENV)/bin:$$PATH" $(PYTHON_ENV)/bin/python e2e/s3-clients/smoke.py \
		--binary "$${CARGO_TARGET_DIR:-target}/debug/ringstore"

# The linearizability run: real nodes, boto3 clients, a nemesis, and Porcupine judging the
# history of every key. LIN_ARGS passes more options to e2e/linearizability/run.py.
# Partitions run every node in a network namespace of its own (root, `ip`, and nft from the
# Debian package nftables, else iptables); LIN_NEMESIS=kill,stop,clock,clock-back runs without.
LIN_NODES ?= 5
LIN_DURATION ?= 300
LIN_NEMESIS ?= kill,stop,clock,clock-back,partition
LIN_ARGS ?=
LIN_BIN = $${CARGO_TARGET_DIR:-target}/debug

linearizability: $(PYTHON_ENV)/.ready ## Porcupine-checked history under kill -9, SIGSTOP, partitions and clock faults (LIN_NODES=5 LIN_DURATION=300 LIN_ARGS=...)
	$(CARGO) test --workspace --no-run
	cd e2e/linearizability/checker && go build -o "$(CURDIR)/$(LIN_BIN)/lincheck" .
	$(PYTHON_ENV)/bin/python e2e/linearizability/run.py --binary "$(LIN_BIN)/ringstore" \
		--checker "$(LIN_BIN)/lincheck" --nodes $(LIN_NODES) --duration $(LIN_DURATION) \
		--nemesis $(LIN_NEMESIS) $(LIN_ARGS)

test-linearizability: ## The bounded form CI runs: 3 and 5 nodes (the 5th joining: a layout transition), 75 s each, every fault kind, partitions included
	$(MAKE) --no-print-directory linearizability LIN_NODES=3 LIN_DURATION=75 LIN_ARGS="--netns --ip-block 7 $(LIN_ARGS)"
	$(MAKE) --no-print-directory linearizability LIN_NODES=5 LIN_DURATION=75 LIN_ARGS="--netns --ip-block 8 --conditional --grow 1 --cold 100 $(LIN_ARGS)"

$(PYTHON_ENV)/.ready: e2e/s3-clients/requirements.txt
	python3 -m venv $(PYTHON_ENV)
	$(PYTHON_ENV)/bin/pip install --quiet --disable-pip-version-check -r e2e/s3-clients/requirements.txt
	touch $@

bench: ## Benchmark a fresh local 4-drive server: 4 KiB, 1 MiB, 64 MiB PUT/GET
	scripts/bench.sh

bench-cluster: ## Benchmark a 4-node EC 2+2 cluster against a single node, and with a node down
	scripts/bench-cluster.sh

bench-ab: ## A/B the 4-node cluster against another commit's build, alternately (BASE=rev, default HEAD~1)
	scripts/bench-ab.sh $(or $(BASE),HEAD~1)

lint: ## Check formatting and clippy (warnings are errors); changes nothing
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fix: ## Format the code and apply clippy's automatic fixes
	$(CARGO) fmt --all
	$(CARGO) clippy --workspace --all-targets --fix --allow-dirty --allow-staged

clean: ## Remove build output and the Python test environment
	$(CARGO) clean
	rm -rf $(PYTHON_ENV)
