//! A sandbox under this process's control: its policy (reloadable), the DNS names it follows,
//! and the [`Enforcer`] that holds the kernel side. `run` and `attach` drive it.

use std::{collections::BTreeSet, net::SocketAddr, path::Path};

use crate::{
    enforcer::{Counts, Enforcer, Options},
    error::{Error, Result},
    events::{Labels, Sink},
    policy::Policy,
    resolve::{Follower, NameUpdate, Status, system_servers},
};

pub struct Sandbox {
    policy: Policy,
    servers: Vec<SocketAddr>,
    follower: Follower,
    labels: Labels,
    enforcer: Enforcer,
}

impl Sandbox {
    /// Resolve the policy's names (each gets one answer, or fails, before anything is
    /// attached), then enforce on `cgroup`.
    pub async fn start(cgroup: &Path, policy: Policy, sink: Sink, opts: &Options) -> Result<Self> {
        // Everything that can be checked without the kernel is checked first.
        policy.compile(&Default::default(), &[])?;
        crate::privileges::check()?;
        let servers = dns_servers(&policy)?;
        report_wildcards(&policy);
        let labels = Labels::default();
        let mut follower = Follower::new(&servers, &policy.dns);
        let names = policy.names();
        follower.add(&names);
        let first = follower.settle(&names, Follower::settle_deadline(&policy.dns)).await;
        learn(&labels, &first);
        report(&first);
        report_silent(&follower, &names);
        let compiled = policy.compile(&follower.resolved, &servers)?;
        let enforcer = Enforcer::start(cgroup, compiled, sink, labels.clone(), opts)?;
        Ok(Self { policy, servers, follower, labels, enforcer })
    }

    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Wait for DNS to change what the policy's names allow (cancel-safe; pending forever when
    /// the policy has no names), then apply it.
    pub async fn follow_dns(&mut self) -> Result<()> {
        let updates = self.follower.changed().await;
        if updates.is_empty() {
            return std::future::pending().await;
        }
        learn(&self.labels, &updates);
        report(&updates);
        self.apply()
    }

    fn apply(&mut self) -> Result<()> {
        let compiled = self.policy.compile(&self.follower.resolved, &self.servers)?;
        self.enforcer.update(compiled)
    }

    /// Switch to `policy`: its new names are resolved first, then the maps move to it
    /// (additions before removals), and only then are names it dropped forgotten.
    pub async fn reload(&mut self, policy: Policy) -> Result<()> {
        policy.compile(&Default::default(), &[])?;
        let servers = dns_servers(&policy)?;
        if servers != self.servers || policy.dns != self.policy.dns {
            // Other servers or settings: follow everything anew, with the new ones.
            let mut follower = Follower::new(&servers, &policy.dns);
            let names = policy.names();
            follower.add(&names);
            let first = follower.settle(&names, Follower::settle_deadline(&policy.dns)).await;
            learn(&self.labels, &first);
            report(&first);
            report_silent(&follower, &names);
            self.follower = follower;
        } else {
            let names = policy.names();
            let new: BTreeSet<String> = names
                .iter()
                .filter(|n| !self.follower.resolved.contains_key(*n))
                .cloned()
                .collect();
            self.follower.add(&new);
            let first = self.follower.settle(&new, Follower::settle_deadline(&policy.dns)).await;
            learn(&self.labels, &first);
            report(&first);
            report_silent(&self.follower, &new);
        }
        report_wildcards(&policy);
        let compiled = policy.compile(&self.follower.resolved, &servers)?;
        self.enforcer.update(compiled)?;
        self.follower.retain(&policy.names());
        self.policy = policy;
        self.servers = servers;
        Ok(())
    }

    /// Detach, deliver every queued event, and return the final counts and the sink.
    pub async fn stop(self) -> Result<(Counts, Sink)> {
        self.enforcer.stop().await
    }
}

/// The servers the sandbox resolves through: the policy's, or /etc/resolv.conf's.
fn dns_servers(policy: &Policy) -> Result<Vec<SocketAddr>> {
    match &policy.dns.servers {
        Some(s) => Ok(s.clone()),
        None if policy.uses_dns() => {
            system_servers().map_err(|e| Error::io("finding DNS servers", std::io::Error::other(e)))
        }
        None => Ok(Vec::new()),
    }
}

/// Remember which name each address belongs to, for events.
fn learn(labels: &Labels, updates: &[NameUpdate]) {
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
             they take effect with DNS-aware enforcement"
        );
    }
}
