# Chapper. `make help` lists the targets.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help

BUF_VERSION             ?= v1.75.0
PROTOC_GEN_GO_VERSION   ?= v1.36.12
PROTOC_GEN_GRPC_VERSION ?= v1.6.2
STATICCHECK_VERSION     ?= v0.8.2
HELM_VERSION            ?= v3.22.0
MODULES                 := proto pipelines services services/devstack charts
TOOLS                   := $(CURDIR)/bin/tools
# STATIC_BUILD is the production build; the Dockerfile runs the same command.
STATIC_BUILD            := CGO_ENABLED=0 go build -trimpath -ldflags="-s -w"

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*?## "} /^[a-z-]+:.*?## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: ## Install the Debian packages tests and dev mode need (no-op when present).
	@bash scripts/setup.sh

.PHONY: build
build: ## Build bin/chapper.
	go build -o bin/chapper ./services/cmd/chapper

.PHONY: build-static
build-static: ## Build bin/chapper-static, the static binary of the container image.
	$(STATIC_BUILD) -o bin/chapper-static ./services/cmd/chapper

.PHONY: charts
charts: ## helm lint and helm template of charts/chapper, manifests decoded into the Kubernetes types.
	cd charts && go test -count=1 -v ./...

.PHONY: run
run: setup build ## Run the whole system on the embedded stack (chapper dev).
	./bin/chapper dev

.PHONY: test
test: setup ## Run every test of every module against real stores, then the web client's Node and chromium suites.
	@bash scripts/test.sh
	@bash scripts/web.sh test

.PHONY: web
web: ## Type-check and bundle the web page (clients/web) into services/webapp/dist.
	@bash scripts/web.sh build

.PHONY: bench
bench: setup ## Run the benchmarks (BENCH=<regexp> for a subset); each figure is printed next to its raw baseline, then one table.
	@BENCH="$(BENCH)" bash scripts/bench.sh

.PHONY: capacity
capacity: setup ## The capacity report's measurements (docs/capacity.md): BenchmarkCapacity and two campaigns with plots.
	@bash scripts/capacity.sh

.PHONY: soak
soak: setup ## One hour at 7,000 records/s with faults injected (SOAK_ARGS=-soak.duration=3m for minutes).
	@bash scripts/soak.sh $(SOAK_ARGS)

.PHONY: proto
proto: ## Regenerate the Go code of proto/ and the TypeScript of clients/web/src/gen (pinned generators).
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GRPC_VERSION)
	cd proto && go run github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION) generate
	BUF_VERSION=$(BUF_VERSION) bash scripts/web.sh gen

.PHONY: lint
lint: proto ## Regenerate (fail on a diff), then go vet, staticcheck and buf lint.
	@git diff --exit-code -- proto clients/web/src/gen || { echo "generated code in proto/ or clients/web/src/gen is stale: run make proto and commit"; exit 1; }
	cd proto && go run github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION) lint
	@for m in $(MODULES); do echo "== $$m"; (cd $$m && go vet ./... && go run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...) || exit 1; done
