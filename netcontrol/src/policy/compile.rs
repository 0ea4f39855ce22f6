//! Rules -> allow-trie entries.
//!
//! The kernel does one longest-prefix lookup per attempt, which returns only the most specific
//! entry. So every entry carries the port ranges of all rules whose prefix covers it
//! (`10.0.0.0/8:80` plus `10.1.0.0/16:443` gives 10.1.0.0/16 both ports). Shielded addresses
//! ([`SHIELDS`]) are the exception: broader rules never reach into them, so `0.0.0.0/0` does
//! not open a cloud credential endpoint, link-local addresses or 0.0.0.0.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netcontrol_common::{
    abi::{
        ALLOW_F_LEARNED, AllowValue, MAX_PORT_RANGES, PROTO_ANY, PortRange, REASON_LINK_LOCAL,
        REASON_METADATA, REASON_UNSPECIFIED,
    },
    verdict::protected_flags,
};

use super::rule::{Ports, Proto};

/// Addresses that rules broader than them do not open.
#[derive(Clone, Copy, Debug)]
pub struct Shield {
    pub net: &'static str,
    /// Only a rule naming the exact address opens it; otherwise (a range), a rule inside it.
    pub exact: bool,
    /// What a denial reports (`REASON_*`).
    pub reason: u8,
    /// What it is, and where that is documented.
    pub what: &'static str,
}

const fn exact(net: &'static str, what: &'static str) -> Shield {
    Shield { net, exact: true, reason: REASON_METADATA, what }
}

/// Cloud instance metadata and credential endpoints (opened only by a rule naming the exact
/// address), link-local ranges (opened only by rules inside them: GKE's metadata DNS and
/// NodeLocal DNSCache are reached by exact rules such as `169.254.20.10:53`), and the
/// unspecified addresses (the kernel turns a connect to them into one to the host itself).
pub const SHIELDS: &[Shield] = &[
    exact(
        "169.254.169.254/32",
        "instance metadata: AWS, GCP, Azure, OCI, DigitalOcean, OpenStack (each cloud's IMDS docs)",
    ),
    exact("fd00:ec2::254/128", "AWS instance metadata over IPv6 (AWS EC2 user guide, IMDS)"),
    exact("169.254.170.2/32", "AWS ECS task metadata and credentials (ECS developer guide)"),
    exact("169.254.170.23/32", "EKS Pod Identity agent credentials (EKS user guide, Pod Identity)"),
    exact("fd00:ec2::23/128", "EKS Pod Identity agent over IPv6 (EKS user guide)"),
    exact("169.254.169.252/32", "GKE metadata server of Workload Identity (GKE docs, port 988)"),
    exact(
        "168.63.129.16/32",
        "Azure WireServer: VM agent, extension and certificate channel (Azure docs, \"What is IP address 168.63.129.16?\")",
    ),
    exact("100.100.100.200/32", "Alibaba Cloud ECS metadata (Alibaba Cloud docs)"),
    exact("169.254.0.23/32", "Tencent Cloud CVM metadata (Tencent Cloud docs)"),
    Shield {
        net: "0.0.0.0/32",
        exact: true,
        reason: REASON_UNSPECIFIED,
        what: "unspecified: connecting to it reaches the host itself",
    },
    Shield {
        net: "::/128",
        exact: true,
        reason: REASON_UNSPECIFIED,
        what: "unspecified: connecting to it reaches the host itself",
    },
    Shield {
        net: "169.254.0.0/16",
        exact: false,
        reason: REASON_LINK_LOCAL,
        what: "IPv4 link-local (RFC 3927): cloud agents and metadata services live here",
    },
    Shield {
        net: "fe80::/10",
        exact: false,
        reason: REASON_LINK_LOCAL,
        what: "IPv6 link-local (RFC 4291)",
    },
];

/// The shields of one family, parsed: (prefix length, network, exact, reason).
fn shields<const N: usize>() -> Vec<(u8, [u8; N], bool, u8)> {
    SHIELDS
        .iter()
        .filter_map(|s| {
            let net: IpNet = s.net.parse().expect("valid shield");
            let bytes: [u8; N] = match net.network() {
                IpAddr::V4(a) => a.octets().as_slice().try_into().ok()?,
                IpAddr::V6(a) => a.octets().as_slice().try_into().ok()?,
            };
            Some((net.prefix_len(), bytes, s.exact, s.reason))
        })
        .collect()
}

/// The innermost shield containing `(len, addr)`: exact ones only at their own address.
fn shield_of<const N: usize>(
    shields: &[(u8, [u8; N], bool, u8)],
    len: u8,
    addr: [u8; N],
) -> Option<(u8, u8)> {
    shields
        .iter()
        .filter(|(slen, snet, exact, _)| {
            if *exact {
                *slen == len && *snet == addr
            } else {
                *slen <= len && truncate(addr, *slen) == *snet
            }
        })
        .max_by_key(|(slen, ..)| *slen)
        .map(|(slen, _, _, reason)| (*slen, *reason))
}

/// Whether an address lies in a shield (DNS answers never open one).
pub fn shielded(ip: IpAddr) -> Option<&'static Shield> {
    SHIELDS.iter().find(|s| s.net.parse::<IpNet>().is_ok_and(|n| n.contains(&ip)))
}

/// One (network, protocol, ports) grant, after domains were resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    pub net: IpNet,
    pub proto: Proto,
    pub ports: Ports,
}

/// The entries of one policy, keyed by (prefix length, network address).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    pub v4: BTreeMap<(u8, [u8; 4]), AllowValue>,
    pub v6: BTreeMap<(u8, [u8; 16]), AllowValue>,
}

impl Entries {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{net} needs {count} distinct port ranges after merging the rules that cover it, but an \
     entry holds at most {max}; merge ports into ranges (e.g. 8000-8100) or use fewer rules"
)]
pub struct TooManyRanges {
    pub net: IpNet,
    pub count: usize,
    pub max: usize,
}

pub fn compile(grants: &[Grant]) -> Result<Entries, TooManyRanges> {
    Index::new(grants).entries()
}

/// The granted prefixes and what each grants by itself: every entry's value derives from it.
/// Kept between compilations so that one host entry (an address learned from DNS) can be
/// computed without recompiling everything.
#[derive(Clone, Debug, Default)]
pub struct Index {
    v4: Family<4>,
    v6: Family<16>,
}

#[derive(Clone, Debug)]
struct Family<const N: usize> {
    own: HashMap<(u8, [u8; N]), Vec<PortRange>>,
}

impl<const N: usize> Default for Family<N> {
    fn default() -> Self {
        Self { own: HashMap::new() }
    }
}

/// A (protocol, port range) as the kernel stores it.
pub fn port_range(proto: Proto, ports: Ports) -> PortRange {
    PortRange { lo: ports.lo, hi: ports.hi, proto: proto.code(), _pad: 0 }
}

fn range_of(g: &Grant) -> PortRange {
    port_range(g.proto, g.ports)
}

impl Index {
    pub fn new(grants: &[Grant]) -> Self {
        let mut index = Self::default();
        for g in grants {
            match g.net {
                IpNet::V4(n) => index
                    .v4
                    .own
                    .entry((n.prefix_len(), n.network().octets()))
                    .or_default()
                    .push(range_of(g)),
                IpNet::V6(n) => index
                    .v6
                    .own
                    .entry((n.prefix_len(), n.network().octets()))
                    .or_default()
                    .push(range_of(g)),
            }
        }
        index
    }

    /// Every entry the grants need.
    pub fn entries(&self) -> Result<Entries, TooManyRanges> {
        Ok(Entries {
            v4: self.v4.entries(&shields::<4>(), v4_net)?,
            v6: self.v6.entries(&shields::<16>(), v6_net)?,
        })
    }

    /// The entries of listen rules: no shields (0.0.0.0 is the wildcard to bind to, and
    /// nothing is sent there).
    pub fn listen_entries(&self) -> Result<Entries, TooManyRanges> {
        Ok(Entries { v4: self.v4.entries(&[], v4_net)?, v6: self.v6.entries(&[], v6_net)? })
    }

    /// The entry for a single address that also carries `extra` ranges (learned from DNS):
    /// the ranges of every grant covering it plus `extra`, flagged `ALLOW_F_LEARNED`. A
    /// shielded address ignores `extra`: DNS never opens one. None when the address needs no
    /// entry of its own.
    pub fn host_value(
        &self,
        ip: IpAddr,
        extra: &[PortRange],
    ) -> Result<Option<AllowValue>, TooManyRanges> {
        match ip {
            IpAddr::V4(a) => self.v4.host_value(a.octets(), extra, &shields::<4>(), v4_net),
            IpAddr::V6(a) => self.v6.host_value(a.octets(), extra, &shields::<16>(), v6_net),
        }
    }

    /// [`Index::entries`] with the learned addresses' host entries on top.
    pub fn entries_with(
        &self,
        learned: &BTreeMap<IpAddr, Vec<PortRange>>,
    ) -> Result<Entries, TooManyRanges> {
        let mut e = self.entries()?;
        for (ip, extra) in learned {
            let value = self.host_value(*ip, extra)?;
            match (ip, value) {
                (IpAddr::V4(a), Some(v)) => {
                    e.v4.insert((32, a.octets()), v);
                }
                (IpAddr::V6(a), Some(v)) => {
                    e.v6.insert((128, a.octets()), v);
                }
                (_, None) => {}
            }
        }
        Ok(e)
    }
}

fn v4_net(len: u8, a: [u8; 4]) -> IpNet {
    IpNet::V4(Ipv4Net::new(a.into(), len).expect("valid"))
}

fn v6_net(len: u8, a: [u8; 16]) -> IpNet {
    IpNet::V6(Ipv6Net::new(a.into(), len).expect("valid"))
}

impl<const N: usize> Family<N> {
    const BITS: u8 = (N * 8) as u8;

    /// The ranges of every granted prefix covering `(len, addr)`, itself included.
    fn covering(&self, len: u8, addr: [u8; N]) -> impl Iterator<Item = &PortRange> {
        (0..=len).filter_map(move |l| self.own.get(&(l, truncate(addr, l)))).flatten()
    }

    /// The ranges of the granted prefixes covering `(len, addr)` from `min_len` on: a shielded
    /// prefix takes only what is granted inside its shield.
    fn covering_from(
        &self,
        min_len: u8,
        len: u8,
        addr: [u8; N],
    ) -> impl Iterator<Item = &PortRange> {
        (min_len..=len).filter_map(move |l| self.own.get(&(l, truncate(addr, l)))).flatten()
    }

    fn entries(
        &self,
        shields: &[(u8, [u8; N], bool, u8)],
        to_net: fn(u8, [u8; N]) -> IpNet,
    ) -> Result<BTreeMap<(u8, [u8; N]), AllowValue>, TooManyRanges> {
        let mut out = BTreeMap::new();
        for &(len, addr) in self.own.keys() {
            let (ranges, flags): (Vec<PortRange>, u32) = match shield_of(shields, len, addr) {
                Some((slen, reason)) => (
                    self.covering_from(slen, len, addr).copied().collect(),
                    protected_flags(reason),
                ),
                None => (self.covering(len, addr).copied().collect(), 0),
            };
            out.insert((len, addr), value(&ranges, flags, || to_net(len, addr))?);
        }
        // A shield that a broader rule covers gets an entry of its own (with only the ports
        // granted inside it, usually none), so the broader rule cannot reach into it.
        for &(slen, snet, _, reason) in shields {
            if out.contains_key(&(slen, snet)) {
                continue;
            }
            let covered = (0..slen).any(|l| self.own.contains_key(&(l, truncate(snet, l))));
            if covered {
                out.insert(
                    (slen, snet),
                    AllowValue { flags: protected_flags(reason), ..AllowValue::default() },
                );
            }
        }
        Ok(out)
    }

    fn host_value(
        &self,
        addr: [u8; N],
        extra: &[PortRange],
        shields: &[(u8, [u8; N], bool, u8)],
        to_net: fn(u8, [u8; N]) -> IpNet,
    ) -> Result<Option<AllowValue>, TooManyRanges> {
        let bits = Self::BITS;
        if shield_of(shields, bits, addr).is_some() {
            // What the static entries say, learned ranges ignored.
            return Ok(self.entries(shields, to_net)?.remove(&(bits, addr)));
        }
        let ranges: Vec<PortRange> = self.covering(bits, addr).chain(extra).copied().collect();
        if ranges.is_empty() {
            return Ok(None);
        }
        let flags = if extra.is_empty() { 0 } else { ALLOW_F_LEARNED };
        value(&ranges, flags, || to_net(bits, addr)).map(Some)
    }
}

/// Keep the first `len` bits of `addr`.
fn truncate<const N: usize>(mut addr: [u8; N], len: u8) -> [u8; N] {
    for (i, byte) in addr.iter_mut().enumerate() {
        let start = (i * 8) as u32;
        let keep = u32::from(len).saturating_sub(start).min(8);
        *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    addr
}

/// Merge ranges (overlapping or adjacent, same protocol; anything an any-protocol range
/// covers) into an entry value.
fn value(
    ranges: &[PortRange],
    flags: u32,
    net: impl Fn() -> IpNet,
) -> Result<AllowValue, TooManyRanges> {
    let merged = merge(ranges);
    if merged.len() > MAX_PORT_RANGES {
        return Err(TooManyRanges { net: net(), count: merged.len(), max: MAX_PORT_RANGES });
    }
    let mut v = AllowValue { count: merged.len() as u32, flags, ..AllowValue::default() };
    v.ranges[..merged.len()].copy_from_slice(&merged);
    Ok(v)
}

fn merge(ranges: &[PortRange]) -> Vec<PortRange> {
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| (r.proto, r.lo, r.hi));
    let mut out: Vec<PortRange> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(last) if last.proto == r.proto && u32::from(r.lo) <= u32::from(last.hi) + 1 => {
                last.hi = last.hi.max(r.hi);
            }
            _ => out.push(r),
        }
    }
    // Drop protocol-specific ranges that an any-protocol range already covers.
    let any: Vec<PortRange> = out.iter().filter(|r| r.proto == PROTO_ANY).copied().collect();
    out.retain(|r| r.proto == PROTO_ANY || !any.iter().any(|a| a.lo <= r.lo && r.hi <= a.hi));
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use netcontrol_common::{
        abi::{PROTO_TCP, PROTO_UDP, REASON_NONE, REASON_PORT_NOT_ALLOWED},
        verdict::judge_destination,
    };

    use super::*;

    fn g(net: &str, proto: Proto, lo: u16, hi: u16) -> Grant {
        Grant { net: net.parse().expect("net"), proto, ports: Ports { lo, hi } }
    }

    /// What the kernel's longest-prefix lookup would return for a v4 address.
    fn lookup4(e: &Entries, ip: [u8; 4]) -> Option<&AllowValue> {
        (0..=32u8).rev().find_map(|l| e.v4.get(&(l, truncate(ip, l))))
    }
    fn lookup6(e: &Entries, ip: Ipv6Addr) -> Option<&AllowValue> {
        (0..=128u8).rev().find_map(|l| e.v6.get(&(l, truncate(ip.octets(), l))))
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate([10, 1, 2, 3], 8), [10, 0, 0, 0]);
        assert_eq!(truncate([10, 255, 2, 3], 12), [10, 240, 0, 0]);
        assert_eq!(truncate([10, 1, 2, 3], 0), [0; 4]);
        assert_eq!(truncate([10, 1, 2, 3], 32), [10, 1, 2, 3]);
    }

    #[test]
    fn more_specific_entries_inherit_covering_rules() {
        let e =
            compile(&[g("10.0.0.0/8", Proto::Any, 80, 80), g("10.1.0.0/16", Proto::Tcp, 443, 443)])
                .expect("compile");
        let at = |ip, proto, port| judge_destination(lookup4(&e, ip), proto, port);
        assert_eq!(at([10, 1, 2, 3], PROTO_TCP, 80), REASON_NONE);
        assert_eq!(at([10, 1, 2, 3], PROTO_TCP, 443), REASON_NONE);
        assert_eq!(at([10, 2, 2, 3], PROTO_TCP, 443), REASON_PORT_NOT_ALLOWED);
        assert_eq!(at([10, 2, 2, 3], PROTO_UDP, 80), REASON_NONE);
        assert_eq!(e.v4.len(), 2);
    }

    #[test]
    fn metadata_stays_closed_under_a_default_route() {
        let e =
            compile(&[g("0.0.0.0/0", Proto::Any, 0, u16::MAX), g("::/0", Proto::Any, 0, u16::MAX)])
                .expect("compile");
        for s in SHIELDS.iter().filter(|s| s.exact && s.reason == REASON_METADATA) {
            let reason = match s.net.parse::<IpNet>().expect("net").addr() {
                IpAddr::V4(a) => judge_destination(lookup4(&e, a.octets()), PROTO_TCP, 80),
                IpAddr::V6(a) => judge_destination(lookup6(&e, a), PROTO_TCP, 80),
            };
            assert_eq!(reason, REASON_METADATA, "{}", s.net);
        }
        // The rest of link-local is shielded too, as link-local.
        assert_eq!(
            judge_destination(lookup4(&e, [169, 254, 169, 253]), PROTO_TCP, 80),
            REASON_LINK_LOCAL
        );
        assert_eq!(
            judge_destination(lookup6(&e, "fe80::1".parse().expect("ip")), PROTO_TCP, 80),
            REASON_LINK_LOCAL
        );
        // And so are the unspecified addresses.
        assert_eq!(judge_destination(lookup4(&e, [0, 0, 0, 0]), PROTO_TCP, 80), REASON_UNSPECIFIED);
        assert_eq!(
            judge_destination(lookup6(&e, Ipv6Addr::UNSPECIFIED), PROTO_UDP, 53),
            REASON_UNSPECIFIED
        );
        // Next to them, the default route applies.
        assert_eq!(judge_destination(lookup4(&e, [0, 0, 0, 1]), PROTO_TCP, 80), REASON_NONE);
        assert_eq!(judge_destination(lookup4(&e, [169, 253, 0, 1]), PROTO_TCP, 80), REASON_NONE);
        assert_eq!(
            judge_destination(lookup4(&e, [100, 100, 100, 201]), PROTO_TCP, 80),
            REASON_NONE
        );
        // A /24 around it is not "the exact address" either, but it opens the rest of its
        // link-local /24.
        let e = compile(&[g("169.254.169.0/24", Proto::Any, 0, u16::MAX)]).expect("compile");
        assert_eq!(
            judge_destination(lookup4(&e, [169, 254, 169, 254]), PROTO_TCP, 80),
            REASON_METADATA
        );
        assert_eq!(judge_destination(lookup4(&e, [169, 254, 169, 1]), PROTO_TCP, 80), REASON_NONE);
    }

    #[test]
    fn link_local_opens_only_to_rules_inside_it() {
        // NodeLocal DNSCache and GKE's metadata DNS, by exact rules, under a default route.
        let e = compile(&[
            g("0.0.0.0/0", Proto::Any, 0, u16::MAX),
            g("169.254.20.10/32", Proto::Udp, 53, 53),
            g("169.254.169.254/32", Proto::Udp, 53, 53),
        ])
        .expect("compile");
        let at = |ip, proto, port| judge_destination(lookup4(&e, ip), proto, port);
        assert_eq!(at([169, 254, 20, 10], PROTO_UDP, 53), REASON_NONE);
        // The default route's other ports do not come along into link-local.
        assert_eq!(at([169, 254, 20, 10], PROTO_TCP, 80), REASON_LINK_LOCAL);
        assert_eq!(at([169, 254, 169, 254], PROTO_UDP, 53), REASON_NONE);
        assert_eq!(at([169, 254, 169, 254], PROTO_TCP, 80), REASON_METADATA);
        assert_eq!(at([169, 254, 1, 1], PROTO_TCP, 80), REASON_LINK_LOCAL);
        // A rule for all of link-local opens it, but still not the metadata address.
        let e = compile(&[g("169.254.0.0/16", Proto::Tcp, 80, 80)]).expect("compile");
        assert_eq!(judge_destination(lookup4(&e, [169, 254, 1, 1]), PROTO_TCP, 80), REASON_NONE);
        assert_eq!(
            judge_destination(lookup4(&e, [169, 254, 169, 254]), PROTO_TCP, 80),
            REASON_METADATA
        );
        // fe80::/10 likewise.
        let e = compile(&[g("::/0", Proto::Any, 0, u16::MAX), g("fe80::/64", Proto::Tcp, 22, 22)])
            .expect("compile");
        let fe = |s: &str| lookup6(&e, s.parse().expect("ip"));
        assert_eq!(judge_destination(fe("fe80::5"), PROTO_TCP, 22), REASON_NONE);
        assert_eq!(judge_destination(fe("fe80::5"), PROTO_TCP, 80), REASON_LINK_LOCAL);
        assert_eq!(judge_destination(fe("fe80:0:0:1::5"), PROTO_TCP, 22), REASON_LINK_LOCAL);
        assert_eq!(judge_destination(fe("2001:db8::1"), PROTO_TCP, 80), REASON_NONE);
    }

    #[test]
    fn the_shield_list_parses_and_says_what_each_is() {
        for s in SHIELDS {
            let net: IpNet = s.net.parse().unwrap_or_else(|_| panic!("{}", s.net));
            assert_eq!(net.network(), net.addr(), "{}", s.net);
            assert_eq!(s.exact, net.prefix_len() == net.max_prefix_len(), "{}", s.net);
            assert!(!s.what.is_empty());
        }
        assert!(shielded("169.254.170.23".parse().expect("ip")).is_some());
        assert!(shielded("fe80::1".parse().expect("ip")).is_some());
        assert!(shielded("10.0.0.1".parse().expect("ip")).is_none());
    }

    #[test]
    fn an_exact_rule_opens_metadata_only_where_it_says() {
        let e = compile(&[
            g("0.0.0.0/0", Proto::Any, 0, u16::MAX),
            g("169.254.169.254/32", Proto::Udp, 53, 53),
        ])
        .expect("compile");
        let md = [169, 254, 169, 254];
        assert_eq!(judge_destination(lookup4(&e, md), PROTO_UDP, 53), REASON_NONE);
        assert_eq!(judge_destination(lookup4(&e, md), PROTO_TCP, 80), REASON_METADATA);
    }

    #[test]
    fn uncovered_metadata_gets_no_entry() {
        let e = compile(&[g("10.0.0.0/8", Proto::Any, 0, u16::MAX)]).expect("compile");
        assert_eq!(e.v4.len(), 1);
    }

    #[test]
    fn ranges_merge() {
        let m = merge(&[
            PortRange { lo: 80, hi: 80, proto: PROTO_TCP, _pad: 0 },
            PortRange { lo: 81, hi: 90, proto: PROTO_TCP, _pad: 0 },
            PortRange { lo: 85, hi: 100, proto: PROTO_TCP, _pad: 0 },
            PortRange { lo: 200, hi: 200, proto: PROTO_TCP, _pad: 0 },
            PortRange { lo: 53, hi: 53, proto: PROTO_UDP, _pad: 0 },
            PortRange { lo: 50, hi: 60, proto: PROTO_ANY, _pad: 0 },
        ]);
        assert_eq!(
            m,
            vec![
                PortRange { lo: 50, hi: 60, proto: PROTO_ANY, _pad: 0 },
                PortRange { lo: 80, hi: 100, proto: PROTO_TCP, _pad: 0 },
                PortRange { lo: 200, hi: 200, proto: PROTO_TCP, _pad: 0 },
            ]
        );
    }

    #[test]
    fn too_many_ranges_is_an_error_naming_the_prefix() {
        let grants: Vec<Grant> =
            (0..20).map(|i| g("10.0.0.1/32", Proto::Tcp, 1000 + i * 2, 1000 + i * 2)).collect();
        let err = compile(&grants).expect_err("too many");
        assert_eq!(err.count, 20);
        assert!(err.to_string().contains("10.0.0.1/32"), "{err}");
    }

    #[test]
    fn learned_hosts_merge_with_covering_grants_and_never_open_metadata() {
        let index = Index::new(&[
            g("10.0.0.0/8", Proto::Tcp, 443, 443),
            g("0.0.0.0/0", Proto::Udp, 53, 53),
        ]);
        let learned = [PortRange { lo: 80, hi: 80, proto: PROTO_TCP, _pad: 0 }];
        let v = index
            .host_value("10.1.2.3".parse().expect("ip"), &learned)
            .expect("value")
            .expect("some");
        assert_eq!(v.flags, ALLOW_F_LEARNED);
        for (proto, port) in [(PROTO_TCP, 443), (PROTO_TCP, 80), (PROTO_UDP, 53)] {
            assert_eq!(judge_destination(Some(&v), proto, port), REASON_NONE, "{proto}/{port}");
        }
        assert_eq!(judge_destination(Some(&v), PROTO_TCP, 22), REASON_PORT_NOT_ALLOWED);
        // A DNS answer pointing at the metadata address (rebinding) opens nothing.
        let md = index
            .host_value("169.254.169.254".parse().expect("ip"), &learned)
            .expect("value")
            .expect("some");
        assert_eq!(judge_destination(Some(&md), PROTO_TCP, 80), REASON_METADATA);
        // Nor does one pointing at 0.0.0.0 or a link-local address.
        let zero = index
            .host_value("0.0.0.0".parse().expect("ip"), &learned)
            .expect("value")
            .expect("some");
        assert_eq!(judge_destination(Some(&zero), PROTO_TCP, 80), REASON_UNSPECIFIED);
        assert_eq!(
            index.host_value("169.254.3.3".parse().expect("ip"), &learned).expect("value"),
            None,
            "the link-local range's own entry decides"
        );
        // Nothing to allow: no entry.
        assert_eq!(
            Index::new(&[]).host_value("192.0.2.1".parse().expect("ip"), &[]).expect("value"),
            None
        );
        // The same through a full compilation.
        let all = index
            .entries_with(&[("10.1.2.3".parse().expect("ip"), learned.to_vec())].into())
            .expect("entries");
        assert_eq!(all.v4[&(32, [10, 1, 2, 3])], v);
    }

    #[test]
    fn many_entries_compile_quickly() {
        // 100k distinct /32s under one /8: linear in the rule count.
        let mut grants = vec![g("10.0.0.0/8", Proto::Tcp, 443, 443)];
        for i in 0..100_000u32 {
            let [_, b, c, d] = (0x0a00_0000 | i).to_be_bytes();
            grants.push(Grant {
                net: IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, b, c, d), 32).expect("net")),
                proto: Proto::Tcp,
                ports: Ports { lo: 80, hi: 80 },
            });
        }
        let e = compile(&grants).expect("compile");
        assert_eq!(e.v4.len(), 100_001);
        assert_eq!(e.v4[&(32, [10, 0, 1, 0])].count, 2);
    }
}
