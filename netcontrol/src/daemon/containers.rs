//! The daemon's Docker containers: which sandbox each running container is (a `containers:`
//! selector's, a child of a cgroup sandbox it runs under, or none), kept in line as Docker
//! reports starts, deaths and removals, and as the configuration changes.

use std::path::PathBuf;

use super::supervisor::{Origin, Slot, State, Supervisor};
use crate::{
    cgroup,
    docker::{self, Container, Lifecycle},
    policy::Policy,
};

/// What a container should be.
struct Want {
    origin: Origin,
    policy_name: String,
    policy: Policy,
    cgroup: PathBuf,
    /// Where a policy name that resolves to nothing came from (`policy` is deny-all).
    policy_missing: Option<String>,
}

impl Supervisor {
    pub async fn docker_event(&mut self, event: Lifecycle) {
        match event {
            Lifecycle::Running(list) => {
                let first = !self.docker_synced;
                self.running = list.into_iter().map(|c| (c.id.clone(), c)).collect();
                self.docker_synced = true;
                let gone: Vec<String> = self
                    .container_slots()
                    .filter(|(_, id)| !self.running.contains_key(id))
                    .map(|(name, _)| name)
                    .collect();
                for name in gone {
                    self.remove_slot(&name);
                }
                self.reconcile_containers().await;
                if first {
                    // Now it is known which pinned cgroups are containers still wanted.
                    self.collect_garbage();
                }
            }
            Lifecycle::Started(c) => {
                let id = c.id.clone();
                if let Some(name) = self.slot_of(&id) {
                    // Events are replayed from a little before each (re)connection: a start
                    // already seen is not a restart.
                    let now =
                        docker::cgroup::of_container(&c).ok().and_then(|p| cgroup::id(&p).ok());
                    let seen = matches!(&self.slots[&name].state,
                        State::Enforcing(s) if Some(s.enforcer().sandbox_id()) == now);
                    if !seen {
                        // A restart: the container has a new cgroup, so a new sandbox.
                        self.remove_slot(&name);
                    }
                }
                self.running.insert(id, c.clone());
                self.reconcile(&c).await;
            }
            Lifecycle::Died(id) | Lifecycle::Removed(id) => {
                self.running.remove(&id);
                if let Some(name) = self.slot_of(&id) {
                    self.remove_slot(&name);
                }
            }
            Lifecycle::Unreachable(why) => {
                tracing::warn!(
                    "{why}; sandboxes stay enforced, container starts are picked up when Docker answers again"
                );
            }
        }
        self.publish();
    }

    /// Bring every running container's sandbox in line with the configuration. Returns how
    /// many changed.
    pub(super) async fn reconcile_containers(&mut self) -> usize {
        let running: Vec<Container> = self.running.values().cloned().collect();
        let mut changed = 0;
        for c in &running {
            if self.reconcile(c).await {
                changed += 1;
            }
        }
        changed
    }

    /// Give a container the sandbox it should have. Returns whether anything changed.
    async fn reconcile(&mut self, c: &Container) -> bool {
        let want = self.want(c);
        let existing = self.slot_of(&c.id);
        match (existing, want) {
            (None, None) => false,
            (Some(name), None) => {
                self.remove_slot(&name);
                true
            }
            (Some(name), Some(w)) => {
                let slot = self.slots.get_mut(&name).expect("present");
                // Another policy is applied without letting go (no gap); another kind of
                // sandbox or cgroup is a new one.
                if slot.origin != w.origin || slot.cgroup != w.cgroup {
                    self.remove_slot(&name);
                    self.add(c, w).await;
                    return true;
                }
                self.set_policy_or_warn(&name, w.policy_name, w.policy, w.policy_missing).await
            }
            (None, Some(w)) => {
                self.add(c, w).await;
                true
            }
        }
    }

    async fn add(&mut self, c: &Container, w: Want) {
        // Container names are unique among running containers, not among all sandboxes.
        let name = if self.slots.contains_key(&c.name) {
            format!("{}/{}", c.name, c.short_id())
        } else {
            c.name.clone()
        };
        let mut slot = Slot::new(w.cgroup, w.policy_name, w.policy, w.origin);
        slot.container = Some(c.clone());
        slot.policy_missing = w.policy_missing;
        self.slots.insert(name.clone(), slot);
        self.try_start(&name).await;
    }

    /// The sandbox a container should be: the first `containers:` entry that selects it, else
    /// a child of the innermost cgroup sandbox it runs under, else none.
    fn want(&mut self, c: &Container) -> Option<Want> {
        let cgroup = match docker::cgroup::of_container(c) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("container {}: {e}", c.name);
                return None;
            }
        };
        for rule in &self.config.containers {
            if !rule.selector.matches(c) {
                continue;
            }
            let policy_name = match &rule.policy {
                Some(p) => p.clone(),
                None => rule
                    .selector
                    .policy_label()
                    .and_then(|k| c.labels.get(k))
                    .cloned()
                    .unwrap_or_default(),
            };
            let (policy, policy_missing) = match self.config.policies.get(&policy_name) {
                Some(p) => (p.clone(), None),
                // Selected, so meant to be a sandbox: a name that resolves to nothing (a
                // typo, a missing label) gets deny-all, never "not enforced".
                None => {
                    tracing::error!(
                        "container {} ({}): its label names policy {policy_name:?}, which {} \
                         does not define; it gets no egress at all (deny-all) until that policy \
                         exists",
                        c.name,
                        c.short_id(),
                        self.config.path.display()
                    );
                    *self.attach_errors.entry(c.name.clone()).or_default() += 1;
                    let source = format!("the label of container {}", c.name);
                    (Policy::deny_all(), Some(source))
                }
            };
            return Some(Want {
                origin: Origin::Container { rule: rule.name.clone() },
                policy_name,
                policy,
                cgroup,
                policy_missing,
            });
        }
        let parent = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.origin, Origin::Config | Origin::Control(_)))
            .filter(|(_, s)| {
                let p = if s.cgroup.is_absolute() {
                    s.cgroup.clone()
                } else {
                    self.mount.join(&s.cgroup)
                };
                cgroup != p && cgroup.starts_with(&p)
            })
            .max_by_key(|(_, s)| s.cgroup.components().count())?;
        let (parent_name, parent) = parent;
        Some(Want {
            origin: Origin::Child { parent: parent_name.clone() },
            policy_name: parent.policy_name.clone(),
            policy: parent.policy.clone(),
            cgroup,
            policy_missing: None,
        })
    }

    /// The sandbox of a container, by its id.
    fn slot_of(&self, id: &str) -> Option<String> {
        self.container_slots().find(|(_, cid)| cid == id).map(|(name, _)| name)
    }

    /// (sandbox name, container id) of every container sandbox.
    fn container_slots(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.slots
            .iter()
            .filter_map(|(n, s)| s.container.as_ref().map(|c| (n.clone(), c.id.clone())))
    }
}
