//! Upgrades across pin ABI versions. A daemon reads and writes only its own version's tree
//! (`<root>/v<N>`); the links an older (or newer) version left keep enforcing that version's
//! last policies, and since every attached program must allow, the effective policy would be
//! the intersection: additions would never take effect. So once this daemon's own links are
//! attached (make before break), the other versions' links of the cgroups it enforces go,
//! and so do those of cgroups that are gone; a tree left with nothing is removed whole (its
//! programs and maps with it).

use std::collections::BTreeSet;

use super::supervisor::Supervisor;
use crate::{
    bpf::{PinRoot, pins},
    cgroup,
};

impl Supervisor {
    /// Take over from the pin trees of other versions (after this daemon attached its own).
    pub(super) fn retire_other_versions(&mut self) {
        // Cgroups whose links are ours now (children have none: their parent's are).
        let ours: BTreeSet<u64> = self
            .enforcing()
            .filter(|(_, s)| s.enforcer().has_links())
            .map(|(_, s)| s.enforcer().sandbox_id())
            .collect();
        for dir in self.root.other_versions() {
            let old = PinRoot::other(dir.clone());
            let mut kept = Vec::new();
            for (id, links) in old.daemon_link_dirs() {
                let gone = cgroup::path_by_id(&self.mount, id).is_none();
                if !ours.contains(&id) && !gone {
                    // Still enforced by that version only: letting go would open it.
                    kept.push(id);
                    continue;
                }
                match pins::remove_dir(&links) {
                    Ok(()) => tracing::info!(
                        "took over cgroup {id} from the pins of {} (its links removed)",
                        dir.display()
                    ),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            // The global hooks are ours now too.
            if self.global.is_some()
                && let Err(e) = pins::remove_dir(&old.daemon_global())
            {
                tracing::warn!("{e}");
            }
            if kept.is_empty() && !old.has_standalone() {
                match pins::remove_tree(&dir) {
                    Ok(()) => tracing::info!(
                        "removed {}, the pins of another netcontrol version, after taking over",
                        dir.display()
                    ),
                    Err(e) => tracing::warn!("removing {}: {e}", dir.display()),
                }
            } else if self.kept_by_other_versions.insert((dir.clone(), kept.clone())) {
                // Said once for each state of it (this runs every tick).
                tracing::warn!(
                    "{} holds pins of another netcontrol version that still enforce (cgroups {:?}{}): \
                     they keep that version's last policies until this daemon enforces those \
                     cgroups or they are gone",
                    dir.display(),
                    kept,
                    if old.has_standalone() {
                        ", and run/attach processes of that version"
                    } else {
                        ""
                    }
                );
            }
        }
    }
}
