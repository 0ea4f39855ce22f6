//! Userspace-only parts: `aya::Pod` for the map types, and the stable names under which codes
//! appear in events, metrics and the CLI.

use std::{borrow::ToOwned, format, string::String};

use crate::abi::*;

// SAFETY: all of these are #[repr(C)], contain only integers / integer arrays and have no
// implicit padding (sizes are asserted in `abi`), so every bit pattern is a valid value.
unsafe impl aya::Pod for SandboxValue {}
unsafe impl aya::Pod for PortRange {}
unsafe impl aya::Pod for AllowValue {}
unsafe impl aya::Pod for StatsKey {}
unsafe impl aya::Pod for Event {}
unsafe impl aya::Pod for DnsOrigin {}
unsafe impl aya::Pod for RecentKey {}
unsafe impl aya::Pod for DenialKey {}
unsafe impl aya::Pod for DenialValue {}
unsafe impl aya::Pod for Window {}

/// Stable name of a hook code (JSON `hook` field, metric label).
pub fn hook_name(hook: u8) -> &'static str {
    match hook {
        HOOK_CONNECT4 => "connect4",
        HOOK_CONNECT6 => "connect6",
        HOOK_SENDMSG4 => "sendmsg4",
        HOOK_SENDMSG6 => "sendmsg6",
        HOOK_SOCK_CREATE => "sock_create",
        HOOK_DNS_PROXY => "dns_proxy",
        HOOK_SETSOCKOPT => "setsockopt",
        HOOK_SKB_EGRESS => "skb_egress",
        HOOK_SKB_INGRESS => "skb_ingress",
        HOOK_BIND4 => "bind4",
        HOOK_BIND6 => "bind6",
        HOOK_LSM_SOCKET => "lsm_socket_create",
        HOOK_LSM_CONNECT => "lsm_socket_connect",
        HOOK_LSM_SENDMSG => "lsm_socket_sendmsg",
        // Counted beyond the sandbox's share of STATS keys (abi::STATS_KEYS_PER_SANDBOX).
        STATS_FOLDED => "beyond_share",
        _ => "unknown",
    }
}

/// Stable name of a reason code (JSON `reason` field, metric label).
pub fn reason_name(reason: u8) -> &'static str {
    match reason {
        REASON_NONE => "none",
        REASON_NOT_ALLOWLISTED => "not_allowlisted",
        REASON_PORT_NOT_ALLOWED => "port_not_allowed",
        REASON_METADATA => "metadata_address",
        REASON_RAW_SOCKET => "raw_socket",
        REASON_ICMP_SOCKET => "icmp_socket",
        REASON_NO_SANDBOX => "no_sandbox",
        REASON_SOCKET_OPTION => "socket_option",
        REASON_SOURCE_ROUTE => "source_route",
        REASON_UNSPECIFIED => "unspecified_address",
        REASON_LINK_LOCAL => "link_local_address",
        REASON_SCTP_SOCKET => "sctp_socket",
        REASON_SOCKET_FAMILY => "socket_family",
        REASON_ABSTRACT_UNIX => "abstract_unix_socket",
        REASON_LISTEN => "listen_not_allowed",
        REASON_LOOPBACK_ELSEWHERE => "loopback_elsewhere",
        REASON_PROTOCOL => "protocol_not_allowed",
        STATS_FOLDED => "beyond_share",
        _ => "unknown",
    }
}

/// Stable name of a verdict code.
pub fn verdict_name(verdict: u8) -> &'static str {
    match verdict {
        VERDICT_ALLOW => "allowed",
        VERDICT_DENY => "blocked",
        VERDICT_AUDIT => "would_block",
        VERDICT_REDIRECT => "redirected",
        _ => "unknown",
    }
}

/// Stable name of an address family (JSON `family`: the IP families by their IP names).
pub fn family_name(family: u8) -> &'static str {
    match family {
        AF_INET => "ipv4",
        AF_INET6 => "ipv6",
        AF_UNIX => "unix",
        _ => "other",
    }
}

/// Socket families by their `AF_*` number (`<linux/socket.h>`), as policies name them.
pub const SOCKET_FAMILIES: &[(&str, u8)] = &[
    ("unix", 1),
    ("inet", 2),
    ("ax25", 3),
    ("ipx", 4),
    ("appletalk", 5),
    ("netrom", 6),
    ("bridge", 7),
    ("atmpvc", 8),
    ("x25", 9),
    ("inet6", 10),
    ("rose", 11),
    ("decnet", 12),
    ("netbeui", 13),
    ("security", 14),
    ("key", 15),
    ("netlink", 16),
    ("packet", 17),
    ("ash", 18),
    ("econet", 19),
    ("atmsvc", 20),
    ("rds", 21),
    ("sna", 22),
    ("irda", 23),
    ("pppox", 24),
    ("wanpipe", 25),
    ("llc", 26),
    ("ib", 27),
    ("mpls", 28),
    ("can", 29),
    ("tipc", 30),
    ("bluetooth", 31),
    ("iucv", 32),
    ("rxrpc", 33),
    ("isdn", 34),
    ("phonet", 35),
    ("ieee802154", 36),
    ("caif", 37),
    ("alg", 38),
    ("nfc", 39),
    ("vsock", 40),
    ("kcm", 41),
    ("qipcrtr", 42),
    ("smc", 43),
    ("xdp", 44),
    ("mctp", 45),
];

/// The policy name of a socket family number ("af45" for ones without a name).
pub fn socket_family_name(family: u32) -> String {
    SOCKET_FAMILIES
        .iter()
        .find(|(_, n)| u32::from(*n) == family)
        .map_or_else(|| format!("af{family}"), |(name, _)| (*name).to_owned())
}

/// Stable name of an IP protocol number.
pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        PROTO_ANY => "any",
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        PROTO_ICMPV6 => "icmpv6",
        PROTO_SCTP => "sctp",
        _ => "other",
    }
}

/// Stable name of a socket type (sock_create events).
pub fn sock_type_name(ty: u16) -> &'static str {
    match ty {
        0 => "",
        SOCK_STREAM => "stream",
        SOCK_DGRAM => "dgram",
        SOCK_RAW => "raw",
        SOCK_SEQPACKET => "seqpacket",
        _ => "other",
    }
}

/// The name of a socket option netcontrol judges (`Event::detail` of `socket_option`).
pub fn socket_option_name(detail: u32) -> String {
    use crate::verdict::*;
    let (level, optname) = ((detail >> 16) as i32, (detail & 0xffff) as i32);
    let name = match (level, optname) {
        (SOL_SOCKET, SO_BINDTODEVICE) => "SO_BINDTODEVICE",
        (SOL_SOCKET, SO_BINDTOIFINDEX) => "SO_BINDTOIFINDEX",
        (SOL_IP, IP_OPTIONS) => "IP_OPTIONS",
        (SOL_IP, IP_UNICAST_IF) => "IP_UNICAST_IF",
        (SOL_IPV6, IPV6_NEXTHOP) => "IPV6_NEXTHOP",
        (SOL_IPV6, IPV6_PKTINFO) => "IPV6_PKTINFO",
        (SOL_IPV6, IPV6_UNICAST_IF) => "IPV6_UNICAST_IF",
        (SOL_IPV6, IPV6_2292HOPOPTS) => "IPV6_2292HOPOPTS",
        (SOL_IPV6, IPV6_2292DSTOPTS) => "IPV6_2292DSTOPTS",
        (SOL_IPV6, IPV6_2292RTHDR) => "IPV6_2292RTHDR",
        (SOL_IPV6, IPV6_2292PKTOPTIONS) => "IPV6_2292PKTOPTIONS",
        (SOL_IPV6, IPV6_HOPOPTS) => "IPV6_HOPOPTS",
        (SOL_IPV6, IPV6_RTHDRDSTOPTS) => "IPV6_RTHDRDSTOPTS",
        (SOL_IPV6, IPV6_RTHDR) => "IPV6_RTHDR",
        (SOL_IPV6, IPV6_DSTOPTS) => "IPV6_DSTOPTS",
        _ => return format!("level {level} option {optname}"),
    };
    name.to_owned()
}
