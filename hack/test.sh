#!/usr/bin/env bash
# Runs every test the project has: formatting, lints, generated-file drift, unit tests, and the
# real-stack tier (kube-apiserver, etcd, kwok, OpenBao, PostgreSQL installed and started by
# e2e/stack/, cached under ~/.cache/vaultkeeper).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
# The debug builds (clippy, tests, the binaries the real-stack tier runs) are cached across clones
# like the release and fuzz builds: a fresh clone then rebuilds only the workspace's own crates.
# Set CARGO_TARGET_DIR to choose another place; the e2e scripts find the binaries there.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${VK_CACHE:-$HOME/.cache/vaultkeeper}/target}

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

echo "== generated CRDs are up to date (manifests/crds.yaml and the chart's CRD templates)"
cargo run -q -p vaultkeeper-crds --bin crdgen -- --check manifests/crds.yaml --chart charts/vaultkeeper/templates/crds

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

echo "== fuzz targets, a few seconds each (cargo-fuzz on nightly; the cold build takes minutes)"
bash hack/fuzz.sh --brief

echo "== images: static binaries on an empty base, assembled without a daemon (cached release build)"
bash hack/images.sh

echo "== installing the local stack (cached; about 8 minutes cold)"
bash e2e/stack/install.sh

echo "== the Tiltfile evaluates and names only what exists (Starlark, without Tilt or Docker)"
python3 -c 'import starlark' 2>/dev/null || pip install -q starlark-pyo3
python3 hack/check-tiltfile.py "${VK_CACHE:-$HOME/.cache/vaultkeeper}/bin/helm"

echo "== real-stack tests"
cargo build -q -p vaultkeeper-operator -p vaultkeeper-agent -p vaultkeeper-webhook
python3 e2e/stack/stack.py down --state-dir target/stack
rm -rf target/stack
# --node: a real node (kubelet, containerd, kube-proxy, CoreDNS) beside the fake one, for the tests
# that run the product in Pods from its images (e2e/node.sh, e2e/incluster.sh).
VK_RAW_AUDIT=1 python3 e2e/stack/stack.py run --node --state-dir target/stack -- bash e2e/run.sh

echo "== all checks passed in $((SECONDS - started))s"
