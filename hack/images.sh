#!/usr/bin/env bash
# Builds the OCI images of the operator, the webhook and the agent without a Docker daemon: each is
# one static binary (glibc linked statically; DNS by the Rust resolver in the Vault client, so no
# NSS is needed) on an empty base, run as a non-root numeric user, with the CA bundle for Vaults
# behind public CAs and the OCI labels source, version and revision. Assembled with umoci, checked
# with skopeo (a second tool), written as OCI archives that `ctr images import` and
# `skopeo copy` take, and as an OCI layout. Prints each image's size.
#
#   hack/images.sh            all three images into target/images/
#   hack/images.sh agent      only the named ones
#
# The same images, built with Docker: see the Dockerfile at the top of the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${VK_CACHE:-$HOME/.cache/vaultkeeper}
OUT=target/images
TARGET=x86_64-unknown-linux-gnu
# Release builds for images are cached across clones, like the fuzz builds.
export CARGO_TARGET_DIR=$CACHE/image-target
UID_GID=65532:65532

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(operator webhook agent)
for c in "${components[@]}"; do
  case "$c" in operator | webhook | agent) ;; *) echo "unknown image $c (operator, webhook, agent)" >&2; exit 2 ;; esac
done

for tool in umoci skopeo; do
  command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq umoci skopeo >/dev/null; break; }
done

read -r version SOURCE < <(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; p = next(p for p in json.load(sys.stdin)["packages"] if p["name"] == "vaultkeeper-operator"); print(p["version"], p["repository"])')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain 2>/dev/null)" ] || revision="$revision-dirty"

started=$SECONDS
packages=()
for c in "${components[@]}"; do packages+=(-p "vaultkeeper-$c"); done
RUSTFLAGS="-C target-feature=+crt-static" nice -n 10 cargo build -q --release --locked --target $TARGET "${packages[@]}"
echo "static release build: $((SECONDS - started))s"

# Names resolve in the static binaries (the Vault client's resolver reads /etc/hosts and
# /etc/resolv.conf itself): the agent reaches `localhost` and is refused, rather than failing to
# resolve it.
agent=$CARGO_TARGET_DIR/$TARGET/release/vaultkeeper-agent
if [ -x "$agent" ]; then
  dns_config='{"version":1,"mode":"init","vaultAddr":"http://localhost:9","authPath":"auth/kubernetes","role":"r","tokenFile":"/dev/null","readyFile":"/nonexistent/ready","volumePath":"/nonexistent","secrets":[{"name":"a","path":"kv/a","file":"a","mountPath":"/nonexistent"}]}'
  answer=$("$agent" --config "$dns_config" --vault-timeout 2s 2>&1 || true)
  grep -q 'Connection refused' <<<"$answer" || { echo "the static agent did not resolve localhost: $answer" >&2; exit 1; }
fi

rm -rf "$OUT"; mkdir -p "$OUT"
printf '%-10s %12s %12s  %s\n' image binary compressed archive
for c in "${components[@]}"; do
  bin=$CARGO_TARGET_DIR/$TARGET/release/vaultkeeper-$c
  # Static, or the image would not start on an empty base.
  if grep -q 'INTERP' <(readelf -l "$bin"); then echo "$bin is not static (it names a dynamic loader)" >&2; exit 1; fi
  "$bin" --help >/dev/null || { echo "$bin does not start" >&2; exit 1; }
  layout=$OUT/$c.oci
  work=$(mktemp -d)
  umoci init --layout "$layout"
  umoci new --image "$layout:$version"
  umoci unpack --rootless --image "$layout:$version" "$work/bundle" >/dev/null
  rootfs=$work/bundle/rootfs
  install -D -m 0555 "$bin" "$rootfs/vaultkeeper-$c"
  install -D -m 0444 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  # A home and a writable /tmp for the numeric user; no shell, no other files.
  install -d -m 1777 "$rootfs/tmp"
  printf 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' | install -D -m 0444 /dev/stdin "$rootfs/etc/passwd"
  printf 'nonroot:x:65532:\n' | install -D -m 0444 /dev/stdin "$rootfs/etc/group"
  install -d -m 0755 -o 65532 -g 65532 "$rootfs/home/nonroot"
  umoci repack --refresh-bundle --image "$layout:$version" "$work/bundle" >/dev/null
  umoci config --image "$layout:$version" \
    --config.user "$UID_GID" \
    --config.entrypoint "/vaultkeeper-$c" \
    --config.workingdir / \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.env PATH=/ \
    --config.label "org.opencontainers.image.source=$SOURCE" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --config.label "org.opencontainers.image.title=vaultkeeper-$c" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --history.created_by "hack/images.sh" >/dev/null
  umoci gc --layout "$layout"
  rm -rf "$work"
  # The second tool reads what the first wrote: user, entrypoint, labels.
  config=$(skopeo inspect --config "oci:$layout:$version")
  python3 -c '
import json, sys
c, version, revision, user = sys.argv[1:]
config = json.load(sys.stdin)["config"]
labels = config.get("Labels") or {}
assert config.get("User") == user, config.get("User")
assert config.get("Entrypoint") == [f"/vaultkeeper-{c}"], config.get("Entrypoint")
# The webhook'"'"'s startup probe execs the agent by name: it must be on PATH.
assert "PATH=/" in (config.get("Env") or []), config.get("Env")
assert labels.get("org.opencontainers.image.version") == version, labels
assert labels.get("org.opencontainers.image.revision") == revision, labels
' "$c" "$version" "$revision" "$UID_GID" <<<"$config"
  skopeo copy -q "oci:$layout:$version" "oci-archive:$OUT/vaultkeeper-$c.tar:docker.io/library/vaultkeeper-$c:$version"
  compressed=$(skopeo inspect --raw "oci:$layout:$version" | python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))')
  python3 -c 'import sys; c, b, z, a = sys.argv[1:]; print(f"{c:<10} {int(b) / 2**20:9.1f}MiB {int(z) / 2**20:9.1f}MiB  {a}")' \
    "$c" "$(stat -c %s "$bin")" "$compressed" "$OUT/vaultkeeper-$c.tar"
done
echo "images built in $((SECONDS - started))s (vaultkeeper-<name>:$version, revision $revision)"
