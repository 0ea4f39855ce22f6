//! Userspace-only parts: `aya::Pod` for the map types, and the stable names under which codes
//! appear in events, metrics and the CLI.

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

/// Stable name of a hook code (JSON `hook` field, metric label).
pub fn hook_name(hook: u8) -> &'static str {
    match hook {
        HOOK_CONNECT4 => "connect4",
        HOOK_CONNECT6 => "connect6",
        HOOK_SENDMSG4 => "sendmsg4",
        HOOK_SENDMSG6 => "sendmsg6",
        HOOK_SOCK_CREATE => "sock_create",
        HOOK_DNS_PROXY => "dns_proxy",
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

/// Stable name of an address family.
pub fn family_name(family: u8) -> &'static str {
    match family {
        AF_INET => "ipv4",
        AF_INET6 => "ipv6",
        _ => "other",
    }
}

/// Stable name of an IP protocol number.
pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        PROTO_ANY => "any",
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        PROTO_ICMPV6 => "icmpv6",
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
        _ => "other",
    }
}
