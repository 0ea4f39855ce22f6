//! Addresses learned from the sandbox's own DNS answers (proxy mode): per address, the names it
//! answered for and until when. Pure bookkeeping; the sandbox turns changes into map entries.
//!
//! - An address is kept for its TTL (clamped to [min_ttl, max_ttl]) plus `grace`.
//! - An address still connected to when that runs out is kept another `grace` (the kernel
//!   timestamps connects to learned addresses).
//! - At most `max_ips` addresses per name: the ones expiring first go, and are counted.
//! - At most `MAX_LEARNED` addresses per sandbox, whatever the names: the daemon's allow tries
//!   are shared, and one sandbox whose wildcard answers ever more addresses must not fill
//!   them for all. Beyond it, its own addresses expiring first go, and are counted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::resolve::Settings;

/// Addresses one sandbox may have learned at once (under 1% of the shared IPv4 trie).
pub const MAX_LEARNED: usize = 8192;

#[derive(Debug)]
pub struct LearnedSet {
    settings: Settings,
    /// Address -> name -> valid until (TTL; `grace` comes on top).
    by_ip: BTreeMap<IpAddr, BTreeMap<String, Instant>>,
    by_name: HashMap<String, BTreeSet<IpAddr>>,
    /// Addresses dropped because of `max_ips`, in all.
    pub dropped_by_cap: u64,
    /// Addresses dropped because of the sandbox's quota (`quota`), in all.
    pub dropped_by_quota: u64,
    quota: usize,
}

impl LearnedSet {
    pub fn new(settings: Settings) -> Self {
        Self::with_quota(settings, MAX_LEARNED)
    }

    pub fn with_quota(settings: Settings, quota: usize) -> Self {
        Self {
            settings,
            by_ip: BTreeMap::new(),
            by_name: HashMap::new(),
            dropped_by_cap: 0,
            dropped_by_quota: 0,
            quota: quota.max(1),
        }
    }

    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// Take an answer for `name`. Returns the addresses whose names changed.
    pub fn learn(
        &mut self,
        now: Instant,
        name: &str,
        ips: &[(IpAddr, Duration)],
    ) -> BTreeSet<IpAddr> {
        let mut changed = BTreeSet::new();
        for &(ip, ttl) in ips {
            let until = now + ttl.clamp(self.settings.min_ttl, self.settings.max_ttl);
            let names = self.by_ip.entry(ip).or_default();
            let slot = names.entry(name.to_owned()).or_insert(until);
            if *slot < until {
                *slot = until;
            }
            if self.by_name.entry(name.to_owned()).or_default().insert(ip) {
                changed.insert(ip);
            }
        }
        changed.extend(self.enforce_cap(name, ips));
        changed.extend(self.enforce_quota(ips));
        changed
    }

    /// Keep at most `quota` addresses in all: drop those expiring first (whole addresses,
    /// every name of them), never one of the answer just taken unless it alone is too long.
    fn enforce_quota(&mut self, answer: &[(IpAddr, Duration)]) -> BTreeSet<IpAddr> {
        let excess = self.by_ip.len().saturating_sub(self.quota);
        if excess == 0 {
            return BTreeSet::new();
        }
        let fresh: BTreeSet<IpAddr> = answer.iter().map(|(ip, _)| *ip).collect();
        let latest = |names: &BTreeMap<String, Instant>| names.values().max().copied();
        let mut old: Vec<(Option<Instant>, bool, IpAddr)> =
            self.by_ip.iter().map(|(ip, names)| (latest(names), fresh.contains(ip), *ip)).collect();
        // Not fresh before fresh, then expiring first.
        old.sort_by_key(|(until, fresh, _)| (*fresh, *until));
        let victims: Vec<IpAddr> = old.into_iter().take(excess).map(|(_, _, ip)| ip).collect();
        for ip in &victims {
            let names: Vec<String> =
                self.by_ip.get(ip).map(|n| n.keys().cloned().collect()).unwrap_or_default();
            for name in names {
                self.forget(*ip, &name);
            }
        }
        self.dropped_by_quota += victims.len() as u64;
        victims.into_iter().collect()
    }

    /// Keep at most `max_ips` addresses for `name`: drop those expiring first, never one of
    /// the answer just taken unless the answer alone is too long.
    fn enforce_cap(&mut self, name: &str, answer: &[(IpAddr, Duration)]) -> BTreeSet<IpAddr> {
        let Some(ips) = self.by_name.get(name) else { return BTreeSet::new() };
        let excess = ips.len().saturating_sub(self.settings.max_ips);
        if excess == 0 {
            return BTreeSet::new();
        }
        let fresh: BTreeSet<IpAddr> = answer.iter().map(|(ip, _)| *ip).collect();
        let mut old: Vec<(Instant, IpAddr)> = ips
            .iter()
            .filter(|ip| !fresh.contains(ip))
            .map(|ip| (self.by_ip[ip][name], *ip))
            .collect();
        old.sort();
        let mut victims: Vec<IpAddr> = old.into_iter().take(excess).map(|(_, ip)| ip).collect();
        if victims.len() < excess {
            let mut seen = BTreeSet::new();
            let answer_order: Vec<IpAddr> =
                answer.iter().map(|(ip, _)| *ip).filter(|ip| seen.insert(*ip)).collect();
            victims.extend(answer_order.iter().rev().take(excess - victims.len()));
        }
        for ip in &victims {
            self.forget(*ip, name);
        }
        self.dropped_by_cap += victims.len() as u64;
        victims.into_iter().collect()
    }

    fn forget(&mut self, ip: IpAddr, name: &str) {
        if let Some(names) = self.by_ip.get_mut(&ip) {
            names.remove(name);
            if names.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
        if let Some(ips) = self.by_name.get_mut(name) {
            ips.remove(&ip);
            if ips.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    /// Forget what ran out by `now` (TTL + grace), except addresses `in_use` says are still
    /// connected to: those get another `grace`. Returns the addresses whose names changed.
    pub fn expire(&mut self, now: Instant, in_use: impl Fn(IpAddr) -> bool) -> BTreeSet<IpAddr> {
        let grace = self.settings.grace;
        let mut gone = Vec::new();
        for (ip, names) in &mut self.by_ip {
            let mut used = None;
            for (name, until) in names.iter_mut() {
                if *until + grace <= now {
                    if *used.get_or_insert_with(|| in_use(*ip)) {
                        *until = now;
                    } else {
                        gone.push((*ip, name.clone()));
                    }
                }
            }
        }
        let changed = gone.iter().map(|(ip, _)| *ip).collect();
        for (ip, name) in gone {
            self.forget(ip, &name);
        }
        changed
    }

    /// Forget the names `keep` rejects (a reload dropped their rules). Returns the addresses
    /// whose names changed.
    pub fn retain_names(&mut self, keep: impl Fn(&str) -> bool) -> BTreeSet<IpAddr> {
        let gone: Vec<String> = self.by_name.keys().filter(|n| !keep(n)).cloned().collect();
        let mut changed = BTreeSet::new();
        for name in gone {
            for ip in self.by_name.get(&name).cloned().unwrap_or_default() {
                self.forget(ip, &name);
                changed.insert(ip);
            }
        }
        changed
    }

    /// The names an address answered for.
    pub fn names(&self, ip: IpAddr) -> impl Iterator<Item = &str> {
        self.by_ip.get(&ip).into_iter().flat_map(|n| n.keys().map(String::as_str))
    }

    /// Every learned address.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.by_ip.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(grace: u64, max_ips: usize) -> Settings {
        Settings {
            min_ttl: Duration::from_secs(2),
            max_ttl: Duration::from_secs(60),
            grace: Duration::from_secs(grace),
            max_ips,
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }
    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_sandbox_learns_at_most_its_quota_whatever_the_names() {
        let mut l = LearnedSet::with_quota(settings(0, 10), 3);
        let now = Instant::now();
        l.learn(now, "a.example.com", &[(ip("192.0.2.1"), secs(10))]);
        l.learn(now, "b.example.com", &[(ip("192.0.2.2"), secs(20))]);
        l.learn(now, "c.example.com", &[(ip("192.0.2.3"), secs(30))]);
        assert_eq!(l.len(), 3);
        let changed = l.learn(now, "d.example.com", &[(ip("192.0.2.4"), secs(5))]);
        assert_eq!(l.len(), 3, "the quota holds");
        assert!(changed.contains(&ip("192.0.2.1")), "the one expiring first went: {changed:?}");
        assert!(l.names(ip("192.0.2.4")).next().is_some(), "the fresh answer is kept");
        assert_eq!(l.dropped_by_quota, 1);
        // An answer longer than the quota keeps what fits.
        let long: Vec<(IpAddr, Duration)> =
            (10..15).map(|i| (ip(&format!("198.51.100.{i}")), secs(60))).collect();
        l.learn(now, "e.example.com", &long);
        assert_eq!(l.len(), 3);
        assert_eq!(l.dropped_by_quota, 1 + 5);
    }

    #[test]
    fn kept_for_the_clamped_ttl_plus_grace() {
        let t0 = Instant::now();
        let mut l = LearnedSet::new(settings(10, 100));
        let changed =
            l.learn(t0, "a.test", &[(ip("127.0.0.20"), secs(0)), (ip("127.0.0.21"), secs(600))]);
        assert_eq!(changed.len(), 2);
        assert!(l.learn(t0, "a.test", &[(ip("127.0.0.20"), secs(1))]).is_empty(), "nothing new");
        // 0 s TTL -> min_ttl 2 s, + 10 s grace.
        assert!(l.expire(t0 + secs(11), |_| false).is_empty());
        assert_eq!(l.expire(t0 + secs(12), |_| false), [ip("127.0.0.20")].into());
        // 600 s TTL -> max_ttl 60 s.
        assert_eq!(l.expire(t0 + secs(70), |_| false), [ip("127.0.0.21")].into());
        assert!(l.is_empty());
    }

    #[test]
    fn addresses_in_use_are_kept() {
        let t0 = Instant::now();
        let mut l = LearnedSet::new(settings(5, 100));
        l.learn(t0, "a.test", &[(ip("127.0.0.20"), secs(2))]);
        assert!(l.expire(t0 + secs(7), |_| true).is_empty(), "still connected to: kept");
        assert!(l.expire(t0 + secs(11), |_| false).is_empty(), "another grace from then");
        assert_eq!(l.expire(t0 + secs(12), |_| false).len(), 1);
    }

    #[test]
    fn shared_addresses_keep_every_name() {
        let t0 = Instant::now();
        let mut l = LearnedSet::new(settings(0, 100));
        l.learn(t0, "a.test", &[(ip("127.0.0.20"), secs(2))]);
        l.learn(t0, "b.test", &[(ip("127.0.0.20"), secs(30))]);
        assert_eq!(l.names(ip("127.0.0.20")).collect::<Vec<_>>(), ["a.test", "b.test"]);
        assert_eq!(l.expire(t0 + secs(3), |_| false), [ip("127.0.0.20")].into());
        assert_eq!(l.names(ip("127.0.0.20")).collect::<Vec<_>>(), ["b.test"]);
        assert_eq!(l.retain_names(|n| n != "b.test"), [ip("127.0.0.20")].into());
        assert!(l.is_empty());
    }

    #[test]
    fn the_per_name_cap_drops_what_expires_first_and_counts() {
        let t0 = Instant::now();
        let mut l = LearnedSet::new(settings(0, 2));
        l.learn(t0, "cdn.test", &[(ip("127.0.0.20"), secs(10)), (ip("127.0.0.21"), secs(20))]);
        let changed = l.learn(t0, "cdn.test", &[(ip("127.0.0.22"), secs(30))]);
        assert!(changed.contains(&ip("127.0.0.20")) && changed.contains(&ip("127.0.0.22")));
        assert_eq!(l.ips().collect::<Vec<_>>(), [ip("127.0.0.21"), ip("127.0.0.22")]);
        assert_eq!(l.dropped_by_cap, 1);
        // An answer longer than the cap keeps its first addresses.
        let mut l = LearnedSet::new(settings(0, 2));
        l.learn(
            t0,
            "cdn.test",
            &[(ip("127.0.0.1"), secs(5)), (ip("127.0.0.2"), secs(5)), (ip("127.0.0.3"), secs(5))],
        );
        assert_eq!(l.ips().collect::<Vec<_>>(), [ip("127.0.0.1"), ip("127.0.0.2")]);
        assert_eq!(l.dropped_by_cap, 1);
    }
}
