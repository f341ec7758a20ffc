#!/usr/bin/env bash
# The fast, process-only local path (`make up-process`): the stack (control plane with a fake node, OpenBao, PostgreSQL),
# the CRDs, the operator, and the examples (a VaultSecret and a CertificateRequest); stays until Ctrl-C, then stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash e2e/stack/install.sh
cargo build -q -p vaultkeeper-operator
STATE=target/demo
python3 e2e/stack/stack.py down --state-dir "$STATE"
rm -rf "$STATE"
python3 e2e/stack/stack.py up --state-dir "$STATE"
OP_PID=
cleanup() { [ -z "$OP_PID" ] || kill "$OP_PID" 2>/dev/null || true; python3 e2e/stack/stack.py down --state-dir "$STATE"; }
trap cleanup EXIT INT TERM
set -a; . "$STATE/env"; set +a
export PATH=$VK_BIN:$PATH
kubectl apply -f manifests/crds.yaml >/dev/null
kubectl wait --for=condition=Established crd/vaultsecrets.vaultkeeper.dev >/dev/null
kubectl apply -f manifests/examples/demo-namespace.yaml >/dev/null
bao secrets enable pki >/dev/null
bao secrets tune -max-lease-ttl=87600h pki >/dev/null
bao write -field=certificate pki/root/generate/internal common_name="vaultkeeper demo CA" ttl=87600h >/dev/null 2>&1
bao write pki/roles/demo allowed_domains=demo.svc,demo.svc.cluster.local allow_subdomains=true allow_bare_domains=false key_type=any max_ttl=720h >/dev/null
printf 'path "secret/data/demo/*" { capabilities = ["read"] }\npath "secret/metadata/demo/*" { capabilities = ["read"] }\npath "pki/sign/demo" { capabilities = ["update"] }\npath "pki/issue/demo" { capabilities = ["update"] }\npath "pki/revoke" { capabilities = ["update"] }\n' | bao policy write demo - >/dev/null
bao write auth/kubernetes/role/demo bound_service_account_names=web bound_service_account_namespaces=demo policies=demo ttl=1h >/dev/null
bao kv put secret/demo/web username=web password=change-me >/dev/null
./target/debug/vaultkeeper-operator --vault-addr "$VAULT_ADDR" --metrics-addr 127.0.0.1:8080 >"$STATE/logs/operator.log" 2>&1 &
OP_PID=$!
kubectl apply -f manifests/examples/vaultsecret.yaml -f manifests/examples/certificaterequest.yaml >/dev/null
cat <<EOF

vaultkeeper is running. In another shell:
  set -a; . $PWD/$STATE/env; set +a; export PATH=\$VK_BIN:\$PATH
  kubectl -n demo get vaultsecrets,certificaterequests
  kubectl -n demo get secret web-tls -o jsonpath='{.data.tls\.crt}' | base64 -d | openssl x509 -noout -subject -enddate
  kubectl -n demo get secret web-config -o jsonpath='{.data.DATABASE_URL}' | base64 -d
  bao kv put secret/demo/web username=web password=rotated   # reaches the Secret within ~10s
  curl -s 127.0.0.1:8080/metrics | grep vaultkeeper_
Operator log: $STATE/logs/operator.log. Ctrl-C stops everything.
EOF
wait "$OP_PID"
