//! The policies sandboxes name, kept apart from where they are defined (today the
//! configuration file's `policies:` and `policy_files`; Kubernetes objects next). Sources of
//! sandboxes refer to a policy by name; the store hands out shared copies, keeps the copy of
//! a policy that did not change (so that a reload compares thousands of sandboxes' policies
//! by pointer), and tells watchers when anything changed.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, LazyLock},
};

use tokio::sync::watch;

use crate::policy::Policy;

pub struct Policies {
    by_name: BTreeMap<String, Arc<Policy>>,
    /// Bumped on each change.
    generation: watch::Sender<u64>,
}

static DENY_ALL: LazyLock<Arc<Policy>> = LazyLock::new(|| Arc::new(Policy::deny_all()));

impl Policies {
    pub fn new(policies: BTreeMap<String, Policy>) -> Self {
        let by_name = policies.into_iter().map(|(n, p)| (n, Arc::new(p))).collect();
        Self { by_name, generation: watch::Sender::new(0) }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Policy>> {
        self.by_name.get(name)
    }

    /// What a sandbox gets whose policy name resolves to nothing.
    pub fn deny_all() -> Arc<Policy> {
        DENY_ALL.clone()
    }

    /// The names defined, for messages ("a, b, c").
    pub fn names(&self) -> String {
        self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Make the store hold exactly `policies`. A policy equal to the one held keeps the held
    /// copy. Returns the names that changed (new, changed or gone); watchers are told if any.
    pub fn replace(&mut self, policies: BTreeMap<String, Policy>) -> BTreeSet<String> {
        let mut changed: BTreeSet<String> =
            self.by_name.keys().filter(|n| !policies.contains_key(*n)).cloned().collect();
        let mut next = BTreeMap::new();
        for (name, p) in policies {
            let held = self.by_name.get(&name).filter(|h| ***h == p).cloned();
            let p = held.unwrap_or_else(|| {
                changed.insert(name.clone());
                Arc::new(p)
            });
            next.insert(name, p);
        }
        self.by_name = next;
        if !changed.is_empty() {
            self.generation.send_modify(|g| *g += 1);
        }
        changed
    }

    /// Which change the store is at.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// A receiver that wakes on each change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &str) -> Policy {
        crate::policy::file::parse(&format!("allow: [{allow}]\n"), std::path::Path::new("p"))
            .expect("policy")
    }

    #[test]
    fn unchanged_policies_keep_their_copy_and_changes_are_named() {
        let mut store = Policies::new(BTreeMap::from([
            ("a".to_owned(), policy("10.0.0.1")),
            ("b".to_owned(), policy("10.0.0.2")),
        ]));
        let (a, b) = (store.get("a").cloned().expect("a"), store.get("b").cloned().expect("b"));
        let mut rx = store.subscribe();
        let changed = store.replace(BTreeMap::from([
            ("a".to_owned(), policy("10.0.0.1")),
            ("b".to_owned(), policy("10.0.0.3")),
            ("c".to_owned(), policy("10.0.0.4")),
        ]));
        assert_eq!(changed, BTreeSet::from(["b".to_owned(), "c".to_owned()]));
        assert!(
            Arc::ptr_eq(&a, store.get("a").expect("a")),
            "an unchanged policy is the same copy"
        );
        assert!(!Arc::ptr_eq(&b, store.get("b").expect("b")));
        assert!(rx.has_changed().expect("open"));
        rx.mark_unchanged();
        assert_eq!(store.generation(), 1);
        let gone = store.replace(BTreeMap::from([("a".to_owned(), policy("10.0.0.1"))]));
        assert_eq!(gone, BTreeSet::from(["b".to_owned(), "c".to_owned()]));
        assert_eq!(store.names(), "a");
        // No change, no wake-up.
        assert!(store.replace(BTreeMap::from([("a".to_owned(), policy("10.0.0.1"))])).is_empty());
        assert_eq!(store.generation(), 2);
    }
}
