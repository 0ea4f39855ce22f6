//! Rules -> allow-trie entries.
//!
//! The kernel does one longest-prefix lookup per attempt, which returns only the most specific
//! entry. So every entry carries the port ranges of all rules whose prefix covers it
//! (`10.0.0.0/8:80` plus `10.1.0.0/16:443` gives 10.1.0.0/16 both ports). Cloud metadata
//! addresses are the exception: they never inherit from covering rules, so `0.0.0.0/0` does not
//! open them; only a rule naming the exact address does.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netcontrol_common::abi::{
    ALLOW_F_PROTECTED, AllowValue, MAX_PORT_RANGES, PROTO_ANY, PortRange,
};

use super::rule::{Ports, Proto};

/// Addresses that only an exact rule opens: cloud instance metadata and credential endpoints.
pub const PROTECTED_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OCI, DigitalOcean, OpenStack
    Ipv4Addr::new(169, 254, 170, 2),   // AWS ECS task credentials
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
];
pub const PROTECTED_V6: [Ipv6Addr; 1] = [
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254), // AWS (IPv6 IMDS)
];

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
    Ok(Entries {
        v4: compile_family(
            grants.iter().filter_map(|g| match g.net {
                IpNet::V4(n) => Some((n.prefix_len(), n.network().octets(), *g)),
                IpNet::V6(_) => None,
            }),
            &PROTECTED_V4.map(|a| a.octets()),
            |len, a| IpNet::V4(Ipv4Net::new(a.into(), len).expect("valid")),
        )?,
        v6: compile_family(
            grants.iter().filter_map(|g| match g.net {
                IpNet::V6(n) => Some((n.prefix_len(), n.network().octets(), *g)),
                IpNet::V4(_) => None,
            }),
            &PROTECTED_V6.map(|a| a.octets()),
            |len, a| IpNet::V6(Ipv6Net::new(a.into(), len).expect("valid")),
        )?,
    })
}

fn compile_family<const N: usize>(
    grants: impl Iterator<Item = (u8, [u8; N], Grant)>,
    protected: &[[u8; N]],
    to_net: impl Fn(u8, [u8; N]) -> IpNet,
) -> Result<BTreeMap<(u8, [u8; N]), AllowValue>, TooManyRanges> {
    let bits = (N * 8) as u8;
    // The ranges each distinct prefix grants by itself.
    let mut own: HashMap<(u8, [u8; N]), Vec<PortRange>> = HashMap::new();
    for (len, addr, g) in grants {
        own.entry((len, addr)).or_default().push(PortRange {
            lo: g.ports.lo,
            hi: g.ports.hi,
            proto: g.proto.code(),
            _pad: 0,
        });
    }
    let mut out = BTreeMap::new();
    for &(len, addr) in own.keys() {
        let is_protected = len == bits && protected.contains(&addr);
        let ranges = if is_protected {
            own[&(len, addr)].clone()
        } else {
            // Walk every shorter prefix of this one; each that is a rule contributes.
            (0..=len).filter_map(|l| own.get(&(l, truncate(addr, l)))).flatten().copied().collect()
        };
        let flags = if is_protected { ALLOW_F_PROTECTED } else { 0 };
        out.insert((len, addr), value(&ranges, flags, || to_net(len, addr))?);
    }
    // A protected address covered by a broader rule gets an entry of its own (with only its
    // exact rules' ports, usually none), so the broader rule cannot reach it.
    for &p in protected {
        if out.contains_key(&(bits, p)) {
            continue;
        }
        let covered = (0..bits).any(|l| own.contains_key(&(l, truncate(p, l))));
        if covered {
            out.insert((bits, p), AllowValue { flags: ALLOW_F_PROTECTED, ..AllowValue::default() });
        }
    }
    Ok(out)
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
    use netcontrol_common::{
        abi::{PROTO_TCP, PROTO_UDP, REASON_METADATA, REASON_NONE, REASON_PORT_NOT_ALLOWED},
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
        for ip in PROTECTED_V4 {
            assert_eq!(judge_destination(lookup4(&e, ip.octets()), PROTO_TCP, 80), REASON_METADATA);
        }
        let v6 = PROTECTED_V6[0];
        assert_eq!(judge_destination(lookup6(&e, v6), PROTO_TCP, 80), REASON_METADATA);
        assert_eq!(
            judge_destination(lookup4(&e, [169, 254, 169, 253]), PROTO_TCP, 80),
            REASON_NONE
        );
        // A /24 around it is not "the exact address" either.
        let e = compile(&[g("169.254.169.0/24", Proto::Any, 0, u16::MAX)]).expect("compile");
        assert_eq!(
            judge_destination(lookup4(&e, [169, 254, 169, 254]), PROTO_TCP, 80),
            REASON_METADATA
        );
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
