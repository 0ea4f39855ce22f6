//! The JSON form of an event. Field names are part of netcontrol's interface (README,
//! "Events"): add fields, never rename or remove them.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use netcontrol_common::{
    abi::{AF_INET, EVENT_F_V4_MAPPED, Event, HOOK_SOCK_CREATE},
    user::{family_name, hook_name, protocol_name, reason_name, sock_type_name, verdict_name},
};
use serde::Serialize;

use super::Labels;

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct EventRecord {
    /// RFC 3339 wall-clock time of the attempt.
    pub time: String,
    /// "egress" (connect/sendmsg), "socket" (socket creation) or "dns" (a DNS query the
    /// DNS-aware proxy refused).
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

impl EventRecord {
    pub fn new(e: &Event, clock: Clock, labels: &Labels) -> Self {
        let is_socket = e.hook == HOOK_SOCK_CREATE;
        let dst_ip = (!is_socket).then(|| {
            if e.family == AF_INET {
                IpAddr::V4(Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(e.addr))
            }
        });
        let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
        Self {
            time: humantime::format_rfc3339_nanos(clock.wall(e.ts_ns)).to_string(),
            event: if is_socket { "socket" } else { "egress" },
            verdict: verdict_name(e.verdict),
            reason: reason_name(e.reason),
            hook: hook_name(e.hook),
            family: family_name(e.family),
            protocol: protocol_name(e.protocol),
            dst_ip,
            dst_port: (!is_socket).then_some(e.port),
            v4_mapped: e.flags & EVENT_F_V4_MAPPED != 0,
            socket_type: is_socket.then(|| sock_type_name(e.sock_type)),
            pid: (e.pid_tgid >> 32) as u32,
            tid: e.pid_tgid as u32,
            uid: e.uid_gid as u32,
            gid: (e.uid_gid >> 32) as u32,
            comm: String::from_utf8_lossy(&e.comm[..comm_len]).into_owned(),
            cgroup_id: e.cgroup_id,
            sandbox_id: e.sandbox_id,
            sandbox: labels.sandbox(e.sandbox_id),
            domain: dst_ip.and_then(|ip| labels.domain(ip)),
            dns_type: None,
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
            (Some(ip), Some(port)) => {
                let verb = if self.hook.starts_with("sendmsg") { "send to" } else { "connect to" };
                let dst = match ip {
                    IpAddr::V6(ip) => format!("[{ip}]:{port}"),
                    IpAddr::V4(ip) => format!("{ip}:{port}"),
                };
                match &self.domain {
                    Some(d) => format!("{} {verb} {dst} ({d})", self.protocol),
                    None => format!("{} {verb} {dst}", self.protocol),
                }
            }
            _ => format!("{} {} socket", self.family, self.socket_type.unwrap_or("")),
        };
        let why = match self.reason {
            "not_allowlisted" => "not allowlisted",
            "port_not_allowed" => "port or protocol not allowlisted",
            "metadata_address" => "cloud metadata address (only a rule naming it opens it)",
            "raw_socket" => "raw sockets are not allowed",
            "icmp_socket" => "ping sockets are not allowed",
            "no_sandbox" => "socket used outside its sandbox",
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
        format!(
            "netcontrol: {verb} {} (pid {}){inside}: {what}: {why} ({outcome})",
            self.comm, self.pid
        )
    }
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
