#!/usr/bin/env python3
"""Chaos: OpenBao as a 3-node raft cluster whose active node is killed (SIGKILL) again and again
under a running operator, against the real stack; prints figures and what held, asserts nothing
outside --smoke.

Run through `make chaos-raft` (hack/bench.sh with BENCH=chaos_raft and OpenBao's unhashed audit
log). Two more OpenBao nodes join the stack's own (raft storage, the same unseal key); the
operator is given all three addresses (`--vault-addr a,b,c`), and so is a vaultkeeper-agent in
sidecar mode rendering one KV secret (polled every second). N VaultSecrets (refreshing),
N DynamicCredentials (short TTL: renewals fall due) and N CertificateRequests (renewals fall due)
run until all are Ready; then, `--kills` times, the active node is killed, and at that moment a new
VaultSecret, DynamicCredential and CertificateRequest are created. Measured, per kill: the time
until a surviving node is elected active, and the time from then until the three new resources
are Ready (target 10 s), and until the agent has rendered a value written after the election;
the operator's failed Vault requests. The killed node is started again and rejoins before the
next kill. Checked, from a watch of the operator's Secrets and OpenBao's
audit log:
  - every resource is Ready at the end; no Secret was emptied or deleted;
  - no credential was issued for a DynamicCredential that had one (renewals carried over to the
    new active node: the leases live in the replicated storage);
  - the new resources of every kill were served.
At the end the cluster is made the stack's single node again (the two extra nodes removed), so
what runs after it finds the stack as it was.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_certificate import certificate_request, prepare_pki
from bench_dynamic import dynamic_credential, prepare
from bench_vaultsecret import kv_identity, kv_put, vault_secret
from benchlib import GROUP, ROOT, Kube, dc_ready, metrics, rss_kib, seconds_of, start_operator, stop_operator, total, verdict
from chaos_kill import audit_events
from chaos_restart import Follower, secret_digest, until

sys.path.insert(0, str(ROOT / "e2e/stack"))
from stack import BIN, Stack, free_port, running  # noqa: E402

KINDS = ("vaultsecrets", "dynamiccredentials", "certificaterequests")


class Cluster:
    """The stack's OpenBao node (`bao`, raft node n1) and the nodes this run adds (`bao-n2`, ...)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        info = json.loads((stack.state / "bao" / "init.json").read_text())
        self.key, self.root = info["key"], info["root"]
        self.addr = {"bao": info["addr"]}  # process name -> API address

    def api(self, addr: str, method: str, path: str, body=None, timeout: float = 5):
        req = urllib.request.Request(f"{addr}/v1/{path}", method=method, headers={"X-Vault-Token": self.root},
                                     data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def join(self, name: str, node_id: str) -> None:
        """Starts one more node from the first one's configuration (its own raft directory, node id
        and ports; the same audit devices, so the audit log is one for the cluster) and unseals it:
        with `retry_join` it joins the first node's cluster."""
        first = (self.stack.state / "bao" / "config.hcl").read_text()
        port = int(self.addr["bao"].rsplit(":", 1)[1])
        cluster = int(re.search(r'cluster_addr\s*=\s*"http://127\.0\.0\.1:(\d+)"', first).group(1))
        new_port, new_cluster = free_port(), free_port()
        d = self.stack.state / name
        (d / "raft").mkdir(parents=True, exist_ok=True)
        text = (first.replace(str(self.stack.state / "bao" / "raft"), str(d / "raft"))
                .replace('node_id = "n1"', f'node_id = "{node_id}"')
                .replace(f":{port}\"", f":{new_port}\"").replace(f":{cluster}\"", f":{new_cluster}\""))
        text = text.replace('storage "raft" {', 'storage "raft" {\n  retry_join {\n    leader_api_addr = "%s"\n  }'
                            % self.addr["bao"], 1)
        (d / "config.hcl").write_text(text)
        self.addr[name] = f"http://127.0.0.1:{new_port}"
        self.stack.start(name, [str(BIN / "bao"), "server", f"-config={d / 'config.hcl'}"])
        self.unseal(name)

    def unseal(self, name: str) -> None:
        addr = self.addr[name]
        until(f"{name} to listen", lambda: self.api(addr, "GET", "sys/seal-status") is not None, 60)
        # A joining node takes the key only once it has reached the leader; until then it answers
        # that it is not yet initialized.
        until(f"{name} to unseal", lambda: not self.api(addr, "PUT", "sys/unseal", {"key": self.key})["sealed"], 60)

    def kill(self, name: str) -> None:
        pid = int((self.stack.pids / f"{name}.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        while running(pid):
            time.sleep(0.02)

    def restart(self, name: str) -> None:
        self.stack.start(name, json.loads((self.stack.pids / f"{name}.argv").read_text()))
        self.unseal(name)

    def alive(self) -> list:
        return [n for n in self.addr if n in self.stack.alive()]

    def active(self, among=None):
        """The name of the node that says it is active, asked of each live node; None if none is."""
        for name in among or self.alive():
            try:
                if self.api(self.addr[name], "GET", "sys/leader", timeout=1).get("is_self"):
                    return name
            except OSError:
                continue
        return None

    def voters(self) -> int:
        """Healthy voters by autopilot, asked of the active node."""
        name = self.active()
        state = self.api(self.addr[name], "GET", "sys/storage/raft/autopilot/state")
        servers = (state.get("data") or state)["servers"].values()
        return sum(1 for s in servers if s.get("healthy") and s.get("status") in ("leader", "voter"))

    def single_again(self) -> None:
        """Back to the stack's one node: the added nodes removed from the raft configuration and
        stopped, the followers first and an added active node last (removing itself, it steps
        down, and the first node, alone, elects itself). Asking the active node to step down
        would not do: it keeps raft's leadership and takes the active role back."""
        for name in self.addr:
            if name not in self.alive():
                self.restart(name)
        until("three healthy voters", lambda: self.voters() == len(self.addr), 120)
        leader = self.active()
        for name in sorted((n for n in self.addr if n != "bao"), key=lambda n: n == leader):
            self.api(self.addr[self.active()], "POST", "sys/storage/raft/remove-peer", {"server_id": f"n{name[-1]}"})
            if name == leader:
                until("the stack's OpenBao to be active alone", lambda: self.active(["bao"]) == "bao", 60)
            self.stack.stop(name)
            shutil.rmtree(self.stack.state / name, ignore_errors=True)
            del self.addr[name]
        until("the stack's OpenBao to serve alone", lambda: self.active() == "bao" and self.voters() == 1, 60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="resources of each kind")
    ap.add_argument("--namespaces", type=int, default=10, help="namespaces (one identity per kind each)")
    ap.add_argument("--kills", type=int, default=6, help="times the active node is killed")
    ap.add_argument("--pause", type=float, default=20, help="seconds of normal running after the killed node rejoined")
    ap.add_argument("--ttl", default="60s", help="the database role's default_ttl: renewals during the kills "
                    "(longer than an election and the recovery, or leases end in between)")
    ap.add_argument("--cert-ttl", default="2h", help="certificate lifetime")
    ap.add_argument("--renew-due", type=float, default=40, help="seconds after the issue a certificate is due")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--operator", default=str(target / "release/vaultkeeper-operator"))
    ap.add_argument("--agent", default=str(target / "release/vaultkeeper-agent"))
    ap.add_argument("--workers", type=int, default=16, help="parallel connections of the creating client")
    ap.add_argument("--smoke", action="store_true",
                    help="the short form CI runs (e2e/bench_smoke.sh): small sizes, exit 1 if a guarantee did not hold")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.namespaces, args.kills, args.pause, args.ttl = 5, 2, 2, 5, "30s"
    if not os.environ.get("VK_BAO_RAW_AUDIT_LOG"):
        print("needs OpenBao's unhashed audit log: run inside a stack started with VK_RAW_AUDIT=1 (make chaos-raft does)")
        return 2
    audit = Path(os.environ["VK_BAO_RAW_AUDIT_LOG"])
    renew_before = f"{int(seconds_of(args.cert_ttl) - args.renew_due)}s"

    kube = Kube()
    namespaces = [f"raft-{i}" for i in range(args.namespaces)]
    prepare(kube, namespaces, args.ttl, "24h")
    prepare_pki(kube, namespaces)
    for ns in namespaces:
        kv_identity(ns)
    names = {kind: [f"{kind[0]}{i:05d}" for i in range(args.n)] for kind in KINDS}
    probes = {kind: [f"{kind[0]}probe{k}" for k in range(args.kills)] for kind in KINDS}
    where = {name: namespaces[i % len(namespaces)] for kind in KINDS for i, name in enumerate(names[kind] + probes[kind])}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(kv_put, names["vaultsecrets"] + probes["vaultsecrets"]))
    cert_args = argparse.Namespace(ttl=args.cert_ttl, renew_before=renew_before, algorithm="ECDSA", size=256, mode="issue")
    make = {
        "vaultsecrets": lambda n: vault_secret(where[n], n, "15s"),
        "dynamiccredentials": lambda n: dynamic_credential(where[n], n, "10s"),
        "certificaterequests": lambda n: certificate_request(where[n], n, cert_args),
    }

    def create(kind: str, n: str) -> None:
        kube.request("POST", f"{GROUP}/namespaces/{where[n]}/{kind}", make[kind](n))

    def ready(kind: str, n: str) -> bool:
        return dc_ready(kube.request("GET", f"{GROUP}/namespaces/{where[n]}/{kind}/{n}"))

    def ready_count() -> int:
        count = 0
        for plural in KINDS:
            items = kube.request("GET", f"{GROUP}/{plural}")["items"]
            count += sum(1 for o in items if o["metadata"]["namespace"] in namespaces and dc_ready(o))
        return count

    stack = Stack(Path(os.environ["VK_STACK_DIR"]))
    cluster = Cluster(stack)
    op = agent = None
    stop = threading.Event()
    elections, recoveries, agent_recoveries, failures = [], [], [], []
    work = stack.state / "chaos-raft-agent"
    shutil.rmtree(work, ignore_errors=True)
    (work / "secrets").mkdir(parents=True)
    rendered = work / "secrets" / "agent.env"

    def agent_has(version: str) -> bool:
        return rendered.exists() and f"pw-agent{version}" in rendered.read_text()

    def kv_put_active(version: str) -> bool:
        name = cluster.active()
        cluster.api(cluster.addr[name], "POST", "secret/data/bench/agent",
                    {"data": {"user": "agent", "pass": f"pw-agent{version}"}})
        return True
    try:
        print("joining two more OpenBao nodes to the stack's (raft) ...", flush=True)
        t0 = time.monotonic()
        cluster.join("bao-n2", "n2")
        cluster.join("bao-n3", "n3")
        until("three healthy voters", lambda: cluster.voters() == 3, 180)
        print(f"  three healthy voters after {time.monotonic() - t0:.1f} s", flush=True)

        secrets = Follower(kube, "/api/v1/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvaultkeeper",
                           secret_digest, stop)
        op, port = start_operator(args.operator, "operator-chaos-raft.log",
                                  vault_addr=",".join(cluster.addr.values()))
        kv_put("agent")
        ns = namespaces[0]
        (work / "token").write_text(subprocess.run(["kubectl", "-n", ns, "create", "token", "bench", "--duration=1h"],
                                                   check=True, capture_output=True, text=True).stdout.strip())
        config = {"version": 1, "mode": "sidecar", "vaultAddr": ",".join(cluster.addr.values()),
                  "authPath": "auth/kubernetes", "role": f"bench-{ns}", "tokenFile": str(work / "token"),
                  "readyFile": str(work / "ready"), "volumePath": str(work / "secrets"),
                  "secrets": [{"name": "agent", "path": "secret/data/bench/agent", "file": "agent.env",
                               "mountPath": str(work / "secrets")}]}
        agent = subprocess.Popen([args.agent], env={"PATH": "/usr/bin:/bin", "VAULTKEEPER_AGENT_CONFIG": json.dumps(config),
                                                    "VAULTKEEPER_AGENT_POLL_INTERVAL": "1s"},
                                 stdout=open(stack.logs / "agent-chaos-raft.log", "w"), stderr=subprocess.STDOUT)
        until("the agent's first render", lambda: agent_has(""), 60)
        print(f"creating {args.n} VaultSecrets, DynamicCredentials and CertificateRequests ...", flush=True)
        with ThreadPoolExecutor(args.workers) as pool:
            for kind in KINDS:
                list(pool.map(lambda n, kind=kind: create(kind, n), names[kind]))
        print(f"  all {3 * args.n} Ready after {until('all Ready', lambda: ready_count() >= 3 * args.n, 900):.1f} s",
              flush=True)
        time.sleep(2)
        before = {k: v for k, v in secrets.current().items() if k.split("/")[0] in namespaces}
        audit_start = audit.stat().st_size
        m0 = metrics(port)

        print(f"killing the active node {args.kills} times ...", flush=True)
        for k in range(args.kills):
            victim = cluster.active()
            survivors = [n for n in cluster.alive() if n != victim]
            cluster.kill(victim)
            for kind in KINDS:
                create(kind, probes[kind][k])
            elected = until("a new active node", lambda: cluster.active(survivors) is not None, 120)
            elected_at = time.monotonic()
            pending = {(kind, probes[kind][k]) for kind in KINDS}

            def served() -> bool:
                pending.difference_update({p for p in pending if ready(*p)})
                return not pending
            try:
                # From the election on.
                served_at = until("the new resources Ready", served, 120)
                recoveries.append(served_at)
            except RuntimeError:
                failures.append(f"kill {k + 1}: not Ready within 120 s: {sorted(pending)}")
                served_at = None
            elections.append(elected)
            # The agent: a value written once the new active node takes writes (from the election).
            try:
                until("a KV write", lambda: kv_put_active(f"-kill{k}"), 60)
                until("the agent's render", lambda: agent_has(f"-kill{k}"), 60)
                agent_recoveries.append(time.monotonic() - elected_at)
            except RuntimeError as err:
                failures.append(f"kill {k + 1}: {err}")
            print(f"  kill {k + 1} ({victim}): {cluster.active(survivors)} active after {elected:.1f} s; "
                  f"then the new resources Ready after {'%.1f s' % served_at if served_at is not None else 'never'}, "
                  f"the agent's new value after {'%.1f s' % agent_recoveries[-1] if agent_recoveries else 'never'}",
                  flush=True)
            cluster.restart(victim)
            until("three healthy voters", lambda: cluster.voters() == 3, 180)
            time.sleep(args.pause)
        at_end = until("all Ready at the end", lambda: ready_count() >= 3 * (args.n + args.kills), 300)
        m1 = metrics(port)
        peak = rss_kib(op.pid, "VmHWM")
    finally:
        if op is not None:
            stop_operator(op)
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        stop.set()
        # The stack as it was, for what runs after this.
        cluster.single_again()

    ev = audit_events(audit, audit_start)
    ours = {lease for lease, ns in ev["issued_in"].items() if ns in namespaces}
    issued = [lease for lease in ev["issued"] if lease in ours]
    # Every lease of the run renews (those issued before the kills too; no other operator runs).
    renewed = sum(len(v) for v in ev["renewed"].values())
    after = {k: v for k, v in secrets.current().items() if k.split("/")[0] in namespaces}
    lost = sorted(k for k in before if after.get(k) is None)
    failed = (total(m1, "vaultkeeper_vault_requests_total", 'status="error"')
              - total(m0, "vaultkeeper_vault_requests_total", 'status="error"')
              + sum(total(m1, "vaultkeeper_vault_requests_total", f'status="{c}"')
                    - total(m0, "vaultkeeper_vault_requests_total", f'status="{c}"') for c in ("500", "502", "503")))
    requests = total(m1, "vaultkeeper_vault_requests_total") - total(m0, "vaultkeeper_vault_requests_total")

    print()
    print(f"Chaos, OpenBao raft failover: {args.n} each of VaultSecrets, DynamicCredentials and CertificateRequests in "
          f"{len(namespaces)} namespaces; 3 nodes; the active one killed {args.kills} times; lease TTL {args.ttl}")
    print(f"  new active node elected after a kill      median {sorted(elections)[len(elections) // 2]:.1f} s, "
          f"max {max(elections):.1f} s")
    if recoveries:
        print(f"  new resources Ready after the election    median {sorted(recoveries)[len(recoveries) // 2]:.1f} s, "
              f"max {max(recoveries):.1f} s (target 10 s)")
    if agent_recoveries:
        print(f"  agent's new value after the election      median {sorted(agent_recoveries)[len(agent_recoveries) // 2]:.1f} s, "
              f"max {max(agent_recoveries):.1f} s (polling every 1 s)")
    print(f"  operator's Vault requests in the kills    {requests:.0f}, of them {failed:.0f} failed "
          f"(no answer, or 500/502/503)")
    print(f"  during the kills: renewals {renewed}, credentials issued {len(issued)} "
          f"({args.kills} for the new DynamicCredentials)")
    print(f"  Secrets emptied or deleted                {len(lost)}")
    print(f"  all {3 * (args.n + args.kills)} Ready at the end after          {at_end:.1f} s")
    print(f"  operator peak RSS                         {peak / 1024:.1f} MiB")

    if lost:
        failures.append(f"{len(lost)} Secrets deleted: {lost[:3]}")
    if len(issued) > args.kills:
        failures.append(f"{len(issued) - args.kills} credentials issued for DynamicCredentials that had one")
    if renewed == 0:
        failures.append("no renewal during the kills: the run did not exercise renewals")
    if recoveries and max(recoveries) > (30 if args.smoke else 10):
        failures.append(f"the new resources took {max(recoveries):.1f} s after an election")
    if agent_recoveries and max(agent_recoveries) > (30 if args.smoke else 10):
        failures.append(f"the agent took {max(agent_recoveries):.1f} s after an election")
    return verdict(failures, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
