//! DNS-aware mode: the latency the proxy adds per query, against asking dnsmasq directly.

use std::{fmt::Write as _, process::Command, time::Duration};

use netcontrol_tests::{Attached, Probe, dns::Dnsmasq, parse_probes, policy_file, probe_bin};

use crate::{Goal, Opts, Section, chart, measure::summarize};

/// One batch of sequential queries: (p50, p99) in µs.
fn batch(run: impl FnOnce(&[(&str, &str)]) -> Vec<Probe>, n: usize) -> (f64, f64) {
    let op = format!("dns-bench:{n}");
    let p = run(&[(&op, "127.0.0.53:53/api.example.test")]).remove(0);
    assert!(p.ok, "benchmark queries failed: {p:?}");
    (p.json["p50_us"].as_u64().unwrap_or(0) as f64, p.json["p99_us"].as_u64().unwrap_or(0) as f64)
}

pub fn dns(opts: &Opts) -> Section {
    let (rounds, queries) = if opts.smoke { (1, 20) } else { (7, 300) };
    let dns = Dnsmasq::start("127.0.0.53", 300);
    dns.set("api.example.test", &["127.0.0.20"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_file(
        dir.path(),
        // The answer is a loopback address (tests reach only their own): rebinding protection
        // would take it out, and with it the wait for the maps this measures.
        "allow: [api.example.test:443]\ndns:\n  servers: [127.0.0.53]\n  max_queries_per_second: 1000000\n  rebinding: allow\n",
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8"), "--no-pin"]);
    let outside = |ops: &[(&str, &str)]| {
        let mut cmd = Command::new(probe_bin());
        for (op, t) in ops {
            cmd.args([op, t]);
        }
        parse_probes(&cmd.output().expect("nc-probe").stdout)
    };
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so that drift favours neither.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for via_proxy in order {
            if via_proxy {
                proxied.push(batch(|ops| sb.probe(ops), queries));
            } else {
                direct.push(batch(outside, queries));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sb.stop();
    let s = |v: &[(f64, f64)], p99: bool| {
        summarize(&v.iter().map(|b| if p99 { b.1 } else { b.0 }).collect::<Vec<_>>())
    };
    let (d50, d99, p50, p99) =
        (s(&direct, false), s(&direct, true), s(&proxied, false), s(&proxied, true));
    let added50 = (p50.median - d50.median).max(0.0);
    let added99 = (p99.median - d99.median).max(0.0);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "{rounds} rounds of {queries} sequential UDP queries for an allowed name, alternating: \
         straight to dnsmasq (outside any sandbox) and from a sandbox, through netcontrol's \
         proxy (which forwards to the same dnsmasq and allows the answer's address before \
         releasing it). µs, median over rounds (smallest–largest).\n"
    );
    let _ = writeln!(body, "| path | p50 | p99 |\n|---|---:|---:|");
    let cell = |s: crate::measure::Summary| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max);
    let _ = writeln!(body, "| dnsmasq, direct | {} | {} |", cell(d50), cell(d99));
    let _ = writeln!(body, "| through the proxy | {} | {} |", cell(p50), cell(p99));
    let _ = writeln!(body, "| **added** | **{added50:.0}** | **{added99:.0}** |");
    if let Some(dir) = &opts.out {
        chart::bars(
            &dir.join("dns.png"),
            "DNS query latency",
            "µs",
            &[
                (
                    "p50".into(),
                    vec![
                        ("dnsmasq, direct".into(), d50.median),
                        ("through netcontrol".into(), p50.median),
                    ],
                ),
                (
                    "p99".into(),
                    vec![
                        ("dnsmasq, direct".into(), d99.median),
                        ("through netcontrol".into(), p99.median),
                    ],
                ),
            ],
        );
        let _ = writeln!(body, "\n![DNS latency, direct and through the proxy](dns.png)");
    }
    let goals = vec![
        Goal {
            what: "DNS p50 added ≤ 0.3 ms".into(),
            met: added50 <= 300.0,
            detail: format!("{added50:.0} µs"),
        },
        Goal {
            what: "DNS p99 added ≤ 3 ms".into(),
            met: added99 <= 3000.0,
            detail: format!("{added99:.0} µs"),
        },
    ];
    Section { title: "DNS-aware mode: latency added per query".into(), body, goals }
}
