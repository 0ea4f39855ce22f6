//! Sandboxes follow their cgroups: made, removed, made anew at the same path, given their
//! first process. The kernel says so through inotify (cgroup/watch.rs); only cgroups that
//! cannot be watched are looked at each second, and a small slice of all of them as a
//! backstop, so that an idle daemon of thousands of sandboxes makes few syscalls.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use super::supervisor::{Origin, State, Supervisor};
use crate::cgroup::{
    self,
    watch::{CgroupWatch, Seen},
};

/// Sandboxes whose cgroup the tick looks at whether or not an event came (each of N every
/// N / BACKSTOP_PER_TICK seconds), in case the kernel's events did not cover a change.
const BACKSTOP_PER_TICK: usize = 64;

impl Supervisor {
    /// Watch the cgroups the sandboxes need watched now; those that cannot be are looked at
    /// each tick.
    pub(super) fn sync_watches(&mut self, w: &mut CgroupWatch) {
        let paths: Vec<(PathBuf, bool)> = self
            .slots
            .values()
            .map(|slot| match &slot.state {
                State::Enforcing(s) => (s.enforcer().cgroup().to_owned(), s.netns_pending()),
                State::Waiting { .. } => (self.resolve(&slot.cgroup), false),
            })
            .collect();
        let parents: Vec<&Path> = paths.iter().map(|(p, _)| p.as_path()).collect();
        let populated: Vec<&Path> =
            paths.iter().filter(|(_, pending)| *pending).map(|(p, _)| p.as_path()).collect();
        self.polled = w.set(&parents, &populated);
    }

    /// What the cgroup events said: look at those cgroups now (all of them after an
    /// overflow).
    pub async fn cgroups_changed(&mut self, seen: Seen, w: &mut CgroupWatch) {
        if seen.overflow {
            tracing::info!("cgroup events were lost: looking at every sandbox's cgroup");
            self.look_at(&|_| true).await;
        } else {
            self.look_at(&|p| seen.paths.contains(p)).await;
        }
        self.publish_and_watch_if_changed(w);
    }

    /// The tick's share: cgroups that are not watched, and the backstop's slice.
    pub(super) async fn look_at_unwatched(&mut self) {
        let n = self.slots.len();
        let start = if n == 0 { 0 } else { self.backstop_cursor % n };
        self.backstop_cursor = start + BACKSTOP_PER_TICK;
        let mut names: Vec<String> =
            self.slots.keys().cycle().skip(start).take(BACKSTOP_PER_TICK.min(n)).cloned().collect();
        if !self.polled.is_empty() {
            names.extend(self.names_of(&|p| self.polled.contains(p)));
        }
        self.look_at_names(names).await;
    }

    /// The sandboxes whose cgroup `pred` picks.
    fn names_of(&self, pred: &dyn Fn(&Path) -> bool) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, slot)| match &slot.state {
                State::Enforcing(s) => pred(s.enforcer().cgroup()),
                State::Waiting { .. } => pred(&self.resolve(&slot.cgroup)),
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// For the sandboxes of cgroups `looked_at` says changed: see `look_at_names`.
    pub(super) async fn look_at(&mut self, looked_at: &dyn Fn(&Path) -> bool) {
        let names = self.names_of(looked_at);
        self.look_at_names(names).await;
    }

    /// For these sandboxes: let go of those whose cgroup is gone (or another one now), start
    /// the waiting ones that exist now, and move the DNS proxy of those that got their first
    /// process. Besides, waiting sandboxes whose retry is due start, and proxies whose
    /// placement failed are tried again when due.
    async fn look_at_names(&mut self, mut names: Vec<String>) {
        names.sort_unstable();
        names.dedup();
        let gone: Vec<String> = names
            .iter()
            .filter(|name| {
                matches!(self.slots.get(*name).map(|s| &s.state), Some(State::Enforcing(s))
                    if cgroup::id(s.enforcer().cgroup()).ok() != Some(s.enforcer().sandbox_id()))
            })
            .cloned()
            .collect();
        self.let_go(gone);
        // After letting go: a cgroup made anew at the same path is enforced again at once.
        // An event does not cut short the backoff of a failed attach.
        let now = Instant::now();
        let due: Vec<String> = self
            .slots
            .iter()
            .filter(|(name, slot)| match &slot.state {
                State::Waiting { next_try, failed, .. } => {
                    *next_try <= now || (!failed && names.binary_search(name).is_ok())
                }
                State::Enforcing(_) => false,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.try_start(&name).await;
        }
        // Sandboxes attached before their first process (pods): their DNS proxy moves into
        // the processes' network namespace once there are some.
        let dp = &mut self.dp;
        for (name, slot) in &mut self.slots {
            if let State::Enforcing(s) = &mut slot.state
                && s.netns_pending()
                && (s.placement_failed() || names.binary_search(name).is_ok())
                && let Err(e) = s.settle_netns(dp)
            {
                tracing::warn!(sandbox = name.as_str(), "{e}");
            }
        }
    }

    /// Stop the sandboxes whose cgroup went; those of a source that names cgroups by what
    /// runs in them (control attaches, containers) go with it.
    fn let_go(&mut self, gone: Vec<String>) {
        for name in gone {
            tracing::info!(sandbox = name.as_str(), "its cgroup is gone");
            if let Err(e) = self.stop(&name) {
                tracing::warn!(sandbox = name.as_str(), "{e}");
            }
            match self.slots.get(&name).map(|s| &s.origin) {
                Some(Origin::Control(_)) => {
                    self.slots.remove(&name);
                    self.attached.retain(|a| a.name != name);
                    self.save_runtime();
                }
                // A container's next start is a new sandbox (Docker says when).
                Some(Origin::Container { .. } | Origin::Child { .. }) => {
                    self.slots.remove(&name);
                }
                _ => {}
            }
        }
    }
}
