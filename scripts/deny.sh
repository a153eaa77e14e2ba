#!/usr/bin/env bash
# Dependency hygiene with cargo-deny, offline: licences, banned crates (e.g. the unmaintained
# `backoff`), and sources (crates.io only). Installs cargo-deny from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked
# cargo-deny reads the metadata of every platform's dependencies; a build downloads only this
# platform's. Fetch the rest from crates.io (no other network is needed or used).
cargo fetch --locked --quiet
cargo deny --offline check licenses bans sources
