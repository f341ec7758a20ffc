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
