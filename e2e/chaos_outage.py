#!/usr/bin/env python3
"""Chaos: a long Vault outage under a running operator, against the real stack (OpenBao stopped
and started again with its data; its database engine on real PostgreSQL and its PKI engine);
prints figures and what held, asserts nothing outside --smoke.

Run through `make chaos-outage` (hack/bench.sh with BENCH=chaos_outage and OpenBao's unhashed
audit log). N VaultSecrets (refreshing), N DynamicCredentials and N CertificateRequests run until
all are Ready; then OpenBao is stopped for `--outage` seconds and started again (unsealed). The
leases' TTL is shorter than the outage, so they end during it and OpenBao revokes them when it
returns; the certificates fall due for renewal during it. What is checked, from a watch of the
operator's Secrets (listed again after every break) and OpenBao's audit log:
  - no Secret changed or was deleted during the outage, from 10 s after the stop (the workloads
    keep what they have);
  - every resource is Ready again within 60 s of OpenBao answering (target), the DynamicCredentials
    with new leases, the certificates renewed;
  - no thundering herd: OpenBao's requests at a time in the first minute after it returned stay
    within the operator's lanes (--refresh-concurrency plus --sync-concurrency, printed), and
    the requests per second are printed;
  - what the operator asked while OpenBao was away (failed requests per minute: its backoff).
"""

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_certificate import certificate_request, prepare_pki
from bench_dynamic import dynamic_credential, prepare
from bench_vaultsecret import kv_identity, kv_put, vault_secret
from benchlib import (GROUP, ROOT, Kube, dc_ready, metrics, rss_kib, seconds_of, start_operator, stop_operator,
                      total, verdict)
from chaos_kill import audit_entries, audit_events
from chaos_restart import STACK, Follower, secret_digest, until

KINDS = ("vaultsecrets", "dynamiccredentials", "certificaterequests")
# Seconds after OpenBao stopped before a Secret change counts as made during the outage.
SETTLE = 10
# The operator's defaults (operator/src/config.rs), which this run does not change.
REFRESH_CONCURRENCY, SYNC_CONCURRENCY = 16, 32


def in_flight(log: Path, since: int, start: float, end: float) -> tuple:
    """From OpenBao's audit log (after byte `since`): (requests in [start, end), the most answered
    at a time, the most started in one second)."""
    begun: dict = {}
    spans = []
    for entry, t in audit_entries(log, since):
        rid = (entry.get("request") or {}).get("id")
        if not rid:
            continue
        if entry.get("type") == "request":
            begun[rid] = t
        elif rid in begun:
            spans.append((begun.pop(rid), t))
    spans = [(a, b) for a, b in spans if start <= a < end]
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    per_second: dict = {}
    for a, _ in spans:
        per_second[int(a)] = per_second.get(int(a), 0) + 1
    return len(spans), peak, max(per_second.values(), default=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="resources of each kind")
    ap.add_argument("--namespaces", type=int, default=10, help="namespaces (one identity per kind each)")
    ap.add_argument("--outage", type=float, default=3600, help="seconds OpenBao is away")
    ap.add_argument("--ttl", default="10m", help="the database role's default_ttl (shorter than the outage)")
    ap.add_argument("--cert-ttl", default="2h", help="certificate lifetime; renewal due --renew-due after the issue")
    ap.add_argument("--renew-due", type=float, default=600, help="seconds after the issue a certificate is due")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--operator", default=str(target / "release/vaultkeeper-operator"))
    ap.add_argument("--workers", type=int, default=16, help="parallel connections of the creating client")
    ap.add_argument("--smoke", action="store_true",
                    help="the short form CI runs (e2e/bench_smoke.sh): small sizes, exit 1 if a guarantee did not hold")
    args = ap.parse_args()
    if args.smoke:
        # 45 s: long enough for the backoff of the failing resources to pass 20 s, so that a
        # recovery within seconds shows the probe at work rather than a short backoff.
        args.n, args.namespaces, args.outage, args.ttl, args.renew_due = 10, 2, 45, "20s", 15
    if not os.environ.get("VK_BAO_RAW_AUDIT_LOG"):
        print("needs OpenBao's unhashed audit log: run inside a stack started with VK_RAW_AUDIT=1 (make chaos-outage does)")
        return 2
    audit = Path(os.environ["VK_BAO_RAW_AUDIT_LOG"])
    cert_ttl = args.cert_ttl
    renew_before = f"{int(seconds_of(cert_ttl) - args.renew_due)}s"

    kube = Kube()
    namespaces = [f"outage-{i}" for i in range(args.namespaces)]
    prepare(kube, namespaces, args.ttl, "24h")
    prepare_pki(kube, namespaces)
    for ns in namespaces:
        kv_identity(ns)
    names = {kind: [f"{kind[0]}{i:05d}" for i in range(args.n)] for kind in KINDS}
    where = {name: namespaces[i % len(namespaces)] for kind in KINDS for i, name in enumerate(names[kind])}

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(kv_put, names["vaultsecrets"]))
    cert_args = argparse.Namespace(ttl=cert_ttl, renew_before=renew_before, algorithm="ECDSA", size=256, mode="issue")
    make = {
        "vaultsecrets": lambda n: vault_secret(where[n], n, "30s"),
        "dynamiccredentials": lambda n: dynamic_credential(where[n], n, "10s"),
        "certificaterequests": lambda n: certificate_request(where[n], n, cert_args),
    }

    stop = threading.Event()
    secrets = Follower(kube, "/api/v1/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvaultkeeper",
                       secret_digest, stop)
    op, port = start_operator(args.operator, "operator-chaos-outage.log")
    state = os.environ["VK_STACK_DIR"]

    def ready_count() -> int:
        ready = 0
        for plural in KINDS:
            items = kube.request("GET", f"{GROUP}/{plural}")["items"]
            ready += sum(1 for o in items if o["metadata"]["namespace"] in namespaces and dc_ready(o))
        return ready

    try:
        print(f"creating {args.n} VaultSecrets, DynamicCredentials and CertificateRequests ...", flush=True)
        with ThreadPoolExecutor(args.workers) as pool:
            for kind in KINDS:
                list(pool.map(lambda n: kube.request("POST", f"{GROUP}/namespaces/{where[n]}/{kind}", make[kind](n)),
                              names[kind]))
        print(f"  all {3 * args.n} Ready after {until('all Ready', lambda: ready_count() >= 3 * args.n, 900):.1f} s",
              flush=True)
        time.sleep(2)

        # Only this run's namespaces: other resources the stack holds are the operator's too.
        before = {k: v for k, v in secrets.current().items() if k.split("/")[0] in namespaces}
        m0 = metrics(port)
        print(f"stopping OpenBao for {args.outage:.0f} s ...", flush=True)
        subprocess.run([*STACK, "bao-stop", "--state-dir", state], check=True, capture_output=True)
        down_at = time.time()
        time.sleep(args.outage)
        m1 = metrics(port)
        audit_start = audit.stat().st_size
        # OpenBao may answer from the moment it is started, before bao-start (which waits for it to
        # be unsealed) returns: the operator's probe can see it back and its Secrets change first.
        starting_at = time.time()
        subprocess.run([*STACK, "bao-start", "--state-dir", state], check=True, capture_output=True)
        back_at = time.time()
        # Judged from a few seconds after the stop (an answer OpenBao gave just before it stopped
        # may reach its Secret, and this watch, a moment later) until it was started again: neither
        # is a change made blind.
        during = [(k, v) for k, line in secrets.changes.items() for t, v in line
                  if down_at + SETTLE <= t < starting_at]
        # Ready again: every resource, the DynamicCredentials with new leases (the old ones ended).
        b0 = time.monotonic()
        try:
            recovered = until("all Ready after OpenBao returned", lambda: ready_count() >= 3 * args.n, 600)
        except RuntimeError:
            recovered = None
        # The first minute after OpenBao returned (15 s in the short form), whatever the recovery took.
        window = 15 if args.smoke else 60
        time.sleep(max(0.0, window - (time.monotonic() - b0)))
        m2 = metrics(port)
        peak = rss_kib(op.pid, "VmHWM")
    finally:
        stop_operator(op)
        stop.set()

    requests, at_once, per_second = in_flight(audit, audit_start, back_at, back_at + window)
    changed = sorted({k for k, v in during if k in before})
    failed_during = (total(m1, "vaultkeeper_vault_requests_total", 'status="error"')
                     - total(m0, "vaultkeeper_vault_requests_total", 'status="error"')
                     + total(m1, "vaultkeeper_vault_requests_total", 'status="503"')
                     - total(m0, "vaultkeeper_vault_requests_total", 'status="503"'))
    ev = audit_events(audit, audit_start)
    dc_issued = sum(1 for lease, t in ev["issued"].items() if ev["issued_in"].get(lease) in namespaces)
    certs = (total(m2, "vaultkeeper_vault_requests_total", 'operation="pki_issue"', 'status="200"')
             - total(m1, "vaultkeeper_vault_requests_total", 'operation="pki_issue"', 'status="200"'))
    lanes = REFRESH_CONCURRENCY + SYNC_CONCURRENCY

    print()
    print(f"Chaos, Vault outage: {args.n} each of VaultSecrets, DynamicCredentials and CertificateRequests in "
          f"{len(namespaces)} namespaces; OpenBao away {args.outage:.0f} s; lease TTL {args.ttl}; certificates due "
          f"{args.renew_due:.0f} s after their issue")
    print(f"  Secrets changed or deleted during it      {len(changed)}")
    print(f"  operator's Vault requests during it       {failed_during:.0f} failed "
          f"({failed_during / (args.outage / 60):.1f} per minute)")
    print(f"  all Ready again after OpenBao returned    "
          f"{'%.1f s' % recovered if recovered is not None else 'not within 600 s'} (target 60 s)")
    print(f"  in the first {window} s after it{' ' * (18 - len(str(window)))}{requests} requests to OpenBao, at most {at_once} at a time "
          f"(the lanes allow {REFRESH_CONCURRENCY} + {SYNC_CONCURRENCY}), at most {per_second} started in one second;"
          f" {dc_issued:.0f} new leases, {certs:.0f} certificates issued")
    print(f"  operator peak RSS                         {peak / 1024:.1f} MiB")

    failed = []
    if changed:
        failed.append(f"{len(changed)} Secrets changed or deleted while OpenBao was away: {changed[:3]}")
    # The smoke's outage is short, so its backoffs are too (tens of seconds): within 15 s shows the
    # probe bringing everything back, not the backoffs running out.
    within = 15 if args.smoke else 60
    if recovered is None or recovered > within:
        failed.append(f"not all Ready within {within} s of OpenBao's return ({recovered})")
    if at_once > lanes + 2:  # (the probes of the connection, outside the lanes)
        failed.append(f"{at_once} requests at a time after the return, more than the lanes allow ({lanes})")
    if dc_issued < args.n:
        failed.append(f"only {dc_issued:.0f} of the {args.n} DynamicCredentials got a new lease after their old one ended")
    return verdict(failed, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
