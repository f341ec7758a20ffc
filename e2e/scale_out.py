#!/usr/bin/env python3
"""Scale-out: operator replicas sharing the resources by shard (`--shards`), against the real stack;
prints figures and what held, asserts nothing outside --smoke.

Run through `make scale-out` (hack/bench.sh with BENCH=scale_out). R replicas start with
`--shards S` and names of their own. Once the shards are spread (each replica holds its fair
share, S/R rounded up), N VaultSecrets in M namespaces are created by a parallel client and
synced. Measured: each replica's shards, reconciles and RSS. Then one replica is killed (SIGKILL)
and, at that moment, a VaultSecret is created in a namespace of each shard it held: the time until
they are all Ready is the takeover (target 15 s). OpenBao's audit log records each request's
User-Agent, which names the replica that sent it; from it, every shard's reads came from one
replica at a time: no shard changed hands before the kill, and each of the killed replica's
shards changed hands once, to a survivor, after it.
"""

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_vaultsecret import kv_identity, kv_put, vault_secret
from benchlib import (GROUP, ROOT, Kube, dc_ready, ensure_namespace, ensure_service_account, metrics, rss_kib,
                      start_operator, stop_operator, total, verdict, wait_all_ready, watch_secrets)
from chaos_kill import audit_entries
from chaos_restart import until

OPERATOR_NS = "vaultkeeper-system"
AGENT = re.compile(r"vaultkeeper-operator/\S+ \(([^)]+)\)")


def shard_of(namespace: str, shards: int) -> int:
    """The operator's shard of a namespace (operator/src/shards.rs): FNV-1a 64 of its name."""
    h = 0xCBF29CE484222325
    for byte in namespace.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % max(shards, 1)


def holders(kube: Kube) -> dict:
    """shard -> the replica its Lease names (empty when given back)."""
    items = kube.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NS}/leases"
                                "?labelSelector=vaultkeeper.dev%2Flease%3Dshard")["items"]
    return {int(i["metadata"]["name"].rsplit("-", 1)[1]): (i.get("spec") or {}).get("holderIdentity") or ""
            for i in items}


def handovers(audit: Path, since: int, namespaces: list, shards: int) -> dict:
    """From the audit log after byte `since`: shard -> [(replica, first, last)], the runs of requests
    by one replica, in time order, made as the identities of `namespaces` (the namespace a request
    is for is that of the ServiceAccount it logged in as: other tests' resources may read the same
    paths from other namespaces)."""
    runs: dict = {}
    ours = set(namespaces)
    for entry, t in audit_entries(audit, since):
        if entry.get("type") != "request":
            continue
        request = entry.get("request") or {}
        namespace = ((entry.get("auth") or {}).get("metadata") or {}).get("service_account_namespace")
        if namespace not in ours or not (request.get("path") or "").startswith("secret/"):
            continue
        agent = AGENT.search(" ".join((request.get("headers") or {}).get("user-agent") or []))
        if not agent:
            continue
        line = runs.setdefault(shard_of(namespace, shards), [])
        if line and line[-1][0] == agent.group(1):
            line[-1][2] = t
        else:
            line.append([agent.group(1), t, t])
    return runs


def figures(op, port: int) -> tuple:
    """A replica's shards, reconciles that wrote and that found nothing changed, RSS and peak (KiB)."""
    m = metrics(port)
    return (total(m, "vaultkeeper_shards_held"), total(m, "vaultkeeper_syncs_total", 'result="synced"'),
            total(m, "vaultkeeper_syncs_total", 'result="unchanged"'), rss_kib(op.pid, "VmRSS"), rss_kib(op.pid, "VmHWM"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--shards", type=int, default=12)
    ap.add_argument("--n", type=int, default=20000, help="VaultSecrets")
    ap.add_argument("--namespaces", type=int, default=100)
    ap.add_argument("--refresh", default="60s", help="the VaultSecrets' refreshInterval")
    ap.add_argument("--lease-duration", default="10s", help="the operators' --lease-duration")
    ap.add_argument("--after", type=float, default=30, help="seconds of running after the takeover")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--operator", default=str(target / "release/vaultkeeper-operator"))
    ap.add_argument("--workers", type=int, default=16, help="parallel connections of the creating client")
    ap.add_argument("--smoke", action="store_true",
                    help="the short form CI runs (e2e/bench_smoke.sh): small sizes, exit 1 if a guarantee did not hold")
    args = ap.parse_args()
    if args.smoke:
        # A longer Lease than the default: a loaded CI machine must not make a renewal late.
        args.replicas, args.shards, args.n, args.namespaces, args.refresh, args.after = 2, 4, 40, 8, "10s", 12
        args.lease_duration = "15s"
    audit = Path(os.environ["VK_BAO_AUDIT_LOG"])
    env = {**os.environ}
    # The audit log records the User-Agent, which names the replica (headers are not audited by default).
    subprocess.run(["bao", "write", "sys/config/auditing/request-headers/user-agent", "hmac=false"],
                   check=True, capture_output=True, env=env)

    kube = Kube()
    subprocess.run(["kubectl", "apply", "-f", str(ROOT / "manifests/crds.yaml")], check=True, capture_output=True)
    subprocess.run(["kubectl", "wait", "--for=condition=Established", "crd/vaultsecrets.vaultkeeper.dev"],
                   check=True, capture_output=True)
    namespaces = [f"scale-{i}" for i in range(args.namespaces)]
    print(f"preparing {len(namespaces)} namespaces and {args.n} KV secrets ...", flush=True)
    for ns in namespaces:
        ensure_namespace(kube, ns)
        ensure_service_account(kube, ns, "bench")
        kv_identity(ns)
    covered = {shard_of(ns, args.shards): ns for ns in reversed(namespaces)}
    names = [f"v{i:05d}" for i in range(args.n)]
    probes = [f"probe{s}" for s in range(args.shards)]
    where = {n: namespaces[i % len(namespaces)] for i, n in enumerate(names)}
    where.update({f"probe{s}": ns for s, ns in covered.items()})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(kv_put, names + [p for p in probes if p in where]))

    ops = {}
    failed = []
    stop = threading.Event()
    try:
        share = math.ceil(args.shards / args.replicas)
        for i in range(args.replicas):
            ops[f"r{i}"] = start_operator(args.operator, f"operator-scale-out-r{i}.log", "--shards", str(args.shards),
                                          "--identity", f"r{i}", "--lease-duration", args.lease_duration)
        held = lambda: {r: total(metrics(port), "vaultkeeper_shards_held") for r, (_, port) in ops.items()}  # noqa: E731
        spread = until("the shards spread", lambda: sum(held().values()) == args.shards
                       and max(held().values()) <= share, 180)
        print(f"{args.replicas} replicas, {args.shards} shards: spread after {spread:.1f} s ({held()})", flush=True)
        audit_start = audit.stat().st_size

        print(f"creating {args.n} VaultSecrets in {len(namespaces)} namespaces ...", flush=True)
        seen = watch_secrets(kube, namespaces, stop)
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda n: kube.request("POST", f"{GROUP}/namespaces/{where[n]}/vaultsecrets",
                                                 vault_secret(where[n], n, args.refresh)), names))

        # (A watch of the Secrets first: listing 20,000 resources again and again loads the API server.)
        synced = wait_all_ready(kube, "vaultsecrets", namespaces, args.n, seen, t0, 120 if args.smoke else 1800)
        time.sleep(5)
        before = {r: figures(op, port) for r, (op, port) in ops.items()}

        owner = holders(kube)
        victim = max(ops, key=lambda r: sum(1 for h in owner.values() if h == r))
        lost = sorted(s for s, h in owner.items() if h == victim)
        op, _ = ops.pop(victim)
        os.kill(op.pid, signal.SIGKILL)
        op.wait()
        killed_at = time.time()
        mine = [f"probe{s}" for s in lost if f"probe{s}" in where]
        for p in mine:
            kube.request("POST", f"{GROUP}/namespaces/{where[p]}/vaultsecrets", vault_secret(where[p], p, args.refresh))

        def served() -> bool:
            return all(dc_ready(kube.request("GET", f"{GROUP}/namespaces/{where[p]}/vaultsecrets/{p}")) for p in mine)
        try:
            takeover = until("the killed replica's resources served again", served, 300)
        except RuntimeError as err:
            takeover = None
            failed.append(str(err))
        after_kill = {r: held()[r] for r in ops}
        print(f"killed {victim} (held shards {lost}); its new resources Ready after "
              f"{'%.1f s' % takeover if takeover is not None else 'never'}; now {after_kill}", flush=True)
        time.sleep(args.after)
        end = {r: figures(op, port) for r, (op, port) in ops.items()}
    finally:
        stop.set()
        for op, _ in ops.values():
            stop_operator(op)

    runs = handovers(audit, audit_start, namespaces, args.shards)
    early, moved, twice = [], [], []
    for shard, line in sorted(runs.items()):
        changes = [(a, b) for a, b in zip(line, line[1:])]
        for prev, new in changes:
            if new[1] < killed_at:
                early.append(f"shard {shard}: {prev[0]} -> {new[0]} before the kill")
            elif prev[0] == victim and new[0] != victim:
                moved.append(shard)
            else:
                twice.append(f"shard {shard}: {prev[0]} -> {new[0]} after the kill")
        # Both serving at once shows as requests of two replicas interleaved: more than one change.
        if len(changes) > 1:
            twice.append(f"shard {shard}: {len(changes)} changes of hands {[(r[0]) for r in line]}")

    print()
    print(f"Scale-out: {args.n} VaultSecrets in {len(namespaces)} namespaces, {args.replicas} replicas, "
          f"{args.shards} shards, refresh {args.refresh}, Lease duration {args.lease_duration}")
    print(f"  all Ready after the create started     {synced:.1f} s ({args.n / synced:.0f}/s)")
    print(f"  {'replica':10}{'shards':>8}{'wrote':>8}{'unchanged':>11}{'RSS MiB':>9}{'peak MiB':>10}   (before the kill)")
    for r, (h, wrote, unchanged, rss, hwm) in sorted(before.items()):
        print(f"  {r:10}{h:8.0f}{wrote:8.0f}{unchanged:11.0f}{rss / 1024:9.1f}{hwm / 1024:10.1f}")
    print(f"  killed {victim}, holding {len(lost)} shards; its resources served again after "
          f"{'%.1f s' % takeover if takeover is not None else 'never'} (target 15 s)")
    for r, (h, wrote, unchanged, rss, hwm) in sorted(end.items()):
        print(f"  {r:10}{h:8.0f}{wrote:8.0f}{unchanged:11.0f}{rss / 1024:9.1f}{hwm / 1024:10.1f}   (after)")
    print(f"  audit log: {sum(len(v) for v in runs.values())} runs of requests in {len(runs)} shards; "
          f"{len(moved)} shards moved from {victim} after the kill, {len(early)} changes before it, "
          f"{len(twice)} shards with requests of two replicas interleaved")

    failed += early[:3] + twice[:3]
    if takeover is not None and takeover > (60 if args.smoke else 15):
        failed.append(f"the takeover took {takeover:.1f} s")
    if sorted(set(moved)) != [s for s in lost if s in runs]:
        failed.append(f"shards of {victim} not moved once each: {sorted(set(moved))} of {lost}")
    return verdict(failed, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
