//! The agent under load and at rest: a storm of denied attempts from several processes (every
//! event delivered or counted as lost; CPU and peak memory), and an idle daemon with sandboxes.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netcontrol_tests::{
    Background, Server, TestCgroup, daemon::Daemon, netcontrol_bin, parse_probes, probe_bin,
    read_events,
};

use crate::{
    Goal, Opts, Section,
    measure::{count, cpu_seconds, memory_mib},
    netns::enter,
};

/// Processes attempting at once.
const STORMERS: usize = 4;
const RSS_GOAL_MIB: f64 = 50.0;

pub fn storm(opts: &Opts) -> Section {
    let secs = if opts.smoke { 1 } else { 10 };
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.jsonl");
    let cg = TestCgroup::new();
    let mut cmd = Command::new(netcontrol_bin());
    cmd.args([
        "attach",
        "--no-pin",
        "--quiet",
        "--allow",
        "127.0.0.1:1",
        "--dns-mode",
        "resolver",
        "--cgroup",
    ])
    .arg(&cg.path)
    .arg("--events")
    .arg(&events)
    .stdout(Stdio::null());
    let mut agent = Background::spawn(cmd);
    agent.wait_for_line("netcontrol: enforcing on", Duration::from_secs(60));
    let pid = agent.pid();
    let cpu0 = cpu_seconds(pid);
    // A server that counts what reaches it: a refused connection would look like a denied one.
    let denied = Server::start("127.0.0.10");
    let started = Instant::now();
    let children: Vec<_> = (0..STORMERS)
        .map(|_| {
            let mut c = enter(Command::new(probe_bin()), None, Some(&cg.path));
            c.args([&format!("loop-tcp:{}", secs * 1000), &denied.target()]).stdout(Stdio::piped());
            c.spawn().expect("nc-probe")
        })
        .collect();
    let mut attempts = 0;
    for c in children {
        let out = c.wait_with_output().expect("nc-probe");
        let p = parse_probes(&out.stdout).pop().expect("result");
        assert_eq!(p.json["ops"], p.json["failed"], "a denied attempt got through: {p:?}");
        assert_eq!(p.json["errno"], 1, "denied attempts fail with EPERM: {p:?}");
        attempts += p.json["ops"].as_u64().unwrap_or(0);
    }
    assert_eq!(denied.accepted(), 0, "the denied server was reached");
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let (_, peak) = memory_mib(pid);
    let log = agent.stop();
    let summary = log
        .lines()
        .find(|l| l.contains("connection attempts blocked"))
        .unwrap_or_default()
        .to_owned();
    let number_before = |text: &str, marker: &str| {
        text.split(marker)
            .next()
            .and_then(|s| s.split_whitespace().last())
            .and_then(|n| n.parse::<u64>().ok())
    };
    let blocked = number_before(&summary, " connection attempts blocked").unwrap_or(0);
    let lost = number_before(&summary, " attempts reported nowhere").unwrap_or(0);
    // Each record stands for `count` attempts: 1 for an event of its own, more for a summary.
    let records = read_events(&events);
    let (summaries, singles): (Vec<_>, Vec<_>) =
        records.iter().partition(|r| r["summary"].as_bool() == Some(true));
    let delivered = singles.len() as u64;
    let summarized: u64 = summaries.iter().map(|r| r["count"].as_u64().unwrap_or(0)).sum();
    let complete = delivered + summarized + lost == blocked && blocked == attempts;
    let mut body = String::new();
    let _ = writeln!(
        body,
        "{STORMERS} processes in one sandbox attempt TCP connections to a denied address as fast as \
         they can for {secs} s; `netcontrol attach` writes every record it gets to a file (1 MiB \
         ring buffer, the default). The kernel gives a few attempts per second an event of \
         their own and counts the rest, which the agent reports in summary records (one per \
         destination and second, with the count). Agent CPU is its user + system time over \
         the storm.\n"
    );
    let _ = writeln!(
        body,
        "| attempts | blocked | events written | in summary records | lost (counted) | events + summarized + lost = blocked | agent CPU | agent peak RSS |\n\
         |---:|---:|---:|---:|---:|---|---:|---:|"
    );
    let _ = writeln!(
        body,
        "| {} | {} | {} | {} ({} records) | {} | {} | {:.0}% of a core | {:.1} MiB |",
        count(attempts),
        count(blocked),
        count(delivered),
        count(summarized),
        count(summaries.len() as u64),
        count(lost),
        if complete { "yes" } else { "**no**" },
        100.0 * cpu / wall,
        peak
    );
    let _ = writeln!(body, "\n`{}`", summary.trim());
    let goals = vec![
        Goal {
            what: "storm: no crash, every blocked attempt reported or counted as lost".into(),
            met: complete,
            detail: format!(
                "{} events + {} in {} summaries + {} lost of {} blocked",
                count(delivered),
                count(summarized),
                count(summaries.len() as u64),
                count(lost),
                count(blocked)
            ),
        },
        Goal {
            what: format!("agent RSS ≤ {RSS_GOAL_MIB:.0} MB under the storm"),
            met: peak <= RSS_GOAL_MIB,
            detail: format!("peak {peak:.1} MiB"),
        },
    ];
    Section { title: "A storm of denied attempts".into(), body, goals }
}

pub fn idle(opts: &Opts) -> Section {
    let secs = if opts.smoke { 1 } else { 10 };
    const SANDBOXES: usize = 10;
    let cgroups: Vec<TestCgroup> = (0..SANDBOXES).map(|_| TestCgroup::new()).collect();
    let mut config = String::from(
        "policies:\n  web:\n    allow: [api.github.com:443, \"**.githubusercontent.com:443\", 10.0.0.0/8]\n    dns: {servers: [127.0.0.53]}\nsandboxes:\n",
    );
    for (i, c) in cgroups.iter().enumerate() {
        let _ = writeln!(config, "  - {{name: s{i}, cgroup: {}, policy: web}}", c.path.display());
    }
    let mut d = Daemon::new(&config);
    d.start();
    let pid = d.pid();
    // Settle after start-up, then measure at rest.
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = cpu_seconds(pid) - cpu0;
    let (rss, peak) = memory_mib(pid);
    d.stop();
    let mut body = String::new();
    let _ = writeln!(
        body,
        "`netcontrol daemon` with {SANDBOXES} sandboxes in DNS-aware mode (a proxy each), nothing \
         happening, for {secs} s.\n\n| CPU | RSS | peak RSS |\n|---:|---:|---:|\n| {:.2}% of a core | {rss:.1} MiB | {peak:.1} MiB |",
        100.0 * cpu / secs as f64
    );
    let goals = vec![Goal {
        what: format!("idle agent RSS ≤ {RSS_GOAL_MIB:.0} MB"),
        met: rss <= RSS_GOAL_MIB,
        detail: format!("{rss:.1} MiB with {SANDBOXES} sandboxes"),
    }];
    Section { title: "The agent at rest".into(), body, goals }
}
