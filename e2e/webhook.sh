#!/usr/bin/env bash
# Real-stack test of the injection webhook, run inside `stack.py run`: the real kube-apiserver calls
# the webhook over TLS (MutatingWebhookConfiguration with url + caBundle) when Pods are created.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$VK_BIN:$PATH
WORK=$VK_STACK_DIR/webhook-e2e
rm -rf "$WORK"; mkdir -p "$WORK"
LOG=$VK_STACK_DIR/logs/webhook.log
NS=webhook # a namespace of this script alone (and kube-system, which the webhook must never see)
. e2e/lib.sh
PORT=$(free_port); METRICS=$(free_port)
metric() { curl -s "127.0.0.1:$METRICS/metrics" | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { print s + 0 }'; }

# A serving certificate for 127.0.0.1 signed by a throwaway CA.
(cd "$WORK" &&
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=webhook-ca 2>/dev/null &&
  openssl req -newkey rsa:2048 -nodes -keyout tls.key -out tls.csr -subj /CN=vaultkeeper-webhook 2>/dev/null &&
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >san.ext &&
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days 1 -extfile san.ext 2>/dev/null)

"$BUILD_DIR/vaultkeeper-webhook" --addr "127.0.0.1:$PORT" --cert-file "$WORK/tls.crt" --key-file "$WORK/tls.key" \
  --metrics-addr "127.0.0.1:$METRICS" --agent-image registry.example/vaultkeeper-agent:test \
  --vault-addr https://vault.example:8200 >"$LOG" 2>&1 &
WH_PID=$!
# On exit, whatever failed: the registration goes (with failurePolicy Fail and this process gone,
# it would refuse every Pod of the namespaces it matches) and so does the Pod left in kube-system.
trap 'kubectl delete mutatingwebhookconfiguration vaultkeeper-injector --ignore-not-found >/dev/null 2>&1; kubectl -n kube-system delete pod sys --ignore-not-found --wait=false >/dev/null 2>&1; kill $WH_PID 2>/dev/null || true' EXIT
eventually 20 curl -sf "127.0.0.1:$METRICS/healthz" || bad "webhook never served"

kubectl create namespace $NS >/dev/null
kubectl -n $NS create serviceaccount web >/dev/null

# The shipped registration, pointed at this process (url instead of the in-cluster Service).
python3 - "$PORT" "$(base64 -w0 "$WORK/ca.crt")" <<'PYEOF' | kubectl apply -f - >/dev/null
import re, sys
port, ca = sys.argv[1], sys.argv[2]
text = open("manifests/webhook.yaml").read()
text = text.replace("caBundle: \"\"", f"caBundle: {ca}")
text = re.sub(r"service: \{[^}]*\}", f"url: https://127.0.0.1:{port}/mutate", text)
print(text)
PYEOF
# The API server takes the registration up after a moment: wait until a dry-run create of a Pod
# that asks for injection comes back mutated.
mutated_dry_run() {
  kubectl -n $NS create --dry-run=server -o jsonpath='{.spec.initContainers[*].name}' -f - <<'EOF' | contains -x vaultkeeper-agent-init
apiVersion: v1
kind: Pod
metadata:
  name: probe
  annotations:
    vault.hashicorp.com/agent-inject: "true"
    vault.hashicorp.com/role: web
    vault.hashicorp.com/agent-inject-secret-config.txt: secret/data/web
spec:
  serviceAccountName: web
  containers: [{name: app, image: registry.example/app:1}]
EOF
}
eventually 20 mutated_dry_run || bad "the API server never called the webhook"
kubectl -n $NS apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: annotated
  annotations:
    vault.hashicorp.com/agent-inject: "true"
    vault.hashicorp.com/role: web
    vault.hashicorp.com/agent-inject-secret-db: database/creds/web
    vault.hashicorp.com/agent-inject-template-db: |
      {{ with secret "database/creds/web" }}postgres://{{ .Data.username }}:{{ .Data.password }}@db/app{{ end }}
    vault.hashicorp.com/agent-inject-secret-config.txt: secret/data/web
    vault.hashicorp.com/agent-inject-perms-config.txt: "0440"
    vault.hashicorp.com/agent-requests-mem: 12Mi
spec:
  serviceAccountName: web
  containers: [{name: app, image: registry.example/app:1}]
EOF
pod() { kubectl -n $NS get pod "$1" -o json; }
p=$(pod annotated)
jq_() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" <<<"$p"; }
[ "$(jq_ "[c['name'] for c in d['spec'].get('initContainers', [])]")" = "['vaultkeeper-agent-init']" ] \
  && ok "stored Pod has the agent as its init container" || bad "init containers: $(jq_ "d['spec'].get('initContainers')")"
[ "$(jq_ "d['spec']['initContainers'][0].get('restartPolicy')")" = Always ] && ok "native sidecar (restartPolicy Always)" || bad "not a native sidecar"
[ "$(jq_ "d['spec']['initContainers'][0]['lifecycle']['postStart']['exec']['command'][:2]")" = "['vaultkeeper-agent', 'wait']" ] \
  && ok "a postStart hook holds the app until the first render" || bad "no postStart hook: $(jq_ "d['spec']['initContainers'][0].get('lifecycle')")"
[ "$(jq_ "[v for v in d['spec']['volumes'] if v['name']=='vaultkeeper-secrets'][0]['emptyDir']")" = "{'medium': 'Memory', 'sizeLimit': '16Mi'}" ] \
  && ok "in-memory secrets volume with a size limit" || bad "volume: $(jq_ "d['spec']['volumes']")"
[ "$(jq_ "[m['mountPath'] for m in d['spec']['containers'][0]['volumeMounts'] if m['name']=='vaultkeeper-secrets']")" = "['/vault/secrets']" ] \
  && ok "app container mounts /vault/secrets" || bad "app mounts: $(jq_ "d['spec']['containers'][0].get('volumeMounts')")"
[ "$(jq_ "d['spec']['initContainers'][0]['resources']['requests']['memory']")" = 12Mi ] && ok "agent-requests-mem honoured" || bad "resources: $(jq_ "d['spec']['initContainers'][0]['resources']")"
sc=$(jq_ "sorted((k, str(v)) for k, v in d['spec']['initContainers'][0]['securityContext'].items() if k in ('runAsNonRoot','readOnlyRootFilesystem','allowPrivilegeEscalation'))")
[ "$sc" = "[('allowPrivilegeEscalation', 'False'), ('readOnlyRootFilesystem', 'True'), ('runAsNonRoot', 'True')]" ] && ok "hardened agent security context" || bad "security context: $sc"
cfg=$(jq_ "[e['value'] for e in d['spec']['initContainers'][0]['env'] if e['name']=='VAULTKEEPER_AGENT_CONFIG'][0]")
python3 -c "import json,sys; c=json.loads(sys.argv[1]); s={x['name']: x for x in c['secrets']}; assert c['role']=='web' and s['config.txt']['perms']=='0440' and s['db']['path']=='database/creds/web'" "$cfg" \
  && ok "agent config carries role, paths and perms" || bad "agent config: $cfg"
[ "$(jq_ "d['metadata']['annotations'].get('vaultkeeper.dev/status')")" = injected ] && ok "marked injected" || bad "no status annotation"

calls=$(metric 'vaultkeeper_webhook_admissions_total')
kubectl -n $NS run plain --image=registry.example/app:1 --restart=Never >/dev/null
p=$(pod plain)
[ "$(jq_ "len(d['spec'].get('initContainers', [])) + len(d['spec']['containers'])")" = 1 ] && ok "Pod without annotations untouched" || bad "plain Pod changed"
[ "$(metric 'vaultkeeper_webhook_admissions_total')" = "$((calls + 1))" ] && ok "webhook was called for it and skipped it" || bad "admission count $calls -> $(metric vaultkeeper_webhook_admissions_total)"

calls=$(metric 'vaultkeeper_webhook_admissions_total')
# No wait needed: the API server calls a matching webhook before it answers the create, and the
# webhook counts the call before it answers.
kubectl -n kube-system run sys --image=registry.example/app:1 --restart=Never >/dev/null
[ "$(metric 'vaultkeeper_webhook_admissions_total')" = "$calls" ] && ok "kube-system Pod never sent to the webhook" || bad "webhook called for kube-system"

out=$(kubectl -n $NS apply -f - 2>&1 <<'EOF' || true
apiVersion: v1
kind: Pod
metadata:
  name: broken
  annotations:
    vault.hashicorp.com/agent-inject: "true"
    vault.hashicorp.com/agent-inject-secret-db: database/creds/web
    vault.hashicorp.com/agent-inject-perms-db: "0999"
spec:
  containers: [{name: app, image: registry.example/app:1}]
EOF
)
grep -q 'denied the request' <<<"$out" && grep -qi 'role' <<<"$out" && grep -q '0999' <<<"$out" \
  && ok "malformed annotations refused with a clear message" || bad "malformed pod: $out"

# A template the agent's Go-template engine would panic on is denied at admission, not at the
# agent's start.
out=$(kubectl -n $NS apply -f - 2>&1 <<'EOF' || true
apiVersion: v1
kind: Pod
metadata:
  name: bad-template
  annotations:
    vault.hashicorp.com/agent-inject: "true"
    vault.hashicorp.com/role: web
    vault.hashicorp.com/agent-inject-secret-db: database/creds/web
    vault.hashicorp.com/agent-inject-template-db: '{{ "a\x" }}'
spec:
  containers: [{name: app, image: registry.example/app:1}]
EOF
)
grep -q 'denied the request' <<<"$out" && grep -q 'secret "db": the template cannot be used' <<<"$out" \
  && grep -q 'agent-inject-template-db' <<<"$out" \
  && ok "a template the agent cannot take is denied at admission, naming its annotation" || bad "bad template: $out"
grep -q $'\x1b\[' "$LOG" && bad "terminal colour codes in the webhook's log file" || ok "the webhook's log file is plain text, without colour codes"

if [ "$fail" -ne 0 ]; then tail -n 30 "$LOG"; fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
