#!/usr/bin/env bash
# The benchmarks' short form (inside `stack.py run`, from e2e/run.sh): `make bench`,
# `make bench-dynamic`, `make chaos-kill`, `make chaos-restart`, `make chaos-outage`,
# `make chaos-raft`, `make scale-out`, `make soak-churn`, `make bench-certificate` and
# `make bench-injection` at small sizes with the debug builds, so the
# commands keep working. Each exits 1 if a phase did not work (errors, no calls, a probe never
# served, no renewal, leases left, agents differing, a chaos guarantee broken); the figures are
# printed and not judged here (docs/performance.md has the measured ones).
set -euo pipefail
cd "$(dirname "$0")/.."
. e2e/lib.sh
CACHE=${VK_CACHE:-$HOME/.cache/vaultkeeper}
for tool in loadgen refhook; do
  GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE=$CACHE/go/build GOFLAGS= \
    go build -trimpath -o "$BUILD_DIR/$tool" "e2e/$tool/main.go"
done
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
python3 e2e/bench_vaultsecret.py --smoke --operator "$BUILD_DIR/vaultkeeper-operator" --loadgen "$BUILD_DIR/loadgen"
python3 e2e/bench_dynamic.py --smoke --operator "$BUILD_DIR/vaultkeeper-operator"
# After bench_dynamic: chaos_kill leaves its DynamicCredentials and their leases of the shared
# database role behind, which bench_dynamic would count as left over after its delete.
python3 e2e/chaos_kill.py --smoke --operator "$BUILD_DIR/vaultkeeper-operator"
# Restarts this stack's API server and etcd (they come back on the same ports and data).
python3 e2e/chaos_restart.py --smoke --operator "$BUILD_DIR/vaultkeeper-operator"
# Stops and starts this stack's OpenBao (its data kept).
python3 e2e/chaos_outage.py --smoke --operator "$BUILD_DIR/vaultkeeper-operator"
# Joins two more OpenBao nodes to this stack's and kills the active one; leaves the stack's node
# alone in its cluster again.
python3 e2e/chaos_raft.py --smoke --operator "$BUILD_DIR/vaultkeeper-operator" --agent "$BUILD_DIR/vaultkeeper-agent"
# Two operator replicas sharing four shards, one killed.
python3 e2e/scale_out.py --smoke --operator "$BUILD_DIR/vaultkeeper-operator"
python3 e2e/soak_churn.py --smoke --operator "$BUILD_DIR/vaultkeeper-operator"
python3 e2e/bench_certificate.py --smoke --operator "$BUILD_DIR/vaultkeeper-operator"
python3 e2e/bench_injection.py --smoke --webhook "$BUILD_DIR/vaultkeeper-webhook" \
  --agent "$BUILD_DIR/vaultkeeper-agent" --loadgen "$BUILD_DIR/loadgen" --refhook "$BUILD_DIR/refhook"
