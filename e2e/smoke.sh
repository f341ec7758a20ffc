#!/usr/bin/env bash
# Real-stack smoke test of the VaultSecret path, run inside `stack.py run` (env from the launcher):
# real kube-apiserver + etcd + kwok, real OpenBao with Kubernetes auth (real TokenReview).
# A first slice of the integration tier; the Rust e2e suite replaces it as it grows.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$VK_BIN:$PATH
# Namespaces of this script alone (exported for the `bash -c` checks): the tenants' and the operator's
# own (its key Secret and leader Lease), so no other script's state is seen or changed.
export NS1=smoke-app1 NS2=smoke-app2 OP_NS=smoke-system
OP_LOG=$VK_STACK_DIR/logs/operator.log
CANARY=canary-s3cr3t-$RANDOM$RANDOM
. e2e/lib.sh
METRICS_PORT=$(free_port)
metric() { curl -s "127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { print s + 0 }'; }
metric_at_least() { [ "$(metric "$1")" -ge "$2" ]; } # metric_at_least PREFIX N
secret_key() { kubectl -n $NS1 get secret app-config -o "jsonpath={.data.$1}" | base64 -d; }

kubectl apply -f manifests/crds.yaml >/dev/null
kubectl wait --for=condition=Established crd/vaultsecrets.vaultkeeper.dev >/dev/null
kubectl create namespace $OP_NS >/dev/null
kubectl create namespace $NS1 >/dev/null
kubectl -n $NS1 create serviceaccount web >/dev/null
printf 'path "secret/data/app1/*" { capabilities = ["read"] }\npath "secret/metadata/app1/*" { capabilities = ["read"] }\n' | bao policy write app1 - >/dev/null
bao write auth/kubernetes/role/app1 bound_service_account_names=web bound_service_account_namespaces=$NS1 policies=app1 ttl=1h >/dev/null
bao kv put secret/app1/config username=app password="$CANARY" >/dev/null

"$BUILD_DIR/vaultkeeper-operator" --namespace "$OP_NS" --vault-addr "$VAULT_ADDR" --metrics-addr "127.0.0.1:$METRICS_PORT" >"$OP_LOG" 2>&1 &
OP_PID=$!
# On exit the VaultSecrets go first, so no later script's operator goes on syncing them.
trap 'kubectl delete vsec --all -n $NS1 >/dev/null 2>&1; kubectl delete vsec --all -n $NS2 >/dev/null 2>&1; kill $OP_PID 2>/dev/null || true' EXIT
eventually 30 curl -sf "127.0.0.1:$METRICS_PORT/readyz" || bad "operator never became ready"

kubectl apply -f - >/dev/null <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: VaultSecret
metadata: {name: config, namespace: $NS1}
spec:
  auth: {role: app1, serviceAccountName: web}
  source: {engine: kv-v2, mount: secret, path: app1/config}
  refreshInterval: 10s
  destination:
    name: app-config
    templates: {DATABASE_URL: "postgres://{{ .username }}:{{ .password }}@db/app"}
EOF
if eventually 20 kubectl -n $NS1 get secret app-config; then
  [ "$(secret_key username)" = app ] && [ "$(secret_key password)" = "$CANARY" ] && ok "Secret holds the KV data" || bad "Secret data differs from KV"
  [ "$(secret_key DATABASE_URL)" = "postgres://app:$CANARY@db/app" ] && ok "templated key rendered" || bad "templated key wrong"
else
  bad "Secret never appeared"
fi
eventually 10 bash -c '[ "$(kubectl -n $NS1 get vsec config -o jsonpath="{.status.conditions[0].reason}")" = Synced ]' && ok "Ready=True Synced" || bad "not Synced"

# Unchanged refreshes: metadata reads only, no data read, no Secret write.
reads=$(metric 'vaultkeeper_vault_requests_total{operation="kv2_read"'); writes=$(metric 'vaultkeeper_kube_writes_total{resource="secret"}')
meta=$(metric 'vaultkeeper_vault_requests_total{operation="kv2_metadata"')
# Two refreshes (refreshInterval 10s) that found the data unchanged; `config` is the only VaultSecret yet.
unchanged='vaultkeeper_syncs_total{kind="VaultSecret",result="unchanged"}'
eventually 40 metric_at_least "$unchanged" $(( $(metric "$unchanged") + 2 )) && ok "two unchanged refreshes ($(metric "$unchanged") so far)" || bad "no two unchanged refreshes in 40s"
[ "$(metric 'vaultkeeper_vault_requests_total{operation="kv2_read"')" = "$reads" ] && ok "no data read on unchanged refresh" || bad "data read on unchanged refresh"
[ "$(metric 'vaultkeeper_kube_writes_total{resource="secret"}')" = "$writes" ] && ok "no Secret write on unchanged refresh" || bad "Secret written on unchanged refresh"
[ "$(metric 'vaultkeeper_vault_requests_total{operation="kv2_metadata"')" -gt "$meta" ] && ok "refresh polls metadata" || bad "no metadata poll"

# A KV update arrives within refreshInterval plus a few seconds.
bao kv put secret/app1/config username=app2 password="$CANARY" >/dev/null
eventually 20 bash -c '[ "$(kubectl -n $NS1 get secret app-config -o jsonpath={.data.username} | base64 -d)" = app2 ]' && ok "KV update synced" || bad "KV update not synced"

# Hand edits and deletion are undone.
kubectl -n $NS1 patch secret app-config -p '{"data":{"username":"aGFja2Vk"}}' >/dev/null
eventually 15 bash -c '[ "$(kubectl -n $NS1 get secret app-config -o jsonpath={.data.username} | base64 -d)" = app2 ]' && ok "edited Secret restored" || bad "edited Secret not restored"
kubectl -n $NS1 delete secret app-config >/dev/null
eventually 15 kubectl -n $NS1 get secret app-config && ok "deleted Secret restored" || bad "deleted Secret not restored"

# Invalid specs are rejected at apply time with our sentence.
out=$(kubectl apply -f - 2>&1 <<EOF || true
apiVersion: vaultkeeper.dev/v1alpha1
kind: VaultSecret
metadata: {name: bad, namespace: $NS1}
spec:
  auth: {role: app1}
  source: {engine: kv-v1, mount: kv, path: app1/x, version: 2}
  refreshInterval: 1s
  destination: {name: Bad_Name}
EOF
)
for msg in "source.version pins a KV v2 version" "refreshInterval must be a duration" "destination.name must be a valid Secret name"; do
  grep -qF "$msg" <<<"$out" && ok "rejected: $msg" || bad "not rejected with: $msg ($out)"
done

# Permission denied: a CR in namespace $NS2 whose role (app2) may only read app2's paths asks for app1's.
kubectl create namespace $NS2 >/dev/null
kubectl -n $NS2 create serviceaccount web >/dev/null
printf 'path "secret/data/app2/*" { capabilities = ["read"] }\npath "secret/metadata/app2/*" { capabilities = ["read"] }\n' | bao policy write app2 - >/dev/null
bao write auth/kubernetes/role/app2 bound_service_account_names=web bound_service_account_namespaces=$NS2 policies=app2 ttl=1h >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: VaultSecret
metadata: {name: steal, namespace: $NS2}
spec:
  auth: {role: app2, serviceAccountName: web}
  source: {engine: kv-v2, mount: secret, path: app1/config}
  destination: {name: stolen}
EOF
cond() { kubectl -n "$1" get vsec "$2" -o jsonpath="{.status.conditions[?(@.type==\"Ready\")].$3}"; }
if eventually 20 bash -c "[ \"\$(kubectl -n $NS2 get vsec steal -o jsonpath='{.status.conditions[0].reason}')\" = PermissionDenied ]"; then
  ok "other namespace's path: Ready=False PermissionDenied"
  msg=$(cond $NS2 steal message)
  grep -qF "secret/app1/config" <<<"$msg" && grep -qF '"app2"' <<<"$msg" && ok "denial names path and role ($msg)" || bad "denial message: $msg"
  [ "$(cond $NS2 steal status)" = False ] && ok "denied CR is not Ready" || bad "denied CR Ready status"
else
  bad "no PermissionDenied condition ($(kubectl -n $NS2 get vsec steal -o jsonpath='{.status}'))"
fi
kubectl -n $NS2 get secret stolen >/dev/null 2>&1 && bad "a Secret appeared in $NS2" || ok "no Secret in $NS2"

# The latest KV version deleted: the Secret stays as it was and the CR says why.
snapshot() { kubectl -n $NS1 get secret "$1" -o jsonpath='{.data}'; }
bao kv put secret/app1/other token=first >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: VaultSecret
metadata: {name: other, namespace: $NS1}
spec:
  auth: {role: app1, serviceAccountName: web}
  source: {engine: kv-v2, mount: secret, path: app1/other}
  refreshInterval: 10s
  destination: {name: other}
EOF
eventually 20 kubectl -n $NS1 get secret other || bad "Secret other never appeared"
before=$(snapshot other)
bao kv delete secret/app1/other >/dev/null
if eventually 30 bash -c "[ \"\$(kubectl -n $NS1 get vsec other -o jsonpath='{.status.conditions[0].reason}')\" = SourceVersionDeleted ]"; then
  msg=$(cond $NS1 other message)
  grep -qF "left unchanged" <<<"$msg" && ok "deleted latest version reported ($msg)" || bad "deleted-version message: $msg"
else
  bad "deleted latest version not reported ($(cond $NS1 other message))"
fi
[ "$(snapshot other)" = "$before" ] && ok "Secret unchanged after the latest version was deleted" || bad "Secret changed after delete"
bao kv undelete -versions=1 secret/app1/other >/dev/null
eventually 40 bash -c "[ \"\$(kubectl -n $NS1 get vsec other -o jsonpath='{.status.conditions[0].reason}')\" = Synced ]" && ok "recovered after undelete" || bad "not recovered after undelete"

# OpenBao stopped, then sealed: the Secret is byte-for-byte unchanged, the CR reports the outage,
# and it is Ready again on its own once OpenBao is back.
outage() { # outage DOWN-CMD UP-CMD LABEL
  local before_secret before_rv
  before_secret=$(kubectl -n $NS1 get secret app-config -o json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps([s["data"], s["type"]], sort_keys=True))')
  before_rv=$(kubectl -n $NS1 get secret app-config -o jsonpath='{.metadata.resourceVersion}')
  python3 e2e/stack/stack.py "$1" --state-dir "$VK_STACK_DIR" >/dev/null
  if eventually 40 bash -c "[ \"\$(kubectl -n $NS1 get vsec config -o jsonpath='{.status.conditions[0].reason}')\" = VaultUnavailable ]"; then
    msg=$(cond $NS1 config message)
    grep -qF "left unchanged and holds the data last synced at" <<<"$msg" && ok "$3: CR reports the outage and the data's age ($msg)" || bad "$3: message $msg"
  else
    bad "$3: outage not reported ($(cond $NS1 config reason): $(cond $NS1 config message))"
  fi
  sleep 12 # what is tested: the Secret stays as it is through 12 s more of the outage (failed refreshes)
  after_secret=$(kubectl -n $NS1 get secret app-config -o json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps([s["data"], s["type"]], sort_keys=True))')
  [ "$after_secret" = "$before_secret" ] && [ "$(kubectl -n $NS1 get secret app-config -o jsonpath='{.metadata.resourceVersion}')" = "$before_rv" ] \
    && ok "$3: Secret byte-for-byte unchanged (same resourceVersion)" || bad "$3: Secret changed during the outage"
  python3 e2e/stack/stack.py "$2" --state-dir "$VK_STACK_DIR" >/dev/null
  eventually 90 bash -c "[ \"\$(kubectl -n $NS1 get vsec config -o jsonpath='{.status.conditions[0].reason}')\" = Synced ]" \
    && ok "$3: Ready again without a manual step" || bad "$3: not recovered ($(cond $NS1 config message))"
}
outage bao-stop bao-start "OpenBao stopped"
outage bao-seal bao-unseal "OpenBao sealed"
bao kv put secret/app1/config username=app3 password="$CANARY" >/dev/null
eventually 30 bash -c '[ "$(kubectl -n $NS1 get secret app-config -o jsonpath={.data.username} | base64 -d)" = app3 ]' && ok "KV updates flow again after the outages" || bad "no sync after the outages"

# Restart targets: one KV change restarts the Deployment once; ten quick changes inside the
# debounce window restart it once; the same data never restarts it again.
rs_count() { kubectl -n $NS1 get rs -l app=api -o name | wc -l; }
kubectl -n $NS1 create deployment api --image=example.invalid/api --replicas=1 >/dev/null
eventually 30 bash -c '[ "$(kubectl -n $NS1 get deploy api -o jsonpath={.status.availableReplicas})" = 1 ]' || bad "Deployment api never available"
bao kv put secret/app1/restart v=0 >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: VaultSecret
metadata: {name: restarter, namespace: $NS1}
spec:
  auth: {role: app1, serviceAccountName: web}
  source: {engine: kv-v2, mount: secret, path: app1/restart}
  refreshInterval: 10s
  destination: {name: restarter}
  restartTargets: [{kind: Deployment, name: api}, {kind: StatefulSet, name: ghost}]
EOF
eventually 20 kubectl -n $NS1 get secret restarter || bad "Secret restarter never appeared"
eventually 20 bash -c "[ \"\$(kubectl -n $NS1 get vsec restarter -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].reason}')\" = Synced ]" || bad "restarter never Synced"
# Once the first sync is recorded: a restart it caused would be stamped (a new ReplicaSet) or, within
# the debounce, pending in the status.
[ "$(rs_count)" = 1 ] && [ -z "$(kubectl -n $NS1 get vsec restarter -o jsonpath='{.status.pendingRestart}')" ] \
  && ok "first sync restarts nothing (no new ReplicaSet, no restart pending)" || bad "first sync restarted ($(rs_count) ReplicaSets, pending: $(kubectl -n $NS1 get vsec restarter -o jsonpath='{.status.pendingRestart}'))"
bao kv put secret/app1/restart v=1 >/dev/null
eventually 45 bash -c '[ "$(kubectl -n $NS1 get rs -l app=api -o name | wc -l)" = 2 ]' && ok "one KV change: one new ReplicaSet" || bad "KV change: $(rs_count) ReplicaSets"
restarts_cond() { kubectl -n $NS1 get vsec restarter -o jsonpath="{.status.conditions[?(@.type==\"Restarts\")].$1}"; }
[ "$(restarts_cond reason)" = RestartTargetMissing ] && grep -qF "StatefulSet ghost" <<<"$(restarts_cond message)" \
  && ok "missing target reported in the Restarts condition ($(restarts_cond message))" || bad "Restarts condition: $(restarts_cond reason) $(restarts_cond message)"
eventually 20 bash -c '[ "$(kubectl -n $NS1 get deploy api -o jsonpath={.status.updatedReplicas}/{.status.availableReplicas})" = 1/1 ]' || true
sleep 25 # what is tested: nothing happens through two more refreshes with the same data
[ "$(rs_count)" = 2 ] && ok "same data: no second restart" || bad "same data restarted again ($(rs_count) ReplicaSets)"
for i in 2 3 4 5 6 7 8 9 10 11; do bao kv put secret/app1/restart v=$i >/dev/null; sleep 0.2; done
eventually 60 bash -c '[ "$(kubectl -n $NS1 get rs -l app=api -o name | wc -l)" = 3 ]' || true
sleep 25 # what is tested: no further restart follows, past the debounce (10s) and two refreshes
[ "$(rs_count)" = 3 ] && ok "ten quick KV changes: one new ReplicaSet" || bad "ten quick changes: $(rs_count) ReplicaSets (want 3)"
[ "$(kubectl -n $NS1 get secret restarter -o jsonpath={.data.v} | base64 -d)" = 11 ] && ok "Secret holds the last of the quick changes" || bad "Secret v=$(kubectl -n $NS1 get secret restarter -o jsonpath={.data.v} | base64 -d)"
kubectl get events -n $NS1 --field-selector reason=Restarted -o name | contains . && ok "restart Events emitted" || bad "no Restarted Event"
[ "$(metric 'vaultkeeper_restarts_total{kind="VaultSecret"}')" = 2 ] && ok "restart metric counts 2" || bad "restart metric: $(metric 'vaultkeeper_restarts_total')"

# The canary never leaks.
grep -qF "$CANARY" "$OP_LOG" && bad "canary in operator log" || ok "canary not in operator log"
kubectl get events -A -o json | contains -F "$CANARY" && bad "canary in Events" || ok "canary not in Events"
kubectl -n $NS1 get vsec config -o json | contains -F "$CANARY" && bad "canary in CR" || ok "canary not in CR"

if [ "$fail" -ne 0 ]; then
  echo "--- state for the failures above"
  kubectl get vsec -A -o yaml | grep -vF "$CANARY" || true
  kubectl get events -A --field-selector involvedObject.kind=VaultSecret || true
  tail -n 40 "$OP_LOG"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
