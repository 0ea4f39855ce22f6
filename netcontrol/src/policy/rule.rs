//! One allow rule as written on the command line (`--allow RULE`) or in a policy file:
//!
//! | form                         | meaning                                           |
//! |------------------------------|---------------------------------------------------|
//! | `10.0.0.0/8`                 | every port and protocol in 10.0.0.0/8             |
//! | `127.0.0.11:8080`            | one address, port 8080, TCP or UDP                |
//! | `127.0.0.11:8000-8100/tcp`   | a port range, TCP only                            |
//! | `::1`, `2001:db8::/32`       | IPv6 without a port                               |
//! | `[::1]:443`, `[2001:db8::/32]:53/udp` | IPv6 with a port: brackets required      |
//! | `10.0.0.0/8:*/udp`, `10.0.0.0/8/udp` | every port, one protocol                  |
//! | `192.0.2.1/icmp`             | ICMP ("ping") to an address (ports do not apply)  |
//! | `10.0.0.5:2905/sctp`         | SCTP (also lets the sandbox create SCTP sockets)  |
//! | `api.github.com:443`         | a domain (resolved by netcontrol)                 |
//!
//! IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are turned into IPv4 rules: the kernel side
//! judges mapped destinations by the IPv4 rules.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netcontrol_common::abi::{PROTO_ANY, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use super::name::Pattern;

/// What a rule allows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub target: Target,
    pub ports: Ports,
    pub proto: Proto,
    /// Domain rules: DNS answers for the name may be private addresses (RFC 1918, CGNAT,
    /// ULA), which DNS rebinding protection refuses otherwise. Only the long form sets it.
    pub allow_private: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Net(IpNet),
    /// A domain name or wildcard pattern, normalized.
    Domain(Pattern),
}

/// An inclusive port range; `Ports::ANY` is every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

impl Ports {
    pub const ANY: Self = Self { lo: 0, hi: u16::MAX };
    pub fn is_any(self) -> bool {
        self == Self::ANY
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    Icmp,
    Sctp,
}

impl Proto {
    /// The number the kernel side compares with (`PROTO_*`).
    pub fn code(self) -> u8 {
        match self {
            Self::Any => PROTO_ANY,
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
            Self::Icmp => PROTO_ICMP,
            Self::Sctp => PROTO_SCTP,
        }
    }

    /// The name rules use (`/tcp`), None for any.
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            Self::Any => None,
            Self::Tcp => Some("tcp"),
            Self::Udp => Some("udp"),
            Self::Icmp => Some("icmp"),
            Self::Sctp => Some("sctp"),
        }
    }
}

/// Why a rule could not be parsed. The message names the offending part and the expected form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid rule {rule:?}: {why}")]
pub struct RuleError {
    pub rule: String,
    pub why: String,
}

const EXPECTED: &str = "expected ADDRESS[/PREFIX][:PORT[-PORT]][/tcp|udp|icmp|sctp], \
     e.g. 10.0.0.0/8, 127.0.0.11:8080, [::1]:443/tcp or api.github.com:443";

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| RuleError { rule: s.to_owned(), why };
        let text = s.trim();
        if text.is_empty() {
            return Err(err(format!("the rule is empty; {EXPECTED}")));
        }
        if text.contains('%') {
            return Err(err("IPv6 zone ids (%iface) are not supported in rules".into()));
        }
        let (rest, proto) = split_proto(text);
        let (addr, ports) = split_ports(rest).map_err(err)?;
        let ports = match ports {
            Some(p) => Some(parse_ports(p).map_err(err)?),
            None => None,
        };
        let target = parse_target(addr).map_err(err)?;
        let proto = proto.unwrap_or(Proto::Any);
        let ports = match (proto, ports) {
            (Proto::Icmp, Some(p)) if !p.is_any() => {
                return Err(err(format!(
                    "ICMP has no ports; write {addr}/icmp to allow ping to that address"
                )));
            }
            (_, Some(p)) => p,
            (_, None) => Ports::ANY,
        };
        Ok(Rule { target, ports, proto, allow_private: false })
    }
}

/// Split a trailing `/tcp`, `/udp`, `/icmp`, `/sctp` or `/any` off.
fn split_proto(s: &str) -> (&str, Option<Proto>) {
    if let Some((head, tail)) = s.rsplit_once('/') {
        let proto = match tail.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "icmp" | "ping" => Some(Proto::Icmp),
            "sctp" => Some(Proto::Sctp),
            "any" => Some(Proto::Any),
            _ => None,
        };
        if proto.is_some() {
            return (head, proto);
        }
    }
    (s, None)
}

/// Split `ADDR:PORTS` / `[ADDR]:PORTS`; a bare IPv6 address has no port.
fn split_ports(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(inner) = s.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            return Err(format!("missing ']' after the IPv6 address; {EXPECTED}"));
        };
        return match after {
            "" => Ok((addr, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((addr, Some(p))),
                None => Err(format!("unexpected {after:?} after ']'; {EXPECTED}")),
            },
        };
    }
    match s.matches(':').count() {
        0 => Ok((s, None)),
        1 => {
            let (a, p) = s.split_once(':').expect("one colon");
            Ok((a, Some(p)))
        }
        // Several colons: an IPv6 address (or prefix) without a port.
        _ => {
            if s.parse::<IpAddr>().is_ok() || s.parse::<IpNet>().is_ok() {
                Ok((s, None))
            } else if let Some((a, _)) = s.rsplit_once(':')
                && (a.parse::<IpAddr>().is_ok() || a.parse::<IpNet>().is_ok())
            {
                Err(format!("put an IPv6 address in brackets to give a port: [{a}]:PORT"))
            } else {
                Err(format!("not an IPv6 address or prefix; {EXPECTED}"))
            }
        }
    }
}

fn parse_ports(s: &str) -> Result<Ports, String> {
    if s == "*" {
        return Ok(Ports::ANY);
    }
    let one = |p: &str| -> Result<u16, String> {
        match p.parse::<u32>() {
            Ok(n @ 1..=65535) => Ok(n as u16),
            Ok(n) => Err(format!("port {n} is out of range 1-65535")),
            Err(_) if p.is_empty() => Err(format!("empty port; {EXPECTED}")),
            Err(_) => Err(format!("{p:?} is not a port number (1-65535 or *)")),
        }
    };
    match s.split_once('-') {
        None => {
            let p = one(s)?;
            Ok(Ports { lo: p, hi: p })
        }
        Some((a, b)) => {
            let (lo, hi) = (one(a)?, one(b)?);
            if lo > hi {
                return Err(format!("port range {lo}-{hi} is backwards (write {hi}-{lo})"));
            }
            Ok(Ports { lo, hi })
        }
    }
}

fn parse_target(s: &str) -> Result<Target, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Target::Net(normalize(IpNet::from(ip))));
    }
    if let Some((a, len)) = s.split_once('/') {
        let ip: IpAddr =
            a.parse().map_err(|_| format!("{a:?} is not an IP address; {EXPECTED}"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length {len:?} is not a number in 0-{max}"))?;
        let net = IpNet::new(ip, len).map_err(|e| e.to_string())?;
        if net.network() != ip {
            return Err(format!("{s} has host bits set (did you mean {}/{len}?)", net.network()));
        }
        return Ok(Target::Net(normalize(net)));
    }
    Pattern::parse(s).map(Target::Domain)
}

/// `::ffff:a.b.c.d/N` -> `a.b.c.d/(N-96)`: mapped destinations are judged as IPv4.
fn normalize(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && let Some(v4) = n.network().to_ipv4_mapped()
        && n.prefix_len() >= 96
    {
        return IpNet::V4(Ipv4Net::new(v4, n.prefix_len() - 96).expect("len <= 32"));
    }
    net
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracket = matches!(self.target, Target::Net(IpNet::V6(_))) && !self.ports.is_any();
        match &self.target {
            Target::Net(n) if bracket => write!(f, "[{}]", Shown(*n))?,
            Target::Net(n) => write!(f, "{}", Shown(*n))?,
            Target::Domain(d) => write!(f, "{d}")?,
        }
        if !self.ports.is_any() {
            if self.ports.lo == self.ports.hi {
                write!(f, ":{}", self.ports.lo)?;
            } else {
                write!(f, ":{}-{}", self.ports.lo, self.ports.hi)?;
            }
        }
        match self.proto.suffix() {
            None => Ok(()),
            Some(p) => write!(f, "/{p}"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Net(n) => write!(f, "{}", Shown(*n)),
            Target::Domain(d) => write!(f, "{d}"),
        }
    }
}

/// A network shown as an address when it is a single host.
struct Shown(IpNet);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// Where a sandbox that shares the host's network namespace may listen (TCP; loopback is
/// always allowed): `8080`, `8000-8100`, `0.0.0.0:8080`, `[::]:8080`, `10.0.0.5:8080`.
/// A port alone means every address, IPv4 and IPv6.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Listen {
    pub net: Option<IpNet>,
    pub ports: Ports,
}

const LISTEN_EXPECTED: &str = "expected PORT[-PORT] or ADDRESS:PORT[-PORT], e.g. 8080, \
     8000-8100, 0.0.0.0:8080 or [::]:8080";

impl FromStr for Listen {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| RuleError { rule: s.to_owned(), why };
        let text = s.trim().strip_suffix("/tcp").unwrap_or(s.trim());
        if text.is_empty() {
            return Err(err(format!("the listen rule is empty; {LISTEN_EXPECTED}")));
        }
        if text.ends_with("/udp") {
            return Err(err(
                "listen rules are for TCP: UDP sockets may bind anywhere (what they send is \
                 judged like any other datagram)"
                    .into(),
            ));
        }
        let (addr, ports) = if text.chars().all(|c| c.is_ascii_digit() || c == '-') {
            (None, text)
        } else {
            match split_ports(text).map_err(err)? {
                (a, Some(p)) => (Some(a), p),
                (_, None) => {
                    return Err(err(format!("a listen rule needs a port; {LISTEN_EXPECTED}")));
                }
            }
        };
        let ports = parse_ports(ports).map_err(err)?;
        let net = match addr {
            None => None,
            Some(a) => match parse_target(a).map_err(err)? {
                Target::Net(n) => Some(n),
                Target::Domain(_) => {
                    return Err(err(format!("{a:?} is not an IP address; {LISTEN_EXPECTED}")));
                }
            },
        };
        Ok(Self { net, ports })
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net {
            Some(n @ IpNet::V6(_)) => write!(f, "[{}]:", Shown(n))?,
            Some(n) => write!(f, "{}:", Shown(n))?,
            None => {}
        }
        if self.ports.lo == self.ports.hi {
            write!(f, "{}", self.ports.lo)
        } else {
            write!(f, "{}-{}", self.ports.lo, self.ports.hi)
        }
    }
}

/// Convenience for tests and defaults.
pub fn host(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, 32).expect("32")),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, 128).expect("128")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Rule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn bad(s: &str) -> String {
        s.parse::<Rule>().expect_err(s).why
    }
    fn net(s: &str) -> Target {
        Target::Net(s.parse().expect("net"))
    }

    #[test]
    fn addresses_and_prefixes() {
        assert_eq!(
            ok("10.0.0.0/8"),
            Rule {
                target: net("10.0.0.0/8"),
                ports: Ports::ANY,
                proto: Proto::Any,
                allow_private: false
            }
        );
        assert_eq!(ok("127.0.0.11").target, net("127.0.0.11/32"));
        assert_eq!(ok("::1").target, net("::1/128"));
        assert_eq!(ok("2001:db8::/32").target, net("2001:db8::/32"));
        assert_eq!(ok("[2001:db8::/32]").target, net("2001:db8::/32"));
        assert_eq!(ok("0.0.0.0/0").target, net("0.0.0.0/0"));
        assert_eq!(ok("::/0").target, net("::/0"));
        assert_eq!(ok(" 10.1.2.3 ").target, net("10.1.2.3/32"));
    }

    #[test]
    fn ports_and_protocols() {
        let r = ok("127.0.0.11:8080");
        assert_eq!((r.ports, r.proto), (Ports { lo: 8080, hi: 8080 }, Proto::Any));
        let r = ok("[::1]:443");
        assert_eq!((r.target.clone(), r.ports), (net("::1/128"), Ports { lo: 443, hi: 443 }));
        let r = ok("10.0.0.0/8:8000-8100/tcp");
        assert_eq!((r.ports, r.proto), (Ports { lo: 8000, hi: 8100 }, Proto::Tcp));
        let r = ok("[2001:db8::/32]:53/UDP");
        assert_eq!((r.ports, r.proto), (Ports { lo: 53, hi: 53 }, Proto::Udp));
        assert_eq!(ok("10.0.0.0/8:*/udp").ports, Ports::ANY);
        let r = ok("10.0.0.0/8/udp");
        assert_eq!((r.target, r.ports, r.proto), (net("10.0.0.0/8"), Ports::ANY, Proto::Udp));
        let r = ok("192.0.2.1/icmp");
        assert_eq!((r.target, r.proto), (net("192.0.2.1/32"), Proto::Icmp));
        let r = ok("10.0.0.5:2905/sctp");
        assert_eq!((r.ports, r.proto), (Ports { lo: 2905, hi: 2905 }, Proto::Sctp));
    }

    #[test]
    fn v4_mapped_rules_become_ipv4() {
        assert_eq!(ok("::ffff:10.0.0.1").target, net("10.0.0.1/32"));
        assert_eq!(ok("[::ffff:10.0.0.0/120]:80").target, net("10.0.0.0/24"));
    }

    #[test]
    fn domains() {
        let r = ok("API.GitHub.com.:443");
        assert_eq!(r.target.to_string(), "api.github.com");
        assert_eq!(r.ports, Ports { lo: 443, hi: 443 });
        assert_eq!(ok("*.example.com").target.to_string(), "*.example.com");
        assert_eq!(ok("**.Example.com:80").target.to_string(), "**.example.com");
        assert_eq!(ok("Bücher.example:443").to_string(), "xn--bcher-kva.example:443");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(bad("").contains("empty"));
        assert!(bad("10.0.0.1/8").contains("did you mean 10.0.0.0/8"));
        assert!(bad("10.0.0.0/33").contains("0-32"));
        assert!(bad("1.2.3.4:0").contains("out of range"));
        assert!(bad("1.2.3.4:70000").contains("out of range"));
        assert!(bad("1.2.3.4:http").contains("not a port number"));
        assert!(bad("1.2.3.4:").contains("empty port"));
        assert!(bad("1.2.3.4:90-80").contains("backwards"));
        assert!(bad("2001:db8::1:443:").contains("IPv6"));
        assert!(bad("[::1:443").contains("missing ']'"));
        assert!(bad("[::1]443").contains("after ']'"));
        assert!(bad("1.2.3.4:80/icmp").contains("ICMP has no ports"));
        assert!(bad("fe80::1%eth0").contains("zone"));
        assert!(bad("1.2.3").contains("looks like an IPv4 address"));
        assert!(bad("999.1.1.1").contains("looks like an IPv4 address"));
        assert!(bad("a*.example.com").contains("whole first label"));
        assert!(bad("foo.*.com").contains("whole first label"));
        assert!(bad("bad_host!.com").contains("not a valid domain name"));
        assert!(bad("a..b").contains("empty label"));
        assert!(bad("-a.com").contains("starts or ends"));
    }

    #[test]
    fn listen_rules() {
        let l = |s: &str| s.parse::<Listen>().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(l("8080"), Listen { net: None, ports: Ports { lo: 8080, hi: 8080 } });
        assert_eq!(l("8000-8100/tcp").ports, Ports { lo: 8000, hi: 8100 });
        assert_eq!(l("0.0.0.0:8080").net, Some("0.0.0.0/32".parse().expect("net")));
        assert_eq!(l("[::]:8080").net, Some("::/128".parse().expect("net")));
        assert_eq!(l("10.0.0.0/8:443").net, Some("10.0.0.0/8".parse().expect("net")));
        for s in ["8080", "8000-8100", "0.0.0.0:8080", "[::]:9000", "10.0.0.5:1-2"] {
            assert_eq!(l(s).to_string(), s);
        }
        let bad = |s: &str| s.parse::<Listen>().expect_err(s).why;
        assert!(bad("").contains("empty"));
        assert!(bad("0.0.0.0").contains("needs a port"));
        assert!(bad("53/udp").contains("for TCP"));
        assert!(bad("example.com:80").contains("not an IP address"));
        assert!(bad("70000").contains("out of range"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "10.0.0.0/8",
            "127.0.0.11:8080",
            "[::1]:443/tcp",
            "2001:db8::/32",
            "10.0.0.0/8:8000-8100/udp",
            "192.0.2.1/icmp",
            "api.github.com:443",
            "**.example.test:80/tcp",
            "10.0.0.5:2905/sctp",
        ] {
            assert_eq!(ok(s).to_string(), s);
            assert_eq!(ok(&ok(s).to_string()), ok(s));
        }
    }
}
