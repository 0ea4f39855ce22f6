//! Asking DNS servers for a name's addresses (hickory-resolver), with TTLs per address.

use std::{net::SocketAddr, time::Duration};

use hickory_resolver::{
    ResolveError, TokioResolver,
    config::{NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
    proto::{
        ProtoErrorKind,
        op::ResponseCode,
        rr::{RData, RecordType},
        xfer::Protocol,
    },
};

use super::tracker::Answer;

pub struct Lookup {
    resolver: TokioResolver,
}

impl Lookup {
    /// A resolver that asks `servers` (UDP, then TCP for truncated answers) and caches nothing:
    /// every answer must carry its real, current TTLs.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Self {
        let group: NameServerConfigGroup = servers
            .iter()
            .flat_map(|s| {
                [NameServerConfig::new(*s, Protocol::Udp), NameServerConfig::new(*s, Protocol::Tcp)]
            })
            .collect::<Vec<_>>()
            .into();
        let config = ResolverConfig::from_parts(None, vec![], group);
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 2;
        opts.cache_size = 0;
        // DNS, as the policy says: /etc/hosts is not consulted.
        opts.use_hosts_file = ResolveHosts::Never;
        opts.preserve_intermediates = true;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts)
                .build();
        Self { resolver }
    }

    /// A and AAAA for `name` (normalized, without the trailing dot).
    pub async fn resolve(&self, name: &str) -> Result<Answer, String> {
        let fqdn = format!("{name}.");
        let (a, aaaa) = tokio::join!(
            self.resolver.lookup(fqdn.as_str(), RecordType::A),
            self.resolver.lookup(fqdn.as_str(), RecordType::AAAA)
        );
        let mut addresses = Vec::new();
        let mut negative = None;
        let mut nxdomain = false;
        let mut failure = None;
        for result in [a, aaaa] {
            match result {
                Ok(lookup) => {
                    // A CNAME chain's shortest TTL bounds its addresses' TTLs.
                    let chain = lookup
                        .records()
                        .iter()
                        .filter(|r| r.record_type() == RecordType::CNAME)
                        .map(|r| r.ttl())
                        .min()
                        .unwrap_or(u32::MAX);
                    for r in lookup.records() {
                        let ip = match r.data() {
                            RData::A(a) => a.0.into(),
                            RData::AAAA(a) => a.0.into(),
                            _ => continue,
                        };
                        addresses.push((ip, Duration::from_secs(u64::from(r.ttl().min(chain)))));
                    }
                }
                Err(e) => match no_records(&e) {
                    Some((code, ttl)) => {
                        nxdomain |= code == ResponseCode::NXDomain;
                        negative = negative.or(ttl);
                    }
                    None => failure = Some(e.to_string()),
                },
            }
        }
        match (addresses.is_empty(), failure) {
            (false, _) => Ok(Answer::Addresses(addresses)),
            (true, Some(e)) => Err(e),
            (true, None) if nxdomain => Ok(Answer::NoSuchName { negative_ttl: negative }),
            (true, None) => Ok(Answer::NoAddresses { negative_ttl: negative }),
        }
    }
}

/// "No records" answers (NXDOMAIN or NODATA) with their negative TTL, as opposed to failures.
fn no_records(e: &ResolveError) -> Option<(ResponseCode, Option<Duration>)> {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, negative_ttl, .. }) => {
            Some((*response_code, negative_ttl.map(|t| Duration::from_secs(u64::from(t)))))
        }
        _ => None,
    }
}

/// The nameservers of /etc/resolv.conf.
pub fn system_servers() -> Result<Vec<SocketAddr>, String> {
    let (config, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| format!("reading /etc/resolv.conf: {e}"))?;
    let mut servers: Vec<SocketAddr> =
        config.name_servers().iter().map(|n| n.socket_addr).collect();
    servers.dedup();
    if servers.is_empty() {
        return Err("/etc/resolv.conf names no nameserver; set dns.servers in the policy".into());
    }
    Ok(servers)
}
