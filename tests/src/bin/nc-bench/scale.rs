//! Many sandboxes on one node: `netcontrol daemon` with thousands of sandboxes (cgroups this
//! scenario creates), each with a DNS proxy: how long until all enforce, the agent's memory,
//! how long `status` and a scrape take, its CPU at rest, and a restart that re-adopts them
//! while a sandboxed loop keeps trying a denied destination.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netcontrol_tests::{TestCgroup, daemon::Daemon, open_fds, parse_probes, probe_bin};

use crate::{
    Goal, Opts, Section,
    measure::{cpu_seconds, memory_mib},
    netns::enter,
};

const SANDBOXES: usize = 4000;
const START_GOAL_S: f64 = 30.0;
const RSS_GOAL_MIB: f64 = 150.0;
const STATUS_GOAL_MS: f64 = 200.0;
const SCRAPE_GOAL_MS: f64 = 200.0;
const IDLE_CPU_GOAL: f64 = 2.0;
const READOPT_GOAL_S: f64 = 10.0;

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

/// A daemon with `n` sandboxes of their own cgroups (not started).
fn daemon_of(n: usize) -> (Daemon, Vec<TestCgroup>) {
    let cgroups: Vec<TestCgroup> = (0..n).map(|_| TestCgroup::new()).collect();
    let mut config = String::from(
        "policies:\n  web:\n    allow: [api.example.test:443, \"**.cdn.example.test:443\", 10.0.0.0/8]\n    dns: {servers: [127.0.0.53]}\nsandboxes:\n",
    );
    for (i, c) in cgroups.iter().enumerate() {
        let _ = writeln!(config, "  - {{name: s{i}, cgroup: {}, policy: web}}", c.path.display());
    }
    let mut d = Daemon::new(&config);
    d.ready_timeout = Duration::from_secs(600);
    (d, cgroups)
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
    let (mut d, cgroups) = daemon_of(n);
    let start_s = start_all(&mut d, n);
    let pid = d.pid();
    let (rss, _) = memory_mib(pid);
    let (_, status_ms) = timed(|| d.status());
    let (scrape, scrape_ms) = timed(|| d.get("/metrics"));
    assert_eq!(scrape.0, 200, "a scrape");
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle_cpu = 100.0 * (cpu_seconds(pid) - cpu0) / idle_secs as f64;

    // A restart, while one sandbox keeps trying a denied destination.
    let loop_ms = 4000 + (start_s * 1000.0) as u64;
    let mut looper = enter(Command::new(probe_bin()), None, Some(&cgroups[0].path));
    looper.args([&format!("loop-tcp:{loop_ms}"), "127.0.0.10:18080"]).stdout(Stdio::piped());
    let looper = looper.spawn().expect("nc-probe");
    d.stop();
    let readopt_s = start_all(&mut d, n);
    let adopted = d.status()["sandboxes"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|s| s["adopted"] == true).count());
    let out = looper.wait_with_output().expect("nc-probe");
    let p = parse_probes(&out.stdout).pop().expect("the loop's result");
    let no_gap = p.json["ops"] == p.json["failed"];
    d.stop();

    let mut body = String::new();
    let _ = writeln!(
        body,
        "`netcontrol daemon` with {n} sandboxes (cgroups made for it), each in DNS-aware mode \
         (a DNS proxy each) with a policy of a domain, a wildcard and a network. Start: from \
         spawning the agent until `status` shows all enforcing. `status` is the CLI end to end; \
         the scrape is one GET of /metrics. Restart: SIGTERM, start again, until all enforce \
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
