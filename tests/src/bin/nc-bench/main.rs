//! nc-bench: netcontrol's benchmarks, run by `cargo xtask bench` (root). Every scenario runs in
//! private network namespaces, alternates baseline and candidates within the same run over
//! several rounds, and reports medians with their spread. The report (Markdown) and its charts
//! (PNG) go to `--out DIR`.
//!
//! Usage: nc-bench [SCENARIO]... [--smoke] [--out DIR]
//! Scenarios: connect, denied, dns, storm, domains, idle, scale (default: all). `--smoke` runs each
//! briefly, to check that it still works: its numbers mean nothing.

mod chart;
mod connect;
mod dns;
mod domains;
mod measure;
mod netns;
mod progstats;
mod scale;
mod storm;

use std::{fmt::Write as _, path::PathBuf};

/// How a run goes.
pub struct Opts {
    pub smoke: bool,
    pub out: Option<PathBuf>,
}

/// One scenario's part of the report.
pub struct Section {
    pub title: String,
    pub body: String,
    pub goals: Vec<Goal>,
}

/// A goal the issue sets, and whether this run met it.
pub struct Goal {
    pub what: String,
    pub met: bool,
    /// What was measured, and why a miss happened.
    pub detail: String,
}

const SCENARIOS: &[&str] = &["connect", "denied", "dns", "storm", "domains", "idle", "scale"];

const USAGE: &str = "\
nc-bench: netcontrol's benchmarks (run as root; `cargo xtask bench` builds and runs them)

Usage: nc-bench [SCENARIO]... [--smoke] [--out DIR]

Scenarios (default: all):
  connect   socket+connect+close on loopback, TCP and UDP: no filter, netcontrol, iptables,
            nftables, at 10/1k/10k/100k entries
  denied    time for a denied connect to return EPERM, against an allowed one
  dns       added latency per DNS query through the agent, against dnsmasq directly
  storm     denied attempts from several processes for 10 s: events delivered and lost
  domains   applying a policy of 10k domains: time until all their addresses are in the maps
  idle      the agent's RSS and CPU while nothing happens
  scale     the daemon with 4000 sandboxes: start, memory, status, scrape, idle CPU, restart

Options:
  --smoke     run every scenario briefly, to check that it works (its numbers mean nothing)
  --out DIR   write the report (README.md) and its charts (PNG) to DIR
  -h, --help  this text
";

fn main() {
    let mut scenarios = Vec::new();
    let mut opts = Opts { smoke: false, out: None };
    let mut argv = std::env::args().skip(1);
    while let Some(a) = argv.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return;
            }
            "--smoke" => opts.smoke = true,
            "--out" => {
                opts.out = Some(PathBuf::from(
                    argv.next().unwrap_or_else(|| fail("--out needs a directory")),
                ))
            }
            s if SCENARIOS.contains(&s) => scenarios.push(s.to_owned()),
            "all" => scenarios.extend(SCENARIOS.iter().map(|s| (*s).to_owned())),
            other => fail(&format!("unknown argument {other:?} (see --help)")),
        }
    }
    if scenarios.is_empty() {
        scenarios.extend(SCENARIOS.iter().map(|s| (*s).to_owned()));
    }
    if !nix::unistd::geteuid().is_root() {
        fail("benchmarks load eBPF programs: run as root");
    }
    if let Some(dir) = &opts.out {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| fail(&format!("{}: {e}", dir.display())));
    }
    // Everything happens in namespaces of this run's own: nothing leaves the machine.
    netcontrol_tests::isolate_network(&[]);
    let mut sections = Vec::new();
    for s in &scenarios {
        eprintln!("nc-bench: {s}");
        sections.push(match s.as_str() {
            "connect" => connect::connect(&opts),
            "denied" => connect::denied(&opts),
            "dns" => dns::dns(&opts),
            "storm" => storm::storm(&opts),
            "domains" => domains::domains(&opts),
            "idle" => storm::idle(&opts),
            "scale" => scale::scale(&opts),
            _ => unreachable!(),
        });
    }
    let report = report(&opts, &sections);
    print!("{report}");
    if let Some(dir) = &opts.out {
        let path = dir.join("README.md");
        std::fs::write(&path, &report)
            .unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
        eprintln!("nc-bench: wrote {}", path.display());
    }
}

fn report(opts: &Opts, sections: &[Section]) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# netcontrol benchmarks\n");
    let _ = writeln!(
        r,
        "Written by `cargo xtask bench` (release build, as root) on {}. Each scenario runs in \
         network namespaces of its own and alternates the baseline and the candidates within one \
         run, over several rounds; numbers are medians over the rounds, with the spread \
         (smallest–largest round) where it matters.\n",
        machine()
    );
    if opts.smoke {
        let _ = writeln!(
            r,
            "**Smoke run** (a debug build, short rounds): the numbers below mean nothing.\n"
        );
    }
    let _ = writeln!(r, "## Goals\n\n| goal | met | measured |\n|---|---|---|");
    for g in sections.iter().flat_map(|s| &s.goals) {
        let _ =
            writeln!(r, "| {} | {} | {} |", g.what, if g.met { "yes" } else { "**no**" }, g.detail);
    }
    let _ = writeln!(r);
    for s in sections {
        let _ = writeln!(r, "## {}\n\n{}", s.title, s.body.trim_end());
        let _ = writeln!(r);
    }
    r
}

/// The kernel and CPU the numbers come from.
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|v| v.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "an unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Linux {} on {cores} cores of {cpu}", kernel.trim())
}

pub fn fail(msg: &str) -> ! {
    eprintln!("nc-bench: {msg}");
    std::process::exit(2)
}
