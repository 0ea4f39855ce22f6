//! The maps shared by every program. Layouts and roles: netcontrol_common::abi and
//! docs/architecture.md. Capacities are defaults; userspace may resize them at load.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use netcontrol_common::abi::{
    ALLOW_V4_MAX, ALLOW_V6_MAX, AllowValue, DENIALS_MAX, DNS_ORIGINS_MAX, DenialKey, DenialValue,
    DnsOrigin, EVENTS_BYTES, GLOBAL_LEN, RECENT_MAX, RecentKey, SANDBOXES_MAX, STATS_MAX,
    SandboxValue, StatsKey, V4Key, V6Key, Window,
};

/// Sandbox cgroup id -> its policy and mode. Written by userspace on attach/detach.
#[map]
pub static SANDBOXES: HashMap<u64, SandboxValue> = HashMap::with_max_entries(SANDBOXES_MAX, 0);

/// (policy id, IPv4 prefix) -> allowed protocols/ports.
#[map]
pub static ALLOW_V4: LpmTrie<V4Key, AllowValue> = LpmTrie::with_max_entries(ALLOW_V4_MAX, 0);

/// (policy id, IPv6 prefix) -> allowed protocols/ports.
#[map]
pub static ALLOW_V6: LpmTrie<V6Key, AllowValue> = LpmTrie::with_max_entries(ALLOW_V6_MAX, 0);

/// Per-CPU attempt counters by sandbox, hook, family, protocol, verdict and reason. Not
/// preallocated: per-CPU values times CPUs times capacity would be large on big nodes.
#[map]
pub static STATS: PerCpuHashMap<StatsKey, u64> =
    PerCpuHashMap::with_max_entries(STATS_MAX, BPF_F_NO_PREALLOC);

/// Per-CPU global counters (`GLOBAL_*`): lost events, stats-map overflow.
#[map]
pub static GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_LEN, 0);

/// Denied and audit-would-deny attempts, one `Event` each.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Redirected DNS queries by socket cookie: where they were going, who sent them.
#[map]
pub static DNS_ORIGINS: LruHashMap<u64, DnsOrigin> =
    LruHashMap::with_max_entries(DNS_ORIGINS_MAX, 0);

/// Last connect (ktime ns) to each DNS-learned address, so userspace keeps addresses in use.
#[map]
pub static RECENT: LruHashMap<RecentKey, u64> = LruHashMap::with_max_entries(RECENT_MAX, 0);

/// Denials by what makes them distinct, with counts: every distinct attempt is reported even
/// when most of a flood gets no event of its own. Not LRU: a full map is noticed (and
/// counted), never a silent eviction; userspace removes entries that went quiet.
#[map]
pub static DENIALS: HashMap<DenialKey, DenialValue> =
    HashMap::with_max_entries(DENIALS_MAX, BPF_F_NO_PREALLOC);

/// Userspace's own bookkeeping next to `DENIALS`: how many of each key's suppressed attempts
/// it has reported. In the object (and pinned with it) so that a restarted daemon neither
/// repeats nor loses summaries; the programs never touch it.
#[map]
pub static DENIALS_REPORTED: HashMap<DenialKey, u64> =
    HashMap::with_max_entries(DENIALS_MAX, BPF_F_NO_PREALLOC);

/// How many keys each sandbox has in STATS, for its share (`verdict::stats_key_within_share`).
#[map]
pub static STATS_KEYS: HashMap<u64, u64> =
    HashMap::with_max_entries(SANDBOXES_MAX, BPF_F_NO_PREALLOC);

/// Each sandbox's event budget for the current second.
#[map]
pub static BUDGET: LruHashMap<u64, Window> = LruHashMap::with_max_entries(SANDBOXES_MAX, 0);
