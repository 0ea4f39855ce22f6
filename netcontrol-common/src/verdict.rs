//! The pure decision logic, shared by the eBPF programs and host unit tests: given what the map
//! lookups found, decide. No maps or helpers are touched here, so every branch is testable on
//! the host; the kernel tests then prove the programs feed it the right inputs.

use crate::abi::{
    ALLOW_F_PROTECTED, AllowValue, MAX_PORT_RANGES, PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6,
    REASON_ICMP_SOCKET, REASON_METADATA, REASON_NONE, REASON_NOT_ALLOWLISTED,
    REASON_PORT_NOT_ALLOWED, REASON_RAW_SOCKET, SANDBOX_F_ALLOW_ICMP, SANDBOX_F_ALLOW_RAW,
    SANDBOX_F_AUDIT, SOCK_DGRAM, SOCK_RAW, VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY,
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
        Some(e) if e.flags & ALLOW_F_PROTECTED != 0 => REASON_METADATA,
        Some(_) => REASON_PORT_NOT_ALLOWED,
    }
}

/// Whether a new socket is of a kind a sandbox may deny (raw, ICMP datagram). Every other
/// kind is allowed outright and not counted: its destinations are judged at connect/sendmsg,
/// and skipping the sandbox lookup keeps socket() cheap.
#[inline(always)]
pub fn socket_needs_judging(sock_type: u16, protocol: u8) -> bool {
    sock_type == SOCK_RAW
        || (sock_type == SOCK_DGRAM && (protocol == PROTO_ICMP || protocol == PROTO_ICMPV6))
}

/// Reason a socket creation is denied (`REASON_NONE` if it is allowed).
#[inline(always)]
pub fn judge_socket(sandbox_flags: u32, sock_type: u16, protocol: u8) -> u8 {
    if sock_type == SOCK_RAW {
        if sandbox_flags & SANDBOX_F_ALLOW_RAW != 0 { REASON_NONE } else { REASON_RAW_SOCKET }
    } else if sock_type == SOCK_DGRAM && (protocol == PROTO_ICMP || protocol == PROTO_ICMPV6) {
        if sandbox_flags & SANDBOX_F_ALLOW_ICMP != 0 { REASON_NONE } else { REASON_ICMP_SOCKET }
    } else {
        REASON_NONE
    }
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

/// The return value of a cgroup sock / sock_addr program: 1 lets the syscall proceed, 0 makes it
/// fail with EPERM.
#[inline(always)]
pub fn program_return(verdict: u8) -> i32 {
    if verdict == VERDICT_DENY { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{PROTO_TCP, PROTO_UDP, PortRange, REASON_NO_SANDBOX, SOCK_STREAM};

    #[test]
    fn only_raw_and_icmp_sockets_are_judged() {
        assert!(socket_needs_judging(SOCK_RAW, 0));
        assert!(socket_needs_judging(SOCK_RAW, PROTO_UDP));
        assert!(socket_needs_judging(SOCK_DGRAM, PROTO_ICMP));
        assert!(socket_needs_judging(SOCK_DGRAM, PROTO_ICMPV6));
        assert!(!socket_needs_judging(SOCK_STREAM, 0));
        assert!(!socket_needs_judging(SOCK_STREAM, PROTO_TCP));
        assert!(!socket_needs_judging(SOCK_DGRAM, 0));
        assert!(!socket_needs_judging(SOCK_DGRAM, PROTO_UDP));
        // What is not judged is exactly what judge_socket allows in every sandbox.
        for ty in [SOCK_STREAM, SOCK_DGRAM, SOCK_RAW] {
            for proto in [0, PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6] {
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
        assert_eq!(judge_socket(0, SOCK_STREAM, PROTO_TCP), REASON_NONE);
        assert_eq!(judge_socket(0, SOCK_DGRAM, PROTO_UDP), REASON_NONE);
        assert_eq!(judge_socket(0, SOCK_DGRAM, 0), REASON_NONE);
        assert_eq!(judge_socket(0, SOCK_RAW, PROTO_ICMP), REASON_RAW_SOCKET);
        assert_eq!(judge_socket(0, SOCK_RAW, 255), REASON_RAW_SOCKET);
        assert_eq!(judge_socket(SANDBOX_F_ALLOW_RAW, SOCK_RAW, 255), REASON_NONE);
        assert_eq!(judge_socket(0, SOCK_DGRAM, PROTO_ICMP), REASON_ICMP_SOCKET);
        assert_eq!(judge_socket(0, SOCK_DGRAM, PROTO_ICMPV6), REASON_ICMP_SOCKET);
        assert_eq!(judge_socket(SANDBOX_F_ALLOW_ICMP, SOCK_DGRAM, PROTO_ICMPV6), REASON_NONE);
        // Allowing ping does not allow raw, and the other way round.
        assert_eq!(judge_socket(SANDBOX_F_ALLOW_ICMP, SOCK_RAW, PROTO_ICMP), REASON_RAW_SOCKET);
        assert_eq!(judge_socket(SANDBOX_F_ALLOW_RAW, SOCK_DGRAM, PROTO_ICMP), REASON_ICMP_SOCKET);
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
