//! What ends the operator process: a signal, the loss of the leader Lease, or one of its
//! long-running tasks (a controller, a watch of managed Secrets) ending before shutdown. Those
//! tasks return only at shutdown; one that ends earlier (a panic, a stream that gave up) leaves
//! resources unreconciled, so the process stops being ready at once and exits with an error for
//! its supervisor (the kubelet) to restart it.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinHandle;

/// Why the operator stops.
#[derive(Debug, PartialEq)]
pub enum Stop {
    Signal,
    LostLeadership,
    /// A task ended on its own: its name, and its panic message if it panicked.
    TaskEnded(String, Option<String>),
}

/// Waits for the first reason to stop. A task that ended turns `ready` off before this returns,
/// so `/readyz` fails from that moment, not only once the process is gone.
pub async fn first_stop(
    shutdown: impl Future<Output = ()>,
    lost_leadership: impl Future<Output = ()>,
    tasks: &mut [(String, JoinHandle<()>)],
    ready: &AtomicBool,
) -> Stop {
    let names: Vec<String> = tasks.iter().map(|(name, _)| name.clone()).collect();
    let ended = async {
        if tasks.is_empty() {
            return std::future::pending().await;
        }
        futures::future::select_all(tasks.iter_mut().map(|(_, task)| task)).await
    };
    tokio::select! {
        _ = shutdown => Stop::Signal,
        _ = lost_leadership => Stop::LostLeadership,
        (result, index, _) = ended => {
            ready.store(false, Ordering::Relaxed);
            Stop::TaskEnded(names[index].clone(), result.err().map(|e| e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn forever() -> JoinHandle<()> {
        tokio::spawn(pending())
    }

    #[tokio::test]
    async fn a_task_that_panics_ends_readiness_and_names_itself() {
        let ready = AtomicBool::new(true);
        let mut tasks = [
            ("VaultSecret".to_owned(), forever()),
            (
                "DynamicCredential".to_owned(),
                tokio::spawn(async { panic!("overflow in a reconcile") }),
            ),
        ];
        let stop = first_stop(pending(), pending(), &mut tasks, &ready).await;
        match stop {
            Stop::TaskEnded(name, Some(message)) if name == "DynamicCredential" => {
                assert!(message.contains("overflow in a reconcile"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(!ready.load(Ordering::Relaxed), "not ready any more");
    }

    #[tokio::test]
    async fn a_task_that_returns_early_ends_readiness_too() {
        let ready = AtomicBool::new(true);
        let mut tasks = [
            (
                "CertificateRequest Secret watch".to_owned(),
                tokio::spawn(async {}),
            ),
            ("VaultSecret".to_owned(), forever()),
        ];
        let stop = first_stop(pending(), pending(), &mut tasks, &ready).await;
        assert_eq!(
            stop,
            Stop::TaskEnded("CertificateRequest Secret watch".to_owned(), None)
        );
        assert!(!ready.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_signal_or_a_lost_lease_stops_without_blaming_a_task() {
        let ready = AtomicBool::new(true);
        let mut tasks = [("VaultSecret".to_owned(), forever())];
        let stop = first_stop(async {}, pending(), &mut tasks, &ready).await;
        assert_eq!(stop, Stop::Signal);
        let stop = first_stop(pending(), async {}, &mut tasks, &ready).await;
        assert_eq!(stop, Stop::LostLeadership);
        assert!(
            ready.load(Ordering::Relaxed),
            "readiness is main's to end on these"
        );
    }
}
