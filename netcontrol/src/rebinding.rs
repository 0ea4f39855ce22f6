//! DNS rebinding protection: which addresses in a DNS answer netcontrol refuses to learn.
//!
//! An allowed name is not a trusted one: whoever runs its DNS can answer 127.0.0.1, the
//! node's address or a private one, and the sandbox would reach the inside of the network
//! (the host's services, the kubelet, a database) by a name the policy allows. With
//! `dns.rebinding: refuse` (the default) such answers are not learned and are taken out of
//! the answer the sandbox gets, as dnsmasq's `--stop-dns-rebind` does. `allow_private` (for
//! the policy, or one rule) opens the private ranges for in-cluster names; loopback,
//! unspecified, link-local and the host's own addresses are never learned.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, RwLock},
};

use crate::policy::{Policy, Rebinding};

/// Why an address in an answer is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Loopback,
    Unspecified,
    LinkLocal,
    Private,
    /// Multicast, broadcast and the reserved 240.0.0.0/4: no one host, but whoever on the
    /// local network listens (an allowed name answering one reaches the node's neighbours).
    Multicast,
    /// One of the host's own addresses.
    Host,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Unspecified => "unspecified",
            Self::LinkLocal => "link-local",
            Self::Private => "private",
            Self::Multicast => "multicast or broadcast",
            Self::Host => "the host's own",
        }
    }
}

/// What an address is, for rebinding: None for an ordinary (public) address. An IPv6
/// address that carries an IPv4 one is what that IPv4 address is: v4-mapped (the socket
/// reaches it), and NAT64 (64:ff9b::/96), 6to4 (2002::/16) and IPv4-compatible (::/96)
/// addresses, which a translator or tunnel on the way turns into it.
pub fn class(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(a) => class_v4(a),
        IpAddr::V6(a) => match embedded_v4(a) {
            Some(v4) => class_v4(v4),
            None => class_v6(a),
        },
    }
}

fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let low = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = a.to_ipv4_mapped() {
        Some(v4)
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(low())
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8))
    } else if s[..6] == [0; 6] && !a.is_loopback() && !a.is_unspecified() {
        Some(low())
    } else {
        None
    }
}

fn class_v4(a: Ipv4Addr) -> Option<Refusal> {
    let o = a.octets();
    if a.is_loopback() {
        Some(Refusal::Loopback)
    } else if o[0] == 0 {
        // 0.0.0.0/8, "this network": 0.0.0.0 itself is the host.
        Some(Refusal::Unspecified)
    } else if a.is_link_local() {
        Some(Refusal::LinkLocal)
    } else if a.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        // RFC 1918, and 100.64.0.0/10 (carrier-grade NAT, also GKE's pod ranges at times).
        Some(Refusal::Private)
    } else if o[0] >= 224 {
        // 224.0.0.0/4 multicast, 240.0.0.0/4 reserved, 255.255.255.255 limited broadcast.
        Some(Refusal::Multicast)
    } else {
        None
    }
}

fn class_v6(a: Ipv6Addr) -> Option<Refusal> {
    let s = a.segments();
    if a.is_loopback() {
        Some(Refusal::Loopback)
    } else if a.is_unspecified() {
        Some(Refusal::Unspecified)
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some(Refusal::LinkLocal)
    } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 || s[..3] == [0x64, 0xff9b, 1]
    {
        // Unique local (fc00::/7), the old site-local (fec0::/10), and the local-use NAT64
        // prefix (64:ff9b:1::/48, RFC 8215: a network's own translator, to its own ranges).
        Some(Refusal::Private)
    } else if s[0] >> 8 == 0xff {
        Some(Refusal::Multicast)
    } else {
        None
    }
}

/// The rules of one policy, and the host's addresses (refreshed by their owner).
#[derive(Clone, Debug)]
pub struct Rules {
    refuse: bool,
    policy: Arc<Policy>,
    host: HostAddresses,
}

impl Rules {
    pub fn new(policy: &Policy, host: HostAddresses) -> Self {
        Self {
            refuse: policy.dns.rebinding == Rebinding::Refuse,
            policy: Arc::new(policy.clone()),
            host,
        }
    }

    /// Why `ip` must not be learned for `name`, if it must not.
    pub fn refused(&self, name: &str, ip: IpAddr) -> Option<Refusal> {
        if !self.refuse {
            return None;
        }
        let unmapped = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.host.contains(unmapped) {
            return Some(Refusal::Host);
        }
        match class(unmapped) {
            Some(Refusal::Private) if self.policy.private_allowed_for(name) => None,
            other => other,
        }
    }
}

/// The host's own addresses (those of netcontrol's network namespace), shared and refreshed.
#[derive(Clone, Debug, Default)]
pub struct HostAddresses(Arc<RwLock<(Vec<IpAddr>, Option<std::time::Instant>)>>);

impl HostAddresses {
    /// Read them now.
    pub fn current() -> Self {
        let this = Self::default();
        this.refresh();
        this
    }

    /// Read the interfaces' addresses again (they change: DHCP, new pod IPs).
    pub fn refresh(&self) {
        let addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .map(|ifs| {
                ifs.filter_map(|i| i.address)
                    .filter_map(|a| {
                        a.as_sockaddr_in()
                            .map(|s| IpAddr::V4(s.ip()))
                            .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) =
            (addrs, Some(std::time::Instant::now()));
    }

    /// Read them again if the last read is older than `age`.
    pub fn refresh_if_older(&self, age: std::time::Duration) {
        let stale =
            self.0.read().unwrap_or_else(|e| e.into_inner()).1.is_none_or(|t| t.elapsed() >= age);
        if stale {
            self.refresh();
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).0.contains(&ip)
    }

    #[cfg(test)]
    pub fn of(addrs: &[&str]) -> Self {
        let list = addrs.iter().map(|a| a.parse().expect("ip")).collect();
        Self(Arc::new(RwLock::new((list, Some(std::time::Instant::now())))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn classes() {
        for (a, c) in [
            ("127.0.0.1", Some(Refusal::Loopback)),
            ("127.9.9.9", Some(Refusal::Loopback)),
            ("::1", Some(Refusal::Loopback)),
            ("::ffff:127.0.0.1", Some(Refusal::Loopback)),
            ("0.0.0.0", Some(Refusal::Unspecified)),
            ("0.1.2.3", Some(Refusal::Unspecified)),
            ("::", Some(Refusal::Unspecified)),
            ("169.254.169.254", Some(Refusal::LinkLocal)),
            ("fe80::1", Some(Refusal::LinkLocal)),
            ("10.1.2.3", Some(Refusal::Private)),
            ("172.16.0.1", Some(Refusal::Private)),
            ("172.31.255.255", Some(Refusal::Private)),
            ("192.168.1.1", Some(Refusal::Private)),
            ("100.64.0.1", Some(Refusal::Private)),
            ("100.127.255.255", Some(Refusal::Private)),
            ("fd12::1", Some(Refusal::Private)),
            ("fc00::1", Some(Refusal::Private)),
            ("::ffff:10.0.0.1", Some(Refusal::Private)),
            ("64:ff9b::7f00:1", Some(Refusal::Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(Refusal::LinkLocal)),
            ("2002:c0a8:101::1", Some(Refusal::Private)),
            ("::127.0.0.1", Some(Refusal::Loopback)),
            ("64:ff9b::8c52:7003", None),
            ("64:ff9b:1::a00:1", Some(Refusal::Private)),
            ("64:ff9b:1:ffff::1", Some(Refusal::Private)),
            ("224.0.0.1", Some(Refusal::Multicast)),
            ("239.255.255.250", Some(Refusal::Multicast)),
            ("240.0.0.1", Some(Refusal::Multicast)),
            ("255.255.255.255", Some(Refusal::Multicast)),
            ("::ffff:255.255.255.255", Some(Refusal::Multicast)),
            ("ff02::1", Some(Refusal::Multicast)),
            ("ff05::1:3", Some(Refusal::Multicast)),
            ("64:ff9b::e000:1", Some(Refusal::Multicast)),
            ("223.255.255.255", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("198.51.100.2", None),
            ("2001:db8::1", None),
            ("140.82.112.3", None),
        ] {
            assert_eq!(class(ip(a)), c, "{a}");
        }
    }

    #[test]
    fn rules_refuse_by_default_and_open_private_per_name() {
        let policy = |yaml: &str| {
            crate::policy::file::parse(yaml, std::path::Path::new("p.yaml")).expect("policy")
        };
        let host = HostAddresses::of(&["203.0.113.7"]);
        let p =
            policy("allow:\n  - api.test\n  - domain: db.internal.test\n    allow_private: true\n");
        let r = Rules::new(&p, host.clone());
        assert_eq!(r.refused("api.test", ip("10.0.0.5")), Some(Refusal::Private));
        assert_eq!(r.refused("db.internal.test", ip("10.0.0.5")), None);
        assert_eq!(r.refused("db.internal.test", ip("127.0.0.1")), Some(Refusal::Loopback));
        assert_eq!(r.refused("db.internal.test", ip("203.0.113.7")), Some(Refusal::Host));
        assert_eq!(r.refused("api.test", ip("::ffff:203.0.113.7")), Some(Refusal::Host));
        assert_eq!(r.refused("api.test", ip("198.51.100.2")), None);
        let p = policy("allow: [api.test]\ndns:\n  allow_private: true\n");
        assert_eq!(Rules::new(&p, host.clone()).refused("api.test", ip("10.0.0.5")), None);
        let p = policy("allow: [api.test]\ndns:\n  rebinding: allow\n");
        assert_eq!(Rules::new(&p, host).refused("api.test", ip("127.0.0.1")), None);
    }
}
