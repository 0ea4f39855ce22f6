//! The JSON form of an event. Field names are part of netcontrol's interface (README,
//! "Events"): add fields, never rename or remove them.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use netcontrol_common::{
    abi::{
        AF_INET, DenialKey, DenialValue, EVENT_F_UNIX_NAME, EVENT_F_V4_MAPPED, Event,
        HOOK_LSM_SOCKET, HOOK_SETSOCKOPT, HOOK_SOCK_CREATE, REASON_SOCKET_FAMILY,
    },
    user::{
        family_name, hook_name, protocol_name, reason_name, sock_type_name, socket_family_name,
        socket_option_name, verdict_name,
    },
};
use serde::Serialize;

use super::Labels;
use crate::confine::seccomp::Tried;

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct EventRecord {
    /// RFC 3339 wall-clock time of the attempt.
    pub time: String,
    /// "egress" (connect/sendmsg, packets), "socket" (socket creation or a socket option),
    /// "listen" (a bind, or a connection arriving at a listening socket), "dns" (a DNS query or
    /// answer the DNS-aware proxy refused), "tamper" (netcontrol's programs were detached or
    /// their pins removed behind its back).
    pub event: &'static str,
    /// "blocked", or "would_block" in audit mode.
    pub verdict: &'static str,
    pub reason: &'static str,
    pub hook: &'static str,
    pub family: &'static str,
    pub protocol: &'static str,
    pub dst_ip: Option<IpAddr>,
    pub dst_port: Option<u16>,
    /// The destination was written as an IPv4-mapped IPv6 address on an IPv6 socket.
    pub v4_mapped: bool,
    /// "stream", "dgram" or "raw" for socket events.
    pub socket_type: Option<&'static str>,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    /// cgroup of the process that made the attempt.
    pub cgroup_id: u64,
    /// cgroup of the sandbox whose policy decided (0 if none was found).
    pub sandbox_id: u64,
    /// The sandbox's name (its cgroup path for `run` and `attach --cgroup`).
    pub sandbox: Option<String>,
    /// The allowed or resolved domain name the destination address belongs to, if known; for
    /// DNS events, the name asked for.
    pub domain: Option<String>,
    /// DNS events: the record type asked for (A, AAAA, TXT, ...).
    pub dns_type: Option<String>,
    /// The Docker container the process runs in, if netcontrol knows it.
    pub container_name: Option<String>,
    /// Its 12-digit id.
    pub container_id: Option<String>,
    /// The Kubernetes pod the process runs in, if netcontrol knows it.
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// How many attempts this record stands for: 1 for an attempt's own event, more for a
    /// summary of attempts that got no event of their own.
    pub count: u64,
    /// A summary: `count` attempts like this one (same sandbox, hook, destination, reason)
    /// were blocked since the last record of it, without events of their own (rate limit or
    /// a full buffer). The process fields name the latest of them.
    pub summary: bool,
    /// `socket_option` events: the option (`IPV6_RTHDR`, `IP_OPTIONS`, ...).
    pub socket_option: Option<String>,
    /// `socket_family` events: the family (`vsock`, `packet`, ...).
    pub socket_family: Option<String>,
    /// Abstract unix socket events: the name, `@` first (its first 16 bytes).
    pub unix_address: Option<String>,
    /// DNS rebinding refusals: the addresses taken out of the answer.
    pub refused_addresses: Option<Vec<IpAddr>>,
    /// `tamper` events: whether netcontrol put it right (attached or pinned again).
    pub repaired: Option<bool>,
    /// `policy` events: the policy name the sandbox was given, which does not exist.
    pub policy: Option<String>,
    /// `policy` events: where that name came from (a pod's label, a container's label).
    pub policy_source: Option<String>,
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps into wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic: i128,
}

impl Clock {
    pub fn new() -> Self {
        let now = |clock| {
            nix::time::clock_gettime(clock)
                .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
                .unwrap_or(0)
        };
        let mono = now(nix::time::ClockId::CLOCK_MONOTONIC);
        let real = now(nix::time::ClockId::CLOCK_REALTIME);
        Self { realtime_minus_monotonic: real - mono }
    }

    pub fn wall(self, monotonic_ns: u64) -> SystemTime {
        let ns = i128::from(monotonic_ns) + self.realtime_minus_monotonic;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// What an event or summary says about the attempt (the fields `Event` and `DenialKey` share).
struct Attempt<'a> {
    hook: u8,
    family: u8,
    protocol: u8,
    sock_type: u16,
    addr: &'a [u8; 16],
    port: u16,
    reason: u8,
    verdict: u8,
    flags: u8,
    detail: u32,
}

impl EventRecord {
    pub fn new(e: &Event, clock: Clock, labels: &Labels) -> Self {
        let a = Attempt {
            hook: e.hook,
            family: e.family,
            protocol: e.protocol,
            sock_type: e.sock_type,
            addr: &e.addr,
            port: e.port,
            reason: e.reason,
            verdict: e.verdict,
            flags: e.flags,
            detail: e.detail,
        };
        let who =
            Who { pid_tgid: e.pid_tgid, uid_gid: e.uid_gid, comm: &e.comm, cgroup_id: e.cgroup_id };
        Self::of(&a, &who, e.sandbox_id, clock.wall(e.ts_ns), labels)
    }

    /// `count` attempts of `key` that got no event of their own.
    pub fn summary(
        key: &DenialKey,
        v: &DenialValue,
        count: u64,
        clock: Clock,
        labels: &Labels,
    ) -> Self {
        let a = Attempt {
            hook: key.hook,
            family: key.family,
            protocol: key.protocol,
            sock_type: key.sock_type,
            addr: &key.addr,
            port: key.port,
            reason: key.reason,
            verdict: key.verdict,
            flags: key.flags,
            detail: key.detail,
        };
        let who =
            Who { pid_tgid: v.pid_tgid, uid_gid: v.uid_gid, comm: &v.comm, cgroup_id: v.cgroup_id };
        Self {
            count,
            summary: true,
            ..Self::of(&a, &who, key.sandbox_id, clock.wall(v.last_ns), labels)
        }
    }

    /// One of netcontrol's links was detached, its pin removed or its program replaced.
    pub fn tamper(t: &crate::bpf::attach::Tampering, sandbox_id: u64, labels: &Labels) -> Self {
        Self {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            event: "tamper",
            verdict: "detected",
            reason: t.what.name(),
            hook: t.hook,
            family: "other",
            protocol: "any",
            sandbox_id,
            sandbox: labels.sandbox(sandbox_id),
            count: 1,
            repaired: Some(t.repaired),
            ..Self::default()
        }
    }

    /// A sandbox names a policy that does not exist: it gets none of its egress (deny-all).
    pub fn policy_missing(
        policy: &str,
        source: &str,
        sandbox_id: u64,
        audit: bool,
        labels: &Labels,
    ) -> Self {
        Self {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            event: "policy",
            verdict: if audit { "would_block" } else { "blocked" },
            reason: "policy_not_found",
            hook: "daemon",
            family: "other",
            protocol: "any",
            sandbox_id,
            sandbox: labels.sandbox(sandbox_id),
            count: 1,
            policy: Some(policy.to_owned()),
            policy_source: Some(source.to_owned()),
            ..Self::default()
        }
    }

    /// A socket() of a family the seccomp filter of `run` refused (kernels without the BPF
    /// LSM): the same record the LSM program's refusal gives, from hook `seccomp`.
    pub fn seccomp_refusal(
        r: &crate::confine::seccomp::Refused,
        sandbox_id: u64,
        audit: bool,
        labels: &Labels,
    ) -> Self {
        let proc_field = |file: &str| {
            std::fs::read_to_string(format!("/proc/{}/{file}", r.pid)).unwrap_or_default()
        };
        let status = proc_field("status");
        let ids = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let base = Self {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            verdict: if audit { "would_block" } else { "blocked" },
            hook: "seccomp",
            family: "other",
            pid: r.pid,
            tid: r.pid,
            uid: ids("Uid:"),
            gid: ids("Gid:"),
            comm: proc_field("comm").trim_end().to_owned(),
            sandbox_id,
            sandbox: labels.sandbox(sandbox_id),
            count: 1,
            ..Self::default()
        };
        match r.tried() {
            Tried::TerminalInput => Self { event: "terminal", reason: "terminal_input", ..base },
            Tried::Family(family) => Self {
                event: "socket",
                reason: reason_name(REASON_SOCKET_FAMILY),
                protocol: protocol_name(r.protocol as u8),
                socket_type: Some(sock_type_name((r.sock_type & 0xf) as u16)),
                socket_family: Some(socket_family_name(family)),
                ..base
            },
        }
    }

    fn of(
        a: &Attempt<'_>,
        who: &Who<'_>,
        sandbox_id: u64,
        time: SystemTime,
        labels: &Labels,
    ) -> Self {
        let kind = kind(a.hook, a.reason);
        let has_address = matches!(kind, "egress" | "listen") && a.flags & EVENT_F_UNIX_NAME == 0;
        let dst_ip = has_address.then(|| {
            if a.family == AF_INET {
                IpAddr::V4(Ipv4Addr::new(a.addr[0], a.addr[1], a.addr[2], a.addr[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(*a.addr))
            }
        });
        let comm_len = who.comm.iter().position(|&b| b == 0).unwrap_or(who.comm.len());
        let unix_address = (a.flags & EVENT_F_UNIX_NAME != 0).then(|| {
            let n = (a.detail as usize).min(a.addr.len());
            format!("@{}", String::from_utf8_lossy(&a.addr[..n]).escape_debug())
        });
        let socket_type = (a.hook == HOOK_SOCK_CREATE || a.hook == HOOK_LSM_SOCKET)
            .then(|| sock_type_name(a.sock_type));
        Self {
            time: humantime::format_rfc3339_nanos(time).to_string(),
            event: kind,
            verdict: verdict_name(a.verdict),
            reason: reason_name(a.reason),
            hook: hook_name(a.hook),
            family: family_name(a.family),
            protocol: protocol_name(a.protocol),
            dst_ip,
            dst_port: (has_address && (a.port != 0 || a.protocol != 0)).then_some(a.port),
            v4_mapped: a.flags & EVENT_F_V4_MAPPED != 0,
            socket_type,
            pid: (who.pid_tgid >> 32) as u32,
            tid: who.pid_tgid as u32,
            uid: who.uid_gid as u32,
            gid: (who.uid_gid >> 32) as u32,
            comm: String::from_utf8_lossy(&who.comm[..comm_len]).into_owned(),
            cgroup_id: who.cgroup_id,
            sandbox_id,
            sandbox: labels.sandbox(sandbox_id),
            domain: dst_ip.and_then(|ip| labels.domain(ip)),
            dns_type: None,
            count: 1,
            socket_option: (a.hook == HOOK_SETSOCKOPT).then(|| socket_option_name(a.detail)),
            socket_family: (a.reason == REASON_SOCKET_FAMILY).then(|| socket_family_name(a.detail)),
            unix_address,
            ..Self::default()
        }
        .identified(labels)
    }

    /// Name the container or pod of the process, if known.
    pub fn identified(mut self, labels: &Labels) -> Self {
        let who = labels.identity(self.cgroup_id, self.sandbox_id);
        if let Some(c) = who.container {
            self.container_name = Some(c.name);
            self.container_id = Some(c.id);
        }
        if let Some(p) = who.pod {
            self.pod_namespace = Some(p.namespace);
            self.pod_name = Some(p.name);
        }
        self
    }

    /// One line for a human reading stderr, saying what the process got back.
    pub fn human(&self) -> String {
        let what = match (self.dst_ip, self.dst_port) {
            (Some(ip), port) => {
                let verb = match self.hook {
                    h if h.starts_with("sendmsg") => "send to",
                    h if h.starts_with("bind") => "bind to",
                    "skb_egress" => "packet to",
                    "skb_ingress" => "connection from",
                    _ => "connect to",
                };
                let dst = match (ip, port) {
                    (IpAddr::V6(ip), Some(port)) => format!("[{ip}]:{port}"),
                    (IpAddr::V4(ip), Some(port)) => format!("{ip}:{port}"),
                    (ip, None) => ip.to_string(),
                };
                let dst = match self.hook {
                    "skb_ingress" => format!("{ip} to port {}", port.unwrap_or(0)),
                    _ => dst,
                };
                match &self.domain {
                    Some(d) => format!("{} {verb} {dst} ({d})", self.protocol),
                    None => format!("{} {verb} {dst}", self.protocol),
                }
            }
            _ if self.event == "terminal" => "input typed into the terminal".to_owned(),
            _ => match (&self.socket_option, &self.socket_family, &self.unix_address) {
                (Some(o), _, _) => format!("setsockopt {o}"),
                (_, Some(f), _) => format!("{f} socket"),
                (_, _, Some(u)) => format!("unix connect to {u}"),
                _ => format!("{} {} socket", self.family, self.socket_type.unwrap_or("")),
            },
        };
        let why = match self.reason {
            "not_allowlisted" => "not allowlisted",
            "port_not_allowed" => "port or protocol not allowlisted",
            "metadata_address" => "cloud credential address (only a rule naming it opens it)",
            "link_local_address" => "link-local address (only a rule inside link-local opens it)",
            "unspecified_address" => "unspecified address (only a rule naming it opens it)",
            "raw_socket" => "raw sockets are not allowed",
            "icmp_socket" => "ping sockets are not allowed",
            "sctp_socket" => "SCTP is not allowed (a rule with /sctp allows it)",
            "socket_family" => "this socket family is not allowed (sockets.families)",
            "socket_option" => "socket options that route packets are not allowed",
            "source_route" => "source-routed packets are not allowed",
            "loopback_elsewhere" => "loopback addresses are reached through lo only",
            "protocol_not_allowed" => {
                "only TCP, UDP, UDP-Lite and MPTCP sockets (no hook judges where others send)"
            }
            "abstract_unix_socket" => "abstract unix sockets of the host are not allowed",
            "listen_not_allowed" => "listening on non-loopback addresses needs a listen rule",
            "no_sandbox" => "socket used outside its sandbox",
            "terminal_input" => "the shell outside the sandbox would read it",
            other => other,
        };
        let (verb, outcome) = if self.verdict == "would_block" {
            ("would block", "audit mode: allowed")
        } else {
            ("blocked", "Operation not permitted")
        };
        let inside = match (&self.container_name, &self.pod_namespace, &self.pod_name) {
            (Some(c), _, _) => format!(" in container {c}"),
            (None, Some(ns), Some(pod)) => format!(" in pod {ns}/{pod}"),
            _ => String::new(),
        };
        if self.summary {
            let who = if self.pid == 0 {
                String::new()
            } else {
                format!(", latest by {} (pid {})", shown(&self.comm), self.pid)
            };
            return format!(
                "netcontrol: {verb} {} more like this{who}{inside}: {what}: {why} ({outcome})",
                self.count
            );
        }
        let who = if self.pid == 0 {
            "a packet".to_owned()
        } else {
            format!("{} (pid {})", shown(&self.comm), self.pid)
        };
        format!("netcontrol: {verb} {who}{inside}: {what}: {why} ({outcome})")
    }
}

/// A name the sandbox chose (its process name), for a terminal: control characters escaped,
/// so that it can neither forge lines nor erase them.
fn shown(name: &str) -> String {
    if name.chars().any(char::is_control) {
        name.escape_debug().to_string()
    } else {
        name.to_owned()
    }
}

/// The process fields of a record.
struct Who<'a> {
    pid_tgid: u64,
    uid_gid: u64,
    comm: &'a [u8; 16],
    cgroup_id: u64,
}

/// The `event` field for a hook and reason.
fn kind(hook: u8, reason: u8) -> &'static str {
    use netcontrol_common::abi::{HOOK_BIND4, HOOK_BIND6, HOOK_SKB_INGRESS, REASON_LISTEN};
    match hook {
        HOOK_SOCK_CREATE | HOOK_LSM_SOCKET | HOOK_SETSOCKOPT => "socket",
        HOOK_BIND4 | HOOK_BIND6 | HOOK_SKB_INGRESS => "listen",
        _ if reason == REASON_LISTEN => "listen",
        _ => "egress",
    }
}

/// CLOCK_MONOTONIC in ns, the clock of the programs' timestamps (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use netcontrol_common::abi::{
        AF_INET6, HOOK_CONNECT4, HOOK_CONNECT6, PROTO_ICMP, PROTO_TCP, REASON_NOT_ALLOWLISTED,
        REASON_RAW_SOCKET, SOCK_RAW, VERDICT_AUDIT, VERDICT_DENY,
    };

    use super::*;

    fn event() -> Event {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 10]);
        Event {
            ts_ns: 1_000,
            cgroup_id: 11,
            sandbox_id: 10,
            pid_tgid: (4321u64 << 32) | 4322,
            uid_gid: (1001u64 << 32) | 1000,
            comm,
            addr,
            port: 8080,
            sock_type: 0,
            policy_id: 1,
            family: AF_INET,
            protocol: PROTO_TCP,
            hook: HOOK_CONNECT4,
            reason: REASON_NOT_ALLOWLISTED,
            verdict: VERDICT_DENY,
            flags: 0,
            _pad: [0; 2],
            detail: 0,
            _pad2: 0,
        }
    }

    #[test]
    fn json_fields_are_stable() {
        let labels = Labels::default();
        labels.set_sandbox(10, "/sys/fs/cgroup/netcontrol/run-1".into());
        labels.set_domain("127.0.0.10".parse().expect("ip"), "api.github.com");
        let clock = Clock { realtime_minus_monotonic: 1_700_000_000_000_000_000 };
        let v = serde_json::to_value(EventRecord::new(&event(), clock, &labels)).expect("json");
        assert_eq!(v["time"], "2023-11-14T22:13:20.000001000Z");
        assert_eq!(v["event"], "egress");
        assert_eq!(v["verdict"], "blocked");
        assert_eq!(v["reason"], "not_allowlisted");
        assert_eq!(v["hook"], "connect4");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["protocol"], "tcp");
        assert_eq!(v["dst_ip"], "127.0.0.10");
        assert_eq!(v["dst_port"], 8080);
        assert_eq!(v["v4_mapped"], false);
        assert_eq!(v["socket_type"], serde_json::Value::Null);
        assert_eq!((v["pid"].as_u64(), v["tid"].as_u64()), (Some(4321), Some(4322)));
        assert_eq!((v["uid"].as_u64(), v["gid"].as_u64()), (Some(1000), Some(1001)));
        assert_eq!(v["comm"], "curl");
        assert_eq!((v["cgroup_id"].as_u64(), v["sandbox_id"].as_u64()), (Some(11), Some(10)));
        assert_eq!(v["sandbox"], "/sys/fs/cgroup/netcontrol/run-1");
        assert_eq!(v["domain"], "api.github.com");
    }

    #[test]
    fn a_process_name_cannot_forge_or_erase_lines() {
        let labels = Labels::default();
        let mut e = event();
        e.comm = [0; 16];
        e.comm[..13].copy_from_slice(b"x\nnetcontrol:");
        let line = EventRecord::new(&e, Clock::new(), &labels).human();
        assert!(!line.contains('\n') && line.contains("x\\nnetcontrol:"), "{line}");
        e.comm[..8].copy_from_slice(b"\r\x1b[2K\x1b[8");
        let line = EventRecord::new(&e, Clock::new(), &labels).human();
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }

    #[test]
    fn v6_mapped_and_socket_events() {
        let labels = Labels::default();
        let mut e = event();
        e.flags = EVENT_F_V4_MAPPED;
        e.hook = HOOK_CONNECT6;
        let r = EventRecord::new(&e, Clock::new(), &labels);
        assert_eq!((r.dst_ip, r.v4_mapped), (Some("127.0.0.10".parse().expect("ip")), true));

        e.family = AF_INET6;
        e.flags = 0;
        e.addr = "::1".parse::<Ipv6Addr>().expect("ip").octets();
        let r = EventRecord::new(&e, Clock::new(), &labels);
        assert_eq!(r.dst_ip, Some("::1".parse().expect("ip")));
        assert!(r.human().contains("[::1]:8080"), "{}", r.human());

        let mut s = event();
        s.hook = HOOK_SOCK_CREATE;
        s.sock_type = SOCK_RAW;
        s.protocol = PROTO_ICMP;
        s.reason = REASON_RAW_SOCKET;
        s.verdict = VERDICT_AUDIT;
        let r = EventRecord::new(&s, Clock::new(), &labels);
        assert_eq!(
            (r.event, r.dst_ip, r.dst_port, r.socket_type),
            ("socket", None, None, Some("raw"))
        );
        assert_eq!(r.verdict, "would_block");
        assert_eq!(
            r.human(),
            "netcontrol: would block curl (pid 4321): ipv4 raw socket: raw sockets are not \
             allowed (audit mode: allowed)"
        );
        let r = EventRecord::new(&event(), Clock::new(), &labels);
        assert_eq!(r.domain, None);
        assert_eq!(
            r.human(),
            "netcontrol: blocked curl (pid 4321): tcp connect to 127.0.0.10:8080: not \
             allowlisted (Operation not permitted)"
        );
    }
}
