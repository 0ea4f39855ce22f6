//! The binary interface between the eBPF programs and userspace: map keys and values, event
//! records and the numeric codes both sides agree on.
//!
//! Every type here is `#[repr(C)]`, made only of integers and integer arrays with explicit
//! padding, so that whatever bytes the kernel writes are a valid Rust value (no `bool`, enum or
//! `Option` fields). Sizes are asserted at compile time; a change here is an ABI change and
//! needs a new pin-root version (see `PIN_ABI_VERSION`).

/// Version of the pinned-object layout under the bpffs pin root (`<bpffs>/netcontrol/v<N>`).
/// Bump it whenever a map's key or value layout below changes, so that a new agent never
/// re-adopts maps it would misread.
pub const PIN_ABI_VERSION: u32 = 2;

/// Names of the maps in the eBPF object, as userspace looks them up.
pub mod map {
    /// cgroup id (u64) -> [`super::SandboxValue`].
    pub const SANDBOXES: &str = "SANDBOXES";
    /// LPM trie: [`super::V4Key`] -> [`super::AllowValue`].
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// LPM trie: [`super::V6Key`] -> [`super::AllowValue`].
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// Per-CPU hash: [`super::StatsKey`] -> u64.
    pub const STATS: &str = "STATS";
    /// Per-CPU array of u64 indexed by `super::GLOBAL_*`.
    pub const GLOBAL: &str = "GLOBAL";
    /// Ring buffer of [`super::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// LRU hash: socket cookie -> [`super::DnsOrigin`] of a redirected DNS query.
    pub const DNS_ORIGINS: &str = "DNS_ORIGINS";
    /// LRU hash: [`super::RecentKey`] -> last connect time (ns) to a DNS-learned address.
    pub const RECENT: &str = "RECENT";
}

/// The programs in the eBPF object (function names; the kernel keeps the first 15 bytes).
pub mod program {
    pub const CONNECT4: &str = "nc_connect4";
    pub const CONNECT6: &str = "nc_connect6";
    pub const SENDMSG4: &str = "nc_sendmsg4";
    pub const SENDMSG6: &str = "nc_sendmsg6";
    pub const SOCK_CREATE: &str = "nc_sock_create";
    pub const RECVMSG4: &str = "nc_recvmsg4";
    pub const RECVMSG6: &str = "nc_recvmsg6";
    pub const GETPEERNAME4: &str = "nc_getpeername4";
    pub const GETPEERNAME6: &str = "nc_getpeername6";
}

/// Default capacities (userspace may raise them at load time).
pub const SANDBOXES_MAX: u32 = 4096;
pub const ALLOW_V4_MAX: u32 = 1 << 20;
pub const ALLOW_V6_MAX: u32 = 1 << 18;
pub const STATS_MAX: u32 = 16_384;
pub const EVENTS_BYTES: u32 = 1 << 20;
pub const DNS_ORIGINS_MAX: u32 = 65_536;
pub const RECENT_MAX: u32 = 65_536;
/// How many ancestor levels the kernel side walks to find a socket's sandbox.
pub const MAX_CGROUP_DEPTH: u32 = 32;

// ---- sandboxes ---------------------------------------------------------------------------

/// What the programs know about a sandbox cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SandboxValue {
    /// Selects the sandbox's rules in the allow tries.
    pub policy_id: u32,
    /// `SANDBOX_F_*`.
    pub flags: u32,
    /// With `SANDBOX_F_DNS_REDIRECT`: the DNS proxy's port on [`DNS_PROXY_V4`] (UDP and TCP),
    /// in the sandbox's network namespace.
    pub dns_port4: u16,
    /// The same on `::1`; 0 when the namespace has no IPv6 loopback (IPv6 DNS then is judged
    /// by the rules like any other destination).
    pub dns_port6: u16,
    pub _pad: u32,
}

/// Audit mode: nothing is denied, would-be denials are reported.
pub const SANDBOX_F_AUDIT: u32 = 1 << 0;
/// `SOCK_RAW` sockets may be created.
pub const SANDBOX_F_ALLOW_RAW: u32 = 1 << 1;
/// ICMP / ICMPv6 datagram ("ping") sockets may be created.
pub const SANDBOX_F_ALLOW_ICMP: u32 = 1 << 2;
/// DNS-aware mode: every UDP/TCP attempt to port 53 goes to the sandbox's DNS proxy.
pub const SANDBOX_F_DNS_REDIRECT: u32 = 1 << 3;

/// Where DNS is redirected, in the sandbox's network namespace.
pub const DNS_PROXY_V4: [u8; 4] = [127, 0, 0, 1];
pub const DNS_PROXY_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const DNS_PORT: u16 = 53;

// ---- allow tries -------------------------------------------------------------------------

/// LPM key data for IPv4: the policy id (big-endian, so that it is the leading 32 bits of the
/// prefix) followed by the address in network order. The trie's prefix length is
/// `32 + CIDR length`, so every lookup stays inside one policy.
pub type V4Key = [u8; 8];
/// LPM key data for IPv6, laid out like [`V4Key`].
pub type V6Key = [u8; 20];

/// Bits of every key taken by the policy id.
pub const POLICY_ID_BITS: u32 = 32;

#[inline(always)]
pub fn v4_key(policy_id: u32, addr: [u8; 4]) -> V4Key {
    let p = policy_id.to_be_bytes();
    [p[0], p[1], p[2], p[3], addr[0], addr[1], addr[2], addr[3]]
}

#[inline(always)]
pub fn v6_key(policy_id: u32, addr: [u8; 16]) -> V6Key {
    let mut k = [0u8; 20];
    let p = policy_id.to_be_bytes();
    let mut i = 0;
    while i < 4 {
        k[i] = p[i];
        i += 1;
    }
    while i < 20 {
        k[i] = addr[i - 4];
        i += 1;
    }
    k
}

/// Port ranges one allow entry can hold. Userspace merges overlapping ranges and reports an
/// error naming the prefix when a policy needs more.
pub const MAX_PORT_RANGES: usize = 16;

/// One allowed (protocol, port range) pair. `proto` 0 means any protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of an allow-trie entry. Userspace folds the ranges of every rule whose prefix covers
/// this one into it, because an LPM lookup only returns the most specific entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowValue {
    /// Used entries of `ranges`.
    pub count: u32,
    /// `ALLOW_F_*`.
    pub flags: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

impl Default for AllowValue {
    fn default() -> Self {
        Self { count: 0, flags: 0, ranges: [PortRange::default(); MAX_PORT_RANGES] }
    }
}

/// The entry protects a cloud metadata address: only rules naming it exactly open it.
pub const ALLOW_F_PROTECTED: u32 = 1 << 0;
/// The address was learned from a DNS answer: connects to it are timestamped in `RECENT`, so
/// that it is not forgotten while in use.
pub const ALLOW_F_LEARNED: u32 = 1 << 1;

/// Protocol numbers as the kernel reports them in `bpf_sock_addr.protocol` / `bpf_sock.protocol`.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Address families (`AF_*`).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Socket types (`SOCK_*`).
pub const SOCK_STREAM: u16 = 1;
pub const SOCK_DGRAM: u16 = 2;
pub const SOCK_RAW: u16 = 3;

// ---- verdicts, reasons, hooks ------------------------------------------------------------

/// What the programs decided.
pub const VERDICT_ALLOW: u8 = 0;
pub const VERDICT_DENY: u8 = 1;
/// Audit mode: enforce mode would have denied; the attempt was allowed.
pub const VERDICT_AUDIT: u8 = 2;
/// A DNS query sent to the sandbox's DNS proxy instead (DNS-aware mode).
pub const VERDICT_REDIRECT: u8 = 3;

/// Why an attempt was (or would have been) denied.
pub const REASON_NONE: u8 = 0;
/// No allow entry covers the destination address.
pub const REASON_NOT_ALLOWLISTED: u8 = 1;
/// The address is allowlisted, but not for this port or protocol.
pub const REASON_PORT_NOT_ALLOWED: u8 = 2;
/// A cloud metadata address that only an exact rule opens.
pub const REASON_METADATA: u8 = 3;
/// A `SOCK_RAW` socket.
pub const REASON_RAW_SOCKET: u8 = 4;
/// An ICMP / ICMPv6 datagram ("ping") socket.
pub const REASON_ICMP_SOCKET: u8 = 5;
/// The programs ran for a socket but found no sandbox for the calling task's cgroup (for
/// example a sandbox's socket used from outside it): fail closed.
pub const REASON_NO_SANDBOX: u8 = 6;

/// Where the verdict was taken.
pub const HOOK_CONNECT4: u8 = 1;
pub const HOOK_CONNECT6: u8 = 2;
pub const HOOK_SENDMSG4: u8 = 3;
pub const HOOK_SENDMSG6: u8 = 4;
pub const HOOK_SOCK_CREATE: u8 = 5;
/// Not a kernel hook: netcontrol's DNS proxy (DNS-aware mode) decided.
pub const HOOK_DNS_PROXY: u8 = 6;

// ---- DNS-aware mode ----------------------------------------------------------------------

/// A DNS query redirected to the proxy: where it was going and who sent it. Written by the
/// connect/sendmsg hooks, read by recvmsg/getpeername (to show the original server) and by the
/// proxy (to name the asking process).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsOrigin {
    /// Original destination; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// Original port, host order.
    pub port: u16,
    /// The proxy port it was sent to instead, host order.
    pub proxy_port: u16,
    /// `AF_INET`, or `AF_INET6` (with `EVENT_F_V4_MAPPED` in `flags` for a mapped address).
    pub family: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    pub pid_tgid: u64,
    pub uid_gid: u64,
    pub cgroup_id: u64,
    pub sandbox_id: u64,
    pub comm: [u8; 16],
}

/// Key of `RECENT`: a DNS-learned address of a policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecentKey {
    pub policy_id: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    pub addr: [u8; 16],
}

// ---- counters ----------------------------------------------------------------------------

/// Key of the per-CPU `STATS` map: one counter per (sandbox, hook, family, protocol, verdict,
/// reason, counter kind). All dimensions are small enums, so the set is bounded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct StatsKey {
    /// The sandbox's cgroup id (0 when none was found).
    pub sandbox_id: u64,
    pub hook: u8,
    pub family: u8,
    pub protocol: u8,
    pub verdict: u8,
    pub reason: u8,
    /// `COUNTER_*`.
    pub counter: u8,
    pub _pad: [u8; 2],
}

/// Attempts judged.
pub const COUNTER_ATTEMPTS: u8 = 0;
/// Events that could not be queued because the ring buffer was full.
pub const COUNTER_EVENTS_LOST: u8 = 1;

/// Indexes of the per-CPU `GLOBAL` array.
pub const GLOBAL_EVENTS_LOST: u32 = 0;
/// A `STATS` update failed (map full): counts by dimension are incomplete.
pub const GLOBAL_STATS_FULL: u32 = 1;
/// Slots below this are counters, summed over CPUs by userspace.
pub const GLOBAL_COUNTERS: u32 = 2;
/// Not a counter: this CPU's ktime (ns) when an event last woke the reader
/// (`verdict::wake_reader`).
pub const GLOBAL_LAST_WAKEUP: u32 = 2;
pub const GLOBAL_LEN: u32 = 4;

// ---- events ------------------------------------------------------------------------------

/// One denied (or audit-would-deny) attempt, as queued in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// cgroup of the calling task.
    pub cgroup_id: u64,
    /// The sandbox whose policy judged it (0 if none was found).
    pub sandbox_id: u64,
    /// `bpf_get_current_pid_tgid()`: tgid (the process id) in the high half.
    pub pid_tgid: u64,
    /// `bpf_get_current_uid_gid()`: gid in the high half.
    pub uid_gid: u64,
    pub comm: [u8; 16],
    /// Destination; IPv4 (also v4-mapped) in the first 4 bytes, network order.
    pub addr: [u8; 16],
    /// Destination port, host order.
    pub port: u16,
    /// `SOCK_*` for sock_create events, else 0.
    pub sock_type: u16,
    pub policy_id: u32,
    /// `AF_INET` or `AF_INET6`; a v4-mapped destination is reported as `AF_INET`.
    pub family: u8,
    pub protocol: u8,
    pub hook: u8,
    pub reason: u8,
    pub verdict: u8,
    /// `EVENT_F_*`.
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// The destination was an IPv4-mapped IPv6 address on an AF_INET6 socket.
pub const EVENT_F_V4_MAPPED: u8 = 1 << 0;

const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<SandboxValue>() == 16);
    assert!(size_of::<DnsOrigin>() == 72);
    assert!(size_of::<RecentKey>() == 24);
    assert!(size_of::<PortRange>() == 6);
    assert!(size_of::<AllowValue>() == 8 + 6 * MAX_PORT_RANGES);
    assert!(size_of::<StatsKey>() == 16);
    assert!(size_of::<Event>() == 88);
    // RingBuf::reserve needs 8 % align == 0.
    assert!(8 % align_of::<Event>() == 0);
};
