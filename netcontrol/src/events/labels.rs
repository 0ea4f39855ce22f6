//! Names that events carry but the kernel does not know: the sandbox behind a cgroup id, the
//! container behind a cgroup id, and the domain behind an address. Shared between whoever
//! learns them and the event reader.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, RwLock},
};

/// Addresses remembered for events; beyond it the oldest are forgotten.
const MAX_DOMAINS: usize = 65_536;
/// Names of detached sandboxes kept for their late events; beyond it the oldest go (a daemon
/// that sees container after container come and go must not keep every name).
const MAX_RETIRED: usize = 1024;

/// A container as events name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerName {
    pub name: String,
    /// The 12-digit id.
    pub id: String,
}

/// A Kubernetes pod as events name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// What a sandbox is, beyond its name: a container, a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub container: Option<ContainerName>,
    pub pod: Option<PodName>,
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        self.container.is_none() && self.pod.is_none()
    }
}

#[derive(Clone, Default)]
pub struct Labels(Arc<RwLock<Inner>>);

#[derive(Default)]
struct Inner {
    sandboxes: HashMap<u64, String>,
    /// cgroup id -> what it is.
    identities: HashMap<u64, Identity>,
    domains: HashMap<IpAddr, String>,
    /// Insertion order of `domains`, to forget the oldest first.
    order: VecDeque<IpAddr>,
    /// Detached sandboxes, oldest first, whose names are kept for events still queued.
    retired: VecDeque<u64>,
}

impl Labels {
    pub fn set_sandbox(&self, id: u64, name: String) {
        let mut inner = self.0.write().expect("labels lock");
        inner.retired.retain(|r| *r != id);
        inner.sandboxes.insert(id, name);
    }

    /// The sandbox was detached: its identity goes now, its name once `MAX_RETIRED` others
    /// were detached after it.
    pub fn retire_sandbox(&self, id: u64) {
        let mut inner = self.0.write().expect("labels lock");
        inner.identities.remove(&id);
        if inner.retired.contains(&id) {
            return;
        }
        inner.retired.push_back(id);
        while inner.retired.len() > MAX_RETIRED {
            if let Some(old) = inner.retired.pop_front() {
                inner.sandboxes.remove(&old);
            }
        }
    }

    pub fn sandbox(&self, id: u64) -> Option<String> {
        self.0.read().expect("labels lock").sandboxes.get(&id).cloned()
    }

    /// What the cgroup with this id is (an empty identity: forget it).
    pub fn set_identity(&self, cgroup_id: u64, identity: Identity) {
        let mut inner = self.0.write().expect("labels lock");
        if identity.is_empty() {
            inner.identities.remove(&cgroup_id);
        } else {
            inner.identities.insert(cgroup_id, identity);
        }
    }

    /// What an attempt came from: the process's cgroup, else its sandbox.
    pub fn identity(&self, cgroup_id: u64, sandbox_id: u64) -> Identity {
        let inner = self.0.read().expect("labels lock");
        inner
            .identities
            .get(&cgroup_id)
            .or_else(|| inner.identities.get(&sandbox_id))
            .cloned()
            .unwrap_or_default()
    }

    /// Remember that `ip` belongs to `name` (the latest name wins for shared addresses). Kept
    /// after the address stops being allowed: a blocked attempt to it is still worth naming.
    pub fn set_domain(&self, ip: IpAddr, name: &str) {
        let mut inner = self.0.write().expect("labels lock");
        if inner.domains.get(&ip).is_some_and(|n| n == name) {
            return;
        }
        if inner.domains.insert(ip, name.to_owned()).is_none() {
            inner.order.push_back(ip);
            if inner.order.len() > MAX_DOMAINS
                && let Some(old) = inner.order.pop_front()
            {
                inner.domains.remove(&old);
            }
        }
    }

    pub fn domain(&self, ip: IpAddr) -> Option<String> {
        self.0.read().expect("labels lock").domains.get(&ip).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_bounded_and_latest_wins() {
        let l = Labels::default();
        let ip = |n: u32| IpAddr::from(n.to_be_bytes());
        l.set_domain(ip(1), "a.test");
        l.set_domain(ip(1), "b.test");
        assert_eq!(l.domain(ip(1)).as_deref(), Some("b.test"));
        for n in 2..=(MAX_DOMAINS as u32 + 1) {
            l.set_domain(ip(n), "c.test");
        }
        assert_eq!(l.domain(ip(1)), None, "the oldest is forgotten");
        assert_eq!(l.domain(ip(2)).as_deref(), Some("c.test"));
        l.set_sandbox(7, "/sys/fs/cgroup/x".into());
        assert_eq!(l.sandbox(7).as_deref(), Some("/sys/fs/cgroup/x"));
    }

    #[test]
    fn names_of_detached_sandboxes_are_kept_for_a_while_not_for_ever() {
        let l = Labels::default();
        for id in 0..(MAX_RETIRED as u64 + 10) {
            l.set_sandbox(id, format!("s{id}"));
            l.retire_sandbox(id);
        }
        assert_eq!(l.sandbox(0), None, "the oldest detached name is forgotten");
        assert_eq!(
            l.sandbox(MAX_RETIRED as u64 + 9).as_deref(),
            Some(&*format!("s{}", MAX_RETIRED + 9))
        );
        assert!(l.0.read().expect("lock").sandboxes.len() <= MAX_RETIRED);
        // A cgroup id that is a sandbox again is not forgotten.
        l.set_sandbox(5, "again".into());
        for id in 10_000..10_000 + MAX_RETIRED as u64 {
            l.retire_sandbox(id);
        }
        assert_eq!(l.sandbox(5).as_deref(), Some("again"));
    }
}
