//! The daemon's Kubernetes pods: each pod of this node whose label (or namespace, or the
//! default) names a policy is a sandbox at its pod cgroup, so that every container of the pod
//! — init containers included — is covered. Kept in line with the API server's reports and
//! the configuration.

use std::path::PathBuf;

use super::supervisor::{Origin, Slot, Supervisor};
use crate::{
    kubernetes::{Pod, PodEvent, cgroup},
    policy::Policy,
};

impl Supervisor {
    pub async fn pod_event(&mut self, event: PodEvent) {
        match event {
            PodEvent::Resync(list) => {
                let first = !self.pods_synced;
                self.pods = list.into_iter().map(|p| (p.uid.clone(), p)).collect();
                self.pods_synced = true;
                let gone: Vec<String> = self
                    .pod_slots()
                    .filter(|(_, uid)| !self.pods.contains_key(uid))
                    .map(|(name, _)| name)
                    .collect();
                for name in gone {
                    self.remove_slot(&name);
                }
                self.reconcile_pods().await;
                if first {
                    self.collect_garbage();
                }
            }
            PodEvent::Applied(pod) => {
                self.pods.insert(pod.uid.clone(), pod.clone());
                self.reconcile_pod(&pod).await;
            }
            PodEvent::Deleted(uid) => {
                self.pods.remove(&uid);
                if let Some(name) = self.pod_slot(&uid) {
                    self.remove_slot(&name);
                }
            }
            PodEvent::Unreachable(why) => {
                tracing::warn!(
                    "{why}; sandboxes stay enforced, new pods are picked up when the API answers again"
                );
            }
        }
        self.publish();
    }

    /// Bring every pod's sandbox in line with the configuration. Returns how many changed.
    pub(super) async fn reconcile_pods(&mut self) -> usize {
        let pods: Vec<Pod> = self.pods.values().cloned().collect();
        let mut changed = 0;
        for p in &pods {
            if self.reconcile_pod(p).await {
                changed += 1;
            }
        }
        changed
    }

    async fn reconcile_pod(&mut self, pod: &Pod) -> bool {
        let want = self.pod_policy(pod);
        match (self.pod_slot(&pod.uid), want) {
            (None, None) => false,
            (Some(name), None) => {
                self.remove_slot(&name);
                true
            }
            (Some(name), Some((policy_name, policy, missing))) => {
                if let Some(slot) = self.slots.get_mut(&name) {
                    slot.pod = Some(pod.clone());
                }
                self.set_policy_or_warn(&name, policy_name, policy, missing).await
            }
            (None, Some((policy_name, policy, missing))) => {
                let name = pod.full_name();
                let mut slot = Slot::new(self.pod_cgroup(pod), policy_name, policy, Origin::Pod);
                slot.pod = Some(pod.clone());
                slot.policy_missing = missing;
                self.slots.insert(name.clone(), slot);
                self.try_start(&name).await;
                true
            }
        }
    }

    /// The policy a pod gets: its label's, else its namespace's, else the default; none for
    /// finished pods. A name that resolves to no policy gets deny-all, with where it came
    /// from (never "not enforced": a typo or a `kubectl label` must not open a pod).
    fn pod_policy(&mut self, pod: &Pod) -> Option<(String, Policy, Option<String>)> {
        let k = self.config.kubernetes.as_ref()?;
        if pod.finished {
            return None;
        }
        let (name, source) = match pod.labels.get(&k.policy_label) {
            Some(n) => {
                (n.clone(), format!("the label {} of pod {}", k.policy_label, pod.full_name()))
            }
            None => {
                let n = k.namespaces.get(&pod.namespace).or(k.default_policy.as_ref())?;
                (n.clone(), format!("the configuration, for pod {}", pod.full_name()))
            }
        };
        match self.config.policies.get(&name) {
            Some(p) => Some((name, p.clone(), None)),
            None => {
                tracing::error!(
                    "pod {}: its label {} names policy {name:?}, which {} does not define; it \
                     gets no egress at all (deny-all) until that policy exists",
                    pod.full_name(),
                    k.policy_label,
                    self.config.path.display()
                );
                *self.attach_errors.entry(pod.full_name()).or_default() += 1;
                Some((name, Policy::deny_all(), Some(source)))
            }
        }
    }

    /// Where the pod's cgroup is (or will be, once the kubelet creates it).
    fn pod_cgroup(&self, pod: &Pod) -> PathBuf {
        let root = self
            .config
            .kubernetes
            .as_ref()
            .and_then(|k| k.cgroup_root.clone())
            .unwrap_or_else(|| self.mount.clone());
        cgroup::expected(&root, pod)
    }

    fn pod_slot(&self, uid: &str) -> Option<String> {
        self.pod_slots().find(|(_, u)| u == uid).map(|(name, _)| name)
    }

    /// (sandbox name, pod uid) of every pod sandbox.
    fn pod_slots(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.slots.iter().filter_map(|(n, s)| s.pod.as_ref().map(|p| (n.clone(), p.uid.clone())))
    }
}
