//! Many sandboxes on one node: `netcontrol daemon` with thousands of sandboxes (cgroups this
//! scenario creates), each with a DNS proxy: how long until all enforce, the agent's memory,
//! how long `status` and a scrape take, its CPU at rest, and a restart that re-adopts them
//! while a sandboxed loop keeps trying a denied destination.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netcontrol_tests::{
    Server, TestCgroup,
    daemon::{Daemon, METRICS_ADDR, http_get},
    dns::Dnsmasq,
    netcontrol_bin, open_fds, parse_probes, probe_bin,
};

use crate::{
    Goal, Opts, Section,
    measure::{cpu_seconds, memory_mib, summarize},
    netns::enter,
};

const SANDBOXES: usize = 4000;
const START_GOAL_S: f64 = 30.0;
const RSS_GOAL_MIB: f64 = 150.0;
const STATUS_GOAL_MS: f64 = 200.0;
const SCRAPE_GOAL_MS: f64 = 200.0;
const IDLE_CPU_GOAL: f64 = 2.0;
const READOPT_GOAL_S: f64 = 10.0;
/// Sandboxes asking DNS during the storm, each one query after the other.
const DNS_CLIENTS: usize = 8;
/// The DNS proxy's hold (dnsproxy::HOLD): an answer held this long went out before its
/// addresses were allowed.
const HOLD_MS: f64 = 100.0;

/// Wall time of `f`, in ms.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64() * 1000.0)
}

/// Start the daemon and wait until every sandbox enforces; seconds from spawn.
fn start_all(d: &mut Daemon, n: usize) -> f64 {
    let t = Instant::now();
    d.start();
    let enforcing = |d: &Daemon| {
        d.status()["sandboxes"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|s| s["state"] == "enforcing").count())
    };
    while enforcing(d) < n {
        assert!(t.elapsed() < Duration::from_secs(600), "not all enforcing after 10 min");
        std::thread::sleep(Duration::from_millis(200));
    }
    t.elapsed().as_secs_f64()
}

/// The configuration of `cgroups` as sandboxes; `extra` is one more network their policy
/// allows (what the storm's reload changes).
fn config_of(cgroups: &[TestCgroup], extra: &str) -> String {
    // Answers point at loopback (the test's own addresses): rebinding protection would take
    // them out, and with them the hold this measures.
    let mut config = format!(
        "policies:\n  web:\n    allow: [api.example.test:443, \"**.cdn.example.test:443\", 10.0.0.0/8{extra}]\n    dns: {{servers: [127.0.0.53], rebinding: allow, max_queries_per_second: 1000000}}\nsandboxes:\n",
    );
    for (i, c) in cgroups.iter().enumerate() {
        let _ = writeln!(config, "  - {{name: s{i}, cgroup: {}, policy: web}}", c.path.display());
    }
    config
}

/// A daemon with `n` sandboxes of their own cgroups (not started).
fn daemon_of(n: usize) -> (Daemon, Vec<TestCgroup>) {
    let cgroups: Vec<TestCgroup> = (0..n).map(|_| TestCgroup::new()).collect();
    let mut d = Daemon::new(&config_of(&cgroups, ""));
    d.ready_timeout = Duration::from_secs(600);
    (d, cgroups)
}

/// The hold-time histogram (cumulative counts by upper bound, in ms) and the hold timeouts
/// of all sandboxes, from a scrape.
fn holds(d: &Daemon) -> (Vec<(f64, f64)>, f64) {
    let (code, body) = d.get("/metrics");
    assert_eq!(code, 200, "a scrape");
    let mut buckets = Vec::new();
    let mut timeouts = 0.0;
    for line in body.lines() {
        let value = || line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        if let Some(rest) = line.strip_prefix("netcontrol_dns_hold_seconds_bucket{le=\"") {
            let le = rest.split('"').next().unwrap_or("+Inf");
            let ms =
                if le == "+Inf" { f64::INFINITY } else { le.parse::<f64>().unwrap_or(0.0) * 1e3 };
            buckets.push((ms, value()));
        } else if line.starts_with("netcontrol_dns_queries_total{")
            && line.contains("verdict=\"hold_timeout\"")
        {
            timeouts += value();
        }
    }
    (buckets, timeouts)
}

/// What the storm did to DNS: answers held, the bucket bound under which 99% of them were,
/// hold timeouts, and the clients' own p99 and worst query (µs, the worst batch's).
struct StormDns {
    held: f64,
    p99_ms: f64,
    timeouts: f64,
    client_p99_us: u64,
    client_max_us: u64,
    queries: u64,
    reload_s: f64,
    statuses: usize,
    scrapes: usize,
}

/// The entry count of every sandbox, from `status`.
fn entry_counts(d: &Daemon) -> Vec<u64> {
    d.status()["sandboxes"]
        .as_array()
        .map(|a| a.iter().map(|s| s["entries_v4"].as_u64().unwrap_or(0)).collect())
        .unwrap_or_default()
}

/// Sets the flag when dropped: the storm's threads end even if the main one panics.
struct Raise<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Raise<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// DNS from `DNS_CLIENTS` sandboxes (of `clients`) while the daemon reloads a changed policy
/// for every sandbox (those of `cgroups`), and `status` and scrapes come one after the other
/// from two more threads.
fn storm(d: &Daemon, cgroups: &[TestCgroup], clients: &[TestCgroup], smoke: bool) -> StormDns {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (before, timeouts_before) = holds(d);
    let entries_before = entry_counts(d);
    let done = AtomicBool::new(false);
    let (statuses, scrapes) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let batch = if smoke { 20 } else { 200 };
    let clients = &clients[..DNS_CLIENTS.min(clients.len())];
    // The daemon's handle stays on this thread; the storms need only its socket and address.
    let socket = d.socket.clone();
    let (reload_s, probes) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let out = Command::new(netcontrol_bin())
                    .args(["status", "--json", "--socket"])
                    .arg(&socket)
                    .output()
                    .expect("netcontrol status");
                assert!(out.status.success(), "status failed during the storm");
                statuses.fetch_add(1, Ordering::Relaxed);
            }
        });
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let _ = http_get(METRICS_ADDR, "/metrics");
                scrapes.fetch_add(1, Ordering::Relaxed);
            }
        });
        let raise = Raise(&done);
        let askers: Vec<_> = clients
            .iter()
            .map(|c| {
                let done = &done;
                scope.spawn(move || {
                    let mut results = Vec::new();
                    // At least one batch, whatever the reload's length.
                    loop {
                        let mut cmd = enter(Command::new(probe_bin()), None, Some(&c.path));
                        cmd.args([&format!("dns-bench:{batch}"), "127.0.0.53:53/api.example.test"]);
                        let out = cmd.output().expect("nc-probe");
                        let p = parse_probes(&out.stdout).pop().expect("the batch's result");
                        assert!(p.ok, "DNS from a sandbox failed during the storm: {p:?}");
                        results.push(p);
                        if done.load(Ordering::Relaxed) {
                            return results;
                        }
                    }
                })
            })
            .collect();
        // The reload: every sandbox's policy gains a network. Done when `status` shows it in
        // every sandbox's entries.
        let t = Instant::now();
        d.write_config(&config_of(cgroups, ", 192.0.2.0/24"));
        loop {
            let now = entry_counts(d);
            if now.len() == entries_before.len()
                && now.iter().zip(&entries_before).all(|(a, b)| *a > *b)
            {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(300), "the reload was not applied");
            std::thread::sleep(Duration::from_millis(50));
        }
        let reload_s = t.elapsed().as_secs_f64();
        // A second more of storm after it.
        std::thread::sleep(Duration::from_secs(1));
        drop(raise);
        let probes: Vec<_> =
            askers.into_iter().flat_map(|h| h.join().expect("a DNS client")).collect();
        (reload_s, probes)
    });
    let (after, timeouts_after) = holds(d);
    // The storm's own counts: the histogram's growth.
    let grown: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.iter().find(|(l, _)| l == le).map_or(0.0, |b| b.1)))
        .collect();
    let held = grown.iter().map(|b| b.1).fold(0.0, f64::max);
    let p99_ms = grown.iter().find(|(_, n)| *n >= 0.99 * held).map_or(f64::INFINITY, |(le, _)| *le);
    let of = |k: &str| probes.iter().filter_map(|p| p.json[k].as_u64()).max().unwrap_or(0);
    StormDns {
        held,
        p99_ms,
        timeouts: timeouts_after - timeouts_before,
        client_p99_us: of("p99_us"),
        client_max_us: of("max_us"),
        queries: probes.len() as u64 * batch as u64,
        reload_s,
        statuses: statuses.load(Ordering::Relaxed),
        scrapes: scrapes.load(Ordering::Relaxed),
    }
}

/// The open files limit the daemon inherits (it raises its soft limit to this).
fn fd_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit on a local struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) };
    usize::try_from(lim.rlim_max).unwrap_or(usize::MAX)
}

pub fn scale(opts: &Opts) -> Section {
    let idle_secs = if opts.smoke { 1 } else { 10 };
    // A pilot: how many files a sandbox holds open (its proxy's sockets), so
    // that the run stays within what this machine lets a process open.
    const PILOT: usize = 10;
    let base = {
        let (mut empty, _) = daemon_of(0);
        empty.start();
        let b = open_fds(empty.pid());
        empty.stop();
        b
    };
    let (mut pilot, _pilot_cgroups) = daemon_of(PILOT);
    pilot.start();
    let per_sandbox = (open_fds(pilot.pid()).saturating_sub(base) / PILOT).max(1);
    pilot.stop();
    let limit = fd_limit();
    let fits = limit.saturating_sub(base + 512) / per_sandbox;
    let n = if opts.smoke { 20 } else { SANDBOXES.min(fits) };
    let dns = Dnsmasq::start("127.0.0.53", 300);
    dns.set("api.example.test", &["127.0.0.20"]);
    let (mut d, cgroups) = daemon_of(n);
    let start_s = start_all(&mut d, n);
    let pid = d.pid();
    let (rss, _) = memory_mib(pid);
    // The median of a few: one call is at the mercy of whatever else the machine does.
    let status_ms = summarize(&(0..5).map(|_| timed(|| d.status()).1).collect::<Vec<_>>()).median;
    let scrape_ms = summarize(
        &(0..5)
            .map(|_| {
                let (scrape, ms) = timed(|| d.get("/metrics"));
                assert_eq!(scrape.0, 200, "a scrape");
                ms
            })
            .collect::<Vec<_>>(),
    )
    .median;
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle_cpu = 100.0 * (cpu_seconds(pid) - cpu0) / idle_secs as f64;
    let st = storm(&d, &cgroups, &cgroups[1..], opts.smoke);

    // A restart, while one sandbox keeps trying a denied destination: a server that counts
    // what reaches it (a refused connection would look like a denied one).
    let denied = Server::start("127.0.0.10");
    let loop_ms = 4000 + (start_s * 1000.0) as u64;
    let mut looper = enter(Command::new(probe_bin()), None, Some(&cgroups[0].path));
    looper.args([&format!("loop-tcp:{loop_ms}"), &denied.target()]).stdout(Stdio::piped());
    let looper = looper.spawn().expect("nc-probe");
    d.stop();
    let readopt_s = start_all(&mut d, n);
    let adopted = d.status()["sandboxes"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|s| s["adopted"] == true).count());
    let out = looper.wait_with_output().expect("nc-probe");
    let p = parse_probes(&out.stdout).pop().expect("the loop's result");
    let no_gap =
        p.json["ops"] == p.json["failed"] && p.json["errno"] == 1 && denied.accepted() == 0;
    d.stop();

    let mut body = String::new();
    let _ = writeln!(
        body,
        "`netcontrol daemon` with {n} sandboxes (cgroups made for it), each in DNS-aware mode \
         (a DNS proxy each) with a policy of a domain, a wildcard and a network. Start: from \
         spawning the agent until `status` shows all enforcing. `status` is the CLI end to end, \
         the scrape one GET of /metrics (the median of 5 each). Restart: SIGTERM, start again, until all enforce \
         (re-adopted from pins), while a sandboxed loop tries a denied destination.\n"
    );
    let _ = writeln!(
        body,
        "Each sandbox holds {per_sandbox} files open (its proxy's sockets; its links are held \
         by their pins); this machine lets a process open {limit}, so {n} sandboxes{}.\n",
        if n < SANDBOXES { format!(" (not {SANDBOXES})") } else { String::new() }
    );
    let _ = writeln!(
        body,
        "| sandboxes | start | RSS | status | scrape | idle CPU | restart | adopted | denied attempts during the restart |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {n} | {start_s:.1} s | {rss:.0} MiB | {status_ms:.0} ms | {scrape_ms:.0} ms | {idle_cpu:.2}% of a core | {readopt_s:.1} s | {adopted} | {} of {} refused |",
        p.json["failed"], p.json["ops"]
    );
    let _ = writeln!(
        body,
        "\nDNS during a storm: {} sandboxes ask one query after the other ({} queries in all) \
         while the daemon reloads a policy change for every sandbox ({:.1} s until `status` \
         showed it everywhere), and `status` ({} times) and scrapes ({} times) come back to \
         back. The hold is how long the proxy kept an answer until the maps allowed its \
         addresses (netcontrol_dns_hold_seconds, the storm's share).\n\n\
         | answers held | hold p99 | held to the {HOLD_MS:.0} ms limit | client p99 (worst batch) | slowest query |\n\
         |---:|---:|---:|---:|---:|\n\
         | {:.0} | ≤ {} ms | {:.0} | {:.1} ms | {:.1} ms |",
        DNS_CLIENTS.min(cgroups.len().saturating_sub(1)),
        st.queries,
        st.reload_s,
        st.statuses,
        st.scrapes,
        st.held,
        st.p99_ms,
        st.timeouts,
        st.client_p99_us as f64 / 1000.0,
        st.client_max_us as f64 / 1000.0,
    );
    // Every goal is about SANDBOXES of them: fewer meet none, whatever the numbers.
    let all = n == SANDBOXES;
    let of = if all { String::new() } else { format!(" for {n} of {SANDBOXES}") };
    let goals = vec![
        Goal {
            what: format!(
                "scale: {SANDBOXES} sandboxes enforcing within {START_GOAL_S:.0} s of start"
            ),
            met: all && start_s <= START_GOAL_S,
            detail: if n < SANDBOXES {
                format!(
                    "{start_s:.1} s for {n}: {SANDBOXES} need {} open files, this machine allows {limit}",
                    SANDBOXES * per_sandbox
                )
            } else {
                format!("{start_s:.1} s for {n}")
            },
        },
        Goal {
            what: format!("scale: agent RSS ≤ {RSS_GOAL_MIB:.0} MB"),
            met: all && rss <= RSS_GOAL_MIB,
            detail: format!("{rss:.0} MiB{of}"),
        },
        Goal {
            what: format!("scale: `status` ≤ {STATUS_GOAL_MS:.0} ms"),
            met: all && status_ms <= STATUS_GOAL_MS,
            detail: format!("{status_ms:.0} ms{of}"),
        },
        Goal {
            what: format!("scale: a scrape ≤ {SCRAPE_GOAL_MS:.0} ms"),
            met: all && scrape_ms <= SCRAPE_GOAL_MS,
            detail: format!("{scrape_ms:.0} ms{of}"),
        },
        Goal {
            what: format!("scale: idle agent CPU ≤ {IDLE_CPU_GOAL:.0}% of a core"),
            met: all && idle_cpu <= IDLE_CPU_GOAL,
            detail: format!("{idle_cpu:.2}%{of}"),
        },
        Goal {
            what: format!(
                "scale: no DNS answer held to the {HOLD_MS:.0} ms limit during a reload, a status storm and a scrape storm"
            ),
            met: all && st.held > 0.0 && st.timeouts == 0.0,
            detail: format!(
                "{:.0} answers held, p99 ≤ {} ms, {:.0} hold timeouts{of}",
                st.held, st.p99_ms, st.timeouts
            ),
        },
        Goal {
            what: format!(
                "scale: a restart re-adopts all within {READOPT_GOAL_S:.0} s, no denied attempt succeeding"
            ),
            met: all && readopt_s <= READOPT_GOAL_S && adopted == n && no_gap,
            detail: format!(
                "{readopt_s:.1} s{of}, {adopted} of {n} adopted, {} of {} denied attempts refused",
                p.json["failed"], p.json["ops"]
            ),
        },
    ];
    Section { title: "Many sandboxes".into(), body, goals }
}
