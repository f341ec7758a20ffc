#!/usr/bin/env python3
"""The one launcher of vaultkeeper's local stack, used by the tests and the local demo.

Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (one fake node), OpenBao
(a real raft-backed server, initialised and unsealed here) and PostgreSQL on free loopback ports;
writes a kubeconfig and `<state>/env`; configures OpenBao's Kubernetes auth against the API server.
Every process it starts is recorded by PID and stopped by `down` (or by `run` on exit or signal).
With --node it also runs a real node (node.py: containerd, kubelet, kube-proxy, CoreDNS) and makes the API
server, OpenBao and PostgreSQL reachable from its Pods; `down` undoes the node's host changes.
Programs come from `e2e/stack/install.sh` (cache under ~/.cache/vaultkeeper/bin).
"""

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import node as real_node

CACHE = Path(os.environ.get("VK_CACHE", Path.home() / ".cache" / "vaultkeeper"))
BIN = CACHE / "bin"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def running(pid: int) -> bool:
    """Whether `pid` is alive; a zombie (exited, not yet reaped by its new parent) is not, once its
    other threads have exited too. After a SIGKILL the leader of a multi-threaded process (every Go
    binary) turns zombie first, while its other threads still hold the process's files: its listening
    sockets stay bound until the last of them is gone, and a process started again on the same port
    at that moment fails with "address already in use"."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except (FileNotFoundError, IndexError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*args, **kw) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def wait_for(what: str, check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # a service that is still starting answers with errors
            pass
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


# With VK_RAW_AUDIT=1 (the test command sets it) OpenBao also writes an unhashed audit log, so tests can
# prove what Vault did and did not see (for example that a CSR-mode private key never reached it).
# OpenBao only takes audit devices from its configuration file. Never for a stack holding real data.
RAW_AUDIT = """
audit "file" "raw" {{
  options {{
    file_path = "{path}"
    log_raw   = "true"
  }}
}}
"""


class Stack:
    def __init__(self, state: Path):
        self.state = state.resolve()
        self.pids = self.state / "pids"
        self.logs = self.state / "logs"

    # --- processes -----------------------------------------------------------------------
    def start(self, name: str, args: list, user: str = "") -> None:
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if user:
            args = ["runuser", "-u", user, "--"] + args
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (self.pids / f"{name}.pid").write_text(str(proc.pid))
        (self.pids / f"{name}.argv").write_text(json.dumps(args))  # for `restart`

    def restart(self, name: str, hard: bool) -> None:
        """Stops one process (SIGKILL with `hard`, else as `down` does) and starts it again with the
        same command line."""
        args = json.loads((self.pids / f"{name}.argv").read_text())
        if hard:
            pid = int((self.pids / f"{name}.pid").read_text())
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while running(pid):
                time.sleep(0.05)
        else:
            self.stop(name)
        self.start(name, args)

    def alive(self) -> dict:
        out = {}
        for pidfile in sorted(self.pids.glob("*.pid")) if self.pids.exists() else []:
            pid = int(pidfile.read_text())
            try:
                os.kill(pid, 0)
                out[pidfile.stem] = pid
            except ProcessLookupError:
                pass
        return out

    def stop(self, name: str) -> None:
        pidfile = self.pids / f"{name}.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text())
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and running(pid):
                time.sleep(0.1)
            if not running(pid):
                break
        pidfile.unlink(missing_ok=True)

    def down(self) -> list:
        """Stops everything; with a real node, returns how the host differs from before it started
        (empty when it was restored)."""
        node = real_node.Node(self, BIN)
        restored = node.down()
        pg = self.state / "pg"
        if (self.pids / "postgres.pid").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(pg), "stop", "-m", "fast"],
                           capture_output=True)
        order = ["kwok", "kube-scheduler", "kube-controller-manager", "bao", "kube-apiserver", "etcd", "postgres"]
        # What tests started under this stack (more OpenBao nodes, say) goes first.
        others = [p.stem for p in sorted(self.pids.glob("*.pid")) if p.stem not in order] if self.pids.exists() else []
        for name in others + order:
            self.stop(name)
        return node.check() if restored else []

    # --- certificates --------------------------------------------------------------------
    def pki(self, node=None) -> None:
        d = self.state / "pki"
        d.mkdir(parents=True, exist_ok=True)
        o = lambda *a: sh("openssl", *a, cwd=d)  # noqa: E731
        o("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=vaultkeeper-test-ca")
        sans = ["IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes.default.svc"] + (node.apiserver_sans() if node else [])
        (d / "san.ext").write_text(f"subjectAltName={','.join(sans)}\n")
        # An extension makes the client certificate X.509 v3; rustls refuses v1 certificates.
        (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
        o("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver")
        o("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "apiserver.crt", "-days", "30", "-extfile", "san.ext")
        o("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "admin.key", "-out", "admin.csr", "-subj", "/O=system:masters/CN=admin")
        o("x509", "-req", "-in", "admin.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "admin.crt", "-days", "30", "-extfile", "client.ext")
        o("genrsa", "-out", "sa.key", "2048")
        o("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        if node:
            def sign(name: str, subject: str, ext: str) -> None:
                (d / f"{name}.ext").write_text(ext)
                o("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
                o("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.crt",
                  "-days", "30", "-extfile", f"{name}.ext")
            node.pki(sign)

    # --- up ------------------------------------------------------------------------------
    def up(self, with_node: bool = False) -> dict:
        if self.alive():
            raise real_node.Refused(f"a stack is already running from {self.state}; run `down` first")
        t0 = time.monotonic()
        self.state.mkdir(parents=True, exist_ok=True)
        real = real_node.Node(self, BIN) if with_node else None
        if real:
            real.claim()  # before any change to the host, so `down` knows what to restore
        self.pki(real)
        pki = self.state / "pki"
        etcd_port, peer_port, api_port, bao_port, bao_cluster, pg_port = (free_port() for _ in range(6))

        self.start("etcd", [str(BIN / "etcd"), "--data-dir", str(self.state / "etcd"), "--unsafe-no-fsync",
                            f"--listen-client-urls=http://127.0.0.1:{etcd_port}", f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                            f"--listen-peer-urls=http://127.0.0.1:{peer_port}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                            f"--initial-cluster=default=http://127.0.0.1:{peer_port}"])
        self.start("kube-apiserver", [str(BIN / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                                      "--bind-address=127.0.0.1", f"--secure-port={api_port}",
                                      f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
                                      f"--client-ca-file={pki}/ca.crt",
                                      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                                      f"--service-account-key-file={pki}/sa.pub", f"--service-account-signing-key-file={pki}/sa.key",
                                      "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true"]
                   + (real.apiserver_flags(pki) if real else ["--authorization-mode=RBAC"]))
        server = f"https://127.0.0.1:{api_port}"
        kubeconfig = self.state / "admin.kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "vk",
            "clusters": [{"name": "vk", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}}],
            "contexts": [{"name": "vk", "context": {"cluster": "vk", "user": "admin"}}],
        }))
        kubectl = lambda *a, **kw: sh(str(BIN / "kubectl"), f"--kubeconfig={kubeconfig}", *a, **kw)  # noqa: E731
        wait_for("the API server", lambda: kubectl("get", "--raw", "/readyz").strip() == "ok")

        self.start("kube-controller-manager", [str(BIN / "kube-controller-manager"), f"--kubeconfig={kubeconfig}", "--leader-elect=false",
                                               "--secure-port=0", f"--service-account-private-key-file={pki}/sa.key", f"--root-ca-file={pki}/ca.crt",
                                               "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service,-route,-persistentvolume-binder,-attachdetach"])
        self.start("kube-scheduler", [str(BIN / "kube-scheduler"), f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--secure-port=0"])
        # Only the fake node: kwok would otherwise also mark the real node's Pods Ready before their
        # containers start.
        self.start("kwok", [str(BIN / "kwok"), f"--kubeconfig={kubeconfig}", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                            f"--config={BIN / 'kwok-stages.yaml'}"])
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "kwok-node-0", "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": {"type": "kwok"}},
                "status": {"capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                           "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"}}}
        kubectl("apply", "-f", "-", input=json.dumps(node))

        env = self.start_bao(bao_port, bao_cluster, real.ip if real else None)
        self.start_postgres(pg_port, real.ip if real else None)

        wait_for("the default ServiceAccount", lambda: kubectl("-n", "default", "get", "sa", "default", "-o", "name").strip() != "")
        kubectl("create", "namespace", "vaultkeeper-system")
        kubectl("-n", "vaultkeeper-system", "create", "serviceaccount", "vault-token-reviewer")
        kubectl("create", "clusterrolebinding", "vault-token-reviewer", "--clusterrole=system:auth-delegator",
                "--serviceaccount=vaultkeeper-system:vault-token-reviewer")
        reviewer = kubectl("-n", "vaultkeeper-system", "create", "token", "vault-token-reviewer", "--duration=24h").strip()
        (self.state / "reviewer.jwt").write_text(reviewer)
        bao = lambda *a: sh(str(BIN / "bao"), *a, env={**os.environ, **env})  # noqa: E731
        bao("auth", "enable", "kubernetes")
        bao("write", "auth/kubernetes/config", f"kubernetes_host={server}", f"kubernetes_ca_cert=@{pki / 'ca.crt'}",
            f"token_reviewer_jwt=@{self.state / 'reviewer.jwt'}", "disable_local_ca_jwt=true")
        bao("secrets", "enable", "-path=secret", "kv-v2")
        bao("secrets", "enable", "-path=kv", "-version=1", "kv")
        wait_for("the node to be Ready", lambda: "True" in kubectl("get", "node", "kwok-node-0", "-o",
                                                                  "jsonpath={.status.conditions[?(@.type=='Ready')].status}"))
        node_env = {}
        if real:
            node_env = real.up(server, pki, kubectl, kubeconfig, free_port)
            node_env.update({"VK_BAO_NODE_ADDR": f"http://{real.ip}:{bao_port}", "VK_PG_NODE_HOST": real.ip})
            # OpenBao as Pods reach a Vault in a cluster: the Service vault.vault.svc (no selector;
            # one EndpointSlice naming OpenBao's address on the node), resolved by the cluster DNS.
            kubectl("create", "namespace", "vault")
            kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "vault", "namespace": "vault"},
                 "spec": {"ports": [{"name": "http", "port": 8200, "targetPort": bao_port}]}},
                {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "vault-1", "namespace": "vault", "labels": {"kubernetes.io/service-name": "vault"}},
                 "addressType": "IPv4", "ports": [{"name": "http", "port": bao_port}], "endpoints": [{"addresses": [real.ip]}]},
            ]}))
            node_env["VK_BAO_SERVICE_ADDR"] = "http://vault.vault.svc:8200"
        values = {
            "VK_STACK_DIR": str(self.state), "KUBECONFIG": str(kubeconfig), "VK_KUBE_SERVER": server,
            "VK_KUBE_CA": str(pki / "ca.crt"), **env, "VK_BAO_AUDIT_LOG": str(self.state / "bao" / "audit.log"),
            **({"VK_BAO_RAW_AUDIT_LOG": str(self.state / "bao" / "audit-raw.log")} if os.environ.get("VK_RAW_AUDIT") == "1" else {}),
            "VK_PG_HOST": "127.0.0.1", "VK_PG_PORT": str(pg_port), "VK_PG_USER": "postgres", "VK_BIN": str(BIN), **node_env,
        }
        # Shell-quoted, because scripts source it (VK_CTR is a command line with spaces).
        (self.state / "env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))
        print(f"stack up in {time.monotonic() - t0:.1f}s; env in {self.state / 'env'}", file=sys.stderr)
        return values

    def bao_config(self, port: int, cluster: int, node_ip=None) -> Path:
        d = self.state / "bao"
        (d / "raft").mkdir(parents=True, exist_ok=True)
        config = d / "config.hcl"
        config.write_text(f"""
storage "raft" {{
  path    = "{d / 'raft'}"
  node_id = "n1"
  # Raft's fastest timings, as recommended for production: an active node's death is noticed and
  # a new one elected within seconds (the default, 5, takes 10-25 s).
  performance_multiplier = 1
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable     = true
}}
""" + (f"""# The address Pods of the real node reach this server at.
listener "tcp" {{
  address         = "{node_ip}:{port}"
  cluster_address = "{node_ip}:{cluster}"
  tls_disable     = true
}}
""" if node_ip else "") + f"""api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cluster}"
disable_mlock = true
audit "file" "to-file" {{
  options {{
    file_path = "{d / 'audit.log'}"
  }}
}}
""" + (RAW_AUDIT.format(path=d / "audit-raw.log") if os.environ.get("VK_RAW_AUDIT") == "1" else ""))
        return config

    def start_bao(self, port: int, cluster: int, node_ip=None) -> dict:
        config = self.bao_config(port, cluster, node_ip)
        self.start("bao", [str(BIN / "bao"), "server", f"-config={config}"])
        addr = f"http://127.0.0.1:{port}"
        wait_for("OpenBao to listen", lambda: urllib.request.urlopen(f"{addr}/v1/sys/seal-status", timeout=2).status == 200)
        env = {**os.environ, "BAO_ADDR": addr}
        init = json.loads(sh(str(BIN / "bao"), "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json", env=env))
        key, root = init["unseal_keys_b64"][0], init["root_token"]
        (self.state / "bao" / "init.json").write_text(json.dumps({"key": key, "root": root, "addr": addr}))
        self.unseal_bao()
        return {"VAULT_ADDR": addr, "VAULT_TOKEN": root, "BAO_ADDR": addr, "BAO_TOKEN": root}

    def unseal_bao(self) -> None:
        info = json.loads((self.state / "bao" / "init.json").read_text())
        env = {**os.environ, "BAO_ADDR": info["addr"], "BAO_TOKEN": info["root"]}
        sh(str(BIN / "bao"), "operator", "unseal", info["key"], env=env)
        # Raft elects itself a leader a few seconds after unseal; reads fail until then.
        wait_for("OpenBao to serve", lambda: subprocess.run([str(BIN / "bao"), "token", "lookup"], env=env, capture_output=True).returncode == 0)

    def start_postgres(self, port: int, node_ip=None) -> None:
        pg = self.state / "pg"
        pg.mkdir(parents=True, exist_ok=True)
        sh("chown", "-R", "postgres:postgres", str(pg))
        sh("runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(pg), "-U", "postgres", "--auth=trust")
        # The superuser (used by tests and by OpenBao's database engine) is trusted on loopback;
        # every other role must present its password, so issued credentials are really checked.
        # Pods of the real node (their own addresses) and the node address itself get the same
        # password check; the superuser is not for them at all.
        remote = "".join(f"host all postgres {net} reject\nhost all all {net} scram-sha-256\n"
                         for net in (real_node.POD_CIDR, f"{node_ip}/32")) if node_ip else ""
        (pg / "pg_hba.conf").write_text(
            "local all postgres trust\nhost all postgres 127.0.0.1/32 trust\n"
            "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n" + remote)
        listen = "127.0.0.1" + (f",{node_ip}" if node_ip else "")
        self.start("postgres", [str(PG_BIN / "postgres"), "-D", str(pg), "-p", str(port), "-k", str(pg), "-c", f"listen_addresses={listen}"],
                   user="postgres")
        wait_for("PostgreSQL", lambda: subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                                     capture_output=True).returncode == 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "run", "status", "node-check", "bao-stop", "bao-start", "bao-seal", "bao-unseal",
                                            "restart"])
    parser.add_argument("name", nargs="?", help="with restart: the process (etcd, kube-apiserver, ...)")
    parser.add_argument("--hard", action="store_true", help="with restart: SIGKILL instead of a clean stop")
    parser.add_argument("--state-dir", default="target/stack")
    parser.add_argument("--node", action="store_true", help="with up/run: also a real node (kubelet, containerd, kube-proxy)")
    parser.add_argument("--foreground", action="store_true", help="with up: stay until interrupted, then stop everything")
    argv = sys.argv[1:]
    cmd = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    stack = Stack(Path(args.state_dir))
    if args.command == "status":
        for name, pid in stack.alive().items():
            print(f"{name} {pid}")
        return 0
    if args.command == "down":
        return host_restored(stack.down())
    if args.command == "node-check":
        return host_restored(real_node.Node(stack, BIN).check())
    if args.command == "restart":
        if not args.name or not (stack.pids / f"{args.name}.argv").exists():
            print(f"restart needs the name of a running process: {', '.join(stack.alive())}", file=sys.stderr)
            return 2
        stack.restart(args.name, args.hard)
        if args.name in ("etcd", "kube-apiserver"):
            kubeconfig = stack.state / "admin.kubeconfig"
            wait_for("the API server", lambda: sh(str(BIN / "kubectl"), f"--kubeconfig={kubeconfig}", "get", "--raw",
                                                  "/readyz").strip() == "ok")
        return 0
    if args.command in ("bao-stop", "bao-start", "bao-seal", "bao-unseal"):
        info = json.loads((stack.state / "bao" / "init.json").read_text())
        env = {**os.environ, "BAO_ADDR": info["addr"], "BAO_TOKEN": info["root"]}
        if args.command == "bao-stop":
            stack.stop("bao")
        elif args.command == "bao-start":
            stack.start("bao", [str(BIN / "bao"), "server", f"-config={stack.state / 'bao' / 'config.hcl'}"])
            wait_for("OpenBao to listen", lambda: urllib.request.urlopen(f"{info['addr']}/v1/sys/seal-status", timeout=2).status == 200)
            stack.unseal_bao()
        elif args.command == "bao-seal":
            sh(str(BIN / "bao"), "operator", "seal", env=env)
        else:
            stack.unseal_bao()
        return 0

    # up / run: whatever happens, what was started is stopped unless asked to stay up.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    keep = args.command == "up" and not args.foreground
    rc = 0
    try:
        values = stack.up(args.node)
        if args.command == "run":
            if not cmd:
                raise RuntimeError("run needs a command after --")
            rc = subprocess.run(cmd, env={**os.environ, **values, "PATH": f"{BIN}:{os.environ['PATH']}"}).returncode
        elif args.foreground:
            print("stack running; Ctrl-C stops it", file=sys.stderr)
            signal.pause()
    except real_node.Refused as err:
        # What refused is someone else's running stack or node; tearing down here would stop it.
        keep = True
        rc = 1
        print(f"stack: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        keep = False
        rc = 130
    except Exception as err:
        keep = False
        rc = 1
        print(f"stack: {err}", file=sys.stderr)
        for log in sorted(stack.logs.glob("*.log")) if stack.logs.exists() else []:
            print(f"--- last lines of {log}", file=sys.stderr)
            print("".join(log.read_text(errors="replace").splitlines(True)[-10:]), file=sys.stderr)
    finally:
        if not keep:
            # A second Ctrl-C must not cut the teardown short and leave the host half restored.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if host_restored(stack.down()) != 0 and rc == 0:
                rc = 1
    return rc


def host_restored(differences: list) -> int:
    """Reports a real node's leftovers on the host; 1 when there are any."""
    for line in differences:
        print(f"node: host differs from before the node started: {line}", file=sys.stderr)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
