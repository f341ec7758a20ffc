#!/usr/bin/env bash
# The Helm chart against the real API server, run inside `stack.py run`: `helm lint --strict` and
# `helm template`; the chart's CRDs applied; and its RBAC proven sufficient and least-privilege by
# running the operator with nothing but the chart's ServiceAccount token. With that identity a
# VaultSecret (with a restart target), a DynamicCredential (PostgreSQL through OpenBao) and a
# CertificateRequest (OpenBao PKI) reach Ready, the workload is restarted, Events are recorded, the
# leader Lease and the stored lease token live in the release namespace, nothing is forbidden in
# the operator's log, and the identity cannot do what the operator never does (delete Secrets, read
# ConfigMaps, create Pods, touch other kinds).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$VK_BIN:$PATH
. e2e/lib.sh
REL_NS=chart-system  # the release namespace
NS=chart-app         # the users' namespace
RELEASE=vk
SA=vk-vaultkeeper-operator
WORK=$VK_STACK_DIR/chart-e2e
OP_LOG=$VK_STACK_DIR/logs/operator-chart.log
rm -rf "$WORK"; mkdir -p "$WORK"
METRICS_PORT=$(free_port)
HELM=$(command -v helm)
OP_PID=
# The checks below read YAML with PyYAML.
python3 -c 'import yaml' 2>/dev/null || pip install -q pyyaml
trap 'kubectl -n $NS delete dcred,vcert --all --wait=true --timeout=30s >/dev/null 2>&1; [ -n "$OP_PID" ] && kill $OP_PID 2>/dev/null; true' EXIT

# --- the chart renders, and says what is missing -------------------------------------------------
server=$(kubectl version -o json | python3 -c 'import json,sys; v=json.load(sys.stdin)["serverVersion"]; print(v["gitVersion"])')
# Helm 3 and Helm 4 both lint it strictly and render the same objects.
for h in helm helm4; do
  "$h" lint --strict charts/vaultkeeper --set operator.vault.address="$VAULT_ADDR" >"$WORK/lint-$h.txt" 2>&1 \
    && ok "$h ($("$h" version --short)) lint --strict" || bad "$h lint: $(cat "$WORK/lint-$h.txt")"
  "$h" template $RELEASE charts/vaultkeeper -n $REL_NS --kube-version "$server" --set operator.vault.address="$VAULT_ADDR" \
    | grep -v '^# Source: ' >"$WORK/chart-$h.yaml" || bad "$h template failed"
done
python3 -c '
import sys, yaml
a, b = ([d for d in yaml.safe_load_all(open(f)) if d] for f in sys.argv[1:])
sys.exit(0 if a == b else 1)' "$WORK/chart-helm.yaml" "$WORK/chart-helm4.yaml" \
  && ok "helm 3 and helm 4 render the same objects ($(grep -c '^kind:' "$WORK/chart-helm.yaml"))" || bad "helm 3 and helm 4 render differently: $(diff "$WORK/chart-helm.yaml" "$WORK/chart-helm4.yaml" | head -5)"
render() { "$HELM" template $RELEASE charts/vaultkeeper -n $REL_NS --kube-version "$server" "$@"; }
render --set operator.vault.address="$VAULT_ADDR" >"$WORK/chart.yaml" && ok "helm template with the defaults and a Vault address" || bad "helm template failed"
out=$(render 2>&1 || true)
contains -F "operator.vault.address is required" <<<"$out" && ok "without a Vault address the chart says which value to set" || bad "no Vault address: $out"
out=$(render --set operator.vault.address=vault:8200 2>&1 || true)
contains -F "/operator/vault/address" <<<"$out" && ok "an address without a scheme is refused by values.schema.json" || bad "schema: $out"
for f in charts/vaultkeeper/templates/crds/*.yaml; do
  size=$(stat -c %s "$f")
  [ "$size" -lt 262144 ] && ok "$(basename "$f"): $size bytes, under the 256 KiB annotation limit" || bad "$f is $size bytes"
done
kinds() { python3 -c '
import sys, yaml
want = set(sys.argv[1].split(","))
docs = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d and d["kind"] in want]
print(yaml.safe_dump_all(docs))' "$1" "$WORK/chart.yaml"; }
keep=$(kinds CustomResourceDefinition | grep -c 'helm.sh/resource-policy: keep')
[ "$keep" = 3 ] && ok "the three CRDs are kept on uninstall" || bad "CRDs kept: $keep"
python3 -c '
import sys, yaml
rendered = {d["metadata"]["name"]: d["spec"] for d in yaml.safe_load_all(sys.stdin) if d}
manifests = {d["metadata"]["name"]: d["spec"] for d in yaml.safe_load_all(open("manifests/crds.yaml")) if d}
sys.exit(0 if rendered == manifests else 1)' < <(kinds CustomResourceDefinition) \
  && ok "the chart renders the same CRD specs as manifests/crds.yaml (descriptions with {{ }} intact)" || bad "the chart's CRDs differ from manifests/crds.yaml"
HELM=$HELM bash hack/install-yaml.sh | diff -q - manifests/install.yaml >/dev/null \
  && ok "manifests/install.yaml is the chart's current rendering" || bad "manifests/install.yaml is out of date: run make install-yaml"
render --set operator.vault.address="$VAULT_ADDR" --set crds.enabled=false | contains 'kind: CustomResourceDefinition' \
  && bad "crds.enabled=false still renders CRDs" || ok "crds.enabled=false renders no CRD"

# --- the chart's CRDs and RBAC in the cluster -----------------------------------------------------
kubectl create namespace $REL_NS >/dev/null
kubectl create namespace $NS >/dev/null
kubectl -n $NS create serviceaccount web >/dev/null
kinds CustomResourceDefinition | kubectl apply -f - >/dev/null && ok "the chart's CRDs apply" || bad "the chart's CRDs do not apply"
kinds ServiceAccount,ClusterRole,ClusterRoleBinding,Role,RoleBinding | kubectl apply -f - >/dev/null \
  && ok "the chart's ServiceAccount and RBAC apply" || bad "RBAC does not apply"

# A kubeconfig holding only the chart's ServiceAccount token: the operator gets no other right.
token=$(kubectl -n $REL_NS create token $SA --duration=1h)
SA_KUBECONFIG=$WORK/operator.kubeconfig
cluster=$(kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.server}')
kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$WORK/ca.crt"
KUBECONFIG=$SA_KUBECONFIG kubectl config set-cluster chart --server="$cluster" --certificate-authority="$WORK/ca.crt" --embed-certs >/dev/null
KUBECONFIG=$SA_KUBECONFIG kubectl config set-credentials operator --token="$token" >/dev/null
KUBECONFIG=$SA_KUBECONFIG kubectl config set-context chart --cluster=chart --user=operator >/dev/null
KUBECONFIG=$SA_KUBECONFIG kubectl config use-context chart >/dev/null
as_operator() { KUBECONFIG=$SA_KUBECONFIG kubectl "$@"; }
[ "$(as_operator auth whoami -o jsonpath='{.status.userInfo.username}')" = "system:serviceaccount:$REL_NS:$SA" ] \
  && ok "the operator runs as system:serviceaccount:$REL_NS:$SA" || bad "whoami: $(as_operator auth whoami 2>&1)"

# --- Vault: a KV secret, a database role and a PKI role for the users' namespace ------------------
bao kv put secret/chart/config password=chart-one >/dev/null
bao secrets list -format=json | contains '"chart-db/"' || bao secrets enable -path=chart-db database >/dev/null
bao write chart-db/config/pg plugin_name=postgresql-database-plugin allowed_roles='*' \
  connection_url="postgresql://{{username}}:{{password}}@$VK_PG_HOST:$VK_PG_PORT/postgres?sslmode=disable" \
  username=postgres password=unused username_template='chart-{{.RoleName}}-{{random 16}}' >/dev/null
bao write chart-db/roles/app db_name=pg default_ttl=1h max_ttl=2h \
  creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';" >/dev/null
bao secrets list -format=json | contains '"chart-pki/"' || bao secrets enable -path=chart-pki pki >/dev/null
bao secrets tune -max-lease-ttl=8760h chart-pki >/dev/null
bao write -field=certificate chart-pki/root/generate/internal common_name="chart e2e root" ttl=8760h >/dev/null 2>&1
bao write chart-pki/roles/web allowed_domains=example.com allow_subdomains=true max_ttl=720h >/dev/null
printf '%s\n' 'path "secret/data/chart/*" { capabilities = ["read"] }' 'path "secret/metadata/chart/*" { capabilities = ["read"] }' \
  'path "chart-db/creds/app" { capabilities = ["read"] }' 'path "sys/leases/revoke" { capabilities = ["update"] }' \
  'path "chart-pki/issue/web" { capabilities = ["update"] }' 'path "chart-pki/revoke" { capabilities = ["update"] }' | bao policy write chart - >/dev/null
bao write auth/kubernetes/role/chart bound_service_account_names=web bound_service_account_namespaces=$NS \
  policies=chart token_period=1h >/dev/null

# --- the operator with the chart's identity only --------------------------------------------------
KUBECONFIG=$SA_KUBECONFIG "$BUILD_DIR/vaultkeeper-operator" --namespace $REL_NS --vault-addr "$VAULT_ADDR" \
  --metrics-addr "127.0.0.1:$METRICS_PORT" --identity chart-op >"$OP_LOG" 2>&1 &
OP_PID=$!
eventually 60 curl -sf "127.0.0.1:$METRICS_PORT/readyz" >/dev/null && ok "the operator is ready with the chart's RBAC" || bad "the operator never became ready: $(tail -n 5 "$OP_LOG")"

kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: api, image: registry.example/api:1}]
      tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]
---
apiVersion: vaultkeeper.dev/v1alpha1
kind: VaultSecret
metadata: {name: config, namespace: $NS}
spec:
  auth: {role: chart, serviceAccountName: web}
  source: {engine: kv-v2, mount: secret, path: chart/config}
  refreshInterval: 10s
  destination: {name: config}
  restartTargets: [{kind: Deployment, name: api}]
---
apiVersion: vaultkeeper.dev/v1alpha1
kind: DynamicCredential
metadata: {name: db, namespace: $NS}
spec:
  auth: {role: chart, serviceAccountName: web}
  source: {mount: chart-db, role: app}
  destination: {name: db}
---
apiVersion: vaultkeeper.dev/v1alpha1
kind: CertificateRequest
metadata: {name: web, namespace: $NS}
spec:
  auth: {role: chart, serviceAccountName: web}
  mount: chart-pki
  role: web
  commonName: web.example.com
  ttl: 24h
  destination: {name: web-tls}
EOF
ready() { kubectl -n $NS get "$1" "$2" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null; }
for r in vsec/config dcred/db vcert/web; do
  eventually 60 bash -c "[ \"\$(kubectl -n $NS get ${r%/*} ${r#*/} -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}')\" = True ]" \
    && ok "$r Ready with the chart's RBAC" || bad "$r not Ready: $(kubectl -n $NS get ${r%/*} ${r#*/} -o jsonpath='{.status.conditions}')"
done
[ "$(kubectl -n $NS get secret config -o jsonpath='{.data.password}' | base64 -d)" = chart-one ] && ok "the VaultSecret wrote its Secret" || bad "Secret config"
kubectl -n $NS get secret db -o jsonpath='{.data.username}' | base64 -d | contains '^chart-app-' && ok "the DynamicCredential wrote a database user" || bad "Secret db"
kubectl -n $NS get secret web-tls -o jsonpath='{.data.tls\.crt}' | base64 -d | openssl x509 -noout -subject | contains 'web.example.com' \
  && ok "the CertificateRequest wrote its certificate" || bad "Secret web-tls"
stamp() { kubectl -n $NS get deploy api -o jsonpath='{.spec.template.metadata.annotations.vaultkeeper\.dev/restarted-for}'; }
bao kv put secret/chart/config password=chart-two >/dev/null
eventually 45 bash -c "[ -n \"\$(kubectl -n $NS get deploy api -o jsonpath='{.spec.template.metadata.annotations.vaultkeeper\.dev/restarted-for}')\" ]" \
  && ok "a KV change restarted the Deployment (stamp $(stamp))" || bad "the restart target was not restarted"
kubectl -n $NS get events.events.k8s.io -o jsonpath='{range .items[*]}{.reportingController}{"\n"}{end}' | contains -x vaultkeeper-operator \
  && ok "Events recorded by the operator" || bad "no Event from the operator"
[ "$(kubectl -n $REL_NS get lease vaultkeeper-operator -o jsonpath='{.spec.holderIdentity}')" = chart-op ] && ok "the leader Lease is in the release namespace" || bad "no leader Lease in $REL_NS"
kubectl -n $REL_NS get secret -l vaultkeeper.dev/lease-token=true -o name | contains . && ok "the lease token is stored in the release namespace" || bad "no stored lease token in $REL_NS"
contains -i 'forbidden' "$OP_LOG" && bad "forbidden in the operator's log: $(grep -i forbidden "$OP_LOG" | head -2)" || ok "nothing forbidden in the operator's log"

# --- least privilege --------------------------------------------------------------------------------
for denied in "delete secrets -n $NS" "get configmaps -n $NS" "create pods -n $NS" "delete deployments -n $NS" \
  "create clusterrolebindings" "patch customresourcedefinitions" "list nodes" "create serviceaccounts -n $NS" \
  "delete dynamiccredentials -n $NS" "update leases -n $NS" "get serviceaccounts --subresource=token -n $NS"; do
  answer=$(as_operator auth can-i $denied 2>/dev/null || true)
  [ "$answer" = no ] && ok "the operator may not $denied" || bad "the operator may $denied ($answer)"
done
for allowed in "patch secrets -n $NS" "create serviceaccounts --subresource=token -n $NS" "patch deployments -n $NS" \
  "patch dynamiccredentials --subresource=status -n $NS" "update leases -n $REL_NS"; do
  [ "$(as_operator auth can-i $allowed 2>/dev/null || true)" = yes ] && ok "the operator may $allowed" || bad "the operator may not $allowed"
done

kubectl -n $NS delete dcred,vcert --all --wait=true --timeout=30s >/dev/null && ok "deleting the resources with the chart's RBAC (finalizers revoke)" || bad "resources not deleted"
echo "chart e2e: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
