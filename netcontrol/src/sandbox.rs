//! A sandbox under this process's control: its policy (reloadable), how its domain rules become
//! addresses, and the [`Enforcer`] that holds the kernel side. `run` and `attach` drive it.
//!
//! Domain rules work in one of two ways (`dns.mode`):
//! - proxy (DNS-aware, the default): the sandbox's DNS is redirected to a [`Proxy`], which
//!   answers allowed names only; the addresses of its answers are allowed before the answer is
//!   released ([`LearnedSet`] keeps them as long as their TTL, grace, and use say);
//! - resolver: netcontrol resolves the names itself and follows them ([`Follower`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use netcontrol_common::abi::SANDBOX_F_DNS_REDIRECT;
use tokio::sync::mpsc;

use crate::{
    cgroup,
    dnsproxy::{self, Links, Proxy},
    enforcer::{Counts, Enforcer, Options},
    error::{Error, Result},
    events::{Labels, Sink},
    learn::LearnedSet,
    policy::{Compiled, DnsMode, Policy, Resolved, compile::Index},
    resolve::{Follower, NameUpdate, Settings, Status, system_servers},
};

/// Where the sandbox's processes live, network-wise (where the DNS proxy must listen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsChoice {
    /// netcontrol's own namespace (`run`).
    Own,
    /// That of the processes already in the cgroup (`attach`: a container has its own).
    OfProcesses,
}

pub struct Sandbox {
    policy: Policy,
    servers: Vec<SocketAddr>,
    dns: Dns,
    labels: Labels,
    enforcer: Enforcer,
}

enum Dns {
    Resolver(Follower),
    Proxy(Box<ProxyMode>),
}

struct ProxyMode {
    proxy: Proxy,
    learn_rx: mpsc::Receiver<dnsproxy::Learned>,
    learned: LearnedSet,
    /// The policy's static grants, for computing learned addresses' entries.
    index: Index,
    sweep: tokio::time::Interval,
    reported_drops: u64,
}

/// Something happened to DNS that needs applying.
enum Change {
    Names(Vec<NameUpdate>),
    Learned(dnsproxy::Learned),
    Sweep,
}

/// Answers that may wait at once for their addresses to be allowed.
const LEARN_QUEUE: usize = 1024;

impl Sandbox {
    /// Enforce `policy` on `cgroup`. Domain names are ready before anything is attached: in
    /// resolver mode each has had its first answer; in proxy mode the proxy is listening, in
    /// the network namespace `ns` says.
    pub async fn start(
        cgroup_path: &Path,
        policy: Policy,
        sink: Sink,
        opts: &Options,
        ns: NsChoice,
    ) -> Result<Self> {
        // Everything that can be checked without the kernel is checked first.
        policy.compile(&Default::default(), &[])?;
        crate::privileges::check()?;
        let cgroup = cgroup::validate(cgroup_path)?;
        let sandbox_id = cgroup::id(&cgroup)?;
        let ns = match ns {
            NsChoice::Own => None,
            NsChoice::OfProcesses => crate::netns::of_cgroup(&cgroup).map_err(|e| {
                Error::io(format!("finding the network namespace of {}", cgroup.display()), e)
            })?,
        };
        let servers = dns_servers(&policy)?;
        let labels = Labels::default();
        let mut staged = Enforcer::load(opts, sink, labels.clone())?;
        let (dns, compiled) = match policy.dns.mode {
            DnsMode::Resolver => {
                report_wildcards(&policy);
                let follower = follow(&policy, &servers, &labels).await;
                let compiled = policy.compile(&follower.resolved, &servers)?;
                (Dns::Resolver(follower), compiled)
            }
            DnsMode::Proxy => {
                let (learn, learn_rx) = mpsc::channel(LEARN_QUEUE);
                let links = Links {
                    learn,
                    events: staged.injector(),
                    labels: labels.clone(),
                    sandbox_id,
                    origins: staged
                        .take_origins()
                        .ok_or_else(|| Error::MissingMap("DNS_ORIGINS"))?,
                };
                let proxy = Proxy::start(
                    ns.as_ref(),
                    proxy_config(&policy, &servers),
                    rules(&policy),
                    links,
                )?;
                let index = Index::new(&policy.grants(&Resolved::new(), &servers));
                let mut sweep = tokio::time::interval(Duration::from_secs(1));
                sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mode = ProxyMode {
                    learned: LearnedSet::new(Settings::from(&policy.dns)),
                    proxy,
                    learn_rx,
                    index,
                    sweep,
                    reported_drops: 0,
                };
                let compiled = mode.compiled(&policy)?;
                (Dns::Proxy(Box::new(mode)), compiled)
            }
        };
        let enforcer = staged.attach(&cgroup, compiled, opts)?;
        Ok(Self { policy, servers, dns, labels, enforcer })
    }

    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// DNS queries the proxy refused so far (proxy mode).
    pub fn dns_refused(&self) -> u64 {
        match &self.dns {
            Dns::Proxy(p) => p.proxy.stats.refused(),
            Dns::Resolver(_) => 0,
        }
    }

    /// Wait for DNS to change what the policy allows (cancel-safe), then apply it.
    pub async fn follow_dns(&mut self) -> Result<()> {
        let change = match &mut self.dns {
            Dns::Resolver(f) => {
                let updates = f.changed().await;
                if updates.is_empty() {
                    return std::future::pending().await;
                }
                Change::Names(updates)
            }
            Dns::Proxy(p) => tokio::select! {
                Some(l) = p.learn_rx.recv() => Change::Learned(l),
                _ = p.sweep.tick() => Change::Sweep,
            },
        };
        self.apply(change)
    }

    fn apply(&mut self, change: Change) -> Result<()> {
        match (change, &mut self.dns) {
            (Change::Names(updates), Dns::Resolver(f)) => {
                learn_labels(&self.labels, &updates);
                report(&updates);
                let compiled = self.policy.compile(&f.resolved, &self.servers)?;
                self.enforcer.update(compiled)
            }
            (Change::Learned(l), Dns::Proxy(p)) => {
                let changed = p.learned.learn(Instant::now(), &l.name, &l.ips);
                for (ip, _) in &l.ips {
                    self.labels.set_domain(*ip, &l.name);
                }
                let result = p.refresh(&mut self.enforcer, &self.policy, changed);
                // The answer may go now (also if allowing failed: holding it would not help).
                let _ = l.done.send(());
                p.report_drops(&l.name);
                result
            }
            (Change::Sweep, Dns::Proxy(p)) => {
                let grace = self.policy.dns.grace;
                let now_ns = monotonic_ns();
                let enforcer = &self.enforcer;
                let changed = p.learned.expire(Instant::now(), |ip| {
                    enforcer
                        .last_use(ip)
                        .is_some_and(|t| u128::from(now_ns.saturating_sub(t)) < grace.as_nanos())
                });
                p.refresh(&mut self.enforcer, &self.policy, changed)
            }
            _ => Ok(()),
        }
    }

    /// Switch to `policy`. Validated first; in resolver mode its new names are resolved before
    /// the maps change. The maps then move to it additions first, removals last.
    pub async fn reload(&mut self, policy: Policy) -> Result<()> {
        policy.compile(&Default::default(), &[])?;
        if policy.dns.mode != self.policy.dns.mode {
            return Err(Error::Reload(format!(
                "dns.mode changed from {} to {}: that takes a restart",
                self.policy.dns.mode.name(),
                policy.dns.mode.name()
            )));
        }
        let servers = dns_servers(&policy)?;
        let compiled = match &mut self.dns {
            Dns::Resolver(f) => {
                report_wildcards(&policy);
                if servers != self.servers || policy.dns != self.policy.dns {
                    // Other servers or settings: follow everything anew, with the new ones.
                    *f = follow(&policy, &servers, &self.labels).await;
                } else {
                    let new: BTreeSet<String> = policy
                        .names()
                        .into_iter()
                        .filter(|n| !f.resolved.contains_key(n))
                        .collect();
                    f.add(&new);
                    let first = f.settle(&new, Follower::settle_deadline(&policy.dns)).await;
                    learn_labels(&self.labels, &first);
                    report(&first);
                    report_silent(f, &new);
                }
                policy.compile(&f.resolved, &servers)?
            }
            Dns::Proxy(p) => {
                p.proxy.set(proxy_config(&policy, &servers), rules(&policy));
                p.learned.set_settings(Settings::from(&policy.dns));
                p.learned.retain_names(|n| !policy.ranges_for_name(n).is_empty());
                p.index = Index::new(&policy.grants(&Resolved::new(), &servers));
                p.compiled(&policy)?
            }
        };
        self.enforcer.update(compiled)?;
        if let Dns::Resolver(f) = &mut self.dns {
            f.retain(&policy.names());
        }
        self.policy = policy;
        self.servers = servers;
        Ok(())
    }

    /// Detach, deliver every queued event, and return the final counts and the sink.
    pub async fn stop(self) -> Result<(Counts, Sink)> {
        let dns_refused = self.dns_refused();
        let (mut counts, sink) = self.enforcer.stop().await?;
        counts.dns_refused = dns_refused;
        Ok((counts, sink))
    }
}

impl ProxyMode {
    /// Everything the maps should hold: the static entries and the learned addresses.
    fn compiled(&self, policy: &Policy) -> Result<Compiled> {
        let learned: BTreeMap<IpAddr, Vec<_>> = self
            .learned
            .ips()
            .map(|ip| {
                (ip, self.learned.names(ip).flat_map(|n| policy.ranges_for_name(n)).collect())
            })
            .collect();
        Ok(Compiled {
            flags: policy.sandbox_flags() | SANDBOX_F_DNS_REDIRECT,
            dns_port4: self.proxy.port4,
            dns_port6: self.proxy.port6,
            entries: self.index.entries_with(&learned).map_err(crate::policy::PolicyError::from)?,
        })
    }

    /// Bring the entries of `ips` in line with what they were learned for.
    fn refresh(
        &self,
        enforcer: &mut Enforcer,
        policy: &Policy,
        ips: BTreeSet<IpAddr>,
    ) -> Result<()> {
        for ip in ips {
            let ranges: Vec<_> =
                self.learned.names(ip).flat_map(|n| policy.ranges_for_name(n)).collect();
            let value =
                self.index.host_value(ip, &ranges).map_err(crate::policy::PolicyError::from)?;
            enforcer.set_host(ip, value)?;
        }
        Ok(())
    }

    fn report_drops(&mut self, name: &str) {
        if self.learned.dropped_by_cap > self.reported_drops {
            tracing::warn!(
                "{name}: DNS answers hold more addresses than dns.max_ips_per_name allows; {} dropped so far (those expiring first)",
                self.learned.dropped_by_cap
            );
            self.reported_drops = self.learned.dropped_by_cap;
        }
    }
}

/// CLOCK_MONOTONIC in ns, the kernel's `bpf_ktime_get_ns` clock.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn proxy_config(policy: &Policy, servers: &[SocketAddr]) -> dnsproxy::Config {
    dnsproxy::Config {
        upstream: servers.to_vec(),
        timeout: policy.dns.timeout,
        refuse_with: policy.dns.refuse_with,
        max_queries_per_second: policy.dns.max_queries_per_second,
        max_name_length: policy.dns.max_name_length,
    }
}

fn rules(policy: &Policy) -> dnsproxy::Rules {
    dnsproxy::Rules {
        patterns: policy.patterns(),
        audit: policy.mode == crate::policy::Mode::Audit,
    }
}

/// Resolve the policy's names (resolver mode), each to its first answer.
async fn follow(policy: &Policy, servers: &[SocketAddr], labels: &Labels) -> Follower {
    let mut follower = Follower::new(servers, &policy.dns);
    let names = policy.names();
    follower.add(&names);
    let first = follower.settle(&names, Follower::settle_deadline(&policy.dns)).await;
    learn_labels(labels, &first);
    report(&first);
    report_silent(&follower, &names);
    follower
}

/// The servers the policy resolves through: its own, or /etc/resolv.conf's.
fn dns_servers(policy: &Policy) -> Result<Vec<SocketAddr>> {
    match &policy.dns.servers {
        Some(s) => Ok(s.clone()),
        None if policy.uses_dns() => {
            system_servers().map_err(|e| Error::io("finding DNS servers", std::io::Error::other(e)))
        }
        // Proxy mode forwards nothing without domain rules; an empty list is fine.
        None => Ok(system_servers().unwrap_or_default()),
    }
}

/// Remember which name each address belongs to, for events.
fn learn_labels(labels: &Labels, updates: &[NameUpdate]) {
    for u in updates {
        for ip in &u.ips {
            labels.set_domain(*ip, &u.name);
        }
    }
}

/// Say what changed about names, as a user needs to hear it.
fn report(updates: &[NameUpdate]) {
    for u in updates {
        let n = u.ips.len();
        match &u.status {
            Status::Pending => {}
            Status::Resolved => tracing::info!("{}: {n} address{} allowed", u.name, plural(n)),
            Status::NoSuchName => tracing::warn!(
                "{}: no such domain (NXDOMAIN); {}",
                u.name,
                keeping(n, "nothing is allowed for it")
            ),
            Status::NoAddresses => tracing::warn!(
                "{}: the name has no A or AAAA records; {}",
                u.name,
                keeping(n, "nothing is allowed for it")
            ),
            Status::Failing { error } => tracing::warn!(
                "{}: DNS lookup failed ({error}); {}",
                u.name,
                keeping(n, "nothing is allowed for it yet")
            ),
        }
        if u.dropped_by_cap > 0 {
            tracing::warn!(
                "{}: its answers hold more addresses than dns.max_ips_per_name allows; {} dropped so far (least recently seen first)",
                u.name,
                u.dropped_by_cap
            );
        }
    }
}

fn keeping(n: usize, otherwise: &str) -> String {
    if n == 0 {
        format!("{otherwise}; retrying")
    } else {
        format!("keeping its {n} last known address{}", plural(n))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "es" }
}

/// Names that got no answer at all within the start-up deadline.
fn report_silent(follower: &Follower, names: &BTreeSet<String>) {
    for n in names.iter().filter(|n| !follower.statuses.contains_key(*n)) {
        tracing::warn!("{n}: no answer from DNS yet; nothing is allowed for it until one comes");
    }
}

fn report_wildcards(policy: &Policy) {
    for w in policy.wildcards() {
        tracing::warn!(
            "{w}: wildcard rules cannot be resolved in advance, so in resolver mode they allow nothing; \
             use dns.mode: proxy (the default) for them"
        );
    }
}
