//! A sandbox under this process's control: its policy (reloadable), how its domain rules become
//! addresses, and the [`Enforcer`] that holds the kernel side. `run` and `attach` drive it.
//!
//! Domain rules work in one of two ways (`dns.mode`):
//! - proxy (DNS-aware, the default): the sandbox's DNS is redirected to a [`Proxy`], which
//!   answers allowed names only; the addresses of its answers are allowed before the answer is
//!   released ([`LearnedSet`] keeps them as long as their TTL, grace, and use say);
//! - resolver: netcontrol resolves the names itself and follows them ([`Follower`]).

mod learning;
mod report;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use learning::{Learner, Learning};
use netcontrol_common::abi::SANDBOX_F_HOST_NETNS;
pub use report::report_tampering;
use report::{report, report_silent, report_wildcards};
use tokio::sync::mpsc;

use crate::{
    cgroup,
    datapath::{Counts, Datapath},
    dnsproxy::{self, Links, Proxy},
    enforcer::{Enforcer, LinkPins},
    error::{Error, Result},
    events::Identity,
    policy::{Compiled, DnsMode, Policy},
    resolve::{Follower, NameUpdate, system_servers},
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

/// DNS before the enforcer exists (inside `Sandbox::start`).
enum Prepared {
    Resolver(Follower),
    Proxy(ProxyParts),
}

/// Proxy mode before the learner can write (it needs the enforcer).
struct ProxyParts {
    proxy: Proxy,
    learn_tx: mpsc::Sender<dnsproxy::Learned>,
    learn_rx: mpsc::Receiver<dnsproxy::Learned>,
    learning: learning::Shared,
}

struct ProxyMode {
    proxy: Proxy,
    /// For a proxy started again in another namespace.
    learn_tx: mpsc::Sender<dnsproxy::Learned>,
    learning: learning::Shared,
    /// Applies the proxy's answers (it holds the receiving end of `learn_tx`).
    _learner: Learner,
    sweep: tokio::time::Interval,
    /// The owner sweeps (`Sandbox::sweep`) instead of the sandbox's own interval: a daemon
    /// of thousands of sandboxes sweeps them all from one tick rather than waking on each.
    external_sweep: bool,
}

impl ProxyMode {
    fn dns_ports(&self) -> (u16, u16) {
        (self.proxy.port4, self.proxy.port6)
    }
}

/// Something happened to DNS that needs applying ([`Sandbox::next_change`]). (Proxy-mode
/// answers are applied by the sandbox's learner task, not through here.)
pub enum Change {
    Names(Vec<NameUpdate>),
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
                (Prepared::Resolver(follower), compiled)
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
                let carried = match link_pins {
                    LinkPins::Daemon(_) => learning::carried(dp, policy_id, policy.dns.grace)?,
                    _ => BTreeMap::new(),
                };
                let learning =
                    Learning::new(&name, &policy, &servers, carried, dp.labels().clone());
                let compiled = learning.compiled((proxy.port4, proxy.port6))?;
                let learning = Arc::new(Mutex::new(learning));
                (Prepared::Proxy(ProxyParts { proxy, learn_tx, learn_rx, learning }), compiled)
            }
        };
        let compiled = in_netns(compiled, host_netns);
        let enforcer = Enforcer::attach(dp, &cgroup, sandbox_id, policy_id, compiled, &link_pins)?;
        let dns = match dns {
            Prepared::Resolver(follower) => Dns::Resolver(follower),
            // Answers are taken into the maps from now on (any queued so far first).
            Prepared::Proxy(ProxyParts { proxy, learn_tx, learn_rx, learning }) => {
                let mut sweep = tokio::time::interval(Duration::from_secs(1));
                sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Dns::Proxy(Box::new(ProxyMode {
                    _learner: Learner::spawn(learn_rx, Arc::clone(&learning), enforcer.hosts()),
                    proxy,
                    learn_tx,
                    learning,
                    sweep,
                    external_sweep: false,
                }))
            }
        };
        let netns_pending = netns_pending || unplaced.is_some();
        Ok(Self { name, policy, servers, dns, enforcer, netns_pending, host_netns, unplaced })
    }

    /// Move the maps to what they should hold now, whichever the DNS mode. In proxy mode the
    /// learner waits meanwhile, so that no answer is written between the two.
    fn recompile(&mut self, dp: &mut Datapath) -> Result<()> {
        match &self.dns {
            Dns::Resolver(f) => {
                let c = self.policy.compile(&f.resolved, &self.servers)?;
                self.enforcer.update(dp, in_netns(c, self.host_netns))
            }
            Dns::Proxy(p) => {
                let learning = learning::lock(&p.learning);
                let c = learning.compiled(p.dns_ports())?;
                self.enforcer.update(dp, in_netns(c, self.host_netns))
            }
        }
    }

    /// Whether the sandbox waits for its first process to learn its network namespace, or
    /// for its DNS proxy to be placed there.
    pub fn netns_pending(&self) -> bool {
        self.netns_pending
    }

    /// Whether placing its DNS proxy failed (`settle_netns` tries again when due).
    pub fn placement_failed(&self) -> bool {
        self.unplaced.is_some()
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
                    self.recompile(dp)?;
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
        self.recompile(dp)?;
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
        self.recompile(dp)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Go by another name from now on (in logs, events and metrics); nothing else changes.
    pub fn rename(&mut self, dp: &mut Datapath, name: &str) {
        name.clone_into(&mut self.name);
        dp.labels().set_sandbox(self.enforcer.sandbox_id(), name.to_owned());
        if let Dns::Proxy(p) = &self.dns {
            learning::lock(&p.learning).rename(name);
        }
    }

    /// Look for tampering with the sandbox's links, put it right, and report it: an error
    /// line, a `tamper` event. Returns how many things were found.
    pub fn check_tamper(&mut self, dp: &mut Datapath) -> usize {
        let found = self.enforcer.check(dp);
        report_tampering(dp, &self.name, self.enforcer.sandbox_id(), &found);
        found.len()
    }

    /// `check_tamper`, given what `Enforcer::look` saw just before.
    pub fn check_tamper_looked(
        &mut self,
        dp: &mut Datapath,
        looked: Option<crate::bpf::attach::Looked>,
    ) -> usize {
        let found = self.enforcer.check_looked(dp, looked);
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
    pub fn dns_stats(&self) -> Option<&Arc<dnsproxy::Stats>> {
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

    /// Whether `next_change` can return anything but sweeps: resolver mode follows names.
    pub fn follows_names(&self) -> bool {
        matches!(self.dns, Dns::Resolver(_))
            || matches!(&self.dns, Dns::Proxy(p) if !p.external_sweep)
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
            Dns::Proxy(p) if !p.external_sweep => {
                p.sweep.tick().await;
                Change::Sweep
            }
            Dns::Proxy(_) => std::future::pending().await,
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
        let Dns::Proxy(p) = &self.dns else { return Ok(false) };
        dp.host_addresses().refresh_if_older(HOST_ADDRESSES_EVERY);
        // Most of thousands of sandboxes have learned nothing: nothing to look at.
        if learning::lock(&p.learning).idle() {
            return Ok(false);
        }
        let before = self.enforcer.entry_counts();
        let grace = self.policy.dns.grace;
        let now_ns = crate::events::record::monotonic_ns();
        let enforcer = &self.enforcer;
        let in_use = |ip| {
            enforcer
                .last_use(dp, ip)
                .is_some_and(|t| u128::from(now_ns.saturating_sub(t)) < grace.as_nanos())
        };
        learning::lock(&p.learning).sweep(&enforcer.hosts(), in_use)?;
        Ok(self.enforcer.entry_counts() != before)
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
            (Change::Sweep, _) => self.sweep(dp).map(drop),
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
        match &mut self.dns {
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
                let compiled = policy.compile(&f.resolved, &servers)?;
                self.enforcer.update(dp, in_netns(compiled, self.host_netns))?;
                f.retain(&policy.names());
            }
            Dns::Proxy(p) => {
                p.proxy.set(proxy_config(&policy, &servers), rules(&policy, dp));
                // Held until the maps are moved: no answer is taken in between under the old
                // policy's grants.
                let mut learning = learning::lock(&p.learning);
                learning.set_policy(&policy, &servers);
                let compiled = learning.compiled(p.dns_ports())?;
                self.enforcer.update(dp, in_netns(compiled, self.host_netns))?;
            }
        }
        self.policy = policy;
        self.servers = servers;
        Ok(())
    }

    /// Detach, forget the sandbox's entries, and return what was counted for it.
    pub fn detach(self, dp: &mut Datapath) -> Result<Counts> {
        self.close_learning();
        // Events still queued for it are named by the sandbox label, which stays a while.
        dp.labels().retire_sandbox(self.enforcer.sandbox_id());
        let dns_refused = self.dns_stats().map_or(0, |s| s.refused());
        let mut counts = self.enforcer.detach(dp)?;
        counts.dns_refused = dns_refused;
        Ok(counts)
    }

    /// Stop managing the sandbox but leave it enforced as it is (pinned links and map
    /// entries), for a restarted daemon to re-adopt.
    /// Once this returns, the learner writes nothing more.
    fn close_learning(&self) {
        if let Dns::Proxy(p) = &self.dns {
            learning::lock(&p.learning).close();
        }
    }

    pub fn leave_pinned(self) {
        self.close_learning();
        self.enforcer.leave_pinned();
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
