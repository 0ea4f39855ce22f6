//! The daemon's sources and their one reconcile step: what the configuration file, the
//! control socket's attaches, Docker's containers and the node's pods want
//! ([`Supervisor::wanted`]), compared with the sandboxes there are and brought in line
//! ([`Supervisor::converge`], through the pure [`reconcile`]). Every event (a reload, an
//! attach, a container start, a pod change) updates its source's state and converges.

use std::{path::PathBuf, sync::Arc};

use super::{
    config::SandboxConfig,
    control::PolicyRef,
    policies::Policies,
    reconcile::{Action, Have, Key, Wanted, reconcile},
    runtime::Attached,
    supervisor::{Origin, Slot, State, Supervisor},
};
use crate::{
    docker::{self, Container},
    kubernetes::{self, Pod},
    policy::Policy,
};

/// What one step did, for a reload's summary.
#[derive(Debug, Default)]
pub(super) struct Converged {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    /// Policies that could not be applied (the sandbox keeps its previous one).
    pub problems: Vec<String>,
}

/// A cgroup sandbox containers may run under (the configuration's and the control socket's).
struct Parent {
    name: String,
    cgroup: PathBuf,
    policy_name: String,
    policy: Arc<Policy>,
}

impl Supervisor {
    /// Bring the sandboxes in line with what every source wants now.
    pub(super) async fn converge(&mut self) -> Converged {
        self.converged_at = self.policies.generation();
        let wanted = self.wanted();
        let actions = {
            let have: Vec<Have<'_>> = self.slots.iter().map(|(name, s)| s.have(name)).collect();
            reconcile(wanted, &have)
        };
        let mut done = Converged::default();
        // Renames swap and shift names among sandboxes: all are taken out before any is put
        // back (after the removals, which free names, and before the additions).
        let (renames, actions): (Vec<Action>, Vec<Action>) =
            actions.into_iter().partition(|a| matches!(a, Action::Rename(..)));
        let first_change =
            actions.iter().position(|a| !matches!(a, Action::Remove(_))).unwrap_or(actions.len());
        let mut actions = actions.into_iter();
        for action in actions.by_ref().take(first_change) {
            if let Action::Remove(name) = action {
                self.remove_slot(&name);
                done.removed += 1;
            }
        }
        let renames: Vec<(String, Wanted)> = renames
            .into_iter()
            .filter_map(|a| match a {
                Action::Rename(old, w) => Some((old, w)),
                _ => None,
            })
            .collect();
        let renamed = self.rename_slots(renames);
        for w in renamed {
            done.changed += 1;
            self.apply_policy(w, &mut done).await;
        }
        for action in actions {
            match action {
                Action::Remove(name) => {
                    self.remove_slot(&name);
                    done.removed += 1;
                }
                Action::Add(w) => {
                    self.add_slot(w).await;
                    done.added += 1;
                }
                Action::Replace(old, w) => {
                    self.remove_slot(&old);
                    self.add_slot(w).await;
                    done.changed += 1;
                }
                Action::SetPolicy(w) => {
                    if self.apply_policy(w, &mut done).await {
                        done.changed += 1;
                    }
                }
                Action::Refresh(w) => self.refresh(&w),
                // Done above.
                Action::Rename(..) => {}
            }
        }
        done
    }

    /// Give the sandbox `w` names its wanted policy, in place. Returns whether it changed.
    async fn apply_policy(&mut self, w: Wanted, done: &mut Converged) -> bool {
        let newly_missing = w.policy_missing.is_some()
            && self.slots.get(&w.name).is_some_and(|s| s.policy_missing.is_none());
        if newly_missing {
            self.say_missing(&w);
        }
        let name = w.name.clone();
        self.refresh(&w);
        match self.set_policy(&name, w.policy_name, w.policy, w.policy_missing).await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(sandbox = name.as_str(), "{e}");
                done.problems.push(format!("{name}: {e}; it keeps its previous policy"));
                false
            }
        }
    }

    /// The sandboxes named `old` become the wanted ones, their links staying attached: all
    /// are taken out first, so that names may swap. Returns what to apply to each then.
    fn rename_slots(&mut self, renames: Vec<(String, Wanted)>) -> Vec<Wanted> {
        let taken: Vec<(Slot, Wanted, Option<u64>, Option<u64>)> = renames
            .into_iter()
            .filter_map(|(old, w)| {
                let slot = self.slots.remove(&old)?;
                let errors = self.attach_errors.remove(&old);
                let tamper = self.tamper.remove(&old);
                tracing::info!(sandbox = w.name.as_str(), "was {old}: same cgroup, kept attached");
                Some((slot, w, errors, tamper))
            })
            .collect();
        let mut out = Vec::with_capacity(taken.len());
        for (mut slot, w, errors, tamper) in taken {
            slot.key = w.key.clone();
            slot.origin = w.origin.clone();
            slot.create = w.create;
            if let State::Enforcing(s) = &mut slot.state {
                s.rename(&mut self.dp, &w.name);
            }
            if let Some(n) = errors {
                self.attach_errors.insert(w.name.clone(), n);
            }
            if let Some(n) = tamper {
                self.tamper.insert(w.name.clone(), n);
            }
            self.slots.insert(w.name.clone(), slot);
            out.push(w);
        }
        out
    }

    /// The policy store changed: the sandboxes naming a changed policy get it (a reload
    /// converges by itself; this is for changes that come from elsewhere).
    pub async fn policies_changed(&mut self) {
        if self.converged_at != self.policies.generation() {
            let done = self.converge().await;
            for p in &done.problems {
                tracing::warn!("{p}");
            }
            self.publish();
        }
    }

    /// Control-socket attaches that a sandbox of the configuration now shadows are dropped
    /// (the configuration's wins).
    pub(super) fn drop_shadowed_attaches(&mut self) {
        let config = &self.config;
        let before = self.attached.len();
        self.attached.retain(|a| {
            let shadowed = config.sandboxes.iter().any(|s| s.name == a.name);
            if shadowed {
                tracing::warn!(
                    "{}: attached through the control socket, but the configuration now has a \
                     sandbox of that name; the configuration's applies",
                    a.name
                );
            }
            !shadowed
        });
        if self.attached.len() != before {
            self.save_runtime();
        }
    }

    async fn add_slot(&mut self, w: Wanted) {
        if w.policy_missing.is_some() {
            self.say_missing(&w);
        }
        let name = w.name.clone();
        self.slots.insert(name.clone(), Slot::from_wanted(w));
        self.try_start(&name).await;
    }

    /// A container's or pod's record, as the source has it now.
    fn refresh(&mut self, w: &Wanted) {
        if let Some(slot) = self.slots.get_mut(&w.name) {
            slot.container.clone_from(&w.container);
            slot.pod.clone_from(&w.pod);
        }
    }

    /// A policy name that resolves to nothing: said once, when the sandbox gets deny-all for
    /// it (never "not enforced": a typo or a `kubectl label` must not open a sandbox).
    fn say_missing(&mut self, w: &Wanted) {
        let source = w.policy_missing.as_deref().unwrap_or("its configuration");
        tracing::error!(
            sandbox = w.name.as_str(),
            "{}: {source} names policy {:?}, which {} does not define; it gets no egress at all \
             (deny-all) until that policy exists",
            w.name,
            w.policy_name,
            self.config.path.display()
        );
        *self.attach_errors.entry(w.name.clone()).or_default() += 1;
    }

    /// Every sandbox the sources want, in order of precedence: the configuration, the control
    /// socket's attaches, containers, pods.
    pub(super) fn wanted(&self) -> Vec<Wanted> {
        let mut all: Vec<Wanted> =
            self.config.sandboxes.iter().map(|s| self.of_config(s)).collect();
        all.extend(self.attached.iter().map(|a| self.of_attach(a)));
        let parents: Vec<Parent> = all
            .iter()
            .map(|w| Parent {
                name: w.name.clone(),
                cgroup: self.resolve(&w.cgroup),
                policy_name: w.policy_name.clone(),
                policy: w.policy.clone(),
            })
            .collect();
        let mut containers: Vec<Wanted> =
            self.running.values().filter_map(|c| self.of_container(c, &parents)).collect();
        // Container names are unique among running containers, not among all sandboxes.
        for w in &mut containers {
            if all.iter().any(|o| o.name == w.name)
                && let Some(c) = &w.container
            {
                w.name = format!("{}/{}", c.name, c.short_id());
            }
        }
        all.extend(containers);
        all.extend(self.pods.values().filter_map(|p| self.of_pod(p)));
        all
    }

    fn of_config(&self, s: &SandboxConfig) -> Wanted {
        let policy = self.policies.get(&s.policy).cloned();
        Wanted {
            key: Key::Config(s.name.clone()),
            name: s.name.clone(),
            cgroup: s.cgroup.clone(),
            origin: Origin::Config,
            create: s.create,
            policy_missing: policy.is_none().then(|| "the configuration".to_owned()),
            policy: policy.unwrap_or_else(Policies::deny_all),
            policy_name: s.policy.clone(),
            container: None,
            pod: None,
        }
    }

    fn of_attach(&self, a: &Attached) -> Wanted {
        let (policy_name, policy, missing) = match self.resolve_policy(&a.policy) {
            Ok((name, policy)) => (name, policy, None),
            // Its policy is gone from the configuration: deny-all until it is detached or
            // attached again, never let go.
            Err(_) => {
                let name = match &a.policy {
                    PolicyRef::Named(n) => n.clone(),
                    PolicyRef::Inline { source, .. } => source.display().to_string(),
                };
                let source = "the daemon's record of control-socket attaches".to_owned();
                (name, Policies::deny_all(), Some(source))
            }
        };
        Wanted {
            key: Key::Control(a.name.clone()),
            name: a.name.clone(),
            cgroup: a.cgroup.clone(),
            origin: Origin::Control(a.policy.clone()),
            create: false,
            policy_name,
            policy,
            policy_missing: missing,
            container: None,
            pod: None,
        }
    }

    /// The sandbox a container should be: the first `containers:` entry that selects it, else
    /// a child of the innermost cgroup sandbox it runs under, else none.
    fn of_container(&self, c: &Container, parents: &[Parent]) -> Option<Wanted> {
        let cgroup = match docker::cgroup::of_container(c) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("container {}: {e}", c.name);
                return None;
            }
        };
        let key = Key::Container(c.id.clone());
        // A name it has keeps (another sandbox taking the plain name later must not rename it).
        let name = self
            .slots
            .iter()
            .find(|(_, s)| s.key == key)
            .map_or_else(|| c.name.clone(), |(n, _)| n.clone());
        let base = Wanted {
            key,
            name,
            cgroup: cgroup.clone(),
            origin: Origin::Pod,
            create: false,
            policy_name: String::new(),
            policy: Policies::deny_all(),
            policy_missing: None,
            container: Some(c.clone()),
            pod: None,
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
            // Selected, so meant to be a sandbox: a name that resolves to nothing gets deny-all.
            let policy = self.policies.get(&policy_name).cloned();
            return Some(Wanted {
                origin: Origin::Container { rule: rule.name.clone() },
                policy_missing: policy
                    .is_none()
                    .then(|| format!("the label of container {} ({})", c.name, c.short_id())),
                policy: policy.unwrap_or_else(Policies::deny_all),
                policy_name,
                ..base
            });
        }
        let parent = parents
            .iter()
            .filter(|p| cgroup != p.cgroup && cgroup.starts_with(&p.cgroup))
            .max_by_key(|p| p.cgroup.components().count())?;
        Some(Wanted {
            origin: Origin::Child { parent: parent.name.clone() },
            policy_name: parent.policy_name.clone(),
            policy: parent.policy.clone(),
            ..base
        })
    }

    /// The sandbox a pod should be: its label's policy, else its namespace's, else the
    /// default; none for finished pods or without any of them.
    fn of_pod(&self, pod: &Pod) -> Option<Wanted> {
        let k = self.config.kubernetes.as_ref()?;
        if pod.finished {
            return None;
        }
        let (policy_name, source) = match pod.labels.get(&k.policy_label) {
            Some(n) => {
                (n.clone(), format!("the label {} of pod {}", k.policy_label, pod.full_name()))
            }
            None => {
                let n = k.namespaces.get(&pod.namespace).or(k.default_policy.as_ref())?;
                (n.clone(), format!("the configuration, for pod {}", pod.full_name()))
            }
        };
        let policy = self.policies.get(&policy_name).cloned();
        let root = k.cgroup_root.clone().unwrap_or_else(|| self.mount.clone());
        Some(Wanted {
            key: Key::Pod(pod.uid.clone()),
            name: pod.full_name(),
            cgroup: kubernetes::cgroup::expected(&root, pod),
            origin: Origin::Pod,
            create: false,
            policy_missing: policy.is_none().then_some(source),
            policy: policy.unwrap_or_else(Policies::deny_all),
            policy_name,
            container: None,
            pod: Some(pod.clone()),
        })
    }
}
