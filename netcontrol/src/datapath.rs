//! The loaded programs and their maps: one set per process, serving every sandbox it enforces
//! (`run` and `attach` have one, the daemon many), and the event stream they feed.
//!
//! With a map pin directory (the daemon), the maps live on in bpffs: a restarted daemon
//! re-adopts them (after checking their layout is the one this version expects), so that
//! policies, learned addresses, counters and queued events carry over.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::maps::{MapInfo, MapType};
use netcontrol_common::abi::{
    self, AllowValue, COUNTER_ATTEMPTS, COUNTER_EVENTS_LOST, COUNTER_SUPPRESSED, DenialKey,
    DenialValue, DnsOrigin, RecentKey, SandboxValue, StatsKey, V4Key, V6Key, VERDICT_ALLOW,
    VERDICT_AUDIT, VERDICT_DENY, Window,
};

use crate::{
    bpf::{
        Attachment, LoadOptions, Loaded, Maps, PinRoot,
        attach::Fds,
        hooks::Scope,
        load::Missing,
        log,
        maps::{HostWriter, Origins},
    },
    error::{Error, Result},
    events::{EventPump, Injector, Labels, Sink},
};

/// Attempts by verdict, as the kernel counted them for one sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub allowed: u64,
    pub blocked: u64,
    pub would_block: u64,
    /// Queries sent to the DNS proxy (DNS-aware mode).
    pub redirected: u64,
    /// Denials reported nowhere (ring buffer and `DENIALS` both full).
    pub events_lost: u64,
    /// Denials without an event of their own, reported in summary records instead.
    pub summarized: u64,
    /// DNS queries the proxy refused (DNS-aware mode).
    pub dns_refused: u64,
}

impl Counts {
    /// Count `n` of what a STATS key counts.
    pub fn add(&mut self, k: &StatsKey, n: u64) {
        match (k.counter, k.verdict) {
            (COUNTER_EVENTS_LOST, _) => self.events_lost += n,
            (COUNTER_SUPPRESSED, _) => self.summarized += n,
            // Allowed socket creations are not connection attempts.
            (COUNTER_ATTEMPTS, VERDICT_ALLOW) if k.hook != abi::HOOK_SOCK_CREATE => {
                self.allowed += n
            }
            (COUNTER_ATTEMPTS, VERDICT_DENY) => self.blocked += n,
            (COUNTER_ATTEMPTS, VERDICT_AUDIT) => self.would_block += n,
            (COUNTER_ATTEMPTS, abi::VERDICT_REDIRECT) => self.redirected += n,
            _ => {}
        }
    }
}

/// A map a daemon pins, and the layout a pinned copy must have to be re-adopted.
struct Pinned {
    name: &'static str,
    kind: MapType,
    key_size: usize,
    value_size: usize,
    /// 0 for the ring buffer: its size is `--event-buffer`'s.
    max_entries: u32,
}

const LPM_KEY_PREFIX: usize = 4; // the prefix length word in front of LPM key data

const PINNED: &[Pinned] = &[
    Pinned {
        name: abi::map::SANDBOXES,
        kind: MapType::Hash,
        key_size: 8,
        value_size: size_of::<SandboxValue>(),
        max_entries: abi::SANDBOXES_MAX,
    },
    Pinned {
        name: abi::map::ALLOW_V4,
        kind: MapType::LpmTrie,
        key_size: LPM_KEY_PREFIX + size_of::<V4Key>(),
        value_size: size_of::<AllowValue>(),
        max_entries: abi::ALLOW_V4_MAX,
    },
    Pinned {
        name: abi::map::ALLOW_V6,
        kind: MapType::LpmTrie,
        key_size: LPM_KEY_PREFIX + size_of::<V6Key>(),
        value_size: size_of::<AllowValue>(),
        max_entries: abi::ALLOW_V6_MAX,
    },
    Pinned {
        name: abi::map::STATS,
        kind: MapType::PerCpuHash,
        key_size: size_of::<StatsKey>(),
        value_size: 8,
        max_entries: abi::STATS_MAX,
    },
    Pinned {
        name: abi::map::STATS_KEYS,
        kind: MapType::Hash,
        key_size: 8,
        value_size: 8,
        max_entries: abi::SANDBOXES_MAX,
    },
    Pinned {
        name: abi::map::GLOBAL,
        kind: MapType::PerCpuArray,
        key_size: 4,
        value_size: 8,
        max_entries: abi::GLOBAL_LEN,
    },
    Pinned {
        name: abi::map::EVENTS,
        kind: MapType::RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: 0,
    },
    Pinned {
        name: abi::map::DNS_ORIGINS,
        kind: MapType::LruHash,
        key_size: 8,
        value_size: size_of::<DnsOrigin>(),
        max_entries: abi::DNS_ORIGINS_MAX,
    },
    Pinned {
        name: abi::map::RECENT,
        kind: MapType::LruHash,
        key_size: size_of::<RecentKey>(),
        value_size: 8,
        max_entries: abi::RECENT_MAX,
    },
    Pinned {
        name: abi::map::DENIALS,
        kind: MapType::Hash,
        key_size: size_of::<DenialKey>(),
        value_size: size_of::<DenialValue>(),
        max_entries: abi::DENIALS_MAX,
    },
    Pinned {
        name: abi::map::DENIALS_REPORTED,
        kind: MapType::Hash,
        key_size: size_of::<DenialKey>(),
        value_size: 8,
        max_entries: abi::DENIALS_MAX,
    },
    Pinned {
        name: abi::map::BUDGET,
        kind: MapType::LruHash,
        key_size: 8,
        value_size: size_of::<Window>(),
        max_entries: abi::SANDBOXES_MAX,
    },
];

pub struct Datapath {
    // Field order is drop order: stop the readers before the maps go.
    pump: Option<EventPump>,
    injector: Injector,
    _bpf_log: Option<log::Forwarder>,
    maps: Maps,
    loaded: Loaded,
    origins: Arc<Origins>,
    hosts: Arc<HostWriter>,
    labels: Labels,
    /// The host's own addresses, which DNS answers may not open (rebinding protection).
    host: crate::rebinding::HostAddresses,
}

impl Datapath {
    /// Load the programs and create the maps — or, with `pins` (the daemon), re-adopt the
    /// programs and maps pinned there and pin what is missing — and start delivering events
    /// to `sink` (events name sandboxes and domains through `labels`).
    pub fn load(
        opts: &LoadOptions,
        pins: Option<&PinRoot>,
        sink: Sink,
        labels: Labels,
    ) -> Result<Self> {
        crate::privileges::check()?;
        let mut opts = opts.clone();
        if let Some(root) = pins {
            let dir = root.daemon_maps();
            crate::bpf::pins::create_private_dir(&dir)?;
            if let Some(why) = check_pinned(&dir, opts.events_bytes.unwrap_or(abi::EVENTS_BYTES))? {
                // Pinned maps cannot be resized: start a new set, and take over from the old
                // one once this daemon's links are attached (see daemon/upgrade.rs).
                let aside = root.set_daemon_aside()?;
                tracing::warn!(
                    "{why}: starting new maps and programs; the old ones ({}) keep enforcing \
                     until this daemon has taken over (addresses learned from DNS are learned \
                     anew)",
                    aside.display()
                );
                crate::bpf::pins::create_private_dir(&dir)?;
            }
            opts.map_pins = PINNED.iter().map(|m| (m.name, dir.join(m.name))).collect();
            opts.program_pins = Some(root.daemon_programs());
        }
        let mut loaded = Loaded::new(&opts)?;
        let (maps, others) = Maps::take(&mut loaded.ebpf)?;
        let pump = EventPump::start(others.events, others.denials, sink, labels.clone())?;
        let bpf_log = loaded.logger.take().map(log::Forwarder::start).transpose()?;
        let origins = others.origins.ok_or(Error::MissingMap(abi::map::DNS_ORIGINS))?;
        Ok(Self {
            injector: pump.injector(),
            pump: Some(pump),
            _bpf_log: bpf_log,
            maps,
            loaded,
            origins: Arc::new(origins),
            hosts: Arc::new(others.hosts),
            labels,
            host: crate::rebinding::HostAddresses::current(),
        })
    }

    /// Attach the programs of `scope` to `cgroup`, pinning the links in `pin_dir` if given.
    /// Links already pinned there (by an earlier run) are adopted, not attached again.
    pub fn attach(
        &mut self,
        cgroup: &Path,
        pin_dir: Option<&Path>,
        scope: Scope,
        fds: Fds,
    ) -> Result<Attachment> {
        Attachment::attach(&mut self.loaded, cgroup, pin_dir, scope, fds)
    }

    /// Look for tampering with an attachment, and put it right (see [`Attachment::check`]).
    pub fn check(&mut self, a: &mut Attachment) -> Vec<crate::bpf::attach::Tampering> {
        a.check(&mut self.loaded)
    }

    /// `check`, given what `Attachment::look` saw.
    pub fn check_looked(
        &mut self,
        a: &mut Attachment,
        looked: crate::bpf::attach::Looked,
    ) -> Vec<crate::bpf::attach::Tampering> {
        a.check_looked(&mut self.loaded, looked)
    }

    /// The optional hooks this kernel cannot run: what is not protected here, and why.
    pub fn missing(&self) -> &[Missing] {
        self.loaded.missing()
    }

    pub fn maps(&mut self) -> &mut Maps {
        &mut self.maps
    }

    pub fn maps_ref(&self) -> &Maps {
        &self.maps
    }

    pub fn injector(&self) -> Injector {
        self.injector.clone()
    }

    /// The kernel's record of redirected DNS queries (for the DNS proxies).
    pub fn origins(&self) -> Arc<Origins> {
        self.origins.clone()
    }

    /// Single-address writes to the allow tries (a sandbox's DNS learner).
    pub fn hosts(&self) -> Arc<HostWriter> {
        Arc::clone(&self.hosts)
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    pub fn host_addresses(&self) -> &crate::rebinding::HostAddresses {
        &self.host
    }

    /// Whether the programs were re-adopted from pins (a restarted daemon).
    pub fn programs_adopted(&self) -> bool {
        self.loaded.adopted()
    }

    /// What the kernel has counted for one sandbox so far.
    pub fn counts(&self, sandbox_id: u64) -> Result<Counts> {
        Ok(self.counts_by_sandbox()?.0.remove(&sandbox_id).unwrap_or_default())
    }

    /// Every sandbox's counts from one walk of STATS (a status of thousands of sandboxes must
    /// not walk it once each), and how many keys it holds.
    pub fn counts_by_sandbox(&self) -> Result<(HashMap<u64, Counts>, usize)> {
        let stats = self.maps.stats()?;
        let keys = stats.len();
        let mut all: HashMap<u64, Counts> = HashMap::new();
        for (k, n) in stats {
            all.entry(k.sandbox_id).or_default().add(&k, n);
        }
        Ok((all, keys))
    }

    /// Records netcontrol made itself that found the event queue full, and records the
    /// events output failed to take.
    pub fn injected_lost(&self) -> u64 {
        self.injector.lost() + self.injector.write_failed()
    }

    /// Stop reading events after delivering every queued one, and hand the sink back.
    pub async fn finish(mut self) -> Result<Sink> {
        match self.pump.take() {
            Some(p) => p.finish().await,
            None => Sink::new(None, false),
        }
    }
}

/// One line saying what this kernel does not protect (None: everything is). `covered` are
/// the hooks whose protections something else gives (a `run` command's seccomp filter).
pub fn gaps(missing: &[Missing], covered: &[&str]) -> Option<String> {
    let missing: Vec<&Missing> = missing.iter().filter(|m| !covered.contains(&m.hook)).collect();
    if missing.is_empty() {
        return None;
    }
    // What stays open, then why: hooks that fail for the same reason are named together.
    type Why<'a> = (&'a str, Vec<&'a str>);
    let mut open: Vec<(&str, Vec<Why<'_>>)> = Vec::new();
    for m in missing {
        let at = match open.iter().position(|(p, _)| *p == m.protects) {
            Some(i) => i,
            None => {
                open.push((m.protects, Vec::new()));
                open.len() - 1
            }
        };
        let whys = &mut open[at].1;
        match whys.iter_mut().find(|(why, _)| *why == m.why) {
            Some((_, hooks)) => hooks.push(m.hook),
            None => whys.push((&m.why, vec![m.hook])),
        }
    }
    let parts: Vec<String> = open
        .iter()
        .map(|(p, whys)| {
            let whys: Vec<String> =
                whys.iter().map(|(why, hooks)| format!("{}: {why}", hooks.join(", "))).collect();
            format!("{p} ({})", whys.join("; "))
        })
        .collect();
    Some(format!("this kernel does not let netcontrol close: {}", parts.join("; ")))
}

/// Refuse pinned maps this version would misread (aya re-adopts pins without looking); say
/// which one is of another size (the ring buffer after a changed `--event-buffer`).
fn check_pinned(dir: &Path, events_bytes: u32) -> Result<Option<String>> {
    let mut resized = None;
    for m in PINNED {
        let path: PathBuf = dir.join(m.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| Error::Pin {
            op: "reading pinned map",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let kind = info.map_type().ok();
        let fits = kind == Some(m.kind)
            && (m.key_size == 0 || info.key_size() as usize == m.key_size)
            && (m.value_size == 0 || info.value_size() as usize == m.value_size);
        if !fits {
            return Err(Error::PinnedMismatch {
                path,
                found: format!(
                    "{kind:?}, key {} bytes, value {} bytes",
                    info.key_size(),
                    info.value_size()
                ),
                expected: format!(
                    "{:?}, key {} bytes, value {} bytes",
                    m.kind, m.key_size, m.value_size
                ),
            });
        }
        let want = if m.max_entries == 0 { events_bytes } else { m.max_entries };
        if info.max_entries() != want && resized.is_none() {
            resized = Some(format!(
                "pinned map {} holds {} entries, this daemon wants {want}",
                path.display(),
                info.max_entries()
            ));
        }
    }
    Ok(resized)
}
