# Thin wrappers; see README.md.
CARGO ?= cargo
export RUST_BACKTRACE ?= 1

.PHONY: services build release run test unit lint fmt ci clean-test-resources

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
