//! What a sandbox may reach: the policy model, rule syntax ([`rule`]), domain names
//! ([`name`]), the policy file ([`file`]) and the translation into allow-trie entries
//! ([`compile`]).

pub mod compile;
pub mod file;
pub mod name;
pub mod rule;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ipnet::IpNet;
use netcontrol_common::abi::{
    SANDBOX_F_ALLOW_ABSTRACT_UNIX, SANDBOX_F_ALLOW_ICMP, SANDBOX_F_ALLOW_RAW,
    SANDBOX_F_ALLOW_ROUTING, SANDBOX_F_ALLOW_SCTP, SANDBOX_F_AUDIT,
};

pub use self::{
    compile::{Entries, Grant, compile},
    name::Pattern,
    rule::{Listen, Ports, Proto, Rule, RuleError, Target},
};

/// Enforce denies; audit only reports what enforce would deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        }
    }
}

/// How domain rules become addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DnsMode {
    /// DNS-aware: the sandbox's DNS goes through netcontrol's proxy, which answers allowed names
    /// only and allows the addresses of its answers before releasing them.
    #[default]
    Proxy,
    /// netcontrol resolves the names itself and follows them; the sandbox's own DNS is not
    /// looked at (it may reach its resolvers, and only them, on port 53).
    Resolver,
}

impl DnsMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Resolver => "resolver",
        }
    }
}

/// How the proxy answers a query it does not forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refusal {
    /// NXDOMAIN: "no such name". Resolvers handle it well (musl gives up on REFUSED).
    #[default]
    NxDomain,
    Refused,
}

/// What DNS answers may point at (`dns.rebinding`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rebinding {
    /// Answers pointing at loopback, unspecified, link-local, private (RFC 1918, CGNAT, ULA)
    /// or the host's own addresses are not learned and are taken out of the answer (a name
    /// an attacker controls must not open the inside of the network). `allow_private` opens
    /// the private ranges.
    #[default]
    Refuse,
    /// Whatever the answer says is allowed (shielded addresses excepted).
    Allow,
}

impl Rebinding {
    pub fn name(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::Allow => "allow",
        }
    }
}

/// How domain rules are resolved and followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    pub mode: DnsMode,
    /// Servers to resolve through (and, in proxy mode, to forward to); None: the nameservers
    /// of /etc/resolv.conf.
    pub servers: Option<Vec<SocketAddr>>,
    /// TTLs below this are raised to it (how often a name is re-resolved at most).
    pub min_ttl: Duration,
    /// TTLs above this are lowered to it (how long an answer is trusted at most).
    pub max_ttl: Duration,
    /// How long an address stays allowed after its TTL ran out without it being seen again
    /// (clients and CDNs rotate addresses).
    pub grace: Duration,
    /// Addresses kept per name; beyond it the least recently seen are dropped.
    pub max_ips_per_name: usize,
    /// Per query.
    pub timeout: Duration,
    /// Proxy mode: the answer to names that are not allowed.
    pub refuse_with: Refusal,
    /// Proxy mode: queries per second of the sandbox (bursts of twice as many).
    pub max_queries_per_second: u32,
    /// Proxy mode: longer names are refused (long names carry exfiltrated data).
    pub max_name_length: usize,
    pub rebinding: Rebinding,
    /// With `rebinding: refuse`: private addresses (RFC 1918, CGNAT, ULA) in answers are
    /// allowed for every name (in-cluster names); per rule, see [`Rule::allow_private`].
    pub allow_private: bool,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            servers: None,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(300),
            max_ips_per_name: 1000,
            timeout: Duration::from_secs(2),
            mode: DnsMode::Proxy,
            refuse_with: Refusal::NxDomain,
            max_queries_per_second: 100,
            max_name_length: 253,
            rebinding: Rebinding::Refuse,
            allow_private: false,
        }
    }
}

/// A sandbox's policy. Everything not allowed is denied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub allow: Vec<Rule>,
    pub dns: DnsSettings,
    /// Allow `SOCK_RAW` sockets (they bypass every address rule).
    pub allow_raw_sockets: bool,
    /// Allow ICMP/ICMPv6 datagram ("ping") sockets. Their `connect()` is judged by the address
    /// rules, but an unconnected `sendto()` on them is not visible to any cgroup hook.
    pub allow_icmp: bool,
    /// Allow the socket options and packets that route through other hosts (IPv6 routing,
    /// hop-by-hop and destination options, IPv4 source routes).
    pub allow_routing_options: bool,
    /// Allow connections and datagrams to abstract unix sockets (for a sandbox in the host's
    /// network namespace, those are the host's daemons').
    pub allow_abstract_unix: bool,
    /// Socket families beyond inet, inet6, unix and netlink the sandbox may create (`AF_*`).
    pub families: BTreeSet<u8>,
    /// Where a sandbox in the host's network namespace may listen besides loopback.
    pub listen: Vec<Listen>,
}

impl Policy {
    /// What a sandbox gets whose policy cannot be had (it names one that does not exist):
    /// nothing allowed, DNS included (no servers, no proxy to place), every attempt reported.
    pub fn deny_all() -> Self {
        Self {
            dns: DnsSettings {
                servers: Some(Vec::new()),
                mode: DnsMode::Resolver,
                ..Default::default()
            },
            ..Self::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("{0}")]
    Compile(#[from] compile::TooManyRanges),
    #[error(transparent)]
    File(#[from] file::FileError),
}

/// Addresses each followed name currently allows.
pub type Resolved = BTreeMap<String, BTreeSet<IpAddr>>;

/// A policy in the kernel's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// `SANDBOX_F_*`
    pub flags: u32,
    /// DNS-aware mode: the proxy's ports in the sandbox's namespace (0: none).
    pub dns_port4: u16,
    pub dns_port6: u16,
    /// Socket families allowed beyond the usual ones (bit N: `AF_*` N).
    pub families: u64,
    pub entries: Entries,
    /// Where the sandbox may listen (under its policy id with `LISTEN_POLICY_BIT`).
    pub listen: Entries,
}

impl Compiled {
    /// The sandbox's entry in the kernel's sandbox table.
    pub fn sandbox_value(&self, policy_id: u32) -> netcontrol_common::abi::SandboxValue {
        netcontrol_common::abi::SandboxValue {
            policy_id,
            flags: self.flags,
            dns_port4: self.dns_port4,
            dns_port6: self.dns_port6,
            _pad: 0,
            families: self.families,
        }
    }
}

impl Policy {
    /// The `SANDBOX_F_*` flags the kernel side sees.
    pub fn sandbox_flags(&self) -> u32 {
        let mut f = 0;
        if self.mode == Mode::Audit {
            f |= SANDBOX_F_AUDIT;
        }
        if self.allow_raw_sockets {
            f |= SANDBOX_F_ALLOW_RAW;
        }
        if self.allow_icmp {
            f |= SANDBOX_F_ALLOW_ICMP;
        }
        if self.allow.iter().any(|r| r.proto == Proto::Sctp) {
            f |= SANDBOX_F_ALLOW_SCTP;
        }
        if self.allow_routing_options {
            f |= SANDBOX_F_ALLOW_ROUTING;
        }
        if self.allow_abstract_unix {
            f |= SANDBOX_F_ALLOW_ABSTRACT_UNIX;
        }
        f
    }

    /// The extra socket families as the kernel's bit mask.
    pub fn family_mask(&self) -> u64 {
        self.families.iter().filter(|&&f| f < 64).fold(0, |m, &f| m | (1u64 << f))
    }

    /// Whether DNS answers for `name` may hold private addresses.
    pub fn private_allowed_for(&self, name: &str) -> bool {
        self.dns.rebinding == Rebinding::Allow
            || self.dns.allow_private
            || self.domain_rules().any(|(p, r)| r.allow_private && p.matches(name))
    }

    /// The listen rules as grants (TCP; a port alone covers every address of both families).
    pub fn listen_grants(&self) -> Vec<Grant> {
        let any: [IpNet; 2] = ["0.0.0.0/0".parse().expect("net"), "::/0".parse().expect("net")];
        self.listen
            .iter()
            .flat_map(|l| {
                match l.net {
                    Some(n) => vec![n],
                    None => any.to_vec(),
                }
                .into_iter()
                .map(move |net| Grant { net, proto: Proto::Tcp, ports: l.ports })
            })
            .collect()
    }

    /// The exact names to resolve and follow.
    pub fn names(&self) -> BTreeSet<String> {
        self.domain_rules().filter(|(p, _)| !p.is_wildcard()).map(|(p, _)| p.name.clone()).collect()
    }

    /// The wildcard patterns (they cannot be resolved in advance).
    pub fn wildcards(&self) -> BTreeSet<String> {
        self.domain_rules().filter(|(p, _)| p.is_wildcard()).map(|(p, _)| p.to_string()).collect()
    }

    fn domain_rules(&self) -> impl Iterator<Item = (&Pattern, &Rule)> {
        self.allow.iter().filter_map(|r| match &r.target {
            Target::Domain(p) => Some((p, r)),
            Target::Net(_) => None,
        })
    }

    /// Whether the policy needs DNS servers: it has domain rules, or servers were named.
    pub fn uses_dns(&self) -> bool {
        self.domain_rules().next().is_some() || self.dns.servers.is_some()
    }

    /// The (protocol, port range) pairs the domain rules matching `name` allow: what an address
    /// the name resolves to is allowed (proxy mode).
    pub fn ranges_for_name(&self, name: &str) -> Vec<netcontrol_common::abi::PortRange> {
        self.domain_rules()
            .filter(|(p, _)| p.matches(name))
            .map(|(_, r)| compile::port_range(r.proto, r.ports))
            .collect()
    }

    /// Every domain pattern (proxy mode answers for names these match).
    pub fn patterns(&self) -> Vec<Pattern> {
        self.domain_rules().map(|(p, _)| p.clone()).collect()
    }

    /// Everything this policy grants, given what its names resolve to and which DNS servers
    /// the sandbox must reach (UDP and TCP on their ports, and nothing else on them).
    pub fn grants(&self, resolved: &Resolved, dns_servers: &[SocketAddr]) -> Vec<Grant> {
        let mut grants = Vec::new();
        for r in &self.allow {
            match &r.target {
                Target::Net(net) => {
                    grants.push(Grant { net: *net, proto: r.proto, ports: r.ports })
                }
                Target::Domain(p) => {
                    for ip in
                        resolved.get(&p.name).into_iter().flatten().filter(|_| !p.is_wildcard())
                    {
                        grants.push(Grant { net: rule::host(*ip), proto: r.proto, ports: r.ports });
                    }
                }
            }
        }
        // In proxy mode the kernel sends all DNS to the proxy: the servers stay closed.
        if self.uses_dns() && self.dns.mode == DnsMode::Resolver {
            for s in dns_servers {
                let port = Ports { lo: s.port(), hi: s.port() };
                let net: IpNet = rule::host(s.ip());
                grants.push(Grant { net, proto: Proto::Udp, ports: port });
                grants.push(Grant { net, proto: Proto::Tcp, ports: port });
            }
        }
        grants
    }

    /// The kernel's view of this policy.
    pub fn compile(
        &self,
        resolved: &Resolved,
        dns_servers: &[SocketAddr],
    ) -> Result<Compiled, PolicyError> {
        Ok(Compiled {
            flags: self.sandbox_flags(),
            families: self.family_mask(),
            entries: compile(&self.grants(resolved, dns_servers))?,
            listen: compile::Index::new(&self.listen_grants()).listen_entries()?,
            ..Compiled::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> Policy {
        Policy {
            allow: rules.iter().map(|r| r.parse().expect("rule")).collect(),
            ..Policy::default()
        }
    }

    #[test]
    fn names_and_wildcards() {
        let p = policy(&[
            "api.github.com:443",
            "*.example.test",
            "**.b.test:80",
            "10.0.0.0/8",
            "API.github.com",
        ]);
        assert_eq!(p.names().into_iter().collect::<Vec<_>>(), ["api.github.com"]);
        assert_eq!(p.wildcards().into_iter().collect::<Vec<_>>(), ["**.b.test", "*.example.test"]);
        assert!(p.uses_dns());
        assert!(!policy(&["10.0.0.0/8"]).uses_dns());
    }

    #[test]
    fn resolved_names_and_dns_servers_become_grants() {
        let mut p = policy(&["api.github.com:443/tcp", "10.0.0.0/8"]);
        p.dns.mode = DnsMode::Resolver;
        let resolved: Resolved =
            [("api.github.com".to_owned(), ["127.0.0.20".parse().expect("ip")].into())].into();
        let dns: SocketAddr = "127.0.0.53:53".parse().expect("addr");
        let g = p.grants(&resolved, &[dns]);
        assert!(g.contains(&Grant {
            net: "127.0.0.20/32".parse().expect("net"),
            proto: Proto::Tcp,
            ports: Ports { lo: 443, hi: 443 }
        }));
        assert!(g.contains(&Grant {
            net: "10.0.0.0/8".parse().expect("net"),
            proto: Proto::Any,
            ports: Ports::ANY
        }));
        for proto in [Proto::Udp, Proto::Tcp] {
            assert!(g.contains(&Grant {
                net: "127.0.0.53/32".parse().expect("net"),
                proto,
                ports: Ports { lo: 53, hi: 53 }
            }));
        }
        assert_eq!(g.len(), 4);
        // In proxy mode the kernel sends DNS to the proxy: the servers stay closed.
        p.dns.mode = DnsMode::Proxy;
        assert_eq!(p.grants(&resolved, &[dns]).len(), 2);
        // Without domain rules (or named servers) the resolver is not opened.
        assert_eq!(policy(&["10.0.0.0/8"]).grants(&resolved, &[dns]).len(), 1);
    }
}
