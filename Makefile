# Entry points. `make test` is what CI runs (.ci/run).
.PHONY: test crds install-yaml build images up up-process bench bench-dynamic bench-certificate bench-injection chaos-kill chaos-restart chaos-outage chaos-raft scale-out soak-churn fuzz

test:
	./hack/test.sh

crds:
	cargo run -q -p vaultkeeper-crds --bin crdgen > manifests/crds.yaml
	cargo run -q -p vaultkeeper-crds --bin crdgen -- --chart charts/vaultkeeper/templates/crds

# manifests/install.yaml, rendered from the chart for `kubectl apply` users (needs helm: the stack
# installs it under ~/.cache/vaultkeeper/bin).
install-yaml:
	./hack/install-yaml.sh > manifests/install.yaml

build:
	cargo build --workspace --release

# OCI images of the operator, webhook and agent, built without a Docker daemon (see README).
images:
	./hack/images.sh $(ARGS)

# Starts the local stack, the operator and the examples; Ctrl-C stops everything.
up:
	./hack/up.sh

# The faster local path: the stack and the operator as a process, no node, no images.
up-process:
	./hack/up-process.sh

# Benchmarks against the real stack (prints figures): make bench ARGS="--n 1000"
bench:
	./hack/bench.sh $(ARGS)

# DynamicCredential benchmark (OpenBao's database engine, PostgreSQL; issuance, renewal and
# rotation lateness, revocation): make bench-dynamic ARGS="--n 1000 --window 240"
bench-dynamic:
	BENCH=bench_dynamic ./hack/bench.sh $(ARGS)

# CertificateRequest benchmark (OpenBao's PKI engine; issuance throughput and CPU, renewal
# lateness): make bench-certificate ARGS="--n 1000 --algorithm RSA --mode sign"
bench-certificate:
	BENCH=bench_certificate ./hack/bench.sh $(ARGS)

# Chaos: the operator killed with SIGKILL at random moments while DynamicCredentials renew and
# rotate; prints what held (live leases, early revocations, orphans, rollouts):
# make chaos-kill ARGS="--n 1000 --kills 100"
chaos-kill:
	BENCH=chaos_kill ./hack/bench.sh $(ARGS)

# Chaos: the API server and etcd restarted (cleanly and with SIGKILL) under a running operator;
# prints what held (no issue, no Secret changed, no rollout; watches carry changes afterwards):
# make chaos-restart ARGS="--n 300 --restarts 8"
chaos-restart:
	BENCH=chaos_restart ./hack/bench.sh $(ARGS)

# Chaos: OpenBao away for an hour under 1,000 resources of each kind; prints what held (no Secret
# changed during it, all Ready within 60 s of its return, requests at a time after it):
# make chaos-outage ARGS="--n 1000 --outage 3600"
chaos-outage:
	BENCH=chaos_outage ./hack/bench.sh $(ARGS)

# Chaos: OpenBao as a 3-node raft cluster, its active node killed again and again under a running
# operator given all three addresses; prints the election and the recovery after it, failed
# requests, and what held (no lease lost, no Secret emptied):
# make chaos-raft ARGS="--n 300 --kills 6"
chaos-raft:
	BENCH=chaos_raft ./hack/bench.sh $(ARGS)

# Scale-out: operator replicas sharing the resources by shard (--shards), one killed; prints each
# replica's share and RSS, the takeover time and, from OpenBao's audit log, that no shard was
# served by two replicas at once: make scale-out ARGS="--replicas 3 --n 20000"
scale-out:
	BENCH=scale_out ./hack/bench.sh $(ARGS)

# Soak: waves of resources created, changed and deleted under one operator for an hour; prints
# RSS, open file descriptors and tokio tasks after each wave (they must not grow):
# make soak-churn ARGS="--n 10000 --duration 3600"
soak-churn:
	BENCH=soak_churn ./hack/bench.sh $(ARGS)

# Injection benchmark (webhook direct and through the API server; our agent vs `bao agent`):
# make bench-injection ARGS="--rate 200 --duration 30"
bench-injection:
	./hack/bench-injection.sh $(ARGS)

# cargo-fuzz targets (nightly), each for at least 1M executions; prints executions, crashes and
# seconds per target: make fuzz ARGS="--runs 5000000" or ARGS="--seconds 60 duration"
fuzz:
	./hack/fuzz.sh $(ARGS)
