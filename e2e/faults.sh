#!/usr/bin/env bash
# Real-stack fault test, run inside `stack.py run`: toxiproxy sits between the operator and OpenBao
# and between the operator and the kube-apiserver (TLS passes through as TCP; the serving cert has
# IP SAN 127.0.0.1, so a loopback proxy port verifies). Each side in turn gets added latency,
# connection resets and a 60 s black hole, while a VaultSecret (KV v2) and two DynamicCredentials
# (PostgreSQL through the database engine) are synced. A timeline of every write to the test's
# Secrets, every Ready change and the live leases and PostgreSQL roles each second
# (e2e/faults_timeline.py, read through the API server and OpenBao directly, not the proxies)
# proves: no Secret emptied or rewritten with old data, no duplicate leases, and recovery without a
# manual step within the bounds below.
#
# DynamicCredential "steady" (TTL 150s, renewed every ~15s) must keep its one lease through every
# fault; "short" (TTL 30s) cannot outlive a 60 s outage, so after a black hole it must be replaced
# by exactly one new lease. The operator runs under a restart loop, as a kubelet would run it.
#
# Through the black hole on the API server "short" must keep its lease too: Vault still answers, so
# the operator renews it there although it cannot record the renewal (requests to the API server
# time out after --kube-timeout instead of hanging for the outage, and a renewal whose status write
# failed is retried before the lease is due). Found by this test: the reconcile hung on the status
# write for the whole outage, the lease ran out, and its replacement was issued while OpenBao still
# listed the expired one (two live for a moment); the expired one is now revoked first.
#
# VK_FAULTS_BREAK=1 breaks one assertion per scenario on purpose (an old KV version written into the
# Secret by hand, an extra lease issued out of band, the Secret emptied by hand), each undone
# afterwards; that run must then fail, with exactly those assertions.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$VK_BIN:$PATH
. e2e/lib.sh
started=$SECONDS
export NS=faults MOUNT=faults-db KV_SECRET=faults-kv CANARY=faults-canary-$RANDOM$RANDOM
export ROLES="steady short" PG_PREFIXES="vkf-steady- vkf-short-"
BREAK=${VK_FAULTS_BREAK:-}
WORK=$VK_STACK_DIR/faults
rm -rf "$WORK"; mkdir -p "$WORK"
TIMELINE=$WORK/timeline.tsv
OP_LOG=$VK_STACK_DIR/logs/operator-faults.log
RESET_BOUND=60 # seconds from the end of a reset window to full recovery
HOLE_BOUND=90  # seconds from the end of a black hole to full recovery

now() { date +%s.%N; }
mark() { printf '%s\tphase\t%s\n' "$(now)" "$*" >>"$TIMELINE"; } # for reading the timeline afterwards
RECOVERY=()
since() { python3 -c "import sys; print(f'{$(now) - float(sys.argv[1]):.1f}')" "$1"; }
hold_until() { # hold_until SECONDS-VALUE: the rest of a fault window
  local left=$(($1 - SECONDS))
  if [ $left -gt 0 ]; then sleep $left; fi
}
ready() { kubectl -n $NS get "$1" "$2" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'; }
status_of() { kubectl -n $NS get "$1" "$2" -o "jsonpath={.status.$3}"; }
secret_key() { kubectl -n $NS get secret "$1" -o "jsonpath={.data.$2}" | base64 -d; }
kv_gen() { secret_key $KV_SECRET gen; }
GEN=0
kv_put() { GEN=$((GEN + 1)); bao kv put secret/faults/config gen=$GEN password="$CANARY-$GEN" >/dev/null; }
logs_in() { PGPASSWORD=$(secret_key "$1" password) psql -h "$VK_PG_HOST" -p "$VK_PG_PORT" -U "$(secret_key "$1" username)" -d postgres -tAc 'select 1' >/dev/null 2>&1; }

# --- the fault proxy ----------------------------------------------------------------------------
TP_PORT=$(free_port); VAULT_PROXY=$(free_port); KUBE_PROXY=$(free_port); METRICS_PORT=$(free_port)
export TOXIPROXY_URL=http://127.0.0.1:$TP_PORT
TP_PID=; SAMPLER_PID=; SUP_PID=
cleanup() {
  touch "$WORK/stop"
  [ -s "$WORK/operator.pid" ] && kill "$(cat "$WORK/operator.pid")" 2>/dev/null || true
  [ -n "$SUP_PID" ] && wait "$SUP_PID" 2>/dev/null || true
  for p in $SAMPLER_PID $TP_PID; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
toxiproxy-server -host 127.0.0.1 -port "$TP_PORT" >"$VK_STACK_DIR/logs/toxiproxy.log" 2>&1 &
TP_PID=$!
eventually 10 toxiproxy-cli list || { bad "toxiproxy never answered"; exit 1; }
toxiproxy-cli create -l "127.0.0.1:$VAULT_PROXY" -u "${VAULT_ADDR#http://}" vault >/dev/null
toxiproxy-cli create -l "127.0.0.1:$KUBE_PROXY" -u "${VK_KUBE_SERVER#https://}" kube >/dev/null
fault() { # fault PROXY TYPE [upstream] ATTR...: one toxic, named after its type and stream
  local proxy=$1 type=$2 stream=downstream flag=-d; shift 2
  if [ "${1:-}" = upstream ]; then stream=upstream flag=-u; shift; fi
  toxiproxy-cli toxic add -n "$type-$stream" -t "$type" $flag $(for a; do echo "-a $a"; done) "$proxy" >/dev/null
}
heal() { # heal PROXY: removes every toxic of PROXY
  local name
  for name in $(curl -sf "$TOXIPROXY_URL/proxies/$1/toxics" | python3 -c 'import json,sys; print(" ".join(t["name"] for t in json.load(sys.stdin)))'); do
    toxiproxy-cli toxic remove -n "$name" "$1" >/dev/null
  done
}
# The operator's kubeconfig: the admin one with the proxy's port as the server.
OP_KUBECONFIG=$WORK/operator.kubeconfig
cp "$KUBECONFIG" "$OP_KUBECONFIG"
kubectl --kubeconfig="$OP_KUBECONFIG" config set-cluster "$(kubectl config view -o jsonpath='{.clusters[0].name}')" \
  --server="https://127.0.0.1:$KUBE_PROXY" >/dev/null
KUBECONFIG=$OP_KUBECONFIG kubectl get --raw /readyz | contains -x ok && ok "API server answers through the proxy (TLS verified)" || bad "API server not reachable through the proxy"
curl -sf "http://127.0.0.1:$VAULT_PROXY/v1/sys/health" >/dev/null && ok "OpenBao answers through the proxy" || bad "OpenBao not reachable through the proxy"

# --- Vault, PostgreSQL and the resources ------------------------------------------------------------
kubectl apply -f manifests/crds.yaml >/dev/null
kubectl wait --for=condition=Established crd/vaultsecrets.vaultkeeper.dev crd/dynamiccredentials.vaultkeeper.dev >/dev/null
kubectl create namespace $NS >/dev/null
kubectl -n $NS create serviceaccount web >/dev/null
bao secrets enable -path=$MOUNT database >/dev/null
create="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
# One connection per role, so each DynamicCredential's PostgreSQL roles carry their own prefix.
for r in steady short; do
  bao write $MOUNT/config/pg-$r plugin_name=postgresql-database-plugin allowed_roles=$r username_template="vkf-$r-{{random 12}}" \
    connection_url="postgresql://{{username}}:{{password}}@$VK_PG_HOST:$VK_PG_PORT/postgres?sslmode=disable" \
    username=postgres password=unused >/dev/null
done
bao write $MOUNT/roles/steady db_name=pg-steady creation_statements="$create" default_ttl=150s max_ttl=1h >/dev/null
bao write $MOUNT/roles/short db_name=pg-short creation_statements="$create" default_ttl=30s max_ttl=1h >/dev/null
printf '%s\n' 'path "secret/data/faults/*" { capabilities = ["read"] }' 'path "secret/metadata/faults/*" { capabilities = ["read"] }' \
  "path \"$MOUNT/creds/*\" { capabilities = [\"read\"] }" 'path "sys/leases/revoke" { capabilities = ["update"] }' | bao policy write faults - >/dev/null
bao write auth/kubernetes/role/faults bound_service_account_names=web bound_service_account_namespaces=$NS policies=faults token_period=1h >/dev/null
kv_put

NS=$NS python3 e2e/faults_timeline.py record "$TIMELINE" &
SAMPLER_PID=$!
supervise() { # runs the operator again whenever it exits, as a kubelet would, and notes each exit
  local pid rc
  while [ ! -e "$WORK/stop" ]; do
    KUBECONFIG=$OP_KUBECONFIG "$BUILD_DIR/vaultkeeper-operator" --vault-addr "http://127.0.0.1:$VAULT_PROXY" \
      --metrics-addr "127.0.0.1:$METRICS_PORT" --identity faults-op >>"$OP_LOG" 2>&1 &
    pid=$!; echo $pid >"$WORK/operator.pid"
    if wait $pid; then rc=0; else rc=$?; fi
    [ -e "$WORK/stop" ] || echo "$(date +%T) exit $rc" >>"$WORK/operator.exits"
    sleep 1
  done
}
supervise &
SUP_PID=$!
eventually 60 curl -sf "127.0.0.1:$METRICS_PORT/readyz" || bad "operator never became ready"

kubectl apply -f - >/dev/null <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: VaultSecret
metadata: {name: kv, namespace: $NS}
spec:
  auth: {role: faults, serviceAccountName: web}
  source: {engine: kv-v2, mount: secret, path: faults/config}
  refreshInterval: 10s
  destination: {name: $KV_SECRET}
---
apiVersion: vaultkeeper.dev/v1alpha1
kind: DynamicCredential
metadata: {name: steady, namespace: $NS}
spec:
  auth: {role: faults, serviceAccountName: web}
  source: {mount: $MOUNT, role: steady}
  renewAtPercent: 10
  destination: {name: faults-steady-db}
---
apiVersion: vaultkeeper.dev/v1alpha1
kind: DynamicCredential
metadata: {name: short, namespace: $NS}
spec:
  auth: {role: faults, serviceAccountName: web}
  source: {mount: $MOUNT, role: short}
  destination: {name: faults-short-db}
EOF
all_ready() { [ "$(ready vsec kv)" = True ] && [ "$(ready dcred steady)" = True ] && [ "$(ready dcred short)" = True ]; }
if eventually 60 bash -c "$(declare -f ready all_ready); NS=$NS; all_ready" && [ "$(kv_gen)" = 1 ]; then
  ok "synced before any fault: KV v1 in $KV_SECRET, both DynamicCredentials Ready"
else
  bad "not synced before the faults"; tail -n 30 "$OP_LOG"; exit 1
fi
STEADY_LEASE=$(status_of dcred steady leaseId); SYNCED_AT=$(now)
for s in faults-steady-db faults-short-db; do logs_in $s && ok "$s logs in to PostgreSQL" || bad "$s does not log in"; done
echo "recorded: $KV_SECRET v1 rv $(kubectl -n $NS get secret $KV_SECRET -o jsonpath='{.metadata.resourceVersion}');" \
  "faults-steady-db rv $(kubectl -n $NS get secret faults-steady-db -o jsonpath='{.metadata.resourceVersion}') lease $STEADY_LEASE;" \
  "short lease $(status_of dcred short leaseId); PostgreSQL roles: $(psql_admin "select rolname from pg_roles where rolname like 'vkf-%' order by 1" | tr '\n' ' ')"

# --- checks over a window of the timeline -----------------------------------------------------------
expect() { # expect LABEL CHECK ARGS...: runs a timeline check over [W0, W1]
  local label=$1 out; shift
  if out=$(python3 e2e/faults_timeline.py check "$TIMELINE" "$W0" "$W1" "$@" 2>&1); then ok "$label: $out"; else bad "$label: $out"; fi
}
sampled_past() { tail -n 20 "$TIMELINE" | awk -F'\t' -v t="$1" '$2 == "leases" && $1 > t + 1 { found = 1 } END { exit !found }'; }
invariants() { # invariants LABEL: what must hold over every window
  eventually 10 sampled_past "$W1" || true
  expect "$1: $KV_SECRET never emptied nor rewritten with old data" kv-never-old $KV_SECRET
  expect "$1: faults-steady-db not written" secret-untouched faults-steady-db
  expect "$1: steady keeps its one lease" leases steady 1 "$STEADY_LEASE"
  expect "$1: one PostgreSQL role for steady" pgroles vkf-steady- 1
  expect "$1: faults-short-db never emptied" secret-kept faults-short-db
  expect "$1: at most one live lease for short" leases short 1
  expect "$1: at most one PostgreSQL role for short" pgroles vkf-short- 1
}
recover() { # recover LABEL BOUND: after a heal, the newest KV version synced and both leases renewed
  local label=$1 bound=$2 t0 kv="" steady="" short="" until=$((SECONDS + $2))
  local steady_exp short_exp
  t0=$(now); steady_exp=$(status_of dcred steady expiryTime); short_exp=$(status_of dcred short expiryTime)
  while [ $SECONDS -lt $until ]; do
    if [ -z "$kv" ] && [ "$(kv_gen)" = $GEN ] && [ "$(status_of vsec kv syncedVersion)" = $GEN ] && [ "$(ready vsec kv)" = True ]; then kv=$(since "$t0"); fi
    if [ -z "$steady" ] && [ "$(status_of dcred steady expiryTime)" != "$steady_exp" ] && [ "$(ready dcred steady)" = True ]; then steady=$(since "$t0"); fi
    if [ -z "$short" ] && [ "$(status_of dcred short expiryTime)" != "$short_exp" ] && [ "$(ready dcred short)" = True ]; then short=$(since "$t0"); fi
    if [ -n "$kv" ] && [ -n "$steady" ] && [ -n "$short" ]; then break; fi
    sleep 0.5
  done
  RECOVERY+=("$label: KV v$GEN synced and Ready ${kv:--}s, steady renewed and Ready ${steady:--}s, short renewed or replaced and Ready ${short:--}s (bound ${bound}s)")
  echo "recovery after ${RECOVERY[-1]}"
  [ -n "$kv" ] && ok "$label: the KV version written during the fault arrived, Ready=True, ${kv}s after the fault ended" || bad "$label: KV v$GEN not synced within ${bound}s (Secret holds v$(kv_gen); $(status_of vsec kv conditions))"
  [ -n "$steady" ] && ok "$label: steady renewed and Ready ${steady}s after the fault ended" || bad "$label: steady not renewed within ${bound}s ($(status_of dcred steady conditions))"
  [ -n "$short" ] && ok "$label: short renewed or replaced and Ready ${short}s after the fault ended" || bad "$label: short not back within ${bound}s ($(status_of dcred short conditions))"
  for s in faults-steady-db faults-short-db; do logs_in $s && ok "$label: $s logs in" || bad "$label: $s does not log in"; done
}

# --- 1. latency: 2–3 s on every answer, for 25 s (past at least one renewal of steady) -------------------
for proxy in vault kube; do
  label="latency on $proxy"
  W0=$(now); t=$SECONDS; exp=$(status_of dcred steady expiryTime)
  fault $proxy latency latency=2500 jitter=500; mark "$label"
  kv_put
  if eventually 60 bash -c "[ \"\$(kubectl -n $NS get secret $KV_SECRET -o jsonpath={.data.gen} | base64 -d)\" = $GEN ]"; then
    ok "$label: KV v$GEN written during the latency arrived after $((SECONDS - t))s"
  else
    bad "$label: KV v$GEN never arrived (Secret holds v$(kv_gen))"
  fi
  if [ "$BREAK" = 1 ] && [ $proxy = vault ]; then # break-once: version 1 written back by hand
    kubectl -n $NS patch secret $KV_SECRET -p "{\"data\":{\"gen\":\"$(printf 1 | base64)\",\"password\":\"$(printf '%s' "$CANARY-1" | base64)\"}}" >/dev/null
    eventually 30 bash -c "[ \"\$(kubectl -n $NS get secret $KV_SECRET -o jsonpath={.data.gen} | base64 -d)\" = $GEN ]" || true
  fi
  hold_until $((t + 25)) # the fault window
  heal $proxy; mark "healed $proxy"
  W1=$(now)
  [ "$(status_of dcred steady expiryTime)" != "$exp" ] && ok "$label: steady renewed during the latency" || bad "$label: no renewal of steady during 25 s of latency"
  expect "$label: VaultSecret stayed Ready" ready-stayed vsec/kv
  expect "$label: steady stayed Ready" ready-stayed dcred/steady
  invariants "$label"
done

# --- 2. connection resets: every answer cut with a TCP RST for 15 s (requests reach the server) --------
for proxy in vault kube; do
  label="resets on $proxy"
  W0=$(now); t=$SECONDS
  fault $proxy reset_peer timeout=0; mark "$label"
  kv_put
  if [ "$BREAK" = 1 ] && [ $proxy = vault ]; then # break-once: a second lease for steady, out of band
    extra=$(bao read -format=json $MOUNT/creds/steady | python3 -c 'import json,sys; print(json.load(sys.stdin)["lease_id"])')
    sleep 3 # sampled a few times
    bao lease revoke "$extra" >/dev/null
  fi
  hold_until $((t + 15)) # the fault window
  heal $proxy; mark "healed $proxy"
  W1=$(now)
  [ $proxy = vault ] && expect "$label: the VaultSecret reported the outage" ready-reported vsec/kv VaultUnavailable
  recover "$label" $RESET_BOUND
  W1=$(now)
  invariants "$label"
done

# --- 3. black hole: nothing passes either way for 60 s; connections stay open ---------------------------
for proxy in vault kube; do
  label="black hole on $proxy"
  W0=$(now); t=$SECONDS
  fault $proxy timeout timeout=0
  fault $proxy timeout upstream timeout=0; mark "$label"
  kv_put
  if [ "$BREAK" = 1 ] && [ $proxy = vault ]; then # break-once: the Secret emptied by hand
    kubectl -n $NS patch secret $KV_SECRET --type=json -p '[{"op":"remove","path":"/data"}]' >/dev/null
  fi
  [ $proxy = kube ] && SHORT_LEASE=$(status_of dcred short leaseId)
  hold_until $((t + 60)) # the fault window
  heal $proxy; mark "healed $proxy"
  if [ $proxy = vault ]; then
    W1=$(now)
    expect "$label: the VaultSecret reported the outage" ready-reported vsec/kv VaultUnavailable
    expect "$label: steady reported the outage" ready-reported dcred/steady VaultUnavailable
  fi
  recover "$label" $HOLE_BOUND
  W1=$(now)
  invariants "$label"
  [ $proxy = kube ] && expect "$label: short kept its lease, renewed in OpenBao while the API server was away" leases short 1 "${SHORT_LEASE##*/}"
done

# --- after all faults ---------------------------------------------------------------------------------
W0=$SYNCED_AT; W1=$(now)
expect "whole run: $KV_SECRET never emptied nor rewritten with old data" kv-never-old $KV_SECRET
expect "whole run: steady kept its one lease" leases steady 1 "$STEADY_LEASE"
expect "whole run: at most one live lease for short" leases short 1
[ "$(status_of dcred steady leaseId)" = "$STEADY_LEASE" ] && ok "steady's status still names its first lease" || bad "steady's lease changed: $(status_of dcred steady leaseId)"
if [ -s "$WORK/operator.exits" ]; then
  echo "note: the operator exited and was restarted $(wc -l <"$WORK/operator.exits") time(s): $(tr '\n' ' ' <"$WORK/operator.exits")"
else
  ok "the operator never exited"
fi
grep -qF "$CANARY" "$OP_LOG" && bad "KV data in the operator log" || ok "KV data not in the operator log"
for s in faults-steady-db faults-short-db; do grep -qF "$(secret_key $s password)" "$OP_LOG" && bad "$s password in the operator log" || ok "$s password not in the operator log"; done
kubectl -n $NS delete dcred steady short --wait=true --timeout=30s >/dev/null || bad "DynamicCredentials not deleted"
eventually 20 bash -c "[ \"\$(psql -h $VK_PG_HOST -p $VK_PG_PORT -U postgres -d postgres -tAc \"select count(*) from pg_roles where rolname like 'vkf-%'\")\" = 0 ]" \
  && ok "deleting the DynamicCredentials revoked their leases" || bad "PostgreSQL roles left: $(psql_admin "select rolname from pg_roles where rolname like 'vkf-%'" | tr '\n' ' ')"

if [ "$fail" -ne 0 ]; then
  echo "--- state for the failures above (timeline: $TIMELINE)"
  kubectl -n $NS get vsec,dcred -o yaml | grep -vF "$CANARY" || true
  kubectl -n $NS get events --sort-by=.lastTimestamp || true
  grep -E 'WARN|ERROR' "$OP_LOG" | grep -v 'namespace="\?\(app1\|app2\|db1\)' | tail -n 40 || true
fi
echo "recovery times, from the end of each fault:"
printf '  %s\n' "${RECOVERY[@]}"
echo "faults.sh took $((SECONDS - started))s"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
