//! What the operator watches: every namespace, or only those of `--watch-namespaces` (the
//! namespaced install mode, whose RBAC is Roles in those namespaces; it then never lists or watches
//! anything cluster-wide).
//!
//! One reflector store cannot hold several namespace watches (each watch's relist replaces the
//! whole store), so each namespace gets its own watches, stores and controllers, and the caches of
//! managed Secrets are looked up through [`ManagedSecrets`], which picks the namespace's store.

use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::reflector::{ObjectRef, Store};

/// Where one set of controllers looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    Cluster,
    /// One namespace.
    Namespace(String),
}

impl Scope {
    /// The scopes of a `--watch-namespaces` list: the whole cluster when it is empty.
    pub fn from_list(namespaces: &[String]) -> Vec<Scope> {
        let mut names: Vec<&str> = namespaces
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort_unstable();
        names.dedup();
        match names.is_empty() {
            true => vec![Scope::Cluster],
            false => names
                .into_iter()
                .map(|n| Scope::Namespace(n.to_owned()))
                .collect(),
        }
    }

    /// The API of kind `K` in this scope.
    pub fn api<K>(&self, client: kube::Client) -> Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        match self {
            Scope::Cluster => Api::all(client),
            Scope::Namespace(namespace) => Api::namespaced(client, namespace),
        }
    }

    /// Whether an object of `namespace` is in this scope.
    pub fn covers(&self, namespace: &str) -> bool {
        match self {
            Scope::Cluster => true,
            Scope::Namespace(n) => n == namespace,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Cluster => f.write_str("all namespaces"),
            Scope::Namespace(n) => write!(f, "namespace {n}"),
        }
    }
}

/// The managed Secrets of one kind, in one store per scope.
#[derive(Clone)]
pub struct ManagedSecrets {
    stores: Vec<(Scope, Store<Secret>)>,
}

impl ManagedSecrets {
    pub fn new(stores: Vec<(Scope, Store<Secret>)>) -> Self {
        Self { stores }
    }

    /// The cached Secret, from the store of its namespace's scope.
    pub fn get(&self, key: &ObjectRef<Secret>) -> Option<Arc<Secret>> {
        let namespace = key.namespace.as_deref().unwrap_or_default();
        self.stores
            .iter()
            .find(|(scope, _)| scope.covers(namespace))
            .and_then(|(_, store)| store.get(key))
    }

    /// Resolves once every store has been filled.
    pub async fn wait_until_ready(&self) {
        for (_, store) in &self.stores {
            let _ = store.wait_until_ready().await;
        }
    }
}

/// A single cluster-wide store (the default mode, and the tests').
impl From<Store<Secret>> for ManagedSecrets {
    fn from(store: Store<Secret>) -> Self {
        Self::new(vec![(Scope::Cluster, store)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher;

    #[test]
    fn an_empty_list_is_the_cluster_and_a_list_is_its_namespaces_once_each() {
        assert_eq!(Scope::from_list(&[]), [Scope::Cluster]);
        assert_eq!(Scope::from_list(&[" ".into()]), [Scope::Cluster]);
        assert_eq!(
            Scope::from_list(&["b".into(), "a".into(), " b ".into()]),
            [Scope::Namespace("a".into()), Scope::Namespace("b".into())]
        );
    }

    #[test]
    fn a_secret_is_found_in_the_store_of_its_namespace_only() {
        let secret = |ns: &str| Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("s".into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let (a, mut a_writer) = kube::runtime::reflector::store();
        let (b, mut b_writer) = kube::runtime::reflector::store();
        // Misplaced in the store of b: never looked up there.
        b_writer.apply_watcher_event(&watcher::Event::Apply(secret("a")));
        let secrets = ManagedSecrets::new(vec![
            (Scope::Namespace("b".into()), b),
            (Scope::Namespace("a".into()), a),
        ]);
        let key = |ns: &str| ObjectRef::<Secret>::new("s").within(ns);
        assert!(secrets.get(&key("a")).is_none());
        a_writer.apply_watcher_event(&watcher::Event::Apply(secret("a")));
        assert!(secrets.get(&key("a")).is_some());
        assert!(secrets.get(&key("b")).is_none());
        assert!(secrets.get(&key("c")).is_none());
    }
}
