#!/usr/bin/env bash
# Benchmarks against the real stack; prints figures, asserts nothing (see e2e/bench_*.py).
# Usage: hack/bench.sh [--n 1000] [--window 75] [--unrelated 100000] ...   (arguments go to e2e/bench_vaultsecret.py)
#        BENCH=bench_dynamic hack/bench.sh [--n 1000] [--window 240]     (e2e/bench_dynamic.py: DynamicCredentials)
#        BENCH=bench_certificate hack/bench.sh [--algorithm RSA] [--mode sign]   (e2e/bench_certificate.py)
#        BENCH=chaos_kill hack/bench.sh [--n 1000] [--kills 100]          (e2e/chaos_kill.py: kill -9 of the operator)
#        BENCH=chaos_restart hack/bench.sh [--n 300] [--restarts 8]      (e2e/chaos_restart.py: API server and etcd)
#        BENCH=chaos_outage hack/bench.sh [--n 1000] [--outage 3600]     (e2e/chaos_outage.py: OpenBao away)
#        BENCH=chaos_raft hack/bench.sh [--n 300] [--kills 6]          (e2e/chaos_raft.py: a raft cluster's active node killed)
#        BENCH=scale_out hack/bench.sh [--replicas 3] [--n 20000]      (e2e/scale_out.py: replicas sharing shards)
#        BENCH=soak_churn hack/bench.sh [--n 10000] [--duration 3600]  (e2e/soak_churn.py: waves of churn)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
bash e2e/stack/install.sh
cargo build -q --release -p vaultkeeper-operator
# chaos_raft also runs an agent against the cluster.
case "${BENCH:-}" in chaos_raft) cargo build -q --release -p vaultkeeper-agent ;; esac
# The load generator, for --unrelated (Go standard library only).
mkdir -p "$CARGO_TARGET_DIR"
GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE=${VK_CACHE:-$HOME/.cache/vaultkeeper}/go/build GOFLAGS= \
  go build -trimpath -o "$CARGO_TARGET_DIR/loadgen" e2e/loadgen/main.go
# The chaos scenarios read issuances, renewals and revocations from OpenBao's unhashed audit log
# (a throwaway stack holding no real data).
case "${BENCH:-}" in chaos_*) export VK_RAW_AUDIT=1 ;; esac
STATE=target/bench
python3 e2e/stack/stack.py down --state-dir "$STATE"
rm -rf "$STATE"
python3 e2e/stack/stack.py run --state-dir "$STATE" -- python3 "e2e/${BENCH:-bench_vaultsecret}.py" "$@"
