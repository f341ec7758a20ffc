#!/usr/bin/env python3
"""Soak: resources created, changed and deleted in waves under one operator, against the real stack
(OpenBao with its KV, database and PKI engines, real PostgreSQL); prints figures and what held,
asserts nothing outside --smoke.

Run through `make soak-churn` (hack/bench.sh with BENCH=soak_churn). Each wave creates N resources
over the namespaces (VaultSecrets, and a share `--mix` each of DynamicCredentials and
CertificateRequests), waits until all are Ready, changes every one's spec (an annotation of its
Secret) and waits until all are Ready at the new generation, then deletes them all and waits until
they and their Secrets are gone. Waves follow one another for `--duration` seconds (at least
`--waves`). After each wave, once the operator has been idle for a few seconds, it samples the
operator's RSS, its open file descriptors and its live tokio tasks (`vaultkeeper_tokio_alive_tasks`).
Idle means past the HTTP clients' pool idle timeout (90 s, Vault's and the API server's): each
pooled connection is an open descriptor and a task until then (`--settle`, 100 s by default).
What is checked:
  - every wave completed: all Ready, all changed, all gone with their Secrets;
  - every lease a DynamicCredential held was revoked by its deletion (none live at the end);
  - open file descriptors and tasks after the last wave are within 10 % of those before the first
    (idle, they are the same few: watches, timers, the metrics server);
  - RSS after the last wave is within 10 % of that after the first (the first wave leaves the
    allocator's arenas and the event recorder's cache of the last 6 minutes behind, which is the
    baseline; a leak grows with every wave).
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_certificate import certificate_request, prepare_pki
from bench_dynamic import dynamic_credential, prepare
from bench_vaultsecret import kv_identity, kv_put, vault_secret
from benchlib import GROUP, ROOT, Kube, dc_ready, metrics, rss_kib, start_operator, stop_operator, total, verdict

KINDS = ("vaultsecrets", "dynamiccredentials", "certificaterequests")
LABEL = "vaultkeeper.dev/soak-wave"
WAVE_ANNOTATION = "soak.vaultkeeper.dev/wave"
# Seconds the operator is left alone after its start before it is sampled.
SETTLE = 10


def sample(pid: int, port: int, settle: float) -> dict:
    """The operator left idle for `settle` seconds: its RSS at the end, and the fewest open file
    descriptors and tokio tasks seen in the last 30 s of it (a timer or a renewal that happens to
    run at the sampling instant holds a connection for a moment; a leak raises the floor)."""
    floor = 30 if settle >= 30 else 0
    time.sleep(settle - floor)
    fds, tasks = [], []
    for i in range(floor // 5 + 1):
        if i:
            time.sleep(5)
        fds.append(len(os.listdir(f"/proc/{pid}/fd")))
        tasks.append(total(metrics(port), "vaultkeeper_tokio_alive_tasks"))
    return {"rss": rss_kib(pid, "VmRSS"), "fds": min(fds), "tasks": min(tasks)}


def lease_live(lease_id: str) -> bool:
    req = urllib.request.Request(f"{os.environ['VAULT_ADDR']}/v1/sys/leases/lookup", method="PUT",
                                 data=json.dumps({"lease_id": lease_id}).encode(),
                                 headers={"X-Vault-Token": os.environ["VAULT_TOKEN"]})
    try:
        urllib.request.urlopen(req, timeout=10).read()
        return True
    except urllib.error.HTTPError as e:
        if e.code == 400:  # "invalid lease": revoked or expired
            return False
        raise


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="resources per wave")
    ap.add_argument("--namespaces", type=int, default=100, help="namespaces (one identity per kind each)")
    ap.add_argument("--mix", type=float, default=0.02,
                    help="share of each wave that is DynamicCredentials, and as much CertificateRequests")
    ap.add_argument("--duration", type=float, default=3600, help="seconds of waves (the last one is finished)")
    ap.add_argument("--waves", type=int, default=3, help="at least this many waves")
    ap.add_argument("--timeout", type=float, default=900, help="seconds each phase of a wave may take")
    ap.add_argument("--settle", type=float, default=100,
                    help="seconds the operator is left idle after each wave before it is sampled (past the "
                         "connection pools' idle timeout of 90 s)")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--operator", default=str(target / "release/vaultkeeper-operator"))
    ap.add_argument("--workers", type=int, default=16, help="parallel connections of the client")
    ap.add_argument("--smoke", action="store_true",
                    help="the short form CI runs (e2e/bench_smoke.sh): small sizes, exit 1 if a wave did not "
                         "complete or a lease outlived its resource; the growth figures are printed, not judged")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.namespaces, args.mix, args.duration, args.waves, args.timeout = 40, 2, 0.1, 0, 2, 180
        args.settle = 10

    kube = Kube()
    namespaces = [f"soak-{i}" for i in range(args.namespaces)]
    prepare(kube, namespaces, "1h", "24h")
    prepare_pki(kube, namespaces)
    for ns in namespaces:
        kv_identity(ns)
    extra = round(args.n * args.mix)
    counts = {"vaultsecrets": args.n - 2 * extra, "dynamiccredentials": extra, "certificaterequests": extra}
    names = {kind: [f"soak-{kind[0]}{i:05d}" for i in range(counts[kind])] for kind in KINDS}
    where = {name: namespaces[i % len(namespaces)] for kind in KINDS for i, name in enumerate(names[kind])}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(kv_put, names["vaultsecrets"]))
    cert_args = argparse.Namespace(ttl="24h", renew_before="1h", algorithm="ECDSA", size=256, mode="issue")
    make = {
        "vaultsecrets": lambda n: vault_secret(where[n], n, "60s"),
        "dynamiccredentials": lambda n: dynamic_credential(where[n], n, "5s"),
        "certificaterequests": lambda n: certificate_request(where[n], n, cert_args),
    }

    def listed(kind: str) -> list:
        return [o for o in kube.request("GET", f"{GROUP}/{kind}?labelSelector={urllib.parse.quote(LABEL)}")["items"]
                if o["metadata"]["namespace"] in namespaces]

    def wait(what: str, check) -> float:
        t0 = time.monotonic()
        while not check():
            if time.monotonic() - t0 > args.timeout:
                raise RuntimeError(f"{what}: not within {args.timeout:.0f} s")
            time.sleep(0.5 if args.n <= 1000 else 2)  # listing 10,000 objects takes a while
        return time.monotonic() - t0

    def all_ready(generation_moved: bool) -> bool:
        ready = 0
        for kind in KINDS:
            for o in listed(kind):
                status = o.get("status") or {}
                current = status.get("observedGeneration") == o["metadata"]["generation"]
                if dc_ready(o) and current and (o["metadata"]["generation"] > 1) == generation_moved:
                    ready += 1
        return ready == args.n

    def managed_secrets_left() -> int:
        items = kube.request("GET", "/api/v1/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvaultkeeper")["items"]
        return sum(1 for s in items if s["metadata"]["namespace"] in namespaces)

    op, port = start_operator(args.operator, "operator-soak-churn.log")
    failed, samples, phases, leases = [], [], [], set()
    try:
        idle = sample(op.pid, port, SETTLE)
        t_start, wave = time.monotonic(), 0
        with ThreadPoolExecutor(args.workers) as pool:
            while wave < args.waves or time.monotonic() - t_start < args.duration:
                wave += 1
                label = {LABEL: str(wave)}

                def create(kind_name):
                    kind, n = kind_name
                    body = make[kind](n)
                    body["metadata"]["labels"] = label
                    kube.request("POST", f"{GROUP}/namespaces/{where[n]}/{kind}", body)

                def change(kind_name):
                    kind, n = kind_name
                    kube.request("PATCH", f"{GROUP}/namespaces/{where[n]}/{kind}/{n}",
                                 {"spec": {"destination": {"annotations": {WAVE_ANNOTATION: str(wave)}}}},
                                 content_type="application/merge-patch+json")

                def delete(kind_name):
                    kind, n = kind_name
                    kube.request("DELETE", f"{GROUP}/namespaces/{where[n]}/{kind}/{n}")

                everything = [(kind, n) for kind in KINDS for n in names[kind]]
                t0 = time.monotonic()
                list(pool.map(create, everything))
                wait(f"wave {wave}: all Ready", lambda: all_ready(False))
                created = time.monotonic() - t0
                leases |= {o["status"]["leaseId"] for o in listed("dynamiccredentials") if o["status"].get("leaseId")}
                t0 = time.monotonic()
                list(pool.map(change, everything))
                wait(f"wave {wave}: all Ready at the new spec", lambda: all_ready(True))
                changed = time.monotonic() - t0
                leases |= {o["status"]["leaseId"] for o in listed("dynamiccredentials") if o["status"].get("leaseId")}
                t0 = time.monotonic()
                list(pool.map(delete, everything))
                wait(f"wave {wave}: all gone with their Secrets",
                     lambda: not any(listed(kind) for kind in KINDS) and managed_secrets_left() == 0)
                gone = time.monotonic() - t0
                samples.append(sample(op.pid, port, args.settle))
                phases.append((created, changed, gone))
                s = samples[-1]
                print(f"  wave {wave}: {args.n} created and Ready in {created:.1f} s, changed in {changed:.1f} s, "
                      f"deleted in {gone:.1f} s; RSS {s['rss'] / 1024:.1f} MiB, {s['fds']} fds, {s['tasks']:.0f} tasks",
                      flush=True)
        peak = rss_kib(op.pid, "VmHWM")
        elapsed = time.monotonic() - t_start
    except RuntimeError as e:
        failed.append(str(e))
        peak, elapsed = rss_kib(op.pid, "VmHWM"), 0.0
    finally:
        stop_operator(op)

    live = sorted(lease for lease in leases if lease_live(lease))
    print()
    print(f"Soak, churn: waves of {args.n} resources ({counts['vaultsecrets']} VaultSecrets, "
          f"{counts['dynamiccredentials']} DynamicCredentials, {counts['certificaterequests']} CertificateRequests) in "
          f"{len(namespaces)} namespaces, created, changed and deleted; {len(samples)} waves in {elapsed:.0f} s")
    print(f"  idle before the first wave        RSS {idle['rss'] / 1024:.1f} MiB, {idle['fds']} fds, "
          f"{idle['tasks']:.0f} tasks")
    growth = {}
    if samples:
        first, last = samples[0], samples[-1]
        for key, base in (("rss", first), ("fds", idle), ("tasks", idle)):
            growth[key] = (last[key] - base[key]) / base[key] if base[key] else 0.0
        print(f"  after the first wave              RSS {first['rss'] / 1024:.1f} MiB, {first['fds']} fds, "
              f"{first['tasks']:.0f} tasks")
        print(f"  after the last wave               RSS {last['rss'] / 1024:.1f} MiB ({growth['rss']:+.1%} from the "
              f"first wave), {last['fds']} fds ({growth['fds']:+.1%} from idle), {last['tasks']:.0f} tasks "
              f"({growth['tasks']:+.1%} from idle) (target: within 10 %)")
        print(f"  slowest wave (create, change, delete)  "
              f"{max(p[0] for p in phases):.1f} s, {max(p[1] for p in phases):.1f} s, {max(p[2] for p in phases):.1f} s")
    print(f"  operator peak RSS                 {peak / 1024:.1f} MiB")
    print(f"  DynamicCredential leases seen     {len(leases)}, live after their deletion: {len(live)}")

    if live:
        failed.append(f"{len(live)} leases outlived their DynamicCredentials: {live[:3]}")
    if not args.smoke:
        for key, what in (("rss", "RSS"), ("fds", "open file descriptors"), ("tasks", "tokio tasks")):
            if growth.get(key, 0.0) > 0.10:
                failed.append(f"{what} grew by {growth[key]:.1%} by the last wave")
    return verdict(failed, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
