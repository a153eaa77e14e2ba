# Thin wrappers; see README.md.
CARGO ?= cargo
export RUST_BACKTRACE ?= 1

.PHONY: services build release run test unit lint fmt ci clean-test-resources deploy-check chaos model fuzz deny bench cluster cluster-down chaos-cluster mutants

## Make sure PostgreSQL and RabbitMQ run (installs them on Debian when absent) and the database exists.
services:
	@scripts/services.sh

build:
	$(CARGO) build --workspace --bins

release:
	$(CARGO) build --workspace --release --bins

## The whole pipeline on this machine, until Ctrl-C.
run: services build
	@scripts/run-local.sh

## Every test against the real Postgres and RabbitMQ.
test: services build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	@scripts/check-deploy.sh
	target/debug/webhook-bench --smoke

## Validate deploy/ (Dockerfile, compose, Kubernetes, RabbitMQ definitions, alerts, dashboard)
## against the schemas and the real binaries; see docs/deploy.md.
deploy-check: services build
	@scripts/check-deploy.sh

## The long fault-injection run (restarts the real RabbitMQ and Postgres: run it alone). See docs/reliability.md.
chaos: services build
	CHAOS_EVENTS=$${CHAOS_EVENTS:-3000} CHAOS_SECONDS=$${CHAOS_SECONDS:-120} CHAOS_REAL_RESTARTS=$${CHAOS_REAL_RESTARTS:-1} \
		$(CARGO) test -p webhook-tests --test it -- chaos:: --nocapture

## A local three-node RabbitMQ cluster (ports 5681-5683) beside the machine's node; prints its
## AMQP_URL. `make cluster-down` removes it. See scripts/rabbitmq-cluster.sh and docs/deploy.md.
cluster: services
	@scripts/rabbitmq-cluster.sh up

cluster-down:
	@scripts/rabbitmq-cluster.sh down

## Two ingests and four workers against the three-node cluster while nodes go away one at a time
## and processes are SIGKILLed: 3,000 events over 2 minutes (CLUSTER_EVENTS, CLUSTER_SECONDS).
## `make test` runs a 300-event version. See docs/reliability.md.
chaos-cluster: services build
	CLUSTER_EVENTS=$${CLUSTER_EVENTS:-3000} CLUSTER_SECONDS=$${CLUSTER_SECONDS:-120} \
		$(CARGO) test -p webhook-tests --test it -- cluster:: --nocapture

## The billing model property test, longer than in `make test` (PROPTEST_CASES, default 2000).
model: services build
	PROPTEST_CASES=$${PROPTEST_CASES:-2000} $(CARGO) test -p webhook-tests --test it -- billing_model:: --nocapture

## Coverage-guided fuzzing of the untrusted-input parsers (FUZZ_SECONDS per target, default 60).
fuzz:
	@scripts/fuzz.sh

## How fast, against the floor of this machine: 3 runs (several minutes), medians into
## docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks-latency.png. BENCH_RUNS=1 for one.
bench: services release
	target/release/webhook-bench --runs $${BENCH_RUNS:-3}

## Mutation testing of the pure code (.cargo/mutants.toml; docs/reliability.md, "Mutation testing").
## 15-25 minutes; not in CI. MUTANTS_ARGS passes options, e.g. MUTANTS_ARGS='-F ordering\.rs' (one file).
## Results in target/mutants.out/ (missed.txt, caught.txt, …).
mutants:
	@command -v cargo-mutants >/dev/null 2>&1 || $(CARGO) install cargo-mutants --locked
	CARGO_TARGET_DIR=$${MUTANTS_TARGET_DIR:-$(CURDIR)/target/mutants} $(CARGO) mutants --jobs $${MUTANTS_JOBS:-1} --output target $(MUTANTS_ARGS)

## Licences, banned crates and sources (offline).
deny:
	@scripts/deny.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

ci:
	.ci/run

## Remove databases and queues left behind by interrupted test runs.
clean-test-resources:
	@scripts/clean-test-resources.sh
