#!/usr/bin/env python3
"""Chaos: the API server and etcd restarted under a running operator, against the real stack
(OpenBao, its database engine on real PostgreSQL); prints figures and what held, asserts nothing
outside --smoke.

Run through `make chaos-restart` (hack/bench.sh with BENCH=chaos_restart and OpenBao's unhashed
audit log). N VaultSecrets and N DynamicCredentials, each restarting its own Deployment (no
replicas: a rollout costs no Pod), run until all are Ready. Then the API server and etcd are
restarted `--restarts` times, in turn: the API server stopped cleanly, etcd killed, the API server
killed, and both killed at once; each restart is followed by `--pause` seconds of normal running.
The leases' TTL is short, so renewals fall due during the restarts; their max TTL is long, so no
rotation does. Afterwards the watches must still carry changes: a KV value changes under one
VaultSecret, and a new VaultSecret and a new DynamicCredential are created. What is checked, from
watches of the Secrets and Deployments (listed again after every break) and OpenBao's audit log:
  - the operator process kept running (it did not exit when the API server went away);
  - no credential was issued during the restarts (no lease lost, nothing issued twice);
  - no Secret of the operator was deleted, and none changed but the one whose KV value changed;
  - no Deployment was restarted but the one whose Secret changed, and that one exactly once;
  - after the last restart the changed value and both new resources reach their Secrets (seconds);
  - every resource is Ready at the end, and every lease the Secrets hold is live in OpenBao.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_dynamic import dynamic_credential, prepare
from bench_vaultsecret import kv_identity, kv_put, vault_secret
from benchlib import GROUP, ROOT, Kube, dc_ready, metrics, rss_kib, start_operator, stop_operator, total, verdict
from chaos_kill import LEASE_ID, RESTARTED_FOR, audit_events, deployment, live_lease_ids

STACK = [sys.executable, str(ROOT / "e2e/stack/stack.py")]
# The restarts, in turn: (what, processes, SIGKILL).
PLAN = [("API server stopped", ["kube-apiserver"], False), ("etcd killed", ["etcd"], True),
        ("API server killed", ["kube-apiserver"], True), ("etcd and API server killed", ["etcd", "kube-apiserver"], True)]


class Follower:
    """The state of every object under a list URL as the API shows it, kept by list and watch and
    listed again whenever the watch breaks (the API server went away, or the resourceVersion is
    too old after etcd came back): changes[key] = [(wall time, digest or None when deleted)]."""

    def __init__(self, kube: Kube, path: str, digest, stop: threading.Event) -> None:
        self.kube, self.path, self.digest, self.stop = kube, path, digest, stop
        self.changes: dict = {}
        self.relists = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.run, daemon=True).start()

    def seen(self, key: str, value) -> None:
        with self.lock:
            line = self.changes.setdefault(key, [])
            if not line or line[-1][1] != value:
                line.append((time.time(), value))

    def current(self) -> dict:
        with self.lock:
            return {k: v[-1][1] for k, v in self.changes.items() if v[-1][1] is not None}

    def run(self) -> None:
        key = lambda o: o["metadata"]["namespace"] + "/" + o["metadata"]["name"]  # noqa: E731
        while not self.stop.is_set():
            try:
                listed = self.kube.request("GET", self.path)
            except Exception:  # noqa: BLE001: the API server is away; list again shortly
                time.sleep(0.2)
                continue
            self.relists += 1
            present = set()
            for obj in listed["items"]:
                present.add(key(obj))
                self.seen(key(obj), self.digest(obj))
            for gone in set(self.current()) - present:  # deleted while the watch was broken
                self.seen(gone, None)
            rv = listed["metadata"]["resourceVersion"]

            def event(typ, obj, _t):
                nonlocal rv
                if typ == "ERROR":  # 410 Gone: resourceVersion too old; list again
                    raise ConnectionError(obj.get("message", "watch error"))
                rv = obj["metadata"].get("resourceVersion", rv)
                if typ != "BOOKMARK":
                    self.seen(key(obj), None if typ == "DELETED" else self.digest(obj))
            try:
                self.kube.watch(f"{self.path}&resourceVersion={rv}", event, self.stop)
            except Exception:  # noqa: BLE001: broken by the restart; list again
                time.sleep(0.2)


def secret_digest(obj: dict) -> str:
    """What a workload sees of a Secret: its data and the lease it holds."""
    data = json.dumps(obj.get("data") or {}, sort_keys=True)
    lease = (obj["metadata"].get("annotations") or {}).get(LEASE_ID, "")
    return hashlib.sha256(data.encode()).hexdigest()[:16] + ("/" + lease if lease else "")


def stamp_of(obj: dict) -> str:
    return ((obj["spec"]["template"].get("metadata") or {}).get("annotations") or {}).get(RESTARTED_FOR, "")


def until(what: str, check, timeout: float) -> float:
    """Seconds until check() holds (raises after `timeout`); errors count as not yet."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if check():
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="VaultSecrets, and as many DynamicCredentials")
    ap.add_argument("--namespaces", type=int, default=3, help="namespaces (one identity each)")
    ap.add_argument("--restarts", type=int, default=8, help="restarts of the API server and etcd, in turn")
    ap.add_argument("--pause", type=float, default=15, help="seconds of normal running after each restart")
    ap.add_argument("--ttl", default="20s", help="the database role's default_ttl: renewals during the restarts")
    ap.add_argument("--max-ttl", default="24h", help="the role's max_ttl: long, so that no rotation is due (a short "
                                                    "one shows the checks failing on the rotations' issues and rollouts)")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--operator", default=str(target / "release/vaultkeeper-operator"))
    ap.add_argument("--workers", type=int, default=16, help="parallel connections of the creating client")
    ap.add_argument("--smoke", action="store_true",
                    help="the short form CI runs (e2e/bench_smoke.sh): small sizes, exit 1 if a guarantee did not hold")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.namespaces, args.restarts, args.pause = 10, 2, 4, 6
    if not os.environ.get("VK_BAO_RAW_AUDIT_LOG"):
        print("needs OpenBao's unhashed audit log: run inside a stack started with VK_RAW_AUDIT=1 (make chaos-restart does)")
        return 2
    audit = Path(os.environ["VK_BAO_RAW_AUDIT_LOG"])

    kube = Kube()
    namespaces = [f"restart-{i}" for i in range(args.namespaces)]
    prepare(kube, namespaces, args.ttl, args.max_ttl)
    for ns in namespaces:  # the VaultSecrets' identity: the same ServiceAccount, a KV policy
        kv_identity(ns)

    vs_names = [f"v{i:05d}" for i in range(args.n)]
    dc_names = [f"d{i:05d}" for i in range(args.n)]
    where = {name: namespaces[i % len(namespaces)] for i, name in enumerate(vs_names)}
    where.update({name: namespaces[i % len(namespaces)] for i, name in enumerate(dc_names)})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(kv_put, vs_names + ["v-probe"]))

    def vs(name: str) -> dict:
        obj = vault_secret(where[name], name, "10s")
        obj["spec"]["restartTargets"] = [{"kind": "Deployment", "name": name}]
        return obj

    stop = threading.Event()
    selector = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvaultkeeper"
    secrets = Follower(kube, f"/api/v1/secrets?{selector}", secret_digest, stop)
    stamps = Follower(kube, "/apis/apps/v1/deployments?labelSelector=", stamp_of, stop)
    readiness = [Follower(kube, f"{GROUP}/{plural}?labelSelector=", dc_ready, stop)
                 for plural in ("vaultsecrets", "dynamiccredentials")]

    op, port = start_operator(args.operator, "operator-chaos-restart.log")
    exits: list = []
    try:
        print(f"creating {args.n} VaultSecrets and {args.n} DynamicCredentials, each with its Deployment ...", flush=True)
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda n: kube.request("POST", f"/apis/apps/v1/namespaces/{where[n]}/deployments",
                                                 deployment(where[n], n)), vs_names + dc_names))
            list(pool.map(lambda n: kube.request("POST", f"{GROUP}/namespaces/{where[n]}/vaultsecrets", vs(n)),
                          vs_names))
            list(pool.map(lambda n: kube.request("POST", f"{GROUP}/namespaces/{where[n]}/dynamiccredentials",
                                                 dynamic_credential(where[n], n, "5s", restart=n)), dc_names))

        def all_ready() -> bool:
            ready = 0
            for plural in ("vaultsecrets", "dynamiccredentials"):
                items = kube.request("GET", f"{GROUP}/{plural}")["items"]
                ready += sum(1 for o in items if o["metadata"]["namespace"] in namespaces and dc_ready(o))
            return ready >= 2 * args.n
        print(f"  all {2 * args.n} Ready after {until('all Ready', all_ready, 900):.1f} s", flush=True)
        time.sleep(3)  # (the first rollouts and the watches settle)

        ours = lambda current: {k: v for k, v in current.items() if k.split("/")[0] in namespaces}  # noqa: E731
        before_secrets, before_stamps = ours(secrets.current()), ours(stamps.current())
        m0 = metrics(port)
        audit_start = audit.stat().st_size
        phase_start = time.time()
        downtimes = []
        print(f"restarting the API server and etcd {args.restarts} times, {args.pause:.0f} s apart ...", flush=True)
        for i in range(args.restarts):
            what, names, hard = PLAN[i % len(PLAN)]
            r0 = time.monotonic()
            # Both at once: etcd is killed, then the API server, before either is ready again.
            procs = []
            for name in names:
                cmd = [*STACK, "restart", name, "--state-dir", os.environ["VK_STACK_DIR"]] + (["--hard"] if hard else [])
                procs.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
                time.sleep(0.3)
            for name, proc in procs:
                out, _ = proc.communicate()
                if proc.returncode != 0:
                    raise RuntimeError(f"restart of {name} failed: {out}")
            downtimes.append(time.monotonic() - r0)
            print(f"  {what}: the API server ready again after {downtimes[-1]:.1f} s", flush=True)
            time.sleep(args.pause)
            if op.poll() is not None:
                exits.append(f"exited with {op.returncode} after the restart {i + 1} ({what})")
                op, port = start_operator(args.operator, "operator-chaos-restart.log", append=True)
        phase_end = time.time()
        m1 = metrics(port)
        during_secrets, during_stamps = secrets.current(), stamps.current()

        # The watches still carry changes: a changed value, a new VaultSecret, a new DynamicCredential.
        changed = vs_names[0]
        kv_put(changed, "-2")
        vs_t = until(f"the changed value in Secret {changed}", lambda: secrets.current().get(f"{where[changed]}/{changed}")
                     != during_secrets.get(f"{where[changed]}/{changed}"), 120)
        where["v-probe"] = where["d-probe"] = namespaces[0]
        kube.request("POST", f"/apis/apps/v1/namespaces/{namespaces[0]}/deployments", deployment(namespaces[0], "d-probe"))
        t_new = time.monotonic()
        kube.request("POST", f"{GROUP}/namespaces/{namespaces[0]}/vaultsecrets", vault_secret(namespaces[0], "v-probe", "10s"))
        kube.request("POST", f"{GROUP}/namespaces/{namespaces[0]}/dynamiccredentials",
                     dynamic_credential(namespaces[0], "d-probe", "5s", restart="d-probe"))
        new_vs = until("the new VaultSecret's Secret", lambda: f"{namespaces[0]}/v-probe" in secrets.current(), 120)
        until("the new DynamicCredential's Secret", lambda: f"{namespaces[0]}/d-probe" in secrets.current(), 120)
        new_dc = time.monotonic() - t_new
        # The changed Secret's Deployment is restarted (after the debounce window); then a few
        # seconds more, in which a second restart would show.
        changed_key = f"{where[changed]}/{changed}"
        try:
            until("the restart for the changed value",
                  lambda: stamps.current().get(changed_key) != during_stamps.get(changed_key), 60)
        except RuntimeError:
            pass
        time.sleep(5)
        try:
            ready_end = until("all Ready at the end", all_ready, 60) >= 0
        except RuntimeError:
            ready_end = False
        final_secrets = secrets.current()
        peak = rss_kib(op.pid, "VmHWM")
        live = live_lease_ids()
    finally:
        stop_operator(op)
        stop.set()

    ev = audit_events(audit, audit_start)
    # Only this run's namespaces: other resources the stack holds (another run's, with their own
    # schedules) are the operator's too.
    issued_during = [lease for lease, t in ev["issued"].items()
                     if phase_start <= t < phase_end and ev["issued_in"].get(lease) in namespaces]
    renewed_during = sum(1 for v in ev["renewed"].values() for t, _ in v if phase_start <= t < phase_end)
    def moved(follower: Follower, before: dict, deleted: bool) -> list:
        """Keys whose object was deleted (or, with not `deleted`, changed) during the restarts."""
        out = []
        for key, value in before.items():
            during = [v for t, v in follower.changes.get(key, []) if phase_start <= t < phase_end]
            if any(v is None for v in during) if deleted else any(v is not None and v != value for v in during):
                out.append(key)
        return sorted(out)
    deleted = moved(secrets, before_secrets, True)
    secrets_changed = moved(secrets, before_secrets, False)
    restarted = moved(stamps, before_stamps, False) + moved(stamps, before_stamps, True)
    not_ready = sum(len(moved(f, {k: True for k, v in f.current().items() if k.split("/")[0] in namespaces}, False))
                    for f in readiness)
    changed_restarts = len([1 for t, _ in stamps.changes.get(changed_key, []) if t >= phase_end])
    leases_held = {v.split("/", 1)[1] for k, v in final_secrets.items() if "/" in v and k.split("/")[0] in namespaces}
    relists = (secrets.relists, stamps.relists)

    print()
    print(f"Chaos, API server and etcd restarts: {args.n} VaultSecrets and {args.n} DynamicCredentials in "
          f"{len(namespaces)} namespaces, lease TTL {args.ttl}; {args.restarts} restarts, {args.pause:.0f} s apart")
    print(f"  API server ready again after a restart    median {sorted(downtimes)[len(downtimes) // 2]:.1f} s, "
          f"max {max(downtimes):.1f} s (the test's own watches listed again {relists[0]} and {relists[1]} times)")
    print(f"  operator exits                            {len(exits)}")
    print(f"  during the restarts: renewals {renewed_during}, issuances {len(issued_during)}, "
          f"Kubernetes writes {total(m1, 'vaultkeeper_kube_writes_total') - total(m0, 'vaultkeeper_kube_writes_total'):.0f}, "
          f"Vault requests {total(m1, 'vaultkeeper_vault_requests_total') - total(m0, 'vaultkeeper_vault_requests_total'):.0f}")
    print(f"  Secrets deleted / changed                 {len(deleted)} / {len(secrets_changed)}")
    print(f"  resources not Ready at some point         {not_ready} (of {2 * args.n})")
    print(f"  Deployments restarted during the restarts {len(restarted)}")
    print(f"  after the last restart: changed value in its Secret after {vs_t:.1f} s (its Deployment restarted "
          f"{changed_restarts} times); new VaultSecret's Secret after {new_vs:.1f} s, new DynamicCredential's "
          f"after {new_dc:.1f} s")
    print(f"  leases the Secrets hold, live in OpenBao  {len(leases_held & live)}/{len(leases_held)}")
    print(f"  operator peak RSS                         {peak / 1024:.1f} MiB")

    failed = []
    failed += exits
    if issued_during:
        failed.append(f"{len(issued_during)} credentials issued during the restarts")
    if deleted or secrets_changed:
        failed.append(f"Secrets deleted {deleted[:3]} or changed {secrets_changed[:3]} during the restarts")
    if restarted:
        failed.append(f"{len(restarted)} Deployments restarted during the restarts: {restarted[:3]}")
    if changed_restarts != 1:
        failed.append(f"the Deployment of the changed Secret was restarted {changed_restarts} times, not once")
    if not ready_end:
        failed.append("not all Ready at the end")
    if leases_held - live:
        failed.append(f"{len(leases_held - live)} leases the Secrets hold are not live in OpenBao")
    return verdict(failed, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
