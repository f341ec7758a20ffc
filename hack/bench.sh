#!/usr/bin/env bash
# Benchmarks against the real stack; prints figures, asserts nothing (see e2e/bench_*.py).
# Usage: hack/bench.sh [--n 1000] [--window 75] ...   (arguments go to e2e/bench_vaultsecret.py)
set -euo pipefail
cd "$(dirname "$0")/.."
bash e2e/stack/install.sh
cargo build -q --release -p vaultkeeper-operator
STATE=target/bench
python3 e2e/stack/stack.py down --state-dir "$STATE"
rm -rf "$STATE"
python3 e2e/stack/stack.py run --state-dir "$STATE" -- python3 e2e/bench_vaultsecret.py "$@"
