#!/usr/bin/env bash
# Real-stack test of what a tenant can throw at the operator, run inside `stack.py run`: duration
# fields past any sane bound are refused by the API server's CEL rules with a sentence; hand-edited
# lease annotations neither crash the operator nor stop it reconciling others; a Secret vaultkeeper
# does not manage is never taken over (and nothing is issued for it); a deletion whose revocation
# fails keeps its finalizer and says so; a rollout that stalls does not keep an old lease forever.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$VK_BIN:$PATH
NS=hardening1
MOUNT=db-hardening
PKI=pki-hardening
OP_LOG=$VK_STACK_DIR/logs/operator-hardening.log
. e2e/lib.sh
METRICS_PORT=$(free_port)
OP_PID=; OP_N=0
start_operator() { # one more operator process, named hard-op-<n>, leading once it is ready
  OP_N=$((OP_N + 1))
  "$BUILD_DIR/vaultkeeper-operator" --vault-addr "$VAULT_ADDR" --metrics-addr "127.0.0.1:$METRICS_PORT" \
    --identity "hard-op-$OP_N" "$@" >>"$OP_LOG" 2>&1 &
  OP_PID=$!
  eventually 60 bash -c "[ \"\$(kubectl -n vaultkeeper-system get lease vaultkeeper-operator -o jsonpath='{.spec.holderIdentity}')\" = hard-op-$OP_N ]" \
    && eventually 30 curl -sf "127.0.0.1:$METRICS_PORT/readyz" || bad "operator hard-op-$OP_N never led"
}
trap 'kill $OP_PID 2>/dev/null || true' EXIT
cond() { kubectl -n $NS get "$1" "$2" -o "jsonpath={.status.conditions[?(@.type==\"$3\")].$4}"; }
ready_is() { [ "$(cond "$1" "$2" Ready status)" = "$3" ]; }
reason_is() { [ "$(cond "$1" "$2" Ready reason)" = "$3" ]; }
status_of() { kubectl -n $NS get "$1" "$2" -o "jsonpath={.status.$3}"; }
annotation() { kubectl -n $NS get secret "$1" -o "jsonpath={.metadata.annotations.${2//./\\.}}"; }
# Leases Vault holds under this script's database role.
live_leases() { bao list -format=json "sys/leases/lookup/$MOUNT/creds/app" 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0; }
lease_alive() { bao write -format=json sys/leases/lookup lease_id="$1" >/dev/null 2>&1; }
events_with_reason() { kubectl -n $NS get events --field-selector "reason=$1" -o jsonpath='{range .items[*]}{.note}{.message}{"\n"}{end}'; }

kubectl apply -f manifests/crds.yaml >/dev/null
kubectl wait --for=condition=Established crd/dynamiccredentials.vaultkeeper.dev crd/certificaterequests.vaultkeeper.dev crd/vaultsecrets.vaultkeeper.dev >/dev/null
kubectl create namespace $NS >/dev/null
kubectl -n $NS create serviceaccount web >/dev/null

bao secrets enable -path=$MOUNT database >/dev/null
bao write $MOUNT/config/pg plugin_name=postgresql-database-plugin allowed_roles='*' \
  connection_url="postgresql://{{username}}:{{password}}@$VK_PG_HOST:$VK_PG_PORT/postgres?sslmode=disable" \
  username=postgres password=unused >/dev/null
create="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
bao write $MOUNT/roles/app db_name=pg creation_statements="$create" default_ttl=10m max_ttl=1h >/dev/null
bao secrets enable -path=$PKI pki >/dev/null
bao write $PKI/root/generate/internal common_name="hardening root" ttl=87600h >/dev/null 2>&1
bao write $PKI/roles/web allowed_domains=example.com allow_subdomains=true max_ttl=72h >/dev/null
printf 'path "%s/creds/*" { capabilities = ["read"] }\npath "sys/leases/revoke" { capabilities = ["update"] }\npath "%s/issue/web" { capabilities = ["update"] }\npath "%s/revoke" { capabilities = ["update"] }\n' \
  "$MOUNT" "$PKI" "$PKI" | bao policy write hardening - >/dev/null
bao write auth/kubernetes/role/hardening bound_service_account_names=web bound_service_account_namespaces=$NS \
  policies=hardening token_period=1h >/dev/null

dcred() { # dcred NAME SECRET [EXTRA-YAML]
  kubectl apply -f - <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: DynamicCredential
metadata: {name: $1, namespace: $NS}
spec:
  auth: {role: hardening, serviceAccountName: web}
  source: {mount: $MOUNT, role: app}
  rotationGracePeriod: 3s
  destination: {name: $2}
${3:-}
EOF
}

# 1. Durations past any bound are refused at apply time, by the real API server, with sentences.
refused() { # refused WHAT EXPECTED-TEXT: reads a manifest on stdin
  local out
  if out=$(kubectl apply --dry-run=server -f - 2>&1); then
    bad "$1 was accepted"
  elif contains -F "$2" <<<"$out"; then
    ok "$1 refused: $(grep -o "$2[^\"]*" <<<"$out" | head -1)"
  else
    bad "$1 refused without the expected sentence: $out"
  fi
}
for grace in 99999999999999999999h 25h 2562048h; do
  refused "rotationGracePeriod $grace" "rotationGracePeriod must be a duration such as 30s, 5m or 1h, and at most 24h" <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: DynamicCredential
metadata: {name: huge, namespace: $NS}
spec:
  auth: {role: hardening}
  source: {mount: $MOUNT, role: app}
  rotationGracePeriod: $grace
  destination: {name: huge}
EOF
done
refused "CertificateRequest ttl 99999999999999999999h" "ttl must be a duration such as 90s, 45m or 720h, at least 1s and at most 87600h" <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: CertificateRequest
metadata: {name: huge, namespace: $NS}
spec:
  auth: {role: hardening}
  mount: $PKI
  role: web
  commonName: a.example.com
  ttl: 99999999999999999999h
  renewBefore: 1h
  destination: {name: huge}
EOF
refused "CertificateRequest renewBefore 9999999h" "renewBefore must be a duration such as 90s, 45m or 240h, at least 1s and at most 87600h" <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: CertificateRequest
metadata: {name: huge, namespace: $NS}
spec:
  auth: {role: hardening}
  mount: $PKI
  role: web
  commonName: a.example.com
  renewBefore: 9999999h
  destination: {name: huge}
EOF
refused "VaultSecret refreshInterval 200h" "refreshInterval must be a duration such as 30s, 5m or 1h, at least 10s and at most 168h" <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: VaultSecret
metadata: {name: huge, namespace: $NS}
spec:
  auth: {role: hardening}
  source: {engine: kv-v2, mount: secret, path: x}
  refreshInterval: 200h
  destination: {name: huge}
EOF
kubectl apply --dry-run=server -f - >/dev/null 2>&1 <<EOF && ok "a sane duration (1h30m15.5s) is accepted" || bad "a sane duration was refused"
apiVersion: vaultkeeper.dev/v1alpha1
kind: DynamicCredential
metadata: {name: sane, namespace: $NS}
spec:
  auth: {role: hardening}
  source: {mount: $MOUNT, role: app}
  rotationGracePeriod: 1h30m15.5s
  destination: {name: sane}
EOF

start_operator

# 2. A Secret vaultkeeper does not manage is refused, and nothing is issued for it.
kubectl -n $NS create secret generic user-owned --from-literal=password=keep-me >/dev/null
kubectl -n $NS create secret generic user-tls --from-literal=tls.crt=mine >/dev/null
rv_user=$(kubectl -n $NS get secret user-owned -o jsonpath='{.metadata.resourceVersion}')
leases_before=$(live_leases)
dcred takeover user-owned >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: CertificateRequest
metadata: {name: takeover, namespace: $NS}
spec:
  auth: {role: hardening, serviceAccountName: web}
  mount: $PKI
  role: web
  commonName: takeover.example.com
  destination: {name: user-tls}
EOF
eventually 30 reason_is dcred takeover SecretConflict && ok "DynamicCredential onto an unmanaged Secret: SecretConflict ($(cond dcred takeover Ready message))" \
  || bad "DynamicCredential takeover not refused: $(cond dcred takeover Ready reason) $(cond dcred takeover Ready message)"
eventually 30 reason_is vcert takeover SecretConflict && ok "CertificateRequest onto an unmanaged Secret: SecretConflict" \
  || bad "CertificateRequest takeover not refused: $(cond vcert takeover Ready reason) $(cond vcert takeover Ready message)"
[ "$(kubectl -n $NS get secret user-owned -o jsonpath='{.metadata.resourceVersion}')" = "$rv_user" ] \
  && [ -z "$(kubectl -n $NS get secret user-owned -o jsonpath='{.metadata.ownerReferences}')" ] \
  && [ "$(kubectl -n $NS get secret user-owned -o jsonpath='{.data.password}' | base64 -d)" = keep-me ] \
  && ok "the user's Secret is untouched (same resourceVersion, no ownerReference, same data)" || bad "the user's Secret was changed"
[ -z "$(kubectl -n $NS get secret user-tls -o jsonpath='{.metadata.ownerReferences}')" ] && ok "the user's TLS Secret has no ownerReference" || bad "user-tls taken over"
[ "$(live_leases)" = "$leases_before" ] && ok "no lease issued for the refused DynamicCredential" || bad "a lease was issued for a refused destination ($leases_before -> $(live_leases))"
[ -z "$(status_of vcert takeover serialNumber)" ] && ok "no certificate issued for the refused CertificateRequest" || bad "a certificate was issued for a refused destination"
kubectl -n $NS delete dcred takeover --wait=true --timeout=30s >/dev/null && kubectl -n $NS delete vcert takeover --wait=true --timeout=30s >/dev/null
kubectl -n $NS get secret user-owned user-tls >/dev/null 2>&1 && ok "deleting the refused resources leaves the user's Secrets" || bad "a user's Secret was garbage-collected"

# 3. Hand-edited lease annotations: no crash, the record is ignored with a reason, and another
#    DynamicCredential created afterwards is still reconciled.
dcred edited edited-db >/dev/null
eventually 30 ready_is dcred edited True || bad "edited never Ready: $(cond dcred edited Ready message)"
first_lease=$(status_of dcred edited leaseId)
kubectl -n $NS annotate secret edited-db --overwrite vaultkeeper.dev/lease-ttl-seconds=99999999999999999999 \
  vaultkeeper.dev/lease-issued=not-a-time >/dev/null
# (The Secret's change itself triggers its owner's reconcile.)
if eventually 30 bash -c "[ \"\$(kubectl -n $NS get dcred edited -o jsonpath='{.status.leaseId}')\" != \"$first_lease\" ]"; then
  ok "a Secret with unparseable lease annotations got a new credential"
else
  bad "the hand-edited record was not replaced: $(cond dcred edited LeaseRenewal message)"
fi
cond dcred edited LeaseRenewal message | contains "do not parse" \
  && ok "the condition says why: $(cond dcred edited LeaseRenewal message)" || bad "no reason given: $(cond dcred edited LeaseRenewal message)"
eventually 30 bash -c "! bao write sys/leases/lookup lease_id='$first_lease' >/dev/null 2>&1" \
  && ok "the credential of the ignored record was revoked (no leak)" || bad "lease $first_lease still alive"
kubectl -n $NS annotate secret edited-db --overwrite vaultkeeper.dev/lease-ttl-seconds=18446744073709551615 \
  vaultkeeper.dev/retiring-leases='[{"leaseId":7}]' vaultkeeper.dev/restart-for='$(reboot)' >/dev/null
dcred after after-db >/dev/null
eventually 30 ready_is dcred after True && ok "a DynamicCredential created after the hostile edits is reconciled" || bad "the operator stopped reconciling: $(cond dcred after Ready message)"
kill -0 "$OP_PID" 2>/dev/null && curl -sf "127.0.0.1:$METRICS_PORT/readyz" >/dev/null && ok "the operator is alive and ready" || bad "the operator died or is not ready"
contains -i "panicked" "$OP_LOG" && bad "a reconcile panicked: $(grep -i panicked "$OP_LOG" | head -2)" || ok "no panic in the operator log"
grep -q $'\x1b\[' "$OP_LOG" && bad "terminal colour codes in the operator's log file" || ok "the operator's log file is plain text, without colour codes"

# The issuing token's Secret records when the token was issued, and a restarted operator keeps it.
token_issued() { kubectl -n vaultkeeper-system get secret -l vaultkeeper.dev/lease-token=true -o json \
  | python3 -c 'import json,sys; print(" ".join(sorted(s["metadata"]["annotations"].get("vaultkeeper.dev/issued","") for s in json.load(sys.stdin)["items"] if "hardening" in s["metadata"]["annotations"].get("vaultkeeper.dev/identity",""))))'; }
issued_before=$(token_issued)
[ -n "$issued_before" ] && date -d "$issued_before" >/dev/null 2>&1 && ok "the lease token's Secret records its issue time ($issued_before)" || bad "no issue time on the lease token Secret: '$issued_before'"
kill "$OP_PID"; wait "$OP_PID" 2>/dev/null || true
start_operator
kubectl -n $NS patch dcred after --type=merge -p '{"spec":{"destination":{"labels":{"poke":"1"}}}}' >/dev/null
eventually 30 bash -c "[ \"\$(kubectl -n $NS get dcred after -o jsonpath='{.status.observedGeneration}')\" = \"\$(kubectl -n $NS get dcred after -o jsonpath='{.metadata.generation}')\" ]" || bad "the restarted operator did not reconcile"
[ "$(token_issued)" = "$issued_before" ] && ok "after an operator restart the token keeps its recorded issue time" || bad "issue time changed across a restart: $issued_before -> $(token_issued)"

# 4. Deletion while Vault is down: the finalizer stays and Ready says why; once Vault is back the
#    lease is revoked and the resource goes.
lease=$(status_of dcred after leaseId)
python3 e2e/stack/stack.py bao-stop --state-dir "$VK_STACK_DIR" >/dev/null
kubectl -n $NS delete dcred after --wait=false >/dev/null
if eventually 40 bash -c "kubectl -n $NS get dcred after -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].message}' | grep -q 'deleting:'"; then
  ok "a deletion that cannot revoke says so: $(cond dcred after Ready message)"
else
  bad "no condition on the stuck deletion: $(cond dcred after Ready message)"
fi
kubectl -n $NS get dcred after -o jsonpath='{.metadata.finalizers}' | contains revoke-lease \
  && ok "the finalizer stays while the lease cannot be revoked" || bad "the finalizer was released with the lease unrevoked"
python3 e2e/stack/stack.py bao-start --state-dir "$VK_STACK_DIR" >/dev/null
eventually 90 bash -c "! kubectl -n $NS get dcred after >/dev/null 2>&1" && ok "deleted once Vault is back" || bad "resource never released"
lease_alive "$lease" && bad "lease $lease still alive after the deletion" || ok "its lease was revoked"

# 5. A rollout that stalls (a Deployment that cannot schedule, progressDeadlineSeconds 5) does not
#    keep the old lease forever: after the deadline the old lease is revoked with a Warning Event.
kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: stuck, namespace: $NS}
spec:
  replicas: 1
  progressDeadlineSeconds: 5
  selector: {matchLabels: {app: stuck}}
  template:
    metadata: {labels: {app: stuck}}
    spec:
      nodeSelector: {no-such-node: "true"}
      containers: [{name: app, image: example.invalid/app:1}]
EOF
eventually 60 bash -c "kubectl -n $NS get deploy stuck -o jsonpath='{.status.conditions[?(@.type==\"Progressing\")].reason}' | grep -q ProgressDeadlineExceeded" \
  || bad "the Deployment never exceeded its progress deadline"
dcred rotate rotate-db "  restartTargets: [{kind: Deployment, name: stuck}]" >/dev/null
eventually 30 ready_is dcred rotate True || bad "rotate never Ready: $(cond dcred rotate Ready message)"
old=$(status_of dcred rotate leaseId)
# A template change defines a new credential: rotation with a restart of the stalled target.
kubectl -n $NS patch dcred rotate --type=merge -p '{"spec":{"destination":{"templates":{"X":"{{ .username }}"}}}}' >/dev/null
eventually 30 bash -c "[ \"\$(kubectl -n $NS get dcred rotate -o jsonpath='{.status.leaseId}')\" != \"$old\" ]" || bad "no rotation"
if eventually 60 bash -c "! bao write sys/leases/lookup lease_id='$old' >/dev/null 2>&1"; then
  ok "the old lease was revoked although the restarted Deployment never rolled out"
else
  bad "the old lease is kept forever by a stalled rollout: $(cond dcred rotate Rotating message)"
fi
events_with_reason RolloutNotFinished | contains "progress deadline" \
  && ok "a Warning Event says why: $(events_with_reason RolloutNotFinished | head -1)" || bad "no RolloutNotFinished Event"
[ -n "$(annotation rotate-db vaultkeeper.dev/retiring-leases)" ] && annotation rotate-db vaultkeeper.dev/retiring-leases | contains -F "$old" \
  && ok "the Secret recorded the retiring lease with the new credential" || bad "retiring lease not recorded on the Secret"
[ -n "$(annotation rotate-db vaultkeeper.dev/restart-for)" ] && ok "the Secret recorded the restart stamp" || bad "restart stamp not recorded on the Secret"

# No secret value anywhere it must not be.
password=$(kubectl -n $NS get secret rotate-db -o jsonpath='{.data.password}' | base64 -d)
{ kubectl -n $NS get events -o yaml; kubectl -n $NS get dcred -o yaml; cat "$OP_LOG"; } | contains -F "$password" \
  && bad "a credential leaked into Events, status or the log" || ok "no credential in Events, status or the operator log"

echo "hardening: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
