#!/usr/bin/env bash
# Dependency hygiene with cargo-deny, offline: licences, banned crates (e.g. the unmaintained
# `backoff`), and sources (crates.io only). Installs cargo-deny from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked
cargo deny --offline check licenses bans sources
