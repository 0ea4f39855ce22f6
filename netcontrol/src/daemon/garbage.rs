//! Removing what earlier runs left behind and nobody wants now.

use std::collections::BTreeSet;

use super::supervisor::{State, Supervisor};
use crate::{bpf::pins, cgroup};

impl Supervisor {
    /// Remove what earlier runs left behind and nobody wants now: links of cgroups that are
    /// gone or not configured, their sandbox entries, their policies' entries. Until Docker's
    /// running containers are known, a cgroup that still exists is kept (it may be one).
    pub(super) fn collect_garbage(&mut self) {
        let mut keep: BTreeSet<u64> = BTreeSet::new();
        for slot in self.slots.values() {
            match &slot.state {
                State::Enforcing(s) => {
                    keep.insert(s.enforcer().sandbox_id());
                }
                // A wanted cgroup that failed to start keeps what enforced it before (fail
                // closed) until an attach succeeds.
                State::Waiting { .. } => {
                    if let Ok(id) = cgroup::id(&self.resolve(&slot.cgroup)) {
                        keep.insert(id);
                    }
                }
            }
        }
        if !(self.docker_synced && self.pods_synced) {
            keep.extend(
                self.root
                    .daemon_link_dirs()
                    .into_iter()
                    .map(|(id, _)| id)
                    .chain(
                        self.dp
                            .maps_ref()
                            .sandboxes()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(id, _)| id),
                    )
                    .filter(|id| cgroup::path_by_id(&self.mount, *id).is_some()),
            );
        }
        for (id, dir) in self.root.daemon_link_dirs() {
            if keep.contains(&id) {
                continue;
            }
            let what = match cgroup::path_by_id(&self.mount, id) {
                Some(p) => format!("{} (no longer configured)", p.display()),
                None => format!("cgroup {id} (gone)"),
            };
            match pins::remove_dir(&dir) {
                Ok(()) => tracing::info!("removed the pinned links of {what}"),
                Err(e) => tracing::warn!("removing the pinned links of {what}: {e}"),
            }
        }
        if let Ok(entries) = self.dp.maps_ref().sandboxes() {
            for (id, _) in entries.into_iter().filter(|(id, _)| !keep.contains(id)) {
                if let Err(e) =
                    self.dp.maps().remove_sandbox(id).and_then(|()| self.dp.maps().remove_stats(id))
                {
                    tracing::warn!("{e}");
                }
            }
        }
        self.ids.retain(|id, _| keep.contains(id));
        let policies: BTreeSet<u32> = self.ids.values().copied().collect();
        match self.dp.maps().purge_policies(&policies) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} allow entries of sandboxes that are gone"),
            Err(e) => tracing::warn!("{e}"),
        }
        let _ = pins::collect_garbage(&self.root, &self.mount, None);
    }
}
