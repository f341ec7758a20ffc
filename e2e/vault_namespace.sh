#!/usr/bin/env bash
# Real-stack test of Vault namespaces (`X-Vault-Namespace`), run inside the stack launcher:
#   cargo build -p vaultkeeper-agent -p vaultkeeper-webhook   (or set AGENT_BIN / WEBHOOK_BIN)
#   python3 e2e/stack/stack.py run --state-dir target/ns-stack -- bash e2e/vault_namespace.sh
# The OpenBao namespace team-a gets its own KV v2 mount and Kubernetes auth mount, configured like
# the root ones in stack.py. Pods annotated with vault.hashicorp.com/namespace are admitted by the
# real API server through the webhook; the agent, run as a local process with the configuration
# the webhook injected (the pod's mounts mapped to local directories), renders the secret from the
# namespace, with every one of its requests in team-a (per the audit log). The same configuration
# without the namespace logs in at the root and finds nothing at that path. A namespace the agent
# would refuse is denied at admission.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$VK_BIN:$PATH
. e2e/lib.sh
AGENT=${AGENT_BIN:-$BUILD_DIR/vaultkeeper-agent}
WEBHOOK=${WEBHOOK_BIN:-$BUILD_DIR/vaultkeeper-webhook}
for bin in "$AGENT" "$WEBHOOK"; do
  [ -x "$bin" ] || { echo "FAILED: $bin missing (build it first)"; exit 1; }
done
NS=nsapp
VNS=team-a
WORK=$VK_STACK_DIR/namespace-e2e
rm -rf "$WORK"; mkdir -p "$WORK"
export WORK
LOG=$VK_STACK_DIR/logs/namespace-webhook.log
CANARY=canary-ns-$RANDOM$RANDOM
nsbao() { BAO_NAMESPACE=$VNS bao "$@"; }
SIDE_PID=; WH_PID=
cleanup() {
  [ -z "$SIDE_PID" ] || kill -9 "$SIDE_PID" 2>/dev/null || true
  [ -z "$WH_PID" ] || kill "$WH_PID" 2>/dev/null || true
  kubectl delete mutatingwebhookconfiguration vaultkeeper-injector --ignore-not-found >/dev/null 2>&1 || true
}
trap cleanup EXIT

# --- OpenBao: namespace team-a with KV v2 and Kubernetes auth; the root gets the same role ------
kubectl create namespace $NS >/dev/null
kubectl -n $NS create serviceaccount web >/dev/null
bao namespace create $VNS >/dev/null && ok "bao namespace create $VNS" || bad "OpenBao refused to create namespace $VNS"
nsbao secrets enable -path=secret kv-v2 >/dev/null
nsbao auth enable kubernetes >/dev/null
nsbao write auth/kubernetes/config kubernetes_host="$VK_KUBE_SERVER" kubernetes_ca_cert=@"$VK_KUBE_CA" \
  token_reviewer_jwt=@"$VK_STACK_DIR/reviewer.jwt" disable_local_ca_jwt=true >/dev/null
policy='path "secret/data/nsapp/*" { capabilities = ["read"] }
path "secret/metadata/nsapp/*" { capabilities = ["read"] }'
# The same policy and role exist in the root namespace, so that without the namespace the agent
# logs in and reads the same path, where the root has nothing. A short token TTL makes the agent
# renew its token within the test.
for b in nsbao bao; do
  $b policy write nsapp - <<<"$policy" >/dev/null
  $b write auth/kubernetes/role/nsapp bound_service_account_names=web bound_service_account_namespaces=$NS \
    policies=nsapp token_ttl=15s token_max_ttl=1h >/dev/null
done
nsbao kv put secret/nsapp/config username=app password="$CANARY" >/dev/null
bao kv get secret/nsapp/config >/dev/null 2>&1 && bad "the root namespace has secret/nsapp/config" \
  || ok "secret/nsapp/config exists in $VNS only"
kubectl -n $NS create token web --duration=1h >"$WORK/sa-token"

# --- the webhook, registered with the real API server ---------------------------------------------
(cd "$WORK" &&
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=webhook-ca 2>/dev/null &&
  openssl req -newkey rsa:2048 -nodes -keyout tls.key -out tls.csr -subj /CN=vaultkeeper-webhook 2>/dev/null &&
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >san.ext &&
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days 1 -extfile san.ext 2>/dev/null)
PORT=$(free_port); METRICS=$(free_port)
"$WEBHOOK" --addr "127.0.0.1:$PORT" --cert-file "$WORK/tls.crt" --key-file "$WORK/tls.key" \
  --metrics-addr "127.0.0.1:$METRICS" --agent-image registry.example/vaultkeeper-agent:test \
  --vault-addr "$VAULT_ADDR" >"$LOG" 2>&1 &
WH_PID=$!
eventually 20 curl -sf "127.0.0.1:$METRICS/healthz" || bad "webhook never served"
python3 - "$PORT" "$(base64 -w0 "$WORK/ca.crt")" <<'PYEOF' | kubectl apply -f - >/dev/null
import re, sys
port, ca = sys.argv[1], sys.argv[2]
text = open("manifests/webhook.yaml").read()
text = text.replace("caBundle: \"\"", f"caBundle: {ca}")
text = re.sub(r"service: \{[^}]*\}", f"url: https://127.0.0.1:{port}/mutate", text)
print(text)
PYEOF
sleep 2 # the API server picks up the configuration

# pod NAME NAMESPACE-ANNOTATION [EXTRA-ANNOTATION-LINES]: creates an annotated Pod; prints kubectl's output.
pod() {
  kubectl apply -f - 2>&1 <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $NS
  annotations:
    vault.hashicorp.com/agent-inject: "true"
    vault.hashicorp.com/role: nsapp
    vault.hashicorp.com/namespace: "$2"
    vault.hashicorp.com/agent-inject-secret-config: secret/data/nsapp/config
    vault.hashicorp.com/agent-inject-template-config: |
      {{ with secret "secret/data/nsapp/config" }}user={{ .Data.data.username }} pass={{ .Data.data.password }}{{ end }}
$3
spec:
  serviceAccountName: web
  containers: [{name: app, image: registry.example/app:1}]
EOF
}
# injected NAME: the agent configuration the webhook put into the stored Pod's first agent container.
injected() {
  kubectl -n $NS get pod "$1" -o json | python3 -c '
import json, sys
pod = json.load(sys.stdin)
agents = [c for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"] if c["name"].startswith("vaultkeeper-agent")]
print([e["value"] for e in agents[0]["env"] if e["name"] == "VAULTKEEPER_AGENT_CONFIG"][0])'
}
# localize CONFIG OUT RUN [KEY=JSON...]: the configuration with the pod's mounts mapped to local
# directories (what the kubelet's volume mounts do), then KEY set to JSON (null removes KEY).
localize() {
  python3 - "$@" <<'PYEOF'
import json, os, sys
config, out, run = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
config["tokenFile"] = os.environ["WORK"] + "/sa-token"
config["readyFile"] = run + "/ready"
for secret in config["secrets"]:
    secret["mountPath"] = out + secret["mountPath"]
for change in sys.argv[4:]:
    key, value = change.split("=", 1)
    value = json.loads(value)
    if value is None:
        config.pop(key, None)
    else:
        config[key] = value
print(json.dumps(config))
PYEOF
}
agent() { env -i PATH=/usr/bin:/bin VAULTKEEPER_AGENT_CONFIG="$1" VAULTKEEPER_AGENT_POLL_INTERVAL=2s "$AGENT" "${@:2}"; }
# audit_since LINE: "namespace-path request-path" for every request the audit log holds after LINE.
audit_since() {
  tail -n +"$(($1 + 1))" "$VK_BAO_AUDIT_LOG" | python3 -c '
import json, sys
for line in sys.stdin:
    entry = json.loads(line)
    if entry.get("type") == "request":
        request = entry["request"]
        print((request.get("namespace") or {}).get("path", "") or "<root>", request["path"])'
}
AGENT_PATHS='auth/kubernetes/login|auth/token/(renew-self|lookup-self)|secret/(data|metadata)/nsapp/config'

# --- 1. init container: the annotation reaches the agent, which renders from team-a --------------
out=$(pod init-only $VNS '    vault.hashicorp.com/agent-pre-populate-only: "true"' || true)
contains 'created' <<<"$out" && ok "annotated pod admitted" || bad "pod init-only: $out"
INIT_CFG=$(injected init-only)
python3 -c 'import json,sys; c=json.loads(sys.argv[1]); assert c["vaultNamespace"] == "team-a" and c["mode"] == "init", c' "$INIT_CFG" \
  && ok "the webhook wrote vaultNamespace team-a into the agent configuration" || bad "injected configuration: $INIT_CFG"
OUT=$WORK/init-out; RUN=$WORK/run
audit_start=$(wc -l <"$VK_BAO_AUDIT_LOG")
if agent "$(localize "$INIT_CFG" "$OUT" "$RUN")" 2>"$WORK/init.log"; then ok "init agent in $VNS exited 0"; else bad "init agent failed: $(cat "$WORK/init.log")"; fi
[ "$(cat "$OUT/vault/secrets/config" 2>/dev/null)" = "user=app pass=$CANARY" ] \
  && ok "rendered the secret from namespace $VNS" || bad "config: $(cat "$OUT/vault/secrets/config" 2>&1)"
contains -F "logged in to Vault as role \"nsapp\" at auth/kubernetes in namespace \"$VNS\"" "$WORK/init.log" \
  && ok "the agent logs the namespace it logged in to" || bad "init log: $(cat "$WORK/init.log")"

# --- 2. sidecar: polling, renewal and token reuse all stay in team-a -----------------------------
out=$(pod sidecar $VNS '' || true)
contains 'created' <<<"$out" || bad "pod sidecar: $out"
SIDE_CFG=$(injected sidecar)
SIDE_OUT=$WORK/side-out
# The sidecar shares the init container's run directory, as in the pod: it reuses the token.
env -i PATH=/usr/bin:/bin VAULTKEEPER_AGENT_CONFIG="$(localize "$SIDE_CFG" "$SIDE_OUT" "$RUN")" \
  VAULTKEEPER_AGENT_POLL_INTERVAL=2s "$AGENT" >"$WORK/sidecar.log" 2>&1 &
SIDE_PID=$!
eventually 20 test -e "$RUN/ready" && ok "sidecar in $VNS ready" || bad "sidecar never ready: $(tail -5 "$WORK/sidecar.log")"
contains "reusing the stored Vault token" "$WORK/sidecar.log" && ok "sidecar reused the init container's token (lookup-self in $VNS)" \
  || bad "no token reuse: $(tail -5 "$WORK/sidecar.log")"
nsbao kv put secret/nsapp/config username=app2 password="$CANARY" >/dev/null
eventually 15 grep -q "user=app2 " "$SIDE_OUT/vault/secrets/config" && ok "KV v2 update in $VNS re-rendered" \
  || bad "update not rendered: $(cat "$SIDE_OUT/vault/secrets/config" 2>&1)"
renewed=
for _ in $(seq 60); do
  audit_since "$audit_start" | contains ' auth/token/renew-self$' && { renewed=1; break; }
  sleep 0.5
done
[ -n "$renewed" ] && ok "the token was renewed" || bad "no token renewal within 30s"
kill -TERM "$SIDE_PID"; wait "$SIDE_PID" 2>/dev/null || true; SIDE_PID=
seen=$(audit_since "$audit_start" | grep -E " ($AGENT_PATHS)\$" | sort | uniq -c)
echo "info: agent requests by namespace:"; sed 's/^/info:   /' <<<"$seen"
for path in auth/kubernetes/login auth/token/lookup-self auth/token/renew-self secret/data/nsapp/config secret/metadata/nsapp/config; do
  grep -qE " $VNS/ $path\$" <<<"$seen" && ok "$path sent in $VNS" || bad "$path never sent in $VNS"
done
grep -qE " <root> " <<<"$seen" && bad "some agent request went to the root namespace" || ok "no agent request went to the root namespace"

# --- 3. the same configuration without the namespace: root login, nothing at that path -----------
rc=0; agent "$(localize "$INIT_CFG" "$WORK/root-out" "$WORK/root-run" vaultNamespace=null)" 2>"$WORK/root.log" || rc=$?
[ "$rc" != 0 ] && contains 'failed to read secret/data/nsapp/config' "$WORK/root.log" && contains 'not found' "$WORK/root.log" \
  && ok "without the namespace: $(grep -o 'error: .*' "$WORK/root.log")" || bad "without the namespace: rc=$rc $(cat "$WORK/root.log")"
contains -x '.* logged in to Vault as role "nsapp" at auth/kubernetes (token TTL [0-9]*s)' "$WORK/root.log" && ok "without the namespace the root login itself worked" \
  || bad "root login failed: $(cat "$WORK/root.log")"
[ ! -e "$WORK/root-out/vault/secrets/config" ] && ok "without the namespace nothing was written" || bad "a file was written from the root namespace"

# A namespace that does not exist fails the login with one clear line.
rc=0; out=$(agent "$(localize "$INIT_CFG" "$WORK/zz-out" "$WORK/zz-run" 'vaultNamespace="team-zz"')" 2>&1) || rc=$?
err=$(grep 'error:' <<<"$out" || true)
[ "$rc" != 0 ] && contains -F 'failed to log in to Vault as role "nsapp" in namespace "team-zz"' <<<"$err" \
  && ok "unknown namespace: $err" || bad "unknown namespace: rc=$rc $out"

# --- 4. a namespace the agent would refuse is denied at admission ------------------------------------
out=$(pod bad-namespace 'team a' '' || true)
contains 'denied the request' <<<"$out" && contains -F 'vaultNamespace "team a" is not a Vault namespace path' <<<"$out" \
  && contains -F 'fix vaultkeeper.dev/vault-namespace or vault.hashicorp.com/namespace' <<<"$out" \
  && ok "namespace \"team a\" denied at admission: ${out#*denied the request: }" || bad "bad namespace: $out"
kubectl -n $NS get pod bad-namespace >/dev/null 2>&1 && bad "the refused pod exists" || ok "the refused pod was not created"

if grep -qF "$CANARY" "$WORK"/*.log "$LOG"; then bad "a secret value is in a log"; else ok "no secret value in the agent or webhook logs"; fi
echo "vault namespace e2e: $pass passed, $fail failed"
[ "$fail" = 0 ]
