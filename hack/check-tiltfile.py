#!/usr/bin/env python3
"""Checks the Tiltfile without Tilt or Docker (neither runs here): evaluates it with a real Starlark
interpreter (starlark-rust, through the starlark-pyo3 wheel) against stand-ins for the Tilt
functions it calls, which record their arguments, then checks what was recorded against the repo:
every source path and Dockerfile target exists, every binary is one the workspace builds, the
chart renders with the Tiltfile's values, and every resource, image and forwarded port it names is
in that rendering. Exits 1 with the reasons otherwise.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import starlark as sl

ROOT = Path(__file__).resolve().parent.parent
HELM = sys.argv[1] if len(sys.argv) > 1 else "helm"
calls = []
problems = []


def recorder(name):
    def record(*args, **kwargs):
        calls.append((name, args, kwargs))
        return f"<{name}>"
    return record


def getenv(key, default=None):
    return default


def load(module_id: str) -> sl.FrozenModule:
    # Tilt extensions come from its extension repository at `tilt up`; here only the names count.
    known = {"ext://restart_process": ["docker_build_with_restart"]}
    if module_id not in known:
        raise ValueError(f"the Tiltfile loads {module_id}, which this check does not know")
    module = sl.Module()
    for name in known[module_id]:
        module.add_callable(name, recorder(name))
    return module.freeze()


def main() -> int:
    text = (ROOT / "Tiltfile").read_text()
    module = sl.Module()
    for name in ["allow_k8s_contexts", "local_resource", "docker_build", "sync", "run", "k8s_yaml", "blob",
                 "helm", "k8s_resource"]:
        module.add_callable(name, recorder(name))
    module.add_callable("_getenv", getenv)
    globals_ = sl.Globals.extended_by([sl.LibraryExtension.StructType, sl.LibraryExtension.Print])
    # Tilt's `os` module, as far as the Tiltfile uses it; every variable takes its default.
    program = "os = struct(getenv = _getenv)\n" + text
    sl.eval(module, sl.parse("Tiltfile", program, sl.Dialect.extended()), globals_, sl.FileLoader(load))

    def by(name):
        return [(a, k) for n, a, k in calls if n == name]

    binaries = set()
    metadata = json.loads(subprocess.run(["cargo", "metadata", "--no-deps", "--format-version=1"], cwd=ROOT,
                                         capture_output=True, text=True, check=True).stdout)
    for package in metadata["packages"]:
        binaries |= {t["name"] for t in package["targets"] if "bin" in t["kind"]}
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", (ROOT / "Dockerfile").read_text(), re.M))

    def check_path(path, what):
        if path.startswith("target/"):
            name = path.rsplit("/", 1)[-1]
            if name not in binaries:
                problems.append(f"{what}: {path} is no binary of the workspace")
        elif not (ROOT / path).exists():
            problems.append(f"{what}: {path} does not exist")

    for args, kwargs in by("local_resource"):
        for dep in kwargs.get("deps", []):
            check_path(dep, f"local_resource {args[0]}")
        for bin_name in re.findall(r"-p (\S+)", kwargs.get("cmd", "")):
            if bin_name not in {p["name"] for p in metadata["packages"]}:
                problems.append(f"local_resource {args[0]} builds {bin_name}, no package of the workspace")
        for target in re.findall(r"--target (\S+)", kwargs.get("cmd", "")):
            if target != "x86_64-unknown-linux-gnu" and target not in stages:
                problems.append(f"local_resource {args[0]}: unknown target {target}")
    images = []
    for name in ["docker_build", "docker_build_with_restart"]:
        for args, kwargs in by(name):
            images.append(args[0])
            check_path(args[1], f"{name} {args[0]} context")
            check_path(kwargs.get("dockerfile", "Dockerfile"), f"{name} {args[0]}")
            if kwargs.get("target") and kwargs["target"] not in stages:
                problems.append(f"{name} {args[0]}: the Dockerfile has no stage {kwargs['target']}")
            for path in kwargs.get("only", []):
                check_path(path, f"{name} {args[0]} only")
            binary = kwargs.get("build_args", {}).get("BINARY")
            if binary and binary not in binaries:
                problems.append(f"{name} {args[0]}: BINARY {binary} is no binary of the workspace")
    for args, kwargs in by("sync"):
        check_path(args[0], "sync")

    rendered = []
    for args, kwargs in by("helm"):
        check_path(args[0], "helm chart")
        cmd = [HELM, "template", kwargs.get("name", "chart"), str(ROOT / args[0]), "--kube-version", "1.36.0",
               "--namespace", kwargs.get("namespace", "default"), "--output-dir", "/dev/null"][:-2]
        for value in kwargs.get("set", []):
            cmd += ["--set", value]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            problems.append(f"helm template with the Tiltfile's values fails: {out.stderr.strip()}")
        else:
            rendered.append(out.stdout)
    text = "\n".join(rendered)
    workloads = set(re.findall(r"^kind: (?:Deployment|StatefulSet|DaemonSet)\nmetadata:\n  name: (\S+)", text, re.M))
    for args, kwargs in by("k8s_resource"):
        if args[0] not in workloads:
            problems.append(f"k8s_resource {args[0]}: no such workload in the chart (has {sorted(workloads)})")
        for forward in kwargs.get("port_forwards", []):
            port = forward.split(":")[-1]
            if not re.search(rf"containerPort: {port}\b", text):
                problems.append(f"k8s_resource {args[0]}: no container port {port} to forward")
    for image in images:
        if not re.search(rf"image: (\S+/)?{re.escape(image)}:", text):
            problems.append(f"image {image} is used by no container of the chart")

    for p in problems:
        print(f"Tiltfile: {p}", file=sys.stderr)
    print(f"Tiltfile: {len(calls)} Tilt calls evaluated, {len(images)} images, {len(by('k8s_resource'))} resources; "
          f"{'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
