# Helpers shared by the real-stack test scripts (sourced; they run inside `stack.py run`).
pass=0; fail=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }
bad() { echo "FAILED: $*"; fail=$((fail + 1)); }
eventually() { # eventually SECONDS CMD...: retries CMD until it succeeds
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $until ] || return 1; sleep 0.5; done
}
# The binaries `cargo build` wrote: under CARGO_TARGET_DIR when it is set, as cargo does, else ./target.
BUILD_DIR=$(realpath -m "${CARGO_TARGET_DIR:-target}/debug")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# contains [GREP-FLAGS] PATTERN: like `grep -q`, but reads all of its input. With `set -o pipefail`
# an early-exiting `grep -q` can SIGPIPE the writer and turn a match into a failed pipeline.
contains() { grep "$@" >/dev/null; }
psql_admin() { psql -h "$VK_PG_HOST" -p "$VK_PG_PORT" -U postgres -d postgres -tAc "$1"; }
# valid_until ROLE: the PostgreSQL role's VALID UNTIL; empty once the role is gone.
valid_until() { psql_admin "select rolvaliduntil from pg_roles where rolname='$1'"; }
# renewed_since ROLE VALID-UNTIL: the role's VALID UNTIL is later than it was. A role that is gone
# (its lease revoked or expired) does not count as renewed.
renewed_since() { [ "$(psql_admin "select rolvaliduntil > '$2'::timestamptz from pg_roles where rolname='$1'")" = t ]; }

# issuing_token LEASE-ID [FIELD]: the Vault token (FIELD client_token, the default) or its accessor
# (FIELD accessor) that created the lease, as OpenBao's unhashed audit log (VK_RAW_AUDIT=1) recorded
# the request that returned it. Fails when the log has no such response.
issuing_token() {
  python3 - "${VK_BAO_RAW_AUDIT_LOG:?needs the raw audit log (VK_RAW_AUDIT=1)}" "$1" "${2:-client_token}" <<'PYEOF'
import json, sys
log, lease, field = sys.argv[1:]
for line in open(log):
    entry = json.loads(line)
    response = entry.get("response") or {}
    if entry.get("type") == "response" and (response.get("secret") or {}).get("lease_id") == lease:
        value = (entry.get("auth") or {}).get(field)
        if value:
            print(value)
            sys.exit(0)
sys.exit(1)
PYEOF
}

# plaintext_in TEXT < SECRET-OR-LIST-JSON: prints "found" when TEXT is in a Secret as it is stored
# (in its metadata, or in a data value once base64-decoded, and again while the bytes still decode as
# base64, so a value that is merely encoded twice is caught too), "absent" when it is in none, and
# "none" when there is no Secret with data to look at; nothing when the input cannot be read.
plaintext_in() {
  python3 -c '
import base64, binascii, json, sys
needle = sys.argv[1].encode()
doc = json.load(sys.stdin)
def layers(raw, depth=0):
    yield raw
    if depth < 3:
        try:
            inner = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return
        yield from layers(inner, depth + 1)
secrets = [s for s in doc.get("items", [doc]) if s.get("data")]
found = any(needle in json.dumps(s.get("metadata", {})).encode()
            or any(needle in layer for value in s["data"].values() for layer in layers(base64.b64decode(value)))
            for s in secrets)
print("found" if found else "absent" if secrets else "none")
' "$1"
}

# deployment_settled NAMESPACE NAME REPLICAS: the controller saw the Deployment's spec and it has
# exactly REPLICAS replicas, all updated and available.
deployment_settled() {
  [ "$(kubectl -n "$1" get deployment "$2" -o jsonpath='{.metadata.generation}/{.status.replicas}/{.status.updatedReplicas}/{.status.availableReplicas}')" \
    = "$(kubectl -n "$1" get deployment "$2" -o jsonpath='{.status.observedGeneration}')/$3/$3/$3" ]
}
# watch_rollout NAMESPACE DEPLOYMENT FILE: in the background, appends a line to FILE for every state
# of the Deployment the API server reports (a watch, so within milliseconds), stamped with this
# machine's clock: "EPOCH generation observedGeneration spec.replicas replicas updated available".
# Sets WATCH_PID; kill it when done.
watch_rollout() {
  python3 -u -c '
import json, signal, subprocess, sys, time
ns, name, out = sys.argv[1:]
kubectl = subprocess.Popen(["kubectl", "-n", ns, "get", "deployment", name, "--watch", "-o", "json"], stdout=subprocess.PIPE, text=True)
signal.signal(signal.SIGTERM, lambda *_: (kubectl.terminate(), sys.exit(0)))
decoder, buf = json.JSONDecoder(), ""
with open(out, "a") as f:
    for line in kubectl.stdout:
        buf += line
        if line.rstrip() != "}":
            continue
        try:
            d, _ = decoder.raw_decode(buf.strip())
        except ValueError:
            continue
        buf = ""
        st = d.get("status", {})
        fields = [d["metadata"].get("generation", 0), st.get("observedGeneration", 0), d["spec"].get("replicas", 1),
                  st.get("replicas", 0), st.get("updatedReplicas", 0), st.get("availableReplicas", 0)]
        print(f"{time.time():.3f}", *fields, file=f, flush=True)
' "$1" "$2" "$3" &
  WATCH_PID=$!
}
# rollout_done_at FILE GENERATION: the first time in a watch_rollout FILE that a rollout of a
# template newer than GENERATION was complete, judged as `kubectl rollout status` does: the
# controller saw that template, every wanted replica is updated and available, no old one is left.
rollout_done_at() {
  awk -v g="$2" '$2 > g && $3 >= $2 && $6 >= $4 && $5 <= $6 && $7 >= $4 { print $1; exit }' "$1" 2>/dev/null || true
}
# event_time NAMESPACE OBJECT REASON TEXT: when the first Event of REASON about OBJECT whose note
# has TEXT happened (its eventTime, in epoch seconds); empty when there is none (or on errors).
event_time() {
  { kubectl -n "$1" get events --field-selector "reason=$3,involvedObject.name=$2" -o json || echo '{"items": []}'; } | python3 -c '
import datetime, json, sys
text = sys.argv[1]
times = sorted(e.get("eventTime") or e.get("firstTimestamp") for e in json.load(sys.stdin)["items"] if text in (e.get("message") or ""))
if times:
    print(datetime.datetime.fromisoformat(times[0].replace("Z", "+00:00")).timestamp())
' "$4"
}
# seconds_between EARLIER LATER: LATER - EARLIER (epoch seconds), to two decimals.
seconds_between() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$1" "$2"; }
# at_least A B: whether A >= B (decimal numbers).
at_least() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= float(sys.argv[2]) else 1)' "$1" "$2"; }
