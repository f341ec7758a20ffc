#!/usr/bin/env bash
# Runs every test the project has today: formatting, lints, generated-file drift, unit tests.
# The real-stack tier (kube-apiserver, etcd, OpenBao, PostgreSQL) joins this command when it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== generated CRDs are up to date"
cargo run -q -p vaultkeeper-crds --bin crdgen -- --check manifests/crds.yaml

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

echo "== all checks passed in $((SECONDS - started))s"
