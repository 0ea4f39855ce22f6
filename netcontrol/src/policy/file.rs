//! The policy file (YAML). Short for the common case, explicit for the rest:
//!
//! ```yaml
//! mode: enforce                  # or audit
//! allow:
//!   - api.github.com:443         # any RULE, as with --allow
//!   - "*.githubusercontent.com:443"
//!   - 10.0.0.0/8
//!   - domain: api.stripe.com     # the long form
//!     ports: [443, "8000-8100"]
//!     protocol: tcp              # tcp, udp, icmp, sctp or any (the default)
//!   - domain: db.internal.test
//!     allow_private: true        # its DNS answers may be private addresses
//!   - cidr: 192.168.0.0/16
//! listen: [8080, "0.0.0.0:9000"] # besides loopback (sandboxes in the host's network namespace)
//! dns:
//!   mode: proxy                  # or resolver
//!   servers: [127.0.0.53]        # default: the nameservers of /etc/resolv.conf
//!   min_ttl: 5s
//!   max_ttl: 1h
//!   grace: 5m
//!   max_ips_per_name: 1000
//!   timeout: 2s
//!   refuse_with: nxdomain        # or refused
//!   max_queries_per_second: 100
//!   max_name_length: 253
//!   rebinding: refuse            # or allow
//!   allow_private: false
//! sockets:
//!   raw: false
//!   ping: false
//!   routing_options: false
//!   abstract_unix: false
//!   families: []                 # e.g. [vsock, packet]
//! ```
//!
//! Unknown keys are errors, and every error names the file, line and column.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};

use super::{
    DnsMode, DnsSettings, Listen, Mode, Policy, Ports, Proto, Rebinding, Refusal, Rule, Target,
    name::Pattern,
};

/// A policy file that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{column}: {message}{snippet}", path.display())]
    Invalid { path: PathBuf, line: u64, column: u64, message: String, snippet: String },
}

/// Read and validate a policy file.
pub fn load(path: &Path) -> Result<Policy, FileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| FileError::Read { path: path.to_owned(), source })?;
    parse(&text, path)
}

/// Validate policy text; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Policy, FileError> {
    if text.trim().is_empty()
        || text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(FileError::Invalid {
            path: path.to_owned(),
            line: 1,
            column: 1,
            message: "the file has no policy in it (an empty `allow:` list denies everything; say so explicitly)"
                .into(),
            snippet: String::new(),
        });
    }
    let raw: RawPolicy = parse_yaml(text, path)?;
    Ok(raw.into_policy())
}

/// Deserialize YAML text; errors name `path`, the line and the column, with the line shown.
pub(crate) fn parse_yaml<T: de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, FileError> {
    serde_saphyr::from_str(text).map_err(|e| {
        let loc = e.location();
        let (line, column) = loc.map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        let plain = e.without_snippet().to_string();
        let suffix = format!(" at line {line}, column {column}");
        let message = plain.strip_suffix(&suffix).unwrap_or(&plain).to_owned();
        FileError::at(path, text, line, column, message)
    })
}

impl FileError {
    /// An error at a place in `text`, which was read from `path`.
    pub fn at(path: &Path, text: &str, line: u64, column: u64, message: impl Into<String>) -> Self {
        FileError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message: message.into(),
            snippet: snippet(text, line, column),
        }
    }
}

/// The offending line with a caret under the column.
fn snippet(text: &str, line: u64, column: u64) -> String {
    let Some(src) = text.lines().nth(line.saturating_sub(1) as usize) else { return String::new() };
    let width = line.to_string().len();
    format!(
        "\n{line:>width$} | {src}\n{:>width$} | {}^",
        "",
        " ".repeat(column.saturating_sub(1) as usize)
    )
}

/// A policy as written (also the value of a daemon config's `policies:` entries).
#[derive(Deserialize)]
#[serde(try_from = "PolicyFields")]
pub(crate) struct RawPolicy {
    mode: Option<RawMode>,
    allow: Vec<Entry>,
    listen: Vec<ListenSpec>,
    dns: Option<RawDns>,
    sockets: Option<RawSockets>,
}

/// The fields of a policy, before it is checked that it says what it allows.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFields {
    #[serde(default)]
    mode: Option<RawMode>,
    #[serde(default)]
    allow: Option<Vec<Entry>>,
    #[serde(default)]
    listen: Vec<ListenSpec>,
    #[serde(default)]
    dns: Option<RawDns>,
    #[serde(default)]
    sockets: Option<RawSockets>,
}

/// What a policy without `allow:` is told: an empty one (`p:`, `p: {}`, a file holding `{}`
/// or `~`) is far more likely a mistake than a wish to deny everything, and a reload to it
/// would cut the sandbox off.
pub(crate) const NO_ALLOW: &str =
    "the policy has no `allow:` list (write `allow: []` to deny everything)";

impl TryFrom<PolicyFields> for RawPolicy {
    type Error = &'static str;
    fn try_from(f: PolicyFields) -> Result<Self, Self::Error> {
        let PolicyFields { mode, allow, listen, dns, sockets } = f;
        let allow = allow.ok_or(NO_ALLOW)?;
        Ok(Self { mode, allow, listen, dns, sockets })
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawMode {
    Enforce,
    Audit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    mode: Option<RawDnsMode>,
    servers: Option<Vec<Server>>,
    refuse_with: Option<RawRefusal>,
    max_queries_per_second: Option<u32>,
    max_name_length: Option<usize>,
    min_ttl: Option<Seconds>,
    max_ttl: Option<Seconds>,
    grace: Option<Seconds>,
    max_ips_per_name: Option<usize>,
    timeout: Option<Seconds>,
    rebinding: Option<RawRebinding>,
    allow_private: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawRebinding {
    Refuse,
    Allow,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawDnsMode {
    Proxy,
    Resolver,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawRefusal {
    Nxdomain,
    Refused,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSockets {
    raw: Option<bool>,
    ping: Option<bool>,
    routing_options: Option<bool>,
    abstract_unix: Option<bool>,
    #[serde(default)]
    families: Vec<Family>,
}

/// A socket family by name (`vsock`, `packet`, ...).
struct Family(u8);

impl<'de> Deserialize<'de> for Family {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_family(&s).map(Family).map_err(de::Error::custom)
    }
}

/// A socket family name as `sockets.families` and `--allow-family` take it.
pub fn parse_family(s: &str) -> Result<u8, String> {
    use netcontrol_common::{abi::ALWAYS_ALLOWED_FAMILIES, user::SOCKET_FAMILIES};
    let name = s.trim().to_ascii_lowercase();
    let name = name.strip_prefix("af_").unwrap_or(&name);
    match SOCKET_FAMILIES.iter().find(|(n, _)| *n == name) {
        Some((_, f)) if ALWAYS_ALLOWED_FAMILIES & (1 << f) != 0 => {
            Err(format!("{s}: unix, inet, inet6 and netlink sockets are always allowed"))
        }
        Some((_, f)) => Ok(*f),
        None => Err(format!(
            "{s:?} is not a socket family; one of {}",
            SOCKET_FAMILIES
                .iter()
                .filter(|(_, f)| ALWAYS_ALLOWED_FAMILIES & (1 << f) == 0)
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A listen rule: a port (`8080`), a range, or `ADDRESS:PORT`.
struct ListenSpec(Listen);

impl<'de> Deserialize<'de> for ListenSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ListenSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (8080), a range (\"8000-8100\") or \"ADDRESS:PORT\"")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ListenSpec, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ListenSpec, E> {
                s.parse::<Listen>().map(ListenSpec).map_err(|e| E::custom(e.why))
            }
        }
        d.deserialize_any(V)
    }
}

impl RawPolicy {
    pub(crate) fn into_policy(self) -> Policy {
        let defaults = DnsSettings::default();
        let dns = self.dns.map_or(defaults.clone(), |d| DnsSettings {
            mode: match d.mode {
                Some(RawDnsMode::Resolver) => DnsMode::Resolver,
                Some(RawDnsMode::Proxy) => DnsMode::Proxy,
                None => defaults.mode,
            },
            refuse_with: match d.refuse_with {
                Some(RawRefusal::Refused) => Refusal::Refused,
                Some(RawRefusal::Nxdomain) => Refusal::NxDomain,
                None => defaults.refuse_with,
            },
            max_queries_per_second: d
                .max_queries_per_second
                .unwrap_or(defaults.max_queries_per_second),
            max_name_length: d.max_name_length.unwrap_or(defaults.max_name_length),
            servers: d.servers.map(|s| s.into_iter().map(|s| s.0).collect()),
            min_ttl: d.min_ttl.map_or(defaults.min_ttl, |s| s.0),
            max_ttl: d.max_ttl.map_or(defaults.max_ttl, |s| s.0),
            grace: d.grace.map_or(defaults.grace, |s| s.0),
            max_ips_per_name: d.max_ips_per_name.unwrap_or(defaults.max_ips_per_name),
            timeout: d.timeout.map_or(defaults.timeout, |s| s.0),
            rebinding: match d.rebinding {
                Some(RawRebinding::Allow) => Rebinding::Allow,
                Some(RawRebinding::Refuse) => Rebinding::Refuse,
                None => defaults.rebinding,
            },
            allow_private: d.allow_private.unwrap_or(defaults.allow_private),
        });
        let sockets = self.sockets.as_ref();
        Policy {
            mode: match self.mode {
                Some(RawMode::Audit) => Mode::Audit,
                Some(RawMode::Enforce) | None => Mode::Enforce,
            },
            allow: self.allow.into_iter().flat_map(|e| e.0).collect(),
            dns,
            allow_raw_sockets: sockets.and_then(|s| s.raw).unwrap_or(false),
            allow_icmp: sockets.and_then(|s| s.ping).unwrap_or(false),
            allow_routing_options: sockets.and_then(|s| s.routing_options).unwrap_or(false),
            allow_abstract_unix: sockets.and_then(|s| s.abstract_unix).unwrap_or(false),
            families: sockets.map(|s| s.families.iter().map(|f| f.0).collect()).unwrap_or_default(),
            listen: self.listen.into_iter().map(|l| l.0).collect(),
        }
    }
}

/// One `allow:` item: a rule string, or the long form (which may stand for several rules, one
/// per port range).
struct Entry(Vec<Rule>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LongForm {
    domain: Option<String>,
    cidr: Option<String>,
    ports: Option<Vec<PortSpec>>,
    protocol: Option<RawProto>,
    allow_private: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawProto {
    Any,
    Tcp,
    Udp,
    Icmp,
    Sctp,
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rule such as `api.github.com:443` or `10.0.0.0/8`, or a map with `domain` or `cidr`, `ports` and `protocol`")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Entry, E> {
                s.parse::<Rule>().map(|r| Entry(vec![r])).map_err(|e| E::custom(e.why))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entry, A::Error> {
                let long = LongForm::deserialize(de::value::MapAccessDeserializer::new(map))?;
                long.into_rules().map(Entry).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl LongForm {
    fn into_rules(self) -> Result<Vec<Rule>, String> {
        let target = match (self.domain, self.cidr) {
            (Some(d), None) => Target::Domain(Pattern::parse(d.trim())?),
            (None, Some(c)) => match c.trim().parse::<Rule>() {
                Ok(Rule { target: t @ Target::Net(_), ports, .. }) if ports.is_any() => t,
                _ => {
                    return Err(format!(
                        "cidr: {c:?} is not an IP address or CIDR (ports go in `ports:`)"
                    ));
                }
            },
            (Some(_), Some(_)) => return Err("give either `domain` or `cidr`, not both".into()),
            (None, None) => return Err("an allow entry needs `domain` or `cidr`".into()),
        };
        let proto = match self.protocol.unwrap_or(RawProto::Any) {
            RawProto::Any => Proto::Any,
            RawProto::Tcp => Proto::Tcp,
            RawProto::Udp => Proto::Udp,
            RawProto::Icmp => Proto::Icmp,
            RawProto::Sctp => Proto::Sctp,
        };
        let allow_private = self.allow_private.unwrap_or(false);
        if allow_private && !matches!(target, Target::Domain(_)) {
            return Err(
                "`allow_private` is for domain rules (a cidr names its addresses already)".into()
            );
        }
        let ports = match self.ports {
            None => vec![Ports::ANY],
            Some(p) if p.is_empty() => {
                return Err("`ports: []` allows nothing; leave `ports` out for every port".into());
            }
            Some(p) => p.into_iter().map(|p| p.0).collect(),
        };
        if proto == Proto::Icmp && ports.iter().any(|p| !p.is_any()) {
            return Err("ICMP has no ports; leave `ports` out".into());
        }
        Ok(ports
            .into_iter()
            .map(|ports| Rule { target: target.clone(), ports, proto, allow_private })
            .collect())
    }
}

/// A port (`443`) or range (`"8000-8100"`).
struct PortSpec(Ports);

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (1-65535) or a range such as \"8000-8100\"")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PortSpec, E> {
                match u16::try_from(n) {
                    Ok(p) if p > 0 => Ok(PortSpec(Ports { lo: p, hi: p })),
                    _ => Err(E::custom(format!("port {n} is out of range 1-65535"))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PortSpec, E> {
                Err(E::custom(format!("port {n} is out of range 1-65535")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PortSpec, E> {
                // Reuse the rule syntax for the range.
                match format!("0.0.0.0:{}", s.trim()).parse::<Rule>() {
                    Ok(r) => Ok(PortSpec(r.ports)),
                    Err(e) => Err(E::custom(e.why)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration: `"5s"`, `"1h30m"`, or a number of seconds.
struct Seconds(Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"5s\", \"2m\" or \"1h\", or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Seconds, E> {
                Ok(Seconds(Duration::from_secs(n)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Seconds, E> {
                humantime::parse_duration(s.trim()).map(Seconds).map_err(|e| {
                    E::custom(format!("{s:?} is not a duration ({e}); write e.g. \"5s\" or \"1h\""))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A DNS server: `127.0.0.53`, `127.0.0.53:5353`, `::1` or `[::1]:53`.
struct Server(SocketAddr);

impl<'de> Deserialize<'de> for Server {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_server(&s).map(Server).map_err(de::Error::custom)
    }
}

pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)).map_err(|_| {
        format!("{s:?} is not a DNS server address (e.g. 127.0.0.53, 10.0.0.2:5353 or [::1]:53)")
    })
}

/// The normalized form of a policy, as YAML that loads back to the same policy (for
/// `check-policy`). Comments say what a default means.
pub fn render(p: &Policy, system_servers: Option<&[SocketAddr]>) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("string");
    let mut out = String::new();
    out.push_str(&format!("mode: {}\n", p.mode.name()));
    if p.allow.is_empty() {
        out.push_str("allow: []  # nothing is allowed\n");
    } else {
        out.push_str("allow:\n");
        for r in &p.allow {
            let note = match &r.target {
                Target::Domain(pat) if pat.is_wildcard() && p.dns.mode == DnsMode::Resolver => {
                    "  # wildcard: cannot be resolved in advance, so it allows nothing in resolver mode"
                }
                _ => "",
            };
            if r.allow_private {
                out.push_str(&long_form(r));
            } else {
                out.push_str(&format!("  - {}{note}\n", q(&r.to_string())));
            }
        }
    }
    if !p.listen.is_empty() {
        let list: Vec<String> = p.listen.iter().map(|l| q(&l.to_string())).collect();
        out.push_str(&format!("listen: [{}]\n", list.join(", ")));
    }
    let d = &p.dns;
    out.push_str("dns:\n");
    out.push_str(&format!("  mode: {}\n", d.mode.name()));
    match (&d.servers, system_servers) {
        (Some(s), _) => {
            let list: Vec<String> = s.iter().map(|a| q(&a.to_string())).collect();
            out.push_str(&format!("  servers: [{}]\n", list.join(", ")));
        }
        (None, Some(sys)) => {
            let list: Vec<String> = sys.iter().map(|a| a.to_string()).collect();
            out.push_str(&format!(
                "  # servers: not set; /etc/resolv.conf names {}\n",
                list.join(", ")
            ));
        }
        (None, None) => {
            out.push_str("  # servers: not set; the nameservers of /etc/resolv.conf are used\n")
        }
    }
    let dur = |x: Duration| q(&humantime::format_duration(x).to_string());
    out.push_str(&format!("  min_ttl: {}\n", dur(d.min_ttl)));
    out.push_str(&format!("  max_ttl: {}\n", dur(d.max_ttl)));
    out.push_str(&format!("  grace: {}\n", dur(d.grace)));
    out.push_str(&format!("  max_ips_per_name: {}\n", d.max_ips_per_name));
    out.push_str(&format!("  timeout: {}\n", dur(d.timeout)));
    let refuse = match d.refuse_with {
        Refusal::NxDomain => "nxdomain",
        Refusal::Refused => "refused",
    };
    out.push_str(&format!("  refuse_with: {refuse}\n"));
    out.push_str(&format!("  max_queries_per_second: {}\n", d.max_queries_per_second));
    out.push_str(&format!("  max_name_length: {}\n", d.max_name_length));
    out.push_str(&format!("  rebinding: {}\n", d.rebinding.name()));
    out.push_str(&format!("  allow_private: {}\n", d.allow_private));
    out.push_str(&format!("sockets:\n  raw: {}\n  ping: {}\n", p.allow_raw_sockets, p.allow_icmp));
    out.push_str(&format!("  routing_options: {}\n", p.allow_routing_options));
    out.push_str(&format!("  abstract_unix: {}\n", p.allow_abstract_unix));
    let families: Vec<String> = p
        .families
        .iter()
        .map(|f| netcontrol_common::user::socket_family_name(u32::from(*f)))
        .collect();
    out.push_str(&format!("  families: [{}]\n", families.join(", ")));
    out
}

/// A domain rule in the long form (what the short form cannot say).
fn long_form(r: &Rule) -> String {
    let mut out =
        format!("  - domain: {}\n", serde_json::to_string(&r.target.to_string()).expect("string"));
    if !r.ports.is_any() {
        let ports = if r.ports.lo == r.ports.hi {
            r.ports.lo.to_string()
        } else {
            format!("\"{}-{}\"", r.ports.lo, r.ports.hi)
        };
        out.push_str(&format!("    ports: [{ports}]\n"));
    }
    if let Some(p) = r.proto.suffix() {
        out.push_str(&format!("    protocol: {p}\n"));
    }
    out.push_str("    allow_private: true\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Policy {
        parse(text, Path::new("p.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> String {
        parse(text, Path::new("p.yaml")).expect_err("invalid").to_string()
    }

    #[test]
    fn short_and_long_forms() {
        let p = ok("mode: audit
allow:
  - api.github.com:443
  - \"*.example.test\"
  - 10.0.0.0/8
  - domain: API.Stripe.com
    ports: [443, \"8000-8100\"]
    protocol: tcp
  - cidr: 192.168.0.0/16
    protocol: udp
dns:
  servers: [127.0.0.53, \"[::1]:5353\"]
  min_ttl: 1s
  grace: 0
  max_ips_per_name: 50
sockets:
  ping: true
");
        assert_eq!(p.mode, Mode::Audit);
        let rules: Vec<String> = p.allow.iter().map(Rule::to_string).collect();
        assert_eq!(
            rules,
            [
                "api.github.com:443",
                "*.example.test",
                "10.0.0.0/8",
                "api.stripe.com:443/tcp",
                "api.stripe.com:8000-8100/tcp",
                "192.168.0.0/16/udp",
            ]
        );
        let servers: Vec<String> =
            p.dns.servers.clone().expect("servers").iter().map(|s| s.to_string()).collect();
        assert_eq!(servers, ["127.0.0.53:53", "[::1]:5353"]);
        assert_eq!((p.dns.min_ttl, p.dns.grace), (Duration::from_secs(1), Duration::ZERO));
        assert_eq!(p.dns.max_ttl, DnsSettings::default().max_ttl);
        assert_eq!(p.dns.max_ips_per_name, 50);
        assert!(p.allow_icmp && !p.allow_raw_sockets);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = err("mode: enforce\nallow:\n  - domain: x.com\n    prots: [443]\n");
        assert!(e.starts_with("p.yaml:4:5: unknown field `prots`, expected one of"), "{e}");
        assert!(e.contains("\n4 |     prots: [443]\n  |     ^"), "{e}");
        let e = err("mode: enforce\nallow:\n  - api.github.com:443\n  - 10.0.0.1/8\n");
        assert!(
            e.starts_with("p.yaml:4:5: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"),
            "{e}"
        );
        let e = err("allow:\n  - domain: x.com\n    ports: [99999]\n");
        assert!(e.starts_with("p.yaml:3:13: port 99999 is out of range 1-65535"), "{e}");
        let e = err("mode: block\n");
        assert!(
            e.starts_with("p.yaml:1:7: unknown variant `block`, expected one of enforce, audit"),
            "{e}"
        );
        let e = err("allw:\n  - x.com\n");
        assert!(e.starts_with("p.yaml:1:1: unknown field `allw`"), "{e}");
        let e = err("allow:\n  - [unclosed\n");
        assert!(e.starts_with("p.yaml:2:5:"), "{e}");
        let e = err("dns:\n  grace: soon\n");
        assert!(e.starts_with("p.yaml:2:10: \"soon\" is not a duration"), "{e}");
        let e = err("dns:\n  servers: [dns.google]\n");
        assert!(e.contains("is not a DNS server address"), "{e}");
        let e = err("allow:\n  - domain: x.com\n    cidr: 10.0.0.0/8\n");
        assert!(e.contains("either `domain` or `cidr`, not both"), "{e}");
        let e = err("allow:\n  - ports: [80]\n");
        assert!(e.contains("needs `domain` or `cidr`"), "{e}");
        let e = err("allow:\n  - 443\n");
        assert!(e.starts_with("p.yaml:2:5: invalid type: integer `443`, expected a rule"), "{e}");
        assert!(err("# nothing here\n").contains("has no policy in it"));
    }

    #[test]
    fn a_policy_that_says_nothing_is_refused_not_deny_all() {
        for text in ["{}\n", "~\n", "null\n", "mode: audit\n", "dns:\n  mode: resolver\n"] {
            let e = err(text);
            assert!(e.starts_with("p.yaml:1:1: the policy has no `allow:` list"), "{text:?}: {e}");
            assert!(e.contains("write `allow: []` to deny everything"), "{e}");
        }
        assert!(ok("allow: []\n").allow.is_empty(), "deny-all, said explicitly");
    }

    #[test]
    fn listen_sockets_and_rebinding() {
        let p = ok("allow:
  - domain: db.internal.test
    ports: [5432]
    protocol: tcp
    allow_private: true
  - 10.0.0.5:2905/sctp
listen: [8080, \"0.0.0.0:9000-9001\"]
dns:
  rebinding: refuse
  allow_private: false
sockets:
  routing_options: true
  abstract_unix: true
  families: [vsock, AF_PACKET]
");
        assert!(p.allow[0].allow_private && !p.allow[1].allow_private);
        assert!(p.private_allowed_for("db.internal.test"));
        assert!(!p.private_allowed_for("other.test"));
        assert_eq!(p.listen.len(), 2);
        assert!(p.allow_routing_options && p.allow_abstract_unix);
        assert_eq!(p.families.iter().copied().collect::<Vec<_>>(), [17, 40]);
        assert_eq!(p.family_mask(), (1 << 17) | (1 << 40));
        use netcontrol_common::abi::{SANDBOX_F_ALLOW_ROUTING, SANDBOX_F_ALLOW_SCTP};
        assert_ne!(p.sandbox_flags() & SANDBOX_F_ALLOW_SCTP, 0);
        assert_ne!(p.sandbox_flags() & SANDBOX_F_ALLOW_ROUTING, 0);
        let text = render(&p, None);
        assert_eq!(ok(&text), p, "{text}");
        let e = err("sockets:\n  families: [inet]\n");
        assert!(e.contains("always allowed"), "{e}");
        let e = err("sockets:\n  families: [bogus]\n");
        assert!(e.contains("not a socket family") && e.contains("vsock"), "{e}");
        let e = err("allow:\n  - cidr: 10.0.0.0/8\n    allow_private: true\n");
        assert!(e.contains("for domain rules"), "{e}");
        let e = err("listen: [\"53/udp\"]\n");
        assert!(e.contains("for TCP"), "{e}");
        let e = err("dns:\n  rebinding: maybe\n");
        assert!(e.contains("unknown variant `maybe`"), "{e}");
        assert_eq!(ok("allow: []\n").dns.rebinding, Rebinding::Refuse);
    }

    #[test]
    fn rendering_round_trips() {
        let p = ok(
            "allow:\n  - api.github.com:443\n  - \"**.example.test:80/tcp\"\n  - \"[::1]:53/udp\"\ndns:\n  mode: resolver\n  servers: [127.0.0.53]\n  grace: 90s\n  refuse_with: refused\n",
        );
        let text = render(&p, None);
        assert!(text.contains("\"**.example.test:80/tcp\"  # wildcard"), "{text}");
        assert_eq!(ok(&text), p, "{text}");
        // In proxy mode (the default) wildcards work: no warning.
        let proxy = ok("allow:\n  - \"**.example.test:80\"\n");
        let text = render(&proxy, None);
        assert!(text.contains("mode: proxy") && !text.contains("# wildcard"), "{text}");
        assert_eq!(ok(&text), proxy, "{text}");
        let empty = ok("allow: []\n");
        assert_eq!(ok(&render(&empty, None)), empty);
    }
}
