//! What the supervisor tells: `status` (one walk of STATS for every sandbox) and the
//! snapshots the metrics server serves.

use netcontrol_common::abi::GLOBAL_EVENTS_LOST;

use super::{
    control::{MapUsage, SandboxStatus, Status},
    supervisor::{Origin, State, Supervisor},
};
use crate::{
    cgroup::watch::CgroupWatch,
    metrics::{SandboxGauges, Snapshot},
};

impl Supervisor {
    pub fn status(&self) -> Status {
        // One walk of STATS for every sandbox.
        let (mut counts_of, stats_entries) = self.dp.counts_by_sandbox().unwrap_or_default();
        let sandboxes = self
            .slots
            .iter()
            .map(|(name, slot)| {
                let mut s = SandboxStatus {
                    name: name.clone(),
                    cgroup: self.resolve(&slot.cgroup),
                    policy: slot.policy_name.clone(),
                    mode: slot.policy.mode.name().to_owned(),
                    dns_mode: slot.policy.dns.mode.name().to_owned(),
                    origin: match slot.origin {
                        Origin::Config => "config".into(),
                        Origin::Control(_) => "control".into(),
                        Origin::Container { .. } => "container".into(),
                        Origin::Child { .. } => "child".into(),
                        Origin::Pod => "pod".into(),
                    },
                    container: slot.container.as_ref().map(|c| c.short_id().to_owned()),
                    ..SandboxStatus::default()
                };
                match &slot.state {
                    State::Enforcing(sb) => {
                        let id = sb.enforcer().sandbox_id();
                        let counts = sb.with_dns(counts_of.remove(&id).unwrap_or_default());
                        let (v4, v6) = sb.enforcer().entry_counts();
                        s.state = "enforcing".into();
                        s.cgroup_id = Some(sb.enforcer().sandbox_id());
                        s.adopted = sb.enforcer().adopted();
                        s.allowed = counts.allowed;
                        s.blocked = counts.blocked;
                        s.would_block = counts.would_block;
                        s.events_lost = counts.events_lost;
                        s.dns_refused = counts.dns_refused;
                        s.tampered = self.tamper.get(name).copied().unwrap_or(0);
                        (s.entries_v4, s.entries_v6) = (v4, v6);
                    }
                    State::Waiting { why, .. } => {
                        s.state = "waiting".into();
                        s.detail = Some(why.clone());
                    }
                }
                s
            })
            .collect::<Vec<_>>();
        let not_enforcing = self.not_enforcing();
        let mut sandboxes = sandboxes;
        for n in &not_enforcing {
            if let Some(s) = sandboxes.iter_mut().find(|s| s.name == n.sandbox) {
                s.problem = Some(format!("{}: {}", n.reason, n.detail));
            }
        }
        let maps = crate::metrics::map_usage(&self.gauges(), stats_entries)
            .into_iter()
            .map(|(map, entries, capacity)| MapUsage { map: map.to_owned(), entries, capacity })
            .collect();
        let kernel_lost =
            self.dp.maps_ref().global().map(|g| g[GLOBAL_EVENTS_LOST as usize]).unwrap_or(0);
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            config: self.config.path.clone(),
            pin_root: self.root.path.clone(),
            ready: !not_enforcing.iter().any(crate::metrics::NotEnforcing::blocks_ready),
            programs_adopted: self.dp.programs_adopted(),
            sandboxes,
            maps,
            events_lost: kernel_lost + self.dp.injected_lost(),
            kernel_gaps: crate::datapath::gaps(self.dp.missing(), &[]),
            landlock: Some(crate::confine::Landlock::describe()),
        }
    }

    fn gauges(&self) -> Vec<SandboxGauges> {
        self.enforcing()
            .map(|(name, s)| SandboxGauges {
                labels: self.metric_labels(name),
                name: name.clone(),
                cgroup_id: s.enforcer().sandbox_id(),
                entries_v4: s.enforcer().entry_counts().0,
                entries_v6: s.enforcer().entry_counts().1,
                dns: s.dns_stats().cloned(),
                links: s.enforcer().link_check(),
            })
            .collect()
    }

    /// The labels naming a sandbox in metrics: its name; a container's id; a pod's namespace
    /// and name, or only its namespace if per-pod metrics are off.
    fn metric_labels(&self, name: &str) -> Vec<(&'static str, String)> {
        let slot = &self.slots[name];
        if let Some(p) = &slot.pod {
            let per_pod = self.config.kubernetes.as_ref().is_none_or(|k| k.pod_metrics);
            return if per_pod {
                vec![
                    ("sandbox", name.to_owned()),
                    ("namespace", p.namespace.clone()),
                    ("pod", p.name.clone()),
                ]
            } else {
                vec![("namespace", p.namespace.clone())]
            };
        }
        let mut labels = vec![("sandbox", name.to_owned())];
        if let Some(c) = &slot.container {
            labels.push(("container_id", c.short_id().to_owned()));
        }
        labels
    }

    /// Hand metrics what changed.
    pub fn publish(&self) {
        self.published.set(self.signature());
        let sandboxes = self.gauges();
        self.shared.publish(Snapshot {
            waiting: self.slots.len() - sandboxes.len(),
            sandboxes,
            attach_errors: self.attach_errors.clone(),
            reload_failures: self.reload_failures,
            tamper: self.tamper.clone(),
            not_enforcing: self.not_enforcing(),
        });
    }

    /// Publish only if what metrics show may have changed since the last snapshot: a tick of
    /// thousands of sandboxes that changed nothing builds no new one. Watch the cgroups anew
    /// likewise (or while some cgroup could not be watched yet).
    pub(super) fn publish_and_watch_if_changed(&mut self, cgroups: &mut CgroupWatch) {
        let sig = self.signature();
        if sig != self.watched.get() || !self.polled.is_empty() {
            self.sync_watches(cgroups);
            self.watched.set(sig);
        }
        if sig != self.published.get() {
            self.publish();
        }
    }

    /// A digest of what a snapshot shows (states, entry counts, problems, counters), cheap to
    /// compute: no allocation per sandbox.
    fn signature(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, slot) in &self.slots {
            name.hash(&mut h);
            match &slot.state {
                State::Enforcing(s) => {
                    (1u8, s.enforcer().sandbox_id(), s.enforcer().entry_counts()).hash(&mut h);
                    // Not shown, but it decides which cgroups are watched (cgroups.rs).
                    s.netns_pending().hash(&mut h);
                    s.problem().hash(&mut h);
                }
                State::Waiting { why, failed, .. } => (2u8, why, failed).hash(&mut h),
            }
            (slot.standin.is_some(), &slot.policy_missing).hash(&mut h);
        }
        (&self.attach_errors, &self.tamper, self.reload_failures).hash(&mut h);
        h.finish()
    }
}
