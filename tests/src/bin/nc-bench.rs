//! nc-bench: netcontrol's benchmarks, run by `cargo xtask bench` (root). Every scenario runs in a
//! private network namespace, alternates baseline and candidate in the same run, and reports
//! medians over rounds.
//!
//! Usage: nc-bench dns [--rounds R] [--queries N] [--out FILE.md] [--smoke]

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use netcontrol_tests::{
    Attached, dns::Dnsmasq, isolate_network, parse_probes, policy_file, probe_bin,
};

struct Args {
    rounds: usize,
    queries: usize,
    out: Option<PathBuf>,
    /// A run that only checks the scenario works: timings are not judged.
    smoke: bool,
}

fn main() {
    let mut argv = std::env::args().skip(1);
    let scenario = argv.next().unwrap_or_default();
    let mut args = Args { rounds: 7, queries: 300, out: None, smoke: false };
    while let Some(a) = argv.next() {
        let mut value = || argv.next().unwrap_or_else(|| fail(&format!("{a} needs a value")));
        match a.as_str() {
            "--rounds" => {
                args.rounds = value().parse().unwrap_or_else(|_| fail("--rounds: a number"))
            }
            "--queries" => {
                args.queries = value().parse().unwrap_or_else(|_| fail("--queries: a number"))
            }
            "--out" => args.out = Some(PathBuf::from(value())),
            "--smoke" => args.smoke = true,
            other => fail(&format!("unknown option {other}")),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        fail("benchmarks load eBPF programs: run as root");
    }
    let report = match scenario.as_str() {
        "dns" => dns(&args),
        other => fail(&format!("unknown scenario {other:?}; scenarios: dns")),
    };
    print!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).unwrap_or_else(|e| fail(&format!("{}: {e}", out.display())));
        eprintln!("nc-bench: wrote {}", out.display());
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("nc-bench: {msg}");
    std::process::exit(2)
}

/// Latencies of one batch of queries, in µs.
#[derive(Clone, Copy)]
struct Batch {
    p50: u64,
    p99: u64,
}

fn batch(
    run: impl FnOnce(&[(&str, &str)]) -> Vec<netcontrol_tests::Probe>,
    server: &str,
    n: usize,
) -> Batch {
    let op = format!("dns-bench:{n}");
    let target = format!("{server}/api.example.test");
    let p = run(&[(&op, &target)]).remove(0);
    assert!(p.ok, "benchmark queries failed: {p:?}");
    Batch {
        p50: p.json["p50_us"].as_u64().unwrap_or(0),
        p99: p.json["p99_us"].as_u64().unwrap_or(0),
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Scenario: the DNS proxy's added latency per query (DNS-aware mode), against asking dnsmasq
/// directly from outside any sandbox.
fn dns(args: &Args) -> String {
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 300);
    dns.set("api.example.test", &["127.0.0.20"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_file(
        dir.path(),
        "allow: [api.example.test:443]\ndns:\n  servers: [127.0.0.53]\n  max_queries_per_second: 1000000\n",
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8"), "--no-pin"]);
    let outside = |ops: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(probe_bin());
        for (op, t) in ops {
            cmd.args([op, t]);
        }
        parse_probes(&cmd.output().expect("nc-probe").stdout)
    };
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Alternate which goes first, so that drift favours neither.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for via_proxy in order {
            if via_proxy {
                proxied.push(batch(|ops| sb.probe(ops), "127.0.0.53:53", args.queries));
            } else {
                direct.push(batch(outside, "127.0.0.53:53", args.queries));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sb.stop();
    let (d50, d99) = (
        median(direct.iter().map(|b| b.p50).collect()),
        median(direct.iter().map(|b| b.p99).collect()),
    );
    let (p50, p99) = (
        median(proxied.iter().map(|b| b.p50).collect()),
        median(proxied.iter().map(|b| b.p99).collect()),
    );
    let added50 = p50.saturating_sub(d50);
    let added99 = p99.saturating_sub(d99);
    let mut r = String::new();
    let _ = writeln!(r, "# DNS-aware mode: latency added per query\n");
    let _ = writeln!(
        r,
        "{} rounds of {} sequential UDP queries for an allowed name, alternating: straight to dnsmasq \
         (outside any sandbox) and from a sandbox, through netcontrol's proxy (which forwards to the same \
         dnsmasq and allows the answer's address before releasing it). Medians over rounds; µs.\n",
        args.rounds, args.queries
    );
    let _ = writeln!(r, "| path | p50 | p99 |\n|---|---:|---:|");
    let _ = writeln!(r, "| dnsmasq, direct | {d50} | {d99} |");
    let _ = writeln!(r, "| through the proxy | {p50} | {p99} |");
    let _ = writeln!(r, "| **added** | **{added50}** | **{added99}** |\n");
    if args.smoke {
        let _ =
            writeln!(r, "Smoke run (a debug build, few queries): the timings above mean nothing.");
        return r;
    }
    let goal = |ok: bool| if ok { "met" } else { "MISSED" };
    let _ = writeln!(
        r,
        "Goals: p50 added ≤ 300 µs: {}; p99 added ≤ 3000 µs: {}.",
        goal(added50 <= 300),
        goal(added99 <= 3000)
    );
    r
}
