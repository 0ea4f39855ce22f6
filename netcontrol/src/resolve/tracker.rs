//! What one followed name allows, over time: pure bookkeeping driven by answers, errors and the
//! clock, so that every rule below is unit-tested without a DNS server.
//!
//! - TTLs are clamped to [min_ttl, max_ttl], per address (the lowest TTL on its CNAME chain).
//! - The name is re-resolved before its shortest TTL runs out.
//! - The set is additive: an address that drops out of the answers stays allowed until its TTL
//!   ran out plus `grace` (clients cache answers, CDNs rotate).
//! - At most `max_ips` addresses; the least recently seen go first, and drops are counted.
//! - Stale-if-error: while lookups fail, nothing expires.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::policy::DnsSettings;

/// The parts of [`DnsSettings`] the tracker uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub grace: Duration,
    pub max_ips: usize,
}

impl From<&DnsSettings> for Settings {
    fn from(d: &DnsSettings) -> Self {
        Self {
            min_ttl: d.min_ttl,
            max_ttl: d.max_ttl.max(d.min_ttl),
            grace: d.grace,
            max_ips: d.max_ips_per_name.max(1),
        }
    }
}

/// A lookup's outcome that is a real answer (not a failure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Addresses and their TTLs.
    Addresses(Vec<(IpAddr, Duration)>),
    /// NXDOMAIN: the name does not exist.
    NoSuchName { negative_ttl: Option<Duration> },
    /// The name exists but has no A or AAAA records.
    NoAddresses { negative_ttl: Option<Duration> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not looked up yet.
    Pending,
    Resolved,
    NoSuchName,
    NoAddresses,
    /// Lookups fail; the last known addresses are kept.
    Failing {
        error: String,
    },
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    valid_until: Instant,
    last_seen: Instant,
}

#[derive(Debug)]
pub struct Tracker {
    settings: Settings,
    ips: HashMap<IpAddr, Seen>,
    status: Status,
    next_refresh: Instant,
    failures: u32,
    /// Addresses dropped because of `max_ips`, in all.
    pub dropped_by_cap: u64,
}

/// The longest wait between retries of a failing name.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Tracker {
    pub fn new(settings: Settings, now: Instant) -> Self {
        Self {
            settings,
            ips: HashMap::new(),
            status: Status::Pending,
            next_refresh: now,
            failures: 0,
            dropped_by_cap: 0,
        }
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.settings.min_ttl, self.settings.max_ttl)
    }

    pub fn on_answer(&mut self, now: Instant, answer: Answer) {
        self.failures = 0;
        match answer {
            Answer::Addresses(list) if !list.is_empty() => {
                let mut shortest = self.settings.max_ttl;
                for &(ip, ttl) in &list {
                    let ttl = self.clamp(ttl);
                    shortest = shortest.min(ttl);
                    let seen =
                        self.ips.entry(ip).or_insert(Seen { valid_until: now, last_seen: now });
                    seen.valid_until = seen.valid_until.max(now + ttl);
                    seen.last_seen = now;
                }
                self.enforce_cap(&list);
                self.status = Status::Resolved;
                self.next_refresh = now + refresh_after(shortest);
            }
            Answer::Addresses(_) => self.on_answer(now, Answer::NoAddresses { negative_ttl: None }),
            Answer::NoSuchName { negative_ttl } | Answer::NoAddresses { negative_ttl } => {
                self.status = if matches!(answer, Answer::NoSuchName { .. }) {
                    Status::NoSuchName
                } else {
                    Status::NoAddresses
                };
                self.next_refresh = now + self.clamp(negative_ttl.unwrap_or(self.settings.min_ttl));
            }
        }
    }

    pub fn on_error(&mut self, now: Instant, error: String) {
        self.failures = self.failures.saturating_add(1);
        let backoff =
            Duration::from_secs(1u64 << self.failures.min(6).saturating_sub(1)).min(MAX_BACKOFF);
        self.next_refresh = now + backoff;
        self.status = Status::Failing { error };
    }

    fn failing(&self) -> bool {
        matches!(self.status, Status::Failing { .. })
    }

    /// Drop addresses beyond `max_ips`: first those absent from the latest answer, least recently
    /// seen first; then, if the answer alone is too long, its tail.
    fn enforce_cap(&mut self, answer: &[(IpAddr, Duration)]) {
        let excess = self.ips.len().saturating_sub(self.settings.max_ips);
        if excess == 0 {
            return;
        }
        let in_answer: BTreeSet<IpAddr> = answer.iter().map(|(ip, _)| *ip).collect();
        let mut old: Vec<(IpAddr, Instant)> = self
            .ips
            .iter()
            .filter(|(ip, _)| !in_answer.contains(ip))
            .map(|(ip, s)| (*ip, s.last_seen))
            .collect();
        old.sort_by_key(|&(ip, seen)| (seen, ip));
        let mut victims: Vec<IpAddr> = old.into_iter().take(excess).map(|(ip, _)| ip).collect();
        let still = excess - victims.len();
        if still > 0 {
            let mut seen = BTreeSet::new();
            let unique: Vec<IpAddr> =
                answer.iter().map(|(ip, _)| *ip).filter(|ip| seen.insert(*ip)).collect();
            victims.extend(unique.iter().rev().take(still));
        }
        for ip in &victims {
            self.ips.remove(ip);
        }
        self.dropped_by_cap += victims.len() as u64;
    }

    fn expires(&self, s: &Seen) -> Instant {
        s.valid_until + self.settings.grace
    }

    /// The addresses allowed at `now`.
    pub fn allowed(&self, now: Instant) -> BTreeSet<IpAddr> {
        let failing = self.failing();
        self.ips
            .iter()
            .filter(|(_, s)| failing || self.expires(s) > now)
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// Forget what has expired by `now` (nothing while lookups fail). True if anything went.
    pub fn expire(&mut self, now: Instant) -> bool {
        if self.failing() {
            return false;
        }
        let before = self.ips.len();
        let grace = self.settings.grace;
        self.ips.retain(|_, s| s.valid_until + grace > now);
        self.ips.len() != before
    }

    pub fn refresh_due(&self, now: Instant) -> bool {
        now >= self.next_refresh
    }

    /// When something next needs doing: a refresh, or an address expiring.
    pub fn next_wakeup(&self) -> Instant {
        let expiry =
            if self.failing() { None } else { self.ips.values().map(|s| self.expires(s)).min() };
        expiry.map_or(self.next_refresh, |e| e.min(self.next_refresh))
    }
}

/// Re-resolve a little before the TTL runs out, so that the next answer is in before the
/// current one expires.
fn refresh_after(ttl: Duration) -> Duration {
    let early = (ttl / 4).min(Duration::from_secs(1));
    (ttl - early).max(Duration::from_millis(250))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            grace: Duration::ZERO,
            max_ips: 3,
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }
    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }
    fn answer(list: &[(&str, u64)]) -> Answer {
        Answer::Addresses(list.iter().map(|&(a, t)| (ip(a), secs(t))).collect())
    }
    fn set(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|a| ip(a)).collect()
    }

    #[test]
    fn refreshes_before_the_ttl_runs_out_and_follows_changes() {
        let t0 = Instant::now();
        let mut t = Tracker::new(settings(), t0);
        assert!(t.refresh_due(t0));
        assert_eq!(t.status(), &Status::Pending);
        t.on_answer(t0, answer(&[("10.0.0.1", 4)]));
        assert_eq!(t.allowed(t0), set(&["10.0.0.1"]));
        // 4 s TTL: refresh at 3 s, before it runs out.
        assert!(!t.refresh_due(t0 + secs(2)));
        assert!(t.refresh_due(t0 + secs(3)));
        assert_eq!(t.next_wakeup(), t0 + secs(3));
        // The address changed: the new one is allowed at once, the old until its TTL.
        t.on_answer(t0 + secs(3), answer(&[("10.0.0.2", 4)]));
        assert_eq!(t.allowed(t0 + secs(3)), set(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(t.allowed(t0 + secs(4)), set(&["10.0.0.2"]));
        assert!(t.expire(t0 + secs(4)));
        assert!(!t.expire(t0 + secs(4)));
    }

    #[test]
    fn ttls_are_clamped() {
        let t0 = Instant::now();
        let mut t = Tracker::new(settings(), t0);
        t.on_answer(t0, answer(&[("10.0.0.1", 0)]));
        assert_eq!(t.allowed(t0 + Duration::from_millis(999)), set(&["10.0.0.1"]), "min_ttl 1 s");
        assert!(t.refresh_due(t0 + Duration::from_millis(750)));
        let mut t = Tracker::new(settings(), t0);
        t.on_answer(t0, answer(&[("10.0.0.1", 86_400)]));
        assert!(t.allowed(t0 + secs(61)).is_empty(), "max_ttl 60 s");
        assert!(t.refresh_due(t0 + secs(59)));
    }

    #[test]
    fn grace_keeps_rotated_addresses() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Settings { grace: secs(30), ..settings() }, t0);
        t.on_answer(t0, answer(&[("10.0.0.1", 2), ("10.0.0.2", 2)]));
        t.on_answer(t0 + secs(2), answer(&[("10.0.0.3", 2)]));
        assert_eq!(t.allowed(t0 + secs(20)), set(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
        assert!(!t.expire(t0 + secs(31)));
        assert_eq!(t.allowed(t0 + secs(33)), set(&["10.0.0.3"]));
        assert!(t.expire(t0 + secs(33)));
        assert_eq!(
            t.next_wakeup(),
            t0 + secs(2) + Duration::from_millis(1500),
            "the refresh comes first"
        );
    }

    #[test]
    fn negative_answers_age_addresses_out_and_retry_after_the_negative_ttl() {
        let t0 = Instant::now();
        let mut t = Tracker::new(settings(), t0);
        t.on_answer(t0, answer(&[("10.0.0.1", 5)]));
        t.on_answer(t0 + secs(4), Answer::NoSuchName { negative_ttl: Some(secs(10)) });
        assert_eq!(t.status(), &Status::NoSuchName);
        assert_eq!(t.allowed(t0 + secs(4)), set(&["10.0.0.1"]), "kept until its TTL");
        assert!(t.allowed(t0 + secs(5)).is_empty());
        assert!(!t.refresh_due(t0 + secs(13)) && t.refresh_due(t0 + secs(14)));
        t.on_answer(t0 + secs(14), Answer::NoAddresses { negative_ttl: None });
        assert_eq!(t.status(), &Status::NoAddresses);
        assert!(t.refresh_due(t0 + secs(15)), "min_ttl when the answer carries no SOA");
        t.on_answer(t0 + secs(15), Answer::Addresses(vec![]));
        assert_eq!(t.status(), &Status::NoAddresses);
    }

    #[test]
    fn stale_if_error_with_backoff() {
        let t0 = Instant::now();
        let mut t = Tracker::new(settings(), t0);
        t.on_answer(t0, answer(&[("10.0.0.1", 2)]));
        t.on_error(t0 + secs(2), "timed out".into());
        assert_eq!(t.status(), &Status::Failing { error: "timed out".into() });
        assert_eq!(t.allowed(t0 + secs(600)), set(&["10.0.0.1"]), "kept while failing");
        assert!(!t.expire(t0 + secs(600)));
        assert!(t.refresh_due(t0 + secs(3)), "first retry after 1 s");
        t.on_error(t0 + secs(3), "timed out".into());
        assert!(!t.refresh_due(t0 + secs(4)) && t.refresh_due(t0 + secs(5)), "then 2 s");
        for _ in 0..10 {
            t.on_error(t0 + secs(5), "timed out".into());
        }
        assert!(t.refresh_due(t0 + secs(35)), "capped at 30 s");
        // Recovery: normal aging resumes.
        t.on_answer(t0 + secs(40), answer(&[("10.0.0.2", 2)]));
        assert_eq!(t.allowed(t0 + secs(40)), set(&["10.0.0.2"]));
    }

    #[test]
    fn the_cap_drops_least_recently_seen_and_counts() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Settings { grace: secs(300), ..settings() }, t0);
        t.on_answer(t0, answer(&[("10.0.0.1", 2), ("10.0.0.2", 2)]));
        t.on_answer(t0 + secs(1), answer(&[("10.0.0.2", 2), ("10.0.0.3", 2)]));
        t.on_answer(t0 + secs(2), answer(&[("10.0.0.4", 2)]));
        assert_eq!(t.allowed(t0 + secs(2)), set(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]));
        assert_eq!(t.dropped_by_cap, 1);
        // An answer longer than the cap keeps its first addresses.
        t.on_answer(
            t0 + secs(3),
            answer(&[("10.0.1.1", 2), ("10.0.1.2", 2), ("10.0.1.3", 2), ("10.0.1.4", 2)]),
        );
        assert_eq!(t.allowed(t0 + secs(3)), set(&["10.0.1.1", "10.0.1.2", "10.0.1.3"]));
        assert_eq!(t.dropped_by_cap, 5);
    }
}
