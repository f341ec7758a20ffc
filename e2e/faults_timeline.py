#!/usr/bin/env python3
"""The evidence of e2e/faults.sh: a timeline of everything that happened to the test's Secrets,
resources and leases, and the checks run over windows of it.

`record TIMELINE`: appends one tab-separated line per observation until killed:
  <t> secret <name> <event> <resourceVersion> <gen> <consistent> <keys> <lease-id>
      every watch event of a Secret in $NS (through the API server directly, not the fault proxy);
      gen/consistent only for $KV_SECRET: its `gen` key, and whether the data is exactly KV
      version <gen> as the test wrote it ({gen: N, password: $CANARY-N}). Values never appear.
  <t> ready <kind>/<name> <status> <reason>       each change of a resource's Ready condition
  <t> leases <vault role> <count> <ids,...>       every second: the live leases of $MOUNT/creds/<role>
                                                  (each named by the last segment of its lease ID)
  <t> pgroles <prefix> <count>                    every second: PostgreSQL roles named <prefix>*
`check TIMELINE FROM TO CHECK ARGS...`: exit 0 when CHECK holds in [FROM, TO], printing what it saw.
"""

import json
import os
import subprocess
import sys
import threading
import time

lock = threading.Lock()
watches = {}  # resource -> its current kubectl process, stopped with the recorder


def emit(out, *fields) -> None:
    with lock:
        out.write("\t".join([f"{time.time():.3f}", *map(str, fields)]) + "\n")
        out.flush()


def decode(value: str) -> str:
    import base64

    return base64.b64decode(value).decode(errors="replace")


def json_stream(proc):
    """The JSON objects `kubectl get -w -o json` prints one after another."""
    decoder, buf = json.JSONDecoder(), ""
    for line in proc.stdout:
        buf += line
        while True:
            buf = buf.lstrip()
            try:
                obj, end = decoder.raw_decode(buf)
            except json.JSONDecodeError:
                break
            buf = buf[end:]
            yield obj


def watch(out, resource: str, on_event) -> None:
    while True:  # a watch the API server ends is started again
        proc = subprocess.Popen(["kubectl", "-n", os.environ["NS"], "get", resource, "-w", "--output-watch-events", "-o", "json"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        watches[resource] = proc
        for event in json_stream(proc):
            on_event(out, event.get("type", "?"), event.get("object", {}))
        proc.wait()
        time.sleep(0.5)


def on_secret(out, kind: str, secret: dict) -> None:
    meta = secret.get("metadata", {})
    name, data = meta.get("name", "?"), secret.get("data") or {}
    gen, consistent = "-", "-"
    if name == os.environ["KV_SECRET"]:
        text = {k: decode(v) for k, v in data.items()}
        gen = text.get("gen", "-")
        consistent = int(text == {"gen": gen, "password": f"{os.environ['CANARY']}-{gen}"})
    lease = (meta.get("annotations") or {}).get("vaultkeeper.dev/lease-id", "-")
    emit(out, "secret", name, kind, meta.get("resourceVersion", "?"), gen, consistent, len(data), lease)


def on_resource(kind_name: str):
    last = {}

    def handle(out, kind: str, obj: dict) -> None:
        name = obj.get("metadata", {}).get("name", "?")
        ready = next((c for c in (obj.get("status") or {}).get("conditions", []) if c.get("type") == "Ready"), {})
        state = ("DELETED", "-") if kind == "DELETED" else (ready.get("status", "-"), ready.get("reason", "-"))
        if last.get(name) != state:
            last[name] = state
            emit(out, "ready", f"{kind_name}/{name}", *state)

    return handle


def poll(out, roles: list, prefixes: list) -> None:
    while True:
        started = time.monotonic()
        for role in roles:
            r = subprocess.run(["bao", "list", "-format=json", f"sys/leases/lookup/{os.environ['MOUNT']}/creds/{role}"],
                               capture_output=True, text=True)
            # `bao list` exits 2 with nothing on stdout when there is no lease at all.
            ids = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else []
            emit(out, "leases", role, len(ids) if r.returncode in (0, 2) else "error", ",".join(ids) or "-")
        query = " union all ".join(f"select count(*) from pg_roles where rolname like '{p}%'" for p in prefixes)
        r = subprocess.run(["psql", "-h", os.environ["VK_PG_HOST"], "-p", os.environ["VK_PG_PORT"], "-U", "postgres", "-d", "postgres",
                            "-tAc", query], capture_output=True, text=True)
        counts = r.stdout.split() if r.returncode == 0 else ["error"] * len(prefixes)
        for p, c in zip(prefixes, counts):
            emit(out, "pgroles", p, c)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


def record(path: str) -> None:
    import signal

    def stop(_signum, _frame):
        for proc in list(watches.values()):
            proc.terminate()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    out = open(path, "a")
    threads = [threading.Thread(target=watch, args=(out, "secrets", on_secret), daemon=True),
               threading.Thread(target=watch, args=(out, "vaultsecrets", on_resource("vsec")), daemon=True),
               threading.Thread(target=watch, args=(out, "dynamiccredentials", on_resource("dcred")), daemon=True),
               threading.Thread(target=poll, args=(out, os.environ["ROLES"].split(), os.environ["PG_PREFIXES"].split()), daemon=True)]
    for t in threads:
        t.start()
    while True:
        time.sleep(3600)


# --- checks ---------------------------------------------------------------------------------
def lines(path: str):
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 3:
                yield float(fields[0]), fields[1], fields[2:]


def check(path: str, start: float, end: float, name: str, args: list) -> bool:
    inside = lambda t: start <= t <= end  # noqa: E731
    rows = list(lines(path))

    if name == "kv-never-old":
        # Every state of the Secret in the window: exactly a version the test wrote, never empty,
        # never deleted, and never older than a version it held before (also before the window).
        secret, problems, seen, newest = args[0], [], [], 0
        for t, kind, f in rows:
            if kind != "secret" or f[0] != secret or t > end:
                continue
            event, rv, gen, consistent, keys = f[1], f[2], f[3], f[4], int(f[5])
            label = f"rv {rv} at +{t - start:.1f}s"
            problem = None
            if event == "DELETED" or keys == 0:
                problem = f"{'deleted' if event == 'DELETED' else 'emptied'} ({label})"
            elif consistent != "1" or not gen.isdigit():
                problem = f"data is no version the test wrote ({label})"
            elif int(gen) < newest:
                problem = f"rewritten with old data: version {gen} after version {newest} ({label})"
            if gen.isdigit():
                newest = max(newest, int(gen))
            if inside(t):
                seen.append(f"v{gen}" if gen.isdigit() else "empty" if keys == 0 else "?")
                if problem:
                    problems.append(problem)
        print(f"versions written in the window: {' '.join(seen) or 'none'}" + (f"; {'; '.join(problems)}" if problems else ""))
        return not problems

    if name == "secret-untouched":
        # The Secret was not written at all in the window (same resourceVersion throughout).
        events = [f"{f[1]} rv {f[2]} at +{t - start:.1f}s" for t, kind, f in rows if kind == "secret" and f[0] == args[0] and inside(t)]
        print(f"writes in the window: {'; '.join(events) or 'none'}")
        return not events

    if name == "secret-kept":
        # Every state of the Secret in the window carries data and a lease annotation.
        bad = [f"{f[1]} rv {f[2]} keys {f[5]} lease {f[6]}" for t, kind, f in rows
               if kind == "secret" and f[0] == args[0] and inside(t) and (f[1] == "DELETED" or f[5] == "0" or f[6] == "-")]
        writes = sum(1 for t, kind, f in rows if kind == "secret" and f[0] == args[0] and inside(t))
        print(f"{writes} write(s) in the window" + (f"; bad states: {'; '.join(bad)}" if bad else ""))
        return not bad

    if name == "leases":
        # At every sample: at most MAX live leases under the role (and, with IDS, only those).
        role, most = args[0], int(args[1])
        # `bao list` names a lease by its last path segment.
        allowed = {a.rsplit("/", 1)[-1] for a in args[2].split(",")} if len(args) > 2 else None
        samples = [(t, f) for t, kind, f in rows if kind == "leases" and f[0] == role and inside(t)]
        counts = [int(f[1]) for _, f in samples if f[1].isdigit()]
        errors = sum(1 for _, f in samples if not f[1].isdigit())
        ids = sorted({i for _, f in samples for i in f[2].split(",") if i != "-"})
        over = [f"{f[1]} ({f[2]}) at +{t - start:.1f}s" for t, f in samples if f[1].isdigit() and int(f[1]) > most]
        strange = [i for i in ids if allowed is not None and i not in allowed]
        print(f"{len(samples)} samples, live leases min {min(counts, default='-')} max {max(counts, default='-')}, "
              f"{len(ids)} distinct lease(s) seen" + (f", {errors} failed samples" if errors else "")
              + (f"; over {most} in {len(over)} samples, first: {', '.join(over[:3])}" if over else "") + (f"; unexpected leases: {', '.join(strange)}" if strange else ""))
        return bool(samples) and not over and not strange and errors < len(samples) / 4

    if name == "pgroles":
        prefix, most = args[0], int(args[1])
        samples = [(t, f[1]) for t, kind, f in rows if kind == "pgroles" and f[0] == prefix and inside(t)]
        counts = [int(c) for _, c in samples if c.isdigit()]
        over = [f"{c} at +{t - start:.1f}s" for t, c in samples if c.isdigit() and int(c) > most]
        print(f"{len(samples)} samples, PostgreSQL roles {prefix}* min {min(counts, default='-')} max {max(counts, default='-')}"
              + (f"; over {most}: {', '.join(over[:5])}" if over else ""))
        return bool(counts) and not over

    if name == "ready-stayed":
        # Ready=True when the window opened, and never anything else inside it.
        before = [f for t, kind, f in rows if kind == "ready" and f[0] == args[0] and t < start]
        changes = [f"{f[1]} {f[2]} at +{t - start:.1f}s" for t, kind, f in rows if kind == "ready" and f[0] == args[0] and inside(t)]
        was = before[-1][1] if before else "-"
        print(f"Ready={was} at the start; changes: {'; '.join(changes) or 'none'}")
        return was == "True" and not changes

    if name == "ready-reported":
        # The outage showed in the condition at some point of the window (Ready=False, REASON).
        changes = [(t, f) for t, kind, f in rows if kind == "ready" and f[0] == args[0] and inside(t)]
        print("changes: " + ("; ".join(f"{f[1]} {f[2]} at +{t - start:.1f}s" for t, f in changes) or "none"))
        return any(f[1] == "False" and f[2] == args[1] for _, f in changes)

    raise SystemExit(f"unknown check {name}")


def main() -> int:
    if sys.argv[1] == "record":
        record(sys.argv[2])
        return 0
    if sys.argv[1] == "check":
        return 0 if check(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6:]) else 1
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
