//! One sandbox enforced by this process (`run` and `attach`): the data path end to end.
//!
//! policy -> [`crate::policy::compile`] entries -> maps -> attach -> kernel verdicts ->
//! ring buffer -> [`crate::events`] -> sink; counters -> [`Counts`].

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use netcontrol_common::abi::{
    AllowValue, COUNTER_ATTEMPTS, GLOBAL_EVENTS_LOST, VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY,
};

use crate::{
    bpf::{Attachment, LoadOptions, Loaded, Maps, PinRoot, log, maps::Origins, pins},
    cgroup,
    error::Result,
    events::{EventPump, Injector, Labels, Sink},
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
    /// DNS queries the proxy refused (DNS-aware mode).
    pub dns_refused: u64,
}

pub struct Enforcer {
    // Field order is drop order: detach before the programs and maps go.
    attachment: Option<Attachment>,
    pump: Option<EventPump>,
    injector: Injector,
    _bpf_log: Option<log::Forwarder>,
    maps: Maps,
    _loaded: Loaded,
    cgroup: PathBuf,
    sandbox_id: u64,
    /// What the maps hold now.
    current: Compiled,
}

/// Programs loaded and maps created, nothing attached yet: the moment to hand maps to other
/// parts (the DNS proxy reads DNS_ORIGINS) before enforcement starts.
pub struct Staged {
    loaded: Loaded,
    maps: Maps,
    origins: Option<Origins>,
    pump: EventPump,
    labels: Labels,
}

impl Staged {
    /// The map of redirected DNS queries, for the DNS proxy (once).
    pub fn take_origins(&mut self) -> Option<Origins> {
        self.origins.take()
    }

    /// Where records made in userspace (DNS decisions) join the events.
    pub fn injector(&self) -> Injector {
        self.pump.injector()
    }

    /// Fill the maps with `policy` and attach to `cgroup_path`.
    pub fn attach(self, cgroup_path: &Path, policy: Compiled, opts: &Options) -> Result<Enforcer> {
        let Self { mut loaded, mut maps, origins: _, pump, labels } = self;
        let mount = cgroup::mount_point()?;
        let cgroup = cgroup::validate(cgroup_path)?;
        let sandbox_id = cgroup::id(&cgroup)?;
        let pins = opts.pin_root.as_deref().map(PinRoot::open).transpose()?;
        let adopted = pins
            .as_ref()
            .map(|p| pins::collect_garbage(p, &mount, Some(sandbox_id)))
            .unwrap_or_default();

        // The maps are complete before the first program runs for this cgroup.
        maps.apply_entries(POLICY_ID, &Entries::default(), &policy.entries)?;
        maps.set_sandbox(sandbox_id, policy.sandbox_value(POLICY_ID))?;
        labels.set_sandbox(sandbox_id, cgroup.display().to_string());
        let injector = pump.injector();
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
        Ok(Enforcer {
            attachment: Some(attachment),
            pump: Some(pump),
            injector,
            _bpf_log: bpf_log,
            maps,
            _loaded: loaded,
            cgroup,
            sandbox_id,
            current: policy,
        })
    }
}

impl Enforcer {
    /// Load the programs, create the maps and start delivering events to `sink` (events name
    /// sandboxes and domains through `labels`).
    pub fn load(opts: &Options, sink: Sink, labels: Labels) -> Result<Staged> {
        privileges::check()?;
        let mut loaded = Loaded::new(&opts.load)?;
        let (maps, others) = Maps::take(&mut loaded.ebpf)?;
        let pump = EventPump::start(others.events, sink, labels.clone())?;
        Ok(Staged { loaded, maps, origins: others.origins, pump, labels })
    }

    /// Where records made in userspace (DNS decisions) join the events.
    pub fn injector(&self) -> Injector {
        self.injector.clone()
    }

    /// Set the entry of one address (learned from DNS), or remove it with None; the rest of the
    /// maps stay as they are.
    pub fn set_host(&mut self, ip: IpAddr, value: Option<AllowValue>) -> Result<()> {
        let current = match ip {
            IpAddr::V4(a) => self.current.entries.v4.get(&(32, a.octets())),
            IpAddr::V6(a) => self.current.entries.v6.get(&(128, a.octets())),
        };
        if current == value.as_ref() {
            return Ok(());
        }
        self.maps.put_host(POLICY_ID, ip, value.as_ref())?;
        match (ip, value) {
            (IpAddr::V4(a), Some(v)) => drop(self.current.entries.v4.insert((32, a.octets()), v)),
            (IpAddr::V6(a), Some(v)) => drop(self.current.entries.v6.insert((128, a.octets()), v)),
            (IpAddr::V4(a), None) => drop(self.current.entries.v4.remove(&(32, a.octets()))),
            (IpAddr::V6(a), None) => drop(self.current.entries.v6.remove(&(128, a.octets()))),
        }
        Ok(())
    }

    /// When the sandbox last connected to a DNS-learned address (CLOCK_MONOTONIC ns).
    pub fn last_use(&self, ip: IpAddr) -> Option<u64> {
        self.maps.last_use(POLICY_ID, ip)
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
        c.events_lost = self.maps.global()?[GLOBAL_EVENTS_LOST as usize] + self.injector.lost();
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
