//! The pure decision logic, shared by the eBPF programs and host unit tests: given what the map
//! lookups found, decide. No maps or helpers are touched here, so every branch is testable on
//! the host; the kernel tests then prove the programs feed it the right inputs.

use crate::abi::{
    ALLOW_F_PROTECTED, ALLOW_REASON_SHIFT, ALWAYS_ALLOWED_FAMILIES, AllowValue,
    EVENTS_PER_KEY_PER_SEC, EVENTS_PER_SANDBOX_PER_SEC, MAX_PORT_RANGES, PROTO_ANY, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_MPTCP, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PROTO_UDPLITE, REASON_ICMP_SOCKET,
    REASON_METADATA, REASON_NONE, REASON_NOT_ALLOWLISTED, REASON_PORT_NOT_ALLOWED, REASON_PROTOCOL,
    REASON_RAW_SOCKET, REASON_SCTP_SOCKET, SANDBOX_F_ALLOW_ICMP, SANDBOX_F_ALLOW_RAW,
    SANDBOX_F_ALLOW_SCTP, SANDBOX_F_AUDIT, SOCK_DGRAM, SOCK_RAW, SOCK_STREAM, STATS_FOLDED,
    STATS_KEYS_PER_SANDBOX, StatsKey, VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY,
};

/// Whether a rule's protocol covers the attempt's. ICMP rules cover ICMPv6 too, so one
/// `icmp` rule works for both families.
#[inline(always)]
pub fn proto_matches(rule: u8, attempt: u8) -> bool {
    rule == PROTO_ANY || rule == attempt || (rule == PROTO_ICMP && attempt == PROTO_ICMPV6)
}

/// Does the entry allow `proto`/`port`?
#[inline(always)]
pub fn permits(entry: &AllowValue, proto: u8, port: u16) -> bool {
    let n = entry.count as usize;
    // A constant bound keeps the verifier happy; `n` ends the loop early.
    let mut i = 0;
    while i < MAX_PORT_RANGES {
        if i >= n {
            return false;
        }
        let r = &entry.ranges[i];
        if proto_matches(r.proto, proto) && r.lo <= port && port <= r.hi {
            return true;
        }
        i += 1;
    }
    false
}

/// Reason an address attempt is denied (`REASON_NONE` if it is allowed), given the most
/// specific allow entry covering the destination.
#[inline(always)]
pub fn judge_destination(entry: Option<&AllowValue>, proto: u8, port: u16) -> u8 {
    match entry {
        None => REASON_NOT_ALLOWLISTED,
        Some(e) if permits(e, proto, port) => REASON_NONE,
        Some(e) if e.flags & ALLOW_F_PROTECTED != 0 => protected_reason(e.flags),
        Some(_) => REASON_PORT_NOT_ALLOWED,
    }
}

/// The `ALLOW_F_*` flags of an entry that protects its prefix, reporting `reason`.
#[inline(always)]
pub const fn protected_flags(reason: u8) -> u32 {
    ALLOW_F_PROTECTED | ((reason as u32) << ALLOW_REASON_SHIFT)
}

/// What a protected entry reports (metadata for entries written before reasons were kept).
#[inline(always)]
pub fn protected_reason(flags: u32) -> u8 {
    match ((flags >> ALLOW_REASON_SHIFT) & 0xff) as u8 {
        REASON_NONE => REASON_METADATA,
        r => r,
    }
}

/// Whether a new inet socket is of a kind a sandbox may deny: anything but TCP, UDP,
/// UDP-Lite and MPTCP (whose destinations connect/sendmsg judge). Those are allowed outright
/// and not counted, and skipping the sandbox lookup keeps socket() cheap. `protocol` is the
/// socket's, resolved (TCP for a stream socket of protocol 0).
#[inline(always)]
pub fn socket_needs_judging(sock_type: u16, protocol: u32) -> bool {
    let p = protocol;
    let judged_later = match sock_type {
        SOCK_STREAM => p == 0 || p == PROTO_TCP as u32 || p == PROTO_MPTCP,
        SOCK_DGRAM => p == 0 || p == PROTO_UDP as u32 || p == PROTO_UDPLITE as u32,
        _ => false,
    };
    !judged_later
}

/// Reason a socket creation is denied (`REASON_NONE` if it is allowed).
#[inline(always)]
pub fn judge_socket(sandbox_flags: u32, sock_type: u16, protocol: u32) -> u8 {
    let icmp = protocol == PROTO_ICMP as u32 || protocol == PROTO_ICMPV6 as u32;
    if sock_type == SOCK_RAW {
        if sandbox_flags & SANDBOX_F_ALLOW_RAW != 0 { REASON_NONE } else { REASON_RAW_SOCKET }
    } else if sock_type == SOCK_DGRAM && icmp {
        if sandbox_flags & SANDBOX_F_ALLOW_ICMP != 0 { REASON_NONE } else { REASON_ICMP_SOCKET }
    } else if protocol == PROTO_SCTP as u32 {
        // SCTP associations can be set up by sendmsg() without connect(), which the address
        // hooks may not see: only a policy that allows SCTP gets the sockets.
        if sandbox_flags & SANDBOX_F_ALLOW_SCTP != 0 { REASON_NONE } else { REASON_SCTP_SOCKET }
    } else if socket_needs_judging(sock_type, protocol) {
        // L2TP/IP, DCCP and the like: their connect() and sendmsg() run no cgroup hook, so
        // they could reach anything. As open as raw sockets, and opened with them.
        if sandbox_flags & SANDBOX_F_ALLOW_RAW != 0 { REASON_NONE } else { REASON_PROTOCOL }
    } else {
        REASON_NONE
    }
}

/// Whether a socket family may be created: unix, inet, inet6 and netlink always, others only
/// with their bit in the sandbox's `families`.
#[inline(always)]
pub fn family_allowed(family: u32, extra: u64) -> bool {
    family < 64 && (ALWAYS_ALLOWED_FAMILIES | extra) & (1u64 << family) != 0
}

/// Socket option levels and names (`<asm-generic/socket.h>`, `<linux/in.h>`,
/// `<linux/in6.h>`).
pub const SOL_IP: i32 = 0;
pub const SOL_SOCKET: i32 = 1;
pub const SOL_IPV6: i32 = 41;
pub const SO_BINDTODEVICE: i32 = 25;
pub const SO_BINDTOIFINDEX: i32 = 62;
pub const IP_OPTIONS: i32 = 4;
pub const IP_UNICAST_IF: i32 = 50;
pub const IPV6_NEXTHOP: i32 = 9;
pub const IPV6_PKTINFO: i32 = 50;
pub const IPV6_UNICAST_IF: i32 = 76;
pub const IPV6_2292HOPOPTS: i32 = 3;
pub const IPV6_2292DSTOPTS: i32 = 4;
pub const IPV6_2292RTHDR: i32 = 5;
pub const IPV6_2292PKTOPTIONS: i32 = 6;
pub const IPV6_HOPOPTS: i32 = 54;
pub const IPV6_RTHDRDSTOPTS: i32 = 55;
pub const IPV6_RTHDR: i32 = 57;
pub const IPV6_DSTOPTS: i32 = 59;

/// Whether a socket option can choose where packets go: IPv4 `IP_OPTIONS` (source routes),
/// IPv6 routing headers (a type-4 segment routing header sends the packet to its first
/// segment, while the hooks judged the last) and the options that can carry one or ride
/// along with one (hop-by-hop and destination options, RFC 2292 packet options); and the
/// options that choose the interface or the next hop (`SO_BINDTODEVICE`,
/// `SO_BINDTOIFINDEX`, `IP_UNICAST_IF`, `IPV6_UNICAST_IF`, sticky `IPV6_PKTINFO`,
/// `IPV6_NEXTHOP`): on an interface no route for the destination uses, the kernel takes the
/// destination to be on that link, and whatever host answers for the address there gets the
/// packets. The RFC 2292 HOPOPTS/DSTOPTS/RTHDR names only ask to receive those headers; they
/// are refused too, as nothing in a sandbox needs them.
#[inline(always)]
pub fn routing_option(level: i32, optname: i32) -> bool {
    match level {
        SOL_SOCKET => optname == SO_BINDTODEVICE || optname == SO_BINDTOIFINDEX,
        SOL_IP => optname == IP_OPTIONS || optname == IP_UNICAST_IF,
        SOL_IPV6 => matches!(
            optname,
            IPV6_2292HOPOPTS
                | IPV6_2292DSTOPTS
                | IPV6_2292RTHDR
                | IPV6_2292PKTOPTIONS
                | IPV6_HOPOPTS
                | IPV6_RTHDRDSTOPTS
                | IPV6_RTHDR
                | IPV6_DSTOPTS
                | IPV6_NEXTHOP
                | IPV6_PKTINFO
                | IPV6_UNICAST_IF
        ),
        _ => false,
    }
}

/// IPv4 option types that route the packet through the addresses they list.
pub const IPOPT_LSRR: u8 = 0x83;
pub const IPOPT_SSRR: u8 = 0x89;
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
/// The most option bytes an IPv4 header holds.
pub const IPV4_MAX_OPTIONS: usize = 40;

/// Whether IPv4 options (the header bytes after the first 20, `len` of them) hold a loose or
/// strict source route. Malformed options count as one: the kernel would not send them, and a
/// parser that gives up must not let them through.
#[inline(always)]
pub fn ipv4_source_routed(opts: &[u8; IPV4_MAX_OPTIONS], len: usize) -> bool {
    ipv4_source_routed_by(len, |i| opts.get(i).copied())
}

/// `ipv4_source_routed` over the option bytes as `byte(i)` reads them. The packet program
/// reads each from the packet: Linux before 5.12 refuses a read from the stack at a variable
/// offset, which indexing a copy on the stack is.
#[inline(always)]
pub fn ipv4_source_routed_by(len: usize, byte: impl Fn(usize) -> Option<u8>) -> bool {
    let len = if len > IPV4_MAX_OPTIONS { IPV4_MAX_OPTIONS } else { len };
    let mut i = 0;
    // Each step consumes at least one byte, so 40 steps cover every layout.
    let mut steps = 0;
    while steps < IPV4_MAX_OPTIONS {
        steps += 1;
        if i >= len {
            return false;
        }
        let Some(kind) = byte(i) else { return true };
        match kind {
            IPOPT_END => return false,
            IPOPT_NOOP => i += 1,
            IPOPT_LSRR | IPOPT_SSRR => return true,
            _ => {
                if i + 1 >= len {
                    return true;
                }
                let Some(olen) = byte(i + 1) else { return true };
                if olen < 2 {
                    return true;
                }
                i += olen as usize;
            }
        }
    }
    false
}

/// IPv6 next-header values.
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_TCP: u8 = 6;
pub const NEXTHDR_UDP: u8 = 17;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_AUTH: u8 = 51;
pub const NEXTHDR_NONE: u8 = 59;
pub const NEXTHDR_DEST: u8 = 60;
pub const NEXTHDR_ICMPV6: u8 = 58;

/// One step of the IPv6 extension header chain: what follows a header of type `nexthdr`
/// whose first two bytes are `hdr` (next header, length field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V6Step {
    /// An upper-layer protocol or no next header: the chain ends, no routing header.
    Done,
    /// A routing header.
    Routing,
    /// Another extension header follows, `len` bytes on: its type is `next`.
    Next { next: u8, len: u32 },
}

#[inline(always)]
pub fn v6_step(nexthdr: u8, hdr: [u8; 2]) -> V6Step {
    match nexthdr {
        NEXTHDR_ROUTING => V6Step::Routing,
        NEXTHDR_HOP | NEXTHDR_DEST => {
            V6Step::Next { next: hdr[0], len: (u32::from(hdr[1]) + 1) * 8 }
        }
        NEXTHDR_FRAGMENT => V6Step::Next { next: hdr[0], len: 8 },
        NEXTHDR_AUTH => V6Step::Next { next: hdr[0], len: (u32::from(hdr[1]) + 2) * 4 },
        _ => V6Step::Done,
    }
}

/// Whether an IPv4 address (network order bytes) is loopback (127.0.0.0/8).
#[inline(always)]
pub fn is_loopback_v4(a: &[u8]) -> bool {
    a.first() == Some(&127)
}

/// Whether an IPv6 address is ::1 or a v4-mapped loopback address.
#[inline(always)]
pub fn is_loopback_v6(a: &[u8; 16]) -> bool {
    let mut zero_head = true;
    let mut i = 0;
    while i < 10 {
        if a[i] != 0 {
            zero_head = false;
        }
        i += 1;
    }
    if !zero_head {
        return false;
    }
    let mapped = a[10] == 0xff && a[11] == 0xff && a[12] == 127;
    let one = a[10] == 0 && a[11] == 0 && a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 1;
    mapped || one
}

/// Event budgets: whether a one-second window that started at `start_ns` is over.
#[inline(always)]
pub fn window_over(now_ns: u64, start_ns: u64) -> bool {
    now_ns.wrapping_sub(start_ns) >= 1_000_000_000
}

/// Whether a denial gets an event of its own: its key and its sandbox both have budget left
/// in their current windows (counts as of before this denial). The rest are counted per key
/// and reported in summary records, so a flood never hides a distinct attempt.
#[inline(always)]
pub fn may_emit(key_sent: u32, sandbox_sent: u32) -> bool {
    key_sent < EVENTS_PER_KEY_PER_SEC && sandbox_sent < EVENTS_PER_SANDBOX_PER_SEC
}

/// Turn a reason into the verdict for a sandbox in the given mode.
#[inline(always)]
pub fn verdict(reason: u8, sandbox_flags: u32) -> u8 {
    if reason == REASON_NONE {
        VERDICT_ALLOW
    } else if sandbox_flags & SANDBOX_F_AUDIT != 0 {
        VERDICT_AUDIT
    } else {
        VERDICT_DENY
    }
}

/// Least time between two wakeups of the event reader caused by one CPU. Waking a reader
/// costs the denied connect() several microseconds (an IPI); during a storm, one wakeup per
/// interval carries all the events queued since.
pub const WAKEUP_INTERVAL_NS: u64 = 5_000_000;

/// Whether committing an event should wake the reader: the first event after a quiet spell
/// (so a lone denial is reported at once), then at most one per `WAKEUP_INTERVAL_NS` per CPU,
/// and always once the ring is a quarter full so it never fills for want of a wakeup. Events
/// that woke no one are read at the reader's next wakeup or periodic look.
#[inline(always)]
pub fn wake_reader(now_ns: u64, last_wakeup_ns: u64, pending_bytes: u64, ring_bytes: u64) -> bool {
    now_ns.wrapping_sub(last_wakeup_ns) >= WAKEUP_INTERVAL_NS || pending_bytes >= ring_bytes / 4
}

/// The STATS key an attempt is counted under: its own, while the sandbox has fewer than its
/// share of keys (`keys_held`), else the sandbox's folded key for its verdict and counter
/// (hook, family, protocol and reason unknown), so that the totals stay right.
#[inline(always)]
pub fn stats_key_within_share(key: StatsKey, keys_held: u64) -> StatsKey {
    if keys_held < STATS_KEYS_PER_SANDBOX {
        return key;
    }
    StatsKey {
        hook: STATS_FOLDED,
        family: STATS_FOLDED,
        protocol: STATS_FOLDED,
        reason: STATS_FOLDED,
        ..key
    }
}

/// The return value of a cgroup sock / sock_addr program: 1 lets the syscall proceed, 0 makes it
/// fail with EPERM.
#[inline(always)]
pub fn program_return(verdict: u8) -> i32 {
    if verdict == VERDICT_DENY { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_beyond_its_share_of_stats_keys_is_counted_under_folded_ones() {
        use crate::abi::{COUNTER_ATTEMPTS, STATS_FOLDED_PER_SANDBOX, VERDICT_REDIRECT};
        let key = StatsKey {
            sandbox_id: 7,
            hook: 1,
            family: 2,
            protocol: 6,
            verdict: VERDICT_DENY,
            reason: 1,
            counter: COUNTER_ATTEMPTS,
            _pad: [0; 2],
        };
        assert_eq!(stats_key_within_share(key, STATS_KEYS_PER_SANDBOX - 1), key);
        let folded = stats_key_within_share(key, STATS_KEYS_PER_SANDBOX);
        assert_eq!((folded.sandbox_id, folded.verdict, folded.counter), (7, VERDICT_DENY, 0));
        assert_eq!([folded.hook, folded.family, folded.protocol, folded.reason], [STATS_FOLDED; 4]);
        // Whatever a sandbox varies, its folded keys are one per verdict and counter.
        let verdicts = [VERDICT_ALLOW, VERDICT_DENY, VERDICT_AUDIT, VERDICT_REDIRECT];
        assert!((verdicts.len() * 3) as u64 <= STATS_FOLDED_PER_SANDBOX);
    }
    use crate::abi::{PortRange, REASON_NO_SANDBOX};

    #[test]
    fn only_tcp_udp_udplite_and_mptcp_sockets_go_unjudged() {
        let p = |x: u8| u32::from(x);
        assert!(socket_needs_judging(SOCK_RAW, 0));
        assert!(socket_needs_judging(SOCK_RAW, p(PROTO_UDP)));
        assert!(socket_needs_judging(SOCK_DGRAM, p(PROTO_ICMP)));
        assert!(socket_needs_judging(SOCK_DGRAM, p(PROTO_ICMPV6)));
        assert!(!socket_needs_judging(SOCK_STREAM, 0));
        assert!(!socket_needs_judging(SOCK_STREAM, p(PROTO_TCP)));
        assert!(!socket_needs_judging(SOCK_STREAM, PROTO_MPTCP));
        assert!(!socket_needs_judging(SOCK_DGRAM, 0));
        assert!(!socket_needs_judging(SOCK_DGRAM, p(PROTO_UDP)));
        assert!(!socket_needs_judging(SOCK_DGRAM, p(PROTO_UDPLITE)));
        // L2TP/IP (115, datagram), DCCP (type 6, protocol 33), SMC (256), IPPROTO_MPTCP
        // truncated to a byte (6) on a datagram socket.
        for (ty, proto) in [(SOCK_DGRAM, 115), (6, 33), (SOCK_STREAM, 256), (SOCK_DGRAM, 6)] {
            assert!(socket_needs_judging(ty, proto), "{ty} {proto}");
            assert_eq!(judge_socket(0, ty, proto), REASON_PROTOCOL, "{ty} {proto}");
            assert_eq!(judge_socket(SANDBOX_F_ALLOW_RAW, ty, proto), REASON_NONE);
        }
        // What is not judged is exactly what judge_socket allows in every sandbox.
        for ty in [SOCK_STREAM, SOCK_DGRAM, SOCK_RAW] {
            for proto in [0, PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6].map(u32::from) {
                if !socket_needs_judging(ty, proto) {
                    assert_eq!(judge_socket(0, ty, proto), REASON_NONE, "{ty} {proto}");
                }
            }
        }
    }

    #[test]
    fn the_reader_is_woken_after_quiet_then_at_most_once_per_interval() {
        let ring = 1 << 20;
        // First event ever on this CPU (slot still 0), and after a quiet spell.
        assert!(wake_reader(10 * WAKEUP_INTERVAL_NS, 0, 0, ring));
        assert!(wake_reader(1_000 + WAKEUP_INTERVAL_NS, 1_000, 0, ring));
        // In a storm: not again within the interval...
        assert!(!wake_reader(1_000 + WAKEUP_INTERVAL_NS - 1, 1_000, 4096, ring));
        // ...unless the ring is filling up.
        assert!(wake_reader(1_001, 1_000, ring / 4, ring));
    }

    fn entry(ranges: &[(u8, u16, u16)], flags: u32) -> AllowValue {
        let mut v = AllowValue { flags, ..AllowValue::default() };
        for (i, &(proto, lo, hi)) in ranges.iter().enumerate() {
            v.ranges[i] = PortRange { lo, hi, proto, _pad: 0 };
        }
        v.count = ranges.len() as u32;
        v
    }

    #[test]
    fn no_entry_is_not_allowlisted() {
        assert_eq!(judge_destination(None, PROTO_TCP, 80), REASON_NOT_ALLOWLISTED);
    }

    #[test]
    fn port_and_protocol_must_both_match() {
        let e = entry(&[(PROTO_TCP, 443, 443), (PROTO_UDP, 53, 53)], 0);
        assert_eq!(judge_destination(Some(&e), PROTO_TCP, 443), REASON_NONE);
        assert_eq!(judge_destination(Some(&e), PROTO_UDP, 53), REASON_NONE);
        assert_eq!(judge_destination(Some(&e), PROTO_UDP, 443), REASON_PORT_NOT_ALLOWED);
        assert_eq!(judge_destination(Some(&e), PROTO_TCP, 53), REASON_PORT_NOT_ALLOWED);
        assert_eq!(judge_destination(Some(&e), PROTO_TCP, 444), REASON_PORT_NOT_ALLOWED);
    }

    #[test]
    fn any_protocol_and_ranges() {
        let e = entry(&[(PROTO_ANY, 8000, 8100)], 0);
        assert_eq!(judge_destination(Some(&e), PROTO_TCP, 8000), REASON_NONE);
        assert_eq!(judge_destination(Some(&e), PROTO_UDP, 8100), REASON_NONE);
        assert_eq!(judge_destination(Some(&e), PROTO_ICMP, 8050), REASON_NONE);
        assert_eq!(judge_destination(Some(&e), PROTO_UDP, 7999), REASON_PORT_NOT_ALLOWED);
        assert_eq!(judge_destination(Some(&e), PROTO_UDP, 8101), REASON_PORT_NOT_ALLOWED);
    }

    #[test]
    fn icmp_rule_covers_icmpv6() {
        let e = entry(&[(PROTO_ICMP, 0, u16::MAX)], 0);
        assert_eq!(judge_destination(Some(&e), PROTO_ICMPV6, 0), REASON_NONE);
        assert_eq!(judge_destination(Some(&e), PROTO_TCP, 0), REASON_PORT_NOT_ALLOWED);
    }

    #[test]
    fn count_bounds_the_ranges_read() {
        // A stale range past `count` must never allow.
        let mut e = entry(&[(PROTO_TCP, 1, 1)], 0);
        e.ranges[1] = PortRange { lo: 0, hi: u16::MAX, proto: PROTO_ANY, _pad: 0 };
        assert_eq!(judge_destination(Some(&e), PROTO_TCP, 2), REASON_PORT_NOT_ALLOWED);
        let full = entry(&[(PROTO_TCP, 7, 7); MAX_PORT_RANGES], 0);
        assert_eq!(judge_destination(Some(&full), PROTO_TCP, 7), REASON_NONE);
        let mut over = full;
        over.count = u32::MAX;
        assert_eq!(judge_destination(Some(&over), PROTO_TCP, 8), REASON_PORT_NOT_ALLOWED);
    }

    #[test]
    fn protected_entry_reports_metadata() {
        let e = entry(&[], ALLOW_F_PROTECTED);
        assert_eq!(judge_destination(Some(&e), PROTO_TCP, 80), REASON_METADATA);
        let opened = entry(&[(PROTO_UDP, 53, 53)], ALLOW_F_PROTECTED);
        assert_eq!(judge_destination(Some(&opened), PROTO_UDP, 53), REASON_NONE);
        assert_eq!(judge_destination(Some(&opened), PROTO_TCP, 80), REASON_METADATA);
    }

    #[test]
    fn sockets() {
        assert_eq!(judge_socket(0, SOCK_STREAM, u32::from(PROTO_TCP)), REASON_NONE);
        assert_eq!(judge_socket(0, SOCK_DGRAM, u32::from(PROTO_UDP)), REASON_NONE);
        assert_eq!(judge_socket(0, SOCK_DGRAM, 0), REASON_NONE);
        assert_eq!(judge_socket(0, SOCK_RAW, u32::from(PROTO_ICMP)), REASON_RAW_SOCKET);
        assert_eq!(judge_socket(0, SOCK_RAW, 255), REASON_RAW_SOCKET);
        assert_eq!(judge_socket(SANDBOX_F_ALLOW_RAW, SOCK_RAW, 255), REASON_NONE);
        assert_eq!(judge_socket(0, SOCK_DGRAM, u32::from(PROTO_ICMP)), REASON_ICMP_SOCKET);
        assert_eq!(judge_socket(0, SOCK_DGRAM, u32::from(PROTO_ICMPV6)), REASON_ICMP_SOCKET);
        assert_eq!(
            judge_socket(SANDBOX_F_ALLOW_ICMP, SOCK_DGRAM, u32::from(PROTO_ICMPV6)),
            REASON_NONE
        );
        // Allowing ping does not allow raw, and the other way round.
        assert_eq!(
            judge_socket(SANDBOX_F_ALLOW_ICMP, SOCK_RAW, u32::from(PROTO_ICMP)),
            REASON_RAW_SOCKET
        );
        assert_eq!(
            judge_socket(SANDBOX_F_ALLOW_RAW, SOCK_DGRAM, u32::from(PROTO_ICMP)),
            REASON_ICMP_SOCKET
        );
    }

    #[test]
    fn sctp_sockets_need_a_rule() {
        use crate::abi::{SOCK_SEQPACKET, SOCK_STREAM};
        assert!(socket_needs_judging(SOCK_SEQPACKET, u32::from(PROTO_SCTP)));
        assert!(socket_needs_judging(SOCK_STREAM, u32::from(PROTO_SCTP)));
        assert_eq!(judge_socket(0, SOCK_SEQPACKET, u32::from(PROTO_SCTP)), REASON_SCTP_SOCKET);
        assert_eq!(judge_socket(0, SOCK_STREAM, u32::from(PROTO_SCTP)), REASON_SCTP_SOCKET);
        assert_eq!(
            judge_socket(SANDBOX_F_ALLOW_SCTP, SOCK_STREAM, u32::from(PROTO_SCTP)),
            REASON_NONE
        );
    }

    #[test]
    fn families_beyond_ip_unix_and_netlink_need_a_bit() {
        for f in [1, 2, 10, 16] {
            assert!(family_allowed(f, 0), "{f}");
        }
        // AF_PACKET 17, AF_VSOCK 40, AF_RDS 21, AF_TIPC 30, AF_ALG 38.
        for f in [17, 40, 21, 30, 38, 63] {
            assert!(!family_allowed(f, 0), "{f}");
            assert!(family_allowed(f, 1 << f), "{f}");
        }
        assert!(!family_allowed(64, u64::MAX));
        assert!(!family_allowed(u32::MAX, u64::MAX));
    }

    #[test]
    fn route_changing_socket_options() {
        assert!(routing_option(SOL_IPV6, IPV6_RTHDR));
        assert!(routing_option(SOL_IPV6, IPV6_HOPOPTS));
        assert!(routing_option(SOL_IPV6, IPV6_DSTOPTS));
        assert!(routing_option(SOL_IPV6, IPV6_RTHDRDSTOPTS));
        assert!(routing_option(SOL_IPV6, IPV6_2292PKTOPTIONS));
        assert!(routing_option(SOL_IPV6, IPV6_2292RTHDR));
        assert!(routing_option(SOL_IP, IP_OPTIONS));
        assert!(routing_option(SOL_SOCKET, SO_BINDTODEVICE));
        assert!(routing_option(SOL_SOCKET, SO_BINDTOIFINDEX));
        assert!(routing_option(SOL_IP, IP_UNICAST_IF));
        assert!(routing_option(SOL_IPV6, IPV6_UNICAST_IF));
        assert!(routing_option(SOL_IPV6, IPV6_PKTINFO));
        // IP_PKTINFO (8) and IPV6_RECVPKTINFO (49) only ask for what arrives.
        assert!(!routing_option(SOL_IP, 8));
        assert!(!routing_option(SOL_IPV6, 49));
        // IPV6_V6ONLY (26), IPV6_UNICAST_HOPS (16), IP_TOS (1), IP_TTL (2), SO_REUSEADDR.
        assert!(!routing_option(SOL_IPV6, 26));
        assert!(!routing_option(SOL_IPV6, 16));
        assert!(!routing_option(SOL_IP, 1));
        assert!(!routing_option(SOL_IP, 2));
        assert!(!routing_option(1, 2));
        // TCP_NODELAY has the number of IPV6_2292PKTOPTIONS at another level.
        assert!(!routing_option(6, IPV6_2292PKTOPTIONS));
    }

    fn opts(bytes: &[u8]) -> ([u8; IPV4_MAX_OPTIONS], usize) {
        let mut o = [0u8; IPV4_MAX_OPTIONS];
        o[..bytes.len()].copy_from_slice(bytes);
        (o, bytes.len())
    }

    #[test]
    fn ipv4_options_that_cannot_be_read_count_as_a_source_route() {
        assert!(ipv4_source_routed_by(8, |_| None));
        // Readable up to the second option only.
        let o = [1u8, 0x44, 4, 5];
        assert!(ipv4_source_routed_by(8, |i| o.get(i).copied()));
        assert!(!ipv4_source_routed_by(4, |i| [1u8, 1, 1, 1].get(i).copied()));
    }

    #[test]
    fn ipv4_source_routes_are_found_behind_other_options() {
        let (o, n) = opts(&[IPOPT_LSRR, 7, 4, 10, 0, 0, 1, 0]);
        assert!(ipv4_source_routed(&o, n));
        let (o, n) = opts(&[1, 1, IPOPT_SSRR, 7, 4, 10, 0, 0, 1, 0]);
        assert!(ipv4_source_routed(&o, n));
        // Record route (7) then a source route.
        let (o, n) = opts(&[7, 7, 4, 0, 0, 0, 0, IPOPT_LSRR, 7, 4, 1, 2, 3, 4]);
        assert!(ipv4_source_routed(&o, n));
        // Only a timestamp option, then the end marker hiding a "route" in the padding.
        let (o, n) = opts(&[0x44, 4, 5, 0, 0, IPOPT_LSRR, 7, 4]);
        assert!(!ipv4_source_routed(&o, n));
        let (o, n) = opts(&[1, 1, 1, 1]);
        assert!(!ipv4_source_routed(&o, n));
        // A length that cannot be right is treated as a route (fail closed).
        let (o, n) = opts(&[7, 0, 0, 0]);
        assert!(ipv4_source_routed(&o, n));
        let (o, n) = opts(&[7]);
        assert!(!ipv4_source_routed(&o, 0) && ipv4_source_routed(&o, n));
    }

    #[test]
    fn ipv6_extension_headers_lead_to_the_routing_header() {
        assert_eq!(v6_step(NEXTHDR_TCP, [0, 0]), V6Step::Done);
        assert_eq!(v6_step(NEXTHDR_NONE, [0, 0]), V6Step::Done);
        assert_eq!(v6_step(NEXTHDR_ROUTING, [6, 2]), V6Step::Routing);
        assert_eq!(
            v6_step(NEXTHDR_HOP, [NEXTHDR_ROUTING, 0]),
            V6Step::Next { next: NEXTHDR_ROUTING, len: 8 }
        );
        assert_eq!(
            v6_step(NEXTHDR_DEST, [NEXTHDR_UDP, 2]),
            V6Step::Next { next: NEXTHDR_UDP, len: 24 }
        );
        assert_eq!(
            v6_step(NEXTHDR_FRAGMENT, [NEXTHDR_UDP, 0]),
            V6Step::Next { next: NEXTHDR_UDP, len: 8 }
        );
        assert_eq!(
            v6_step(NEXTHDR_AUTH, [NEXTHDR_TCP, 4]),
            V6Step::Next { next: NEXTHDR_TCP, len: 24 }
        );
    }

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback_v4(&[127, 0, 0, 1]) && is_loopback_v4(&[127, 9, 9, 9]));
        assert!(!is_loopback_v4(&[10, 0, 0, 1]) && !is_loopback_v4(&[0, 0, 0, 0]));
        let v6 = |s: &str| s.parse::<core::net::Ipv6Addr>().expect("ip").octets();
        assert!(is_loopback_v6(&v6("::1")));
        assert!(is_loopback_v6(&v6("::ffff:127.0.0.5")));
        assert!(!is_loopback_v6(&v6("::")));
        assert!(!is_loopback_v6(&v6("::ffff:10.0.0.1")));
        assert!(!is_loopback_v6(&v6("fe80::1")));
        assert!(!is_loopback_v6(&v6("1::1")));
    }

    #[test]
    fn budgets_let_a_few_events_per_key_through_then_count() {
        assert!(may_emit(0, 0));
        assert!(may_emit(EVENTS_PER_KEY_PER_SEC - 1, EVENTS_PER_SANDBOX_PER_SEC - 1));
        assert!(!may_emit(EVENTS_PER_KEY_PER_SEC, 0));
        assert!(!may_emit(0, EVENTS_PER_SANDBOX_PER_SEC));
        assert!(window_over(2_000_000_000, 1_000_000_000));
        assert!(!window_over(1_999_999_999, 1_000_000_000));
        // A slot never written (0) is over at once.
        assert!(window_over(5_000_000_000, 0));
    }

    #[test]
    fn protected_entries_keep_their_reason() {
        use crate::abi::{REASON_LINK_LOCAL, REASON_UNSPECIFIED};
        for r in [REASON_METADATA, REASON_LINK_LOCAL, REASON_UNSPECIFIED] {
            let e = entry(&[], protected_flags(r));
            assert_eq!(judge_destination(Some(&e), PROTO_TCP, 80), r);
        }
        // Entries with the bare flag (older writers) report metadata.
        assert_eq!(protected_reason(ALLOW_F_PROTECTED), REASON_METADATA);
    }

    #[test]
    fn audit_never_denies() {
        for reason in
            [REASON_NOT_ALLOWLISTED, REASON_METADATA, REASON_RAW_SOCKET, REASON_NO_SANDBOX]
        {
            assert_eq!(verdict(reason, 0), VERDICT_DENY);
            assert_eq!(program_return(verdict(reason, 0)), 0);
            assert_eq!(verdict(reason, SANDBOX_F_AUDIT), VERDICT_AUDIT);
            assert_eq!(program_return(verdict(reason, SANDBOX_F_AUDIT)), 1);
        }
        assert_eq!(verdict(REASON_NONE, 0), VERDICT_ALLOW);
        assert_eq!(program_return(VERDICT_ALLOW), 1);
    }

    #[test]
    fn keys_put_the_policy_first_in_network_order() {
        assert_eq!(crate::abi::v4_key(0x01020304, [10, 0, 0, 1]), [1, 2, 3, 4, 10, 0, 0, 1]);
        let k = crate::abi::v6_key(7, [0xfd; 16]);
        assert_eq!(&k[..4], &[0, 0, 0, 7]);
        assert_eq!(&k[4..], &[0xfd; 16]);
    }
}
