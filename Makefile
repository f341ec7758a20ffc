# Entry points. `make test` is what CI runs (.ci/run).
.PHONY: test crds build

test:
	./hack/test.sh

crds:
	cargo run -q -p vaultkeeper-crds --bin crdgen > manifests/crds.yaml

build:
	cargo build --workspace --release
