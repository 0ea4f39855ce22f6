//! One sandbox's kernel side: its cgroup's links, its entry in the sandbox table, and its
//! policy's entries in the allow tries, on a [`Datapath`] that may serve other sandboxes too.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use netcontrol_common::abi::{AllowValue, LISTEN_POLICY_BIT};

use crate::{
    bpf::{Attachment, PinRoot, attach::Fds, hooks::Scope, maps::HostWriter, pins},
    cgroup,
    datapath::{Counts, Datapath},
    error::Result,
    policy::{Compiled, Entries},
};

/// Where a sandbox's links are pinned.
#[derive(Clone, Debug)]
pub enum LinkPins {
    /// Not pinned: they detach when the process exits.
    None,
    /// `run` / `attach`: under the process's own directory (its owner recorded), collected by
    /// a later netcontrol if this one dies.
    Standalone(PinRoot),
    /// The daemon: under the cgroup's id, re-adopted when the daemon restarts. (The global
    /// hooks are the daemon's own, attached once for all sandboxes.)
    Daemon(PinRoot),
    /// No links of its own: an ancestor cgroup's links enforce, this sandbox's entry gives its
    /// processes their own policy (a container under an enforced parent cgroup).
    Inherited,
}

pub struct Enforcer {
    attachment: Option<Attachment>,
    cgroup: PathBuf,
    sandbox_id: u64,
    policy_id: u32,
    /// What the maps hold for this sandbox now, shared with its DNS learner ([`Hosts`]).
    held: Arc<Mutex<Held>>,
    hosts: Arc<HostWriter>,
}

/// What the maps hold for one sandbox.
struct Held {
    compiled: Compiled,
    /// A single-address write failed: the maps may differ from `compiled`, which is read
    /// back before the next change.
    stale: bool,
}

impl std::ops::Deref for Held {
    type Target = Compiled;
    fn deref(&self) -> &Compiled {
        &self.compiled
    }
}

fn lock(m: &Mutex<Held>) -> MutexGuard<'_, Held> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes of single addresses into one sandbox's entries, for its DNS learner: they do not
/// wait for the sandbox's owner, and stay consistent with what the owner diffs against.
#[derive(Clone)]
pub struct Hosts {
    held: Arc<Mutex<Held>>,
    writer: Arc<HostWriter>,
    policy_id: u32,
}

impl Hosts {
    /// Set the entry of one address, or remove it with None.
    pub fn set(&self, ip: IpAddr, value: Option<AllowValue>) -> Result<()> {
        let mut held = lock(&self.held);
        let entries = &mut held.compiled.entries;
        let current = match ip {
            IpAddr::V4(a) => entries.v4.get(&(32, a.octets())),
            IpAddr::V6(a) => entries.v6.get(&(128, a.octets())),
        };
        if current == value.as_ref() {
            return Ok(());
        }
        if let Err(e) = self.writer.put(self.policy_id, ip, value.as_ref()) {
            held.stale = true;
            return Err(e);
        }
        match (ip, value) {
            (IpAddr::V4(a), Some(v)) => drop(entries.v4.insert((32, a.octets()), v)),
            (IpAddr::V6(a), Some(v)) => drop(entries.v6.insert((128, a.octets()), v)),
            (IpAddr::V4(a), None) => drop(entries.v4.remove(&(32, a.octets()))),
            (IpAddr::V6(a), None) => drop(entries.v6.remove(&(128, a.octets()))),
        }
        Ok(())
    }
}

impl Enforcer {
    /// Fill the maps with `policy` (under `policy_id`) and attach to `cgroup`, a validated
    /// cgroup v2 directory whose id is `sandbox_id`. Entries the pinned maps already hold for
    /// `policy_id` (a restarted daemon) are brought in line, not duplicated.
    pub fn attach(
        dp: &mut Datapath,
        cgroup: &Path,
        sandbox_id: u64,
        policy_id: u32,
        policy: Compiled,
        link_pins: &LinkPins,
    ) -> Result<Self> {
        let listen_id = policy_id | LISTEN_POLICY_BIT;
        // What a previous start left under this policy id (a restarted daemon, a sandbox
        // started anew under its pins, a failed start): updated in place, leftovers removed.
        let (before, before_listen) = match link_pins {
            LinkPins::Daemon(_) | LinkPins::Inherited => {
                (dp.maps_ref().entries_of(policy_id)?, dp.maps_ref().entries_of(listen_id)?)
            }
            LinkPins::None | LinkPins::Standalone(_) => (Entries::default(), Entries::default()),
        };
        // The maps are complete before the first program runs for this cgroup.
        dp.maps().apply_entries(policy_id, &before, &policy.entries)?;
        dp.maps().apply_entries(listen_id, &before_listen, &policy.listen)?;
        dp.maps().set_sandbox(sandbox_id, policy.sandbox_value(policy_id))?;
        let attachment = match link_pins {
            LinkPins::Inherited => None,
            LinkPins::None => Some(dp.attach(cgroup, None, Scope::CgroupAndGlobal, Fds::Held)?),
            LinkPins::Daemon(root) => Some(dp.attach(
                cgroup,
                Some(&root.daemon_links(sandbox_id)),
                Scope::Cgroup,
                Fds::Released,
            )?),
            LinkPins::Standalone(root) => {
                let adopted =
                    pins::collect_garbage(root, &cgroup::mount_point()?, Some(sandbox_id));
                let dir = root.standalone_dir(sandbox_id, pins::Owner::current());
                let attachment =
                    dp.attach(cgroup, Some(&dir), Scope::CgroupAndGlobal, Fds::Held)?;
                // Ours are in place: now remove a dead predecessor's links (make before break).
                for orphan in adopted {
                    tracing::info!(
                        "taking over {} from netcontrol pid {}",
                        cgroup.display(),
                        orphan.owner.pid
                    );
                    crate::bpf::orphan::report(&orphan, Some(cgroup));
                    pins::remove_dir(&orphan.dir)?;
                }
                Some(attachment)
            }
        };
        Ok(Self {
            attachment,
            cgroup: cgroup.to_owned(),
            sandbox_id,
            policy_id,
            held: Arc::new(Mutex::new(Held { compiled: policy, stale: false })),
            hosts: dp.hosts(),
        })
    }

    /// Move the maps to a new policy: entries both allow are never interrupted (additions and
    /// changes first, removals last).
    pub fn update(&mut self, dp: &mut Datapath, policy: Compiled) -> Result<()> {
        let mut held = lock(&self.held);
        if held.stale {
            self.resync(dp, &mut held);
        }
        if policy == held.compiled {
            return Ok(());
        }
        let applied = dp
            .maps()
            .apply_entries(self.policy_id, &held.entries, &policy.entries)
            .and_then(|()| {
                dp.maps().apply_entries(
                    self.policy_id | LISTEN_POLICY_BIT,
                    &held.listen,
                    &policy.listen,
                )
            });
        if let Err(e) = applied {
            self.resync(dp, &mut held);
            return Err(e);
        }
        let value = policy.sandbox_value(self.policy_id);
        if value != held.sandbox_value(self.policy_id) {
            dp.maps().set_sandbox(self.sandbox_id, value)?;
        }
        held.compiled = policy;
        Ok(())
    }

    /// Single-address writes into this sandbox's entries (its DNS learner).
    pub fn hosts(&self) -> Hosts {
        Hosts {
            held: Arc::clone(&self.held),
            writer: Arc::clone(&self.hosts),
            policy_id: self.policy_id,
        }
    }

    /// After a map write failed part way (a full trie), what the maps hold is no longer what
    /// `held` says: read it back, so that the next diff (and the detach) starts from the
    /// truth and no entry outlives the sandbox for a later owner of its policy id.
    fn resync(&self, dp: &Datapath, held: &mut Held) {
        let listen_id = self.policy_id | LISTEN_POLICY_BIT;
        match (dp.maps_ref().entries_of(self.policy_id), dp.maps_ref().entries_of(listen_id)) {
            (Ok(entries), Ok(listen)) => {
                held.compiled.entries = entries;
                held.compiled.listen = listen;
                held.stale = false;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("reading back the entries of policy {}: {e}", self.policy_id)
            }
        }
    }

    /// When the sandbox last connected to a DNS-learned address (CLOCK_MONOTONIC ns).
    pub fn last_use(&self, dp: &Datapath, ip: IpAddr) -> Option<u64> {
        dp.maps_ref().last_use(self.policy_id, ip)
    }

    /// How many entries the maps hold for this sandbox: IPv4, IPv6.
    pub fn entry_counts(&self) -> (usize, usize) {
        let held = lock(&self.held);
        (held.entries.v4.len(), held.entries.v6.len())
    }

    /// How many entries the maps hold for this sandbox.
    pub fn entry_count(&self) -> usize {
        let (v4, v6) = self.entry_counts();
        v4 + v6
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn sandbox_id(&self) -> u64 {
        self.sandbox_id
    }

    pub fn policy_id(&self) -> u32 {
        self.policy_id
    }

    /// Whether links were adopted from an earlier run rather than attached.
    pub fn adopted(&self) -> bool {
        self.attachment.as_ref().is_some_and(|a| a.adopted > 0)
    }

    pub fn counts(&self, dp: &Datapath) -> Result<Counts> {
        dp.counts(self.sandbox_id)
    }

    /// Detach, forget the sandbox and its entries in the maps, and return its final counts
    /// (read after the links are gone, so nothing is missed, before its counters go).
    pub fn detach(mut self, dp: &mut Datapath) -> Result<Counts> {
        if let Some(a) = self.attachment.take() {
            a.detach()?;
        }
        let counts = dp.counts(self.sandbox_id)?;
        dp.maps().remove_sandbox(self.sandbox_id)?;
        let mut held = lock(&self.held);
        if held.stale {
            self.resync(dp, &mut held);
        }
        dp.maps().apply_entries(self.policy_id, &held.entries, &Entries::default())?;
        dp.maps().apply_entries(
            self.policy_id | LISTEN_POLICY_BIT,
            &held.listen,
            &Entries::default(),
        )?;
        dp.maps().remove_stats(self.sandbox_id)?;
        Ok(counts)
    }

    /// Whether it has cgroup links of its own.
    pub fn has_links(&self) -> bool {
        self.attachment.as_ref().is_some_and(Attachment::has_cgroup_links)
    }

    /// How to ask the kernel whether the sandbox's cgroup links still enforce.
    pub fn link_check(&self) -> crate::bpf::attach::LinkCheck {
        self.attachment.as_ref().map(Attachment::link_check).unwrap_or_default()
    }

    /// Look for tampering with the sandbox's links and put it right.
    pub fn check(&mut self, dp: &mut Datapath) -> Vec<crate::bpf::attach::Tampering> {
        match &mut self.attachment {
            Some(a) => dp.check(a),
            None => Vec::new(),
        }
    }

    /// What the kernel shows of its links (reads only: see `Attachment::look`).
    pub fn look(&self) -> Option<crate::bpf::attach::Looked> {
        self.attachment.as_ref().map(Attachment::look)
    }

    /// `check`, given what `look` saw.
    pub fn check_looked(
        &mut self,
        dp: &mut Datapath,
        looked: Option<crate::bpf::attach::Looked>,
    ) -> Vec<crate::bpf::attach::Tampering> {
        match (&mut self.attachment, looked) {
            (Some(a), Some(l)) => dp.check_looked(a, l),
            (Some(a), None) => dp.check(a),
            (None, _) => Vec::new(),
        }
    }

    /// Stop managing the sandbox but leave it enforced: pinned links and map entries stay for
    /// the next run to re-adopt.
    pub fn leave_pinned(mut self) {
        if let Some(a) = self.attachment.take() {
            a.leave_pinned();
        }
    }
}
