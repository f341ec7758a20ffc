#!/usr/bin/env python3
"""CertificateRequest benchmark against the real stack (OpenBao's PKI engine); prints figures,
asserts nothing.

Run through `make bench-certificate` (hack/bench.sh), which installs and starts the stack and passes
its env. With N CertificateRequests of one key type (--algorithm ECDSA|RSA, --size) and one mode
(--mode issue: OpenBao makes the key; sign: the operator makes it and sends a CSR), spread over a
few namespaces with one identity each, and lifetimes short enough that every certificate is renewed
inside the window, it measures:
  - issuance: the time from the first create until all N are Ready (certificates/s);
  - CPU seconds per issuance, of the operator and of OpenBao, over the issuance;
  - renewals and their lateness p50/p99 (vaultkeeper_lease_lateness_seconds: from when a renewal
    was due to the reconcile that made it), and superseded certificates revoked;
  - failed Vault requests of the certificates (pki_*), and the operator's peak RSS.
"""

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import (GROUP, ROOT, Kube, bucket_pct, cpu_seconds, ensure_namespace, ensure_service_account, metrics, rss_kib, show_bound,
                      stack_pid, start_operator, stop_operator, total, wait_all_ready, watch_secrets, smoke_verdict)

MOUNT, ROLE, DOMAIN = "pki-bench", "bench", "bench.example.com"


def certificate_request(ns: str, name: str, args) -> dict:
    return {
        "apiVersion": "vaultkeeper.dev/v1alpha1", "kind": "CertificateRequest",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "auth": {"role": f"bench-pki-{ns}", "serviceAccountName": "bench"},
            "mount": MOUNT, "role": ROLE,
            "commonName": f"{name}.{ns}.{DOMAIN}",
            "ttl": args.ttl, "renewBefore": args.renew_before,
            "privateKey": {"algorithm": args.algorithm, "size": args.size},
            "mode": args.mode,
            "destination": {"name": name},
        },
    }


def prepare_pki(kube: Kube, namespaces: list) -> None:
    """A PKI mount with an ECDSA P-256 root and the bench role, and per namespace a ServiceAccount
    `bench` with its own Vault role `bench-pki-<ns>` (issue, sign, revoke)."""
    bao = lambda *a, **kw: subprocess.run(["bao", *a], check=True, capture_output=True, text=True, **kw)  # noqa: E731
    print(f"preparing a PKI mount (ECDSA P-256 root) and {len(namespaces)} namespaces ...", flush=True)
    if f'"{MOUNT}/"' not in bao("secrets", "list", "-format=json").stdout:
        bao("secrets", "enable", f"-path={MOUNT}", "pki")
        bao("secrets", "tune", "-max-lease-ttl=8760h", MOUNT)
        bao("write", f"{MOUNT}/root/generate/internal", "common_name=vaultkeeper bench root", "key_type=ec",
            "key_bits=256", "ttl=8760h")
    bao("write", f"{MOUNT}/roles/{ROLE}", f"allowed_domains={DOMAIN}", "allow_subdomains=true", "key_type=any",
        "max_ttl=24h")
    bao("policy", "write", "bench-pki", "-", input="".join(
        f'path "{MOUNT}/{p}" {{ capabilities = ["update"] }}\n' for p in (f"issue/{ROLE}", f"sign/{ROLE}", "revoke")))
    for ns in ["vaultkeeper-system", *namespaces]:  # the operator's own namespace, for its leader Lease
        ensure_namespace(kube, ns)
    for ns in namespaces:
        ensure_service_account(kube, ns, "bench")
        bao("write", f"auth/kubernetes/role/bench-pki-{ns}", "bound_service_account_names=bench",
            f"bound_service_account_namespaces={ns}", "policies=bench-pki", "token_ttl=1h")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="CertificateRequests")
    ap.add_argument("--namespaces", type=int, default=10, help="namespaces (one identity each)")
    ap.add_argument("--algorithm", default="ECDSA", choices=["ECDSA", "RSA"])
    ap.add_argument("--size", type=int, default=0, help="key size (default 256 for ECDSA, 2048 for RSA)")
    ap.add_argument("--mode", default="issue", choices=["issue", "sign"])
    ap.add_argument("--ttl", default="3m", help="certificate lifetime")
    ap.add_argument("--renew-before", default="2m", help="renewBefore (renewal due at ttl minus this)")
    ap.add_argument("--window", type=int, default=90, help="seconds after all are Ready (every one renews in it)")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--operator", default=str(target / "release/vaultkeeper-operator"))
    ap.add_argument("--workers", type=int, default=16, help="parallel connections of the creating client")
    ap.add_argument("--smoke", action="store_true",
                    help="the short form CI runs (e2e/bench_smoke.sh): small sizes, and exit 1 if the run did not work "
                         "(no renewal, failed Vault requests); figures not judged")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.namespaces, args.ttl, args.renew_before, args.window = 10, 2, "30s", "22s", 15
    args.size = args.size or (256 if args.algorithm == "ECDSA" else 2048)

    kube = Kube()
    namespaces = [f"bench-pki-{i}" for i in range(args.namespaces)]
    subprocess.run(["kubectl", "apply", "-f", str(ROOT / "manifests/crds.yaml")], check=True, capture_output=True)
    subprocess.run(["kubectl", "wait", "--for=condition=Established", "crd/certificaterequests.vaultkeeper.dev"],
                   check=True, capture_output=True)
    prepare_pki(kube, namespaces)
    names = [f"t{i:05d}" for i in range(args.n)]
    bao_pid, kube_pids = stack_pid("bao"), [stack_pid("kube-apiserver"), stack_pid("etcd")]

    stop = threading.Event()
    seen = watch_secrets(kube, namespaces, stop)
    op, port = start_operator(args.operator, "operator-bench-certificate.log")
    try:
        base_rss = rss_kib(op.pid, "VmRSS")
        op_cpu0, bao_cpu0 = cpu_seconds(op.pid), cpu_seconds(bao_pid)
        kube_cpu0 = sum(map(cpu_seconds, kube_pids))
        print(f"creating {args.n} CertificateRequests ({args.algorithm} {args.size}, mode {args.mode}) ...", flush=True)
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda i: kube.request(
                "POST", f"{GROUP}/namespaces/{namespaces[i % len(namespaces)]}/certificaterequests",
                certificate_request(namespaces[i % len(namespaces)], names[i], args)), range(args.n)))
        created = time.monotonic() - t0
        all_ready = wait_all_ready(kube, "certificaterequests", namespaces, args.n, seen, t0)
        op_cpu, bao_cpu = cpu_seconds(op.pid) - op_cpu0, cpu_seconds(bao_pid) - bao_cpu0
        kube_cpu = sum(map(cpu_seconds, kube_pids)) - kube_cpu0
        issue_peak = rss_kib(op.pid, "VmHWM")
        print(f"  all {args.n} Ready after {all_ready:.1f}s (creates took {created:.1f}s)", flush=True)

        print(f"window of {args.window}s (renewals) ...", flush=True)
        w0 = time.monotonic()
        while time.monotonic() - w0 < args.window:
            time.sleep(1)
        m = metrics(port)
        window = time.monotonic() - w0
        needles = ('kind="CertificateRequest"', 'step="renew"')
        (p50, renewals), (p99, _) = (bucket_pct(m, "vaultkeeper_lease_lateness_seconds", needles, p) for p in (50, 99))
        issues = total(m, "vaultkeeper_vault_requests_total", 'operation="pki_issue"')
        revokes = total(m, "vaultkeeper_vault_requests_total", 'operation="pki_revoke"')
        # The certificates' own requests: in the CI form the stack also holds the resources the
        # earlier runs left behind, whose leases have ended by now.
        failed = sum(v for k, v in m.items() if k.startswith("vaultkeeper_vault_requests_total{")
                     and 'operation="pki_' in k and not any(f'status="{s}"' in k for s in ("200", "204")))
        peak, end_rss = rss_kib(op.pid, "VmHWM"), rss_kib(op.pid, "VmRSS")
        stop.set()

        print()
        print(f"CertificateRequest benchmark: N={args.n} in {len(namespaces)} namespaces, {args.algorithm} {args.size}, "
              f"mode {args.mode}, ttl {args.ttl}, renewBefore {args.renew_before}, window {window:.0f}s")
        print(f"  time until all {args.n} Ready              {all_ready:8.1f} s  "
              f"({args.n / all_ready:.0f} certificates/s; creates took {created:.1f} s)")
        print(f"  CPU per issuance                         operator {op_cpu / args.n * 1000:.1f} ms, "
              f"OpenBao {bao_cpu / args.n * 1000:.1f} ms, API server and etcd {kube_cpu / args.n * 1000:.1f} ms "
              f"({op_cpu:.1f} s, {bao_cpu:.1f} s and {kube_cpu:.1f} s for {args.n}, creates included)")
        print(f"  renewals (whole run)                     {renewals:8.0f}   lateness p50 {show_bound(p50)}   "
              f"p99 {show_bound(p99)}")
        print(f"  Vault requests                           pki_issue {issues:.0f}, pki_revoke {revokes:.0f}; "
              f"failed {failed:.0f}")
        print(f"  operator RSS                             idle {base_rss / 1024:.1f} MiB, peak {issue_peak / 1024:.1f} MiB "
              f"issuing, peak {peak / 1024:.1f} MiB, end {end_rss / 1024:.1f} MiB")
        if args.smoke:
            broken = []
            if not renewals:
                broken.append("no renewal")
            if failed:
                broken.append(f"{failed:.0f} failed Vault requests")
            return smoke_verdict(broken)
        return 0
    finally:
        stop_operator(op)


if __name__ == "__main__":
    sys.exit(main())
