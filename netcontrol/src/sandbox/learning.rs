//! A proxy-mode sandbox's DNS learning: the addresses its proxy's answers taught it, what each
//! may reach, and the learner task that writes an answer's addresses into the maps before the
//! answer is released. The learner works on its own sandbox's state only: an answer never
//! waits for the sandbox's owner (a daemon reloading, starting or reporting on other
//! sandboxes), only for a reload or sweep of the same sandbox.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use netcontrol_common::abi::{ALLOW_F_LEARNED, AllowValue, PortRange, SANDBOX_F_DNS_REDIRECT};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    datapath::Datapath,
    dnsproxy::Learned,
    enforcer::Hosts,
    error::Result,
    events::Labels,
    learn::LearnedSet,
    policy::{Compiled, Policy, PolicyError, Resolved, compile::Index},
    resolve::Settings,
};

pub struct Learning {
    learned: LearnedSet,
    /// Learned entries found in pinned maps (a restarted daemon): their names are not known,
    /// so they keep their ports until the grace period runs out unused, or a reload.
    carried: BTreeMap<IpAddr, (Vec<PortRange>, Instant)>,
    /// The policy's static grants, for computing learned addresses' entries.
    index: Index,
    policy: Policy,
    sandbox: String,
    labels: Labels,
    reported_drops: u64,
    reported_quota_drops: u64,
    /// The sandbox was detached or left pinned: nothing is written any more (a late answer
    /// must not leave an entry under a policy id that is released).
    closed: bool,
}

/// The learning state, shared by the sandbox's owner and its learner task.
pub type Shared = Arc<Mutex<Learning>>;

pub fn lock(s: &Shared) -> MutexGuard<'_, Learning> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Learning {
    pub fn new(
        sandbox: &str,
        policy: &Policy,
        servers: &[SocketAddr],
        carried: BTreeMap<IpAddr, (Vec<PortRange>, Instant)>,
        labels: Labels,
    ) -> Self {
        Self {
            learned: LearnedSet::new(Settings::from(&policy.dns)),
            carried,
            index: Index::new(&policy.grants(&Resolved::new(), servers)),
            policy: policy.clone(),
            sandbox: sandbox.to_owned(),
            labels,
            reported_drops: 0,
            reported_quota_drops: 0,
            closed: false,
        }
    }

    /// Everything the maps should hold: the static entries and the learned addresses, with
    /// the DNS proxy's ports.
    pub fn compiled(&self, dns_ports: (u16, u16)) -> Result<Compiled> {
        let learned: BTreeMap<IpAddr, Vec<_>> = self
            .learned
            .ips()
            .chain(self.carried.keys().copied())
            .map(|ip| (ip, self.ranges(ip)))
            .collect();
        Ok(Compiled {
            flags: self.policy.sandbox_flags() | SANDBOX_F_DNS_REDIRECT,
            dns_port4: dns_ports.0,
            dns_port6: dns_ports.1,
            entries: self.index.entries_with(&learned).map_err(PolicyError::from)?,
            ..self.policy.compile(&Resolved::new(), &[])?
        })
    }

    /// A reload: the new policy's grants and settings; names it no longer allows are
    /// forgotten, and so are carried entries (their names are unknown: the new policy may not
    /// allow them). The owner then moves the maps to [`Learning::compiled`].
    pub fn set_policy(&mut self, policy: &Policy, servers: &[SocketAddr]) {
        self.learned.set_settings(Settings::from(&policy.dns));
        self.learned.retain_names(|n| !policy.ranges_for_name(n).is_empty());
        self.carried.clear();
        self.index = Index::new(&policy.grants(&Resolved::new(), servers));
        self.policy = policy.clone();
    }

    /// An answer's addresses, into the maps.
    pub fn learn(&mut self, hosts: &Hosts, name: &str, ips: &[(IpAddr, Duration)]) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let mut changed = self.learned.learn(Instant::now(), name, ips);
        for (ip, _) in ips {
            self.labels.set_domain(*ip, name);
            // Its names are known now: the entry follows them from here.
            if self.carried.remove(ip).is_some() {
                changed.insert(*ip);
            }
        }
        let result = self.refresh(hosts, changed);
        self.report_drops(name);
        result
    }

    /// Let addresses expire that their TTL and grace no longer cover and that were not used
    /// within the grace period.
    pub fn sweep(&mut self, hosts: &Hosts, in_use: impl Fn(IpAddr) -> bool) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let now = Instant::now();
        let mut changed = self.learned.expire(now, &in_use);
        self.carried.retain(|ip, (_, until)| {
            let keep = *until > now || in_use(*ip);
            if !keep {
                changed.insert(*ip);
            }
            keep
        });
        self.refresh(hosts, changed)
    }

    /// The sandbox's name in log lines from now on.
    pub fn rename(&mut self, name: &str) {
        name.clone_into(&mut self.sandbox);
    }

    /// Whether nothing learned is held (a sweep has nothing to expire).
    pub fn idle(&self) -> bool {
        self.learned.is_empty() && self.carried.is_empty()
    }

    /// Write nothing more (the sandbox is detached, or left to its pins).
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// The extra ports DNS opened for `ip`: those of the names it answered for, or those it
    /// was carried over with.
    fn ranges(&self, ip: IpAddr) -> Vec<PortRange> {
        let mut ranges: Vec<PortRange> =
            self.learned.names(ip).flat_map(|n| self.policy.ranges_for_name(n)).collect();
        if let Some((carried, _)) = self.carried.get(&ip) {
            ranges.extend(carried);
        }
        ranges
    }

    /// Bring the entries of `ips` in line with what they were learned for.
    fn refresh(&self, hosts: &Hosts, ips: BTreeSet<IpAddr>) -> Result<()> {
        for ip in ips {
            let value = self.index.host_value(ip, &self.ranges(ip)).map_err(PolicyError::from)?;
            hosts.set(ip, value)?;
        }
        Ok(())
    }

    fn report_drops(&mut self, name: &str) {
        let sandbox = self.sandbox.as_str();
        if self.learned.dropped_by_cap > self.reported_drops {
            tracing::warn!(
                sandbox,
                "{name}: DNS answers hold more addresses than dns.max_ips_per_name allows; {} dropped so far (those expiring first)",
                self.learned.dropped_by_cap
            );
            self.reported_drops = self.learned.dropped_by_cap;
        }
        if self.learned.dropped_by_quota > self.reported_quota_drops {
            tracing::warn!(
                sandbox,
                "{name}: the sandbox has learned {} addresses from DNS, its quota; {} dropped so \
                 far (those expiring first)",
                crate::learn::MAX_LEARNED,
                self.learned.dropped_by_quota
            );
            self.reported_quota_drops = self.learned.dropped_by_quota;
        }
    }
}

/// The learned entries a pinned map holds for `policy_id`, kept for `grace` from now.
pub fn carried(
    dp: &Datapath,
    policy_id: u32,
    grace: Duration,
) -> Result<BTreeMap<IpAddr, (Vec<PortRange>, Instant)>> {
    let until = Instant::now() + grace;
    let entries = dp.maps_ref().entries_of(policy_id)?;
    let ranges = |v: &AllowValue| v.ranges[..(v.count as usize).min(v.ranges.len())].to_vec();
    let v4 = entries
        .v4
        .iter()
        .filter(|((len, _), v)| *len == 32 && v.flags & ALLOW_F_LEARNED != 0)
        .map(|((_, a), v)| (IpAddr::from(*a), (ranges(v), until)));
    let v6 = entries
        .v6
        .iter()
        .filter(|((len, _), v)| *len == 128 && v.flags & ALLOW_F_LEARNED != 0)
        .map(|((_, a), v)| (IpAddr::from(*a), (ranges(v), until)));
    Ok(v4.chain(v6).collect())
}

/// The learner task of one sandbox; it ends when the sandbox goes.
pub struct Learner(JoinHandle<()>);

impl Learner {
    /// Take each answer's addresses into the maps, then let the answer go.
    pub fn spawn(mut answers: mpsc::Receiver<Learned>, learning: Shared, hosts: Hosts) -> Self {
        Self(tokio::spawn(async move {
            while let Some(l) = answers.recv().await {
                let result = lock(&learning).learn(&hosts, &l.name, &l.ips);
                // The answer may go now (also if allowing failed: holding it would not help).
                let _ = l.done.send(());
                if let Err(e) = result {
                    let sandbox = lock(&learning).sandbox.clone();
                    tracing::warn!(sandbox, "allowing what DNS answered for {}: {e}", l.name);
                }
            }
        }))
    }
}

impl Drop for Learner {
    fn drop(&mut self) {
        self.0.abort();
    }
}
