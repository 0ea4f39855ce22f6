//! Following the policy's domain names in DNS (resolver mode): one task per name resolves it,
//! re-resolves it before its TTL runs out and reports every change of the addresses it allows.
//! [`tracker`] holds the rules, [`lookup`] asks the servers.

pub mod lookup;
pub mod tracker;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};

pub use self::{
    lookup::{Lookup, system_servers},
    tracker::{Answer, Settings, Status, Tracker},
};
use crate::policy::{DnsSettings, Resolved};

/// Lookups in flight at once, across all names (a policy of 10 000 names must not flood the
/// resolver when it starts).
const MAX_CONCURRENT_LOOKUPS: usize = 64;

/// A change in what one name allows.
#[derive(Clone, Debug)]
pub struct NameUpdate {
    pub name: String,
    pub ips: BTreeSet<IpAddr>,
    pub status: Status,
    /// Addresses dropped by the per-name cap so far.
    pub dropped_by_cap: u64,
}

pub struct Follower {
    lookup: Arc<Lookup>,
    settings: Settings,
    limit: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<NameUpdate>,
    rx: mpsc::UnboundedReceiver<NameUpdate>,
    tasks: HashMap<String, JoinHandle<()>>,
    /// What each followed name allows now.
    pub resolved: Resolved,
    /// Each followed name's latest status (absent: no answer yet).
    pub statuses: BTreeMap<String, NameUpdate>,
    /// Which answered addresses must not be allowed (DNS rebinding protection).
    rebinding: crate::rebinding::Rules,
}

impl Follower {
    pub fn new(
        servers: &[SocketAddr],
        dns: &DnsSettings,
        rebinding: crate::rebinding::Rules,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            lookup: Arc::new(Lookup::new(servers, dns.timeout)),
            settings: Settings::from(dns),
            limit: Arc::new(Semaphore::new(MAX_CONCURRENT_LOOKUPS)),
            tx,
            rx,
            tasks: HashMap::new(),
            resolved: Resolved::new(),
            statuses: BTreeMap::new(),
            rebinding,
        }
    }

    /// Start following the names not followed yet.
    pub fn add(&mut self, names: &BTreeSet<String>) {
        for name in names {
            if !self.tasks.contains_key(name) {
                let task = tokio::spawn(follow(
                    name.clone(),
                    self.lookup.clone(),
                    self.settings,
                    self.limit.clone(),
                    self.tx.clone(),
                ));
                self.tasks.insert(name.clone(), task);
            }
        }
    }

    /// Stop following every name not in `names`, forgetting what they allowed.
    pub fn retain(&mut self, names: &BTreeSet<String>) {
        self.tasks.retain(|name, task| {
            let keep = names.contains(name);
            if !keep {
                task.abort();
            }
            keep
        });
        self.resolved.retain(|name, _| names.contains(name));
        self.statuses.retain(|name, _| names.contains(name));
    }

    /// Wait until each of `names` has had its first answer (or failure), or until `deadline`.
    /// Returns the updates received meanwhile.
    pub async fn settle(&mut self, names: &BTreeSet<String>, deadline: Instant) -> Vec<NameUpdate> {
        let mut got = Vec::new();
        while names.iter().any(|n| !self.statuses.contains_key(n)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(u)) => got.push(self.record(u)),
                Ok(None) | Err(_) => break,
            }
        }
        got.extend(self.drain());
        got
    }

    /// Wait for the next change (cancel-safe), and return it with any others already queued.
    pub async fn changed(&mut self) -> Vec<NameUpdate> {
        let Some(first) = self.rx.recv().await else { return Vec::new() };
        let mut got = vec![self.record(first)];
        got.extend(self.drain());
        got
    }

    fn drain(&mut self) -> Vec<NameUpdate> {
        let mut got = Vec::new();
        while let Ok(u) = self.rx.try_recv() {
            got.push(self.record(u));
        }
        got
    }

    /// Take an update into `resolved` (ignoring names no longer followed), without the
    /// addresses rebinding protection refuses.
    fn record(&mut self, mut u: NameUpdate) -> NameUpdate {
        let refused: Vec<IpAddr> = u
            .ips
            .iter()
            .copied()
            .filter(|ip| self.rebinding.refused(&u.name, *ip).is_some())
            .collect();
        if !refused.is_empty() {
            tracing::warn!(
                "{}: resolves to {}, which is not allowed (dns.rebinding: refuse; allow_private opens private addresses)",
                u.name,
                refused.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
            );
            u.ips.retain(|ip| !refused.contains(ip));
        }
        if self.tasks.contains_key(&u.name) {
            self.resolved.insert(u.name.clone(), u.ips.clone());
            self.statuses.insert(u.name.clone(), u.clone());
        }
        u
    }

    /// Time for every name's first answer: a lookup may take `attempts` timeouts.
    pub fn settle_deadline(dns: &DnsSettings) -> Instant {
        Instant::now() + dns.timeout * 2 + Duration::from_secs(1)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

/// One name, for as long as it is followed.
async fn follow(
    name: String,
    lookup: Arc<Lookup>,
    settings: Settings,
    limit: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<NameUpdate>,
) {
    let mut tracker = Tracker::new(settings, Instant::now());
    let mut last: Option<(BTreeSet<IpAddr>, Status, u64)> = None;
    loop {
        let now = Instant::now();
        if tracker.refresh_due(now) {
            let answer = {
                let _permit = limit.acquire().await;
                lookup.resolve(&name).await
            };
            let now = Instant::now();
            match answer {
                Ok(a) => tracker.on_answer(now, a),
                Err(e) => tracker.on_error(now, e),
            }
        }
        let now = Instant::now();
        tracker.expire(now);
        let state = (tracker.allowed(now), tracker.status().clone(), tracker.dropped_by_cap);
        if last.as_ref() != Some(&state) {
            let (ips, status, dropped_by_cap) = state.clone();
            if tx.send(NameUpdate { name: name.clone(), ips, status, dropped_by_cap }).is_err() {
                return;
            }
            last = Some(state);
        }
        tokio::time::sleep_until(tracker.next_wakeup().into()).await;
    }
}
