#!/usr/bin/env bash
# Real-stack test of the real node, run inside `stack.py run --node`: Pods run as containers (containerd,
# runc, a CNI bridge) under kubelet, kube-proxy answers ClusterIPs, and the host's API server,
# OpenBao and PostgreSQL are reached from Pods the way the product's own Pods will reach them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$VK_BIN:$PATH
: "${VK_NODE_NAME:?run me inside stack.py run --node}"
NS=node-e2e # a namespace of this script alone
LOGS=$VK_STACK_DIR/logs
PG_ROLE=node_e2e_probe
. e2e/lib.sh
IMAGE=$VK_BUSYBOX_IMAGE
TAINT_KEY=${VK_NODE_TAINT%%=*}; rest=${VK_NODE_TAINT#*=}; TAINT_VALUE=${rest%%:*}; TAINT_EFFECT=${rest#*:}
LABEL_KEY=${VK_NODE_LABEL%%=*}; LABEL_VALUE=${VK_NODE_LABEL#*=}
now() { date +%s.%N; }

dump() {
  echo "--- state for the failures above"
  kubectl -n $NS get pods,svc,endpointslices -o wide || true
  kubectl -n $NS describe pods | tail -n 80 || true
  kubectl describe node "$VK_NODE_NAME" | sed -n '/Conditions:/,/Addresses:/p' || true
  for log in kubelet containerd kube-proxy; do echo "--- last lines of $log.log"; tail -n 25 "$LOGS/$log.log" || true; done
}
cleanup() {
  local rc=$?
  if [ "$fail" -ne 0 ] || [ $rc -ne 0 ]; then dump; fi
  kill "${PF_PID:-}" 2>/dev/null || true
  kubectl delete namespace $NS --wait=false >/dev/null 2>&1 || true
  psql_admin "drop role if exists $PG_ROLE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# placement: the Pod spec lines that put a Pod on the real node (and stop it without delay).
placement() {
  cat <<EOF
  nodeSelector: {$LABEL_KEY: "$LABEL_VALUE"}
  tolerations: [{key: $TAINT_KEY, operator: Equal, value: "$TAINT_VALUE", effect: $TAINT_EFFECT}]
  terminationGracePeriodSeconds: 1
EOF
}
in_app() { kubectl -n $NS exec app -- "$@"; }
# http_get HOST PORT PATH: a plain HTTP/1.0 GET from inside the app Pod (busybox's wget crashes
# here; nc does not).
http_get() { in_app sh -c "printf 'GET $3 HTTP/1.0\r\nHost: $1\r\n\r\n' | nc -w 5 $1 $2"; }

# A namespace left by an earlier run (deleted without waiting) goes first.
kubectl delete namespace $NS --ignore-not-found --timeout=60s >/dev/null
kubectl create namespace $NS >/dev/null

# --- a Pod on the real node ---------------------------------------------------------------------
t0=$(now)
kubectl -n $NS apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
$(placement)
  containers:
  - name: app
    image: $IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'echo hello-from-the-real-node; exec sleep 3600']
EOF
if kubectl -n $NS wait --for=condition=Ready pod/app --timeout=60s >/dev/null; then
  ok "a busybox Pod became Ready on the real node in $(seconds_between "$t0" "$(now)")s"
else
  bad "the busybox Pod never became Ready"
fi
node=$(kubectl -n $NS get pod app -o jsonpath='{.spec.nodeName}')
[ "$node" = "$VK_NODE_NAME" ] && ok "it runs on $VK_NODE_NAME" || bad "it was scheduled to '$node'"
pod_ip=$(kubectl -n $NS get pod app -o jsonpath='{.status.podIP}')
case $pod_ip in 10.244.0.*) ok "it has an address of the pod network ($pod_ip)" ;; *) bad "pod IP '$pod_ip'" ;; esac

eventually 10 sh -c "kubectl -n $NS logs app | grep -qx hello-from-the-real-node" \
  && ok "kubectl logs shows the container's output" || bad "logs: $(kubectl -n $NS logs app 2>&1 | tail -3)"
[ "$(in_app cat /etc/hostname 2>&1)" = app ] && ok "kubectl exec runs a command in the container" || bad "exec: $(in_app cat /etc/hostname 2>&1)"
echo via-stdin | kubectl -n $NS exec -i app -- cat >"$VK_STACK_DIR/node-e2e-stdin.txt" 2>&1 || true
[ "$(cat "$VK_STACK_DIR/node-e2e-stdin.txt")" = via-stdin ] && ok "kubectl exec -i passes stdin" || bad "exec -i: $(cat "$VK_STACK_DIR/node-e2e-stdin.txt")"

# --- what Pods reach ----------------------------------------------------------------------------
api_ip=$(kubectl -n default get service kubernetes -o jsonpath='{.spec.clusterIP}')
told=$(in_app sh -c 'echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT' 2>&1 || true)
[ "$told" = "$api_ip:443" ] && ok "the Pod is told the API server is at $api_ip:443" || bad "KUBERNETES_SERVICE_HOST:PORT=$told (Service: $api_ip)"
# A Go HTTPS server answers a plaintext request with this sentence: the ClusterIP led to the API server.
answer=$(http_get "$api_ip" 443 / 2>&1 || true)
contains -F 'Client sent an HTTP request to an HTTPS server' <<<"$answer" \
  && ok "the API server answers at kubernetes.default's ClusterIP $api_ip:443 (kube-proxy)" || bad "API server via ClusterIP: $answer"
bao=${VK_BAO_NODE_ADDR#http://}
answer=$(http_get "${bao%:*}" "${bao##*:}" /v1/sys/health 2>&1 || true)
contains -F '"initialized":true,"sealed":false' <<<"$answer" \
  && ok "OpenBao answers the Pod at $VK_BAO_NODE_ADDR (initialized, unsealed)" || bad "OpenBao from the Pod: $answer"

# PostgreSQL from the Pod: the real protocol, so pg_hba.conf is what decides. A role with a password
# is asked for SCRAM; the superuser, trusted on loopback only, has no entry for the pod network.
psql_admin "create role $PG_ROLE login password 'not-checked-here'" >/dev/null
pg_startup() { # pg_startup USER: what the server answers a startup message from the Pod (binary)
  python3 -c '
import struct, sys
body = struct.pack("!I", 196608) + b"user\0" + sys.argv[1].encode() + b"\0database\0postgres\0\0"
sys.stdout.buffer.write(struct.pack("!I", len(body) + 4) + body)' "$1" \
    | kubectl -n $NS exec -i app -- timeout 5 nc "$VK_PG_NODE_HOST" "$VK_PG_PORT" 2>&1 | tr -c '[:print:]' ' ' || true
}
answer=$(pg_startup $PG_ROLE)
contains -F SCRAM-SHA-256 <<<"$answer" && ok "PostgreSQL asks a Pod's role for its password (SCRAM)" || bad "PostgreSQL for $PG_ROLE: $answer"
answer=$(pg_startup postgres)
contains -F 'pg_hba.conf rejects connection' <<<"$answer" && ok "PostgreSQL refuses the superuser from the pod network" || bad "PostgreSQL for postgres: $answer"

# --- a native sidecar starts, and is started, before the app container ---------------------------
kubectl -n $NS apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: sidecar}
spec:
$(placement)
  volumes: [{name: shared, emptyDir: {}}]
  initContainers:
  - name: sidecar
    image: $IMAGE
    imagePullPolicy: Never
    restartPolicy: Always
    command: [sh, -c, 'sleep 2; date +%s > /shared/ready; exec sleep 3600']
    startupProbe: {exec: {command: [cat, /shared/ready]}, periodSeconds: 1, failureThreshold: 30}
    volumeMounts: [{name: shared, mountPath: /shared}]
  containers:
  - name: app
    image: $IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'if [ -f /shared/ready ]; then echo sidecar-was-ready; else echo sidecar-not-ready; fi; exec sleep 3600']
    volumeMounts: [{name: shared, mountPath: /shared}]
EOF
kubectl -n $NS wait --for=condition=Ready pod/sidecar --timeout=60s >/dev/null || true
sidecar_log=$(kubectl -n $NS logs sidecar -c app 2>&1 || true)
[ "$sidecar_log" = sidecar-was-ready ] && ok "the app container started only after the sidecar's startup probe passed" \
  || bad "app container saw: $sidecar_log"
[ "$(kubectl -n $NS get pod sidecar -o jsonpath='{.status.initContainerStatuses[0].started}/{.status.initContainerStatuses[0].ready}')" = true/true ] \
  && ok "the sidecar keeps running beside the app" || bad "sidecar status: $(kubectl -n $NS get pod sidecar -o jsonpath='{.status.initContainerStatuses[0]}')"

# --- a Deployment behind a Service --------------------------------------------------------------
kubectl -n $NS apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
$(placement | sed 's/^/    /')
      containers:
      - name: web
        image: $IMAGE
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /www && echo "served-by-\$HOSTNAME" > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
EOF
kubectl -n $NS rollout status deployment/web --timeout=90s >/dev/null && ok "a 2-replica Deployment rolled out on the real node" \
  || bad "the Deployment did not roll out"
web_ip=$(kubectl -n $NS get service web -o jsonpath='{.spec.clusterIP}')
eventually 20 sh -c "kubectl -n $NS exec app -- sh -c \"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $web_ip 80\" | grep -q served-by-web-" \
  && ok "another Pod reaches the Deployment through its Service's ClusterIP $web_ip" || bad "Service web: $(http_get "$web_ip" 80 / 2>&1)"

old=$(kubectl -n $NS get pods -l app=web -o jsonpath='{.items[*].metadata.name}')
t0=$(now)
kubectl -n $NS rollout restart deployment/web >/dev/null
if kubectl -n $NS rollout status deployment/web --timeout=90s >/dev/null; then
  ok "kubectl rollout restart completed in $(seconds_between "$t0" "$(now)")s"
else
  bad "the restart never completed"
fi
new=$(kubectl -n $NS get pods -l app=web --field-selector=status.phase=Running -o json \
  | python3 -c 'import json,sys; print(" ".join(p["metadata"]["name"] for p in json.load(sys.stdin)["items"] if not p["metadata"].get("deletionTimestamp")))')
python3 -c 'import sys; old, new = set(sys.argv[1].split()), set(sys.argv[2].split()); sys.exit(0 if len(new) == 2 and not old & new else 1)' "$old" "$new" \
  && ok "two new Pods replaced the old ones" || bad "Pods before: $old; after: $new"
eventually 20 sh -c "kubectl -n $NS exec app -- sh -c \"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $web_ip 80\" | grep -q served-by-web-" \
  && ok "the Service follows the new Pods" || bad "Service after the restart: $(http_get "$web_ip" 80 / 2>&1)"

# --- names (CoreDNS behind kube-dns) -----------------------------------------------------------
# nslookup speaks DNS itself; busybox's other applets resolve through static glibc, which cannot.
[ "$(in_app cat /etc/resolv.conf 2>&1 | awk '$1 == "nameserver" { print $2 }')" = "$VK_DNS_IP" ] \
  && ok "the Pod's resolver is kube-dns ($VK_DNS_IP)" || bad "resolv.conf: $(in_app cat /etc/resolv.conf 2>&1)"
lookup() { in_app nslookup "$1" 2>&1 || true; }
answer=$(lookup web.$NS.svc.cluster.local)
contains -F "Address: $web_ip" <<<"$answer" && ok "web.$NS.svc.cluster.local resolves to its ClusterIP in the Pod" || bad "lookup of web: $answer"
answer=$(lookup kubernetes.default.svc.cluster.local)
contains -F "Address: $api_ip" <<<"$answer" && ok "kubernetes.default.svc.cluster.local resolves to $api_ip" || bad "lookup of kubernetes.default: $answer"
answer=$(lookup vaultkeeper.example)
contains -F "can't find vaultkeeper.example" <<<"$answer" \
  && ok "a name outside cluster.local gets no answer (nothing is forwarded off the machine)" || bad "outside name: $answer"

# --- port-forward -------------------------------------------------------------------------------
PF_PORT=$(free_port)
one=${new%% *}
kubectl -n $NS port-forward --address 127.0.0.1 "pod/$one" "$PF_PORT:8080" >"$VK_STACK_DIR/node-e2e-port-forward.log" 2>&1 &
PF_PID=$!
eventually 15 sh -c "curl -sf http://127.0.0.1:$PF_PORT/ | grep -qx served-by-$one" \
  && ok "kubectl port-forward reaches a Pod" || bad "port-forward: $(curl -s "http://127.0.0.1:$PF_PORT/" 2>&1; cat "$VK_STACK_DIR/node-e2e-port-forward.log")"
kill $PF_PID 2>/dev/null || true

# --- figures ------------------------------------------------------------------------------------
rss() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$(cat "$VK_STACK_DIR/pids/$1.pid")/status" 2>/dev/null || echo "?"; }
shims=$(pgrep -f "containerd-shim-runc-v2 .*$VK_STACK_DIR" | while read -r p; do awk '/^VmRSS/ { print $2 }' "/proc/$p/status"; done \
  | awk '{ s += $1; n++ } END { printf "%d shims, %.0f MiB", n, s / 1024 }')
echo "figure: RSS kubelet $(rss kubelet) MiB, containerd $(rss containerd) MiB, kube-proxy $(rss kube-proxy) MiB, coredns $(rss coredns) MiB; $shims"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
