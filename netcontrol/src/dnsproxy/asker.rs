//! Who sent a DNS query: the proxy sees only the client socket's address. sock_diag finds that
//! socket's cookie, and the kernel recorded the process that redirected it under that cookie
//! (DNS_ORIGINS). Used only for queries that are refused, which events must attribute.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, Weak},
};

use netcontrol_common::abi::DnsOrigin;
use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

use super::upstream::Transport;
use crate::{bpf::maps::Origins, netns::Netns};

pub struct Asker {
    /// A sock_diag socket in the sandbox's network namespace, shared by every sandbox in it.
    diag: Arc<Mutex<Socket>>,
    origins: Arc<Origins>,
}

/// "Do not check the cookie" in an exact lookup.
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// The sock_diag socket of each namespace (None: netcontrol's own) while any proxy there uses
/// it. A socket per sandbox would cost a file each: thousands of sandboxes in the host's
/// namespace share one. Lookups are short (one request, one reply) and made only for refused
/// queries, which each sandbox's query limit caps.
type Shared = std::collections::HashMap<Option<(u64, u64)>, Weak<Mutex<Socket>>>;
static SHARED: Mutex<Option<Shared>> = Mutex::new(None);

impl Asker {
    pub fn new(ns: Option<&Netns>, origins: Arc<Origins>) -> io::Result<Self> {
        let key = ns.map(Netns::id).transpose()?;
        let mut shared = SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let shared = shared.get_or_insert_default();
        if let Some(diag) = shared.get(&key).and_then(Weak::upgrade) {
            return Ok(Self { diag, origins });
        }
        let diag = crate::netns::within(ns, || {
            let mut s = Socket::new(NETLINK_SOCK_DIAG)?;
            s.bind_auto()?;
            s.connect(&NlAddr::new(0, 0))?;
            Ok(s)
        })?;
        let diag = Arc::new(Mutex::new(diag));
        shared.retain(|_, w| w.strong_count() > 0);
        shared.insert(key, Arc::downgrade(&diag));
        Ok(Self { diag, origins })
    }

    /// What the kernel recorded about the socket at `client` that sent to the proxy at `proxy`.
    pub fn lookup(
        &self,
        transport: Transport,
        client: SocketAddr,
        proxy: SocketAddr,
    ) -> Option<DnsOrigin> {
        let cookie = self.cookie(transport, client, proxy)?;
        self.origins.get(cookie)
    }

    fn cookie(&self, transport: Transport, client: SocketAddr, proxy: SocketAddr) -> Option<u64> {
        let diag = self.diag.lock().ok()?;
        let proto = if transport == Transport::Tcp { IPPROTO_TCP } else { IPPROTO_UDP };
        // TCP lookups take the socket's own address as source; UDP's historically swap them.
        // And a dual-stack client socket is AF_INET6 even when it talks IPv4 (v4-mapped). Try
        // every combination rather than depend on either.
        let forms = [(unmap(client), unmap(proxy)), (mapped(client), mapped(proxy))];
        forms
            .into_iter()
            .filter(|(c, p)| c.is_ipv4() == p.is_ipv4())
            .flat_map(|(c, p)| [(c, p), (p, c)])
            .find_map(|(src, dst)| match exact(&diag, proto, src, dst, client.port()) {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!("sock_diag {src} -> {dst}: {e}");
                    None
                }
            })
    }
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => {
            v6.to_ipv4_mapped().map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port()))
        }
        IpAddr::V4(_) => a,
    }
}

fn mapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    }
}

/// One exact sock_diag lookup; the cookie of the socket found, if its local port is
/// `local_port` (a lookup in the wrong direction finds the proxy's own socket).
fn exact(
    s: &Socket,
    proto: u8,
    src: SocketAddr,
    dst: SocketAddr,
    local_port: u16,
) -> io::Result<Option<u64>> {
    let family = if src.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut msg = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: proto,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: src.port(),
                destination_port: dst.port(),
                source_address: src.ip(),
                destination_address: dst.ip(),
                interface_id: 0,
                cookie: NO_COOKIE,
            },
        })
        .into(),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send(&buf, 0)?;
    let mut rx = vec![0u8; 8192];
    let n = s.recv(&mut &mut rx[..], 0)?;
    let reply =
        <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[..n]).map_err(io::Error::other)?;
    Ok(match reply.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r))
            if r.header.socket_id.source_port == local_port =>
        {
            let c = r.header.socket_id.cookie;
            let lo = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            let hi = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
            Some((u64::from(hi) << 32) | u64::from(lo))
        }
        other => {
            tracing::debug!("sock_diag {src} -> {dst}: {other:?}");
            None
        }
    })
}
