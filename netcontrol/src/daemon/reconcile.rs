//! One step from what the sources want to what the supervisor does. Every source (the
//! configuration file, the control socket's attaches, Docker's containers, the node's pods)
//! says which sandboxes it wants ([`Wanted`]); [`reconcile`] compares them with the sandboxes
//! there are ([`Have`]) and returns the [`Action`]s that bring the one in line with the other.
//! It is pure: which change keeps a sandbox (and its links: no gap), which starts it anew and
//! which removes it is decided here and unit-tested without a kernel.

use std::{collections::BTreeMap, path::PathBuf};

use super::supervisor::Origin;
use crate::{docker::Container, kubernetes::Pod, policy::Policy};

/// What identifies a wanted sandbox across changes: its name for the configuration and the
/// control socket, the container's id, the pod's uid.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Config(String),
    Control(String),
    Container(String),
    Pod(String),
}

/// A sandbox a source wants.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub key: Key,
    /// How status, metrics and events name it.
    pub name: String,
    /// As configured: absolute, or relative to the cgroup2 mount.
    pub cgroup: PathBuf,
    /// Which source, and with it the link mode (a container under a cgroup sandbox has no
    /// links of its own).
    pub origin: Origin,
    /// Create the cgroup if it is missing.
    pub create: bool,
    pub policy_name: String,
    pub policy: std::sync::Arc<Policy>,
    /// The policy name resolves to nothing (where it came from): `policy` is deny-all.
    pub policy_missing: Option<String>,
    pub container: Option<Container>,
    pub pod: Option<Pod>,
}

/// A sandbox there is, as far as reconciling is concerned.
#[derive(Clone, Copy, Debug)]
pub struct Have<'a> {
    pub key: &'a Key,
    pub name: &'a str,
    pub cgroup: &'a std::path::Path,
    pub origin: &'a Origin,
    pub policy_name: &'a str,
    pub policy: &'a Policy,
    pub policy_missing: Option<&'a str>,
    pub container: Option<&'a Container>,
    pub pod: Option<&'a Pod>,
}

#[derive(Debug, PartialEq)]
pub enum Action {
    /// Nobody wants it any more: detach it.
    Remove(String),
    /// A new sandbox.
    Add(Wanted),
    /// Another cgroup or another kind of sandbox under the same key: the old one goes (its
    /// name is `.0`), the new one is started.
    Replace(String, Wanted),
    /// Its cgroup is wanted under another key or name (a renamed entry, a cgroup moved from
    /// one entry to another, a configured sandbox also attached through the control socket):
    /// the sandbox named `.0` becomes this one, its links staying attached, and takes its
    /// policy in place. Detaching and attaching anew would leave the cgroup open in between.
    Rename(String, Wanted),
    /// Same sandbox, another policy: applied in place, without a gap.
    SetPolicy(Wanted),
    /// Same sandbox and policy; only what names it changed (a container's or pod's record).
    Refresh(Wanted),
}

/// Whether a sandbox of this origin has links of its own (a container under a cgroup sandbox
/// is enforced by its parent's).
fn has_links(o: &Origin) -> bool {
    !matches!(o, Origin::Child { .. })
}

/// The actions that make `have` what `wanted` says: removals first (they free names and
/// cgroups), then renames, replacements and policy changes, then additions. Among wanted
/// sandboxes of the same name or key the first wins (sources are given in order of
/// precedence). A cgroup enforced now that stays wanted is never detached on the way: it is
/// what enforcement is attached to, so it is matched first, whatever key wants it.
pub fn reconcile(wanted: Vec<Wanted>, have: &[Have<'_>]) -> Vec<Action> {
    let mut by_key: BTreeMap<Key, Wanted> = BTreeMap::new();
    let mut names: BTreeMap<String, Key> = BTreeMap::new();
    for w in wanted {
        if by_key.contains_key(&w.key) || names.contains_key(&w.name) {
            continue;
        }
        names.insert(w.name.clone(), w.key.clone());
        by_key.insert(w.key.clone(), w);
    }
    let have_by_key: BTreeMap<&Key, usize> =
        have.iter().enumerate().map(|(i, h)| (h.key, i)).collect();
    let mut have_on: BTreeMap<&std::path::Path, Vec<usize>> = BTreeMap::new();
    for (i, h) in have.iter().enumerate() {
        have_on.entry(h.cgroup).or_default().push(i);
    }
    let mut claimed = vec![false; have.len()];
    let mut matched: Vec<(usize, Wanted)> = Vec::new();
    // First each key's own sandbox, where it stays on its cgroup; then, for the rest, a
    // sandbox of another key on the cgroup (with links as this one has, or none as it has
    // none).
    let mut rest: Vec<Wanted> = Vec::new();
    for w in by_key.into_values() {
        match have_by_key.get(&w.key).copied().filter(|&i| have[i].cgroup == w.cgroup) {
            Some(i) => {
                claimed[i] = true;
                matched.push((i, w));
            }
            None => rest.push(w),
        }
    }
    let mut unmatched: BTreeMap<Key, Wanted> = BTreeMap::new();
    for w in rest {
        let on = have_on.get(w.cgroup.as_path()).and_then(|on| {
            on.iter()
                .copied()
                .find(|&i| !claimed[i] && has_links(have[i].origin) == has_links(&w.origin))
        });
        match on {
            Some(i) => {
                claimed[i] = true;
                matched.push((i, w));
            }
            None => {
                unmatched.insert(w.key.clone(), w);
            }
        }
    }
    let (mut removals, mut changes) = (Vec::new(), Vec::new());
    for (i, w) in matched {
        let h = &have[i];
        if *h.key != w.key || h.name != w.name || *h.origin != w.origin {
            if has_links(h.origin) == has_links(&w.origin) {
                changes.push(Action::Rename(h.name.to_owned(), w));
            } else {
                changes.push(Action::Replace(h.name.to_owned(), w));
            }
        } else if w.policy_name != h.policy_name
            || !(std::ptr::eq(&*w.policy, h.policy) || *w.policy == *h.policy)
            || w.policy_missing.as_deref() != h.policy_missing
        {
            changes.push(Action::SetPolicy(w));
        } else if w.container.as_ref() != h.container || w.pod.as_ref() != h.pod {
            changes.push(Action::Refresh(w));
        }
    }
    for (i, h) in have.iter().enumerate() {
        if claimed[i] {
            continue;
        }
        match unmatched.remove(h.key) {
            // Its key is wanted on another cgroup, which no sandbox holds.
            Some(w) => changes.push(Action::Replace(h.name.to_owned(), w)),
            None => removals.push(Action::Remove(h.name.to_owned())),
        }
    }
    // Every sandbox there is was removed, replaced, renamed or kept under the name it is
    // wanted by, and wanted names are unique: what is left can be added.
    let additions = unmatched.into_values().map(Action::Add);
    removals.into_iter().chain(changes).chain(additions).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &str) -> Policy {
        crate::policy::file::parse(&format!("allow: [{allow}]\n"), std::path::Path::new("p"))
            .expect("policy")
    }

    fn config(name: &str, cgroup: &str, allow: &str) -> Wanted {
        Wanted {
            key: Key::Config(name.into()),
            name: name.into(),
            cgroup: cgroup.into(),
            origin: Origin::Config,
            create: false,
            policy_name: "p".into(),
            policy: policy(allow).into(),
            policy_missing: None,
            container: None,
            pod: None,
        }
    }

    fn have(w: &Wanted) -> Have<'_> {
        Have {
            key: &w.key,
            name: &w.name,
            cgroup: &w.cgroup,
            origin: &w.origin,
            policy_name: &w.policy_name,
            policy: &w.policy,
            policy_missing: w.policy_missing.as_deref(),
            container: w.container.as_ref(),
            pod: w.pod.as_ref(),
        }
    }

    #[test]
    fn nothing_changes_what_is_as_wanted() {
        let a = config("a", "ci/a", "10.0.0.1");
        assert_eq!(reconcile(vec![a.clone()], &[have(&a)]), vec![]);
    }

    #[test]
    fn new_sandboxes_are_added_and_unwanted_ones_removed_first() {
        let (a, b) = (config("a", "ci/a", "10.0.0.1"), config("b", "ci/b", "10.0.0.1"));
        assert_eq!(
            reconcile(vec![b.clone()], &[have(&a)]),
            vec![Action::Remove("a".into()), Action::Add(b)]
        );
    }

    #[test]
    fn another_policy_is_applied_in_place_another_cgroup_is_a_new_sandbox() {
        let a = config("a", "ci/a", "10.0.0.1");
        let repolicied = Wanted { policy: policy("10.0.0.2").into(), ..a.clone() };
        assert_eq!(
            reconcile(vec![repolicied.clone()], &[have(&a)]),
            vec![Action::SetPolicy(repolicied)]
        );
        let renamed = Wanted { policy_name: "q".into(), ..a.clone() };
        assert_eq!(reconcile(vec![renamed.clone()], &[have(&a)]), vec![Action::SetPolicy(renamed)]);
        let missing = Wanted { policy_missing: Some("a label".into()), ..a.clone() };
        assert_eq!(reconcile(vec![missing.clone()], &[have(&a)]), vec![Action::SetPolicy(missing)]);
        let moved = Wanted { cgroup: "ci/other".into(), ..a.clone() };
        assert_eq!(
            reconcile(vec![moved.clone()], &[have(&a)]),
            vec![Action::Replace("a".into(), moved)]
        );
    }

    #[test]
    fn a_cgroup_that_stays_wanted_is_never_detached_whoever_wants_it() {
        // A renamed entry: the sandbox is renamed, its links stay.
        let a = config("a", "ci/a", "10.0.0.1");
        let b = config("b", "ci/a", "10.0.0.2");
        assert_eq!(reconcile(vec![b.clone()], &[have(&a)]), vec![Action::Rename("a".into(), b)]);
        // Cgroups shifted along the entries: only the cgroup nobody wants is detached, the
        // entry whose cgroup is new is added.
        let (s0, s1) = (config("s0", "c0", "10.0.0.1"), config("s1", "c1", "10.0.0.1"));
        let (s0_to_c1, s1_to_c2) = (config("s0", "c1", "10.0.0.1"), config("s1", "c2", "10.0.0.1"));
        assert_eq!(
            reconcile(vec![s0_to_c1.clone(), s1_to_c2.clone()], &[have(&s0), have(&s1)]),
            vec![
                Action::Remove("s0".into()),
                Action::Rename("s1".into(), s0_to_c1),
                Action::Add(s1_to_c2)
            ]
        );
        // Two entries swap cgroups: both are renamed.
        let (s0_to_c1, s1_to_c0) = (config("s0", "c1", "10.0.0.1"), config("s1", "c0", "10.0.0.1"));
        assert_eq!(
            reconcile(vec![s0_to_c1.clone(), s1_to_c0.clone()], &[have(&s0), have(&s1)]),
            vec![Action::Rename("s1".into(), s0_to_c1), Action::Rename("s0".into(), s1_to_c0)]
        );
        // A configured sandbox dropped from the file while attached through the control
        // socket: it moves to the other source.
        let attached = Wanted {
            key: Key::Control("a".into()),
            origin: Origin::Control(super::super::control::PolicyRef::Named("p".into())),
            ..a.clone()
        };
        assert_eq!(
            reconcile(vec![attached.clone()], &[have(&a)]),
            vec![Action::Rename("a".into(), attached)]
        );
    }

    #[test]
    fn a_container_that_becomes_another_kind_of_sandbox_is_replaced() {
        let child = Wanted {
            key: Key::Container("c1".into()),
            origin: Origin::Child { parent: "ci".into() },
            ..config("web", "ci/docker/c1", "10.0.0.1")
        };
        let selected = Wanted { origin: Origin::Container { rule: "web".into() }, ..child.clone() };
        assert_eq!(
            reconcile(vec![selected.clone()], &[have(&child)]),
            vec![Action::Replace("web".into(), selected)]
        );
    }

    #[test]
    fn a_changed_record_is_refreshed_without_touching_the_sandbox() {
        let pod = |labels: &[(&str, &str)]| Pod {
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "p".into(),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            qos: crate::kubernetes::Qos::BestEffort,
            finished: false,
        };
        let before = Wanted {
            key: Key::Pod("u1".into()),
            origin: Origin::Pod,
            pod: Some(pod(&[])),
            ..config("ns/p", "kubepods/u1", "10.0.0.1")
        };
        let after = Wanted { pod: Some(pod(&[("team", "a")])), ..before.clone() };
        assert_eq!(reconcile(vec![after.clone()], &[have(&before)]), vec![Action::Refresh(after)]);
    }

    #[test]
    fn of_two_sandboxes_of_one_name_the_first_source_wins() {
        let from_config = config("job", "ci/a", "10.0.0.1");
        let attached = Wanted {
            key: Key::Control("job".into()),
            origin: Origin::Control(super::super::control::PolicyRef::Named("p".into())),
            ..config("job", "ci/b", "10.0.0.1")
        };
        assert_eq!(
            reconcile(vec![from_config.clone(), attached], &[]),
            vec![Action::Add(from_config)]
        );
    }

    #[test]
    fn a_name_still_in_use_waits_until_it_is_free() {
        let old = Wanted { key: Key::Container("c1".into()), ..config("web", "d/c1", "10.0.0.1") };
        let new = Wanted { key: Key::Container("c2".into()), ..config("web", "d/c2", "10.0.0.1") };
        // c1 is still wanted under the name: c2 is not added over it.
        assert_eq!(reconcile(vec![old.clone(), new.clone()], &[have(&old)]), vec![]);
        // c1 is gone: its name is free in the same step.
        assert_eq!(
            reconcile(vec![new.clone()], &[have(&old)]),
            vec![Action::Remove("web".into()), Action::Add(new)]
        );
    }
}
