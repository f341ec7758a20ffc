#!/usr/bin/env bash
# Real-stack test of the agent, run inside the stack launcher (real kube-apiserver for TokenRequest
# and TokenReview, real OpenBao with Kubernetes auth, real PostgreSQL behind the database engine):
#   cargo build -p vaultkeeper-agent   (or set AGENT_BIN)
#   python3 e2e/stack/stack.py run --state-dir target/agent-stack -- bash e2e/agent.sh
# The agent runs as a local process with the JSON the webhook would write; init mode, sidecar mode
# (KV change, lease renewal, SIGKILL + restart reusing token and lease, Vault outage, SIGTERM), and
# init failures.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$VK_BIN:$PATH
. e2e/lib.sh
AGENT=${AGENT_BIN:-$BUILD_DIR/vaultkeeper-agent}
[ -x "$AGENT" ] || { echo "FAILED: agent binary $AGENT missing (build it first)"; exit 1; }
NS=agent # a namespace of this script alone
WORK=$VK_STACK_DIR/agent-e2e
rm -rf "$WORK"; mkdir -p "$WORK"
CANARY=canary-s3cr3t-$RANDOM$RANDOM
url_user() { sed -E 's|^postgresql://([^:]+):.*|\1|' "$1"; }
mode_of() { stat -c %a "$1"; }
SIDE_PID=
stop_sidecar() { [ -z "$SIDE_PID" ] || { kill -9 "$SIDE_PID" 2>/dev/null || true; wait "$SIDE_PID" 2>/dev/null || true; SIDE_PID=; }; }
trap stop_sidecar EXIT

# --- Kubernetes identity, Vault policy and role, data --------------------------------------------
kubectl create namespace $NS >/dev/null
kubectl -n $NS create serviceaccount web >/dev/null
cat <<EOF | bao policy write agent1 - >/dev/null
path "secret/data/agent1/*" { capabilities = ["read"] }
path "secret/metadata/agent1/*" { capabilities = ["read"] }
path "kv/agent1/*" { capabilities = ["read"] }
path "database/creds/agent-app" { capabilities = ["read"] }
path "sys/leases/revoke" { capabilities = ["update"] }
EOF
bao write auth/kubernetes/role/agent1 bound_service_account_names=web bound_service_account_namespaces=$NS \
  policies=agent1 token_ttl=1h >/dev/null
bao kv put secret/agent1/config username=app password="$CANARY" >/dev/null
bao kv put kv/agent1/plain api_key="k-$CANARY" region=eu >/dev/null
bao secrets list -format=json | contains '"database/"' || bao secrets enable database >/dev/null
bao write database/config/agentpg plugin_name=postgresql-database-plugin allowed_roles='*' \
  connection_url="postgresql://{{username}}:{{password}}@$VK_PG_HOST:$VK_PG_PORT/postgres?sslmode=disable" \
  username=postgres password=unused username_template='agent-{{.RoleName}}-{{random 20}}' >/dev/null
create="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
# A short TTL so renewals show within the test (renewed at two thirds: every 8s).
bao write database/roles/agent-app db_name=agentpg creation_statements="$create" default_ttl=12s max_ttl=10m >/dev/null
kubectl -n $NS create token web --duration=1h >"$WORK/sa-token"

# config MODE OUT RUN [SECRETS-JSON]: the JSON the webhook writes.
config() {
  MODE=$1 OUT=$2 RUN=$3 SECRETS=${4:-} python3 - <<'EOF'
import json, os
out, pg = os.environ["OUT"], f'{os.environ["VK_PG_HOST"]}:{os.environ["VK_PG_PORT"]}'
secrets = json.loads(os.environ["SECRETS"]) if os.environ["SECRETS"] else [
    {"name": "config", "path": "secret/data/agent1/config", "file": "app/config.env", "mountPath": out, "perms": "0440",
     "template": '{{ with secret "secret/data/agent1/config" -}}\nuser={{ .Data.data.username }}\npass={{ .Data.data.password }}\n{{- end }}\n'},
    {"name": "db", "path": "database/creds/agent-app", "file": "db-url", "mountPath": out, "perms": "0400",
     "template": '{{ with secret "database/creds/agent-app" }}postgresql://{{ .Data.username }}:{{ .Data.password }}@' + pg + '/postgres{{ end }}'},
    {"name": "plain", "path": "kv/agent1/plain", "file": "plain", "mountPath": out},
    {"name": "kv2plain", "path": "secret/data/agent1/config", "file": "kv2plain", "mountPath": out},
]
print(json.dumps({"version": 1, "mode": os.environ["MODE"], "vaultAddr": os.environ["VAULT_ADDR"],
                  "authPath": "auth/kubernetes", "role": "agent1", "tokenFile": os.environ["WORK"] + "/sa-token",
                  "readyFile": os.environ["RUN"] + "/ready", "volumePath": out, "secrets": secrets}))
EOF
}
export WORK
# The agent must not see the root token or anything else from the test's environment.
agent() { env -i PATH=/usr/bin:/bin VAULTKEEPER_AGENT_CONFIG="$1" VAULTKEEPER_AGENT_POLL_INTERVAL="${POLL:-5m}" "$AGENT" "${@:2}"; }

# --- 1. init mode --------------------------------------------------------------------------------
OUT=$WORK/secrets; RUN=$WORK/run
INIT=$(config init "$OUT" "$RUN")
start=$(date +%s%N)
if agent "$INIT" 2>"$WORK/init.log"; then
  ok "init mode exited 0 in $(( ($(date +%s%N) - start) / 1000000 )) ms"
else
  bad "init mode failed: $(cat "$WORK/init.log")"
fi
[ "$(cat "$OUT/app/config.env" 2>/dev/null)" = "$(printf 'user=app\npass=%s' "$CANARY")" ] \
  && ok "KV v2 template rendered (subdirectory created, whitespace trimmed)" || bad "config.env: $(cat "$OUT/app/config.env" 2>&1)"
[ "$(mode_of "$OUT/app/config.env")" = 440 ] && ok "perms 0440 applied" || bad "config.env mode $(mode_of "$OUT/app/config.env")"
[ "$(cat "$OUT/plain" 2>/dev/null)" = "$(printf 'api_key: k-%s\nregion: eu' "$CANARY")" ] \
  && ok "KV v1 default format (key: value lines)" || bad "plain: $(cat "$OUT/plain" 2>&1)"
[ "$(mode_of "$OUT/plain")" = 644 ] && ok "default perms 0644" || bad "plain mode $(mode_of "$OUT/plain")"
[ "$(cat "$OUT/kv2plain" 2>/dev/null)" = "$(printf 'password: %s\nusername: app' "$CANARY")" ] \
  && ok "KV v2 default format shows the inner data" || bad "kv2plain: $(cat "$OUT/kv2plain" 2>&1)"
db_user=$(url_user "$OUT/db-url" 2>/dev/null || true)
if [ -n "$db_user" ] && psql "$(cat "$OUT/db-url")" -tAc 'select current_user' 2>/dev/null | contains -x "$db_user"; then
  ok "database credential logs in to PostgreSQL as $db_user"
else
  bad "database credential does not log in ($(cat "$OUT/db-url" 2>&1 | sed 's/:[^:@]*@/:***@/'))"
fi
[ "$(mode_of "$OUT/db-url")" = 400 ] && ok "perms 0400 applied" || bad "db-url mode $(mode_of "$OUT/db-url")"
[ "$(mode_of "$RUN/agent-state.json")" = 600 ] && ok "state file (token, leases) stored with mode 0600" || bad "state file mode $(mode_of "$RUN/agent-state.json" 2>&1)"
[ ! -e "$RUN/ready" ] && ok "init mode does not create the ready file" || bad "init mode created the ready file"
ls -a "$OUT" "$OUT/app" | contains vk-tmp && bad "temporary files left" || ok "no temporary files left"

# --- 2. sidecar mode -----------------------------------------------------------------------------
SIDE=$(config sidecar "$OUT" "$RUN")
agent "$SIDE" probe 2>/dev/null && bad "probe passed before the sidecar was ready" || ok "probe fails before ready"
start_sidecar() { # a simple command, so that $! is the agent itself
  env -i PATH=/usr/bin:/bin VAULTKEEPER_AGENT_CONFIG="$SIDE" VAULTKEEPER_AGENT_POLL_INTERVAL=2s "$AGENT" >>"$WORK/sidecar.log" 2>&1 &
  SIDE_PID=$!
}
start_sidecar
if eventually 20 test -e "$RUN/ready"; then ok "sidecar ready"; else bad "sidecar never ready: $(tail -5 "$WORK/sidecar.log")"; fi
agent "$SIDE" probe && ok "probe passes once ready" || bad "probe fails although ready"
[ "$(url_user "$OUT/db-url")" = "$db_user" ] && ok "sidecar reused the init container's token and lease (same user $db_user)" \
  || bad "sidecar issued a new credential: $db_user -> $(url_user "$OUT/db-url")"
grep -q "reusing the stored Vault token" "$WORK/sidecar.log" && ok "sidecar log says it reused the token" || bad "no token reuse in log"

# A KV v2 update is re-rendered (polled by metadata version every 2s).
bao kv put secret/agent1/config username=app2 password="$CANARY" >/dev/null
eventually 15 grep -qx user=app2 "$OUT/app/config.env" && ok "KV v2 update re-rendered" || bad "KV update not rendered: $(cat "$OUT/app/config.env")"
eventually 5 grep -qx "username: app2" "$OUT/kv2plain" && ok "KV v2 update re-rendered (default format)" || bad "kv2plain not updated"
bao kv put kv/agent1/plain api_key="k-$CANARY" region=us >/dev/null
eventually 15 grep -qx "region: us" "$OUT/plain" && ok "KV v1 update re-rendered" || bad "KV v1 update not rendered"

# The lease is renewed: VALID UNTIL advances, same user.
v1=$(valid_until "$db_user")
if eventually 20 renewed_since "$db_user" "$v1"; then
  ok "lease renewed: VALID UNTIL $v1 -> $(valid_until "$db_user")"
else
  bad "VALID UNTIL never moved ($v1)"
fi
[ "$(url_user "$OUT/db-url")" = "$db_user" ] && ok "renewal kept the credential" || bad "credential changed on renewal"

# SIGKILL and restart: the new process reuses the stored token and lease; the file is not rewritten.
mtime=$(stat -c %y "$OUT/db-url")
stop_sidecar
pgrep -f "^$AGENT\$" >/dev/null && bad "an agent survived SIGKILL" || ok "SIGKILL stopped the sidecar"
start_sidecar
eventually 15 bash -c "grep -c 'reusing lease' '$WORK/sidecar.log' | grep -qx 2" && ok "restarted sidecar reused its lease" || bad "lease not reused after SIGKILL: $(tail -5 "$WORK/sidecar.log")"
v2=$(valid_until "$db_user")
eventually 20 renewed_since "$db_user" "$v2" \
  && ok "restarted sidecar keeps renewing the lease" || bad "no renewal after restart"
# Judged after that renewal, a whole cycle of the restarted sidecar.
[ "$(url_user "$OUT/db-url")" = "$db_user" ] && ok "after SIGKILL + restart: same PostgreSQL user $db_user" || bad "after restart: new user $(url_user "$OUT/db-url")"
[ "$(stat -c %y "$OUT/db-url")" = "$mtime" ] && ok "after restart: credential file not rewritten" || bad "credential file rewritten after restart"
psql "$(cat "$OUT/db-url")" -tAc 'select 1' >/dev/null 2>&1 && ok "credential still logs in after restart" || bad "credential dead after restart"

# A Vault outage: files are kept, the agent retries, and catches up once Vault is back.
before=$(cat "$OUT/app/config.env")
failures() { grep -c "failed to reach Vault" "$WORK/sidecar.log" || true; }
failures_at_least() { [ "$(failures)" -ge "$1" ]; }
failed_before=$(failures)
python3 e2e/stack/stack.py bao-stop --state-dir "$VK_STACK_DIR" >/dev/null 2>&1
# Through two failed polls (every 2s) of the stopped Vault.
eventually 20 failures_at_least $((failed_before + 2)) && ok "outage logged ($(( $(failures) - failed_before )) failed attempts)" || bad "outage not logged"
[ "$(cat "$OUT/app/config.env")" = "$before" ] && [ -s "$OUT/db-url" ] && ok "during a Vault outage the files are kept" || bad "files changed during the outage"
kill -0 "$SIDE_PID" 2>/dev/null && ok "sidecar survives the outage" || bad "sidecar died during the outage"
python3 e2e/stack/stack.py bao-start --state-dir "$VK_STACK_DIR" >/dev/null 2>&1
eventually 30 bao kv put secret/agent1/config username=app3 password="$CANARY" || bad "OpenBao did not come back"
eventually 60 grep -qx user=app3 "$OUT/app/config.env" && ok "after the outage a KV update is rendered" || bad "no render after the outage: $(tail -3 "$WORK/sidecar.log")"

# Footprint (figures, not checks): the sidecar's peak and current resident memory.
echo "info: sidecar memory: $(grep -E 'VmHWM|VmRSS' /proc/$SIDE_PID/status | tr -s ' \t' ' ' | tr '\n' ' ')binary $(stat -c %s "$AGENT") bytes"

# SIGTERM: prompt exit 0.
kill -TERM "$SIDE_PID"
start=$SECONDS; rc=0; wait "$SIDE_PID" || rc=$?; SIDE_PID=
[ "$rc" = 0 ] && [ $((SECONDS - start)) -le 2 ] && ok "SIGTERM: exit 0 within $((SECONDS - start))s" || bad "SIGTERM: exit $rc after $((SECONDS - start))s"

# Secrets never in logs.
pw=$(sed -E 's|^postgresql://[^:]+:([^@]+)@.*|\1|' "$OUT/db-url")
token=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$RUN/agent-state.json")
if grep -qF -e "$CANARY" -e "$pw" -e "$token" "$WORK/init.log" "$WORK/sidecar.log"; then bad "a secret value or token is in the agent logs"; else ok "no secret value or token in the agent logs"; fi

# --- 3. init failures: one clear line, non-zero, nothing written, issued leases revoked ----------
BAD_OUT=$WORK/bad-secrets; BAD_RUN=$WORK/bad-run
# This script's PostgreSQL roles (the sidecar's may still be there, its lease ending on its own).
roles() { psql_admin "select rolname from pg_roles where rolname like 'agent-%' order by 1"; }
roles_before=$(roles)
BAD=$(config init "$BAD_OUT" "$BAD_RUN" "[
  {\"name\": \"db\", \"path\": \"database/creds/agent-app\", \"file\": \"db\", \"mountPath\": \"$BAD_OUT\"},
  {\"name\": \"good\", \"path\": \"secret/data/agent1/config\", \"file\": \"good\", \"mountPath\": \"$BAD_OUT\"},
  {\"name\": \"missing\", \"path\": \"secret/data/agent1/nope\", \"file\": \"missing\", \"mountPath\": \"$BAD_OUT\"}]")
rc=0; agent "$BAD" 2>"$WORK/bad.log" || rc=$?
err=$(grep 'error:' "$WORK/bad.log" || true)
[ "$rc" != 0 ] && ok "bad path: exit $rc" || bad "bad path: exit 0"
[ "$(grep -c 'error:' "$WORK/bad.log")" = 1 ] && grep -q 'failed to read secret/data/agent1/nope' <<<"$err" && grep -q 'not found' <<<"$err" \
  && ok "bad path: one clear line: $err" || bad "bad path message: $(cat "$WORK/bad.log")"
[ ! -e "$BAD_OUT" ] || [ -z "$(ls -A "$BAD_OUT")" ] && ok "bad path: nothing written" || bad "bad path: files written: $(ls "$BAD_OUT")"
# Looked at once: the failed run revokes before it exits, while its 12s lease would still be alive,
# so a lease merely left to expire is caught.
left=$(comm -13 <(echo "$roles_before") <(roles))
grep -q 'issued a credential for database/creds/agent-app' "$WORK/bad.log" && [ -z "$left" ] \
  && ok "bad path: the credential issued by the failed run was revoked before it exited" \
  || bad "bad path: the failed run's credential was not revoked (new roles: ${left:-none}; $(grep -c 'issued a credential' "$WORK/bad.log") issued)"
rc=0; out=$(agent "$(config init "$BAD_OUT" "$BAD_RUN" | sed 's/"version": 1/"version": 7/')" 2>&1) || rc=$?
[ "$rc" != 0 ] && grep -q "unsupported agent configuration version 7" <<<"$out" && ok "unknown config version: $out" || bad "unknown version: rc=$rc $out"
rc=0; out=$(agent "$(config init "$BAD_OUT" "$BAD_RUN" "[{\"name\": \"t\", \"path\": \"kv/agent1/plain\", \"file\": \"t\", \"mountPath\": \"$BAD_OUT\", \"template\": \"{{ .Data.x \"}]")" 2>&1) || rc=$?
[ "$rc" != 0 ] && grep -q 'secret "t": the template cannot be used: does not parse' <<<"$out" && ok "unclosed template action: $out" || bad "unclosed template: rc=$rc $out"

pgrep -f "^$AGENT\$" >/dev/null && bad "an agent process is still running" || ok "no agent process left"
echo "agent e2e: $pass passed, $fail failed"
[ "$fail" = 0 ]
