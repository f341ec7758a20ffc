#!/usr/bin/env bash
# Injection benchmark against the real stack; prints figures, asserts nothing (e2e/bench_injection.py):
# the webhook handler direct and through the API server at a fixed rate, and vaultkeeper-agent vs
# `bao agent` rendering the same 10 templates.
# Usage: hack/bench-injection.sh [--rate 200] [--duration 30] [--init-runs 5] [--sidecar-seconds 20]
#        [--key-type ecdsa|rsa] [--opted-out] [--refhook-http2] [--apiserver-profile FILE] [--skip PHASE]
# Binaries go to $CARGO_TARGET_DIR (default target/).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
CACHE=${VK_CACHE:-$HOME/.cache/vaultkeeper}
bash e2e/stack/install.sh
# GNU time measures the agents' peak RSS in init mode.
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cargo build -q --release -p vaultkeeper-webhook -p vaultkeeper-agent
# The load generator: Go standard library only (Python cannot hold 200/s with fair latencies).
mkdir -p "$CARGO_TARGET_DIR"
GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE=$CACHE/go/build GOFLAGS= \
  go build -trimpath -o "$CARGO_TARGET_DIR/loadgen" e2e/loadgen/main.go
# The reference webhook the benchmark compares ours with (it does no work of its own).
GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE=$CACHE/go/build GOFLAGS= \
  go build -trimpath -o "$CARGO_TARGET_DIR/refhook" e2e/refhook/main.go
STATE=target/bench-injection
python3 e2e/stack/stack.py down --state-dir "$STATE"
rm -rf "$STATE"
python3 e2e/stack/stack.py run --state-dir "$STATE" -- python3 e2e/bench_injection.py "$@"
