#!/usr/bin/env python3
"""Chaos: the operator killed with SIGKILL at random moments while N DynamicCredentials renew and
rotate, against the real stack (OpenBao's database engine, real PostgreSQL); prints figures and what
held, asserts nothing outside --smoke.

Run through `make chaos-kill` (hack/bench.sh with BENCH=chaos_kill and OpenBao's unhashed audit log).
Each DynamicCredential restarts its own Deployment (no replicas, so a rollout is a new ReplicaSet and
costs no Pod) on rotation. Once all N are Ready the operator is killed `--kills` times, each after a
random pause, and started again at once; then it runs undisturbed until every credential issued
before the last kill has ended or been revoked. What is checked, from a watch of the Secrets and
Deployments and from OpenBao's audit log (every issuance, renewal and revocation):
  - the live leases at the end are exactly the N the Secrets hold (Vault's lease list);
  - no lease was revoked while a Secret held it, or within rotationGracePeriod of leaving it;
  - no lease ended (its last issue or renewal plus the TTL Vault granted) while a Secret held it;
  - credentials issued that never reached a Secret (a kill between issuing and writing leaves one,
    unknown to all but Vault, until its TTL ends): how many, against the kills;
  - no rollout that a new credential did not call for: per Deployment, template changes against the
    credentials its Secret held after the first.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_dynamic import ROLE, dynamic_credential, pg_roles, prepare
from benchlib import (GROUP, ROOT, Kube, dc_ready, metrics, rss_kib, seconds_of, start_operator, stop_operator, total,
                      verdict)

LEASE_ID = "vaultkeeper.dev/lease-id"
RESTARTED_FOR = "vaultkeeper.dev/restarted-for"
RETIRING = "vaultkeeper.dev/retiring-leases"


def deployment(ns: str, name: str) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}}


def follow(kube: Kube, path: str, on_object, stop: threading.Event, broken: list) -> threading.Thread:
    """Lists then watches `path` (a list URL with a query) from where the list ended, and again from
    the last resourceVersion whenever the API server ends the watch; on_object(type, object, wall time)."""
    def run() -> None:
        listed = kube.request("GET", path)
        for obj in listed["items"]:
            on_object("ADDED", obj, time.time())
        rv = listed["metadata"]["resourceVersion"]
        while not stop.is_set():
            try:
                def seen(typ, obj, _t):
                    nonlocal rv
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if typ != "BOOKMARK":
                        on_object(typ, obj, time.time())
                kube.watch(f"{path}&resourceVersion={rv}", seen, stop)
            except Exception as e:  # noqa: BLE001: a watch that cannot resume makes the figures incomplete
                if not stop.is_set():
                    broken.append(f"watch of {path} failed: {e}")
                return
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def audit_entries(log: Path, since: int):
    """OpenBao's audit log after byte `since`: (entry, its time as Unix seconds)."""
    from datetime import datetime
    with log.open() as f:
        f.seek(since)
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            yield entry, datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


def audit_events(log: Path, since: int) -> dict:
    """From OpenBao's unhashed audit log (after byte `since`): issued[lease] = time,
    renewed[lease] = [(time, increment asked)], revoked[lease] = [time], renewals OpenBao answered
    with an error, failed[lease] = [(time, error)], and issued_in[lease] = the namespace of the
    identity that asked; times as Unix seconds. (The log records
    no TTLs: the role's TTL and max TTL give them.)"""
    issued, renewed, revoked, failed, issued_in = {}, {}, {}, {}, {}
    for entry, t in audit_entries(log, since):
        if entry.get("type") != "response":
            continue
        request, response = entry.get("request") or {}, entry.get("response") or {}
        path = request.get("path", "")
        if entry.get("error"):
            if path.startswith("sys/leases/renew"):
                lease = (request.get("data") or {}).get("lease_id") or path.removeprefix("sys/leases/renew/")
                failed.setdefault(lease, []).append((t, entry["error"]))
            continue
        secret = response.get("secret") or {}
        if path == f"database/creds/{ROLE}" and secret.get("lease_id"):
            issued[secret["lease_id"]] = t
            # Whose it is: the namespace of the identity that asked (each namespace has its own).
            meta = (entry.get("auth") or {}).get("metadata") or {}
            issued_in[secret["lease_id"]] = meta.get("service_account_namespace", "")
        elif path.startswith("sys/leases/renew"):
            data = request.get("data") or {}
            lease = data.get("lease_id") or path.removeprefix("sys/leases/renew/")
            renewed.setdefault(lease, []).append((t, float(data.get("increment") or 0)))
        elif path.startswith("sys/leases/revoke") and not path.startswith("sys/leases/revoke-"):
            lease = (request.get("data") or {}).get("lease_id") or path.removeprefix("sys/leases/revoke/")
            revoked.setdefault(lease, []).append(t)
    return {"issued": issued, "renewed": renewed, "revoked": revoked, "failed": failed, "issued_in": issued_in}


def lease_ends(issued_at: float, renewals: list, ttl: float, max_ttl: float) -> list:
    """[(time, end)]: after the issue and after each renewal, when the lease ends (a renewal asks for
    its increment, capped at the role's max TTL from the issue; 0 asks for the role's TTL)."""
    hard = issued_at + max_ttl
    out = [(issued_at, min(issued_at + ttl, hard))]
    for t, increment in sorted(renewals):
        out.append((t, min(t + (increment or ttl), hard)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="DynamicCredentials (each with its own Deployment)")
    ap.add_argument("--namespaces", type=int, default=10, help="namespaces (one identity each)")
    ap.add_argument("--kills", type=int, default=100, help="SIGKILLs of the operator")
    ap.add_argument("--pause", default="0.5,6", help="seconds between a start and its kill: uniform in MIN,MAX")
    ap.add_argument("--ttl", default="60s", help="the database role's default_ttl (renewal at 67 %% of it)")
    ap.add_argument("--max-ttl", default="180s", help="the role's max_ttl (rotation at 80 %% of the lease's life)")
    ap.add_argument("--grace", default="10s", help="rotationGracePeriod (old credential revoked after it)")
    ap.add_argument("--new-identity", action="store_true",
                    help="start each process under a new name (a new Pod: it waits for the killed one's leader "
                         "Lease to run out) instead of the same name (a container restarted in its Pod takes "
                         "its Lease back at once)")
    ap.add_argument("--seed", type=int, default=None, help="random seed of the kill moments (printed)")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--operator", default=str(target / "release/vaultkeeper-operator"))
    ap.add_argument("--workers", type=int, default=16, help="parallel connections of the creating client")
    ap.add_argument("--smoke", action="store_true",
                    help="the short form CI runs (e2e/bench_smoke.sh): small sizes, exit 1 if a guarantee did not hold")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.namespaces, args.kills, args.pause = 12, 2, 10, "0.5,3"
        # Rotation at 80 % of 45 s leaves 9 s for the restart's debounce, the rollout and the grace
        # period, so old leases are revoked (with less, they end on their own first).
        args.ttl, args.max_ttl, args.grace = "15s", "45s", "2s"
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    pause_min, pause_max = (float(x) for x in args.pause.split(","))
    raw_audit = os.environ.get("VK_BAO_RAW_AUDIT_LOG")
    if not raw_audit:
        print("needs OpenBao's unhashed audit log: run inside a stack started with VK_RAW_AUDIT=1 (make chaos-kill does)")
        return 2
    audit = Path(raw_audit)

    kube = Kube()
    namespaces = [f"chaos-{i}" for i in range(args.namespaces)]
    prepare(kube, namespaces, args.ttl, args.max_ttl)
    names = [f"c{i:05d}" for i in range(args.n)]
    where = {name: namespaces[i % len(namespaces)] for i, name in enumerate(names)}
    audit_start = audit.stat().st_size

    # Timelines from the API: per Secret the lease it held from when; per Deployment its stamps.
    broken: list = []
    held: dict = {}      # "ns/name" -> [(wall time, lease id)], a new entry only when the lease changes
    stamps: dict = {}    # "ns/name" -> [(wall time, restarted-for stamp)], likewise
    lock = threading.Lock()

    def on_secret(typ, obj, t):
        key = obj["metadata"]["namespace"] + "/" + obj["metadata"]["name"]
        lease = (obj["metadata"].get("annotations") or {}).get(LEASE_ID, "") if typ != "DELETED" else ""
        with lock:
            line = held.setdefault(key, [])
            if not line or line[-1][1] != lease:
                line.append((t, lease))

    def on_deployment(typ, obj, t):
        key = obj["metadata"]["namespace"] + "/" + obj["metadata"]["name"]
        ann = ((obj["spec"]["template"].get("metadata") or {}).get("annotations") or {})
        stamp = ann.get(RESTARTED_FOR, "")
        with lock:
            line = stamps.setdefault(key, [])
            if not line or line[-1][1] != stamp:
                line.append((t, stamp))

    stop = threading.Event()
    follow(kube, "/api/v1/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvaultkeeper", on_secret, stop, broken)
    follow(kube, "/apis/apps/v1/deployments?labelSelector=", on_deployment, stop, broken)

    def start(append: bool):
        identity = [] if args.new_identity else ["--identity", "chaos-kill-0"]
        return start_operator(args.operator, "operator-chaos-kill.log", *identity, append=append)

    op, _ = start(False)
    starts = 1
    try:
        print(f"creating {args.n} DynamicCredentials and their Deployments ...", flush=True)
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda n: kube.request("POST", f"/apis/apps/v1/namespaces/{where[n]}/deployments",
                                                 deployment(where[n], n)), names))
            list(pool.map(lambda n: kube.request("POST", f"{GROUP}/namespaces/{where[n]}/dynamiccredentials",
                                                 dynamic_credential(where[n], n, args.grace, restart=n)), names))
        while True:
            items = kube.request("GET", f"{GROUP}/dynamiccredentials")["items"]
            ready = sum(1 for o in items if o["metadata"]["namespace"] in namespaces and dc_ready(o))
            if ready >= args.n:
                break
            if time.monotonic() - t0 > 900:
                raise RuntimeError(f"only {ready}/{args.n} Ready after 900 s")
            time.sleep(0.5)
        print(f"  all {args.n} Ready after {time.monotonic() - t0:.1f} s", flush=True)

        # What one restart costs: the time until a new process has reconciled all N once, and what
        # it wrote and asked Vault meanwhile.
        op.kill()
        op.wait()
        op, port = start(True)
        starts += 1
        r0 = time.monotonic()
        while True:
            m = metrics(port)
            if total(m, "vaultkeeper_syncs_total", 'kind="DynamicCredential"') >= args.n or time.monotonic() - r0 > 300:
                break
            time.sleep(0.2)
        restart_cost = (time.monotonic() - r0, total(m, "vaultkeeper_syncs_total", 'kind="DynamicCredential"'),
                        total(m, "vaultkeeper_kube_writes_total"), total(m, "vaultkeeper_vault_requests_total"))
        print(f"  after a restart, {restart_cost[1]:.0f} reconciles in {restart_cost[0]:.1f} s "
              f"({restart_cost[2]:.0f} Kubernetes writes, {restart_cost[3]:.0f} Vault requests)", flush=True)

        print(f"killing the operator {args.kills} times (pauses {pause_min}-{pause_max} s, seed {seed}) ...", flush=True)
        k0 = time.monotonic()
        kill_times, peak = [], 0
        for _ in range(args.kills):
            time.sleep(rng.uniform(pause_min, pause_max))
            peak = max(peak, rss_kib(op.pid, "VmHWM"))
            op.kill()
            op.wait()
            kill_times.append(time.time())
            op, _ = start(True)
            starts += 1
        killing = time.monotonic() - k0
        # Undisturbed until every credential issued before the last kill has ended (its TTL) or,
        # replaced, been revoked after the grace period.
        settle = seconds_of(args.ttl) + seconds_of(args.grace) + 20
        print(f"  {args.kills} kills in {killing:.0f} s; running undisturbed for {settle:.0f} s ...", flush=True)
        time.sleep(settle)
        peak = max(peak, rss_kib(op.pid, "VmHWM"))
        # Stopped (gracefully) before the snapshot, so that nothing moves while it is taken.
        stop_operator(op)
        time.sleep(2)  # (the watches catch up)
        end = time.time()
        live = live_lease_ids()
        end_roles = pg_roles()
        items = [o for o in kube.request("GET", f"{GROUP}/dynamiccredentials")["items"]
                 if o["metadata"]["namespace"] in namespaces]
        ready_end = sum(1 for o in items if dc_ready(o))
        # Replaced leases still in their grace period (or waiting for a rollout), as the statuses
        # and the Secrets (written first) record them.
        retiring = {r["leaseId"] for o in items for r in (o.get("status") or {}).get("retiringLeases", [])}
        for sec in kube.request("GET", "/api/v1/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvaultkeeper")["items"]:
            if sec["metadata"]["namespace"] in namespaces:
                recorded = (sec["metadata"].get("annotations") or {}).get(RETIRING, "[]")
                retiring |= {r.get("leaseId") for r in json.loads(recorded) if isinstance(r, dict)}
    finally:
        stop_operator(op)
        stop.set()

    with lock:
        held_now = {k: v[:] for k, v in held.items() if k.split("/")[0] in namespaces}
        stamps_now = {k: v[:] for k, v in stamps.items() if k.split("/")[0] in namespaces}
    ev = audit_events(audit, audit_start)
    issued, renewed, revoked, renew_failed = ev["issued"], ev["renewed"], ev["revoked"], ev["failed"]
    grace = seconds_of(args.grace)

    in_secrets = {line[-1][1] for line in held_now.values() if line and line[-1][1]}
    ever_held = {lease for line in held_now.values() for _, lease in line if lease}
    # Spans of time each lease was in a Secret: (from, to) with to = when it was replaced (or the end).
    spans: dict = {}
    for line in held_now.values():
        for (t, lease), nxt in zip(line, line[1:] + [(end, None)]):
            if lease:
                spans.setdefault(lease, []).append((t, nxt[0]))
    ttl, max_ttl = seconds_of(args.ttl), seconds_of(args.max_ttl)
    chains = {lease: lease_ends(t, renewed.get(lease, []), ttl, max_ttl) for lease, t in issued.items()}

    def end_at(lease: str, t: float) -> float:
        """When the lease ended (or was to end) as it stood at `t`."""
        ends = [e for at, e in chains.get(lease, []) if at <= t]
        return ends[-1] if ends else float("inf")

    revoked_in_use, revoked_in_grace, revoked_ended, ended_in_use, details = [], [], [], [], []
    for lease, times in revoked.items():
        for t in times:
            for a, b in spans.get(lease, []):
                if not a <= t < b + grace - 0.5:  # (half a second for the watch's delay)
                    continue
                if t >= end_at(lease, t):
                    revoked_ended.append(lease)  # the cleanup of a lease that had ended: not early
                elif t < b:
                    revoked_in_use.append(lease)
                    details.append(f"{lease.rsplit('/', 1)[-1]}: in its Secret {a - issued.get(lease, a):+.1f}.."
                                   f"{b - issued.get(lease, a):+.1f} s after its issue, revoked at "
                                   f"{t - issued.get(lease, a):+.1f} s")
                else:
                    revoked_in_grace.append(lease)
                    details.append(f"{lease.rsplit('/', 1)[-1]}: replaced in its Secret, revoked {t - b:.2f} s later "
                                   f"(grace {grace:.0f} s)")
    for lease, lease_spans in spans.items():
        if lease not in chains:
            continue  # issued before the audit window (not in this run)
        chain = chains[lease]
        # It ended in use if, while a Secret held it, its end passed before the next renewal (a
        # second for the watch's delay).
        nexts = [t for t, _ in chain[1:]] + [float("inf")]
        if any(a <= e < min(b, nxt) - 1.0 for a, b in lease_spans for (_, e), nxt in zip(chain, nexts)):
            ended_in_use.append(lease)
            t_issue = issued[lease]
            details.append(f"{lease.rsplit('/', 1)[-1]}: ended at "
                           f"{', '.join(f'{e - t_issue:+.1f}' for _, e in chain)} s after its issue (after it and "
                           f"each renewal), in its Secret until {max(b for _, b in lease_spans) - t_issue:+.1f} s")
    orphans = [lease for lease in issued if lease not in ever_held]
    orphans_live = [lease for lease in orphans if lease in live]
    rotations = sum(max(0, len([x for x in line if x[1]]) - 1) for line in held_now.values())
    rollouts = sum(len([x for x in line if x[1]]) for line in stamps_now.values())
    excess = 0
    for key, line in stamps_now.items():
        restarts = len([x for x in line if x[1]])
        credentials = len([x for x in held_now.get(key, []) if x[1]])
        excess += max(0, restarts - max(0, credentials - 1))

    print()
    print(f"Chaos, kill -9: N={args.n} DynamicCredentials in {len(namespaces)} namespaces, TTL {args.ttl}, "
          f"max TTL {args.max_ttl}, grace {args.grace}; {args.kills} kills in {killing:.0f} s (seed {seed}), "
          f"{starts} operator starts ({'each under a new name' if args.new_identity else 'under one name'})")
    print(f"  Ready at the end                          {ready_end}/{args.n}")
    print(f"  one restart: all N reconciled once in     {restart_cost[0]:.1f} s ({restart_cost[2]:.0f} Kubernetes writes, "
          f"{restart_cost[3]:.0f} Vault requests)")
    print(f"  live leases at the end                    {len(live)}: {len(live & in_secrets)} the Secrets hold (of "
          f"{len(in_secrets)}), {len((live - in_secrets) & retiring)} replaced ones in their grace period, "
          f"{len(live - in_secrets - retiring)} others")
    for lease in sorted(live - in_secrets - retiring)[:5]:
        # Where each "other" came from, for a diagnosis: when issued, held, renewed, revoked.
        spans_of = [(round(a - end), round(b - end)) for a, b in spans.get(lease, [])]
        print(f"    other: {lease} issued {round(issued.get(lease, end) - end)} s, held {spans_of or 'never'}, "
              f"last renewed {round(max([t for t, _ in renewed.get(lease, [])], default=end) - end)} s, "
              f"revocations {len(revoked.get(lease, []))} (times relative to the end)")
    print(f"  PostgreSQL roles at the end               {end_roles}")
    print(f"  issued in the run (audit log)             {len(issued)}; rotations seen in the Secrets {rotations}; "
          f"renewals {sum(len(v) for v in renewed.values())}; revocations {sum(len(v) for v in revoked.values())}")
    print(f"  issued, never written to a Secret         {len(orphans)} (kills: {args.kills}; still live at the end: "
          f"{len(orphans_live)})")
    print(f"  renewals OpenBao answered with an error   {sum(len(v) for v in renew_failed.values())} "
          f"(of {len(renew_failed)} leases; {len(set(renew_failed) & set(ended_in_use))} of them ended in use)")
    print(f"  revoked while a Secret held it            {len(revoked_in_use)}")
    print(f"  revoked within the grace period           {len(revoked_in_grace)}")
    print(f"  ended (TTL passed) while a Secret held it {len(ended_in_use)} (and then revoked before its replacement: "
          f"{len(revoked_ended)})")
    print(f"  rollouts (template changes)               {rollouts}; not called for by a new credential: {excess}")
    print(f"  operator peak RSS                         {peak / 1024:.1f} MiB (highest VmHWM of its {starts} processes)")
    if os.environ.get("VK_CHAOS_DUMP"):  # the timelines, for looking into a failure
        Path(os.environ["VK_CHAOS_DUMP"]).write_text(json.dumps({
            "held": held_now, "stamps": stamps_now, "issued": issued, "renewed": renewed, "revoked": revoked,
            "renew_failed": renew_failed, "ended_in_use": ended_in_use,
            "live": sorted(live), "kills": kill_times}))
    for line in details[:5]:
        print(f"    {line}")
    for b in broken:
        print(f"  measurement incomplete: {b}")

    failed = list(broken)
    if ready_end != args.n:
        failed.append(f"{args.n - ready_end} not Ready at the end")
    if live - retiring != in_secrets or len(in_secrets) != args.n:
        failed.append(f"{len(live - retiring)} live leases at the end besides those in their grace period, "
                      f"not exactly the {args.n} the Secrets hold")
    if revoked_in_use or revoked_in_grace:
        failed.append(f"revoked early: {len(revoked_in_use)} in use, {len(revoked_in_grace)} in their grace period")
    if args.smoke and not revoked:
        failed.append("no replaced lease was revoked, so the early-revocation checks saw nothing")
    if ended_in_use:
        failed.append(f"{len(ended_in_use)} leases ended while a Secret held them")
    if len(orphans) > args.kills:
        failed.append(f"{len(orphans)} credentials issued and never written, more than the {args.kills} kills")
    if excess:
        failed.append(f"{excess} rollouts no new credential called for")
    return verdict(failed, args.smoke)


def live_lease_ids() -> set:
    out = subprocess.run(["bao", "list", "-format=json", f"sys/leases/lookup/database/creds/{ROLE}"],
                         capture_output=True, text=True)
    keys = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []
    return {f"database/creds/{ROLE}/{k}" for k in keys}


if __name__ == "__main__":
    sys.exit(main())
