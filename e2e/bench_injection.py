#!/usr/bin/env python3
"""Injection benchmark against the real stack; prints figures, asserts nothing.

Run through `make bench-injection` (hack/bench-injection.sh), which installs and starts the stack,
builds the release webhook and agent and the load generator (e2e/loadgen), and passes the env.
  1. Webhook handler, direct: AdmissionReviews POSTed to /mutate at --rate for --duration (open
     loop, e2e/loadgen). Client-side latency (TLS, HTTP, JSON both ways, on this busy 2-core box)
     and the handler's own time from its histogram vaultkeeper_webhook_admission_duration_seconds
     (decode + decide + encode: the figure the "handler p99" target is about).
  2. Through the API server: Pods created with server-side dry run (?dryRun=All runs admission,
     mutating webhooks included, and stores nothing) at --rate, without and with the webhook
     registered: client-side latency of both, and the webhook call as the API server timed it
     (apiserver_admission_webhook_admission_duration_seconds). That timing includes the API
     server's own work on the answer (decoding it, applying the JSON patch, decoding the patched
     Pod), so each run is paired with a reference webhook (e2e/refhook) that does no work and
     answers with the same patch: the floor any webhook injecting this Pod has on this machine.
     --apiserver-profile FILE keeps the API server's CPU profile of each run (go tool pprof).
  3. vaultkeeper-agent vs `bao agent` (OpenBao's fork of Vault Agent, what vault-k8s injects),
     the same 10 KV v2 secrets through the same 10 templates with a real ServiceAccount token:
     init mode (time to first render, peak RSS) and sidecar mode (steady RSS after --sidecar-seconds).
Quantiles from histograms are estimated as Prometheus' histogram_quantile does (linear within a
bucket), so they are only as fine as the buckets; the bucket bounds are printed with them.
"""

import argparse
import base64
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NS = "injbench"
ROLE = "injbench"
WEBHOOK_NAME = "inject.vaultkeeper.dev"
TEMPLATES = 10


# --- small helpers -------------------------------------------------------------------------------
def sh(*args: str, **kw) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - retried until the deadline
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def pct(values: list, p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def median(values: list) -> float:
    return pct(values, 50)


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle, sum(values))


class CpuWindow:
    """CPU use during a phase: the whole machine (other people's work included) and our processes."""

    def __init__(self, pids: dict):
        self.pids = pids
        self.t0, self.m0 = time.monotonic(), machine_busy()
        self.c0 = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def done(self) -> str:
        seconds = time.monotonic() - self.t0
        m1 = machine_busy()
        cores = os.cpu_count() or 1
        busy = (m1[0] - self.m0[0]) / max(1, m1[1] - self.m0[1]) * cores
        parts = [f"machine {busy:.2f} of {cores} cores busy"]
        parts += [f"{name} {(cpu_seconds(pid) - self.c0[name]) / seconds:.2f}" for name, pid in self.pids.items()]
        return ", ".join(parts)


class PeerWatch:
    """Distinct client connections to a local port, sampled with `ss` every 0.2 s: shows whether
    the API server keeps its connections to the webhook or opens new ones (TLS handshakes)."""

    def __init__(self, port: int):
        self.port, self.peers, self.stop_flag = port, set(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{self.port} )"],
                                 capture_output=True, text=True).stdout
            self.peers.update(line.split()[-1] for line in out.splitlines() if line.strip())
            time.sleep(0.2)

    def done(self) -> int:
        self.stop_flag.set()
        self.thread.join(2)
        return len(self.peers)


class Kube:
    """The stack's API server with the admin client certificate of its kubeconfig."""

    def __init__(self) -> None:
        cfg = json.loads(Path(os.environ["KUBECONFIG"]).read_text())
        user = cfg["users"][0]["user"]
        self.cert, self.key = user["client-certificate"], user["client-key"]
        self.server = os.environ["VK_KUBE_SERVER"]
        self.ca = os.environ["VK_KUBE_CA"]
        self.ctx = ssl.create_default_context(cafile=self.ca)
        self.ctx.load_cert_chain(self.cert, self.key)

    def raw(self, method: str, path: str, body=None, content_type: str = "application/json") -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method, headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, context=self.ctx, timeout=120) as resp:
            return resp.read()

    def request(self, method: str, path: str, body=None, content_type: str = "application/json"):
        raw = self.raw(method, path, body, content_type)
        return json.loads(raw) if raw.startswith(b"{") else raw.decode()


# --- Prometheus histograms -----------------------------------------------------------------------
def histogram(text: str, metric: str, **labels: str) -> dict:
    """Cumulative bucket counts {le: count} plus _sum and _count, summed over the series whose
    labels include `labels`."""
    out: dict = {"buckets": {}, "sum": 0.0, "count": 0.0}
    pattern = re.compile(rf"^{re.escape(metric)}_(bucket|sum|count)(?:\{{(.*)\}})? (\S+)")
    for line in text.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        kind, raw_labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        found = dict(re.findall(r'(\w+)="([^"]*)"', raw_labels))
        if any(found.get(k) != v for k, v in labels.items()):
            continue
        if kind == "bucket":
            le = float(found["le"])  # "+Inf" parses as inf
            out["buckets"][le] = out["buckets"].get(le, 0.0) + value
        else:
            out[kind] += value
    return out


def counter(text: str, metric: str, **labels: str) -> float:
    """The sum of a counter's series whose labels include `labels`."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(metric)}(?:_total)?(?:\{{(.*)\}})? (\S+)")
    for line in text.splitlines():
        m = pattern.match(line)
        if m and all(dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")).get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def histogram_delta(after: dict, before: dict) -> dict:
    return {"buckets": {le: n - before["buckets"].get(le, 0.0) for le, n in after["buckets"].items()},
            "sum": after["sum"] - before["sum"], "count": after["count"] - before["count"]}


def quantile(h: dict, q: float) -> tuple:
    """(estimate in seconds, lower bound, upper bound of its bucket), as histogram_quantile."""
    buckets = sorted(h["buckets"].items())
    total = buckets[-1][1] if buckets else 0
    if not total:
        return (float("nan"), 0.0, 0.0)
    rank, lower, prev = q * total, 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if le == float("inf"):
                return (lower, lower, le)  # above the highest finite bound
            return (lower + (le - lower) * (rank - prev) / (cum - prev), lower, le)
        lower, prev = le, cum
    return (lower, lower, float("inf"))


def share_at_most(h: dict, bound: float) -> float:
    total = h["buckets"].get(float("inf"), 0)
    return h["buckets"].get(bound, float("nan")) / total if total else float("nan")


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}" if seconds == seconds else "n/a"


def fmt_quantiles(h: dict, interpolate: bool = True) -> str:
    """Quantiles with their bucket; `interpolate=False` for buckets too coarse for an estimate
    inside them to mean anything (the API server's lowest bucket is 0-5 ms)."""
    parts = []
    for label, q in (("p50", 0.50), ("p99", 0.99)):
        est, lo, hi = quantile(h, q)
        hi_text = "inf" if hi == float("inf") else f"{hi * 1000:g}"
        if interpolate:
            parts.append(f"{label} ~{fmt_ms(est)} ms (bucket {lo * 1000:g}-{hi_text} ms)")
        else:
            parts.append(f"{label} in {lo * 1000:g}-{hi_text} ms")
    total = h["buckets"].get(float("inf"), 0)
    full = [le for le, n in sorted(h["buckets"].items()) if total and n >= total]
    top = "n/a" if not full else "inf (above the last bucket)" if full[0] == float("inf") else f"{full[0] * 1000:g} ms"
    parts.append(f"max <= {top}")
    mean = h["sum"] / h["count"] if h["count"] else float("nan")
    parts.append(f"mean {fmt_ms(mean)} ms, n={h['count']:.0f}")
    return ", ".join(parts)


# --- load ----------------------------------------------------------------------------------------
def load(args, url: str, body: bytes, work: Path, name: str, cert: tuple = ()) -> dict:
    body_file = work / f"{name}.body.json"
    body_file.write_bytes(body)
    cmd = [args.loadgen, f"-url={url}", f"-body={body_file}", f"-rate={args.rate}", f"-duration={args.duration}s",
           f"-workers={args.workers}"]
    if cert:
        cmd += [f"-ca={cert[0]}", f"-cert={cert[1]}", f"-key={cert[2]}"]
    return json.loads(sh(*cmd))


def fmt_load(r: dict) -> str:
    lat = r["latencyMs"]
    if not lat:
        return f"no successful request ({r['errors']} errors: {r.get('firstError')})"
    text = (f"p50 {pct(lat, 50):7.3f} ms   p99 {pct(lat, 99):7.3f} ms   max {max(lat):8.3f} ms   "
            f"({r['sent']} requests at {r['achievedRate']:.0f}/s")
    return text + (f", {r['errors']} errors: {r['firstError']})" if r["errors"] else ")")


# --- the objects under test ----------------------------------------------------------------------
def app_pod(name: str) -> dict:
    """A Pod as vault-k8s users annotate it: two secrets with templates."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "annotations": {
            "vault.hashicorp.com/agent-inject": "true",
            "vault.hashicorp.com/role": ROLE,
            "vault.hashicorp.com/agent-inject-secret-db.env": f"secret/data/{NS}/s01",
            "vault.hashicorp.com/agent-inject-template-db.env":
                f'{{{{ with secret "secret/data/{NS}/s01" -}}}}\nDB_USER={{{{ .Data.data.username }}}}\n'
                'DB_PASS={{ .Data.data.password }}\n{{- end }}\n',
            "vault.hashicorp.com/agent-inject-secret-api.json": f"secret/data/{NS}/s02",
            "vault.hashicorp.com/agent-inject-template-api.json":
                f'{{{{ with secret "secret/data/{NS}/s02" }}}}{{{{ .Data.data | toJSON }}}}{{{{ end }}}}',
        }},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }


def admission_review(pod: dict) -> dict:
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0d6b5c8e-1f7e-4c55-9d0c-6f1c1e9c2a10",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"], "namespace": NS, "operation": "CREATE",
            "userInfo": {"username": "admin", "groups": ["system:masters", "system:authenticated"]},
            "object": pod, "oldObject": None, "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def template(i: int) -> str:
    return (f'{{{{ with secret "secret/data/{NS}/s{i:02d}" -}}}}\n'
            'username={{ .Data.data.username }}\npassword={{ .Data.data.password }}\n'
            'url=postgresql://{{ .Data.data.username }}:{{ .Data.data.password }}@db:5432/app\n{{- end }}\n')


def serving_cert(work: Path, key_type: str) -> None:
    """A serving certificate for 127.0.0.1 signed by a throwaway CA. ECDSA P-256 by default, the key
    type the operator issues the webhook's certificate with (operator/src/webhook_tls.rs)."""
    o = lambda *a: sh("openssl", *a, cwd=work)  # noqa: E731
    new_key = ["-newkey", "rsa:2048"] if key_type == "rsa" else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    o("req", "-x509", *new_key, "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=webhook-ca")
    o("req", *new_key, "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=vaultkeeper-webhook")
    (work / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    o("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tls.crt",
      "-days", "1", "-extfile", "san.ext")


def register_webhook(port: int, work: Path) -> None:
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "vaultkeeper-bench"},
        "webhooks": [{
            "name": WEBHOOK_NAME, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 5, "reinvocationPolicy": "Never",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate",
                             "caBundle": base64.b64encode((work / "ca.crt").read_bytes()).decode()},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                                        "values": [NS]}]},
        }],
    }
    sh("kubectl", "apply", "-f", "-", input=json.dumps(config))


# --- agents --------------------------------------------------------------------------------------
class Run:
    """One agent process: time until all files exist, exit time and, with `timed`, peak RSS and CPU
    time from GNU time (`%M` = the child's ru_maxrss).

    Not wait4 straight from Python: a child forked (or vforked) from Python starts with Python's
    ~30 MiB high-water mark, which survives the exec and would be reported as the agent's peak.
    GNU time's own child starts from its ~2 MiB, below anything measured here."""

    def __init__(self, cmd: list, env: dict, files: list, log: Path, timed: bool):
        self.files = files
        self.time_file = log.with_name("time.txt") if timed else None
        if timed:
            cmd = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(self.time_file), *cmd]
        self.first_render = None
        self.exit_time = None
        self.returncode = None
        self.maxrss_kib = None
        self.cpu_s = None
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.watcher = threading.Thread(target=self._watch_files, daemon=True)
        self.watcher.start()

    def _watch_files(self) -> None:
        while True:
            exited = self.returncode is not None
            if all(f.exists() and f.stat().st_size > 0 for f in self.files):
                self.first_render = time.monotonic() - self.started
                return
            if exited:
                return
            time.sleep(0.001)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            except ChildProcessError:  # already reaped by Popen.poll(): it exited on its own
                self.exit_time = self.exit_time or time.monotonic() - self.started
                self.returncode = self.proc.returncode
                self.watcher.join(1)
                return
            if pid:
                self.exit_time = time.monotonic() - self.started
                self.returncode = os.waitstatus_to_exitcode(status)
                self.proc.returncode = self.returncode
                if self.time_file and self.time_file.exists():
                    words = self.time_file.read_text().split()[-3:]
                    self.maxrss_kib = int(words[0])
                    self.cpu_s = float(words[1]) + float(words[2])
                self.watcher.join(1)
                return
            if time.monotonic() > deadline:
                self.proc.kill()
                deadline = time.monotonic() + 5
            time.sleep(0.0005)

    def stop(self) -> None:
        self.proc.terminate()
        self.wait(10)


def agent_config(args, mode: str, out: Path, run: Path, token: Path) -> str:
    return json.dumps({
        "version": 1, "mode": mode, "vaultAddr": os.environ["VAULT_ADDR"], "authPath": "auth/kubernetes",
        "role": ROLE, "tokenFile": str(token), "readyFile": str(run / "ready"), "volumePath": str(out),
        "secrets": [{"name": f"s{i:02d}", "path": f"secret/data/{NS}/s{i:02d}", "file": f"s{i:02d}.env",
                     "mountPath": str(out), "template": template(i)} for i in range(1, TEMPLATES + 1)],
    })


def bao_agent_config(mode: str, out: Path, token: Path) -> str:
    stanzas = "".join(f'''
template {{
  destination = "{out}/s{i:02d}.env"
  contents    = <<EOT
{template(i)}EOT
}}
''' for i in range(1, TEMPLATES + 1))
    return f'''
exit_after_auth = {"true" if mode == "init" else "false"}
vault {{
  address = "{os.environ["VAULT_ADDR"]}"
}}
auto_auth {{
  method "kubernetes" {{
    mount_path = "auth/kubernetes"
    config = {{
      role       = "{ROLE}"
      token_path = "{token}"
    }}
  }}
}}
template_config {{
  exit_on_retry_failure = true
}}
{stanzas}'''


def start_agent(args, kind: str, mode: str, work: Path, token: Path, label: str) -> Run:
    out, run = work / label / "secrets", work / label / "run"
    out.mkdir(parents=True)
    run.mkdir(parents=True)
    files = [out / f"s{i:02d}.env" for i in range(1, TEMPLATES + 1)]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work / label)}
    if kind == "vaultkeeper":
        env["VAULTKEEPER_AGENT_CONFIG"] = agent_config(args, mode, out, run, token)
        cmd = [args.agent]
    else:
        hcl = work / label / "agent.hcl"
        hcl.write_text(bao_agent_config(mode, out, token))
        cmd = [args.bao, "agent", f"-config={hcl}"]
    return Run(cmd, env, files, work / label / "agent.log", timed=mode == "init")


def bench_agents(args, work: Path, token: Path) -> dict:
    results: dict = {"vaultkeeper": {"init": [], "sidecar": None}, "bao": {"init": [], "sidecar": None}}
    outputs = {}
    for n in range(args.init_runs):
        for kind in ("vaultkeeper", "bao"):  # interleaved, so background load hits both alike
            r = start_agent(args, kind, "init", work, token, f"{kind}-init-{n}")
            r.wait(60)
            results[kind]["init"].append(r)
            if r.returncode != 0 or r.first_render is None:
                tail = (work / f"{kind}-init-{n}" / "agent.log").read_text(errors="replace")[-600:]
                print(f"  warning: {kind} init run {n} exit {r.returncode}, files "
                      f"{sum(f.exists() for f in r.files)}/{TEMPLATES}:\n{tail}", flush=True)
            outputs[kind] = [f.read_bytes() if f.exists() else b"" for f in r.files]
    results["same_output"] = outputs.get("vaultkeeper") == outputs.get("bao")
    for kind in ("vaultkeeper", "bao"):
        r = start_agent(args, kind, "sidecar", work, token, f"{kind}-sidecar")
        samples = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.sidecar_seconds and r.proc.poll() is None:
            time.sleep(1)
            samples.append((round(time.monotonic() - t0), proc_kib(r.proc.pid, "VmRSS")))
        alive = r.proc.poll() is None
        hwm_live = proc_kib(r.proc.pid, "VmHWM") if alive else 0
        r.stop()
        results[kind]["sidecar"] = {"run": r, "samples": samples, "alive": alive, "hwm": hwm_live}
    return results


# --- main ----------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200, help="admission reviews / Pod creates per second")
    ap.add_argument("--duration", type=int, default=30, help="seconds of load per measurement")
    ap.add_argument("--workers", type=int, default=32, help="concurrent requests at most")
    ap.add_argument("--init-runs", type=int, default=5, help="init-mode runs of each agent")
    ap.add_argument("--sidecar-seconds", type=int, default=20, help="sidecar-mode run of each agent")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--webhook", default=str(target / "release/vaultkeeper-webhook"))
    ap.add_argument("--agent", default=str(target / "release/vaultkeeper-agent"))
    ap.add_argument("--loadgen", default=str(target / "loadgen"))
    ap.add_argument("--bao", default=str(Path(os.environ.get("VK_BIN", "")) / "bao"))
    ap.add_argument("--key-type", choices=["ecdsa", "rsa"], default="ecdsa",
                    help="the webhook's serving key: ecdsa (P-256, what the operator issues) or rsa (2048)")
    ap.add_argument("--opted-out", action="store_true",
                    help="load with a Pod that is not opted in (the webhook answers without a patch): what "
                         "calling a webhook at all costs the API server, for comparison")
    ap.add_argument("--apiserver-profile", metavar="FILE",
                    help="write the API server's CPU profile of the run with the webhook to FILE")
    ap.add_argument("--refhook", default=str(target / "refhook"))
    ap.add_argument("--refhook-http2", action="store_true", help="let the reference webhook offer HTTP/2")
    ap.add_argument("--skip", action="append", default=[], choices=["handler", "apiserver", "reference", "agents"])
    ap.add_argument("--smoke", action="store_true",
                    help="the short form CI runs (e2e/bench_smoke.sh): small sizes, and exit 1 if a phase did not "
                         "work (errors, no calls, an agent failing or rendering differently); figures still not judged")
    args = ap.parse_args()
    if args.smoke:
        args.rate, args.duration, args.init_runs, args.sidecar_seconds = 20, 3, 1, 6

    work = Path(os.environ["VK_STACK_DIR"]) / "bench-injection"
    sh("rm", "-rf", str(work))
    work.mkdir(parents=True)
    kube = Kube()
    bao = lambda *a, **kw: sh("bao", *a, **kw)  # noqa: E731

    # Identity, policy and the 10 KV v2 secrets.
    kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
    kube.request("POST", f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": "web"}})
    bao("policy", "write", ROLE, "-",
        input=f'path "secret/data/{NS}/*" {{ capabilities = ["read"] }}\npath "secret/metadata/{NS}/*" {{ capabilities = ["read"] }}\n')
    bao("write", f"auth/kubernetes/role/{ROLE}", "bound_service_account_names=web",
        f"bound_service_account_namespaces={NS}", f"policies={ROLE}", "token_ttl=1h")
    for i in range(1, TEMPLATES + 1):
        bao("kv", "put", f"secret/{NS}/s{i:02d}", f"username=user{i:02d}", f"password=pw-{i:02d}-{os.urandom(6).hex()}")
    token = work / "sa-token"
    token.write_text(sh("kubectl", "-n", NS, "create", "token", "web", "--duration=1h").strip())

    # The webhook (release build), with a serving certificate for 127.0.0.1.
    serving_cert(work, args.key_type)
    port, metrics_port = free_port(), free_port()
    wh_log = (Path(os.environ["VK_STACK_DIR"]) / "logs" / "webhook-bench.log").open("w")
    webhook = subprocess.Popen([args.webhook, "--addr", f"127.0.0.1:{port}", "--cert-file", str(work / "tls.crt"),
                                "--key-file", str(work / "tls.key"), "--metrics-addr", f"127.0.0.1:{metrics_port}",
                                "--agent-image", "registry.example/vaultkeeper-agent:bench",
                                "--vault-addr", "https://vault.example:8200"],
                               env={**os.environ, "RUST_LOG": "warn"}, stdout=wh_log, stderr=wh_log)
    wh_metrics = lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()  # noqa: E731
    wh_hist = lambda: histogram(wh_metrics(), "vaultkeeper_webhook_admission_duration_seconds")  # noqa: E731
    wh_connections = lambda: counter(wh_metrics(), "vaultkeeper_webhook_connections", result="ok")  # noqa: E731
    api_hist = lambda: histogram(kube.request("GET", "/metrics"), "apiserver_admission_webhook_admission_duration_seconds",  # noqa: E731
                                 name=WEBHOOK_NAME)
    report: dict = {}
    refhook, ref_port = None, 0
    pids_dir = Path(os.environ["VK_STACK_DIR"]) / "pids"
    apiserver = int((pids_dir / "kube-apiserver.pid").read_text())
    etcd = int((pids_dir / "etcd.pid").read_text())
    try:
        wait_for("the webhook", lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2).status == 200)
        bench_pod = app_pod("bench")
        if args.opted_out:
            bench_pod["metadata"]["annotations"]["vault.hashicorp.com/agent-inject"] = "false"
        review = json.dumps(admission_review(bench_pod)).encode()
        pod_body = json.dumps(bench_pod).encode()

        webhook_ctx = ssl.create_default_context(cafile=str(work / "ca.crt"))  # trusts both webhooks
        if "reference" not in args.skip:
            # The same patch from a webhook that does no work (e2e/refhook): the floor for any
            # webhook injecting this, on this machine.
            patch = json.loads(urllib.request.urlopen(urllib.request.Request(
                f"https://127.0.0.1:{port}/mutate", data=review, headers={"Content-Type": "application/json"}),
                context=webhook_ctx, timeout=10).read())["response"].get("patch")
            (work / "reference.patch.json").write_bytes(base64.b64decode(patch) if patch else b"")
            ref_port = free_port()
            ref_log = (Path(os.environ["VK_STACK_DIR"]) / "logs" / "refhook-bench.log").open("w")
            refhook = subprocess.Popen([args.refhook, f"-addr=127.0.0.1:{ref_port}", f"-cert={work / 'tls.crt'}",
                                        f"-key={work / 'tls.key'}", f"-patch={work / 'reference.patch.json'}",
                                        f"-http2={'true' if args.refhook_http2 else 'false'}"],
                                       stdout=ref_log, stderr=ref_log)
            wait_for("the reference webhook", lambda: urllib.request.urlopen(
                f"https://127.0.0.1:{ref_port}/healthz", context=webhook_ctx,
                timeout=2).status == 200)

        if "handler" not in args.skip:
            print(f"1/3 handler direct: {args.rate:g}/s for {args.duration}s ...", flush=True)
            h0 = wh_hist()
            cpu = CpuWindow({"webhook": webhook.pid})
            report["direct"] = load(args, f"https://127.0.0.1:{port}/mutate", review, work, "direct",
                                    (str(work / "ca.crt"), "", ""))
            report["direct_cpu"] = cpu.done()
            report["direct_handler"] = histogram_delta(wh_hist(), h0)
            if refhook:
                print("    ... and the reference webhook ...", flush=True)
                cpu = CpuWindow({"refhook": refhook.pid})
                report["direct_ref"] = load(args, f"https://127.0.0.1:{ref_port}/mutate", review, work, "direct-ref",
                                            (str(work / "ca.crt"), "", ""))
                report["direct_ref_cpu"] = cpu.done()

        if "apiserver" not in args.skip:
            cert = (kube.ca, kube.cert, kube.key)
            url = f"{kube.server}/api/v1/namespaces/{NS}/pods?dryRun=All"
            print(f"2/3 API server, dry-run Pod creates without the webhook: {args.rate:g}/s for {args.duration}s ...", flush=True)
            cpu = CpuWindow({"kube-apiserver": apiserver, "etcd": etcd})
            report["api_without"] = load(args, url, pod_body, work, "api-without", cert)
            report["api_without_cpu"] = cpu.done()
            def mutated() -> bool:
                created = kube.request("POST", f"/api/v1/namespaces/{NS}/pods?dryRun=All", app_pod("probe"))
                return created["metadata"].get("annotations", {}).get("vaultkeeper.dev/status") == "injected"

            def with_webhook(key: str, label: str, hook_port: int, pids: dict) -> None:
                """One run with the webhook at `hook_port` registered; its figures under `key`."""
                register_webhook(hook_port, work)
                wait_for("the API server to call the webhook", mutated, 30)
                print(f"    ... with {label}: {args.rate:g}/s for {args.duration}s ...", flush=True)
                a0, h0, c0 = api_hist(), wh_hist(), wh_connections()
                cpu = CpuWindow({"kube-apiserver": apiserver, "etcd": etcd, **pids})
                peers = PeerWatch(hook_port)
                profile = None
                if args.apiserver_profile:
                    # The API server's own CPU profile over most of the run (its /debug/pprof, on by
                    # default): `go tool pprof -top <file>` shows where its time went.
                    seconds = max(1, args.duration - 2)
                    target = Path(f"{args.apiserver_profile}.{key}")
                    profile = threading.Thread(target=lambda: target.write_bytes(
                        kube.raw("GET", f"/debug/pprof/profile?seconds={seconds}")), daemon=True)
                    profile.start()
                report[key] = load(args, url, pod_body, work, key, cert)
                if profile:
                    profile.join(30)
                report[f"{key}_cpu"] = cpu.done()
                report[f"{key}_peers"] = peers.done()
                report[f"{key}_handshakes"] = wh_connections() - c0
                report[f"{key}_webhook"] = histogram_delta(api_hist(), a0)
                report[f"{key}_handler"] = histogram_delta(wh_hist(), h0)
                sh("kubectl", "delete", "mutatingwebhookconfiguration", "vaultkeeper-bench")
                wait_for("the API server to stop calling the webhook", lambda: not mutated(), 30)

            with_webhook("api_with", "vaultkeeper-webhook", port, {"webhook": webhook.pid})
            if refhook:
                with_webhook("api_ref", "the reference webhook (no work, the same patch)", ref_port,
                             {"refhook": refhook.pid})
    finally:
        webhook.terminate()
        webhook.wait(10)
        if refhook:
            refhook.terminate()
            refhook.wait(10)

    if "agents" not in args.skip:
        print(f"3/3 agents: {args.init_runs} init runs each, then {args.sidecar_seconds}s in sidecar mode each ...", flush=True)
        report["agents"] = bench_agents(args, work, token)

    print_report(args, report)
    if args.smoke:
        print("smoke: the short form (small sizes, debug builds in CI): the figures above are not comparable with "
              "docs/performance.md")
        broken = smoke_failures(report)
        for reason in broken:
            print(f"smoke: {reason}")
        print("smoke: every phase worked" if not broken else "smoke: FAILED")
        return 1 if broken else 0
    return 0


def smoke_failures(report: dict) -> list:
    """What did not work in a run (not how fast it was)."""
    broken = []
    for key in ("direct", "direct_ref", "api_without", "api_with", "api_ref"):
        if key in report and (report[key]["errors"] or not report[key]["latencyMs"]):
            broken.append(f"{key}: {report[key]['errors']} errors ({report[key].get('firstError')}), "
                          f"{len(report[key]['latencyMs'])} answered")
    for key in ("api_with_webhook", "api_ref_webhook"):
        if key in report and not report[key]["count"]:
            broken.append(f"{key}: the API server recorded no webhook call")
    if "direct_handler" in report and not report["direct_handler"]["count"]:
        broken.append("the handler's histogram recorded no review")
    if "agents" in report:
        a = report["agents"]
        if not a["same_output"]:
            broken.append("the agents rendered different files")
        for kind in ("vaultkeeper", "bao"):
            if any(r.returncode != 0 or r.first_render is None for r in a[kind]["init"]):
                broken.append(f"{kind}: an init run failed")
            if not a[kind]["sidecar"]["alive"] or a[kind]["sidecar"]["run"].first_render is None:
                broken.append(f"{kind}: the sidecar run failed")
    return broken


def print_report(args, report: dict) -> None:
    print()
    print(f"Injection benchmark ({os.cpu_count()} CPUs; figures taken on a shared machine, see the load below)")
    print(f"  load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if "direct" in report:
        print(f"\nWebhook handler, direct (POST /mutate, Pod with 2 templated secrets, {args.rate:g}/s for {args.duration}s)")
        print(f"  client-side (Go, TLS keep-alive)     {fmt_load(report['direct'])}")
        print(f"  handler's own time (its histogram)   {fmt_quantiles(report['direct_handler'])}")
        print(f"  CPU during the run                   {report['direct_cpu']} (loadgen not shown)")
        if "direct_ref" in report:
            print(f"  the reference webhook, client-side   {fmt_load(report['direct_ref'])}")
            print(f"  the reference webhook, CPU           {report['direct_ref_cpu']}")
    if "api_with" in report:
        print(f"\nThrough the API server (POST pods?dryRun=All, {args.rate:g}/s for {args.duration}s)")
        print(f"  client-side, no webhook              {fmt_load(report['api_without'])}")
        print(f"  CPU, no webhook                      {report['api_without_cpu']}")
        runs = [("api_with", "vaultkeeper-webhook")]
        if "api_ref" in report:
            runs.append(("api_ref", "the reference webhook (e2e/refhook: no work, the same patch"
                                    + (", HTTP/2 offered)" if args.refhook_http2 else ")")))
        wo = report["api_without"]["latencyMs"]
        for key, label in runs:
            print(f"  with {label}")
            print(f"    client-side                        {fmt_load(report[key])}")
            w = report[key]["latencyMs"]
            if w and wo:
                print(f"    difference (with - without)        p50 {pct(w, 50) - pct(wo, 50):+7.3f} ms   p99 {pct(w, 99) - pct(wo, 99):+7.3f} ms")
            print(f"    CPU                                {report[f'{key}_cpu']}")
            h = report[f"{key}_webhook"]
            print(f"    webhook call, API server's timing  {fmt_quantiles(h, interpolate=False)}")
            print(f"      (apiserver_admission_webhook_admission_duration_seconds, buckets 5/25/100 ms...: "
                  f"{share_at_most(h, 0.005) * 100:.2f}% of calls <= 5 ms; the mean is exact: sum/count)")
            print(f"    API server -> webhook connections  {report[f'{key}_peers']} distinct peers seen in 0.2 s samples"
                  + (f", {report[f'{key}_handshakes']:.0f} TLS handshakes (vaultkeeper_webhook_connections_total)"
                     if key == "api_with" else ""))
        print(f"  vaultkeeper-webhook handler's time   {fmt_quantiles(report['api_with_handler'])}")
    if "agents" in report:
        a = report["agents"]
        print(f"\nAgents rendering the same {TEMPLATES} KV v2 secrets through the same {TEMPLATES} templates "
              f"(real SA token, Kubernetes auth; outputs identical: {'yes' if a['same_output'] else 'NO'})")
        print(f"  {'':34}{'vaultkeeper-agent':>22}{'bao agent':>22}")

        def row(label: str, fn, unit: str) -> None:
            cells = []
            for kind in ("vaultkeeper", "bao"):
                try:
                    cells.append(fn(a[kind]))
                except (TypeError, ValueError, KeyError, IndexError):
                    cells.append("n/a")
            print(f"  {label:34}{cells[0]:>22}{cells[1]:>22}  {unit}")

        ok_runs = lambda k: [r for r in k["init"] if r.returncode == 0 and r.first_render is not None]  # noqa: E731
        row("init: runs ok", lambda k: f"{len(ok_runs(k))}/{len(k['init'])}", "")
        row("init: first render (median)", lambda k: f"{median([r.first_render for r in ok_runs(k)]) * 1000:.0f}", "ms, start -> all files written")
        row("init: first render (min-max)", lambda k: f"{min(r.first_render for r in ok_runs(k)) * 1000:.0f}-"
                                                      f"{max(r.first_render for r in ok_runs(k)) * 1000:.0f}", "ms")
        row("init: exit (median)", lambda k: f"{median([r.exit_time for r in ok_runs(k)]) * 1000:.0f}", "ms, start -> process exited")
        row("init: CPU time (median)", lambda k: f"{median([r.cpu_s for r in ok_runs(k)]) * 1000:.0f}", "ms user+sys (GNU time: 10 ms steps)")
        row("init: peak RSS (median)", lambda k: f"{median([r.maxrss_kib for r in ok_runs(k)]) / 1024:.1f}", "MiB (max RSS, GNU time %M)")
        row("init: peak RSS (max)", lambda k: f"{max(r.maxrss_kib for r in ok_runs(k)) / 1024:.1f}", "MiB")
        row("sidecar: first render", lambda k: f"{k['sidecar']['run'].first_render * 1000:.0f}", "ms")
        row(f"sidecar: steady RSS at {args.sidecar_seconds}s", lambda k: f"{k['sidecar']['samples'][-1][1] / 1024:.1f}", "MiB (VmRSS)")
        row("sidecar: RSS min-max after 5s", lambda k: f"{min(v for t, v in k['sidecar']['samples'] if t >= 5) / 1024:.1f}-"
                                                       f"{max(v for t, v in k['sidecar']['samples'] if t >= 5) / 1024:.1f}", "MiB (VmRSS, 1 s samples)")
        row("sidecar: peak RSS", lambda k: f"{k['sidecar']['hwm'] / 1024:.1f}", "MiB (VmHWM)")
        row("sidecar: alive until stopped", lambda k: "yes" if k["sidecar"]["alive"] else "NO", "")

    print("\nTargets (figures above; nothing asserted)")
    if "direct_handler" in report:
        est, lo, hi = quantile(report["direct_handler"], 0.99)
        print(f"  handler p99 <= 0.5 ms                {verdict(hi <= 0.0005, est <= 0.0005)} "
              f"(estimate {fmt_ms(est)} ms, in bucket {lo * 1000:g}-{hi * 1000:g} ms; from the handler's histogram, direct run)")
    if "api_with_webhook" in report:
        h = report["api_with_webhook"]
        ref = (f"; the reference webhook {share_at_most(report['api_ref_webhook'], 0.005) * 100:.1f}%"
               if "api_ref_webhook" in report else "")
        print(f"  API-server-observed p99 <= 5 ms      {verdict(share_at_most(h, 0.005) >= 0.99, False)} "
              f"({share_at_most(h, 0.005) * 100:.1f}% of webhook calls <= 5 ms by the API server's histogram{ref})")
        w, wo = report["api_with"]["latencyMs"], report["api_without"]["latencyMs"]
        if w and wo:
            added = pct(w, 50) - pct(wo, 50)
            ref = ""
            if report.get("api_ref", {}).get("latencyMs"):
                ref = f"; the reference webhook {pct(report['api_ref']['latencyMs'], 50) - pct(wo, 50):+.3f} ms"
            print(f"  Pod creates +<= 1 ms at p50          {verdict(added <= 1.0, False)} ({added:+.3f} ms{ref})")
    if "agents" in report:
        a = report["agents"]
        ours = [r for r in a["vaultkeeper"]["init"] if r.returncode == 0]
        theirs = [r for r in a["bao"]["init"] if r.returncode == 0 and r.first_render is not None]
        if ours:
            peak = max([r.maxrss_kib for r in ours] + [a["vaultkeeper"]["sidecar"]["hwm"]]) / 1024
            print(f"  agent RSS <= 8 MiB                   {verdict(peak <= 8, peak <= 8)} (highest peak seen {peak:.1f} MiB; "
                  f"bao agent {max(r.maxrss_kib for r in theirs) / 1024 if theirs else float('nan'):.1f} MiB)")
        if ours and theirs:
            m_ours, m_theirs = median([r.first_render for r in ours]), median([r.first_render for r in theirs])
            print(f"  first render no slower than bao      {verdict(m_ours <= m_theirs, m_ours <= m_theirs)} "
                  f"(median {m_ours * 1000:.0f} ms vs {m_theirs * 1000:.0f} ms)")


def verdict(certain: bool, estimated: bool) -> str:
    if certain:
        return "met    "
    return "met (estimate within its bucket)" if estimated else "NOT met"


if __name__ == "__main__":
    sys.exit(main())
