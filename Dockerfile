# The operator, webhook and agent images, for those who build with Docker (or any builder that reads
# a Dockerfile). The project builds the same images without a daemon: hack/images.sh.
#
#   docker build --target operator -t vaultkeeper-operator .
#   docker build --target webhook  -t vaultkeeper-webhook .
#   docker build --target agent    -t vaultkeeper-agent .
#
# (always name a target: the last stage, `dev`, is the Tiltfile's.)
#
# Each image is one static binary on an empty base (glibc linked statically; DNS goes through the
# Rust resolver of the Vault client, so no NSS module is needed), the CA bundle, and a numeric
# non-root user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
ARG VERSION=0.1.0
ARG REVISION=unknown
RUN RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
      --target x86_64-unknown-linux-gnu \
      -p vaultkeeper-operator -p vaultkeeper-webhook -p vaultkeeper-agent \
 && mkdir -p /out/tmp /out/home/nonroot \
 && chmod 1777 /out/tmp && chown 65532:65532 /out/home/nonroot \
 && printf 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > /out/passwd \
 && printf 'nonroot:x:65532:\n' > /out/group

FROM scratch AS base
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/vaultkeeper/vaultkeeper" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/passwd /etc/passwd
COPY --from=build /out/group /etc/group
COPY --from=build /out/tmp /tmp
COPY --from=build /out/home /home
# The binary is /vaultkeeper-<name>; on PATH, since the webhook's startup probe execs the agent by name.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PATH=/
USER 65532:65532

FROM base AS agent
LABEL org.opencontainers.image.title="vaultkeeper-agent"
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/vaultkeeper-agent /vaultkeeper-agent
ENTRYPOINT ["/vaultkeeper-agent"]

FROM base AS webhook
LABEL org.opencontainers.image.title="vaultkeeper-webhook"
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/vaultkeeper-webhook /vaultkeeper-webhook
ENTRYPOINT ["/vaultkeeper-webhook"]

# Before the dev stage, `docker build --target operator` gives the operator.
FROM base AS operator
LABEL org.opencontainers.image.title="vaultkeeper-operator"
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/vaultkeeper-operator /vaultkeeper-operator
ENTRYPOINT ["/vaultkeeper-operator"]

# For the Tiltfile's development loop only: a binary built on the host, on busybox (Tilt's live
# update copies files with tar and restarts the process through its wrapper, both need a shell).
FROM busybox:1.37 AS dev
ARG BINARY
COPY --chown=65532:65532 target/x86_64-unknown-linux-gnu/release/${BINARY} /app/${BINARY}
USER 65532:65532
