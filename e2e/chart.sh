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
WH_PID=
trap 'kubectl -n $NS delete dcred,vcert --all --wait=true --timeout=30s >/dev/null 2>&1; kubectl delete mutatingwebhookconfiguration vk-vaultkeeper-webhook --ignore-not-found >/dev/null 2>&1; kill $OP_PID $WH_PID 2>/dev/null || true' EXIT

# --- the chart renders, and says what is missing -------------------------------------------------
server=$(kubectl version -o json | python3 -c 'import json,sys; v=json.load(sys.stdin)["serverVersion"]; print(v["gitVersion"])')
# Helm 3 and Helm 4 both lint it strictly and render the same objects.
for h in helm helm4; do
  "$h" lint --strict charts/vaultkeeper --set vault.address="$VAULT_ADDR" >"$WORK/lint-$h.txt" 2>&1 \
    && ok "$h ($("$h" version --short)) lint --strict" || bad "$h lint: $(cat "$WORK/lint-$h.txt")"
  "$h" template $RELEASE charts/vaultkeeper -n $REL_NS --kube-version "$server" --set vault.address="$VAULT_ADDR" \
    | grep -v '^# Source: ' >"$WORK/chart-$h.yaml" || bad "$h template failed"
done
python3 -c '
import sys, yaml
a, b = ([d for d in yaml.safe_load_all(open(f)) if d] for f in sys.argv[1:])
sys.exit(0 if a == b else 1)' "$WORK/chart-helm.yaml" "$WORK/chart-helm4.yaml" \
  && ok "helm 3 and helm 4 render the same objects ($(grep -c '^kind:' "$WORK/chart-helm.yaml"))" || bad "helm 3 and helm 4 render differently: $(diff "$WORK/chart-helm.yaml" "$WORK/chart-helm4.yaml" | head -5)"
render() { "$HELM" template $RELEASE charts/vaultkeeper -n $REL_NS --kube-version "$server" "$@"; }
render --set vault.address="$VAULT_ADDR" >"$WORK/chart.yaml" && ok "helm template with the defaults and a Vault address" || bad "helm template failed"
out=$(render 2>&1 || true)
contains -F "vault.address is required" <<<"$out" && ok "without a Vault address the chart says which value to set" || bad "no Vault address: $out"
out=$(render --set vault.address=vault:8200 2>&1 || true)
contains -F "/vault/address" <<<"$out" && ok "an address without a scheme is refused by values.schema.json" || bad "schema: $out"
# A raft cluster's nodes (helm's --set needs the commas escaped; a values file does not).
render --set 'vault.address=http://10.0.0.1:8200\,http://10.0.0.2:8200' | contains -F -- '--vault-addr=http://10.0.0.1:8200,http://10.0.0.2:8200' \
  && ok "the addresses of a cluster's nodes, separated by commas, reach the flags" || bad "a list of addresses was refused or changed"
out=$(render --set 'vault.address=http://10.0.0.1:8200\,vault:8200' 2>&1 || true)
contains -F "/vault/address" <<<"$out" && ok "a node's address without a scheme is refused by values.schema.json" || bad "schema, list: $out"
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
render --set vault.address="$VAULT_ADDR" --set crds.enabled=false | contains 'kind: CustomResourceDefinition' \
  && bad "crds.enabled=false still renders CRDs" || ok "crds.enabled=false renders no CRD"
render --set vault.address="$VAULT_ADDR" --set serviceMonitor.enabled=true --set networkPolicy.enabled=true \
  --set networkPolicy.metricsFrom.matchLabels.monitoring=on >"$WORK/chart-mon.yaml"
[ "$(grep -c '^kind: ServiceMonitor' "$WORK/chart-mon.yaml")" = 2 ] && [ "$(grep -c '^kind: NetworkPolicy' "$WORK/chart-mon.yaml")" = 2 ] \
  && ! contains -e 'kind: ServiceMonitor' -e 'kind: NetworkPolicy' "$WORK/chart.yaml" \
  && ok "serviceMonitor.enabled and networkPolicy.enabled render one of each per component (and none by default)" || bad "monitoring objects wrong"
"$HELM" template $RELEASE charts/vaultkeeper -n default --kube-version "$server" --set vault.address="$VAULT_ADDR" \
  --set networkPolicy.enabled=true --set networkPolicy.metricsFrom.matchLabels.monitoring=on | python3 -c '
import sys, yaml
print(yaml.safe_dump_all([d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] == "NetworkPolicy"]))' \
  | kubectl apply --dry-run=server -f - >/dev/null && ok "the NetworkPolicies pass the API server's validation" || bad "NetworkPolicies invalid"
for h in helm helm4; do
  "$h" template vkns charts/vaultkeeper -n chart-ns-system --kube-version "$server" --set vault.address="$VAULT_ADDR" \
    --set 'operator.watchNamespaces={a,b}' | grep -v '^# Source: ' >"$WORK/chart-ns-$h.yaml"
done
python3 -c '
import sys, yaml
a, b = ([d for d in yaml.safe_load_all(open(f)) if d] for f in sys.argv[1:])
sys.exit(0 if a == b else 1)' "$WORK/chart-ns-helm.yaml" "$WORK/chart-ns-helm4.yaml" && ok "helm 3 and helm 4 render the namespaced mode alike" || bad "the namespaced mode renders differently"
contains -e 'PRIVATE KEY' -e 'BEGIN CERTIFICATE' -e 'caBundle' "$WORK/chart.yaml" \
  && bad "the rendered chart holds secret material or a caBundle" || ok "the rendered chart holds no key, certificate or caBundle (the operator writes them)"
out=$(render --set vault.address="$VAULT_ADDR" --set webhook.tls.mode=secret 2>&1 || true)
contains -F "webhook.tls.caBundle is required" <<<"$out" && ok "webhook.tls.mode=secret without a caBundle says which value to set" || bad "mode secret: $out"
render --set vault.address="$VAULT_ADDR" --set webhook.tls.mode=certManager >"$WORK/chart-cm.yaml"
contains -x 'kind: Certificate' "$WORK/chart-cm.yaml" && contains -F "cert-manager.io/inject-ca-from: $REL_NS/$RELEASE-vaultkeeper-webhook" "$WORK/chart-cm.yaml" \
  && ! contains -e '--webhook-configuration' "$WORK/chart-cm.yaml" && ok "webhook.tls.mode=certManager renders a Certificate and the CA injector annotation instead" || bad "certManager mode renders wrong"

# --- the chart's CRDs and RBAC in the cluster -----------------------------------------------------
kubectl create namespace $REL_NS >/dev/null
kubectl create namespace $NS >/dev/null
kubectl -n $NS create serviceaccount web >/dev/null
kinds CustomResourceDefinition | kubectl apply -f - >/dev/null && ok "the chart's CRDs apply" || bad "the chart's CRDs do not apply"
kinds ServiceAccount,ClusterRole,ClusterRoleBinding,Role,RoleBinding | kubectl apply -f - >/dev/null \
  && ok "the chart's ServiceAccount and RBAC apply" || bad "RBAC does not apply"
# The webhook's registration as the chart renders it, except that it is sent no Pod (only
# namespaces with a label nobody has): the API server cannot reach a Service without a node.
WH=$RELEASE-vaultkeeper-webhook
render --set vault.address="$VAULT_ADDR" --set webhook.failurePolicy=Ignore \
  --set 'webhook.namespaceSelector.matchLabels.vaultkeeper\.dev/chart-e2e=never' >"$WORK/chart-wh.yaml"
python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "MutatingWebhookConfiguration"]
print(yaml.safe_dump_all(docs))' "$WORK/chart-wh.yaml" >"$WORK/mwc.yaml"
kubectl apply -f "$WORK/mwc.yaml" >/dev/null && ok "the chart's MutatingWebhookConfiguration applies" || bad "the configuration does not apply"
# The operator's flags for the webhook's certificate, as the chart sets them.
WH_ARGS=$(python3 -c '
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"):
        print(" ".join(a for a in d["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--webhook-")))' "$WORK/chart.yaml")
[ "$(wc -w <<<"$WH_ARGS")" = 4 ] && ok "the chart gives the operator the webhook certificate flags ($WH_ARGS)" || bad "webhook flags: $WH_ARGS"

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
  --metrics-addr "127.0.0.1:$METRICS_PORT" --identity chart-op $WH_ARGS >"$OP_LOG" 2>&1 &
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

# --- the webhook's serving certificate, from the operator --------------------------------------------
secret_field() { kubectl -n $REL_NS get secret "$1" -o jsonpath="{.data.${2//./\\.}}" 2>/dev/null | base64 -d; }
bundle() { kubectl get mutatingwebhookconfiguration $WH -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | base64 -d; }
serial() { secret_field $WH-tls tls.crt | openssl x509 -noout -serial 2>/dev/null; }
eventually 20 bash -c "[ -n \"\$(kubectl get mutatingwebhookconfiguration $WH -o jsonpath='{.webhooks[0].clientConfig.caBundle}')\" ]" \
  && ok "the operator wrote the configuration's caBundle" || bad "no caBundle: $(grep -i webhook "$OP_LOG" | tail -3)"
eventually 20 bash -c "kubectl -n $REL_NS get secret $WH-tls -o jsonpath='{.type}' | grep -qx kubernetes.io/tls" \
  && ok "the operator wrote the serving certificate Secret $WH-tls" || bad "no serving Secret"
[ "$(bundle)" = "$(secret_field $WH-ca ca.crt)" ] && ok "the caBundle is the operator's CA" || bad "the caBundle is not the CA"
secret_field $WH-tls tls.crt >"$WORK/wh.crt"
bundle >"$WORK/bundle.pem"
openssl verify -CAfile "$WORK/bundle.pem" "$WORK/wh.crt" >/dev/null 2>&1 && ok "the serving certificate verifies against the caBundle" || bad "the serving certificate does not verify"
openssl x509 -in "$WORK/wh.crt" -noout -ext subjectAltName | contains -F "DNS:$WH.$REL_NS.svc" && ok "it names $WH.$REL_NS.svc" || bad "SANs: $(openssl x509 -in "$WORK/wh.crt" -noout -ext subjectAltName)"
kubectl get mutatingwebhookconfiguration $WH --show-managed-fields -o json | python3 -c '
import json, sys
fields = json.load(sys.stdin)["metadata"]["managedFields"]
owners = [f["manager"] for f in fields if "caBundle" in json.dumps(f.get("fieldsV1", {}))]
sys.exit(0 if owners == ["vaultkeeper-operator-webhook-ca"] else 1)' \
  && ok "caBundle is owned by the operator's field manager alone" || bad "caBundle owners wrong"
# GitOps and Helm re-applying the chart's manifest leave the caBundle alone: no server-side diff
# (as Argo CD's server-side diff and Helm 4 see it), and a client-side re-apply keeps it.
kubectl diff --server-side --field-manager=argocd-controller -f "$WORK/mwc.yaml" >"$WORK/mwc.diff" 2>&1 \
  && ok "a server-side diff of the chart's configuration shows no drift" || bad "drift: $(head -20 "$WORK/mwc.diff")"
kubectl apply -f "$WORK/mwc.yaml" >/dev/null
[ "$(bundle)" = "$(secret_field $WH-ca ca.crt)" ] && ok "a client-side re-apply of the configuration keeps the caBundle" || bad "re-apply dropped the caBundle"
[ "$(kubectl auth can-i get secrets -n $REL_NS --as=system:serviceaccount:$REL_NS:$WH)" = no ] \
  && ok "the webhook's ServiceAccount cannot read Secrets" || bad "the webhook's ServiceAccount can read Secrets"

# The webhook started before its certificate exists waits for it (live, not crash-looping), then
# serves it; the API server's view is simulated by trusting only the caBundle and dialling the
# Service's DNS name.
WH_DIR=$WORK/webhook-tls; mkdir -p "$WH_DIR"
WH_PORT=$(free_port); WH_METRICS=$(free_port)
"$BUILD_DIR/vaultkeeper-webhook" --addr "127.0.0.1:$WH_PORT" --metrics-addr "127.0.0.1:$WH_METRICS" \
  --cert-file "$WH_DIR/tls.crt" --key-file "$WH_DIR/tls.key" --cert-reload-interval 1s \
  --agent-image vaultkeeper-agent:test --vault-addr "$VAULT_ADDR" >"$VK_STACK_DIR/logs/webhook-chart.log" 2>&1 &
WH_PID=$!
eventually 20 curl -sf "127.0.0.1:$WH_METRICS/healthz" >/dev/null && kill -0 $WH_PID 2>/dev/null \
  && contains -F 'waiting for the serving certificate' "$VK_STACK_DIR/logs/webhook-chart.log" \
  && ok "without its certificate the webhook is live and waits" || bad "the webhook did not wait: $(tail -3 "$VK_STACK_DIR/logs/webhook-chart.log")"
mount_secret() { secret_field $WH-tls tls.key >"$WH_DIR/tls.key.new" && secret_field $WH-tls tls.crt >"$WH_DIR/tls.crt.new" \
  && mv "$WH_DIR/tls.key.new" "$WH_DIR/tls.key" && mv "$WH_DIR/tls.crt.new" "$WH_DIR/tls.crt"; }
as_api_server() { bundle >"$WORK/trust.pem"; curl -sf --cacert "$WORK/trust.pem" --resolve "$WH.$REL_NS.svc:$WH_PORT:127.0.0.1" "https://$WH.$REL_NS.svc:$WH_PORT/healthz"; }
mount_secret
eventually 20 as_api_server >/dev/null && ok "the webhook serves the operator's certificate, trusted through the caBundle" || bad "TLS with the caBundle fails"
# A lost serving certificate is issued again at once (the operator watches it), by the same CA.
old_serial=$(serial); old_ca=$(secret_field $WH-ca ca.crt)
kubectl -n $REL_NS delete secret $WH-tls >/dev/null
eventually 20 bash -c "[ -n \"\$(kubectl -n $REL_NS get secret $WH-tls -o name 2>/dev/null)\" ]" && [ "$(serial)" != "$old_serial" ] \
  && [ "$(secret_field $WH-ca ca.crt)" = "$old_ca" ] && ok "a deleted serving certificate is issued again under the same CA" || bad "not reissued"
mount_secret
eventually 20 contains -F 'reloaded the serving certificate' "$VK_STACK_DIR/logs/webhook-chart.log" && as_api_server >/dev/null \
  && ok "the webhook reloaded the new certificate without a restart" || bad "no reload"
# A damaged CA is replaced; the old one stays in the bundle while valid, and the serving
# certificate moves to the new CA only once the bundle trusts it.
kubectl -n $REL_NS patch secret $WH-ca --type merge -p '{"data":{"ca.key":"Z2FyYmFnZQ=="}}' >/dev/null
eventually 20 bash -c "[ \"\$(kubectl get mutatingwebhookconfiguration $WH -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | base64 -d | grep -c 'BEGIN CERTIFICATE')\" = 2 ]" \
  && ok "a damaged CA is replaced and the bundle holds the new and the old CA" || bad "bundle after CA damage: $(bundle | grep -c BEGIN)"
[ "$(secret_field $WH-ca previous-ca.crt)" = "$old_ca" ] && ok "the replaced CA is kept as previous-ca.crt" || bad "no previous CA"
eventually 20 bash -c "kubectl -n $REL_NS get secret $WH-tls -o jsonpath='{.data.tls\.crt}' | base64 -d >'$WORK/wh2.crt' && kubectl -n $REL_NS get secret $WH-ca -o jsonpath='{.data.ca\.crt}' | base64 -d >'$WORK/ca2.crt' && openssl verify -CAfile '$WORK/ca2.crt' '$WORK/wh2.crt'" >/dev/null \
  && ok "the serving certificate was reissued by the new CA" || bad "the serving certificate is not from the new CA"
mount_secret
eventually 20 as_api_server >/dev/null && ok "TLS still verifies through the caBundle after the CA rotation" || bad "TLS after CA rotation"
contains -e 'BEGIN' -e 'PRIVATE' "$OP_LOG" "$VK_STACK_DIR/logs/webhook-chart.log" && bad "key or certificate material in a log" || ok "no certificate or key material in the operator's or the webhook's log"
kill $WH_PID 2>/dev/null; wait $WH_PID 2>/dev/null || true

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
kubectl delete mutatingwebhookconfiguration $WH >/dev/null
eventually 30 bash -c "[ -z \"\$(kubectl -n $REL_NS get secret $WH-tls $WH-ca -o name --ignore-not-found)\" ]" \
  && ok "deleting the configuration (helm uninstall) removes the webhook's two Secrets" || bad "the webhook's Secrets outlived the configuration"
sleep 3
[ -z "$(kubectl -n $REL_NS get secret $WH-tls $WH-ca -o name --ignore-not-found)" ] \
  && ok "the running operator does not issue them again without the configuration" || bad "the operator re-created the webhook's Secrets"
# --- the namespaced install mode: Roles in the watched namespaces, nothing cluster-wide -------------
kill $OP_PID 2>/dev/null; wait $OP_PID 2>/dev/null || true; OP_PID=
NS_REL=chart-ns-system; NS_A=chart-ns-a; NS_B=chart-ns-b; NS_SA=vkns-vaultkeeper-operator
"$HELM" template vkns charts/vaultkeeper -n $NS_REL --kube-version "$server" --set vault.address="$VAULT_ADDR" \
  --set "operator.watchNamespaces={$NS_A,$NS_B}" --set webhook.enabled=false >"$WORK/chart-ns.yaml"
python3 -c '
import sys, yaml
kinds = [d["kind"] for d in yaml.safe_load_all(open(sys.argv[1])) if d]
sys.exit(1 if "ClusterRole" in kinds or "ClusterRoleBinding" in kinds or kinds.count("Role") != 3 else 0)' "$WORK/chart-ns.yaml" \
  && ok "the namespaced mode renders Roles in the two watched namespaces and its own, and no ClusterRole" || bad "namespaced RBAC: $(grep '^kind:' "$WORK/chart-ns.yaml" | sort | uniq -c | tr '\n' ' ')"
for n in $NS_REL $NS_A $NS_B; do kubectl create namespace $n >/dev/null; done
for n in $NS_A $NS_B; do kubectl -n $n create serviceaccount web >/dev/null; done
python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
print(yaml.safe_dump_all(docs))' "$WORK/chart-ns.yaml" | kubectl apply -f - >/dev/null && ok "the namespaced RBAC applies" || bad "namespaced RBAC does not apply"
NS_ARGS=$(python3 -c '
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "Deployment":
        print(" ".join(a for a in d["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--watch-namespaces")))' "$WORK/chart-ns.yaml")
[ "$NS_ARGS" = "--watch-namespaces=$NS_A,$NS_B" ] && ok "the chart gives the operator $NS_ARGS" || bad "watch flag: $NS_ARGS"
ns_token=$(kubectl -n $NS_REL create token $NS_SA --duration=1h)
NS_KUBECONFIG=$WORK/operator-ns.kubeconfig
cp "$SA_KUBECONFIG" "$NS_KUBECONFIG"
KUBECONFIG=$NS_KUBECONFIG kubectl config set-credentials operator --token="$ns_token" >/dev/null
as_ns_operator() { KUBECONFIG=$NS_KUBECONFIG kubectl "$@"; }
bao write auth/kubernetes/role/chart bound_service_account_names=web bound_service_account_namespaces="$NS,$NS_A,$NS_B" \
  policies=chart token_period=1h >/dev/null
NS_LOG=$VK_STACK_DIR/logs/operator-chart-ns.log
NS_METRICS=$(free_port)
KUBECONFIG=$NS_KUBECONFIG "$BUILD_DIR/vaultkeeper-operator" --namespace $NS_REL --vault-addr "$VAULT_ADDR" \
  --metrics-addr "127.0.0.1:$NS_METRICS" --identity chart-ns-op $NS_ARGS >"$NS_LOG" 2>&1 &
OP_PID=$!
eventually 60 curl -sf "127.0.0.1:$NS_METRICS/readyz" >/dev/null && ok "the operator is ready with Roles only" || bad "the namespaced operator never became ready: $(tail -n 5 "$NS_LOG")"
for n in $NS_A $NS_B; do
  kubectl apply -f - >/dev/null <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: VaultSecret
metadata: {name: config, namespace: $n}
spec:
  auth: {role: chart, serviceAccountName: web}
  source: {engine: kv-v2, mount: secret, path: chart/config}
  refreshInterval: 10s
  destination: {name: config}
EOF
done
for n in $NS_A $NS_B; do
  eventually 60 bash -c "[ \"\$(kubectl -n $n get secret config -o jsonpath='{.data.password}' 2>/dev/null | base64 -d)\" = chart-two ]" \
    && ok "a VaultSecret in the watched namespace $n is synced" || bad "$n not synced: $(kubectl -n $n get vsec config -o jsonpath='{.status.conditions}')"
done
# A namespace it does not watch is not its business: a change there stays unsynced.
bao kv put secret/chart/config password=chart-three >/dev/null
eventually 30 bash -c "[ \"\$(kubectl -n $NS_A get secret config -o jsonpath='{.data.password}' | base64 -d)\" = chart-three ]" \
  && ok "a KV change reaches the watched namespace" || bad "the change did not reach $NS_A"
[ "$(kubectl -n $NS get secret config -o jsonpath='{.data.password}' | base64 -d)" = chart-two ] \
  && ok "the VaultSecret of the unwatched namespace $NS is left alone" || bad "the namespaced operator synced $NS"
for denied in "get secrets -n $NS" "list secrets --all-namespaces" "list vaultsecrets --all-namespaces" "get vaultsecrets -n $NS" \
  "create serviceaccounts --subresource=token -n $NS" "patch deployments -n $NS"; do
  answer=$(as_ns_operator auth can-i $denied 2>/dev/null || true)
  [ "$answer" = no ] && ok "the namespaced operator may not $denied" || bad "the namespaced operator may $denied ($answer)"
done
[ "$(as_ns_operator auth can-i get secrets -n $NS_A 2>/dev/null || true)" = yes ] && ok "the namespaced operator may read Secrets where it watches" || bad "no Secret access in $NS_A"
contains -i 'forbidden' "$NS_LOG" && bad "forbidden in the namespaced operator's log: $(grep -i forbidden "$NS_LOG" | head -2)" || ok "nothing forbidden in the namespaced operator's log"
kill $OP_PID 2>/dev/null; wait $OP_PID 2>/dev/null || true; OP_PID=

echo "chart e2e: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
