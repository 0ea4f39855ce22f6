//! Typed access to the maps: the sandbox table, the allow tries (applied add-before-remove),
//! and the counters.

use aya::{
    Ebpf,
    maps::{
        HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf,
        lpm_trie::Key,
    },
};
use std::{net::IpAddr, os::fd::AsFd, sync::Mutex};

use netcontrol_common::abi::{
    self, AF_INET, AF_INET6, AllowValue, DenialKey, DenialValue, DnsOrigin, GLOBAL_COUNTERS,
    LISTEN_POLICY_BIT, POLICY_ID_BITS, RecentKey, SandboxValue, StatsKey, V4Key, V6Key, v4_key,
    v6_key,
};

use crate::{
    error::{Error, Result},
    policy::Entries,
};

pub struct Maps {
    sandboxes: HashMap<MapData, u64, SandboxValue>,
    allow_v4: LpmTrie<MapData, V4Key, AllowValue>,
    allow_v6: LpmTrie<MapData, V6Key, AllowValue>,
    stats: PerCpuHashMap<MapData, StatsKey, u64>,
    /// How many STATS keys each sandbox holds (its share; the programs count them).
    stats_keys: HashMap<MapData, u64, u64>,
    global: PerCpuArray<MapData, u64>,
    recent: HashMap<MapData, RecentKey, u64>,
    /// Every policy id's entries from one walk of the tries, for a restarted daemon's start
    /// (each of thousands of sandboxes would walk them whole otherwise). A policy id's entries
    /// are dropped from it at its first write.
    snapshot: Mutex<Option<std::collections::HashMap<u32, Entries>>>,
}

/// DNS_ORIGINS, read by the DNS proxy to name the process behind a query.
pub struct Origins(HashMap<MapData, u64, DnsOrigin>);

impl Origins {
    pub fn get(&self, cookie: u64) -> Option<DnsOrigin> {
        self.0.get(&cookie, 0).ok()
    }
}

/// The maps read elsewhere than through [`Maps`].
pub struct Others {
    /// Events, for the event reader.
    pub events: RingBuf<MapData>,
    /// Aggregated denials, for the event reader's summaries.
    pub denials: Denials,
    /// Redirected DNS queries, for the DNS proxy (taken by it).
    pub origins: Option<Origins>,
    /// Single-address writes to the allow tries, for the sandboxes' DNS learners.
    pub hosts: HostWriter,
}

/// Second handles on the allow tries for writing single addresses (what DNS taught a
/// sandbox) from the sandboxes' own learner tasks: an answer's addresses go into the maps
/// without waiting for whatever else the owner of [`Maps`] is doing. Each lock is held for
/// one map syscall.
pub struct HostWriter {
    v4: Mutex<LpmTrie<MapData, V4Key, AllowValue>>,
    v6: Mutex<LpmTrie<MapData, V6Key, AllowValue>>,
}

impl HostWriter {
    /// Set (or, with None, remove) the entry of a single address.
    pub fn put(&self, policy_id: u32, ip: IpAddr, value: Option<&AllowValue>) -> Result<()> {
        match (ip, value) {
            (IpAddr::V4(a), Some(v)) => {
                let key = Key::new(POLICY_ID_BITS + 32, v4_key(policy_id, a.octets()));
                lock(&self.v4).insert(&key, v, 0).map_err(map_err("updating", abi::map::ALLOW_V4))
            }
            (IpAddr::V6(a), Some(v)) => {
                let key = Key::new(POLICY_ID_BITS + 128, v6_key(policy_id, a.octets()));
                lock(&self.v6).insert(&key, v, 0).map_err(map_err("updating", abi::map::ALLOW_V6))
            }
            (IpAddr::V4(a), None) => {
                let key = Key::new(POLICY_ID_BITS + 32, v4_key(policy_id, a.octets()));
                ignore_missing(lock(&self.v4).remove(&key))
                    .map_err(map_err("removing from", abi::map::ALLOW_V4))
            }
            (IpAddr::V6(a), None) => {
                let key = Key::new(POLICY_ID_BITS + 128, v6_key(policy_id, a.octets()));
                ignore_missing(lock(&self.v6).remove(&key))
                    .map_err(map_err("removing from", abi::map::ALLOW_V6))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A second handle on an LPM trie taken out of the object (its fd duplicated).
fn second_trie<K: aya::Pod, V: aya::Pod>(
    map: &Map,
    name: &'static str,
) -> Result<LpmTrie<MapData, K, V>> {
    let Map::LpmTrie(data) = map else {
        return Err(Error::MissingMap(name));
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io(format!("duplicating the fd of {name}"), e))?;
    let data = MapData::from_fd(fd).map_err(map_err("opening", name))?;
    LpmTrie::try_from(Map::LpmTrie(data)).map_err(map_err("opening", name))
}

/// DENIALS (the programs' counts) and DENIALS_REPORTED (what userspace has reported of them).
pub struct Denials {
    pub counts: HashMap<MapData, DenialKey, DenialValue>,
    pub reported: HashMap<MapData, DenialKey, u64>,
}

impl Denials {
    /// Every key the programs counted, with its counts.
    pub fn all(&self) -> Vec<(DenialKey, DenialValue)> {
        self.counts.iter().filter_map(|kv| kv.ok()).collect()
    }

    /// How many of the key's suppressed attempts have been reported.
    pub fn reported(&self, key: &DenialKey) -> u64 {
        self.reported.get(key, 0).unwrap_or(0)
    }

    pub fn set_reported(&mut self, key: &DenialKey, n: u64) -> Result<()> {
        self.reported.insert(key, n, 0).map_err(map_err("updating", abi::map::DENIALS_REPORTED))
    }

    /// Forget a key that went quiet (both maps).
    pub fn forget(&mut self, key: &DenialKey) -> Result<()> {
        ignore_missing(self.counts.remove(key))
            .map_err(map_err("removing from", abi::map::DENIALS))?;
        ignore_missing(self.reported.remove(key))
            .map_err(map_err("removing from", abi::map::DENIALS_REPORTED))
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or(Error::MissingMap(name))
}

fn map_err(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { op, map, source }
}

impl Maps {
    /// Take the maps out of a loaded object (the programs keep referring to them), with the
    /// ones other tasks read.
    pub fn take(ebpf: &mut Ebpf) -> Result<(Self, Others)> {
        use abi::map::*;
        let (v4, v6) = (take(ebpf, ALLOW_V4)?, take(ebpf, ALLOW_V6)?);
        let hosts = HostWriter {
            v4: Mutex::new(second_trie(&v4, ALLOW_V4)?),
            v6: Mutex::new(second_trie(&v6, ALLOW_V6)?),
        };
        let maps = Self {
            sandboxes: HashMap::try_from(take(ebpf, SANDBOXES)?)
                .map_err(map_err("opening", SANDBOXES))?,
            allow_v4: LpmTrie::try_from(v4).map_err(map_err("opening", ALLOW_V4))?,
            allow_v6: LpmTrie::try_from(v6).map_err(map_err("opening", ALLOW_V6))?,
            stats: PerCpuHashMap::try_from(take(ebpf, STATS)?)
                .map_err(map_err("opening", STATS))?,
            stats_keys: HashMap::try_from(take(ebpf, STATS_KEYS)?)
                .map_err(map_err("opening", STATS_KEYS))?,
            global: PerCpuArray::try_from(take(ebpf, GLOBAL)?)
                .map_err(map_err("opening", GLOBAL))?,
            recent: HashMap::try_from(take(ebpf, RECENT)?).map_err(map_err("opening", RECENT))?,
            snapshot: Mutex::new(None),
        };
        let events = RingBuf::try_from(take(ebpf, EVENTS)?).map_err(map_err("opening", EVENTS))?;
        let origins = Origins(
            HashMap::try_from(take(ebpf, DNS_ORIGINS)?).map_err(map_err("opening", DNS_ORIGINS))?,
        );
        let denials = Denials {
            counts: HashMap::try_from(take(ebpf, DENIALS)?).map_err(map_err("opening", DENIALS))?,
            reported: HashMap::try_from(take(ebpf, DENIALS_REPORTED)?)
                .map_err(map_err("opening", DENIALS_REPORTED))?,
        };
        Ok((maps, Others { events, denials, origins: Some(origins), hosts }))
    }

    /// When a DNS-learned address was last connected to (CLOCK_MONOTONIC ns), if recently.
    pub fn last_use(&self, policy_id: u32, ip: IpAddr) -> Option<u64> {
        let (family, addr) = match ip {
            IpAddr::V4(a) => {
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&a.octets());
                (u32::from(AF_INET), addr)
            }
            IpAddr::V6(a) => (u32::from(AF_INET6), a.octets()),
        };
        self.recent.get(&RecentKey { policy_id, family, addr }, 0).ok()
    }

    /// Every sandbox entry (a restarted daemon re-adopts them).
    pub fn sandboxes(&self) -> Result<Vec<(u64, SandboxValue)>> {
        self.sandboxes
            .iter()
            .map(|kv| kv.map_err(map_err("reading", abi::map::SANDBOXES)))
            .collect()
    }

    pub fn remove_sandbox(&mut self, cgroup_id: u64) -> Result<()> {
        ignore_missing(self.sandboxes.remove(&cgroup_id))
            .map_err(map_err("removing from", abi::map::SANDBOXES))
    }

    /// Drop a sandbox's counters (it is gone; the map is shared and bounded).
    pub fn remove_stats(&mut self, sandbox_id: u64) -> Result<()> {
        let keys: Vec<StatsKey> = self
            .stats
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.sandbox_id == sandbox_id)
            .collect();
        for k in keys {
            ignore_missing(self.stats.remove(&k))
                .map_err(map_err("removing from", abi::map::STATS))?;
        }
        // Its share is whole again for whoever has the cgroup id next.
        ignore_missing(self.stats_keys.remove(&sandbox_id))
            .map_err(map_err("removing from", abi::map::STATS_KEYS))
    }

    /// Remove the entries of every policy id not in `keep` (left behind by sandboxes a
    /// restarted daemon no longer has). Returns how many went.
    pub fn purge_policies(&mut self, keep: &std::collections::BTreeSet<u32>) -> Result<usize> {
        // A purged id may be given out again: its snapshot would be stale.
        self.drop_snapshot();
        let stale = |data: &[u8]| {
            let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) & !LISTEN_POLICY_BIT;
            !keep.contains(&id)
        };
        let v4: Vec<_> =
            self.allow_v4.keys().filter_map(|k| k.ok()).filter(|k| stale(&k.data())).collect();
        let v6: Vec<_> =
            self.allow_v6.keys().filter_map(|k| k.ok()).filter(|k| stale(&k.data())).collect();
        let n = v4.len() + v6.len();
        for k in v4 {
            ignore_missing(self.allow_v4.remove(&k))
                .map_err(map_err("removing from", abi::map::ALLOW_V4))?;
        }
        for k in v6 {
            ignore_missing(self.allow_v6.remove(&k))
                .map_err(map_err("removing from", abi::map::ALLOW_V6))?;
        }
        Ok(n)
    }

    /// Read every policy id's entries at once; `entries_of` answers from it until
    /// `drop_snapshot` (or the policy id's first write).
    pub fn snapshot_entries(&self) -> Result<()> {
        let mut all: std::collections::HashMap<u32, Entries> = std::collections::HashMap::new();
        for kv in self.allow_v4.iter() {
            let (k, v) = kv.map_err(map_err("reading", abi::map::ALLOW_V4))?;
            let data = k.data();
            let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let len = (k.prefix_len() - POLICY_ID_BITS) as u8;
            all.entry(id).or_default().v4.insert((len, [data[4], data[5], data[6], data[7]]), v);
        }
        for kv in self.allow_v6.iter() {
            let (k, v) = kv.map_err(map_err("reading", abi::map::ALLOW_V6))?;
            let data = k.data();
            let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&data[4..]);
            all.entry(id)
                .or_default()
                .v6
                .insert(((k.prefix_len() - POLICY_ID_BITS) as u8, addr), v);
        }
        *lock(&self.snapshot) = Some(all);
        Ok(())
    }

    pub fn drop_snapshot(&self) {
        *lock(&self.snapshot) = None;
    }

    /// The entries of one policy as they are in the tries now.
    pub fn entries_of(&self, policy_id: u32) -> Result<Entries> {
        if let Some(all) = lock(&self.snapshot).as_ref() {
            return Ok(all.get(&policy_id).cloned().unwrap_or_default());
        }
        let mut e = Entries::default();
        let id = policy_id.to_be_bytes();
        for kv in self.allow_v4.iter() {
            let (k, v) = kv.map_err(map_err("reading", abi::map::ALLOW_V4))?;
            let data = k.data();
            if data[..4] == id {
                let len = (k.prefix_len() - POLICY_ID_BITS) as u8;
                e.v4.insert((len, [data[4], data[5], data[6], data[7]]), v);
            }
        }
        for kv in self.allow_v6.iter() {
            let (k, v) = kv.map_err(map_err("reading", abi::map::ALLOW_V6))?;
            let data = k.data();
            if data[..4] == id {
                let mut addr = [0u8; 16];
                addr.copy_from_slice(&data[4..]);
                e.v6.insert(((k.prefix_len() - POLICY_ID_BITS) as u8, addr), v);
            }
        }
        Ok(e)
    }

    pub fn set_sandbox(&mut self, cgroup_id: u64, value: SandboxValue) -> Result<()> {
        self.sandboxes.insert(cgroup_id, value, 0).map_err(map_err("updating", abi::map::SANDBOXES))
    }

    /// Move a policy's entries from `old` to `new`: first insert and update, then delete what
    /// is gone, so that traffic both allow is never interrupted.
    pub fn apply_entries(&mut self, policy_id: u32, old: &Entries, new: &Entries) -> Result<()> {
        if let Some(all) = lock(&self.snapshot).as_mut() {
            all.remove(&policy_id);
        }
        for (&(len, addr), v) in &new.v4 {
            if old.v4.get(&(len, addr)) != Some(v) {
                let key = Key::new(POLICY_ID_BITS + u32::from(len), v4_key(policy_id, addr));
                self.allow_v4
                    .insert(&key, v, 0)
                    .map_err(map_err("updating", abi::map::ALLOW_V4))?;
            }
        }
        for (&(len, addr), v) in &new.v6 {
            if old.v6.get(&(len, addr)) != Some(v) {
                let key = Key::new(POLICY_ID_BITS + u32::from(len), v6_key(policy_id, addr));
                self.allow_v6
                    .insert(&key, v, 0)
                    .map_err(map_err("updating", abi::map::ALLOW_V6))?;
            }
        }
        for &(len, addr) in old.v4.keys().filter(|k| !new.v4.contains_key(k)) {
            let key = Key::new(POLICY_ID_BITS + u32::from(len), v4_key(policy_id, addr));
            ignore_missing(self.allow_v4.remove(&key))
                .map_err(map_err("removing from", abi::map::ALLOW_V4))?;
        }
        for &(len, addr) in old.v6.keys().filter(|k| !new.v6.contains_key(k)) {
            let key = Key::new(POLICY_ID_BITS + u32::from(len), v6_key(policy_id, addr));
            ignore_missing(self.allow_v6.remove(&key))
                .map_err(map_err("removing from", abi::map::ALLOW_V6))?;
        }
        Ok(())
    }

    /// All attempt/lost counters, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(StatsKey, u64)>> {
        let mut out = Vec::new();
        for item in self.stats.iter() {
            let (k, per_cpu) = item.map_err(map_err("reading", abi::map::STATS))?;
            out.push((k, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    /// The global counters (`GLOBAL_*` below `GLOBAL_COUNTERS`), summed over CPUs.
    pub fn global(&self) -> Result<[u64; GLOBAL_COUNTERS as usize]> {
        let mut out = [0; GLOBAL_COUNTERS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu =
                self.global.get(&(i as u32), 0).map_err(map_err("reading", abi::map::GLOBAL))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

/// A key already gone is what removing it wanted. (aya reports a failed delete as the
/// syscall's ENOENT, not as `KeyNotFound`.)
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}
