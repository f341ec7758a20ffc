"""What the real-stack benchmarks (e2e/bench_*.py) share: an API client, the operator process and
its metrics."""

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUP = "/apis/vaultkeeper.dev/v1alpha1"


class Kube:
    """A minimal API client: the admin client certificate of the stack's kubeconfig."""

    def __init__(self) -> None:
        cfg = json.loads(Path(os.environ["KUBECONFIG"]).read_text())
        user = cfg["users"][0]["user"]
        self.server = os.environ["VK_KUBE_SERVER"]
        self.ca, self.cert, self.key = os.environ["VK_KUBE_CA"], user["client-certificate"], user["client-key"]
        self.ctx = ssl.create_default_context(cafile=self.ca)
        self.ctx.load_cert_chain(self.cert, self.key)
        self.local = threading.local()

    def request(self, method: str, path: str, body=None, content_type: str = "application/json"):
        """One request on this thread's keep-alive connection (opened again once if it broke); a
        PATCH names its patch type in `content_type`."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                host, port = self.server.removeprefix("https://").split(":")
                conn = self.local.conn = http.client.HTTPSConnection(host, int(port), context=self.ctx, timeout=30)
            try:
                conn.request(method, path, body=data, headers={"Content-Type": content_type})
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {payload[:300]!r}")
            return json.loads(payload)

    def watch(self, path: str, on_event, stop: threading.Event) -> None:
        """Streams watch events of `path` (a list URL with query) to on_event(type, object, t)."""
        host, port = self.server.removeprefix("https://").split(":")
        conn = http.client.HTTPSConnection(host, int(port), context=self.ctx, timeout=600)
        conn.request("GET", path + "&watch=true&allowWatchBookmarks=false")
        resp = conn.getresponse()
        while not stop.is_set():
            line = resp.readline()
            if not line:
                break
            t = time.monotonic()
            ev = json.loads(line)
            on_event(ev["type"], ev["object"], t)


def seconds_of(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]] if duration[-1] in units else float(duration)


def metrics(port: int) -> dict:
    totals: dict = {}
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("vaultkeeper_") and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            totals[key] = float(value)
    return totals


def total(m: dict, prefix: str, *needles: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix) and all(n in k for n in needles))


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def pct(values: list, p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def start_operator(binary: str, log_name: str, *extra: str, append: bool = False, vault_addr: str = "") -> tuple:
    """Starts the operator with its metrics on a free loopback port, logging (warn, or $VK_BENCH_LOG) to the stack's
    logs/<log_name> (after what it holds, with `append`), talking to `vault_addr` (the stack's
    OpenBao unless given); returns (process, port) once it answers /readyz."""
    # A benchmark stopped with SIGTERM unwinds (its `finally` stops the operator) instead of
    # leaving the operator behind to load the next run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    log = open(Path(os.environ["VK_STACK_DIR"]) / "logs" / log_name, "a" if append else "w")
    op = subprocess.Popen([binary, "--vault-addr", vault_addr or os.environ["VAULT_ADDR"], "--metrics-addr", f"127.0.0.1:{port}",
                           "--log", os.environ.get("VK_BENCH_LOG", "warn"), *extra], stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return op, port
        except OSError:
            pass
        if time.monotonic() > deadline or op.poll() is not None:
            stop_operator(op)
            raise RuntimeError(f"operator never became ready (see logs/{log_name})")
        time.sleep(0.1)


def stop_operator(op: subprocess.Popen) -> None:
    op.terminate()
    try:
        op.wait(10)
    except subprocess.TimeoutExpired:
        op.kill()


def ensure_namespace(kube: Kube, name: str) -> None:
    try:
        kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    except RuntimeError as e:
        if ": 409 " not in str(e):
            raise


def ensure_service_account(kube: Kube, ns: str, name: str) -> None:
    try:
        kube.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": name}})
    except RuntimeError as err:
        if ": 409 " not in str(err):  # already there
            raise


def bucket_pct(m: dict, name: str, needles: tuple, p: float) -> tuple:
    """(upper bound of the bucket holding the p-th percentile, count) of a histogram in `m` (for
    example the difference of two scrapes); (None, 0) if it has no observations."""
    buckets = []
    for key, value in m.items():
        if key.startswith(name + "_bucket{") and all(n in key for n in needles):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), value))
    buckets.sort()
    count = buckets[-1][1] if buckets else 0
    if not count:
        return None, 0
    return next(le for le, cumulative in buckets if cumulative >= p / 100 * count), count


def show_bound(le) -> str:
    """A bucket bound from bucket_pct, as "≤ 20 ms"."""
    if le is None:
        return "    -   "
    return "above the top bucket" if le == float("inf") else f"≤{le * 1000:6.0f} ms"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stack_pid(name: str) -> int:
    """The pid of one of the stack's processes (kube-apiserver, etcd, bao, postgres)."""
    return int((Path(os.environ["VK_STACK_DIR"]) / "pids" / f"{name}.pid").read_text())


def dc_ready(obj: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions", []))


def wait_all_ready(kube: Kube, plural: str, namespaces: list, n: int, seen: dict, t0: float, timeout: float = 900) -> float:
    """Waits until `seen` holds n Secrets and n resources of `plural` in `namespaces` are Ready;
    returns the seconds since t0."""
    ready = 0
    while True:
        # Listing thousands of resources is itself load: list only once every Secret is there.
        if len(seen) >= n:  # (len of a dict another thread fills is safe; iterating it is not)
            items = kube.request("GET", f"{GROUP}/{plural}")["items"]
            ready = sum(1 for o in items if o["metadata"]["namespace"] in namespaces and dc_ready(o))
            if ready >= n:
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"only {ready}/{n} {plural} Ready after {timeout:.0f}s ({len(seen)} Secrets)")
        time.sleep(0.2)


def watch_secrets(kube: Kube, namespaces: list, stop: threading.Event) -> dict:
    """First-seen times of the operator's Secrets in `namespaces` ("ns/name" -> monotonic time), filled
    by a label-selected watch in the background."""
    seen: dict = {}
    threading.Thread(target=kube.watch, daemon=True, args=(
        "/api/v1/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvaultkeeper",
        lambda typ, obj, t: seen.setdefault(obj["metadata"]["namespace"] + "/" + obj["metadata"]["name"], t)
        if typ == "ADDED" and obj["metadata"]["namespace"] in namespaces else None, stop)).start()
    return seen


def smoke_verdict(broken: list) -> int:
    """Prints what a --smoke run found broken (nothing: it worked) and returns its exit status."""
    print("smoke: the short form (small sizes, debug builds in CI): the figures above are not comparable with "
          "docs/performance.md")
    for reason in broken:
        print(f"smoke: {reason}")
    print("smoke: the run worked" if not broken else "smoke: FAILED")
    return 1 if broken else 0


def verdict(failed: list, smoke: bool) -> int:
    """The end of a chaos run: the short form's exit status, or (the full command) what held, and 0."""
    if smoke:
        return smoke_verdict(failed)
    print("all guarantees held" if not failed else "guarantees that did not hold:\n  " + "\n  ".join(failed))
    return 0
