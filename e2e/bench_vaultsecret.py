#!/usr/bin/env python3
"""VaultSecret benchmark against the real stack; prints figures, asserts nothing.

Run through `make bench` (hack/bench.sh), which installs and starts the stack and passes its env.
With N VaultSecrets (spread over a few namespaces, one identity per namespace) it measures:
  - the time from the first create until all N are Ready;
  - p50/p99 of "CR created -> Secret exists" for 50 CRs created while the N keep refreshing;
  - the operator's peak RSS (VmHWM) and its RSS at the end;
  - Vault requests and Kubernetes writes per unchanged refresh (from the operator's own metrics,
    cross-checked against OpenBao's audit log);
  - logins per identity, at start and during the steady window.
With --preload the N are created before the operator starts, and the operator's own first-sync
throughput is printed (resources/s from its caches holding all N to the last Secret written). With
--same-path all N read one KV secret under one identity, and the metadata reads per refresh interval
show whether identical reads are coalesced (ARCHITECTURE §2: one, not N).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import (GROUP, ROOT, Kube, cpu_seconds, metrics, pct, rss_kib, seconds_of, stack_pid, start_operator, stop_operator,
                      total, smoke_verdict)


def vault_secret(ns: str, name: str, refresh: str, path: str = "") -> dict:
    return {
        "apiVersion": "vaultkeeper.dev/v1alpha1", "kind": "VaultSecret",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "auth": {"role": f"bench-{ns}", "serviceAccountName": "bench"},
            "source": {"engine": "kv-v2", "mount": "secret", "path": f"bench/{path or name}"},
            "refreshInterval": refresh,
            "destination": {"name": name, "templates": {"URL": "postgres://{{ .user }}:{{ .pass }}@db/{{ .user }}"}},
        },
    }


def kv_put(name: str, version: str = "") -> None:
    """Writes the KV secret bench/<name> ({user, pass}); a `version` changes the password."""
    req = urllib.request.Request(f"{os.environ['VAULT_ADDR']}/v1/secret/data/bench/{name}", method="POST",
                                 data=json.dumps({"data": {"user": name, "pass": f"pw-{name}{version}"}}).encode(),
                                 headers={"X-Vault-Token": os.environ["VAULT_TOKEN"]})
    urllib.request.urlopen(req, timeout=10).read()


def kv_identity(ns: str) -> None:
    """Namespace `ns`'s Vault role `bench-<ns>` for its ServiceAccount `bench`: reads of secret/bench/*."""
    subprocess.run(["bao", "policy", "write", f"bench-{ns}", "-"], check=True, capture_output=True, text=True,
                   input='path "secret/data/bench/*" { capabilities = ["read"] }\n'
                         'path "secret/metadata/bench/*" { capabilities = ["read"] }\n')
    subprocess.run(["bao", "write", f"auth/kubernetes/role/bench-{ns}", "bound_service_account_names=bench",
                    f"bound_service_account_namespaces={ns}", f"policies=bench-{ns}", "ttl=1h"],
                   check=True, capture_output=True, text=True)


def create_unrelated(args, kube, namespaces: list, pid: int) -> dict:
    """Creates args.unrelated Secrets and as many ConfigMaps that the operator does not manage, over
    the namespaces, with the load generator (keep-alive, generateName); the operator's RSS before
    and a while after."""
    work = Path(os.environ["VK_STACK_DIR"]) / "bench-unrelated"
    work.mkdir(exist_ok=True)
    payload = {"config": "x" * 512}  # a typical small object
    bodies = {"secrets": {"apiVersion": "v1", "kind": "Secret", "metadata": {"generateName": "unrelated-"},
                          "stringData": payload},
              "configmaps": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "unrelated-"},
                             "data": payload}}
    before = rss_kib(pid, "VmRSS")
    t0, errors = time.monotonic(), 0
    per_ns = max(1, args.unrelated // len(namespaces))
    for kind, body in bodies.items():
        (work / f"{kind}.json").write_text(json.dumps(body))
        for ns in namespaces:
            out = subprocess.run([args.loadgen, f"-url={kube.server}/api/v1/namespaces/{ns}/{kind}",
                                  f"-body={work / f'{kind}.json'}", f"-rate={args.unrelated_rate}",
                                  f"-duration={per_ns / args.unrelated_rate}s", "-workers=16",
                                  f"-ca={kube.ca}", f"-cert={kube.cert}", f"-key={kube.key}"],
                                 check=True, capture_output=True, text=True).stdout
            errors += json.loads(out)["errors"]
    seconds = time.monotonic() - t0
    time.sleep(10)  # anything the operator would cache or queue has arrived by now
    return {"before": before, "after": rss_kib(pid, "VmRSS"), "seconds": seconds, "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="VaultSecrets that keep refreshing")
    ap.add_argument("--namespaces", type=int, default=10, help="namespaces (one identity each)")
    ap.add_argument("--refresh", default="30s", help="refreshInterval of the N")
    ap.add_argument("--window", type=int, default=75, help="seconds of steady state to measure")
    ap.add_argument("--probe", type=int, default=50, help="CRs created while the N refresh")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--operator", default=str(target / "release/vaultkeeper-operator"))
    ap.add_argument("--unrelated", type=int, default=0,
                    help="afterwards, create this many Secrets and as many ConfigMaps that are not the operator's "
                         "(e2e/loadgen, generateName) and print how much the operator's RSS grew")
    ap.add_argument("--unrelated-rate", type=int, default=400, help="creates per second for --unrelated")
    ap.add_argument("--loadgen", default=str(target / "loadgen"))
    ap.add_argument("--workers", type=int, default=16, help="parallel connections of the creating client")
    ap.add_argument("--preload", action="store_true",
                    help="create the N before the operator starts and print its first-sync throughput")
    ap.add_argument("--same-path", action="store_true",
                    help="all N in one namespace read one KV secret (coalesced reads); probes keep their own")
    ap.add_argument("--smoke", action="store_true",
                    help="the short form CI runs (e2e/bench_smoke.sh): small sizes, and exit 1 if the run did not work "
                         "(a probe Secret never seen, no unchanged refresh); figures still not judged")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.namespaces, args.refresh, args.window, args.probe = 20, 2, "10s", 25, 5
        args.unrelated, args.unrelated_rate = 200, 100
    if args.same_path:
        args.namespaces = 1

    kube = Kube()
    namespaces = [f"bench-{i}" for i in range(args.namespaces)]
    subprocess.run(["kubectl", "apply", "-f", str(ROOT / "manifests/crds.yaml")], check=True, capture_output=True)
    subprocess.run(["kubectl", "wait", "--for=condition=Established", "crd/vaultsecrets.vaultkeeper.dev"],
                   check=True, capture_output=True)
    print(f"preparing {args.n} KV secrets in OpenBao and {len(namespaces)} namespaces ...", flush=True)
    for ns in namespaces:
        kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        kube.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "bench"}})
        kv_identity(ns)
    names = [f"s{i:05d}" for i in range(args.n + args.probe)]

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(kv_put, names + (["shared"] if args.same_path else [])))

    def create(i: int) -> None:
        ns = namespaces[i % len(namespaces)]
        path = "shared" if args.same_path and i < args.n else ""
        kube.request("POST", f"{GROUP}/namespaces/{ns}/vaultsecrets", vault_secret(ns, names[i], args.refresh, path))

    # Secrets appearing, seen by a label-selected watch.
    seen: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=kube.watch, daemon=True, args=(
        "/api/v1/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvaultkeeper",
        lambda typ, obj, t: seen.setdefault(obj["metadata"]["namespace"] + "/" + obj["metadata"]["name"], t)
        if typ == "ADDED" else None, stop))
    watcher.start()
    time.sleep(1)
    created = 0.0
    if args.preload:
        print(f"creating {args.n} VaultSecrets before the operator starts ({args.workers} connections) ...", flush=True)
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(create, range(args.n)))
        created = time.monotonic() - t0
        print(f"  created in {created:.1f}s ({args.n / created:.0f}/s)", flush=True)

    started = time.monotonic()
    op, port = start_operator(args.operator, "operator-bench.log")
    try:
        ready_at = time.monotonic()
        base_rss = rss_kib(op.pid, "VmRSS")
        # CPU of each process over the first syncs (with --preload nothing else runs meanwhile).
        procs = {"operator": op.pid, **{name: stack_pid(name) for name in ("kube-apiserver", "etcd", "bao")}}
        cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}

        if args.preload:
            t0 = ready_at
        else:
            print(f"creating {args.n} VaultSecrets (refreshInterval {args.refresh}, {args.workers} connections) ...",
                  flush=True)
            t0 = time.monotonic()
            with ThreadPoolExecutor(args.workers) as pool:
                list(pool.map(create, range(args.n)))
            created = time.monotonic() - t0
        first = set(names[:args.n])
        ready = 0
        while True:
            # Listing thousands of resources is itself load: list only once every Secret is there.
            if sum(1 for k in list(seen) if k.split("/")[1] in first) >= args.n:
                items = kube.request("GET", f"{GROUP}/vaultsecrets")["items"]
                ready = sum(1 for o in items for c in (o.get("status") or {}).get("conditions", [])
                            if c["type"] == "Ready" and c["status"] == "True")
                if ready >= args.n:
                    break
            if time.monotonic() - t0 > 900:
                raise RuntimeError(f"only {ready}/{args.n} Ready after 900s")
            time.sleep(0.2)
        all_ready = time.monotonic() - t0
        first_cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in procs.items()}
        written = sorted(t for k, t in list(seen.items()) if k.split("/")[1] in first)
        throughput = len(written) / (written[-1] - ready_at) if args.preload and written and written[-1] > ready_at else 0
        print(f"  all {args.n} Ready after {all_ready:.1f}s (creates took {created:.1f}s; {len(written)} Secrets seen)",
              flush=True)

        # Steady state: every CR refreshes at least twice in the window, nothing in Vault changes.
        time.sleep(5)
        audit = Path(os.environ["VK_BAO_AUDIT_LOG"])
        audit_start = audit.stat().st_size
        m0 = metrics(port)
        w0 = time.monotonic()

        # Meanwhile: new CRs, served ahead of the refreshes.
        latencies = []
        probe_at: dict = {}
        time.sleep(5)
        for j in range(args.probe):
            i = args.n + j
            ns = namespaces[i % len(namespaces)]
            t = time.monotonic()
            kube.request("POST", f"{GROUP}/namespaces/{ns}/vaultsecrets", vault_secret(ns, names[i], args.refresh))
            probe_at[f"{ns}/{names[i]}"] = t
            time.sleep(0.4)
        while time.monotonic() - w0 < args.window:
            time.sleep(1)
        m1 = metrics(port)
        window = time.monotonic() - w0
        for key, t in probe_at.items():
            if key in seen:
                latencies.append(seen[key] - t)
        stop.set()

        # Requests from the probe CRs (first syncs) are taken out of the steady-state figures.
        d = lambda prefix, *n: total(m1, prefix, *n) - total(m0, prefix, *n)  # noqa: E731
        unchanged = d("vaultkeeper_syncs_total", 'result="unchanged"')
        synced = d("vaultkeeper_syncs_total", 'result="synced"')
        vault_reqs = d("vaultkeeper_vault_requests_total")
        meta_reqs = d("vaultkeeper_vault_requests_total", 'operation="kv2_metadata"')
        data_reqs = d("vaultkeeper_vault_requests_total", 'operation="kv2_read"')
        secret_writes = d("vaultkeeper_kube_writes_total", 'resource="secret"')
        status_writes = d("vaultkeeper_kube_writes_total", 'resource="status"')
        event_writes = d("vaultkeeper_kube_writes_total", 'resource="event"')
        logins_start = total(m0, "vaultkeeper_vault_logins_total")
        logins_window = d("vaultkeeper_vault_logins_total")
        audit_reads = same_path_reads = 0
        with audit.open() as f:
            f.seek(audit_start)
            for line in f:
                rec = json.loads(line)
                path = rec.get("request", {}).get("path", "")
                if rec.get("type") == "response" and "/bench/" in path:
                    audit_reads += 1
                    same_path_reads += path == "secret/metadata/bench/shared"
        peak = rss_kib(op.pid, "VmHWM")
        end_rss = rss_kib(op.pid, "VmRSS")
        # Probe CRs each made one metadata read, one data read and one Secret write (+ status).
        steady_vault = vault_reqs - synced * 2
        steady_kube = (secret_writes - synced) + max(0.0, status_writes - synced) + max(0.0, event_writes - synced)

        print()
        print(f"VaultSecret benchmark: N={args.n} in {len(namespaces)} namespaces, refreshInterval {args.refresh}, "
              f"steady window {window:.0f}s")
        if args.preload:
            print(f"  operator start -> caches filled          {ready_at - started:8.1f} s")
            print(f"  time until all {args.n} Ready              {all_ready:8.1f} s  (from caches filled)")
            print(f"  first-sync throughput                    {throughput:8.0f} resources/s  "
                  f"(caches filled -> last Secret written)")
            print("  CPU per first sync                       " + ", ".join(
                f"{name} {cpu / args.n * 1000:.2f} ms" for name, cpu in first_cpu.items())
                + f" (of {os.cpu_count() * all_ready / args.n * 1000:.2f} ms of the {os.cpu_count()} cores' time per resource)")
        else:
            print(f"  time until all {args.n} Ready              {all_ready:8.1f} s  "
                  f"(creates took {created:.1f} s, {args.n / max(created, 1e-9):.0f}/s)")
        if latencies:
            print(f"  created -> Secret exists ({len(latencies)} CRs)   p50 {pct(latencies, 50) * 1000:6.0f} ms"
                  f"   p99 {pct(latencies, 99) * 1000:6.0f} ms   max {max(latencies) * 1000:6.0f} ms")
        else:
            print("  created -> Secret exists: no probe Secret seen")
        print(f"  operator RSS                             idle {base_rss / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
              f"end {end_rss / 1024:.1f} MiB")
        print(f"  unchanged refreshes in window            {unchanged:8.0f}  (plus {synced:.0f} first syncs of new CRs)")
        if unchanged:
            print(f"  Vault requests per unchanged refresh     {steady_vault / unchanged:8.3f}  "
                  f"(metadata {meta_reqs - synced:.0f}, data reads {data_reqs - synced:.0f})")
            print(f"  Kubernetes writes per unchanged refresh  {steady_kube / unchanged:8.3f}")
        print(f"  OpenBao audit: responses on bench paths  {audit_reads:8d}")
        if args.same_path:
            intervals = window / seconds_of(args.refresh)
            shared = d("vaultkeeper_vault_reads_shared_total", 'operation="kv2_metadata"')
            # From the audit log: the probes' own refreshes also read metadata, of their own paths.
            print(f"  same path: metadata reads per interval   {same_path_reads / intervals:8.2f}  "
                  f"({args.n} VaultSecrets, {intervals:.1f} intervals, {same_path_reads} reads in OpenBao's audit log; "
                  f"{shared:.0f} reads answered by a shared one)")
        print(f"  logins per identity                      {logins_start / len(namespaces):.1f} at start, "
              f"{logins_window / len(namespaces):.1f} in the {window:.0f}s window "
              f"(= {logins_window / len(namespaces) * 3600 / window:.1f}/h)")
        unrelated = None
        if args.unrelated:
            unrelated = create_unrelated(args, kube, namespaces, op.pid)
            print(f"  {args.unrelated} unrelated Secrets and {args.unrelated} ConfigMaps   RSS {unrelated['before'] / 1024:.1f} MiB "
                  f"before, {unrelated['after'] / 1024:.1f} MiB after ({(unrelated['after'] - unrelated['before']) / 1024:+.1f} MiB; "
                  f"created in {unrelated['seconds']:.0f} s, {unrelated['errors']} errors)")
        if args.smoke:
            broken = []
            if unrelated and unrelated["errors"]:
                broken.append(f"{unrelated['errors']} unrelated creates failed")
            if len(latencies) != args.probe:
                broken.append(f"{args.probe - len(latencies)} of {args.probe} probe Secrets never seen")
            if not unchanged:
                broken.append("no unchanged refresh in the window")
            return smoke_verdict(broken)
        return 0
    finally:
        stop_operator(op)


if __name__ == "__main__":
    sys.exit(main())
