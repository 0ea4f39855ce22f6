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
    path::PathBuf,
    time::{Duration, Instant},
};

use netcontrol_common::abi::{
    ALLOW_F_LEARNED, AllowValue, PortRange, SANDBOX_F_DNS_REDIRECT, SANDBOX_F_HOST_NETNS,
};
use tokio::sync::mpsc;

use crate::{
    cgroup,
    datapath::{Counts, Datapath},
    dnsproxy::{self, Links, Proxy},
    enforcer::{Enforcer, LinkPins},
    error::{Error, Result},
    events::Identity,
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

/// What to enforce where.
#[derive(Debug)]
pub struct Spec {
    /// How events, metrics and status name the sandbox.
    pub name: String,
    pub cgroup: PathBuf,
    pub policy: Policy,
    /// The sandbox's rules in the shared allow tries (unique among the datapath's sandboxes).
    pub policy_id: u32,
    pub link_pins: LinkPins,
    pub ns: NsChoice,
    /// The container or pod it is, for events.
    pub identity: Identity,
}

pub struct Sandbox {
    name: String,
    policy: Policy,
    servers: Vec<SocketAddr>,
    dns: Dns,
    enforcer: Enforcer,
    /// The cgroup had no process when it was attached (a pod before its first container):
    /// the network namespace its DNS proxy belongs in is not known yet.
    netns_pending: bool,
    /// Its processes share netcontrol's network namespace (the host's, for `run`): it may
    /// listen only as its listen rules say, and may not reach the host's abstract unix
    /// sockets. Assumed until a pending namespace is known.
    host_netns: bool,
    /// Its DNS proxy could not be placed in its network namespace (joining it was refused):
    /// the sandbox is enforced, its DNS fails (closed), and placing is tried again.
    unplaced: Option<Unplaced>,
}

/// Why the DNS proxy is not where it belongs, and when to try again.
struct Unplaced {
    why: String,
    next_try: Instant,
    delay: Duration,
}

/// Placing a DNS proxy again: first after this, doubling up to `PLACE_MAX_DELAY`.
const PLACE_FIRST_DELAY: Duration = Duration::from_secs(1);
const PLACE_MAX_DELAY: Duration = Duration::from_secs(60);

enum Dns {
    Resolver(Follower),
    Proxy(Box<ProxyMode>),
}

struct ProxyMode {
    proxy: Proxy,
    learn_rx: mpsc::Receiver<dnsproxy::Learned>,
    /// For a proxy started again in another namespace.
    learn_tx: mpsc::Sender<dnsproxy::Learned>,
    learned: LearnedSet,
    /// Learned entries found in pinned maps (a restarted daemon): their names are not known,
    /// so they keep their ports until the grace period runs out unused, or a reload.
    carried: BTreeMap<IpAddr, (Vec<PortRange>, Instant)>,
    /// The policy's static grants, for computing learned addresses' entries.
    index: Index,
    sweep: tokio::time::Interval,
    /// The owner sweeps (`Sandbox::sweep`) instead of the sandbox's own interval: a daemon
    /// of thousands of sandboxes sweeps them all from one tick rather than waking on each.
    external_sweep: bool,
    reported_drops: u64,
    reported_quota_drops: u64,
}

/// Something happened to DNS that needs applying ([`Sandbox::next_change`]).
pub enum Change {
    Names(Vec<NameUpdate>),
    Learned(dnsproxy::Learned),
    Sweep,
}

/// Answers that may wait at once for their addresses to be allowed.
const LEARN_QUEUE: usize = 1024;

/// How often the host's own addresses are read again (rebinding protection refuses them).
const HOST_ADDRESSES_EVERY: Duration = Duration::from_secs(10);

impl Sandbox {
    /// Enforce `spec.policy` on `spec.cgroup`. Domain names are ready before anything is
    /// attached: in resolver mode each has had its first answer; in proxy mode the proxy is
    /// listening, in the network namespace `spec.ns` says.
    pub async fn start(dp: &mut Datapath, spec: Spec) -> Result<Self> {
        let Spec { name, cgroup: cgroup_path, policy, policy_id, link_pins, ns, identity } = spec;
        // Everything that can be checked without the kernel is checked first.
        policy.compile(&Default::default(), &[])?;
        let cgroup = cgroup::validate(&cgroup_path)?;
        let sandbox_id = cgroup::id(&cgroup)?;
        let netns_pending = ns == NsChoice::OfProcesses && cgroup::first_pid(&cgroup).is_none();
        let (ns, host_netns) = match ns {
            NsChoice::Own => (None, true),
            NsChoice::OfProcesses => {
                // No process yet (no namespace either): the host's rules until one shows
                // where the sandbox lives.
                let p = placement(&cgroup)?;
                let host = p.host || p.ns.is_none();
                (p.ns, host)
            }
        };
        let servers = dns_servers(&policy)?;
        let mut unplaced = None;
        dp.labels().set_sandbox(sandbox_id, name.clone());
        dp.labels().set_identity(sandbox_id, identity);
        let (dns, compiled) = match policy.dns.mode {
            DnsMode::Resolver => {
                report_wildcards(&policy);
                let follower = follow(&name, &policy, &servers, dp).await;
                let compiled = policy.compile(&follower.resolved, &servers)?;
                (Dns::Resolver(follower), compiled)
            }
            DnsMode::Proxy => {
                let (learn_tx, learn_rx) = mpsc::channel(LEARN_QUEUE);
                let proxy = match start_proxy(
                    dp,
                    ns.as_ref(),
                    &policy,
                    &servers,
                    sandbox_id,
                    learn_tx.clone(),
                ) {
                    Ok(p) => p,
                    // Joining the namespace was refused: enforce anyway (its DNS finds no
                    // proxy there and fails, closed) and place the proxy later.
                    Err(e) if ns.is_some() => {
                        tracing::error!(
                            sandbox = name.as_str(),
                            "its DNS proxy cannot be placed in its network namespace (trying \
                             again): {e}; until then it is enforced and its DNS fails"
                        );
                        unplaced = Some(Unplaced {
                            why: e.to_string(),
                            next_try: Instant::now() + PLACE_FIRST_DELAY,
                            delay: PLACE_FIRST_DELAY,
                        });
                        start_proxy(dp, None, &policy, &servers, sandbox_id, learn_tx.clone())?
                    }
                    Err(e) => return Err(e),
                };
                let index = Index::new(&policy.grants(&Resolved::new(), &servers));
                let mut sweep = tokio::time::interval(Duration::from_secs(1));
                sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let carried = match link_pins {
                    LinkPins::Daemon(_) => carried(dp, policy_id, policy.dns.grace)?,
                    _ => BTreeMap::new(),
                };
                let mode = ProxyMode {
                    learned: LearnedSet::new(Settings::from(&policy.dns)),
                    carried,
                    proxy,
                    learn_rx,
                    learn_tx,
                    index,
                    sweep,
                    external_sweep: false,
                    reported_drops: 0,
                    reported_quota_drops: 0,
                };
                let compiled = mode.compiled(&policy)?;
                (Dns::Proxy(Box::new(mode)), compiled)
            }
        };
        let compiled = in_netns(compiled, host_netns);
        let enforcer = Enforcer::attach(dp, &cgroup, sandbox_id, policy_id, compiled, &link_pins)?;
        let netns_pending = netns_pending || unplaced.is_some();
        Ok(Self { name, policy, servers, dns, enforcer, netns_pending, host_netns, unplaced })
    }

    /// What the maps should hold now, whichever the DNS mode.
    fn compile(&self) -> Result<Compiled> {
        let c = match &self.dns {
            Dns::Resolver(f) => self.policy.compile(&f.resolved, &self.servers)?,
            Dns::Proxy(p) => p.compiled(&self.policy)?,
        };
        Ok(in_netns(c, self.host_netns))
    }

    /// Whether the sandbox waits for its first process to learn its network namespace, or
    /// for its DNS proxy to be placed there.
    pub fn netns_pending(&self) -> bool {
        self.netns_pending
    }

    /// What keeps it from enforcing its policy as written (its DNS proxy is not placed).
    pub fn problem(&self) -> Option<String> {
        self.unplaced.as_ref().map(|u| format!("its DNS proxy is not placed: {}", u.why))
    }

    /// Once a process is in the cgroup: move the DNS proxy into its network namespace (until
    /// then the sandbox's DNS finds nothing listening and fails, closed). Returns whether the
    /// namespace is settled now.
    pub fn settle_netns(&mut self, dp: &mut Datapath) -> Result<bool> {
        if !self.netns_pending {
            return Ok(true);
        }
        if cgroup::first_pid(self.enforcer.cgroup()).is_none()
            || self.unplaced.as_ref().is_some_and(|u| Instant::now() < u.next_try)
        {
            return Ok(false);
        }
        let p = placement(self.enforcer.cgroup())?;
        let ns = p.ns;
        self.host_netns = p.host || ns.is_none();
        // In our own namespace (host network) the proxy is where it belongs already.
        if let Dns::Proxy(p) = &mut self.dns
            && ns.is_some()
        {
            let sandbox_id = self.enforcer.sandbox_id();
            match start_proxy(
                dp,
                ns.as_ref(),
                &self.policy,
                &self.servers,
                sandbox_id,
                p.learn_tx.clone(),
            ) {
                Ok(proxy) => p.proxy = proxy,
                Err(e) => {
                    // Still enforced (its DNS fails, closed); try again, less and less often.
                    let delay = self.unplaced.as_ref().map_or(PLACE_FIRST_DELAY, |u| u.delay * 2);
                    let delay = delay.min(PLACE_MAX_DELAY);
                    self.unplaced = Some(Unplaced {
                        why: e.to_string(),
                        next_try: Instant::now() + delay,
                        delay,
                    });
                    // The maps still follow the namespace's rules.
                    let compiled = self.compile()?;
                    self.enforcer.update(dp, compiled)?;
                    return Err(e);
                }
            }
            tracing::info!(
                sandbox = self.name.as_str(),
                "its DNS proxy listens in its network namespace now"
            );
        }
        self.netns_pending = false;
        self.unplaced = None;
        let compiled = self.compile()?;
        self.enforcer.update(dp, compiled)?;
        Ok(true)
    }

    /// A sandbox living in a namespace of its own gets the host's rules for good once any of
    /// its processes is in netcontrol's (the host's) namespace: a process that unshared must
    /// not open listening and abstract sockets for the others, nor keep them open for later
    /// ones. Called on every tick.
    pub fn recheck_netns(&mut self, dp: &mut Datapath) -> Result<()> {
        if self.host_netns || self.netns_pending {
            return Ok(());
        }
        if !placement(self.enforcer.cgroup())?.host {
            return Ok(());
        }
        tracing::warn!(
            sandbox = self.name.as_str(),
            "a process of the sandbox is in the host's network namespace: the host's rules apply \
             to all of it from now on"
        );
        self.host_netns = true;
        let compiled = self.compile()?;
        self.enforcer.update(dp, compiled)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Look for tampering with the sandbox's links, put it right, and report it: an error
    /// line, a `tamper` event. Returns how many things were found.
    pub fn check_tamper(&mut self, dp: &mut Datapath) -> usize {
        let found = self.enforcer.check(dp);
        report_tampering(dp, &self.name, self.enforcer.sandbox_id(), &found);
        found.len()
    }

    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The DNS proxy's counters (proxy mode).
    pub fn dns_stats(&self) -> Option<&std::sync::Arc<dnsproxy::Stats>> {
        match &self.dns {
            Dns::Proxy(p) => Some(&p.proxy.stats),
            Dns::Resolver(_) => None,
        }
    }

    /// What the kernel and the DNS proxy have counted for this sandbox.
    pub fn counts(&self, dp: &Datapath) -> Result<Counts> {
        Ok(self.with_dns(dp.counts(self.enforcer.sandbox_id())?))
    }

    /// Kernel counts read elsewhere (one walk for many sandboxes), with the DNS proxy's.
    pub fn with_dns(&self, mut counts: Counts) -> Counts {
        counts.dns_refused = self.dns_stats().map_or(0, |s| s.refused());
        counts
    }

    /// Wait until DNS changes what the policy allows. Cancel-safe: nothing is lost when the
    /// future is dropped, so it can sit in a `select!` with other work.
    pub async fn next_change(&mut self) -> Change {
        match &mut self.dns {
            Dns::Resolver(f) => loop {
                let updates = f.changed().await;
                if !updates.is_empty() {
                    return Change::Names(updates);
                }
                std::future::pending::<()>().await;
            },
            Dns::Proxy(p) if p.external_sweep => match p.learn_rx.recv().await {
                Some(l) => Change::Learned(l),
                None => std::future::pending().await,
            },
            Dns::Proxy(p) => tokio::select! {
                Some(l) = p.learn_rx.recv() => Change::Learned(l),
                _ = p.sweep.tick() => Change::Sweep,
            },
        }
    }

    /// From now on the owner calls [`Sandbox::sweep`] (about once a second); `next_change`
    /// no longer returns sweeps.
    pub fn sweep_externally(&mut self) {
        if let Dns::Proxy(p) = &mut self.dns {
            p.external_sweep = true;
        }
    }

    /// Expire learned addresses now (proxy mode; nothing in resolver mode). Returns whether
    /// the entries changed.
    pub fn sweep(&mut self, dp: &mut Datapath) -> Result<bool> {
        if !matches!(self.dns, Dns::Proxy(_)) {
            return Ok(false);
        }
        let before =
            (self.enforcer.current().entries.v4.len(), self.enforcer.current().entries.v6.len());
        self.apply(dp, Change::Sweep)?;
        let e = &self.enforcer.current().entries;
        Ok((e.v4.len(), e.v6.len()) != before)
    }

    /// Apply what [`Sandbox::next_change`] returned to the maps.
    pub fn apply(&mut self, dp: &mut Datapath, change: Change) -> Result<()> {
        match (change, &mut self.dns) {
            (Change::Names(updates), Dns::Resolver(f)) => {
                learn_labels(dp, &updates);
                report(&self.name, &updates);
                let compiled =
                    in_netns(self.policy.compile(&f.resolved, &self.servers)?, self.host_netns);
                self.enforcer.update(dp, compiled)
            }
            (Change::Learned(l), Dns::Proxy(p)) => {
                let mut changed = p.learned.learn(Instant::now(), &l.name, &l.ips);
                for (ip, _) in &l.ips {
                    dp.labels().set_domain(*ip, &l.name);
                    // Its names are known now: the entry follows them from here.
                    if p.carried.remove(ip).is_some() {
                        changed.insert(*ip);
                    }
                }
                let result = p.refresh(dp, &mut self.enforcer, &self.policy, changed);
                // The answer may go now (also if allowing failed: holding it would not help).
                let _ = l.done.send(());
                p.report_drops(&self.name, &l.name);
                result
            }
            (Change::Sweep, Dns::Proxy(p)) => {
                dp.host_addresses().refresh_if_older(HOST_ADDRESSES_EVERY);
                let grace = self.policy.dns.grace;
                let now_ns = crate::events::record::monotonic_ns();
                let enforcer = &self.enforcer;
                let in_use = |ip| {
                    enforcer
                        .last_use(dp, ip)
                        .is_some_and(|t| u128::from(now_ns.saturating_sub(t)) < grace.as_nanos())
                };
                let now = Instant::now();
                let mut changed = p.learned.expire(now, in_use);
                p.carried.retain(|ip, (_, until)| {
                    let keep = *until > now || in_use(*ip);
                    if !keep {
                        changed.insert(*ip);
                    }
                    keep
                });
                p.refresh(dp, &mut self.enforcer, &self.policy, changed)
            }
            _ => Ok(()),
        }
    }

    /// Switch to `policy`. Validated first; in resolver mode its new names are resolved before
    /// the maps change. The maps then move to it additions first, removals last.
    pub async fn reload(&mut self, dp: &mut Datapath, policy: Policy) -> Result<()> {
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
                    *f = follow(&self.name, &policy, &servers, dp).await;
                } else {
                    let new: BTreeSet<String> = policy
                        .names()
                        .into_iter()
                        .filter(|n| !f.resolved.contains_key(n))
                        .collect();
                    f.add(&new);
                    let first = f.settle(&new, Follower::settle_deadline(&policy.dns)).await;
                    learn_labels(dp, &first);
                    report(&self.name, &first);
                    report_silent(f, &new);
                }
                policy.compile(&f.resolved, &servers)?
            }
            Dns::Proxy(p) => {
                p.proxy.set(proxy_config(&policy, &servers), rules(&policy, dp));
                p.learned.set_settings(Settings::from(&policy.dns));
                p.learned.retain_names(|n| !policy.ranges_for_name(n).is_empty());
                // Carried entries' names are unknown: the new policy may not allow them.
                p.carried.clear();
                p.index = Index::new(&policy.grants(&Resolved::new(), &servers));
                p.compiled(&policy)?
            }
        };
        self.enforcer.update(dp, in_netns(compiled, self.host_netns))?;
        if let Dns::Resolver(f) = &mut self.dns {
            f.retain(&policy.names());
        }
        self.policy = policy;
        self.servers = servers;
        Ok(())
    }

    /// Detach, forget the sandbox's entries, and return what was counted for it.
    pub fn detach(self, dp: &mut Datapath) -> Result<Counts> {
        // Events still queued for it are named by the sandbox label, which stays.
        dp.labels().set_identity(self.enforcer.sandbox_id(), Identity::default());
        let dns_refused = self.dns_stats().map_or(0, |s| s.refused());
        let mut counts = self.enforcer.detach(dp)?;
        counts.dns_refused = dns_refused;
        Ok(counts)
    }

    /// Stop managing the sandbox but leave it enforced as it is (pinned links and map
    /// entries), for a restarted daemon to re-adopt.
    pub fn leave_pinned(self) {
        self.enforcer.leave_pinned();
    }
}

/// The learned entries a pinned map holds for `policy_id`, kept for `grace` from now.
fn carried(
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

impl ProxyMode {
    /// The extra ports DNS opened for `ip`: those of the names it answered for, or those it
    /// was carried over with.
    fn ranges(&self, policy: &Policy, ip: IpAddr) -> Vec<PortRange> {
        let mut ranges: Vec<PortRange> =
            self.learned.names(ip).flat_map(|n| policy.ranges_for_name(n)).collect();
        if let Some((carried, _)) = self.carried.get(&ip) {
            ranges.extend(carried);
        }
        ranges
    }

    /// Everything the maps should hold: the static entries and the learned addresses.
    fn compiled(&self, policy: &Policy) -> Result<Compiled> {
        let learned: BTreeMap<IpAddr, Vec<_>> = self
            .learned
            .ips()
            .chain(self.carried.keys().copied())
            .map(|ip| (ip, self.ranges(policy, ip)))
            .collect();
        Ok(Compiled {
            flags: policy.sandbox_flags() | SANDBOX_F_DNS_REDIRECT,
            dns_port4: self.proxy.port4,
            dns_port6: self.proxy.port6,
            entries: self.index.entries_with(&learned).map_err(crate::policy::PolicyError::from)?,
            ..policy.compile(&Resolved::new(), &[])?
        })
    }

    /// Bring the entries of `ips` in line with what they were learned for.
    fn refresh(
        &self,
        dp: &mut Datapath,
        enforcer: &mut Enforcer,
        policy: &Policy,
        ips: BTreeSet<IpAddr>,
    ) -> Result<()> {
        for ip in ips {
            let ranges = self.ranges(policy, ip);
            let value =
                self.index.host_value(ip, &ranges).map_err(crate::policy::PolicyError::from)?;
            enforcer.set_host(dp, ip, value)?;
        }
        Ok(())
    }

    fn report_drops(&mut self, sandbox: &str, name: &str) {
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

/// Say what was tampered with: an error line and an event each.
pub fn report_tampering(
    dp: &Datapath,
    name: &str,
    sandbox_id: u64,
    found: &[crate::bpf::attach::Tampering],
) {
    for t in found {
        let outcome = match (t.repaired, t.what) {
            (false, _) => "NOT put right",
            (true, crate::bpf::attach::TamperKind::Detached) => "attached again",
            (true, crate::bpf::attach::TamperKind::Unpinned) => "pinned again",
            (true, crate::bpf::attach::TamperKind::Replaced) => "netcontrol's program put back",
        };
        tracing::error!(
            sandbox = name,
            "tampering: the {} link was {} behind netcontrol's back; {outcome}",
            t.hook,
            t.what.said()
        );
        dp.injector().send(crate::events::EventRecord::tamper(t, sandbox_id, dp.labels()));
    }
}

/// The kernel's view with what the sandbox's network namespace implies.
fn in_netns(mut c: Compiled, host_netns: bool) -> Compiled {
    if host_netns {
        c.flags |= SANDBOX_F_HOST_NETNS;
    }
    c
}

/// Where the cgroup's processes are.
fn placement(cgroup: &std::path::Path) -> Result<crate::netns::Placement> {
    crate::netns::of_cgroup(cgroup)
        .map_err(|e| Error::io(format!("finding the network namespace of {}", cgroup.display()), e))
}

/// The sandbox's DNS proxy, listening in `ns`.
fn start_proxy(
    dp: &Datapath,
    ns: Option<&crate::netns::Netns>,
    policy: &Policy,
    servers: &[SocketAddr],
    sandbox_id: u64,
    learn: mpsc::Sender<dnsproxy::Learned>,
) -> Result<Proxy> {
    let links = Links {
        learn,
        events: dp.injector(),
        labels: dp.labels().clone(),
        sandbox_id,
        origins: dp.origins(),
    };
    Proxy::start(ns, proxy_config(policy, servers), rules(policy, dp), links)
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

fn rules(policy: &Policy, dp: &Datapath) -> dnsproxy::Rules {
    dnsproxy::Rules {
        patterns: policy.patterns(),
        audit: policy.mode == crate::policy::Mode::Audit,
        rebinding: crate::rebinding::Rules::new(policy, dp.host_addresses().clone()),
    }
}

/// Resolve the policy's names (resolver mode), each to its first answer.
async fn follow(sandbox: &str, policy: &Policy, servers: &[SocketAddr], dp: &Datapath) -> Follower {
    let rebinding = crate::rebinding::Rules::new(policy, dp.host_addresses().clone());
    let mut follower = Follower::new(servers, &policy.dns, rebinding);
    let names = policy.names();
    follower.add(&names);
    let first = follower.settle(&names, Follower::settle_deadline(&policy.dns)).await;
    learn_labels(dp, &first);
    report(sandbox, &first);
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
fn learn_labels(dp: &Datapath, updates: &[NameUpdate]) {
    for u in updates {
        for ip in &u.ips {
            dp.labels().set_domain(*ip, &u.name);
        }
    }
}

/// Say what changed about names, as a user needs to hear it.
fn report(sandbox: &str, updates: &[NameUpdate]) {
    for u in updates {
        let n = u.ips.len();
        match &u.status {
            Status::Pending => {}
            Status::Resolved => {
                tracing::info!(sandbox, "{}: {n} address{} allowed", u.name, plural(n))
            }
            Status::NoSuchName => tracing::warn!(
                sandbox,
                "{}: no such domain (NXDOMAIN); {}",
                u.name,
                keeping(n, "nothing is allowed for it")
            ),
            Status::NoAddresses => tracing::warn!(
                sandbox,
                "{}: the name has no A or AAAA records; {}",
                u.name,
                keeping(n, "nothing is allowed for it")
            ),
            Status::Failing { error } => tracing::warn!(
                sandbox,
                "{}: DNS lookup failed ({error}); {}",
                u.name,
                keeping(n, "nothing is allowed for it yet")
            ),
        }
        if u.dropped_by_cap > 0 {
            tracing::warn!(
                sandbox,
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
