//! Sharded scale-out. With `--shards N` the resources are split into N shards by a stable hash of
//! their namespace, and replicas share them instead of one leading while the others stand by.
//!
//! Each shard has a coordination Lease `vaultkeeper-shard-<i>` in the operator's namespace, and
//! each replica a membership Lease `vaultkeeper-member-<identity>`. Every round (a third of the
//! Lease duration) a replica renews its membership and the shards it holds, counts the live
//! members, and takes free or expired shards up to its fair share (N over the members, rounded
//! up) or gives back those above it: a new replica gets work, and a dead one's shards are taken
//! over once its Leases run out.
//!
//! A replica reconciles only the resources of the shards it serves. It stops serving a shard
//! before giving its Lease back, after the reconciles of that shard under way have finished, and
//! when it could not renew the Lease for two thirds of its duration, a third before anyone else
//! may take it. So no resource is reconciled by two replicas at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use tokio::sync::{OwnedRwLockReadGuard, RwLock, watch};

/// Names of the shard Leases: this prefix and the shard's number.
pub const SHARD_PREFIX: &str = "vaultkeeper-shard-";
/// Names of the membership Leases: this prefix and the replica's identity.
pub const MEMBER_PREFIX: &str = "vaultkeeper-member-";
/// The label on both kinds of Lease (`shard` or `member`), by which a round lists them.
pub const LEASE_LABEL: &str = "vaultkeeper.dev/lease";

/// The shard of `namespace`: FNV-1a (64 bits) of its name, modulo `shards`. Written out rather
/// than taken from std, whose hasher may change between Rust versions: every replica, of every
/// version, must put a namespace in the same shard.
pub fn shard_of(namespace: &str, shards: u32) -> u32 {
    let shards = shards.max(1);
    u32::try_from(fnv1a(namespace.as_bytes()) % u64::from(shards)).unwrap_or(0)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A Lease as far as sharing goes: who holds it and until when.
#[derive(Clone, Debug, PartialEq)]
pub struct Holding {
    /// Empty when it was given back.
    pub holder: String,
    pub renewed: Timestamp,
    pub duration: Duration,
}

impl Holding {
    fn live(&self, now: Timestamp) -> bool {
        !self.holder.is_empty() && crate::clock::after(self.renewed, self.duration) > now
    }
}

/// What one round does with the shard Leases.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Held by this replica: renewed.
    pub renew: Vec<u32>,
    /// Free or expired: taken.
    pub acquire: Vec<u32>,
    /// Above the fair share: given back.
    pub release: Vec<u32>,
}

/// The fair share of `shards` among `members` live replicas: rounded up, so they are all held.
pub fn fair_share(shards: u32, members: usize) -> usize {
    let members = members.max(1);
    usize::try_from(shards)
        .unwrap_or(usize::MAX)
        .div_ceil(members)
}

/// Decides a round for replica `me`, given the shard Leases there are (by shard) and the number of
/// live members (`me` included). Free shards are tried in an order of `me`'s own, so replicas
/// starting together reach for different ones first.
pub fn plan(
    me: &str,
    shards: u32,
    members: usize,
    leases: &BTreeMap<u32, Holding>,
    now: Timestamp,
) -> Plan {
    let share = fair_share(shards, members);
    let mine: Vec<u32> = (0..shards)
        .filter(|s| leases.get(s).is_some_and(|l| l.holder == me))
        .collect();
    let mut plan = Plan::default();
    if mine.len() > share {
        let (keep, give) = mine.split_at(share);
        plan.renew = keep.to_vec();
        plan.release = give.to_vec();
        return plan;
    }
    plan.renew = mine.clone();
    let mut free: Vec<u32> = (0..shards)
        .filter(|s| !mine.contains(s) && leases.get(s).is_none_or(|l| !l.live(now)))
        .collect();
    free.sort_by_key(|s| fnv1a(format!("{me}/{s}").as_bytes()));
    free.truncate(share - mine.len());
    plan.acquire = free;
    plan
}

/// Which shards this replica serves now, shared by the controllers and the round.
pub struct Shards {
    count: u32,
    /// One flag per shard; a reconcile holds a read guard for its length, so turning a flag off
    /// (with the write lock) waits for the reconciles of that shard under way.
    serving: Vec<Arc<RwLock<bool>>>,
    /// The shards served now: the controllers look at a shard's resources when it is gained.
    served: watch::Sender<BTreeSet<u32>>,
}

impl Shards {
    pub fn new(count: u32) -> Self {
        let count = count.max(1);
        Self {
            count,
            serving: (0..count).map(|_| Arc::new(RwLock::new(false))).collect(),
            served: watch::Sender::new(BTreeSet::new()),
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    fn flag(&self, namespace: &str) -> &Arc<RwLock<bool>> {
        let shard = usize::try_from(shard_of(namespace, self.count)).unwrap_or(0);
        &self.serving[shard]
    }

    /// Whether `namespace` is served here now, without waiting (false from the moment its shard
    /// starts being given up).
    pub fn serves(&self, namespace: &str) -> bool {
        self.served
            .borrow()
            .contains(&shard_of(namespace, self.count))
    }

    /// Holds `namespace`'s shard for the length of a reconcile; `None` when it is not served here.
    pub async fn hold(&self, namespace: &str) -> Option<OwnedRwLockReadGuard<bool>> {
        let guard = self.flag(namespace).clone().read_owned().await;
        (*guard).then_some(guard)
    }

    /// Starts or stops serving `shard`; stopping waits for its reconciles under way. Setting what
    /// already holds (every renewal does) changes nothing and waits for nothing.
    pub async fn set(&self, shard: u32, on: bool) {
        let Some(flag) = usize::try_from(shard)
            .ok()
            .and_then(|s| self.serving.get(s))
        else {
            return;
        };
        if self.served.borrow().contains(&shard) == on && *flag.read().await == on {
            return;
        }
        if on {
            *flag.write().await = true;
            self.served.send_modify(|served| {
                served.insert(shard);
            });
        } else {
            // New reconciles skip the shard first; then those under way are waited for.
            self.served.send_modify(|served| {
                served.remove(&shard);
            });
            *flag.write().await = false;
        }
    }

    /// The shards served now.
    pub fn served(&self) -> Vec<u32> {
        self.served.borrow().iter().copied().collect()
    }

    /// The shards that started being served here, each time some did (only those: the others'
    /// resources are reconciled already).
    pub fn gains(&self) -> impl futures::Stream<Item = BTreeSet<u32>> + Send + 'static {
        let rx = self.served.subscribe();
        futures::stream::unfold((rx, BTreeSet::new()), |(mut rx, before)| async move {
            loop {
                rx.changed().await.ok()?;
                let now = rx.borrow_and_update().clone();
                let gained: BTreeSet<u32> = now.difference(&before).copied().collect();
                if !gained.is_empty() {
                    return Some((gained, (rx, now)));
                }
            }
        })
    }
}

/// The replica's side of the sharing: its identity and where the Leases live.
pub struct Member {
    pub leases: Api<Lease>,
    pub identity: String,
    /// Each Lease's duration; rounds come three times as often.
    pub duration: Duration,
    pub shards: Arc<Shards>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Member {
    /// Takes part for the life of the process.
    pub async fn run(&self) {
        let every = (self.duration / 3).max(Duration::from_secs(1));
        // When each shard held here was last renewed.
        let mut renewed: BTreeMap<u32, Timestamp> = BTreeMap::new();
        loop {
            if let Err(err) = self.round(&mut renewed).await {
                tracing::warn!(error = %err, "failed a round of the shard Leases; retrying");
            }
            // Not renewed for two thirds of the duration: stop, a third before others may take it.
            let now = Timestamp::now();
            let stale: Vec<u32> = renewed
                .iter()
                .filter(|(_, at)| crate::clock::after(**at, self.duration * 2 / 3) <= now)
                .map(|(s, _)| *s)
                .collect();
            for shard in stale {
                tracing::warn!(
                    shard,
                    "could not renew the shard's Lease in time; no longer serving it"
                );
                self.shards.set(shard, false).await;
                renewed.remove(&shard);
            }
            self.metrics.shards_held(self.shards.served().len());
            tokio::time::sleep(every).await;
        }
    }

    async fn round(&self, renewed: &mut BTreeMap<u32, Timestamp>) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        self.renew_membership(now).await?;
        let all = self
            .leases
            .list(&ListParams::default().labels(LEASE_LABEL))
            .await?;
        let mut shards = BTreeMap::new();
        let mut objects = BTreeMap::new();
        let mut members = 0;
        for lease in all.items {
            let name = lease.name_any();
            let holding = holding(&lease);
            if let Some(shard) = name
                .strip_prefix(SHARD_PREFIX)
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|s| *s < self.shards.count())
            {
                if let Some(h) = holding {
                    shards.insert(shard, h);
                }
                objects.insert(shard, lease);
            } else if name.starts_with(MEMBER_PREFIX) && holding.is_some_and(|h| h.live(now)) {
                members += 1;
            }
        }
        let plan = plan(
            &self.identity,
            self.shards.count(),
            members.max(1),
            &shards,
            now,
        );
        for shard in plan.release {
            // Stop first (the reconciles under way finish), then give the Lease back.
            self.shards.set(shard, false).await;
            renewed.remove(&shard);
            if let Some(lease) = objects.remove(&shard) {
                self.write(lease, String::new(), now, false).await?;
            }
            tracing::info!(
                shard,
                "gave the shard back: above this replica's fair share"
            );
        }
        for shard in plan.renew {
            if let Some(lease) = objects.remove(&shard) {
                match self.write(lease, self.identity.clone(), now, false).await {
                    Ok(()) => {
                        renewed.insert(shard, now);
                        self.shards.set(shard, true).await;
                    }
                    Err(err) => {
                        tracing::warn!(shard, error = %err, "failed to renew the shard's Lease")
                    }
                }
            }
        }
        for shard in plan.acquire {
            let result = match objects.remove(&shard) {
                Some(lease) => self.write(lease, self.identity.clone(), now, true).await,
                None => self.create(shard, now).await,
            };
            match result {
                Ok(()) => {
                    renewed.insert(shard, now);
                    self.shards.set(shard, true).await;
                    tracing::info!(shard, "took the shard");
                }
                // Another replica took it first (409): the next round sees it held.
                Err(err) => tracing::debug!(shard, error = %err, "did not take the shard"),
            }
        }
        Ok(())
    }

    fn spec(&self, holder: String, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }
    }

    fn meta(&self, name: String, kind: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            labels: Some(BTreeMap::from([(LEASE_LABEL.to_owned(), kind.to_owned())])),
            ..Default::default()
        }
    }

    /// Writes `lease` with `holder` (empty: given back), guarded by its resourceVersion, so a
    /// replica that read it before someone else wrote it fails instead of overwriting.
    async fn write(
        &self,
        mut lease: Lease,
        holder: String,
        now: Timestamp,
        taking: bool,
    ) -> Result<(), kube::Error> {
        let mut spec = lease.spec.take().unwrap_or_default();
        let previous = spec.holder_identity.clone().unwrap_or_default();
        let fresh = self.spec(holder, now);
        if taking {
            spec.acquire_time = Some(MicroTime(now));
            if previous != self.identity {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        spec.holder_identity = fresh.holder_identity;
        spec.lease_duration_seconds = fresh.lease_duration_seconds;
        spec.renew_time = fresh.renew_time;
        lease.spec = Some(spec);
        self.leases
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    async fn create(&self, shard: u32, now: Timestamp) -> Result<(), kube::Error> {
        let mut spec = self.spec(self.identity.clone(), now);
        spec.acquire_time = Some(MicroTime(now));
        let lease = Lease {
            metadata: self.meta(format!("{SHARD_PREFIX}{shard}"), "shard"),
            spec: Some(spec),
        };
        self.leases
            .create(&PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    async fn renew_membership(&self, now: Timestamp) -> Result<(), kube::Error> {
        let name = format!("{MEMBER_PREFIX}{}", self.identity);
        match self.leases.get_opt(&name).await? {
            Some(lease) => self.write(lease, self.identity.clone(), now, false).await,
            None => {
                let lease = Lease {
                    metadata: self.meta(name, "member"),
                    spec: Some(self.spec(self.identity.clone(), now)),
                };
                self.leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
        }
    }

    /// At shutdown: stops serving, gives every shard held here back and ends the membership, so
    /// the other replicas take over within a round instead of a Lease duration.
    pub async fn leave(&self) {
        for shard in self.shards.served() {
            self.shards.set(shard, false).await;
        }
        let Ok(all) = self
            .leases
            .list(&ListParams::default().labels(&format!("{LEASE_LABEL}=shard")))
            .await
        else {
            return;
        };
        let now = Timestamp::now();
        for lease in all.items {
            let held = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str());
            if held && let Err(err) = self.write(lease, String::new(), now, false).await {
                tracing::warn!(error = %err, "failed to give a shard back at shutdown");
            }
        }
        let name = format!("{MEMBER_PREFIX}{}", self.identity);
        let _ = self.leases.delete(&name, &DeleteParams::default()).await;
        tracing::info!("gave every shard back");
    }
}

fn holding(lease: &Lease) -> Option<Holding> {
    let spec = lease.spec.as_ref()?;
    Some(Holding {
        holder: spec.holder_identity.clone().unwrap_or_default(),
        renewed: spec.renew_time.as_ref()?.0,
        duration: Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn held(by: &str, renewed: i64) -> Holding {
        Holding {
            holder: by.into(),
            renewed: at(renewed),
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn a_namespace_always_lands_in_the_same_shard() {
        // Fixed values: a change here moves every namespace to another shard on upgrade.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of("team-a", 16), shard_of("team-a", 16));
        let spread: std::collections::BTreeSet<u32> =
            (0..200).map(|i| shard_of(&format!("ns-{i}"), 8)).collect();
        assert_eq!(
            spread.len(),
            8,
            "200 namespaces reach every one of 8 shards"
        );
        assert_eq!(shard_of("anything", 0), 0, "no shards count as one");
    }

    #[test]
    fn a_lone_replica_takes_every_shard_and_a_second_one_half() {
        let leases = BTreeMap::new();
        let first = plan("a", 4, 1, &leases, at(0));
        assert_eq!(first.acquire.len(), 4);
        let mut leases: BTreeMap<u32, Holding> = (0..4).map(|s| (s, held("a", 0))).collect();
        // A second member: `a` gives two back, `b` waits for them.
        let a = plan("a", 4, 2, &leases, at(5));
        assert_eq!(a.renew, [0, 1]);
        assert_eq!(a.release, [2, 3]);
        assert!(plan("b", 4, 2, &leases, at(5)).acquire.is_empty());
        for s in [2, 3] {
            leases.insert(s, held("", 5));
        }
        let b = plan("b", 4, 2, &leases, at(6));
        let mut taken = b.acquire.clone();
        taken.sort();
        assert_eq!(taken, [2, 3]);
    }

    #[test]
    fn a_dead_replicas_shards_are_taken_once_they_expire_and_not_before() {
        let leases: BTreeMap<u32, Holding> = [(0, held("a", 0)), (1, held("dead", 0))].into();
        assert!(
            plan("a", 2, 1, &leases, at(10)).acquire.is_empty(),
            "still live"
        );
        assert_eq!(plan("a", 2, 1, &leases, at(15)).acquire, [1]);
        // Fair share still counts the dead member while its membership lives: nothing taken.
        assert!(plan("a", 2, 2, &leases, at(15)).acquire.is_empty());
    }

    #[test]
    fn shares_are_rounded_up_so_every_shard_is_held() {
        assert_eq!(fair_share(16, 3), 6);
        assert_eq!(fair_share(16, 0), 16);
        assert_eq!(fair_share(2, 3), 1);
        // Three replicas, sixteen shards: each takes at most six, together all sixteen.
        let mut leases = BTreeMap::new();
        for (who, t) in [("a", 0), ("b", 0), ("c", 0)] {
            for s in plan(who, 16, 3, &leases, at(t)).acquire {
                leases.insert(s, held(who, t));
            }
        }
        assert_eq!(leases.len(), 16);
        for who in ["a", "b", "c"] {
            assert!(leases.values().filter(|h| h.holder == who).count() <= 6);
        }
    }

    #[tokio::test]
    async fn renewing_a_served_shard_never_makes_it_look_unserved() {
        // Found at 20,000 resources: a renewal took the shard's write lock, a watch event that came
        // in that moment read "not served", and its resource was never reconciled.
        let shards = Arc::new(Shards::new(1));
        shards.set(0, true).await;
        let renewing = {
            let shards = shards.clone();
            tokio::spawn(async move {
                for _ in 0..2000 {
                    shards.set(0, true).await;
                    tokio::task::yield_now().await;
                }
            })
        };
        let _reconcile = shards.hold("ns").await.expect("served");
        while !renewing.is_finished() {
            assert!(shards.serves("ns"));
            tokio::task::yield_now().await;
        }
        renewing.await.unwrap();
    }

    #[tokio::test]
    async fn stopping_a_shard_waits_for_its_reconciles_under_way() {
        let shards = Arc::new(Shards::new(1));
        let mut gains = Box::pin(shards.gains());
        shards.set(0, true).await;
        assert_eq!(
            futures::StreamExt::next(&mut gains).await.unwrap(),
            BTreeSet::from([0])
        );
        assert!(shards.serves("ns"));
        let guard = shards.hold("ns").await.expect("served");
        let stopping = {
            let shards = shards.clone();
            tokio::spawn(async move { shards.set(0, false).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!stopping.is_finished(), "waits for the reconcile");
        assert!(!shards.serves("ns"), "no new reconcile starts meanwhile");
        drop(guard);
        stopping.await.unwrap();
        assert!(shards.hold("ns").await.is_none());
    }
}
