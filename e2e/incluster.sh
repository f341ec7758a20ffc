#!/usr/bin/env bash
# The installed product, run inside `stack.py run --node`: the project's images imported into the
# real node's containerd, `helm install` of the chart, and then, with the operator, the webhook and
# the agent all running in Pods from those images and reading OpenBao through a Service: a
# VaultSecret (whose restart target rolls real Pods), a DynamicCredential and a CertificateRequest
# reach Ready; the API server calls the webhook through its Service, and a Deployment annotated as
# for the Vault Agent Injector starts with the agent as a native sidecar, its app container only
# after the first render; `helm upgrade` with a changed CRD and `helm uninstall` keep the users'
# resources and Secrets. Prints the figures: the components' memory in their Pods and the start
# time of a Pod with and without injection.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$VK_BIN:$PATH
. e2e/lib.sh
: "${VK_NODE_NAME:?run inside stack.py run --node}"
REL_NS=vk-system
NS=incluster
RELEASE=vkc  # not chart.sh's release name: its cluster-scoped RBAC is still there
WORK=$VK_STACK_DIR/incluster-e2e
rm -rf "$WORK"; mkdir -p "$WORK"
VERSION=$(sed -n 's/^appVersion: "\(.*\)"/\1/p' charts/vaultkeeper/Chart.yaml)
IMAGES=${VK_IMAGES_DIR:-target/images}
read -r -a CTR <<<"$VK_CTR"
dump() {
  echo "--- state at failure"
  kubectl get pods -A -o wide 2>&1 | tail -n 30
  for p in $(kubectl -n $REL_NS get pods -o name 2>/dev/null); do
    echo "--- $p"; kubectl -n $REL_NS logs "$p" --all-containers --tail=15 2>&1
  done
  kubectl -n $NS get events --sort-by=.lastTimestamp 2>&1 | tail -n 15
}
trap '[ "$fail" -eq 0 ] || dump' EXIT

# --- images, without a registry ---------------------------------------------------------------------
for c in operator webhook agent; do
  [ -f "$IMAGES/vaultkeeper-$c.tar" ] || { bad "no $IMAGES/vaultkeeper-$c.tar: run make images"; exit 1; }
  "${CTR[@]}" images import "$IMAGES/vaultkeeper-$c.tar" >/dev/null
done
"${CTR[@]}" images ls -q | contains -x "docker.io/library/vaultkeeper-agent:$VERSION" \
  && ok "the three images are imported into the node's containerd" || bad "images: $("${CTR[@]}" images ls -q)"

# OpenBao as a Service of the cluster (the --node stack creates vault.vault.svc), by its cluster DNS
# name as users write it: the static binaries resolve it with their own resolver.
VAULT_SVC=${VK_BAO_SERVICE_ADDR:?needs the stack with --node}

# --- Vault: what the users' namespace may read ----------------------------------------------------------
bao kv put secret/incluster/config password=first >/dev/null
bao secrets list -format=json | contains '"incluster-db/"' || bao secrets enable -path=incluster-db database >/dev/null
bao write incluster-db/config/pg plugin_name=postgresql-database-plugin allowed_roles='*' \
  connection_url="postgresql://{{username}}:{{password}}@$VK_PG_HOST:$VK_PG_PORT/postgres?sslmode=disable" \
  username=postgres password=unused username_template='incluster-{{random 12}}' >/dev/null
bao write incluster-db/roles/app db_name=pg default_ttl=1h max_ttl=2h \
  creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';" >/dev/null
bao secrets list -format=json | contains '"incluster-pki/"' || bao secrets enable -path=incluster-pki pki >/dev/null
bao secrets tune -max-lease-ttl=8760h incluster-pki >/dev/null
bao write -field=certificate incluster-pki/root/generate/internal common_name="incluster root" ttl=8760h >/dev/null
bao write incluster-pki/roles/web allowed_domains=example.com allow_subdomains=true max_ttl=720h >/dev/null
printf '%s\n' 'path "secret/data/incluster/*" { capabilities = ["read"] }' 'path "secret/metadata/incluster/*" { capabilities = ["read"] }' \
  'path "incluster-db/creds/app" { capabilities = ["read"] }' 'path "sys/leases/revoke" { capabilities = ["update"] }' \
  'path "incluster-pki/issue/web" { capabilities = ["update"] }' 'path "incluster-pki/revoke" { capabilities = ["update"] }' \
  | bao policy write incluster - >/dev/null
bao write auth/kubernetes/role/incluster bound_service_account_names=app bound_service_account_namespaces=$NS \
  policies=incluster token_period=1h >/dev/null

# --- helm install ---------------------------------------------------------------------------------------
taint_key=${VK_NODE_TAINT%%=*}
cat >"$WORK/values.yaml" <<EOF
vault: {address: "$VAULT_SVC"}
operator:
  nodeSelector: {kubernetes.io/hostname: $VK_NODE_NAME}
  tolerations: [{key: $taint_key, operator: Exists}]
webhook:
  nodeSelector: {kubernetes.io/hostname: $VK_NODE_NAME}
  tolerations: [{key: $taint_key, operator: Exists}]
  # Only this script's namespace is sent to the webhook (the other scripts' Pods never are).
  namespaceSelector: {matchLabels: {vaultkeeper.dev/incluster-e2e: inject}}
# Short, so the Pod below whose agent cannot render shows the timeout within the run.
agent: {startupTimeoutSeconds: 8}
EOF
# CRDs applied earlier with kubectl (as the other scripts of the run do, and as users who move to
# the chart have them) are adopted by the release the way Helm documents it.
for crd in $(kubectl get crd -o name | grep '\.vaultkeeper\.dev$' || true); do
  kubectl annotate --overwrite "$crd" meta.helm.sh/release-name=$RELEASE meta.helm.sh/release-namespace=$REL_NS >/dev/null
  kubectl label --overwrite "$crd" app.kubernetes.io/managed-by=Helm >/dev/null
done
t0=$(date +%s.%N)
helm install $RELEASE charts/vaultkeeper -n $REL_NS --create-namespace -f "$WORK/values.yaml" --wait --timeout 180s >"$WORK/install.log" 2>&1 \
  && ok "helm install: every Deployment available in $(seconds_between "$t0" "$(date +%s.%N)") s" || bad "helm install: $(tail -5 "$WORK/install.log")"
for d in operator webhook; do
  [ "$(kubectl -n $REL_NS get deploy $RELEASE-vaultkeeper-$d -o jsonpath='{.status.readyReplicas}')" = 2 ] \
    && ok "the $d runs as 2 ready Pods from its image" || bad "$d replicas: $(kubectl -n $REL_NS get deploy $RELEASE-vaultkeeper-$d -o wide)"
done
op_pod=$(kubectl -n $REL_NS get lease vaultkeeper-operator -o jsonpath='{.spec.holderIdentity}')
kubectl -n $REL_NS get pod "$op_pod" -o name >/dev/null 2>&1 && ok "the leader is the Pod $op_pod" || bad "no leader Pod: '$op_pod'"
# The Lease names the leader before it logs its first lines, so wait for two of them.
json_lines() {
  kubectl -n $REL_NS logs "$op_pod" | head -n 5 | python3 -c '
import json, sys
lines = [l for l in sys.stdin if l.strip()]
sys.exit(0 if len(lines) >= 2 and all(json.loads(l).get("fields") for l in lines) else 1)'
}
eventually 20 json_lines \
  && ok "kubectl logs of the operator is JSON lines" || bad "operator log is not JSON: $(kubectl -n $REL_NS logs "$op_pod" | head -n 2)"
kubectl -n $REL_NS logs deploy/$RELEASE-vaultkeeper-webhook | contains $'\e\[' && bad "colour codes in the webhook's log" || ok "no colour codes in kubectl logs of the webhook"

# --- the users' resources, reconciled by the operator in its Pod ----------------------------------------
kubectl create namespace $NS >/dev/null
kubectl label namespace $NS vaultkeeper.dev/incluster-e2e=inject >/dev/null
kubectl -n $NS create serviceaccount app >/dev/null
pod_spec() { # pod_spec NAME: the real node, the busybox image, a command printing what it reads
  cat <<EOF
      nodeSelector: {kubernetes.io/hostname: $VK_NODE_NAME}
      tolerations: [{key: $taint_key, operator: Exists}]
      serviceAccountName: app
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: $VK_BUSYBOX_IMAGE
        imagePullPolicy: Never
        command: [sh, -c, 'echo "started \$(date +%s)"; for f in /vault/secrets/*; do [ -f "\$f" ] && echo "\$f: \$(cat "\$f")"; done; exec sleep 3600']
EOF
}
kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: $NS}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
$(pod_spec)
---
apiVersion: vaultkeeper.dev/v1alpha1
kind: VaultSecret
metadata: {name: config, namespace: $NS}
spec:
  auth: {role: incluster, serviceAccountName: app}
  source: {engine: kv-v2, mount: secret, path: incluster/config}
  refreshInterval: 10s
  destination: {name: config}
  restartTargets: [{kind: Deployment, name: web}]
---
apiVersion: vaultkeeper.dev/v1alpha1
kind: DynamicCredential
metadata: {name: db, namespace: $NS}
spec:
  auth: {role: incluster, serviceAccountName: app}
  source: {mount: incluster-db, role: app}
  destination: {name: db}
---
apiVersion: vaultkeeper.dev/v1alpha1
kind: CertificateRequest
metadata: {name: web, namespace: $NS}
spec:
  auth: {role: incluster, serviceAccountName: app}
  mount: incluster-pki
  role: web
  commonName: web.example.com
  ttl: 24h
  destination: {name: web-tls}
EOF
for r in vsec/config dcred/db vcert/web; do
  eventually 60 bash -c "[ \"\$(kubectl -n $NS get ${r%/*} ${r#*/} -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}')\" = True ]" \
    && ok "$r Ready, reconciled by the operator in its Pod" || bad "$r not Ready: $(kubectl -n $NS get ${r%/*} ${r#*/} -o jsonpath='{.status.conditions}')"
done
[ "$(kubectl -n $NS get secret config -o jsonpath='{.data.password}' | base64 -d)" = first ] && ok "the VaultSecret wrote its Secret" || bad "Secret config"
user=$(kubectl -n $NS get secret db -o jsonpath='{.data.username}' | base64 -d)
[ "$(psql_admin "select count(*) from pg_roles where rolname='$user'")" = 1 ] && ok "the DynamicCredential's database user exists in PostgreSQL" || bad "no role '$user'"
kubectl -n $NS get secret web-tls -o jsonpath='{.data.tls\.crt}' | base64 -d | openssl x509 -noout -subject | contains 'web.example.com' \
  && ok "the CertificateRequest wrote its certificate" || bad "Secret web-tls"

# A KV change rolls the restart target's real Pods.
kubectl -n $NS rollout status deploy/web --timeout=60s >/dev/null
before=$(kubectl -n $NS get pods -l app=web -o jsonpath='{.items[*].metadata.name}')
bao kv put secret/incluster/config password=second >/dev/null
eventually 60 bash -c "[ -n \"\$(kubectl -n $NS get deploy web -o jsonpath='{.spec.template.metadata.annotations.vaultkeeper\.dev/restarted-for}')\" ]" \
  && ok "a KV change stamped the restart target" || bad "web was not restarted"
kubectl -n $NS rollout status deploy/web --timeout=60s >/dev/null
# Done when the old Pods are gone and two others run.
rolled() {
  after=$(kubectl -n $NS get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}')
  [ "$(grep -c ' Running$' <<<"$after")" = 2 ] && ! contains -w -F -f <(tr ' ' '\n' <<<"$before") <<<"$after"
}
eventually 60 rolled && ok "the restart rolled real Pods ($before -> $(awk '{print $1}' <<<"$after" | tr '\n' ' '))" || bad "pods before: $before, after: ${after:-}"

# --- injection: the API server calls the webhook through its Service ------------------------------------
inject_deploy() { # inject_deploy NAME ANNOTATED(true|false)
  kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: $1}}
  template:
    metadata:
      labels: {app: $1}
      annotations:
        vault.hashicorp.com/agent-inject: "$2"
        vault.hashicorp.com/role: incluster
        vault.hashicorp.com/agent-inject-secret-config.txt: secret/data/incluster/config
        vault.hashicorp.com/agent-inject-template-config.txt: |
          {{- with secret "secret/data/incluster/config" -}}
          password={{ .Data.data.password }}
          {{- end }}
    spec:
$(pod_spec)
EOF
}
t0=$(date +%s.%N)
inject_deploy milk true
kubectl -n $NS rollout status deploy/milk --timeout=90s >/dev/null && t_injected=$(seconds_between "$t0" "$(date +%s.%N)") \
  && ok "an annotated Deployment became available in $t_injected s" || bad "milk never became available: $(kubectl -n $NS describe pods -l app=milk | tail -15)"
milk=$(kubectl -n $NS get pods -l app=milk -o jsonpath='{.items[0].metadata.name}')
kubectl -n $NS get pod "$milk" -o json >"$WORK/milk.json"
python3 - "$WORK/milk.json" <<'PYEOF' && ok "the agent is a native sidecar (restartable init container, held by its postStart hook until the first render)" || bad "no native sidecar: $(python3 -c 'import json,sys; print([c["name"] for c in json.load(open(sys.argv[1]))["spec"].get("initContainers", [])])' "$WORK/milk.json")"
import json, sys
pod = json.load(open(sys.argv[1]))
sidecars = [c for c in pod["spec"].get("initContainers", []) if c.get("restartPolicy") == "Always" and c.get("lifecycle", {}).get("postStart")]
sys.exit(0 if len(sidecars) == 1 and sidecars[0]["image"].endswith("vaultkeeper-agent:" + pod["spec"]["initContainers"][0]["image"].rsplit(":", 1)[1]) else 1)
PYEOF
python3 - "$WORK/milk.json" <<'PYEOF' && ok "the app container started after the agent's first render" || bad "start order wrong"
import json, sys
from datetime import datetime
pod = json.load(open(sys.argv[1]))
t = lambda s: datetime.fromisoformat(s["state"]["running"]["startedAt"].replace("Z", "+00:00"))
agent = [s for s in pod["status"]["initContainerStatuses"] if s.get("started")]
app = [s for s in pod["status"]["containerStatuses"] if s["name"] == "app"]
sys.exit(0 if agent and app and t(app[0]) >= t(agent[0]) else 1)
PYEOF
kubectl -n $NS logs "$milk" -c app | contains -x '/vault/secrets/config.txt: password=second' \
  && ok "the app read /vault/secrets/config.txt rendered by the agent at its start" || bad "app log: $(kubectl -n $NS logs "$milk" -c app 2>&1 | head -3)"
t0=$(date +%s.%N)
inject_deploy plain false
kubectl -n $NS rollout status deploy/plain --timeout=60s >/dev/null && t_plain=$(seconds_between "$t0" "$(date +%s.%N)") \
  && ok "the same Deployment without injection became available in $t_plain s" || bad "plain never became available"
[ "$(kubectl -n $NS get pods -l app=plain -o jsonpath='{.items[0].spec.initContainers}')" = "" ] && ok "agent-inject: false injects nothing" || bad "plain was injected"

# Pods whose agent cannot log in (no such Vault role): the postStart hook gives up at the startup
# timeout, the kubelet restarts the agent and says why, the app never starts without its files, and
# a Pod deleted while its hook waits goes within that timeout.
norole_pod() { # norole_pod NAME
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $NS
  annotations:
    vault.hashicorp.com/agent-inject: "true"
    vault.hashicorp.com/role: no-such-role
    vault.hashicorp.com/agent-inject-secret-config.txt: secret/data/incluster/config
spec:
$(pod_spec | sed 's/^    //')
EOF
}
norole_pod norole; norole_pod norole-deleted
agent_running() { [ -n "$(kubectl -n $NS get pod "$1" -o jsonpath='{.status.initContainerStatuses[0].containerID}')" ]; }
eventually 30 agent_running norole-deleted || bad "the agent of norole-deleted never started"
t0=$(date +%s.%N)
kubectl -n $NS delete pod norole-deleted --timeout=60s >/dev/null && t_delete=$(seconds_between "$t0" "$(date +%s.%N)") \
  && ok "a Pod deleted while its agent's hook waits went in $t_delete s (the hook gives up after the 8 s startup timeout)" || bad "norole-deleted was not deleted in 60 s"
hook_failed() {
  kubectl -n $NS get events --field-selector involvedObject.name=norole,reason=FailedPostStartHook -o name | contains . \
    && kubectl -n $NS get pod norole -o jsonpath='{.status.initContainerStatuses[0].lastState.terminated.message}' | contains -F no-such-role
}
eventually 45 hook_failed && ok "an agent that cannot render: FailedPostStartHook after the startup timeout, and the agent's last state says why (its role)" \
  || bad "no FailedPostStartHook or reason: $(kubectl -n $NS get pod norole -o jsonpath='{.status.initContainerStatuses[0].lastState}' 2>&1 | head -c 600)"
[ "$(kubectl -n $NS get pod norole -o jsonpath='{.status.containerStatuses[0].state.running}')" = "" ] \
  && ok "its app container never started" || bad "the app started without its files"
kubectl -n $NS delete pod norole --wait=false >/dev/null

# --- figures --------------------------------------------------------------------------------------------
pid_of() { # pid_of NAMESPACE POD CONTAINER: the container's main process, as the host sees it
  local id
  id=$(kubectl -n "$1" get pod "$2" -o json | python3 -c '
import json, sys
pod = json.load(sys.stdin)
for s in pod["status"].get("containerStatuses", []) + pod["status"].get("initContainerStatuses", []):
    if s["name"] == sys.argv[1]:
        print(s["containerID"].split("//")[1])' "$3")
  "${CTR[@]}" tasks ls | awk -v id="$id" '$1 == id { print $2 }'
}
rss_of() { # rss_of NAMESPACE POD CONTAINER: the container's main process VmRSS (MiB), read on the host
  awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$(pid_of "$@")/status"
}
start_of() { # start_of NAMESPACE POD CONTAINER: when its main process started, in ms since boot
  python3 -c '
import os, sys
fields = open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")", 1)[1].split()
print(int(fields[19]) * 1000 // os.sysconf("SC_CLK_TCK"))' "$(pid_of "$@")"
}
wh_pod=$(kubectl -n $REL_NS get pods -l app.kubernetes.io/name=vaultkeeper-webhook -o jsonpath='{.items[0].metadata.name}')
agent_name=$(python3 -c 'import json,sys; print([c["name"] for c in json.load(open(sys.argv[1]))["spec"]["initContainers"] if c.get("restartPolicy") == "Always"][0])' "$WORK/milk.json")
echo "figures: RSS operator (leader) $(rss_of $REL_NS "$op_pod" operator) MiB, webhook $(rss_of $REL_NS "$wh_pod" webhook) MiB, agent sidecar $(rss_of $NS "$milk" "$agent_name") MiB"
echo "figures: Deployment available with injection $t_injected s, without $t_plain s"
# The agent's part of a pod start, from the processes' own start times (10 ms resolution): the app
# process starts this long after the agent's; the agent's log says how much of it was the render
# (login and reads, until Vault answered); the rest is the postStart hook returning and the kubelet
# starting the app container.
agent_ms=$(start_of $NS "$milk" "$agent_name"); app_ms=$(start_of $NS "$milk" app)
render_ms=$(kubectl -n $NS logs "$milk" -c "$agent_name" | sed -n 's/.*every secret rendered in \([0-9]*\) ms; ready.*/\1/p' | head -1)
echo "figures: app started $((app_ms - agent_ms)) ms after the agent: render ${render_ms:-?} ms, then $((app_ms - agent_ms - ${render_ms:-0})) ms until the app started"

# --- helm upgrade with a changed CRD, then helm uninstall: the users' resources stay -------------------
cp -r charts/vaultkeeper "$WORK/chart"
sed -i '0,/^  annotations:/s//  annotations:\n    vaultkeeper.dev\/e2e-upgrade: "1"/' "$WORK/chart/templates/crds/vaultsecrets.yaml"
helm upgrade $RELEASE "$WORK/chart" -n $REL_NS -f "$WORK/values.yaml" --wait --timeout 120s >"$WORK/upgrade.log" 2>&1 \
  && ok "helm upgrade with a changed CRD" || bad "helm upgrade: $(tail -5 "$WORK/upgrade.log")"
[ "$(kubectl get crd vaultsecrets.vaultkeeper.dev -o jsonpath='{.metadata.annotations.vaultkeeper\.dev/e2e-upgrade}')" = 1 ] \
  && ok "the upgrade changed the CRD (templates, not crds/, so Helm upgrades them)" || bad "the CRD was not upgraded"
[ -n "$(kubectl get mutatingwebhookconfiguration $RELEASE-vaultkeeper-webhook -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ] \
  && ok "the upgrade kept the operator's caBundle" || bad "the upgrade dropped the caBundle"
bao kv put secret/incluster/config password=third >/dev/null
eventually 30 bash -c "[ \"\$(kubectl -n $NS get secret config -o jsonpath='{.data.password}' | base64 -d)\" = third ]" \
  && ok "after the upgrade the operator syncs again" || bad "no sync after the upgrade"
helm uninstall $RELEASE -n $REL_NS --wait --timeout 60s >"$WORK/uninstall.log" 2>&1 && ok "helm uninstall" || bad "helm uninstall: $(cat "$WORK/uninstall.log")"
[ "$(kubectl get crd -o name | grep -c vaultkeeper.dev)" = 3 ] && ok "the CRDs stay after uninstall" || bad "CRDs gone"
[ "$(kubectl -n $NS get vsec,dcred,vcert -o name | wc -l)" = 3 ] && ok "the three resources stay after uninstall" || bad "resources gone: $(kubectl -n $NS get vsec,dcred,vcert -o name)"
[ "$(kubectl -n $NS get secret config db web-tls -o name | wc -l)" = 3 ] && ok "their Secrets stay after uninstall" || bad "Secrets gone"
eventually 30 bash -c "[ -z \"\$(kubectl -n $REL_NS get secret $RELEASE-vaultkeeper-webhook-tls $RELEASE-vaultkeeper-webhook-ca -o name --ignore-not-found)\" ]" \
  && ok "the webhook's certificate Secrets went with the chart" || bad "the webhook's Secrets outlived the chart"
# What is left is the users' to delete; without the operator the finalizers would hold them.
for r in dcred/db vcert/web vsec/config; do kubectl -n $NS patch "$r" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true; done
kubectl delete namespace $NS --wait=false >/dev/null
echo "incluster e2e: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
