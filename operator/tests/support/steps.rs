//! One count of the operator's outside effects (Kubernetes requests and Vault calls), shared by
//! both fakes, and the switch that "stops the operator" at a chosen step: that step and every
//! later one never happen, and a test waiting on [`Steps::halted`] drops the reconcile.

use std::sync::Mutex;

use tokio::sync::watch;

pub struct Steps {
    inner: Mutex<Inner>,
    halted: watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    count: u64,
    stop_at: Option<u64>,
    halted: bool,
    stops: Vec<(u64, String)>,
    /// What each step was (index = step - 1).
    whats: Vec<String>,
    log: Vec<String>,
}

impl Default for Steps {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            halted: watch::channel(false).0,
        }
    }
}

impl Steps {
    /// Counts the step `what`; `None` when the operator stopped at or before it (it never happens).
    pub fn enter(&self, what: String) -> Option<u64> {
        let mut inner = self.inner.lock().expect("steps lock");
        if inner.halted {
            return None;
        }
        inner.count += 1;
        let n = inner.count;
        inner.whats.push(what.clone());
        if inner.stop_at == Some(n) {
            inner.halted = true;
            inner.log.push(format!("{n:4} STOPPED before {what}"));
            inner.stops.push((n, what));
            drop(inner);
            self.halted.send_replace(true);
            return None;
        }
        inner.log.push(format!("{n:4} {what}"));
        Some(n)
    }

    /// The number of steps taken so far (a test's own actions are placed between them).
    pub fn now(&self) -> u64 {
        self.inner.lock().expect("steps lock").count
    }

    /// What step `n` was.
    pub fn what(&self, n: u64) -> String {
        let inner = self.inner.lock().expect("steps lock");
        inner.whats[usize::try_from(n - 1).expect("a step number")].clone()
    }

    /// Notes a test action in the log without counting it as a step.
    pub fn note(&self, what: &str) {
        let mut inner = self.inner.lock().expect("steps lock");
        let n = inner.count;
        inner.log.push(format!("{n:4} -- {what}"));
    }

    /// Stops the operator before step `n` (counted from the start).
    pub fn stop_at(&self, n: u64) {
        self.inner.lock().expect("steps lock").stop_at = Some(n);
    }

    /// A new operator process runs: nothing stops it any more.
    pub fn resume(&self) {
        let mut inner = self.inner.lock().expect("steps lock");
        inner.stop_at = None;
        inner.halted = false;
        drop(inner);
        self.halted.send_replace(false);
    }

    /// The steps the operator stopped before (which never happened), and what they were.
    pub fn stops(&self) -> Vec<(u64, String)> {
        self.inner.lock().expect("steps lock").stops.clone()
    }

    /// Resolves once the operator stopped.
    pub async fn halted(&self) {
        let mut rx = self.halted.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// Every step and note so far, one a line (printed when an assertion fails).
    pub fn dump(&self) -> String {
        self.inner.lock().expect("steps lock").log.join("\n")
    }
}
