//! Applying a policy of many domains (resolver mode, names served by dnsmasq): how long until
//! every address is in the maps.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use netcontrol_tests::{TestCgroup, daemon::Daemon, dns::Dnsmasq, within};

use crate::{Goal, Opts, Section, measure::count};

pub fn domains(opts: &Opts) -> Section {
    let n: usize = if opts.smoke { 200 } else { 10_000 };
    let dns = Dnsmasq::start("127.0.0.53", 3600);
    // One hosts file with every name (dnsmasq reads it at once).
    let names: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                format!("d{i}.bench.test"),
                format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            )
        })
        .collect();
    dns.set_many(&names);
    let cg = TestCgroup::new();
    let mut config = String::from(
        "policies:\n  many:\n    dns: {mode: resolver, servers: [127.0.0.53], allow_private: true}\n    allow:\n",
    );
    for (name, _) in &names {
        let _ = writeln!(config, "      - {name}:443");
    }
    let _ = writeln!(
        config,
        "sandboxes:\n  - {{name: many, cgroup: {}, policy: many}}",
        cg.path.display()
    );
    let mut d = Daemon::new(&config);
    let started = Instant::now();
    d.start();
    let ready = started.elapsed();
    // The DNS servers' own entry comes on top of one per name.
    let all = within(Duration::from_secs(300), || {
        d.status()["sandboxes"][0]["entries_v4"].as_u64().unwrap_or(0) as usize > n
    });
    let total = started.elapsed();
    d.stop();
    let mut body = String::new();
    let _ = writeln!(
        body,
        "`netcontrol daemon` started with one sandbox whose policy names {} domains (resolver \
         mode; dnsmasq on the same machine answers each with one address). Time from start until \
         the daemon reports ready, and until every address is in the maps.\n\n\
         | domains | ready | all addresses in the maps |\n|---:|---:|---:|\n| {} | {:.2} s | {} |",
        count(n as u64),
        count(n as u64),
        ready.as_secs_f64(),
        if all.is_some() {
            format!("{:.2} s", total.as_secs_f64())
        } else {
            "not within 300 s".into()
        }
    );
    let goals = vec![Goal {
        what: format!("a policy of {} domains is applied", count(n as u64)),
        met: all.is_some(),
        detail: format!("{:.2} s", total.as_secs_f64()),
    }];
    Section { title: "Applying a policy of many domains".into(), body, goals }
}
