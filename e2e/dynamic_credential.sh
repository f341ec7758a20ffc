#!/usr/bin/env bash
# Real-stack test of DynamicCredential, run inside `stack.py run`: OpenBao's database engine issuing
# real PostgreSQL roles, Kubernetes auth with a real TokenReview, kwok nodes so rollouts finish.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$VK_BIN:$PATH
# Namespaces of this script alone: the credentials' and the operator's own (its key, the stored
# lease tokens and the leader Lease), so no other script's state is seen or changed.
NS=dynamic-credential
OP_NS=dynamic-credential-system
OP_LOG=$VK_STACK_DIR/logs/operator-dc.log
WORK=$VK_STACK_DIR/dynamic-credential-e2e
rm -rf "$WORK"; mkdir -p "$WORK"
. e2e/lib.sh
METRICS_PORT=$(free_port)
# This script's PostgreSQL roles: its database connection names them dc-<role>-<random>.
app_roles() { psql_admin "select rolname from pg_roles where rolname like 'dc-%' order by 1" | tr '\n' ' '; }
secret_key() { kubectl -n $NS get secret "$1" -o "jsonpath={.data.$2}" | base64 -d; }
status_of() { kubectl -n $NS get dcred "$1" -o "jsonpath={.status.$2}"; }
replicasets() { kubectl -n $NS get rs -l app=api -o name | sort | tr '\n' ' '; }
OP_PID=; B_PID=; OP_N=0; WATCH_PID=
start_operator() { # start_operator [PORT]: one more replica, named op-<n>; sets OP_PID
  local port=${1:-$METRICS_PORT}
  OP_N=$((OP_N + 1))
  "$BUILD_DIR/vaultkeeper-operator" --namespace "$OP_NS" --vault-addr "$VAULT_ADDR" --metrics-addr "127.0.0.1:$port" --identity "op-$OP_N" >>"$OP_LOG" 2>&1 &
  OP_PID=$!
  eventually 60 curl -sf "127.0.0.1:$port/readyz" || bad "operator op-$OP_N never became ready"
}
holder() { kubectl -n $OP_NS get lease vaultkeeper-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null; }
# On exit the resources go first (their finalizers revoke the leases), so no later script's
# operator finds them.
trap 'kubectl -n $NS delete dcred --all --wait=true --timeout=30s >/dev/null 2>&1; for p in $WATCH_PID $OP_PID $B_PID; do kill $p 2>/dev/null || true; done' EXIT

kubectl apply -f manifests/crds.yaml >/dev/null
kubectl wait --for=condition=Established crd/dynamiccredentials.vaultkeeper.dev >/dev/null
kubectl create namespace $OP_NS >/dev/null
kubectl create namespace $NS >/dev/null
kubectl -n $NS create serviceaccount web >/dev/null

# OpenBao's database engine against the real PostgreSQL; short TTLs so renewal and rotation show.
# The engine may be mounted already (another script shares this OpenBao); the connection is ours.
bao secrets list -format=json | contains '"database/"' || bao secrets enable database >/dev/null
bao write database/config/pg plugin_name=postgresql-database-plugin allowed_roles='*' \
  connection_url="postgresql://{{username}}:{{password}}@$VK_PG_HOST:$VK_PG_PORT/postgres?sslmode=disable" \
  username=postgres password=unused username_template='dc-{{.RoleName}}-{{random 20}}' >/dev/null
create="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
bao write database/roles/app db_name=pg creation_statements="$create" default_ttl=30s max_ttl=10m >/dev/null
bao write database/roles/short db_name=pg creation_statements="$create" default_ttl=15s max_ttl=45s >/dev/null
printf 'path "database/creds/*" { capabilities = ["read"] }\npath "sys/leases/revoke" { capabilities = ["update"] }\n' | bao policy write db - >/dev/null
# Periodic tokens, as the docs recommend for leased credentials.
bao write auth/kubernetes/role/db bound_service_account_names=web bound_service_account_namespaces=$NS \
  policies=db token_period=1h >/dev/null

# The unhashed audit log the launcher enables with VK_RAW_AUDIT=1 (as `make test` does): the tests
# read the plaintext Vault tokens from it.
[ -n "${VK_BAO_RAW_AUDIT_LOG:-}" ] && [ -f "$VK_BAO_RAW_AUDIT_LOG" ] || { echo "FAILED: no raw audit log; run inside a stack started with VK_RAW_AUDIT=1 (make test does)"; exit 1; }

start_operator

dcred() { # dcred NAME ROLE SECRET [EXTRA-YAML]
  kubectl apply -f - >/dev/null <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: DynamicCredential
metadata: {name: $1, namespace: $NS}
spec:
  auth: {role: db, serviceAccountName: web}
  source: {mount: database, role: $2}
  rotationGracePeriod: 3s
  destination:
    name: $3
    templates: {DATABASE_URL: "postgres://{{ .username }}:{{ .password }}@$VK_PG_HOST:$VK_PG_PORT/postgres"}
${4:-}
EOF
}

# 1. Issue: the Secret's credential logs in to PostgreSQL; the role is in pg_roles.
dcred app app app-db
if eventually 30 kubectl -n $NS get secret app-db; then
  user=$(secret_key app-db username); password=$(secret_key app-db password)
  PGPASSWORD=$password psql -h "$VK_PG_HOST" -p "$VK_PG_PORT" -U "$user" -d postgres -tAc 'select current_user' | contains -x "$user" \
    && ok "issued credential logs in to PostgreSQL as $user" || bad "credential does not log in"
  PGPASSWORD=wrong psql -h "$VK_PG_HOST" -p "$VK_PG_PORT" -U "$user" -d postgres -tAc 'select 1' >/dev/null 2>&1 \
    && bad "PostgreSQL accepted a wrong password (auth not enforced)" || ok "a wrong password is refused (auth is real)"
  [ "$(psql_admin "select count(*) from pg_roles where rolname='$user'")" = 1 ] && ok "role $user in pg_roles" || bad "role missing from pg_roles"
  url=$(secret_key app-db DATABASE_URL)
  psql "$url" -tAc 'select 1' >/dev/null 2>&1 && ok "templated DATABASE_URL works" || bad "DATABASE_URL does not work"
else
  bad "Secret app-db never appeared ($(status_of app conditions))"
fi
eventually 10 bash -c "[ \"\$(kubectl -n $NS get dcred app -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}')\" = True ]" \
  && ok "Ready=True" || bad "not Ready: $(status_of app conditions)"
lease=$(status_of app leaseId)
[ -n "$lease" ] && kubectl -n $NS get secret app-db -o jsonpath='{.metadata.annotations.vaultkeeper\.dev/lease-id}' | contains -x "$lease" \
  && ok "lease ID in status and Secret annotation" || bad "lease ID not recorded"

# 2. Renewal advances VALID UNTIL (30s TTL, renewed at about 20s).
valid1=$(valid_until "$user")
if eventually 40 renewed_since "$user" "$valid1"; then
  ok "renewal advanced VALID UNTIL ($valid1 -> $(valid_until "$user"))"
else
  bad "VALID UNTIL never moved ($(status_of app conditions))"
fi
[ "$(status_of app leaseId)" = "$lease" ] && ok "renewal kept the same lease" || bad "lease changed on renewal"

# 3. SIGKILL and restart the operator, twice: each new process renews the same lease with the
#    stored token (a new token would mean a new lease); same roles, no Secret write. The operator
#    renews for at least 60s, so after the first renewal one comes about every 40s.
roles_before=$(app_roles); rv_before=$(kubectl -n $NS get secret app-db -o jsonpath='{.metadata.resourceVersion}')
for i in 1 2; do
  kill -9 "$OP_PID"; wait "$OP_PID" 2>/dev/null || true
  valid=$(valid_until "$user") # nothing renews while no operator runs
  start_operator
  eventually 70 renewed_since "$user" "$valid" && ok "restarted operator op-$OP_N renewed the lease (VALID UNTIL $valid -> $(valid_until "$user"))" \
    || bad "restarted operator op-$OP_N never renewed the lease ($(status_of app conditions))"
done
[ "$(status_of app leaseId)" = "$lease" ] && ok "after 2 SIGKILL restarts: same lease" || bad "lease re-issued after restart"
[ "$(app_roles)" = "$roles_before" ] && ok "after restarts: same PostgreSQL roles ($roles_before)" || bad "roles changed: $roles_before -> $(app_roles)"
[ "$(kubectl -n $NS get secret app-db -o jsonpath='{.metadata.resourceVersion}')" = "$rv_before" ] && ok "after restarts: Secret not rewritten" || bad "Secret rewritten after restart"
PGPASSWORD=$(secret_key app-db password) psql -h "$VK_PG_HOST" -p "$VK_PG_PORT" -U "$user" -d postgres -tAc 'select 1' >/dev/null 2>&1 \
  && ok "credential still logs in after restarts" || bad "credential dead after restarts"
[ "$(kubectl -n $OP_NS get secret -l vaultkeeper.dev/lease-token=true -o name | wc -l)" = 1 ] && ok "one stored lease token for the identity" || bad "stored lease tokens: $(kubectl -n $OP_NS get secret -l vaultkeeper.dev/lease-token=true -o name)"
# The stored token must not be readable: the token that issued the lease (Vault's unhashed audit
# log recorded it with the request that returned the lease; the lease outlived two restarts, so this
# very token was stored and reused) is in none of the stored Secret's decoded bytes.
if lease_token=$(issuing_token "$(status_of app leaseId)"); then
  BAO_TOKEN=$lease_token VAULT_TOKEN=$lease_token bao token lookup >/dev/null 2>&1 \
    && ok "the lease's issuing token, from the raw audit log, is a live Vault token" || bad "the token the audit log names for the lease is not valid"
  stored=$(kubectl -n $OP_NS get secret -l vaultkeeper.dev/lease-token=true -o json || true)
  case $(plaintext_in "$lease_token" <<<"$stored") in
    absent) ok "stored lease token is encrypted: the plaintext token is in none of its decoded data or metadata" ;;
    found) bad "stored lease token is not encrypted: the plaintext token is in the Secret" ;;
    *) bad "no stored lease token to check in $OP_NS" ;;
  esac
  # Control: the same check finds the token in Secrets that store it unencrypted, base64-encoded as
  # Kubernetes does (once), or encoded once more before that.
  once=$(printf %s "$lease_token" | base64 -w0); twice=$(printf %s "$once" | base64 -w0)
  [ "$(plaintext_in "$lease_token" <<<"{\"data\": {\"token\": \"$once\"}}")" = found ] \
    && [ "$(plaintext_in "$lease_token" <<<"{\"data\": {\"token\": \"$twice\"}}")" = found ] \
    && ok "control: the check finds the token in a Secret that stores it unencrypted" || bad "control failed: the check misses an unencrypted token"
else
  bad "the raw audit log has no request that returned lease $(status_of app leaseId)"
fi

# 3b. The managed Secret deleted by hand: the credential cannot be read again, so a new one is
#     issued and the orphaned lease revoked.
old_user=$(secret_key app-db username); old_lease=$(status_of app leaseId)
kubectl -n $NS delete secret app-db >/dev/null
if eventually 30 bash -c "kubectl -n $NS get secret app-db >/dev/null 2>&1 && [ \"\$(kubectl -n $NS get dcred app -o jsonpath='{.status.leaseId}')\" != \"$old_lease\" ]"; then
  new_user=$(secret_key app-db username)
  PGPASSWORD=$(secret_key app-db password) psql -h "$VK_PG_HOST" -p "$VK_PG_PORT" -U "$new_user" -d postgres -tAc 'select 1' >/dev/null 2>&1 \
    && ok "deleted Secret re-created with a new working credential ($new_user)" || bad "re-created credential does not log in"
  eventually 30 bash -c "[ \"\$(psql -h $VK_PG_HOST -p $VK_PG_PORT -U postgres -d postgres -tAc \"select count(*) from pg_roles where rolname='$old_user'\")\" = 0 ]" \
    && ok "orphaned credential $old_user revoked" || bad "orphaned role $old_user still present"
else
  bad "deleted Secret not re-created ($(status_of app conditions))"
fi

# 3c. A lease revoked outside vaultkeeper is detected and replaced once.
old_lease=$(status_of app leaseId); old_user=$(secret_key app-db username)
bao lease revoke "$old_lease" >/dev/null
if eventually 45 bash -c "[ \"\$(kubectl -n $NS get dcred app -o jsonpath='{.status.leaseId}')\" != \"$old_lease\" ]"; then
  # Through the replacement's first renewal, a whole cycle in which a second replacement would show.
  new_user=$(secret_key app-db username); valid=$(valid_until "$new_user")
  eventually 70 renewed_since "$new_user" "$valid" || bad "replacement lease never renewed ($(status_of app conditions))"
  [ "$(app_roles | wc -w)" = 1 ] && ok "revoked lease replaced once ($(app_roles))" || bad "roles after out-of-band revoke: $(app_roles)"
  PGPASSWORD=$(secret_key app-db password) psql -h "$VK_PG_HOST" -p "$VK_PG_PORT" -U "$(secret_key app-db username)" -d postgres -tAc 'select 1' >/dev/null 2>&1 \
    && ok "replacement credential logs in" || bad "replacement credential does not log in"
else
  bad "out-of-band revocation not detected ($(status_of app conditions))"
fi

# 3f. OpenBao down: the Secret is left exactly as it is, the CR says so, and it recovers by itself.
before=$(kubectl -n $NS get secret app-db -o jsonpath='{.metadata.resourceVersion}/{.data}')
python3 e2e/stack/stack.py bao-stop --state-dir "$VK_STACK_DIR" >/dev/null
if eventually 75 bash -c "[ \"\$(kubectl -n $NS get dcred app -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].reason}')\" = VaultUnavailable ]"; then
  msg=$(kubectl -n $NS get dcred app -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}')
  grep -qF "keeps the current credential" <<<"$msg" && ok "OpenBao down: CR reports it ($msg)" || bad "outage message: $msg"
else
  bad "outage not reported ($(status_of app conditions))"
fi
[ "$(kubectl -n $NS get secret app-db -o jsonpath='{.metadata.resourceVersion}/{.data}')" = "$before" ] && ok "OpenBao down: Secret untouched" || bad "Secret changed during the outage"
python3 e2e/stack/stack.py bao-start --state-dir "$VK_STACK_DIR" >/dev/null
eventually 90 bash -c "[ \"\$(kubectl -n $NS get dcred app -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}')\" = True ]" \
  && ok "OpenBao back: Ready again without a manual step" || bad "not recovered ($(status_of app conditions))"

# 3d. The issuing token's own TTL (30s, not periodic) passes several times, with a SIGKILL and
#     restart of the operator in between: the token is renewed, stored and reused, so the lease
#     (and the PostgreSQL role) outlives it.
bao write auth/kubernetes/role/db-ttl bound_service_account_names=web bound_service_account_namespaces=$NS \
  policies=db token_ttl=30s >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: DynamicCredential
metadata: {name: tok, namespace: $NS}
spec:
  auth: {role: db-ttl, serviceAccountName: web}
  source: {mount: database, role: app}
  destination: {name: tok-db}
EOF
eventually 30 kubectl -n $NS get secret tok-db || bad "Secret tok-db never appeared"
tok_user=$(secret_key tok-db username); tok_lease=$(status_of tok leaseId)
# These waits are what is tested: the token's 30s TTL passes, unrenewed it would take the lease along.
sleep 20
kill -9 "$OP_PID"; wait "$OP_PID" 2>/dev/null || true
start_operator
sleep 55
[ "$(status_of tok leaseId)" = "$tok_lease" ] && ok "75s past a 30s issuing token, across a SIGKILL restart: same lease" || bad "lease replaced ($(status_of tok conditions))"
[ "$(psql_admin "select count(*) from pg_roles where rolname='$tok_user'")" = 1 ] && ok "its role $tok_user still exists" || bad "role $tok_user gone with its token"
PGPASSWORD=$(secret_key tok-db password) psql -h "$VK_PG_HOST" -p "$VK_PG_PORT" -U "$tok_user" -d postgres -tAc 'select 1' >/dev/null 2>&1 \
  && ok "credential of the 30s token still logs in" || bad "credential died with its token"
kubectl -n $NS delete dcred tok --wait=true --timeout=30s >/dev/null

# 3e. The auth role's token_max_ttl (40s) ends before the lease could: the credential is rotated
#     ahead of the token's end, with one rollout and a working credential at every moment.
bao write auth/kubernetes/role/db-max bound_service_account_names=web bound_service_account_namespaces=$NS \
  policies=db token_ttl=10s token_max_ttl=40s >/dev/null
kubectl -n $NS create deployment api2 --image=example.invalid/api --replicas=1 >/dev/null
eventually 30 bash -c "[ \"\$(kubectl -n $NS get deploy api2 -o jsonpath='{.status.availableReplicas}')\" = 1 ]" || bad "api2 never available"
kubectl apply -f - >/dev/null <<EOF
apiVersion: vaultkeeper.dev/v1alpha1
kind: DynamicCredential
metadata: {name: maxtok, namespace: $NS}
spec:
  auth: {role: db-max, serviceAccountName: web}
  source: {mount: database, role: app}
  rotationGracePeriod: 2s
  destination: {name: maxtok-db}
  restartTargets: [{kind: Deployment, name: api2}]
EOF
eventually 30 kubectl -n $NS get secret maxtok-db || bad "Secret maxtok-db never appeared"
first_user=$(secret_key maxtok-db username); first_lease=$(status_of maxtok leaseId)
# The token that issued the first lease, as Vault's audit log recorded it: the rotation must beat its end.
first_accessor=$(issuing_token "$first_lease" accessor || true)
logins_failed=0; rotated=""; old_token=""; new_lease=""
for i in $(seq 1 55); do # one sample a second
  read -r u p < <(kubectl -n $NS get secret maxtok-db -o jsonpath='{.data.username} {.data.password}' | python3 -c 'import base64,sys; print(*(base64.b64decode(x).decode() for x in sys.stdin.read().split()))')
  PGPASSWORD=$p psql -h "$VK_PG_HOST" -p "$VK_PG_PORT" -U "$u" -d postgres -tAc 'select 1' >/dev/null 2>&1 || logins_failed=$((logins_failed + 1))
  if [ -z "$rotated" ] && [ "$(status_of maxtok leaseId)" != "$first_lease" ]; then
    rotated=$i
    # At once, while the old token may still live: Vault's record of it and of the new lease.
    old_token=$(bao token lookup -format=json -accessor "$first_accessor" 2>/dev/null || true)
    new_lease=$(bao lease lookup -format=json "$(status_of maxtok leaseId)" 2>/dev/null || true)
  fi
  [ -n "$rotated" ] && [ $i -gt $((rotated + 8)) ] && break
  sleep 1
done
kubectl -n $NS delete dcred maxtok --wait=true --timeout=30s >/dev/null
# The operator replaces a lease token, and so rotates the token's leases, once a third of the token's
# life (at most 2 minutes) is left; the reconcile that does it (a login, then an issue) may take up
# to 2 s more. Judged on Vault's times: the old token's issue and expiry, the new lease's issue.
rotation_margin() { # rotation_margin OLD-TOKEN-LOOKUP-JSON NEW-LEASE-LOOKUP-JSON
  python3 - "$1" "$2" <<'PYEOF'
import datetime, json, sys
t = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
try:
    token, lease = json.loads(sys.argv[1])["data"], json.loads(sys.argv[2])["data"]
    issued, end, new = t(token["issue_time"]), t(token["expire_time"]), t(lease["issue_time"])
except (ValueError, KeyError, TypeError):
    print("Vault knew the old issuing token or the new lease no more when the rotation showed")
    sys.exit(1)
life = end - issued
promised = min(120.0, life / 3) - 2.0
print(f"new lease issued {end - new:.1f}s before the end of the old issuing token ({life:.1f}s life); "
      f"promised: at least {promised:.1f}s (a third of its life, less 2s for the rotating reconcile)")
sys.exit(0 if end - new >= promised else 1)
PYEOF
}
if [ -n "$rotated" ]; then
  verdict=$(rotation_margin "$old_token" "$new_lease") && ok "rotated ahead of the token's end: $verdict" || bad "rotated too late: $verdict"
  kubectl -n $NS get events --field-selector reason=Rotated,involvedObject.name=maxtok -o jsonpath='{.items[*].message}' | contains 'ends before the lease would' \
    && ok "the Event says why (issuing token ends first)" || bad "no Event naming the token's end"
  [ "$logins_failed" = 0 ] && ok "the Secret's credential logged in at every check across the rotation" || bad "$logins_failed failed logins across the rotation"
  [ "$(kubectl -n $NS get rs -l app=api2 -o name | wc -l)" = 2 ] && ok "one rollout of api2" || bad "api2 ReplicaSets: $(kubectl -n $NS get rs -l app=api2 -o name | wc -l)"
  [ "$(psql_admin "select count(*) from pg_roles where rolname='$first_user'")" = 0 ] && ok "first credential gone after the switch" || bad "first role $first_user still there"
else
  bad "no rotation before the token's max TTL ($(status_of maxtok conditions))"
fi

# 4. Rotation at max TTL with a restart target: new role, one new ReplicaSet, old role revoked only
#    after the rollout finished and rotationGracePeriod (3s) passed.
kubectl -n $NS create deployment api --image=example.invalid/api --replicas=2 >/dev/null
# New Pods count as available 3 s after they are Ready, so a revocation that does not wait for the
# rollout comes seconds before its end, not within the watch's latency of it.
kubectl -n $NS patch deployment api -p '{"spec": {"minReadySeconds": 3}}' >/dev/null
eventually 30 deployment_settled $NS api 2 || bad "Deployment never available"
rs_before=$(replicasets)
watch_rollout $NS api "$WORK/api-rollout"
# Rotated at 60% of the 45s max TTL, so the old lease would live 18s more: the rollout (about 6s)
# and the grace period end well before it, and the old lease must be revoked, not left to expire.
dcred short short short-db "  restartTargets: [{kind: Deployment, name: api}]
  rotateAtPercent: 60"
eventually 30 kubectl -n $NS get secret short-db || bad "Secret short-db never appeared"
short_user=$(secret_key short-db username); short_lease=$(status_of short leaseId); short_password=$(secret_key short-db password)
gen_before=$(kubectl -n $NS get deployment api -o jsonpath='{.metadata.generation}') # the rotation's rollout comes after it
if eventually 70 bash -c "[ \"\$(kubectl -n $NS get dcred short -o jsonpath='{.status.leaseId}')\" != \"$short_lease\" ]"; then
  new_user=$(secret_key short-db username); short_password=$(secret_key short-db password)
  [ "$new_user" != "$short_user" ] && ok "rotated at max TTL: $short_user -> $new_user" || bad "rotation kept the user"
  eventually 20 bash -c "[ \"\$(kubectl -n $NS get deploy api -o jsonpath='{.status.updatedReplicas}/{.status.availableReplicas}/{.status.replicas}')\" = 2/2/2 ]" || true
  rs_after=$(replicasets)
  [ "$(wc -w <<<"$rs_after")" = $(( $(wc -w <<<"$rs_before") + 1 )) ] && ok "exactly one new ReplicaSet ($rs_after)" || bad "ReplicaSets: $rs_before -> $rs_after"
  if eventually 30 bash -c "[ \"\$(psql -h $VK_PG_HOST -p $VK_PG_PORT -U postgres -d postgres -tAc \"select count(*) from pg_roles where rolname='$short_user'\")\" = 0 ]"; then
    ok "old role $short_user revoked"
  else
    bad "old role $short_user still present"
  fi
  # When: the Revoked Event against the moment the watch saw the rollout complete. The watch sees
  # it a little after the fact, so up to 0.5 s of the grace period may look used up.
  done_at=$(rollout_done_at "$WORK/api-rollout" "$gen_before"); revoked_at=$(event_time $NS short Revoked "$short_lease")
  if [ -z "$done_at" ]; then
    bad "the rollout of api never completed (last seen: $(tail -n 1 "$WORK/api-rollout"))"
  elif [ -z "$revoked_at" ]; then
    bad "no Revoked Event for $short_lease"
  elif at_least "$(seconds_between "$done_at" "$revoked_at")" 2.5; then
    ok "old lease revoked $(seconds_between "$done_at" "$revoked_at")s after the rollout completed (rotationGracePeriod 3s)"
  else
    bad "old lease revoked $(seconds_between "$done_at" "$revoked_at")s after the rollout completed; want the 3s rotationGracePeriod after it"
  fi
else
  bad "no rotation at max TTL ($(status_of short conditions))"
fi
kill $WATCH_PID 2>/dev/null || true; WATCH_PID=

# 5. High availability: a standby takes over within 15 s when the leader is killed and resumes the
#    same lease (no new credential, no rollout); a graceful shutdown releases the Lease at once.
kubectl -n $NS delete dcred short --wait=true --timeout=30s >/dev/null # stop its 45s rotations
eventually 20 bash -c "[ \"\$(kubectl -n $OP_NS get lease vaultkeeper-operator -o jsonpath='{.spec.holderIdentity}')\" = op-$OP_N ]" \
  || bad "op-$OP_N never became leader ($(holder))"
leader=op-$OP_N; LEADER_PID=$OP_PID
STANDBY_PORT=$(free_port)
start_operator "$STANDBY_PORT"; B_PID=$OP_PID; standby=op-$OP_N
sleep 3 # what is tested: for a while (the standby is ready) the leader keeps the Lease
[ "$(holder)" = "$leader" ] && ok "two replicas: $leader leads, $standby stands by" || bad "holder is $(holder), expected $leader"
lease=$(status_of app leaseId); roles_before=$(app_roles); rs_before=$(replicasets)
t0=$(date +%s.%N)
kill -9 "$LEADER_PID"; wait "$LEADER_PID" 2>/dev/null || true
if eventually 30 bash -c "[ \"\$(kubectl -n $OP_NS get lease vaultkeeper-operator -o jsonpath='{.spec.holderIdentity}')\" = $standby ]"; then
  took=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  python3 -c "import sys; sys.exit(0 if $took <= 15 else 1)" && ok "standby took over ${took}s after the leader was killed" || bad "takeover took ${took}s (> 15s)"
else
  bad "standby never took over ($(holder))"
fi
# Through a renewal by the new leader (nobody renews between the kill and the takeover).
app_user=$(secret_key app-db username); valid=$(valid_until "$app_user")
eventually 70 renewed_since "$app_user" "$valid" && ok "the new leader renewed the lease (VALID UNTIL $valid -> $(valid_until "$app_user"))" \
  || bad "the new leader never renewed the lease ($(status_of app conditions))"
[ "$(status_of app leaseId)" = "$lease" ] && ok "after failover: same lease" || bad "lease re-issued after failover"
[ "$(app_roles)" = "$roles_before" ] && ok "after failover: same PostgreSQL roles" || bad "roles changed after failover: $roles_before -> $(app_roles)"
[ "$(replicasets)" = "$rs_before" ] && ok "after failover: no rollout" || bad "ReplicaSets changed after failover"
kill -TERM "$B_PID"; wait "$B_PID" 2>/dev/null || true; B_PID=
[ -z "$(holder)" ] && ok "graceful shutdown released the Lease" || bad "Lease still held by $(holder) after SIGTERM"
OP_PID=
start_operator

# 6. Deleting the CR revokes the lease: the role disappears.
user=$(secret_key app-db username)
kubectl -n $NS delete dcred app --wait=true --timeout=30s >/dev/null
eventually 20 bash -c "[ \"\$(psql -h $VK_PG_HOST -p $VK_PG_PORT -U postgres -d postgres -tAc \"select count(*) from pg_roles where rolname='$user'\")\" = 0 ]" \
  && ok "deleting the CR revoked the lease (role $user gone)" || bad "role $user still there after delete"

# 7. No credential in logs, Events or status.
for u in "$short_password"; do
  grep -qF "$u" "$OP_LOG" && bad "password in operator log" || ok "password not in operator log"
  kubectl get events -A -o json | contains -F "$u" && bad "password in Events" || ok "password not in Events"
  kubectl -n $NS get dcred -o json | contains -F "$u" && bad "password in status" || ok "password not in CR"
done

if [ "$fail" -ne 0 ]; then
  echo "--- state for the failures above"
  kubectl -n $NS get dcred -o yaml || true
  kubectl -n $NS get events || true
  tail -n 40 "$OP_LOG"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
