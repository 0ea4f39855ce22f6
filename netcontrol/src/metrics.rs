//! Prometheus metrics, `/healthz` and `/readyz` for the daemon.
//!
//! The kernel's per-CPU counters are read at scrape time (nothing is copied in between), and
//! every label is bounded: sandbox names come from the configuration, hooks, families,
//! protocols, verdicts and reasons are small fixed sets. Per-attempt detail (process,
//! destination) goes to events, never into labels.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap};
use netcontrol_common::{
    abi::{
        self, COUNTER_ATTEMPTS, GLOBAL_EVENTS_LOST, GLOBAL_STATS_FULL, GLOBAL_SUPPRESSED, StatsKey,
        VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY, VERDICT_REDIRECT,
    },
    user::{family_name, hook_name, protocol_name, reason_name},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    dnsproxy,
    error::{Error, Result},
    events::Injector,
};

/// What the daemon publishes for scrapes and probes; it updates this after every change.
#[derive(Debug, Default)]
pub struct Shared {
    snapshot: RwLock<Snapshot>,
    ready: AtomicBool,
    /// Seconds since `started` at the daemon loop's last turn.
    heartbeat: AtomicU64,
    started: Option<Instant>,
}

#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub sandboxes: Vec<SandboxGauges>,
    /// Sandboxes configured but not enforcing (cgroup missing, attach failed).
    pub waiting: usize,
    /// Failed attach attempts, by sandbox name.
    pub attach_errors: BTreeMap<String, u64>,
    pub reload_failures: u64,
    /// Links found detached or unpinned behind the daemon's back, by sandbox name.
    pub tamper: BTreeMap<String, u64>,
    /// Sandboxes that do not enforce their policy as configured.
    pub not_enforcing: Vec<NotEnforcing>,
}

/// A sandbox that does not enforce its policy as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotEnforcing {
    pub sandbox: String,
    /// `attach_failed` (open: nothing of it attached), `deny_all_stand_in` (its policy failed
    /// to start), `dns_proxy_unplaced` (enforced; its DNS fails), `policy_missing` (it names
    /// a policy that does not exist: deny-all).
    pub reason: &'static str,
    pub detail: String,
}

impl NotEnforcing {
    /// Whether it keeps the daemon from being ready. A missing policy does not: deny-all is
    /// enforced, and whoever may label a pod must not be able to take the node's agent out
    /// of service; it is reported (log, event, metric) instead.
    pub fn blocks_ready(&self) -> bool {
        self.reason != "policy_missing"
    }
}

#[derive(Debug, Clone)]
pub struct SandboxGauges {
    pub name: String,
    /// The labels naming it in metrics (`sandbox`, and for containers and pods more).
    pub labels: Vec<(&'static str, String)>,
    pub cgroup_id: u64,
    pub entries_v4: usize,
    pub entries_v6: usize,
    pub dns: Option<Arc<dnsproxy::Stats>>,
    /// Its cgroup links, which a scrape checks are still attached.
    pub links: crate::bpf::attach::LinkCheck,
}

impl SandboxGauges {
    fn labels(&self) -> Labels {
        self.labels.clone()
    }
}

/// A loop that has not turned for this long is reported unhealthy.
const STALL_SECS: u64 = 30;

impl Shared {
    pub fn new() -> Self {
        Self { started: Some(Instant::now()), ..Self::default() }
    }

    pub fn publish(&self, snapshot: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The daemon loop is turning.
    pub fn beat(&self) {
        self.heartbeat.store(self.uptime_secs(), Ordering::Relaxed);
    }

    fn uptime_secs(&self) -> u64 {
        self.started.map_or(0, |s| s.elapsed().as_secs())
    }

    fn healthy(&self) -> bool {
        self.uptime_secs().saturating_sub(self.heartbeat.load(Ordering::Relaxed)) < STALL_SECS
    }
}

/// Reads the kernel's counters at scrape time. It has its own handles on the pinned maps, so
/// scrapes never wait for the daemon loop.
pub struct KernelCollector {
    shared: Arc<Shared>,
    stats: Mutex<PerCpuHashMap<MapData, StatsKey, u64>>,
    global: Mutex<PerCpuArray<MapData, u64>>,
    injector: Injector,
}

impl fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KernelCollector")
    }
}

impl KernelCollector {
    /// Open the STATS and GLOBAL maps pinned in `maps_dir`.
    pub fn open(maps_dir: &Path, shared: Arc<Shared>, injector: Injector) -> Result<Self> {
        let open = |name: &'static str| {
            let path = maps_dir.join(name);
            MapData::from_pin(&path).map_err(|source| Error::Map {
                op: "opening pinned",
                map: name,
                source,
            })
        };
        let stats = PerCpuHashMap::try_from(Map::PerCpuHashMap(open(abi::map::STATS)?))
            .map_err(|source| Error::Map { op: "opening pinned", map: abi::map::STATS, source })?;
        let global = PerCpuArray::try_from(Map::PerCpuArray(open(abi::map::GLOBAL)?))
            .map_err(|source| Error::Map { op: "opening pinned", map: abi::map::GLOBAL, source })?;
        Ok(Self { shared, stats: Mutex::new(stats), global: Mutex::new(global), injector })
    }

    fn read_stats(&self) -> Vec<(StatsKey, u64)> {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.iter().filter_map(|kv| kv.ok()).map(|(k, v)| (k, v.iter().sum())).collect()
    }

    fn read_global(&self, index: u32) -> u64 {
        let global = self.global.lock().unwrap_or_else(|e| e.into_inner());
        global.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: its samples by label set.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: BTreeMap<Labels, f64>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Self { name, help, kind, samples: BTreeMap::new() }
    }

    fn add(&mut self, labels: Labels, v: f64) {
        *self.samples.entry(labels).or_default() += v;
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        // A family without labels has one bare sample (`name 0`, not `name{} 0`).
        if let Some(v) = self.samples.get(&Vec::new()) {
            return sample(self.kind, metric, *v);
        }
        for (labels, v) in &self.samples {
            sample(self.kind, metric.encode_family(labels)?, *v)?;
        }
        Ok(())
    }
}

fn sample(kind: MetricType, encoder: MetricEncoder<'_>, v: f64) -> fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(v as u64).encode(encoder),
        _ => ConstGauge::new(v).encode(encoder),
    }
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let snap = self.shared.snapshot();
        let by_id: BTreeMap<u64, &SandboxGauges> =
            snap.sandboxes.iter().map(|s| (s.cgroup_id, s)).collect();
        // The labels naming a sandbox: its name, and a container's id.
        let sandbox = |id: u64| -> Labels {
            match (id, by_id.get(&id)) {
                (_, Some(s)) => s.labels(),
                (0, None) => vec![("sandbox", "none".to_owned())],
                (id, None) => vec![("sandbox", format!("cgroup-{id}"))],
            }
        };

        let mut blocked = Family::new(
            "netcontrol_egress_blocked",
            "Attempts denied (connect, sendmsg, socket creation), by sandbox and what was tried",
            MetricType::Counter,
        );
        let mut audited = Family::new(
            "netcontrol_egress_audited",
            "Attempts audit mode let through that enforce mode would deny",
            MetricType::Counter,
        );
        let mut allowed = Family::new(
            "netcontrol_egress_allowed",
            "Attempts the policy allowed",
            MetricType::Counter,
        );
        let mut redirected = Family::new(
            "netcontrol_dns_redirected",
            "DNS queries sent to the sandbox's DNS proxy (DNS-aware mode)",
            MetricType::Counter,
        );
        for (k, n) in self.read_stats() {
            let base = || -> Labels {
                let mut l = sandbox(k.sandbox_id);
                l.extend([
                    ("hook", hook_name(k.hook).to_owned()),
                    ("family", family_name(k.family).to_owned()),
                    ("protocol", protocol_name(k.protocol).to_owned()),
                ]);
                l
            };
            let with_reason = || {
                let mut l = base();
                l.push(("reason", reason_name(k.reason).to_owned()));
                l
            };
            match (k.counter, k.verdict) {
                (COUNTER_ATTEMPTS, VERDICT_DENY) => blocked.add(with_reason(), n as f64),
                (COUNTER_ATTEMPTS, VERDICT_AUDIT) => audited.add(with_reason(), n as f64),
                (COUNTER_ATTEMPTS, VERDICT_ALLOW) => allowed.add(base(), n as f64),
                (COUNTER_ATTEMPTS, VERDICT_REDIRECT) => {
                    redirected.add(sandbox(k.sandbox_id), n as f64)
                }
                _ => {}
            }
        }

        let mut dns = Family::new(
            "netcontrol_dns_queries",
            "DNS queries the DNS proxy handled, by verdict",
            MetricType::Counter,
        );
        let mut entries = Family::new(
            "netcontrol_allowlist_entries",
            "Entries of the sandbox's policy in the allow tries",
            MetricType::Gauge,
        );
        let with = |s: &SandboxGauges, k: &'static str, v: &str| {
            let mut l = s.labels();
            l.push((k, v.to_owned()));
            l
        };
        for s in &snap.sandboxes {
            if let Some(stats) = &s.dns {
                for (verdict, n) in stats.by_verdict() {
                    dns.add(with(s, "verdict", verdict), n as f64);
                }
            }
            entries.add(with(s, "family", "ipv4"), s.entries_v4 as f64);
            entries.add(with(s, "family", "ipv6"), s.entries_v6 as f64);
        }

        let mut lost = Family::new(
            "netcontrol_events_lost",
            "Events dropped because a queue was full (the attempts were still decided and counted)",
            MetricType::Counter,
        );
        lost.add(
            vec![("source", "kernel_ring_buffer".into())],
            self.read_global(GLOBAL_EVENTS_LOST) as f64,
        );
        lost.add(vec![("source", "userspace_queue".into())], self.injector.lost() as f64);
        lost.add(vec![("source", "events_output".into())], self.injector.write_failed() as f64);

        let mut stats_full = Family::new(
            "netcontrol_stats_map_full",
            "Attempts that could not be counted per sandbox because the STATS map was full",
            MetricType::Counter,
        );
        stats_full.add(vec![], self.read_global(GLOBAL_STATS_FULL) as f64);

        let mut attach_errors = Family::new(
            "netcontrol_attach_errors",
            "Failed attempts to attach a sandbox (retried)",
            MetricType::Counter,
        );
        for (name, n) in &snap.attach_errors {
            attach_errors.add(vec![("sandbox", name.clone())], *n as f64);
        }
        let mut reload_failures = Family::new(
            "netcontrol_config_reload_failures",
            "Configuration reloads rejected (the previous configuration stayed)",
            MetricType::Counter,
        );
        reload_failures.add(vec![], snap.reload_failures as f64);

        let mut tamper = Family::new(
            "netcontrol_tamper_detected",
            "Links found detached or unpinned by someone else (each is attached or pinned again)",
            MetricType::Counter,
        );
        for (name, n) in &snap.tamper {
            tamper.add(vec![("sandbox", name.clone())], *n as f64);
        }
        // Checked now, not at the daemon's last look: a detached link is an open sandbox.
        let mut detached = Family::new(
            "netcontrol_links_detached",
            "Links of the sandbox that are not attached at this scrape (0 when all is well)",
            MetricType::Gauge,
        );
        for s in &snap.sandboxes {
            detached.add(s.labels(), s.links.detached() as f64);
        }
        let mut summarized = Family::new(
            "netcontrol_events_summarized",
            "Denials reported in summary records instead of events of their own (rate limit or a full ring buffer)",
            MetricType::Counter,
        );
        summarized.add(vec![], self.read_global(GLOBAL_SUPPRESSED) as f64);

        let mut not_enforcing = Family::new(
            "netcontrol_sandbox_not_enforcing",
            "Sandboxes that do not enforce their policy as configured, by reason (attach_failed, deny_all_stand_in, dns_proxy_unplaced, policy_missing); /readyz fails for all but policy_missing",
            MetricType::Gauge,
        );
        for n in &snap.not_enforcing {
            not_enforcing
                .add(vec![("sandbox", n.sandbox.clone()), ("reason", n.reason.into())], 1.0);
        }
        let mut restarts = Family::new(
            "netcontrol_task_restarts",
            "Long-running tasks (DNS proxy servers, the control socket) that ended or panicked and were started again",
            MetricType::Counter,
        );
        for (task, n) in crate::tasks::restarts() {
            restarts.add(vec![("task", task.to_owned())], n as f64);
        }
        let mut sandboxes = Family::new(
            "netcontrol_sandboxes",
            "Sandboxes by state: enforcing, or waiting (cgroup missing or attach failing)",
            MetricType::Gauge,
        );
        sandboxes.add(vec![("state", "enforcing".into())], snap.sandboxes.len() as f64);
        sandboxes.add(vec![("state", "waiting".into())], snap.waiting as f64);

        let stats_entries = self.stats.lock().map(|s| s.keys().count()).unwrap_or(0);
        let usage = map_usage(&snap.sandboxes, stats_entries);
        let mut map_entries =
            Family::new("netcontrol_map_entries", "Entries in a BPF map", MetricType::Gauge);
        let mut map_capacity =
            Family::new("netcontrol_map_capacity", "Capacity of a BPF map", MetricType::Gauge);
        let mut map_pressure = Family::new(
            "netcontrol_map_pressure_ratio",
            "Entries over capacity of a BPF map (1 = full: new entries fail)",
            MetricType::Gauge,
        );
        for (map, n, cap) in usage {
            map_entries.add(vec![("map", map.to_owned())], n as f64);
            map_capacity.add(vec![("map", map.to_owned())], f64::from(cap));
            map_pressure.add(vec![("map", map.to_owned())], n as f64 / f64::from(cap));
        }

        let mut build = Family::new(
            "netcontrol_build_info",
            "The running netcontrol's version and pin layout",
            MetricType::Gauge,
        );
        build.add(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("pin_abi", abi::PIN_ABI_VERSION.to_string()),
            ],
            1.0,
        );

        for family in [
            &blocked,
            &audited,
            &allowed,
            &redirected,
            &dns,
            &lost,
            &stats_full,
            &attach_errors,
            &reload_failures,
            &tamper,
            &detached,
            &summarized,
            &entries,
            &sandboxes,
            &not_enforcing,
            &restarts,
            &map_entries,
            &map_capacity,
            &map_pressure,
            &build,
        ] {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// Entries and capacity of the maps that fill up: the allow tries and the sandbox table from
/// the daemon's own accounting (it is their only writer; walking a million-entry trie key by
/// key would take a syscall each), STATS as counted in the kernel.
pub fn map_usage(
    sandboxes: &[SandboxGauges],
    stats_entries: usize,
) -> [(&'static str, usize, u32); 4] {
    let v4 = sandboxes.iter().map(|s| s.entries_v4).sum();
    let v6 = sandboxes.iter().map(|s| s.entries_v6).sum();
    [
        (abi::map::ALLOW_V4, v4, abi::ALLOW_V4_MAX),
        (abi::map::ALLOW_V6, v6, abi::ALLOW_V6_MAX),
        (abi::map::SANDBOXES, sandboxes.len(), abi::SANDBOXES_MAX),
        (abi::map::STATS, stats_entries, abi::STATS_MAX),
    ]
}

struct Server {
    registry: Registry,
    shared: Arc<Shared>,
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    collector: KernelCollector,
) -> Result<()> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    registry.register(
        "netcontrol_dns_hold_seconds",
        "How long the DNS proxy held answers until their addresses were allowed (at most 0.1 s; then it releases them and counts a hold_timeout)",
        dnsproxy::HOLD_TIMES.clone(),
    );
    let state = Arc::new(Server { registry, shared });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("listening for metrics on {addr}"), e))?;
    let listener = Arc::new(listener);
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    crate::tasks::supervise("metrics_server", move || {
        accept_http(Arc::clone(&listener), app.clone(), Arc::clone(&open))
    });
    Ok(())
}

/// Connections served at once; more are closed as they come (the port may be reachable from
/// the node's network: stalled clients must not pile up).
const MAX_HTTP_CONNECTIONS: usize = 128;
/// A client has this long to send a request's headers, and a connection lives at most
/// `HTTP_CONNECTION_LIFETIME` (a scrape takes milliseconds; Prometheus reconnects).
const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

async fn accept_http(
    listener: Arc<tokio::net::TcpListener>,
    app: Router,
    open: Arc<tokio::sync::Semaphore>,
) {
    let mut backoff = crate::backoff::Backoff::new("metrics server: accepting");
    loop {
        let Some((stream, _)) = backoff.accepted(listener.accept().await).await else { continue };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HTTP_HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(HTTP_CONNECTION_LIFETIME, connection).await;
            drop(permit);
        });
    }
}

/// OpenMetrics for clients that ask for it (Prometheus does), the classic text format for
/// the rest (curl, promtool).
async fn metrics(State(s): State<Arc<Server>>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    // Collecting reads the kernel's maps and asks it about every sandbox's links: blocking
    // syscalls, off the async threads.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &s.registry).map(|()| body)
    })
    .await;
    let encoded = match encoded {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match encoded {
        Ok(body) if openmetrics => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        ),
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            classic_text(&body),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics: {e}\n"),
        ),
    }
}

/// OpenMetrics text as the classic Prometheus text format: a counter's family is named like
/// its samples (`x_total`), and there is no `# EOF` or `# UNIT`.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

async fn healthz(State(s): State<Arc<Server>>) -> impl IntoResponse {
    if s.shared.healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the daemon loop has stalled\n")
    }
}

async fn readyz(State(s): State<Arc<Server>>) -> impl IntoResponse {
    if !s.shared.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: re-adopting pins and attaching sandboxes\n".to_owned(),
        );
    }
    let snap = s.shared.snapshot();
    let open: Vec<String> = snap
        .not_enforcing
        .iter()
        .filter(|n| n.blocks_ready())
        .map(|n| format!("{}: {} ({})\n", n.sandbox, n.reason, n.detail))
        .collect();
    if open.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not enforcing as configured:\n{}", open.concat()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_families_like_their_samples() {
        let om = "# HELP a_b Blocked.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 1.0\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP a_b_total Blocked.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 1.0\n"
        );
    }
}
