"""The stack's real node (`stack.py --node`): containerd, a CNI bridge, kubelet, kube-proxy and CoreDNS
on this machine, so Pods run as real containers, and the undo of every change they make to the host.

Only one real node fits a machine (fixed paths, cgroups, iptables, the cni0 bridge). CLAIM marks it
taken and records the host as it was before, so `down` can put it back (and check that it did) even
when the state dir is gone. Recipes and pitfalls: ../shared/design/TESTING.md, "A real node".
"""

import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

NAME = "vk-node"
POD_CIDR, POD_GATEWAY = "10.244.0.0/24", "10.244.0.1"
SERVICE_CIDR = "10.0.0.0/24"
DNS_IP = "10.0.0.10"  # kube-dns's ClusterIP, the Pods' nameserver, as on most clusters
LABEL = "vaultkeeper.dev/real-node"
# The existing tests' Pods keep landing on the kwok node; Pods meant for this one tolerate the taint.
TAINT = f"{LABEL}=true:NoSchedule"
PAUSE_IMAGE, BUSYBOX_IMAGE = "vaultkeeper.test/pause:1", "vaultkeeper.test/busybox:1"
CLAIM = Path("/run/vaultkeeper-node.json")
# Paths the runtime, the CNI plugins and kubelet create whatever their configuration says: shim
# sockets (/run/containerd/s), the CNI result cache, kubelet's device-plugin folder, container log links.
FIXED_PATHS = ["/run/containerd", "/run/netns", "/var/lib/cni", "/var/lib/kubelet", "/var/log/containers",
               "/var/log/pods", "/var/lib/containerd", "/opt/containerd", "/etc/cni", "/opt/cni",
               "/usr/libexec/kubernetes", "/etc/kubernetes", "/run/kubernetes", "/var/lib/kube-proxy",
               "/run/mount"]  # (umount's own table, made by the teardown's first umount)
# Folders whose entries a snapshot lists, to catch a new path that FIXED_PATHS does not name.
WATCHED_DIRS = ["/run", "/var/lib", "/var/log", "/etc", "/opt", "/usr/libexec"]
# Where mounts of Pods may be left: kubelet's volumes, container root filesystems, netns files.
MOUNT_ROOTS = ["/run/containerd", "/run/netns", "/var/lib/kubelet"]
# Host settings the kubelet (kernel tunables), the bridge plugin (forwarding) and kube-proxy change.
SYSCTLS = ["vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
           "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
           "net.ipv4.conf.all.forwarding", "net.ipv4.conf.default.forwarding", "net.ipv6.conf.all.forwarding",
           "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
           "net.ipv4.conf.all.route_localnet", "net.netfilter.nf_conntrack_max",
           "net.netfilter.nf_conntrack_tcp_timeout_established", "net.netfilter.nf_conntrack_tcp_timeout_close_wait"]
# Counters that change by themselves; they say nothing about what the node left behind.
VOLATILE_SYSCTLS = re.compile(r"^(fs\.(dentry-state|file-nr|inode-nr|inode-state)|kernel\.ns_last_pid|kernel\.random\."
                              r"|kernel\.pty\.nr|fs\.quota\.|net\.netfilter\.nf_conntrack_count)")
CHAIN_PREFIXES = ("KUBE-", "CNI-", "VK-")
NODE_PROGRAMS = ("containerd", "containerd-shim", "containerd-shim-runc-v2", "kubelet", "kube-proxy", "runc", "coredns")


class Refused(RuntimeError):
    """Starting was refused before anything was changed: nothing of this stack's to stop."""


def run(*args, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def node_ip() -> tuple:
    """The address and device of the default route: pods reach the host there, never on loopback."""
    out = run("ip", "-4", "route", "get", "1").stdout.split()
    return out[out.index("src") + 1], out[out.index("dev") + 1]


# --- the host, as a snapshot to restore and compare -----------------------------------------------
def mounts() -> list:
    """Mount points, deepest last, from mountinfo (whose octal escapes are undone)."""
    with open("/proc/self/mountinfo") as f:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in f]
    return points


def sysctls() -> dict:
    out = run("sysctl", "-a", check=False).stdout
    return dict(line.split(" = ", 1) for line in out.splitlines() if " = " in line)


def nft_tables() -> list:
    return sorted(run("nft", "list", "tables").stdout.splitlines())


def snapshot() -> dict:
    """What the node could change on the host, in a form two snapshots can be compared in."""
    cgroups = sorted(f"{h.name}/{c.name}" for h in Path("/sys/fs/cgroup").iterdir() if h.is_dir()
                     for c in h.iterdir() if c.is_dir())
    procs = []
    for p in Path("/proc").iterdir():
        try:
            comm = (p / "comm").read_text().strip() if p.name.isdigit() else ""
        except OSError:
            continue
        if comm in NODE_PROGRAMS or comm.startswith("containerd-shim"):
            procs.append(comm)
    routes = [re.sub(r" expires \d+sec", "", r) for r in run("ip", "route", "show", "table", "all").stdout.splitlines()]
    return {
        "netfilter": run("nft", "-s", "list", "ruleset").stdout.splitlines(),
        "links": sorted(line.split(":")[1].strip() for line in run("ip", "-o", "link").stdout.splitlines()),
        "addresses": sorted(" ".join(line.split()[1:4]) for line in run("ip", "-o", "addr").stdout.splitlines()),
        "routes": sorted(routes),
        "netns": sorted(run("ip", "netns", "list").stdout.splitlines()),
        "mounts": sorted(mounts()),
        "cgroups": cgroups,
        "paths": [p for p in FIXED_PATHS if os.path.lexists(p)],
        "entries": sorted(f"{d}/{e}" for d in WATCHED_DIRS if os.path.isdir(d) for e in os.listdir(d)),
        "processes": sorted(procs),
        "sysctl": {k: v for k, v in sysctls().items() if not VOLATILE_SYSCTLS.match(k)},
    }


def differences(before: dict, after: dict) -> list:
    """Lines naming what is on the host now that was not before, and the other way round."""
    out = []
    # A link that came or went is reported once, not with each of its own settings.
    links = set(before["links"]) ^ set(after["links"])
    own = re.compile(r"^net\.ipv[46]\.(conf|neigh)\.([^.]+)\.")
    for key in before:
        if key == "sysctl":
            b, a = before[key], after[key]
            out += [f"sysctl {k}: {b.get(k, '(absent)')} -> {a.get(k, '(absent)')}" for k in sorted(set(b) | set(a))
                    if b.get(k) != a.get(k) and not ((m := own.match(k)) and m[2] in links)]
        elif key == "netfilter":  # a ruleset reads in order
            out += [f"netfilter {line}" for line in difflib.unified_diff(before[key], after[key], n=1, lineterm="")
                    if not line.startswith(("---", "+++"))]
        else:
            b, a = set(before[key]), set(after[key])
            out += [f"{key} +{x}" for x in sorted(a - b)] + [f"{key} -{x}" for x in sorted(b - a)]
    return out


def only_base_chains(table: str) -> bool:
    """Whether an nf_tables table holds nothing but empty built-in chains (what iptables leaves
    behind once every rule and chain of its own is gone)."""
    chain, base = None, False
    for line in (line.strip() for line in run("nft", "-s", "list", *table.split()).stdout.splitlines()[1:]):
        if line.startswith("chain "):
            chain, base = line, False
        elif line.startswith("type ") and chain:
            base = True
        elif line == "}" and chain:
            if not base:
                return False  # a chain someone made
            chain = None
        elif line and line != "}":
            return False  # a rule, set or map
    return True


def wait_until(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # a service that is still starting answers with errors
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


class Node:
    """The real node of one stack. `stack` gives it the stack's state dir and process handling."""

    def __init__(self, stack, bin_dir: Path):
        self.stack = stack
        self.bin = bin_dir
        self.dir = stack.state / "node"
        self.ip, self.dev = node_ip()
        self.sock = self.dir / "containerd" / "containerd.sock"
        self.ctr = ["ctr", "--address", str(self.sock), "-n", "k8s.io"]

    # --- the claim --------------------------------------------------------------------------------
    def claimed(self) -> bool:
        """Whether this machine's node belongs to this stack."""
        try:
            return json.loads(CLAIM.read_text())["state"] == str(self.stack.state)
        except (OSError, ValueError, KeyError):
            return False

    def claim(self) -> None:
        """Takes the machine's one node slot, recording the host as it is, before any change."""
        if CLAIM.exists():
            other = json.loads(CLAIM.read_text()).get("state", "?")
            raise Refused(f"this machine already has a real node (state dir {other}); only one can run: "
                               f"stop it with `stack.py down --state-dir {other}`")
        before = snapshot()
        if before["processes"]:
            raise Refused(f"node programs already run on this machine ({', '.join(sorted(set(before['processes'])))}); "
                               "a real node needs the machine to itself")
        record = json.dumps({"state": str(self.stack.state), "before": before})
        try:
            with open(CLAIM, "x") as f:  # exclusive: two stacks starting at once cannot both win
                f.write(record)
        except FileExistsError:
            raise Refused("another real node claimed this machine just now") from None
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "host-before.json").write_text(record)

    def before(self) -> dict:
        for path in (CLAIM, self.dir / "host-before.json"):
            try:
                record = json.loads(path.read_text())
                if record["state"] == str(self.stack.state):
                    return record["before"]
            except (OSError, ValueError, KeyError):
                pass
        return {}

    # --- certificates and API server flags -------------------------------------------------------
    def apiserver_sans(self) -> list:
        # Pods reach the API server as kubernetes.default.svc (10.0.0.1, the first address of the
        # Service range) and kube-proxy sends them to the node address.
        return [f"IP:{self.ip}", "IP:10.0.0.1", "DNS:kubernetes", "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]

    def pki(self, sign) -> None:
        """`sign(name, subject, ext)` makes <name>.crt/.key signed by the stack's CA."""
        sign("node", f"/O=system:nodes/CN=system:node:{NAME}", "extendedKeyUsage=clientAuth\n")
        sign("kubelet-serving", f"/CN={NAME}", f"subjectAltName=IP:{self.ip},DNS:{NAME}\nextendedKeyUsage=serverAuth\n")
        sign("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", "extendedKeyUsage=clientAuth\n")
        sign("kube-proxy", "/CN=system:kube-proxy", "extendedKeyUsage=clientAuth\n")

    def apiserver_flags(self, pki: Path) -> list:
        return ["--bind-address=0.0.0.0", f"--advertise-address={self.ip}", "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction", "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
                f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
                f"--kubelet-certificate-authority={pki}/ca.crt",
                # Webhooks and aggregated APIs in Pods are dialled at their endpoints, as on a real
                # cluster where the API server runs beside kube-proxy.
                "--enable-aggregator-routing=true"]

    # --- up ---------------------------------------------------------------------------------------
    def kubeconfig(self, name: str, server: str, pki: Path) -> Path:
        path = self.dir / f"{name}.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "vk",
            "clusters": [{"name": "vk", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": name, "user": {"client-certificate": str(pki / f"{name}.crt"), "client-key": str(pki / f"{name}.key")}}],
            "contexts": [{"name": "vk", "context": {"cluster": "vk", "user": name}}],
        }))
        return path

    def containerd_config(self) -> Path:
        d = self.dir / "containerd"
        d.mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        config = d / "config.toml"
        config.write_text(f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
# Plugins that would make folders outside the state dir, or that need tools this machine lacks.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj (kubelet asks for -998 for sandboxes)
  # makes every runc create fail.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.dir / 'cni' / 'net.d'}"
""")
        (self.dir / "cni" / "net.d" / "10-vk.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "vk-pods",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.dir / "cni" / "ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ]}, indent=1))
        return config

    def kubelet_config(self, pki: Path, port: int, healthz: int) -> Path:
        # Pods get no resolver of the host's (its address is not one to send tests' traffic to).
        (self.dir / "resolv.conf").write_text("options ndots:1\n")
        config = self.dir / "kubelet.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # these machines have cgroup v1
            "cgroupDriver": "cgroupfs", "protectKernelDefaults": False,
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            "address": self.ip, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
            "tlsCertFile": str(pki / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "registerWithTaints": [{"key": LABEL, "value": "true", "effect": "NoSchedule"}],
            "clusterDomain": "cluster.local", "clusterDNS": [DNS_IP], "resolvConf": str(self.dir / "resolv.conf"),
            "podLogsDir": str(self.dir / "pod-logs"), "volumePluginDir": str(self.dir / "volume-plugins"),
            "makeIPTablesUtilChains": False, "oomScoreAdj": 0,
            # Imported images are all there is: never collect them, never evict for a full disk.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "failSwapOn": False, "serializeImagePulls": False,
        }, indent=1))
        return config

    def proxy_config(self, kubeconfig: Path, healthz: int, metrics: int) -> Path:
        config = self.dir / "kube-proxy.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)}, "hostnameOverride": NAME, "mode": "iptables",
            "clusterCIDR": POD_CIDR, "healthzBindAddress": f"127.0.0.1:{healthz}", "metricsBindAddress": f"127.0.0.1:{metrics}",
            # No host-wide conntrack tuning and no route_localnet: nothing the tests need, more to undo.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False}, "oomScoreAdj": 0,
        }, indent=1))
        return config

    def start_dns(self, kubectl, kubeconfig: Path, free_port) -> None:
        """CoreDNS on the node address, behind the Service kube-system/kube-dns (no selector, one
        EndpointSlice naming the node address), so names of Services and Pods resolve in Pods.
        It answers for cluster.local only: no name leads a Pod's query off this machine."""
        health, ready = free_port(), free_port()
        corefile = self.dir / "Corefile"
        corefile.write_text(f""".:53 {{
    bind {self.ip}
    ready 127.0.0.1:{ready}
    health 127.0.0.1:{health}
    errors
    cache 5
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
""")
        self.stack.start("coredns", [str(self.bin / "coredns"), "-conf", str(corefile)])
        ports = [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
             "spec": {"clusterIP": DNS_IP, "ports": [{**p, "targetPort": 53} for p in ports]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "kube-dns-node", "namespace": "kube-system",
                          "labels": {"kubernetes.io/service-name": "kube-dns", "endpointslice.kubernetes.io/managed-by": "vaultkeeper-stack"}},
             "addressType": "IPv4", "endpoints": [{"addresses": [self.ip], "conditions": {"ready": True}}], "ports": ports},
        ]}))
        # ready answers 200 once the kubernetes plugin has its first view of the cluster.
        wait_until("CoreDNS", lambda: run("curl", "-sf", f"http://127.0.0.1:{ready}/ready").returncode == 0, 30)

    def guard(self) -> None:
        """Pod and Service addresses never leave through the host's own interface: a Pod that asks
        for an address nothing here answers is refused, instead of its packets going out."""
        ipt = lambda *a: run("iptables", "-w", "5", *a)  # noqa: E731
        ipt("-N", "VK-NODE-GUARD")
        for match in (["-s", POD_CIDR], ["-d", POD_CIDR], ["-d", SERVICE_CIDR]):
            ipt("-A", "VK-NODE-GUARD", "-o", self.dev, *match, "-j", "REJECT")
        for chain in ("FORWARD", "OUTPUT"):
            ipt("-I", chain, "1", "-j", "VK-NODE-GUARD")

    def up(self, server: str, pki: Path, kubectl, kubeconfig: Path, free_port) -> dict:
        t0 = time.monotonic()
        bin_dir = self.bin
        images = bin_dir / "node-images"
        for need in (bin_dir / "kubelet", bin_dir / "kube-proxy", bin_dir / "coredns", images / "pause.tar", images / "busybox.tar"):
            if not need.exists():
                raise RuntimeError(f"{need} is missing: run e2e/stack/install.sh")
        self.guard()
        self.start_dns(kubectl, kubeconfig, free_port)
        self.stack.start("containerd", ["containerd", "--config", str(self.containerd_config())])
        wait_until("containerd", lambda: run(*self.ctr, "version").returncode == 0, 30)
        for archive in ("pause.tar", "busybox.tar"):
            run(*self.ctr, "images", "import", str(images / archive))
        t_kubelet = time.monotonic()
        port, healthz = free_port(), free_port()
        self.stack.start("kubelet", [str(bin_dir / "kubelet"), f"--config={self.kubelet_config(pki, port, healthz)}",
                                     f"--kubeconfig={self.kubeconfig('node', server, pki)}", f"--hostname-override={NAME}",
                                     f"--node-ip={self.ip}", f"--root-dir={self.dir / 'kubelet'}",
                                     f"--node-labels={LABEL}=true", "--v=2"])
        ready = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
        wait_until("the real node to be Ready", lambda: kubectl("get", "node", NAME, "-o", ready).strip() == "True", 60)
        t_ready = time.monotonic()
        proxy_healthz = free_port()
        self.stack.start("kube-proxy", [str(bin_dir / "kube-proxy"),
                                        f"--config={self.proxy_config(self.kubeconfig('kube-proxy', server, pki), proxy_healthz, free_port())}"])
        # healthz answers 200 once the rules of every Service have been written.
        wait_until("kube-proxy", lambda: run("curl", "-sf", f"http://127.0.0.1:{proxy_healthz}/healthz").returncode == 0, 30)
        print(f"real node {NAME} ({self.ip}) Ready {t_ready - t_kubelet:.1f}s after kubelet start; "
              f"node up in {time.monotonic() - t0:.1f}s", flush=True, file=sys.stderr)
        return {"VK_NODE_NAME": NAME, "VK_NODE_IP": self.ip, "VK_NODE_TAINT": TAINT, "VK_NODE_LABEL": f"{LABEL}=true",
                "VK_CTR": " ".join(self.ctr), "VK_DNS_IP": DNS_IP, "VK_BUSYBOX_IMAGE": BUSYBOX_IMAGE, "VK_PAUSE_IMAGE": PAUSE_IMAGE}

    # --- down -------------------------------------------------------------------------------------
    def down(self) -> bool:
        """Stops the node's programs and containers and undoes its host changes; whether there was a
        node of this stack to undo. The claim is the only licence: without it the host (and maybe
        another stack's node) is left alone. Every step tolerates having been done already."""
        if not self.claimed():
            for name in ("kube-proxy", "kubelet", "coredns", "containerd"):
                self.stack.stop(name)
            return False
        before = self.before()
        for name in ("kube-proxy", "kubelet", "coredns"):
            self.stack.stop(name)
        self.kill_pods()
        self.stack.stop("containerd")
        self.kill_shims()
        self.unmount()
        self.remove_links(before)
        self.remove_netfilter(before)
        self.remove_cgroups(before)
        self.restore_sysctls(before)
        self.remove_paths(before)
        CLAIM.unlink()
        return True

    def check(self) -> list:
        """The differences between the host now and before the node started (empty: restored)."""
        before = self.before()
        return differences(before, snapshot()) if before else ["no record of the host before the node started"]

    def kubepods(self) -> list:
        return [h / "kubepods" for h in Path("/sys/fs/cgroup").iterdir() if (h / "kubepods").is_dir()]

    def kill_pods(self) -> None:
        """Every container process lives in a kubepods cgroup, whatever state kubelet and containerd
        are in; kill them there."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pids = set()
            for root in self.kubepods():
                for procs in root.rglob("cgroup.procs"):
                    try:
                        pids.update(int(p) for p in procs.read_text().split())
                    except OSError:
                        pass
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        print("node: container processes survived SIGKILL for 15s", file=sys.stderr)

    def shims(self) -> list:
        needle = str(self.sock).encode()
        found = []
        for p in Path("/proc").iterdir():
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0") if p.name.isdigit() else []
                zombie = (p / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z" if argv else True
            except (OSError, IndexError):
                continue
            if not zombie and argv[0].endswith(b"containerd-shim-runc-v2") and needle in b" ".join(argv):
                found.append(int(p.name))
        return found

    def kill_shims(self) -> None:
        """Shims outlive containerd (they are daemons of their own); kill those of this node."""
        deadline = time.monotonic() + 10
        while (pids := self.shims()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def unmount(self) -> None:
        roots = [str(self.stack.state)] + MOUNT_ROOTS
        inside = lambda m: any(m == r or m.startswith(r + "/") for r in roots)  # noqa: E731
        for point in sorted((m for m in mounts() if inside(m)), key=len, reverse=True):
            if run("umount", point, check=False).returncode != 0:
                run("umount", "-l", point, check=False)

    def remove_links(self, before: dict) -> None:
        had = set(before.get("links", []))
        for line in run("ip", "-o", "link").stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name not in had and (name == "cni0" or name.startswith("veth")):
                run("ip", "link", "delete", name, check=False)

    def remove_netfilter(self, before: dict) -> None:
        """Drops the chains of kube-proxy, kubelet, the CNI plugins and the guard (and every rule that
        jumps to them), then the nf_tables tables that only they had made."""
        chain = re.compile(r"^(:|-A |-I )(" + "|".join(CHAIN_PREFIXES) + ")")
        target = re.compile(r" -[jg] (" + "|".join(CHAIN_PREFIXES) + ")")
        for save, restore in (("iptables-save", "iptables-restore"), ("ip6tables-save", "ip6tables-restore")):
            saved = run(save, check=False).stdout
            kept = "".join(line for line in saved.splitlines(True) if not chain.match(line) and not target.search(line))
            if kept != saved:
                run(restore, "-w", "5", input=kept, check=False)
        had = set(before.get("netfilter", []))
        for table in nft_tables():
            if table + " {" not in had and (table.endswith(" kube-proxy") or only_base_chains(table)):
                run("nft", "delete", *table.split(), check=False)

    def remove_cgroups(self, before: dict) -> None:
        had = set(before.get("cgroups", []))
        for root in self.kubepods():
            if f"{root.parent.name}/kubepods" in had:
                continue
            deadline = time.monotonic() + 10
            while root.exists() and time.monotonic() < deadline:
                for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [root]:
                    try:
                        d.rmdir()
                    except OSError:
                        pass
                if root.exists():
                    time.sleep(0.2)

    def restore_sysctls(self, before: dict) -> None:
        was, now = before.get("sysctl", {}), sysctls()
        for key in SYSCTLS:  # in order: ip_forward first, it resets every interface's forwarding
            if key in was and now.get(key) != was[key]:
                try:
                    Path("/proc/sys", key.replace(".", "/")).write_text(was[key])
                except OSError as err:
                    print(f"node: cannot restore {key}={was[key]}: {err}", file=sys.stderr)
                now = sysctls()

    def remove_paths(self, before: dict) -> None:
        had = set(before.get("paths", FIXED_PATHS))
        points = mounts()
        for path in FIXED_PATHS:
            if path in had or not os.path.lexists(path):
                continue
            # Never delete through a mount that is still there (a hostPath volume is the host's own).
            if any(m == path or m.startswith(path + "/") for m in points):
                print(f"node: {path} still has mounts; left in place", file=sys.stderr)
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
