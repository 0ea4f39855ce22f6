//! The daemon's Docker containers as a source: the running containers, kept as Docker
//! reports starts, deaths and removals (which sandbox each one is: wanted.rs).

use super::{
    reconcile::Key,
    supervisor::{State, Supervisor},
};
use crate::{
    cgroup,
    docker::{self, Lifecycle},
};

impl Supervisor {
    pub async fn docker_event(&mut self, event: Lifecycle) {
        match event {
            Lifecycle::Running(list) => {
                let first = !self.docker_synced;
                self.running = list.into_iter().map(|c| (c.id.clone(), c)).collect();
                self.docker_synced = true;
                self.converge().await;
                if first {
                    // Now it is known which pinned cgroups are containers still wanted.
                    self.collect_garbage();
                }
            }
            Lifecycle::Started(c) => {
                let key = Key::Container(c.id.clone());
                let slot = self.slots.iter().find(|(_, s)| s.key == key).map(|(n, _)| n.clone());
                if let Some(name) = slot {
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
                self.running.insert(c.id.clone(), c);
                self.converge().await;
            }
            Lifecycle::Died(id) | Lifecycle::Removed(id) => {
                self.running.remove(&id);
                self.converge().await;
            }
            Lifecycle::Unreachable(why) => {
                tracing::warn!(
                    "{why}; sandboxes stay enforced, container starts are picked up when Docker answers again"
                );
            }
        }
        self.publish();
    }
}
