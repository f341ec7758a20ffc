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
