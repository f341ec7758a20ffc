#!/usr/bin/env bash
# Real-stack test of CertificateRequest, run inside `stack.py run`: OpenBao with a root and an
# intermediate PKI mount, Kubernetes auth with a real TokenReview, kwok nodes so rollouts finish,
# openssl as the independent judge of chains, SANs, keys and CRLs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$VK_BIN:$PATH
# Namespaces of this script alone: the certificates' and the operator's own (its key and the
# leader Lease), so no other script's state is seen or changed.
NS=certificate
OP_NS=certificate-system
OP_LOG=$VK_STACK_DIR/logs/operator-cert.log
. e2e/lib.sh
METRICS_PORT=$(free_port)
WORK=$(mktemp -d)
# The unhashed audit log the launcher enables with VK_RAW_AUDIT=1 (as `make test` does).
RAW_AUDIT=${VK_BAO_RAW_AUDIT_LOG:-}
OP_PID=; OP_N=0; WATCH_PID=
start_operator() { # one more operator process, named cert-op-<n>, leading once it is ready
  OP_N=$((OP_N + 1))
  "$BUILD_DIR/vaultkeeper-operator" --namespace "$OP_NS" --vault-addr "$VAULT_ADDR" --metrics-addr "127.0.0.1:$METRICS_PORT" --identity "cert-op-$OP_N" >>"$OP_LOG" 2>&1 &
  OP_PID=$!
  eventually 60 bash -c "[ \"\$(kubectl -n $OP_NS get lease vaultkeeper-operator -o jsonpath='{.spec.holderIdentity}')\" = cert-op-$OP_N ]" \
    && eventually 30 curl -sf "127.0.0.1:$METRICS_PORT/readyz" || bad "operator cert-op-$OP_N never led"
}
synced() { curl -sf "127.0.0.1:$METRICS_PORT/metrics" | sed -n 's/^vaultkeeper_syncs_total{kind="CertificateRequest",result="synced"} //p'; }
# On exit the resources go first (their finalizers revoke the certificates), so no later script's
# operator finds them.
trap 'kubectl -n $NS delete vcert --all --wait=true --timeout=30s >/dev/null 2>&1; kill $WATCH_PID $OP_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
status_of() { kubectl -n $NS get vcert "$1" -o "jsonpath={.status.$2}"; }
cond() { kubectl -n $NS get vcert "$1" -o "jsonpath={.status.conditions[?(@.type==\"$2\")].$3}"; }
secret_key() { kubectl -n $NS get secret "$1" -o "jsonpath={.data.${2//./\\.}}" | base64 -d; }
# Serials as one uppercase hex number without leading zeros (openssl's CRL form).
norm_serial() { tr -d ':\n' | tr 'a-f' 'A-F' | sed 's/^0*//'; }
crl_serials() { curl -sf "$VAULT_ADDR/v1/pki-int/crl/pem" | openssl crl -noout -text | sed -n 's/.*Serial Number: *//p' | norm_serial_lines; }
norm_serial_lines() { while read -r s; do norm_serial <<<"$s"; echo; done; }
in_crl() { crl_serials | contains -x "$(norm_serial <<<"$1")"; }
issued_events() { kubectl -n $NS get events --field-selector "reason=CertificateIssued,involvedObject.name=$1" -o json | python3 -c 'import json,sys; print(sum(e.get("count") or 1 for e in json.load(sys.stdin)["items"]))'; }
# Key material as its base64 lines, one per line, for leak searches.
key_lines() { grep -v -- '-----' | grep -E '.{40}'; }

kubectl apply -f manifests/crds.yaml >/dev/null
kubectl wait --for=condition=Established crd/certificaterequests.vaultkeeper.dev >/dev/null
kubectl create namespace $OP_NS >/dev/null
kubectl create namespace $NS >/dev/null
kubectl -n $NS create serviceaccount web >/dev/null

# A root CA and an intermediate signed by it; certificates come from the intermediate.
bao secrets enable -path=pki-root pki >/dev/null
bao secrets tune -max-lease-ttl=87600h pki-root >/dev/null
bao write -field=certificate pki-root/root/generate/internal common_name="vaultkeeper e2e root" ttl=87600h >"$WORK/root.pem" 2>/dev/null
bao secrets enable -path=pki-int pki >/dev/null
bao secrets tune -max-lease-ttl=43800h pki-int >/dev/null
bao write -field=csr pki-int/intermediate/generate/internal common_name="vaultkeeper e2e intermediate" >"$WORK/int.csr" 2>/dev/null
bao write -field=certificate pki-root/root/sign-intermediate csr=@"$WORK/int.csr" format=pem ttl=43800h >"$WORK/int.pem" 2>/dev/null
# `-field` output ends without a newline; PEM blocks need one between them.
for f in root int; do echo >>"$WORK/$f.pem"; done
cat "$WORK/int.pem" "$WORK/root.pem" >"$WORK/int-chain.pem"
bao write pki-int/intermediate/set-signed certificate=@"$WORK/int-chain.pem" >/dev/null 2>&1
bao write pki-int/roles/web allowed_domains=example.com allow_subdomains=true allow_ip_sans=true \
  allowed_uri_sans='spiffe://cluster.local/*' key_type=any max_ttl=72h >/dev/null
printf 'path "pki-int/issue/web" { capabilities = ["update"] }\npath "pki-int/sign/web" { capabilities = ["update"] }\npath "pki-int/revoke" { capabilities = ["update"] }\n' \
  | bao policy write pki - >/dev/null
bao write auth/kubernetes/role/pki bound_service_account_names=web bound_service_account_namespaces=$NS policies=pki token_ttl=1h >/dev/null
[ -n "$RAW_AUDIT" ] && [ -f "$RAW_AUDIT" ] || { echo "FAILED: no raw audit log; run inside a stack started with VK_RAW_AUDIT=1 (make test does)"; exit 1; }

vcert() { # vcert NAME SECRET EXTRA-SPEC-YAML
  kubectl apply -f - >/dev/null <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: CertificateRequest
metadata: {name: $1, namespace: $NS}
spec:
  auth: {role: pki, serviceAccountName: web}
  mount: pki-int
  role: web
  destination: {name: $2}
$3
EOF
}

# 1. Invalid specs are refused at apply time with a message a person understands.
refused() { # refused LABEL SPEC-YAML EXPECTED-MESSAGE-PART
  local out
  if out=$(vcert bad bad-tls "$2" 2>&1); then
    bad "$1 accepted"; kubectl -n $NS delete vcert bad --wait=false >/dev/null 2>&1 || true
  else
    contains -F "$3" <<<"$out" && ok "refused $1: $3" || bad "$1: unexpected message: $out"
  fi
}
refused "renewBefore >= ttl" "  commonName: a.example.com
  ttl: 1h
  renewBefore: 2h" "renewBefore must be shorter than ttl"
refused "no names" "  ttl: 1h" "a certificate needs a name"
refused "keep key in issue mode" "  commonName: a.example.com
  privateKey: {algorithm: ECDSA, rotationPolicy: Never}" "rotationPolicy Never needs mode sign"
refused "RSA 1024" "  commonName: a.example.com
  privateKey: {algorithm: RSA, size: 1024}" "privateKey.size for RSA must be 2048, 3072 or 4096"
refused "bad IP" "  commonName: a.example.com
  ipSans: [10.0.0.300]" "ipSans entries must be IPv4 or IPv6 addresses"
refused "bad ttl" "  commonName: a.example.com
  ttl: 3 days" "ttl must be a duration"
refused "bad mode" "  commonName: a.example.com
  mode: generate" "Unsupported value: \"generate\""
kubectl explain certificaterequest.spec.renewBefore | contains "third of the certificate's lifetime" \
  && ok "kubectl explain documents renewBefore" || bad "kubectl explain lacks renewBefore docs"

start_operator

# 2. Both modes: a kubernetes.io/tls Secret whose chain verifies against the root and whose SANs
#    match the spec; in sign mode the key never reaches Vault.
vcert web-issue web-issue-tls "  commonName: web.example.com
  altNames: [web.example.com, www.example.com]
  ipSans: [10.1.2.3]
  uriSans: [spiffe://cluster.local/ns/$NS/sa/web]
  ttl: 2h"
vcert web-sign web-sign-tls "  mode: sign
  commonName: api.example.com
  altNames: [api.example.com]
  ipSans: ['2001:db8::7']
  ttl: 2h
  privateKey: {algorithm: ECDSA, size: 384}"
check_tls() { # check_TLS CR SECRET KEY-TEXT SAN...
  local cr=$1 secret=$2 keytext=$3; shift 3
  local d=$WORK/$cr; mkdir -p "$d"
  if ! eventually 60 bash -c "[ \"\$(kubectl -n $NS get vcert $cr -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}')\" = True ]"; then
    bad "$cr never Ready: $(cond "$cr" Ready message)"; return
  fi
  ok "$cr Ready: $(cond "$cr" Ready message)"
  [ "$(kubectl -n $NS get secret "$secret" -o jsonpath='{.type}')" = kubernetes.io/tls ] && ok "$secret is kubernetes.io/tls" || bad "$secret type"
  secret_key "$secret" tls.crt >"$d/tls.crt"; secret_key "$secret" tls.key >"$d/tls.key"; secret_key "$secret" ca.crt >"$d/ca.crt"
  awk -v d="$d" '/BEGIN CERT/{n++} {print > (d "/part" n ".pem")}' "$d/tls.crt"
  [ -f "$d/part2.pem" ] && ok "$cr: tls.crt carries the intermediate after the leaf" || bad "$cr: tls.crt has no chain"
  cat "$d"/part[2-9].pem >"$d/chain.pem" 2>/dev/null || true
  openssl verify -CAfile "$WORK/root.pem" -untrusted "$d/chain.pem" "$d/part1.pem" >/dev/null 2>&1 \
    && ok "$cr: leaf verifies against the root through tls.crt's chain" || bad "$cr: chain does not verify: $(openssl verify -CAfile "$WORK/root.pem" -untrusted "$d/chain.pem" "$d/part1.pem" 2>&1 | tail -1)"
  cmp -s <(openssl x509 -in "$d/ca.crt" -noout -fingerprint) <(openssl x509 -in "$WORK/root.pem" -noout -fingerprint) \
    && ok "$cr: ca.crt is the root" || bad "$cr: ca.crt is not the root"
  local sans; sans=$(openssl x509 -in "$d/part1.pem" -noout -ext subjectAltName | tail -n +2 | tr -d ' ')
  local missing=""
  for san in "$@"; do contains -F "$san" <<<"$sans" || missing="$missing $san"; done
  [ -z "$missing" ] && ok "$cr: SANs match the spec ($sans)" || bad "$cr: SANs $sans lack$missing"
  cmp -s <(openssl x509 -in "$d/part1.pem" -noout -pubkey) <(openssl pkey -in "$d/tls.key" -pubout) \
    && ok "$cr: tls.key matches the certificate" || bad "$cr: key does not match"
  openssl pkey -in "$d/tls.key" -noout -text | contains -F "$keytext" && ok "$cr: key is $keytext" || bad "$cr: key type: $(openssl pkey -in "$d/tls.key" -noout -text | head -1)"
  local serial; serial=$(status_of "$cr" serialNumber)
  [ "$(norm_serial <<<"$serial")" = "$(openssl x509 -in "$d/part1.pem" -noout -serial | cut -d= -f2 | norm_serial)" ] \
    && ok "$cr: status.serialNumber $serial is the certificate's" || bad "$cr: status serial $serial differs"
  bao read -field=certificate "pki-int/cert/$serial" >/dev/null 2>&1 && ok "$cr: Vault knows serial $serial" || bad "$cr: Vault has no certificate $serial"
}
check_tls web-issue web-issue-tls "Private-Key: (2048 bit" DNS:web.example.com DNS:www.example.com IPAddress:10.1.2.3 URI:spiffe://cluster.local/ns/$NS/sa/web
check_tls web-sign web-sign-tls "NIST CURVE: P-384" DNS:api.example.com IPAddress:2001:DB8:0:0:0:0:0:7
kubectl -n $NS get vcert web-issue | contains EXPIRES && ok "printer columns: $(kubectl -n $NS get vcert web-issue --no-headers | tr -s ' ')" || bad "no Expires column"

# A name the PKI role does not allow: Ready=False with Vault's reason, no Secret.
vcert denied denied-tls "  commonName: evil.example.org"
if eventually 30 bash -c "[ \"\$(kubectl -n $NS get vcert denied -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}')\" = False ]"; then
  msg=$(cond denied Ready message)
  contains -F "not allowed" <<<"$msg" && contains -F "pki-int/issue/web" <<<"$msg" && [ "$(cond denied Ready reason)" = VaultRejected ] \
    && ok "name refused by the role is reported (VaultRejected): $msg" || bad "unclear refusal: $(cond denied Ready reason): $msg"
  kubectl -n $NS get secret denied-tls >/dev/null 2>&1 && bad "a Secret was written for a refused name" || ok "no Secret for the refused name"
else
  bad "refused name not reported: $(cond denied Ready message)"
fi
kubectl -n $NS delete vcert denied --wait=true --timeout=30s >/dev/null

# What Vault saw: the sign request carried a CSR and no key; the check can fail, because the key
# Vault generated in issue mode is in its response.
sign_key=$(key_lines <"$WORK/web-sign/tls.key"); issue_key=$(key_lines <"$WORK/web-issue/tls.key")
contains -F '"path":"pki-int/sign/web"' "$RAW_AUDIT" && contains -F 'BEGIN CERTIFICATE REQUEST' "$RAW_AUDIT" \
  && ok "raw audit log holds the sign request with its CSR" || bad "sign request not in the raw audit log"
if contains -F "$sign_key" "$RAW_AUDIT" || contains -F "$sign_key" "$VK_BAO_AUDIT_LOG"; then
  bad "the sign-mode private key appears in Vault's audit log"
else
  ok "the sign-mode private key never appears in any Vault request or response"
fi
contains -F "$issue_key" "$RAW_AUDIT" && ok "control: the issue-mode key Vault generated is in its raw audit log" || bad "control failed: issue-mode key not found in the raw audit log"

# 3. Changing altNames re-issues; an unrelated label change does not.
serial0=$(status_of web-issue serialNumber)
kubectl -n $NS label vcert web-issue team=payments >/dev/null
sleep 5 # what is tested: nothing is issued for a while after a label change
[ "$(status_of web-issue serialNumber)" = "$serial0" ] && ok "label change: same certificate ($serial0)" || bad "label change re-issued"
vcert web-issue web-issue-tls "  commonName: web.example.com
  altNames: [web.example.com, www.example.com, shop.example.com]
  ipSans: [10.1.2.3]
  uriSans: [spiffe://cluster.local/ns/$NS/sa/web]
  ttl: 2h"
if eventually 30 bash -c "[ \"\$(kubectl -n $NS get vcert web-issue -o jsonpath='{.status.serialNumber}')\" != $serial0 ]"; then
  serial1=$(status_of web-issue serialNumber)
  secret_key web-issue-tls tls.crt | openssl x509 -noout -ext subjectAltName | contains -F DNS:shop.example.com \
    && ok "altNames change re-issued ($serial0 -> $serial1) with the new name" || bad "new certificate lacks shop.example.com"
  eventually 20 in_crl "$serial0" && ok "superseded certificate $serial0 revoked (in the CRL)" || bad "superseded $serial0 not in the CRL"
else
  bad "altNames change did not re-issue"
fi

# 4. A short-lived certificate with a restart target: renewed before notAfter - renewBefore with a
#    new serial, one rollout, the old certificate revoked after it; then an OpenBao outage keeps
#    the Secret and reports the time left.
kubectl -n $NS create deployment tlsapp --image=example.invalid/tls --replicas=1 >/dev/null
# New Pods count as available 3 s after they are Ready, so a revocation that does not wait for the
# rollout comes seconds before its end, not within the watch's latency of it.
kubectl -n $NS patch deployment tlsapp -p '{"spec": {"minReadySeconds": 3}}' >/dev/null
eventually 30 deployment_settled $NS tlsapp 1 || bad "Deployment never available"
watch_rollout $NS tlsapp "$WORK/tlsapp-rollout"
vcert short short-tls "  commonName: short.example.com
  ttl: 40s
  renewBefore: 20s
  privateKey: {algorithm: Ed25519}
  mode: sign
  restartTargets: [{kind: Deployment, name: tlsapp}]"
eventually 30 bash -c "[ -n \"\$(kubectl -n $NS get vcert short -o jsonpath='{.status.serialNumber}')\" ]" || bad "short never issued: $(cond short Ready message)"
rs_before=$(kubectl -n $NS get rs -l app=tlsapp -o name | wc -l)
gen_before=$(kubectl -n $NS get deployment tlsapp -o jsonpath='{.metadata.generation}') # the renewal's rollout comes after it
s_serial=$(status_of short serialNumber); s_after=$(status_of short notAfter)
deadline=$(( $(date -d "$s_after" +%s) - 20 ))
if eventually 60 bash -c "[ \"\$(kubectl -n $NS get vcert short -o jsonpath='{.status.serialNumber}')\" != $s_serial ]"; then
  seen=$(date +%s); issued=$(date -d "$(status_of short lastIssueTime)" +%s)
  [ "$issued" -le "$deadline" ] && [ "$seen" -le $((deadline + 2)) ] \
    && ok "renewed before notAfter - renewBefore (issued at -$((deadline - issued))s, seen at -$((deadline - seen))s): $s_serial -> $(status_of short serialNumber)" \
    || bad "renewed late: issued $issued, seen $seen, deadline $deadline"
  eventually 30 bash -c "[ \"\$(kubectl -n $NS get deploy tlsapp -o jsonpath='{.status.updatedReplicas}/{.status.availableReplicas}')\" = 1/1 ]" || true
  [ "$(kubectl -n $NS get rs -l app=tlsapp -o name | wc -l)" = $((rs_before + 1)) ] && ok "exactly one new ReplicaSet for the renewal" || bad "ReplicaSets: $rs_before -> $(kubectl -n $NS get rs -l app=tlsapp -o name | wc -l)"
  eventually 30 in_crl "$s_serial" && ok "old certificate $s_serial revoked (in the CRL)" || bad "old $s_serial not in the CRL"
  # When: the Revoked Event against the moment the watch saw the rollout complete. The watch sees
  # it a little after the fact, so a revocation up to 0.5 s before that still counts as after it.
  done_at=$(rollout_done_at "$WORK/tlsapp-rollout" "$gen_before"); revoked_at=$(event_time $NS short Revoked "$s_serial")
  if [ -z "$done_at" ]; then
    bad "the rollout of tlsapp never completed (last seen: $(tail -n 1 "$WORK/tlsapp-rollout"))"
  elif [ -z "$revoked_at" ]; then
    bad "no Revoked Event for $s_serial"
  elif at_least "$(seconds_between "$done_at" "$revoked_at")" -0.5; then
    ok "old certificate revoked $(seconds_between "$done_at" "$revoked_at")s after the rollout completed"
  else
    bad "old certificate revoked $(seconds_between "$revoked_at" "$done_at")s before the rollout completed"
  fi
else
  bad "short certificate not renewed: $(cond short Ready message)"
fi

kill $WATCH_PID 2>/dev/null || true; WATCH_PID=

# OpenBao stopped through the next renewal: the Secret is untouched, the condition shows the time left.
secret_before=$(kubectl -n $NS get secret short-tls -o jsonpath='{.metadata.resourceVersion} {.data.tls\.crt}')
python3 e2e/stack/stack.py bao-stop --state-dir "$VK_STACK_DIR" >/dev/null
if eventually 60 bash -c "[ \"\$(kubectl -n $NS get vcert short -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].reason}')\" = VaultUnavailable ]"; then
  msg=$(cond short Ready message)
  contains -E "valid until .* left\)|expired .* ago\)" <<<"$msg" && ok "outage reported with the time left: $msg" || bad "outage message lacks the time left: $msg"
else
  bad "outage not reported: $(cond short Ready message)"
fi
# Through one more failed attempt (the retry backoff starts at 5s); `short` is the only resource
# that needs Vault now.
unavailable() { curl -sf "127.0.0.1:$METRICS_PORT/metrics" | sed -n 's/^vaultkeeper_syncs_total{kind="CertificateRequest",result="VaultUnavailable"} //p'; }
unavailable_above() { [ "$(unavailable)" -gt "$1" ]; }
failed=$(unavailable)
eventually 30 unavailable_above "${failed:-0}" && ok "the operator retried during the outage ($(unavailable) failed attempts)" || bad "no retry during the outage (${failed:-0} failed attempts)"
[ "$(kubectl -n $NS get secret short-tls -o jsonpath='{.metadata.resourceVersion} {.data.tls\.crt}')" = "$secret_before" ] \
  && ok "Secret untouched during the outage" || bad "Secret changed during the outage"
python3 e2e/stack/stack.py bao-start --state-dir "$VK_STACK_DIR" >/dev/null
eventually 90 bash -c "[ \"\$(kubectl -n $NS get vcert short -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}')\" = True ]" \
  && ok "renewed on its own after the outage: $(cond short Ready message)" || bad "not recovered: $(cond short Ready message)"
kubectl -n $NS delete vcert short --wait=true --timeout=30s >/dev/null

# 5. Killing and restarting the operator issues nothing while the stored certificates are valid.
before="$(status_of web-issue serialNumber) $(status_of web-sign serialNumber)"
events_before="$(issued_events web-issue) $(issued_events web-sign)"
kill -9 "$OP_PID"; wait "$OP_PID" 2>/dev/null || true
start_operator
# Positive signal that the new process looked at both resources before judging "no re-issue".
eventually 30 bash -c "[ \"\$(curl -sf 127.0.0.1:$METRICS_PORT/metrics | sed -n 's/^vaultkeeper_syncs_total{kind=\"CertificateRequest\",result=\"synced\"} //p')\" -ge 2 ]" \
  && ok "restarted operator reconciled the resources ($(synced) syncs)" || bad "restarted operator did not reconcile: $(synced)"
sleep 3 # what is tested: nothing is issued for a while after those reconciles either
after="$(status_of web-issue serialNumber) $(status_of web-sign serialNumber)"
[ "$after" = "$before" ] && [ "$(issued_events web-issue) $(issued_events web-sign)" = "$events_before" ] \
  && ok "operator restart: no re-issue (serials $after)" || bad "operator restart re-issued: $before -> $after"
[ "$(cond web-sign Issuing reason)" = CertificateValid ] && ok "Issuing condition: $(cond web-sign Issuing message)" || bad "Issuing: $(cond web-sign Issuing reason)"

# 6. Metrics: expiry and renewal timestamps per resource.
metrics=$(curl -sf "127.0.0.1:$METRICS_PORT/metrics")
exp=$(date -d "$(status_of web-sign notAfter)" +%s)
contains -F "vaultkeeper_certificate_expiry_timestamp_seconds{namespace=\"$NS\",name=\"web-sign\"} $exp" <<<"$metrics" \
  && ok "expiry metric = notAfter ($exp)" || bad "expiry metric missing: $(grep certificate_expiry <<<"$metrics")"
contains -F "vaultkeeper_certificate_renewal_timestamp_seconds{namespace=\"$NS\",name=\"web-sign\"} $(date -d "$(status_of web-sign renewalTime)" +%s)" <<<"$metrics" \
  && ok "renewal metric = status.renewalTime" || bad "renewal metric missing"

# 7. Secrets stay secret: no private key in Events, CR status or the operator's log.
keys="$sign_key
$issue_key
$(secret_key web-issue-tls tls.key | key_lines)"
leaks=""
kubectl get events -A -o json | contains -F "$keys" && leaks="$leaks events"
kubectl -n $NS get vcert -o json | contains -F "$keys" && leaks="$leaks status"
contains -F "$keys" "$OP_LOG" && leaks="$leaks log"
contains -F "$keys" <<<"$metrics" && leaks="$leaks metrics"
[ -z "$leaks" ] && ok "no private key in Events, CRs, operator log or metrics" || bad "private key found in:$leaks"

# 8. Deleting the resource revokes its certificate (serial in the CRL) and drops its metrics.
del_serial=$(status_of web-sign serialNumber)
in_crl "$del_serial" && bad "serial $del_serial in the CRL before the delete"
kubectl -n $NS delete vcert web-sign --wait=true --timeout=30s >/dev/null && ok "deleted (finalizer released)" || bad "delete hung"
eventually 20 in_crl "$del_serial" && ok "deleted resource's certificate $del_serial is in the CRL" || bad "$del_serial not in the CRL"
curl -sf "127.0.0.1:$METRICS_PORT/metrics" | contains -F 'name="web-sign"' && bad "metrics of the deleted resource remain" || ok "metrics of the deleted resource dropped"
eventually 30 bash -c "! kubectl -n $NS get secret web-sign-tls" && ok "its Secret was garbage-collected" || bad "Secret web-sign-tls remains"

kubectl -n $NS delete vcert --all --wait=true --timeout=30s >/dev/null
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
