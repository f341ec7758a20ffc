//! Black-box tests of vaultkeeper. The real-stack tier (kube-apiserver, etcd, OpenBao, PostgreSQL
//! started by the project's launcher) is not written yet; today this crate checks the generated
//! manifests, which users apply as they are.

#[cfg(test)]
mod tests {
    /// `manifests/crds.yaml` is what users apply: it must be exactly what the types generate.
    #[test]
    fn committed_crds_match_the_types() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/crds.yaml"
        ))
        .unwrap();
        assert!(
            committed == crds::crds_yaml(),
            "manifests/crds.yaml drifted: run `cargo run -p vaultkeeper-crds --bin crdgen > manifests/crds.yaml`"
        );
    }
}
