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
pub const PIN_ABI_VERSION: u32 = 3;

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
    /// Hash: [`super::DenialKey`] -> [`super::DenialValue`], denials aggregated per
    /// destination (written by the programs).
    pub const DENIALS: &str = "DENIALS";
    /// Hash: [`super::DenialKey`] -> u64, how many of its suppressed attempts userspace has
    /// reported in summary records (written by userspace only).
    pub const DENIALS_REPORTED: &str = "DENIALS_REPORTED";
    /// LRU hash: sandbox cgroup id (u64) -> [`super::Window`], its event budget.
    pub const BUDGET: &str = "BUDGET";
    /// Hash: sandbox cgroup id (u64) -> u64, how many keys it has in STATS (its share).
    pub const STATS_KEYS: &str = "STATS_KEYS";
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
    pub const BIND4: &str = "nc_bind4";
    pub const BIND6: &str = "nc_bind6";
    pub const SETSOCKOPT: &str = "nc_setsockopt";
    /// SETSOCKOPT for kernels whose sockopt programs may not ask for cgroup ancestors or the
    /// task (5.10): tasks in cgroups below a sandbox's are refused the options (fail closed),
    /// and its events name no process.
    pub const SETSOCKOPT_FLAT: &str = "nc_sockopt_flat";
    pub const SKB_EGRESS: &str = "nc_skb_egress";
    pub const SKB_INGRESS: &str = "nc_skb_ingress";
    pub const LSM_SOCKET: &str = "nc_lsm_socket";
    pub const LSM_CONNECT: &str = "nc_lsm_connect";
    pub const LSM_SENDMSG: &str = "nc_lsm_sendmsg";
}

/// Default capacities (userspace may raise them at load time).
pub const SANDBOXES_MAX: u32 = 4096;
pub const ALLOW_V4_MAX: u32 = 1 << 20;
pub const ALLOW_V6_MAX: u32 = 1 << 18;
/// Each sandbox's share of STATS, in fine-grained keys; beyond it, new kinds of attempts are
/// counted under the sandbox's few folded keys (`fold_stats_key`). STATS holds every
/// sandbox's full share: one sandbox varying families and protocols cannot fill it for all.
pub const STATS_KEYS_PER_SANDBOX: u64 = 48;
/// Folded keys a sandbox can have: one per verdict and counter.
pub const STATS_FOLDED_PER_SANDBOX: u64 = 16;
pub const STATS_MAX: u32 =
    (SANDBOXES_MAX as u64 * (STATS_KEYS_PER_SANDBOX + STATS_FOLDED_PER_SANDBOX)) as u32;
pub const EVENTS_BYTES: u32 = 1 << 20;
pub const DNS_ORIGINS_MAX: u32 = 65_536;
pub const RECENT_MAX: u32 = 65_536;
pub const DENIALS_MAX: u32 = 16_384;
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
    /// Socket families the sandbox may create beyond those always allowed
    /// ([`ALWAYS_ALLOWED_FAMILIES`]): bit N allows `AF_*` number N.
    pub families: u64,
}

/// Audit mode: nothing is denied, would-be denials are reported.
pub const SANDBOX_F_AUDIT: u32 = 1 << 0;
/// `SOCK_RAW` sockets may be created.
pub const SANDBOX_F_ALLOW_RAW: u32 = 1 << 1;
/// ICMP / ICMPv6 datagram ("ping") sockets may be created.
pub const SANDBOX_F_ALLOW_ICMP: u32 = 1 << 2;
/// DNS-aware mode: every UDP/TCP attempt to port 53 goes to the sandbox's DNS proxy.
pub const SANDBOX_F_DNS_REDIRECT: u32 = 1 << 3;
/// SCTP sockets may be created (a rule allows SCTP).
pub const SANDBOX_F_ALLOW_SCTP: u32 = 1 << 4;
/// Socket options and packets that choose the route (IPv6 routing, hop-by-hop and destination
/// options, IPv4 source routes) are allowed.
pub const SANDBOX_F_ALLOW_ROUTING: u32 = 1 << 5;
/// Connections and datagrams to abstract unix sockets are allowed.
pub const SANDBOX_F_ALLOW_ABSTRACT_UNIX: u32 = 1 << 6;
/// The sandbox shares netcontrol's (the host's) network namespace: it may listen on loopback
/// only, or on the ports of its listen rules, and may not reach abstract unix sockets (the
/// host's daemons) unless allowed.
pub const SANDBOX_F_HOST_NETNS: u32 = 1 << 7;

/// Socket families every sandbox may create: unix, inet, inet6, netlink (the last for
/// getaddrinfo and interface lists). Others need a bit in `SandboxValue::families`.
pub const AF_UNIX: u8 = 1;
pub const AF_NETLINK: u8 = 16;
pub const ALWAYS_ALLOWED_FAMILIES: u64 =
    (1 << AF_UNIX) | (1 << AF_INET) | (1 << AF_INET6) | (1 << AF_NETLINK);

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

/// Set in the policy id of the entries that say where a sandbox may listen (the local
/// address of a bind or of a listening socket), in the same tries as its destinations.
pub const LISTEN_POLICY_BIT: u32 = 1 << 31;

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

/// The entry protects an address (cloud metadata, link-local, unspecified) from rules that
/// are broader than it; the reason to report is in bits [`ALLOW_REASON_SHIFT`]..+8.
pub const ALLOW_F_PROTECTED: u32 = 1 << 0;
pub const ALLOW_REASON_SHIFT: u32 = 8;
/// The address was learned from a DNS answer: connects to it are timestamped in `RECENT`, so
/// that it is not forgotten while in use.
pub const ALLOW_F_LEARNED: u32 = 1 << 1;

/// Protocol numbers as the kernel reports them in `bpf_sock_addr.protocol` / `bpf_sock.protocol`.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_UDPLITE: u8 = 136;
/// `IPPROTO_MPTCP`: beyond a byte (the socket's protocol field is wider than events').
pub const PROTO_MPTCP: u32 = 262;

/// Address families (`AF_*`).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Socket types (`SOCK_*`).
pub const SOCK_STREAM: u16 = 1;
pub const SOCK_DGRAM: u16 = 2;
pub const SOCK_RAW: u16 = 3;
pub const SOCK_SEQPACKET: u16 = 5;

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
/// A socket option that chooses the route (IPv6 routing/hop-by-hop/destination options,
/// IPv4 IP_OPTIONS); `Event::detail` is `level << 16 | optname`.
pub const REASON_SOCKET_OPTION: u8 = 7;
/// A packet carrying an IPv6 routing header or an IPv4 source-route option (dropped).
pub const REASON_SOURCE_ROUTE: u8 = 8;
/// 0.0.0.0 or :: (the kernel turns them into a local address); only an exact rule opens them.
pub const REASON_UNSPECIFIED: u8 = 9;
/// A link-local address (169.254.0.0/16, fe80::/10); only rules inside link-local open it.
pub const REASON_LINK_LOCAL: u8 = 10;
/// An SCTP socket while no rule allows SCTP.
pub const REASON_SCTP_SOCKET: u8 = 11;
/// A socket family other than unix, inet, inet6 and netlink; `Event::detail` is the family.
pub const REASON_SOCKET_FAMILY: u8 = 12;
/// A connection or datagram to an abstract unix socket.
pub const REASON_ABSTRACT_UNIX: u8 = 13;
/// Listening on a non-loopback address outside the listen rules (a bind, or a connection
/// arriving at a listening socket).
pub const REASON_LISTEN: u8 = 14;
/// A packet to a loopback address leaving on another interface (one the sandbox chose, with
/// a control message): loopback is reached through `lo` only.
pub const REASON_LOOPBACK_ELSEWHERE: u8 = 15;
/// An inet socket of a protocol whose destinations no cgroup hook judges (L2TP/IP, DCCP,
/// ...): only TCP, UDP, UDP-Lite and MPTCP sockets are made without asking.
pub const REASON_PROTOCOL: u8 = 16;

/// Where the verdict was taken.
pub const HOOK_CONNECT4: u8 = 1;
pub const HOOK_CONNECT6: u8 = 2;
pub const HOOK_SENDMSG4: u8 = 3;
pub const HOOK_SENDMSG6: u8 = 4;
pub const HOOK_SOCK_CREATE: u8 = 5;
/// Not a kernel hook: netcontrol's DNS proxy (DNS-aware mode) decided.
pub const HOOK_DNS_PROXY: u8 = 6;
pub const HOOK_SETSOCKOPT: u8 = 7;
pub const HOOK_SKB_EGRESS: u8 = 8;
pub const HOOK_SKB_INGRESS: u8 = 9;
pub const HOOK_BIND4: u8 = 10;
pub const HOOK_BIND6: u8 = 11;
/// BPF LSM `socket_create`, `socket_connect`, `socket_sendmsg`.
pub const HOOK_LSM_SOCKET: u8 = 12;
pub const HOOK_LSM_CONNECT: u8 = 13;
pub const HOOK_LSM_SENDMSG: u8 = 14;

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
/// `StatsKey::hook`, `family`, `protocol` and `reason` of a folded key: counted beyond the
/// sandbox's share of fine-grained keys.
pub const STATS_FOLDED: u8 = 0xff;

pub const COUNTER_ATTEMPTS: u8 = 0;
/// Denials reported nowhere: no event could be queued (ring buffer full) and no `DENIALS`
/// entry could count it (map full).
pub const COUNTER_EVENTS_LOST: u8 = 1;
/// Denials not reported one by one (rate limit, or a full ring buffer) but counted in
/// `DENIALS`, from where userspace reports them in summary records.
pub const COUNTER_SUPPRESSED: u8 = 2;

/// Indexes of the per-CPU `GLOBAL` array.
pub const GLOBAL_EVENTS_LOST: u32 = 0;
/// A `STATS` update failed (map full): counts by dimension are incomplete.
pub const GLOBAL_STATS_FULL: u32 = 1;
/// Denials counted in `DENIALS` instead of an event: tells userspace a summary is due.
pub const GLOBAL_SUPPRESSED: u32 = 2;
/// A `DENIALS` insert failed (map full).
pub const GLOBAL_DENIALS_FULL: u32 = 3;
/// An event found the ring buffer full.
pub const GLOBAL_RING_FULL: u32 = 4;
/// Slots below this are counters, summed over CPUs by userspace.
pub const GLOBAL_COUNTERS: u32 = 5;
/// Not a counter: this CPU's ktime (ns) when an event last woke the reader
/// (`verdict::wake_reader`).
pub const GLOBAL_LAST_WAKEUP: u32 = 5;
pub const GLOBAL_LEN: u32 = 8;

// ---- aggregated denials --------------------------------------------------------------

/// What makes two denials "the same" for reporting: sandbox, hook, what was attempted and
/// why it was denied. Every distinct key is reported at least once, with a count.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct DenialKey {
    pub sandbox_id: u64,
    /// As in [`Event::addr`].
    pub addr: [u8; 16],
    pub port: u16,
    pub sock_type: u16,
    pub family: u8,
    pub protocol: u8,
    pub hook: u8,
    pub reason: u8,
    pub verdict: u8,
    /// `EVENT_F_*`.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// As in [`Event::detail`].
    pub detail: u32,
}

/// The count of one [`DenialKey`] (written by the programs; `count` and `suppressed` with
/// atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DenialValue {
    /// Attempts in all.
    pub count: u64,
    /// Attempts that got no event of their own.
    pub suppressed: u64,
    /// ktime (ns) of the first and the latest attempt.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Start of the current one-second window, and the events it sent.
    pub window_start_ns: u64,
    /// The latest attempt's process.
    pub pid_tgid: u64,
    pub uid_gid: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    pub window_sent: u32,
    pub _pad: u32,
}

/// A one-second event budget (`BUDGET`, per sandbox).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Window {
    pub start_ns: u64,
    pub sent: u32,
    pub _pad: u32,
}

/// Events one key may send per second; the rest are counted and summarized.
pub const EVENTS_PER_KEY_PER_SEC: u32 = 5;
/// Events one sandbox may send per second, all keys together.
pub const EVENTS_PER_SANDBOX_PER_SEC: u32 = 500;

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
    /// Hook-specific: `level << 16 | optname` for socket options, the family for socket
    /// family refusals; 0 otherwise.
    pub detail: u32,
    pub _pad2: u32,
}

/// The destination was an IPv4-mapped IPv6 address on an AF_INET6 socket.
pub const EVENT_F_V4_MAPPED: u8 = 1 << 0;
/// `addr` holds the first bytes of an abstract unix socket name (after the leading NUL).
pub const EVENT_F_UNIX_NAME: u8 = 1 << 1;

const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<SandboxValue>() == 24);
    assert!(size_of::<DenialKey>() == 40);
    assert!(size_of::<DenialValue>() == 88);
    assert!(size_of::<Window>() == 16);
    assert!(size_of::<DnsOrigin>() == 72);
    assert!(size_of::<RecentKey>() == 24);
    assert!(size_of::<PortRange>() == 6);
    assert!(size_of::<AllowValue>() == 8 + 6 * MAX_PORT_RANGES);
    assert!(size_of::<StatsKey>() == 16);
    assert!(size_of::<Event>() == 96);
    // RingBuf::reserve needs 8 % align == 0.
    assert!(8 % align_of::<Event>() == 0);
};
