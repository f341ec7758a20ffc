#!/usr/bin/env bash
# `make up`: vaultkeeper as users meet it. Starts the local stack with a real node (kubelet,
# containerd, kube-proxy, CoreDNS), imports the project's images into the node, installs the Helm
# chart (operator and webhook in Pods), applies the examples (a VaultSecret and a
# CertificateRequest) and a Deployment whose agent renders a Vault secret into a real Pod. Stays
# until Ctrl-C, then stops everything and puts the host back. `make up-process` is the faster path
# without the node or the images (the operator as a process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash e2e/stack/install.sh
bash hack/images.sh
STATE=target/demo
python3 e2e/stack/stack.py down --state-dir "$STATE"
rm -rf "$STATE"
cat <<'EOF'
The real node changes this host while it runs: iptables chains (KUBE-*, CNI-*, VK-NODE-GUARD), the
cni0 bridge and its veths, network namespaces, kubepods cgroups, a few sysctls (ip_forward,
vm.overcommit_memory, kernel.panic...), and /run/containerd, /var/lib/kubelet, /var/lib/cni,
/var/log/pods. Ctrl-C undoes all of it and checks that it did.
EOF
python3 e2e/stack/stack.py up --node --state-dir "$STATE"
trap 'python3 e2e/stack/stack.py down --state-dir "$STATE"' EXIT INT TERM
set -a; . "$STATE/env"; set +a
export PATH=$VK_BIN:$PATH
read -r -a CTR <<<"$VK_CTR"
for c in operator webhook agent; do "${CTR[@]}" images import "target/images/vaultkeeper-$c.tar" >/dev/null; done

bao secrets enable pki >/dev/null
bao secrets tune -max-lease-ttl=87600h pki >/dev/null
bao write -field=certificate pki/root/generate/internal common_name="vaultkeeper demo CA" ttl=87600h >/dev/null 2>&1
bao write pki/roles/demo allowed_domains=demo.svc,demo.svc.cluster.local allow_subdomains=true allow_bare_domains=false key_type=any max_ttl=720h >/dev/null
printf 'path "secret/data/demo/*" { capabilities = ["read"] }\npath "secret/metadata/demo/*" { capabilities = ["read"] }\npath "pki/sign/demo" { capabilities = ["update"] }\npath "pki/issue/demo" { capabilities = ["update"] }\npath "pki/revoke" { capabilities = ["update"] }\n' | bao policy write demo - >/dev/null
bao write auth/kubernetes/role/demo bound_service_account_names=web bound_service_account_namespaces=demo policies=demo ttl=1h >/dev/null
bao kv put secret/demo/web username=web password=change-me >/dev/null

taint_key=${VK_NODE_TAINT%%=*}
on_node="nodeSelector: {kubernetes.io/hostname: $VK_NODE_NAME}, tolerations: [{key: $taint_key, operator: Exists}]"
helm install vaultkeeper charts/vaultkeeper -n vaultkeeper-system --create-namespace --wait --timeout 180s \
  -f - >/dev/null <<EOF
vault: {address: "$VK_BAO_SERVICE_ADDR"}
operator: {replicas: 1, logFormat: text, $on_node}
webhook: {replicas: 1, logFormat: text, $on_node}
EOF
kubectl apply -f manifests/examples/demo-namespace.yaml >/dev/null
kubectl apply -f manifests/examples/vaultsecret.yaml -f manifests/examples/certificaterequest.yaml >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: milk, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: milk}}
  template:
    metadata:
      labels: {app: milk}
      annotations:
        vault.hashicorp.com/agent-inject: "true"
        vault.hashicorp.com/role: demo
        vault.hashicorp.com/agent-inject-secret-db.txt: secret/data/demo/web
        vault.hashicorp.com/agent-inject-template-db.txt: |
          {{- with secret "secret/data/demo/web" -}}
          postgres://{{ .Data.data.username }}:{{ .Data.data.password }}@db.demo:5432/web
          {{- end }}
    spec:
      serviceAccountName: web
      nodeSelector: {kubernetes.io/hostname: $VK_NODE_NAME}
      tolerations: [{key: $taint_key, operator: Exists}]
      containers:
      - name: app
        image: $VK_BUSYBOX_IMAGE
        imagePullPolicy: Never
        command: [sh, -c, 'while true; do echo "\$(date +%T) \$(cat /vault/secrets/db.txt)"; sleep 10; done']
EOF
kubectl -n demo rollout status deploy/milk --timeout=90s >/dev/null
cat <<EOF

vaultkeeper is running in the cluster. In another shell:
  set -a; . $PWD/$STATE/env; set +a; export PATH=\$VK_BIN:\$PATH
  kubectl -n vaultkeeper-system get pods
  kubectl -n demo get vaultsecrets,certificaterequests
  kubectl -n demo get secret web-config -o jsonpath='{.data.DATABASE_URL}' | base64 -d
  kubectl -n demo logs deploy/milk -c app -f          # the file the agent renders in the Pod
  bao kv put secret/demo/web username=web password=rotated   # reaches the Secret and the file
  kubectl -n vaultkeeper-system logs deploy/vaultkeeper-operator
Ctrl-C stops everything.
EOF
sleep infinity &
wait $!
