//! One sandbox enforced by this process (`run` and `attach`): the data path end to end.
//!
//! policy -> [`crate::policy::compile`] entries -> maps -> attach -> kernel verdicts ->
//! ring buffer -> [`crate::events`] -> sink; counters -> [`Counts`].

use std::path::{Path, PathBuf};

use netcontrol_common::abi::{
    COUNTER_ATTEMPTS, GLOBAL_EVENTS_LOST, VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY,
};

use crate::{
    bpf::{Attachment, LoadOptions, Loaded, Maps, PinRoot, log, pins},
    cgroup,
    error::Result,
    events::{EventPump, Labels, Sink},
    policy::{Compiled, Entries},
    privileges,
};

/// This process's program set serves one sandbox, so one policy id.
const POLICY_ID: u32 = 1;

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub load: LoadOptions,
    /// Pin links under this root so that enforcement outlives this process (fail closed).
    /// None keeps them only as file descriptors: they detach when the process exits.
    pub pin_root: Option<PathBuf>,
}

/// Attempts by verdict, as the kernel counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub allowed: u64,
    pub blocked: u64,
    pub would_block: u64,
    pub events_lost: u64,
}

pub struct Enforcer {
    // Field order is drop order: detach before the programs and maps go.
    attachment: Option<Attachment>,
    pump: Option<EventPump>,
    _bpf_log: Option<log::Forwarder>,
    maps: Maps,
    _loaded: Loaded,
    cgroup: PathBuf,
    sandbox_id: u64,
    /// What the maps hold now.
    current: Compiled,
}

impl Enforcer {
    /// Load the programs, fill the maps with `policy` and attach to `cgroup_path`. Events name
    /// sandboxes and domains through `labels`.
    pub fn start(
        cgroup_path: &Path,
        policy: Compiled,
        sink: Sink,
        labels: Labels,
        opts: &Options,
    ) -> Result<Self> {
        privileges::check()?;
        let mount = cgroup::mount_point()?;
        let cgroup = cgroup::validate(cgroup_path)?;
        let sandbox_id = cgroup::id(&cgroup)?;
        let pins = opts.pin_root.as_deref().map(PinRoot::open).transpose()?;
        let adopted = pins
            .as_ref()
            .map(|p| pins::collect_garbage(p, &mount, Some(sandbox_id)))
            .unwrap_or_default();

        let mut loaded = Loaded::new(&opts.load)?;
        let (mut maps, ring) = Maps::take(&mut loaded.ebpf)?;
        // The maps are complete before the first program runs for this cgroup.
        maps.apply_entries(POLICY_ID, &Entries::default(), &policy.entries)?;
        maps.set_sandbox(sandbox_id, policy.sandbox_value(POLICY_ID))?;
        labels.set_sandbox(sandbox_id, cgroup.display().to_string());
        let pump = EventPump::start(ring, sink, labels)?;
        let bpf_log = loaded.logger.take().map(log::Forwarder::start).transpose()?;

        let pin_dir = pins.as_ref().map(|p| p.standalone_dir(sandbox_id, pins::Owner::current()));
        let attachment = Attachment::attach(&mut loaded.ebpf, &cgroup, pin_dir.as_deref())?;
        // Ours are in place: now remove a dead predecessor's links (make before break).
        for orphan in adopted {
            tracing::info!(
                "taking over {} from netcontrol pid {}",
                cgroup.display(),
                orphan.owner.pid
            );
            pins::remove_dir(&orphan.dir)?;
        }
        Ok(Self {
            attachment: Some(attachment),
            pump: Some(pump),
            _bpf_log: bpf_log,
            maps,
            _loaded: loaded,
            cgroup,
            sandbox_id,
            current: policy,
        })
    }

    /// Move the maps to a new policy: entries both allow are never interrupted (additions and
    /// changes first, removals last).
    pub fn update(&mut self, policy: Compiled) -> Result<()> {
        if policy == self.current {
            return Ok(());
        }
        self.maps.apply_entries(POLICY_ID, &self.current.entries, &policy.entries)?;
        if policy.sandbox_value(POLICY_ID) != self.current.sandbox_value(POLICY_ID) {
            self.maps.set_sandbox(self.sandbox_id, policy.sandbox_value(POLICY_ID))?;
        }
        self.current = policy;
        Ok(())
    }

    /// Allow entries in the maps now.
    pub fn entries(&self) -> usize {
        self.current.entries.len()
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn sandbox_id(&self) -> u64 {
        self.sandbox_id
    }

    /// What the kernel has counted so far.
    pub fn counts(&self) -> Result<Counts> {
        let mut c = Counts::default();
        // The program set is this process's alone: every counter is this sandbox's.
        for (k, n) in self.maps.stats()? {
            if k.counter != COUNTER_ATTEMPTS {
                continue;
            }
            match k.verdict {
                VERDICT_ALLOW => c.allowed += n,
                VERDICT_DENY => c.blocked += n,
                VERDICT_AUDIT => c.would_block += n,
                _ => {}
            }
        }
        c.events_lost = self.maps.global()?[GLOBAL_EVENTS_LOST as usize];
        Ok(c)
    }

    /// Detach, deliver every queued event, and return the final counts and the sink.
    pub async fn stop(mut self) -> Result<(Counts, Sink)> {
        if let Some(a) = self.attachment.take() {
            a.detach()?;
        }
        let sink = match self.pump.take() {
            Some(p) => p.finish().await?,
            None => Sink::new(None, false)?,
        };
        Ok((self.counts()?, sink))
    }
}
