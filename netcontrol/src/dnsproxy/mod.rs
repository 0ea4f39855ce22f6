//! The DNS proxy of DNS-aware mode. The kernel sends every DNS query of the sandbox here (UDP
//! and TCP port 53, whatever server it was for). The proxy:
//!
//! - answers names the policy does not allow with NXDOMAIN (or REFUSED) and reports them;
//! - forwards the others to the upstream servers, as a query made anew from the question
//!   (nothing else the client wrote leaves: [`message::upstream_query`]);
//! - takes addresses DNS rebinding protection refuses out of the answer (and reports them);
//! - has the answer's addresses allowed **before** it releases the answer (waiting at most
//!   [`HOLD`]), so the connection that follows the lookup finds them;
//! - limits the sandbox's query rate, name length, queries in flight and TCP connections.
//!
//! [`message`] reads and writes DNS messages (hickory-proto), [`upstream`] forwards, [`asker`]
//! finds the process behind a refused query.

pub mod asker;
pub mod message;
pub mod upstream;

use crate::{backoff::Backoff, tasks::supervise};
use std::{
    net::{IpAddr, SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use netcontrol_common::abi::{AF_INET, DNS_PROXY_V4, DNS_PROXY_V6, DnsOrigin, EVENT_F_V4_MAPPED};
use tokio::{
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch},
    task::JoinHandle,
};

use hickory_resolver::proto::op::{OpCode, ResponseCode};

use self::{
    asker::Asker,
    message::{Malformed, Question, Refusal},
    upstream::Transport,
};
use crate::{
    bpf::maps::Origins,
    error::{Error, Result},
    events::{EventRecord, Injector, Labels},
    netns::Netns,
    policy::Pattern,
};

/// The longest a DNS answer waits for its addresses to be allowed.
pub const HOLD: Duration = Duration::from_millis(100);

/// How long answers with addresses were held until the maps allowed them, in seconds (all
/// sandboxes: one series, whatever their number). Buckets up to `HOLD`.
pub static HOLD_TIMES: std::sync::LazyLock<prometheus_client::metrics::histogram::Histogram> =
    std::sync::LazyLock::new(|| {
        prometheus_client::metrics::histogram::Histogram::new([
            0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
        ])
    });

/// TCP connections one sandbox may hold open to its proxy; more are closed at once (one
/// sandbox must not take the fds every other sandbox's DNS needs).
pub const MAX_TCP_SESSIONS: usize = 32;
/// TCP connections to all sandboxes' proxies at once: beyond it, new ones are closed.
pub const MAX_TCP_SESSIONS_ALL: usize = 2048;
static ALL_TCP_SESSIONS: Semaphore = Semaphore::const_new(MAX_TCP_SESSIONS_ALL);
/// A TCP connection that sends nothing for this long is closed, and any after
/// `TCP_LIFETIME` (a client that keeps one busy forever holds its share no longer).
const TCP_IDLE: Duration = Duration::from_secs(10);
const TCP_LIFETIME: Duration = Duration::from_secs(60);
/// The longest query taken over TCP: a query is one question (a name of at most 255 bytes)
/// and perhaps an EDNS record; nothing longer is read, so a client cannot make the proxy
/// hold buffers for messages it never completes.
const MAX_TCP_QUERY: usize = 4096;
/// Queries of one sandbox being answered at once; beyond it, SERVFAIL at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// How a sandbox's queries are handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub upstream: Vec<SocketAddr>,
    /// Per upstream server and query.
    pub timeout: Duration,
    pub refuse_with: Refusal,
    /// Queries per second (a burst of twice as many is allowed).
    pub max_queries_per_second: u32,
    pub max_name_length: usize,
}

/// The names the proxy answers for, and the addresses it may release.
#[derive(Clone, Debug)]
pub struct Rules {
    pub patterns: Vec<Pattern>,
    /// Audit mode: names that are not allowed are answered anyway, and reported.
    pub audit: bool,
    pub rebinding: crate::rebinding::Rules,
}

impl Rules {
    pub fn allows(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }
}

/// Addresses from an answer, to be allowed before the answer is released (`done`).
#[derive(Debug)]
pub struct Learned {
    pub name: String,
    pub ips: Vec<(IpAddr, Duration)>,
    pub done: oneshot::Sender<()>,
}

/// What the proxy has done, for status and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub allowed: AtomicU64,
    pub blocked: AtomicU64,
    pub would_block: AtomicU64,
    pub rate_limited: AtomicU64,
    pub name_too_long: AtomicU64,
    pub malformed: AtomicU64,
    pub upstream_failures: AtomicU64,
    /// Answers released before their addresses were allowed (the hold ran out).
    pub hold_timeouts: AtomicU64,
    /// Addresses taken out of answers by DNS rebinding protection.
    pub rebinding_refused: AtomicU64,
    /// Queries and TCP connections refused for the proxy's own limits (in flight, sessions).
    pub overloaded: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter by the name metrics and status give it.
    pub fn by_verdict(&self) -> [(&'static str, u64); 10] {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("allowed", l(&self.allowed)),
            ("blocked", l(&self.blocked)),
            ("would_block", l(&self.would_block)),
            ("rate_limited", l(&self.rate_limited)),
            ("name_too_long", l(&self.name_too_long)),
            ("malformed", l(&self.malformed)),
            ("upstream_failed", l(&self.upstream_failures)),
            ("hold_timeout", l(&self.hold_timeouts)),
            ("rebinding_refused", l(&self.rebinding_refused)),
            ("overloaded", l(&self.overloaded)),
        ]
    }

    /// Queries refused so far.
    pub fn refused(&self) -> u64 {
        [&self.blocked, &self.rate_limited, &self.name_too_long]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

pub struct Proxy {
    pub port4: u16,
    /// 0 when the namespace has no IPv6 loopback.
    pub port6: u16,
    settings: watch::Sender<Arc<(Config, Rules)>>,
    pub stats: Arc<Stats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the proxy is connected to.
pub struct Links {
    /// Where answers' addresses go to be allowed.
    pub learn: mpsc::Sender<Learned>,
    pub events: Injector,
    pub labels: Labels,
    pub sandbox_id: u64,
    /// The kernel's record of redirected queries, to name the asking process.
    pub origins: Arc<Origins>,
}

/// What a query is handled with, shared by every task of one proxy.
struct Ctx {
    /// Reloadable: a policy reload replaces it.
    settings: watch::Receiver<Arc<(Config, Rules)>>,
    learn: mpsc::Sender<Learned>,
    events: Injector,
    labels: Labels,
    sandbox_id: u64,
    asker: Asker,
    stats: Arc<Stats>,
    bucket: Mutex<Bucket>,
    /// Rate-limited queries are counted, not looked up one by one: one event per second.
    limited: Mutex<LimitedReport>,
    /// A second of rate-limited queries started (its summary is due at its end).
    limited_started: tokio::sync::Notify,
    in_flight: Arc<Semaphore>,
    tcp_sessions: Arc<Semaphore>,
}

/// Rate-limited queries of the current second: the first is reported with its process, the
/// rest in one summary record when the second is over.
#[derive(Default)]
struct LimitedReport {
    since: Option<Instant>,
    more: u64,
    first: Option<EventRecord>,
}

impl Proxy {
    /// Open the proxy's sockets on the loopback of the sandbox's network namespace (`ns`, or
    /// netcontrol's own) and serve them.
    pub fn start(ns: Option<&Netns>, config: Config, rules: Rules, links: Links) -> Result<Self> {
        let Links { learn, events, labels, sandbox_id, origins } = links;
        let sockets = crate::netns::within(ns, bind_all)
            .map_err(|e| Error::io("opening the DNS proxy's sockets", e))?;
        let qps = config.max_queries_per_second.max(1);
        let (settings_tx, settings_rx) = watch::channel(Arc::new((config, rules)));
        let stats = Arc::new(Stats::default());
        let ctx = Arc::new(Ctx {
            settings: settings_rx,
            learn,
            events,
            labels,
            sandbox_id,
            asker: Asker::new(ns, origins).map_err(|e| Error::io("opening sock_diag", e))?,
            stats: stats.clone(),
            bucket: Mutex::new(Bucket::new(qps)),
            limited: Mutex::new(LimitedReport::default()),
            limited_started: tokio::sync::Notify::new(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            tcp_sessions: Arc::new(Semaphore::new(MAX_TCP_SESSIONS)),
        });
        let c = ctx.clone();
        let mut tasks = vec![supervise("dns_proxy_report", move || report_limited(c.clone()))];
        let (port4, port6) = (sockets.v4.port, sockets.v6.as_ref().map_or(0, |s| s.port));
        for pair in std::iter::once(sockets.v4).chain(sockets.v6) {
            let udp =
                UdpSocket::from_std(pair.udp).map_err(|e| Error::io("serving DNS over UDP", e))?;
            let tcp = TcpListener::from_std(pair.tcp)
                .map_err(|e| Error::io("serving DNS over TCP", e))?;
            let (udp, c) = (Arc::new(udp), ctx.clone());
            tasks.push(supervise("dns_proxy_udp", move || serve_udp(udp.clone(), c.clone())));
            let (tcp, c) = (Arc::new(tcp), ctx.clone());
            tasks.push(supervise("dns_proxy_tcp", move || serve_tcp(tcp.clone(), c.clone())));
        }
        Ok(Self { port4, port6, settings: settings_tx, stats, tasks })
    }

    /// New servers, limits and names from now on (a policy reload).
    pub fn set(&self, config: Config, rules: Rules) {
        self.settings.send_replace(Arc::new((config, rules)));
    }
}

struct Pair {
    port: u16,
    udp: StdUdpSocket,
    tcp: StdTcpListener,
}

struct Sockets {
    v4: Pair,
    v6: Option<Pair>,
}

/// UDP and TCP on one port of 127.0.0.1, and of ::1 if the namespace has it.
fn bind_all() -> std::io::Result<Sockets> {
    let v4 = bind_pair(IpAddr::from(DNS_PROXY_V4))?;
    let v6 = bind_pair(IpAddr::from(DNS_PROXY_V6)).ok();
    Ok(Sockets { v4, v6 })
}

fn bind_pair(ip: IpAddr) -> std::io::Result<Pair> {
    // The UDP port picked by the kernel may be taken for TCP: try a few.
    let mut last = None;
    for _ in 0..16 {
        let udp = StdUdpSocket::bind(SocketAddr::new(ip, 0))?;
        let port = udp.local_addr()?.port();
        match StdTcpListener::bind(SocketAddr::new(ip, port)) {
            Ok(tcp) => {
                udp.set_nonblocking(true)?;
                tcp.set_nonblocking(true)?;
                return Ok(Pair { port, udp, tcp });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port for the DNS proxy")))
}

async fn serve_udp(sock: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let local = sock.local_addr().ok();
    let mut backoff = Backoff::new("DNS proxy: receiving a query");
    loop {
        let received = upstream::receive(&sock, |b| sock.try_recv_from(b)).await;
        let Some((query, client)) = backoff.accepted(received).await else {
            continue;
        };
        let Ok(permit) = ctx.in_flight.clone().try_acquire_owned() else {
            Stats::bump(&ctx.stats.overloaded);
            if let Some(answer) = message::reply(&query, ResponseCode::ServFail) {
                let _ = sock.try_send_to(&answer, client);
            }
            continue;
        };
        let (sock, ctx) = (sock.clone(), ctx.clone());
        tokio::spawn(async move {
            let _permit: OwnedSemaphorePermit = permit;
            let proxy = local.unwrap_or_else(|| SocketAddr::new(IpAddr::from(DNS_PROXY_V4), 0));
            if let Some(answer) = handle(&ctx, &query, client, proxy, Transport::Udp).await {
                let _ = sock.send_to(&answer, client).await;
            }
        });
    }
}

async fn serve_tcp(listener: Arc<TcpListener>, ctx: Arc<Ctx>) {
    let mut backoff = Backoff::new("DNS proxy: accepting a TCP connection");
    loop {
        let Some((stream, client)) = backoff.accepted(listener.accept().await).await else {
            continue;
        };
        // Beyond the sandbox's share the connection is closed at once (the client retries
        // over UDP or later); nothing is held for it.
        let (Ok(permit), Ok(all)) =
            (ctx.tcp_sessions.clone().try_acquire_owned(), ALL_TCP_SESSIONS.try_acquire())
        else {
            Stats::bump(&ctx.stats.overloaded);
            drop(stream);
            continue;
        };
        let session = tcp_session(stream, client, ctx.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TCP_LIFETIME, session).await;
            drop((permit, all));
        });
    }
}

/// Queries on one TCP connection, one after the other, until it closes or idles.
async fn tcp_session(mut stream: TcpStream, client: SocketAddr, ctx: Arc<Ctx>) {
    let proxy =
        stream.local_addr().unwrap_or_else(|_| SocketAddr::new(IpAddr::from(DNS_PROXY_V4), 0));
    loop {
        let query = upstream::read_message(&mut stream, MAX_TCP_QUERY);
        let query = match tokio::time::timeout(TCP_IDLE, query).await {
            Ok(Ok(q)) => q,
            _ => return,
        };
        let Some(answer) = handle(&ctx, &query, client, proxy, Transport::Tcp).await else {
            return;
        };
        if upstream::write_message(&mut stream, &answer).await.is_err() {
            return;
        }
    }
}

/// Why a query was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    NotAllowed,
    RateLimited,
    NameTooLong,
}

impl Refused {
    fn reason(self) -> &'static str {
        match self {
            Self::NotAllowed => "name_not_allowed",
            Self::RateLimited => "rate_limited",
            Self::NameTooLong => "name_too_long",
        }
    }
}

/// One query: the answer to send back, if any.
async fn handle(
    ctx: &Arc<Ctx>,
    query: &[u8],
    client: SocketAddr,
    proxy: SocketAddr,
    transport: Transport,
) -> Option<Vec<u8>> {
    let (q, client_msg) = match message::question(query) {
        Ok(q) => q,
        Err(Malformed::Unreadable) => {
            Stats::bump(&ctx.stats.malformed);
            return None;
        }
        Err(Malformed::NotOneQuestion { id, op_code }) => {
            Stats::bump(&ctx.stats.malformed);
            return message::format_error(id, op_code);
        }
    };
    let settings = ctx.settings.borrow().clone();
    let (config, rules) = (&settings.0, &settings.1);
    let refused = if !ctx
        .bucket
        .lock()
        .is_ok_and(|mut b| b.take(Instant::now(), config.max_queries_per_second))
    {
        Some(Refused::RateLimited)
    } else if q.name.len() > config.max_name_length {
        Some(Refused::NameTooLong)
    } else if !rules.allows(&q.name) {
        Some(Refused::NotAllowed)
    } else {
        None
    };
    if let Some(why) = refused {
        Stats::bump(match why {
            Refused::RateLimited => &ctx.stats.rate_limited,
            Refused::NameTooLong => &ctx.stats.name_too_long,
            Refused::NotAllowed if rules.audit => &ctx.stats.would_block,
            Refused::NotAllowed => &ctx.stats.blocked,
        });
        // Rate limits and name length hold in audit mode too: they protect netcontrol.
        let audit_only = rules.audit && why == Refused::NotAllowed;
        if why == Refused::RateLimited {
            // A flood of queries must not cost a sock_diag lookup and an event each.
            report_limited_one(ctx, &q, client, proxy, transport).await;
        } else {
            report(ctx, &q, why, audit_only, client, proxy, transport).await;
        }
        if !audit_only {
            return message::refusal(query, config.refuse_with);
        }
    }
    let servfail = || message::reply(query, ResponseCode::ServFail);
    let Some((upstream_id, forwarded)) = message::upstream_query(&client_msg, &q) else {
        Stats::bump(&ctx.stats.malformed);
        return message::format_error(q.id, OpCode::Query);
    };
    let answer =
        match upstream::forward(&config.upstream, &forwarded, transport, config.timeout).await {
            Ok(a) => a,
            Err(e) => {
                Stats::bump(&ctx.stats.upstream_failures);
                tracing::warn!("DNS proxy: {} {}: upstream failed: {e}", q.qtype, q.name);
                return servfail();
            }
        };
    let refuse = |ip| rules.rebinding.refused(&q.name, ip).is_some();
    let Some(released) = message::release(&client_msg, &q, upstream_id, &answer, refuse) else {
        Stats::bump(&ctx.stats.upstream_failures);
        tracing::warn!("DNS proxy: {} {}: the upstream answer does not answer it", q.qtype, q.name);
        return servfail();
    };
    Stats::bump(&ctx.stats.allowed);
    if !released.refused.is_empty() {
        ctx.stats.rebinding_refused.fetch_add(released.refused.len() as u64, Ordering::Relaxed);
        report_rebinding(ctx, &q, &released.refused, rules, client, proxy, transport).await;
    }
    if !released.addresses.is_empty() {
        let held = Instant::now();
        let (done, allowed) = oneshot::channel();
        let learned = Learned { name: q.name.clone(), ips: released.addresses, done };
        if ctx.learn.send(learned).await.is_ok()
            && tokio::time::timeout(HOLD, allowed).await.is_err()
        {
            Stats::bump(&ctx.stats.hold_timeouts);
            tracing::warn!(
                "DNS proxy: {}: answer released before its addresses were allowed",
                q.name
            );
        }
        HOLD_TIMES.observe(held.elapsed().as_secs_f64());
    }
    Some(released.bytes)
}

/// Which process sent the query: a sock_diag lookup, a blocking syscall, so on the blocking
/// pool (not an async thread). Done before the answer goes out: once the client has its
/// answer it may close the socket, and there is nothing left to look up.
async fn origin_of(
    ctx: &Arc<Ctx>,
    t: Transport,
    client: SocketAddr,
    proxy: SocketAddr,
) -> Option<DnsOrigin> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || ctx.asker.lookup(t, client, proxy)).await.ok().flatten()
}

/// A `dns` event for an answer whose addresses rebinding protection took out.
async fn report_rebinding(
    ctx: &Arc<Ctx>,
    q: &Question,
    refused: &[IpAddr],
    rules: &Rules,
    client: SocketAddr,
    proxy: SocketAddr,
    t: Transport,
) {
    let origin = origin_of(ctx, t, client, proxy).await;
    let why: Vec<&str> = refused
        .iter()
        .filter_map(|ip| rules.rebinding.refused(&q.name, *ip).map(crate::rebinding::Refusal::name))
        .collect();
    tracing::warn!(
        "DNS proxy: {}: answered {} ({}): not learned and taken out of the answer (dns.rebinding: refuse)",
        q.name,
        refused.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", "),
        why.join(", ")
    );
    let mut e =
        dns_event(q, "rebinding_refused", false, t, origin.as_ref(), ctx.sandbox_id, &ctx.labels);
    e.refused_addresses = Some(refused.to_vec());
    ctx.events.send(e);
}

/// A rate-limited query: the first of each second is reported with its process (one
/// sock_diag lookup), the rest only counted.
async fn report_limited_one(
    ctx: &Arc<Ctx>,
    q: &Question,
    client: SocketAddr,
    proxy: SocketAddr,
    t: Transport,
) {
    let now = Instant::now();
    let first_of_second = {
        let mut r = ctx.limited.lock().unwrap_or_else(|e| e.into_inner());
        match r.since {
            Some(since) if now.duration_since(since) < Duration::from_secs(1) => {
                r.more += 1;
                false
            }
            _ => {
                flush_limited(ctx, &mut r);
                r.since = Some(now);
                ctx.limited_started.notify_one();
                true
            }
        }
    };
    if first_of_second {
        let origin = origin_of(ctx, t, client, proxy).await;
        let e = dns_event(
            q,
            Refused::RateLimited.reason(),
            false,
            t,
            origin.as_ref(),
            ctx.sandbox_id,
            &ctx.labels,
        );
        ctx.events.send(e.clone());
        ctx.limited.lock().unwrap_or_else(|e| e.into_inner()).first = Some(e);
    }
}

/// The summary of a second's rate-limited queries beyond the first, if there were any.
fn flush_limited(ctx: &Ctx, r: &mut LimitedReport) {
    if r.more > 0
        && let Some(first) = &r.first
    {
        ctx.events.send(EventRecord {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            count: r.more,
            summary: true,
            ..first.clone()
        });
    }
    *r = LimitedReport::default();
}

/// The summary of each second of rate-limited queries, once it is over. Asleep until one
/// starts: thousands of quiet proxies wake for nothing.
async fn report_limited(ctx: Arc<Ctx>) {
    loop {
        ctx.limited_started.notified().await;
        loop {
            let since = ctx.limited.lock().unwrap_or_else(|e| e.into_inner()).since;
            let Some(since) = since else { break };
            tokio::time::sleep_until((since + Duration::from_secs(1)).into()).await;
            let mut r = ctx.limited.lock().unwrap_or_else(|e| e.into_inner());
            // A query may have started a new second meanwhile: then wait for its end.
            if r.since.is_some_and(|s| s.elapsed() >= Duration::from_secs(1)) {
                flush_limited(&ctx, &mut r);
            }
        }
    }
}

/// A `dns` event for a refused (or, in audit mode, would-be refused) query, naming the process.
async fn report(
    ctx: &Arc<Ctx>,
    q: &Question,
    why: Refused,
    audit: bool,
    client: SocketAddr,
    proxy: SocketAddr,
    t: Transport,
) {
    let origin = origin_of(ctx, t, client, proxy).await;
    ctx.events.send(dns_event(
        q,
        why.reason(),
        audit,
        t,
        origin.as_ref(),
        ctx.sandbox_id,
        &ctx.labels,
    ));
}

fn dns_event(
    q: &Question,
    reason: &'static str,
    audit: bool,
    t: Transport,
    o: Option<&DnsOrigin>,
    sandbox_id: u64,
    labels: &Labels,
) -> EventRecord {
    let server = o.map(|o| {
        if o.family == AF_INET || o.flags & EVENT_F_V4_MAPPED != 0 {
            IpAddr::from([o.addr[0], o.addr[1], o.addr[2], o.addr[3]])
        } else {
            IpAddr::from(o.addr)
        }
    });
    let comm = o.map(|o| {
        let end = o.comm.iter().position(|&b| b == 0).unwrap_or(o.comm.len());
        String::from_utf8_lossy(&o.comm[..end]).into_owned()
    });
    EventRecord {
        time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
        event: "dns",
        verdict: if audit { "would_block" } else { "blocked" },
        reason,
        hook: "dns_proxy",
        family: match server {
            Some(IpAddr::V6(_)) => "ipv6",
            _ => "ipv4",
        },
        protocol: if t == Transport::Tcp { "tcp" } else { "udp" },
        dst_ip: server,
        dst_port: o.map(|o| o.port),
        v4_mapped: o.is_some_and(|o| o.flags & EVENT_F_V4_MAPPED != 0),
        socket_type: None,
        pid: o.map_or(0, |o| (o.pid_tgid >> 32) as u32),
        tid: o.map_or(0, |o| o.pid_tgid as u32),
        uid: o.map_or(0, |o| o.uid_gid as u32),
        gid: o.map_or(0, |o| (o.uid_gid >> 32) as u32),
        comm: comm.unwrap_or_default(),
        cgroup_id: o.map_or(0, |o| o.cgroup_id),
        sandbox_id,
        sandbox: labels.sandbox(sandbox_id),
        domain: Some(q.name.clone()),
        dns_type: Some(q.qtype.to_string()),
        count: 1,
        ..EventRecord::default()
    }
    .identified(labels)
}

/// A token bucket: `rate` per second, bursts of twice that.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Self { tokens: f64::from(rate) * 2.0, last: Instant::now() }
    }

    /// `rate` is passed each time: a reload may change it.
    fn take(&mut self, now: Instant, rate: u32) -> bool {
        let rate = f64::from(rate.max(1));
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10);
        assert_eq!((0..30).filter(|_| b.take(t0, 10)).count(), 20, "a burst of twice the rate");
        assert!(!b.take(t0, 10));
        assert!(b.take(t0 + Duration::from_millis(100), 10), "one token per 100 ms");
        assert!(!b.take(t0 + Duration::from_millis(100), 10));
    }

    #[test]
    fn rules_match_exact_and_wildcard_names() {
        let r = Rules {
            patterns: vec![
                Pattern::parse("api.github.com").expect("p"),
                Pattern::parse("**.example.test").expect("p"),
            ],
            audit: false,
            rebinding: crate::rebinding::Rules::new(
                &crate::policy::Policy::default(),
                crate::rebinding::HostAddresses::default(),
            ),
        };
        assert!(r.allows("api.github.com"));
        assert!(r.allows("a.b.example.test"));
        assert!(!r.allows("example.test"));
        assert!(!r.allows("exfil-data.attacker.test"));
    }
}
