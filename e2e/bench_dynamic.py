#!/usr/bin/env python3
"""DynamicCredential benchmark against the real stack (OpenBao's database engine, real PostgreSQL);
prints figures, asserts nothing.

Run through `make bench-dynamic` (hack/bench-dynamic.sh), which installs and starts the stack and
passes its env. With N DynamicCredentials (spread over a few namespaces, one identity per namespace)
whose leases have a short TTL and a short max TTL, so that each is renewed and then rotated inside
the window, it measures:
  - issuance: the time from the first create until all N are Ready (credentials/s);
  - renewal and rotation lateness p50/p99 (from vaultkeeper_lease_lateness_seconds: the time from
    when a step was due to the reconcile that acted on it), and how many of each the window saw;
  - Vault requests by operation and failed Vault requests;
  - live leases (OpenBao's lease list) and PostgreSQL roles at the end of the window, and after all
    N are deleted (the finalizers revoke them: both should fall to 0);
  - the operator's peak RSS, and logins per identity.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import (GROUP, ROOT, Kube, bucket_pct, cpu_seconds, ensure_namespace, metrics, rss_kib, show_bound, stack_pid, start_operator,
                      stop_operator, total, wait_all_ready, watch_secrets, smoke_verdict)

ROLE = "bench"


def dynamic_credential(ns: str, name: str, grace: str, restart: str = "") -> dict:
    """A DynamicCredential of the bench role; `restart` names a Deployment it restarts on rotation."""
    spec = {
        "auth": {"role": f"bench-dc-{ns}", "serviceAccountName": "bench"},
        "source": {"mount": "database", "role": ROLE},
        "rotationGracePeriod": grace,
        "destination": {"name": name, "templates": {
            "DATABASE_URL": "postgres://{{ .username }}:{{ .password }}@db/postgres"}},
    }
    if restart:
        spec["restartTargets"] = [{"kind": "Deployment", "name": restart}]
    return {"apiVersion": "vaultkeeper.dev/v1alpha1", "kind": "DynamicCredential",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def bao(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bao", *args], check=True, capture_output=True, text=True, **kw)


def prepare(kube: Kube, namespaces: list, ttl: str, max_ttl: str) -> None:
    """The CRDs, OpenBao's database engine on the stack's PostgreSQL with the bench role (`ttl`,
    `max_ttl`), and per namespace a ServiceAccount `bench` with its own Vault role."""
    subprocess.run(["kubectl", "apply", "-f", str(ROOT / "manifests/crds.yaml")], check=True, capture_output=True)
    subprocess.run(["kubectl", "wait", "--for=condition=Established", "crd/dynamiccredentials.vaultkeeper.dev"],
                   check=True, capture_output=True)
    print(f"preparing the database engine (TTL {ttl}, max TTL {max_ttl}) and {len(namespaces)} namespaces ...",
          flush=True)
    mounts = bao("secrets", "list", "-format=json").stdout
    if '"database/"' not in mounts:
        bao("secrets", "enable", "database")
    bao("write", "database/config/bench", "plugin_name=postgresql-database-plugin", f"allowed_roles={ROLE}",
        f"connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@{os.environ['VK_PG_HOST']}:"
        f"{os.environ['VK_PG_PORT']}/postgres?sslmode=disable",
        "username=postgres", "password=unused", "max_open_connections=8",
        "username_template=bench-{{.RoleName}}-{{random 20}}")
    bao("write", f"database/roles/{ROLE}", "db_name=bench", f"default_ttl={ttl}", f"max_ttl={max_ttl}",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';")
    bao("policy", "write", "bench-dc", "-",
        input='path "database/creds/*" { capabilities = ["read"] }\npath "sys/leases/revoke" { capabilities = ["update"] }\n')
    for ns in ["vaultkeeper-system", *namespaces]:  # the operator's own: its key and the lease tokens
        ensure_namespace(kube, ns)
    for ns in namespaces:
        kube.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "bench"}})
        bao("write", f"auth/kubernetes/role/bench-dc-{ns}", "bound_service_account_names=bench",
            f"bound_service_account_namespaces={ns}", "policies=bench-dc", "token_period=1h")


def psql(sql: str) -> str:
    return subprocess.run(["psql", "-h", os.environ["VK_PG_HOST"], "-p", os.environ["VK_PG_PORT"], "-U", "postgres",
                           "-d", "postgres", "-tAc", sql], check=True, capture_output=True, text=True).stdout.strip()


def pg_roles() -> int:
    return int(psql(f"select count(*) from pg_roles where rolname like '{ROLE}-%'"))


def live_leases() -> int:
    out = subprocess.run(["bao", "list", "-format=json", f"sys/leases/lookup/database/creds/{ROLE}"],
                         capture_output=True, text=True)
    return len(json.loads(out.stdout)) if out.returncode == 0 and out.stdout.strip() else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="DynamicCredentials")
    ap.add_argument("--namespaces", type=int, default=10, help="namespaces (one identity each)")
    ap.add_argument("--ttl", default="60s", help="the database role's default_ttl (renewal at 67 %% of it)")
    ap.add_argument("--max-ttl", default="180s", help="the role's max_ttl (rotation at 80 %% of the lease's life)")
    ap.add_argument("--grace", default="10s", help="rotationGracePeriod (old credential revoked after it)")
    ap.add_argument("--window", type=int, default=240, help="seconds of steady state to measure")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--operator", default=str(target / "release/vaultkeeper-operator"))
    ap.add_argument("--workers", type=int, default=16, help="parallel connections of the creating client")
    ap.add_argument("--smoke", action="store_true",
                    help="the short form CI runs (e2e/bench_smoke.sh): small sizes, and exit 1 if the run did not work "
                         "(not all Ready, no renewal or rotation, leases or roles left after delete); figures not judged")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.namespaces, args.ttl, args.max_ttl, args.grace, args.window = 10, 2, "10s", "24s", "2s", 30

    kube = Kube()
    namespaces = [f"bench-dc-{i}" for i in range(args.namespaces)]
    prepare(kube, namespaces, args.ttl, args.max_ttl)
    names = [f"c{i:05d}" for i in range(args.n)]

    stop = threading.Event()
    seen = watch_secrets(kube, namespaces, stop)
    op, port = start_operator(args.operator, "operator-bench-dynamic.log")
    try:
        base_rss = rss_kib(op.pid, "VmRSS")
        cpu0 = cpu_seconds(op.pid)
        others = {name: stack_pid(name) for name in ("bao", "kube-apiserver", "etcd")}
        others0 = {name: cpu_seconds(pid) for name, pid in others.items()}

        print(f"creating {args.n} DynamicCredentials ({args.workers} connections) ...", flush=True)
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda i: kube.request(
                "POST", f"{GROUP}/namespaces/{namespaces[i % len(namespaces)]}/dynamiccredentials",
                dynamic_credential(namespaces[i % len(namespaces)], names[i], args.grace)), range(args.n)))
        created = time.monotonic() - t0
        all_ready = wait_all_ready(kube, "dynamiccredentials", namespaces, args.n, seen, t0)
        issue_cpu = cpu_seconds(op.pid) - cpu0
        others_cpu = {name: cpu_seconds(pid) - others0[name] for name, pid in others.items()}
        issued_roles = pg_roles()
        print(f"  all {args.n} Ready after {all_ready:.1f}s (creates took {created:.1f}s)", flush=True)

        m0 = metrics(port)
        w0 = time.monotonic()
        cpu1 = cpu_seconds(op.pid)
        print(f"steady window of {args.window}s (renewals, then rotations) ...", flush=True)
        while time.monotonic() - w0 < args.window:
            time.sleep(1)
        m1 = metrics(port)
        window = time.monotonic() - w0
        window_cpu = cpu_seconds(op.pid) - cpu1
        end_leases, end_roles = live_leases(), pg_roles()
        peak = rss_kib(op.pid, "VmHWM")
        end_rss = rss_kib(op.pid, "VmRSS")
        delta = {k: v - m0.get(k, 0.0) for k, v in m1.items()}
        d = lambda prefix, *n: total(delta, prefix, *n)  # noqa: E731
        lateness = {step: {p: bucket_pct(delta, "vaultkeeper_lease_lateness_seconds",
                                         ('kind="DynamicCredential"', f'step="{step}"'), p) for p in (50, 99)}
                    for step in ("renew", "rotate")}
        ops = {}
        for key, value in delta.items():
            if key.startswith("vaultkeeper_vault_requests_total{") and value:
                op_name = key.split('operation="', 1)[1].split('"', 1)[0]
                ops[op_name] = ops.get(op_name, 0) + value
        failed = sum(v for k, v in delta.items() if k.startswith("vaultkeeper_vault_requests_total{")
                     and not any(f'status="{s}"' in k for s in ("200", "204")))
        logins_window = d("vaultkeeper_vault_logins_total")
        logins_start = total(m0, "vaultkeeper_vault_logins_total")
        secret_writes = d("vaultkeeper_kube_writes_total", 'resource="secret"')

        # Why credentials were issued, over the whole run, from the operator's Events.
        issued_why: dict = {}
        for ev in kube.request("GET", "/apis/events.k8s.io/v1/events")["items"]:
            note = ev.get("note") or ""
            if ev["metadata"]["namespace"] in namespaces and note.startswith("Issued a new credential"):
                why = note.rsplit(": ", 1)[-1]
                issued_why[why] = issued_why.get(why, 0) + ((ev.get("series") or {}).get("count") or 1)

        print(f"deleting the {args.n} (their finalizers revoke the leases) ...", flush=True)
        t1 = time.monotonic()
        for ns in namespaces:
            kube.request("DELETE", f"{GROUP}/namespaces/{ns}/dynamiccredentials")
        while True:
            left = sum(1 for o in kube.request("GET", f"{GROUP}/dynamiccredentials")["items"]
                       if o["metadata"]["namespace"] in namespaces)
            if not left or time.monotonic() - t1 > 600:
                break
            time.sleep(1)
        deleted = time.monotonic() - t1
        after_leases, after_roles = live_leases(), pg_roles()
        stop.set()

        print()
        print(f"DynamicCredential benchmark: N={args.n} in {len(namespaces)} namespaces, TTL {args.ttl}, "
              f"max TTL {args.max_ttl}, grace {args.grace}, steady window {window:.0f}s")
        print(f"  time until all {args.n} Ready              {all_ready:8.1f} s  "
              f"({args.n / all_ready:.0f} credentials/s; creates took {created:.1f} s; {issued_roles} PostgreSQL roles)")
        for step, label in (("renew", "renewals"), ("rotate", "rotations")):
            (p50, count), (p99, _) = lateness[step][50], lateness[step][99]
            print(f"  {label:<10} in window                 {count:8.0f}   lateness p50 {show_bound(p50)}   "
                  f"p99 {show_bound(p99)}")
        print(f"  Vault requests in window                 {sum(ops.values()):8.0f}  "
              f"({', '.join(f'{k} {v:.0f}' for k, v in sorted(ops.items()))}); failed {failed:.0f}")
        print("  credentials issued (whole run, Events)   " + "; ".join(f"{n} {why}" for why, n in sorted(issued_why.items())))
        print(f"  Secret writes in window                  {secret_writes:8.0f}")
        print(f"  live leases / PostgreSQL roles           {end_leases} / {end_roles} at the end of the window "
              f"(N={args.n}, plus retiring ones in their grace period)")
        print(f"  after deleting all {args.n}                 {after_leases} leases / {after_roles} roles left "
              f"(deletes done in {deleted:.1f} s)")
        print(f"  operator RSS                             idle {base_rss / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
              f"end of window {end_rss / 1024:.1f} MiB")
        print(f"  operator CPU                             {issue_cpu:.1f} s issuing all {args.n}, {window_cpu:.1f} s in the window "
              f"({window_cpu / window * 100:.1f} % of one core)")
        print("  CPU per issuance (creates included)      " + ", ".join(
            f"{name} {cpu / args.n * 1000:.1f} ms" for name, cpu in {"operator": issue_cpu, **others_cpu}.items()))
        print(f"  logins per identity                      {logins_start / len(namespaces):.1f} at start, "
              f"{logins_window / len(namespaces):.1f} in the {window:.0f}s window")
        if args.smoke:
            broken = []
            if not lateness["renew"][50][1]:
                broken.append("no renewal in the window")
            if not lateness["rotate"][50][1]:
                broken.append("no rotation in the window")
            if after_leases or after_roles:
                broken.append(f"{after_leases} leases and {after_roles} roles left after delete")
            return smoke_verdict(broken)
        return 0
    finally:
        stop_operator(op)


if __name__ == "__main__":
    sys.exit(main())
