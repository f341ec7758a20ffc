#!/usr/bin/env bash
# Runs every real-stack test script against one stack (inside `stack.py run`); each uses its own
# namespaces and its own operator process. Fails if any script fails.
set -uo pipefail
cd "$(dirname "$0")/.."
failed=()
for t in e2e/smoke.sh e2e/dynamic_credential.sh e2e/certificate.sh e2e/agent.sh e2e/vault_namespace.sh e2e/webhook.sh e2e/chart.sh e2e/node.sh e2e/incluster.sh e2e/hardening.sh e2e/faults.sh e2e/bench_smoke.sh; do
  echo "=== $t"
  started=$SECONDS
  if bash "$t"; then echo "=== $t passed in $((SECONDS - started))s"; else failed+=("$t"); echo "=== $t FAILED"; fi
done
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
