//! Leader election on the coordination Lease `vaultkeeper-operator` (kube-lease-manager): one
//! replica reconciles, the others wait with warm caches and take over when its Lease runs out.

use std::time::Duration;

use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Args;

/// Name of the Lease, in the operator's namespace.
pub const LEASE_NAME: &str = "vaultkeeper-operator";

/// This replica's part in the election.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, kube_lease_manager::LeaseManagerError>>,
}

/// Joins the election; the returned value tells when this replica leads and when it stops.
pub async fn elect(client: kube::Client, args: &Args) -> anyhow::Result<Leadership> {
    let identity = args.identity.clone().unwrap_or_else(random_identity);
    let duration = args.lease_duration.max(Duration::from_secs(3)).as_secs();
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(&args.namespace)
        .with_identity(&identity)
        .with_duration(duration)
        // Renew a third of the duration before it runs out.
        .with_grace((duration / 3).max(1))
        .with_field_manager("vaultkeeper-leader")
        .build()
        .await?;
    tracing::info!(%identity, lease = LEASE_NAME, namespace = %args.namespace, "waiting to become leader");
    let (state, task) = manager.watch().await;
    Ok(Leadership { state, task })
}

impl Leadership {
    /// Resolves when this replica holds the Lease.
    pub async fn acquired(&mut self) {
        if self.state.wait_for(|leader| *leader).await.is_ok() {
            tracing::info!("became leader");
        }
    }

    /// Resolves when this replica no longer holds the Lease.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }

    /// Gives the Lease up now, so a standby takes over without waiting for it to expire.
    pub async fn release(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader Lease"),
            Ok(Err(err)) => tracing::warn!(error = %err, "failed to release the leader Lease"),
            Err(err) => tracing::warn!(error = %err, "leader election task failed"),
        }
    }
}

/// A name for a replica started without `--identity`.
pub fn random_identity() -> String {
    use rand::Rng;
    let suffix: u32 = rand::rng().random();
    format!("vaultkeeper-operator-{suffix:08x}")
}
