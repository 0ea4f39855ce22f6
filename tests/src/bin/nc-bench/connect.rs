//! What a connection attempt costs: socket, connect and close on loopback (TCP; UDP with one
//! datagram) with no filter, netcontrol, iptables and nftables, each holding the same number
//! of allow entries; and a denied attempt against an allowed one.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use netcontrol_tests::{Background, TestCgroup, netcontrol_bin, probe_bin};

use crate::{
    Goal, Opts, Section, chart,
    measure::{Cpu, Summary, count, on_cpu, run_loop, summarize},
    netns::Netns,
    progstats,
};

const PORT: u16 = 18080;
const PROTOS: [&str; 2] = ["tcp", "udp"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    None,
    Netcontrol,
    Iptables,
    Nftables,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::None => "no filter",
            Family::Netcontrol => "netcontrol",
            Family::Iptables => "iptables",
            Family::Nftables => "nftables",
        }
    }
}

/// One thing to measure: where the client runs.
struct Config {
    family: Family,
    entries: usize,
    netns: Option<PathBuf>,
    cgroup: PathBuf,
}

/// The allowed destination (every configuration allows it, after `n` entries that do not
/// match it).
fn target() -> String {
    format!("127.0.0.1:{PORT}")
}

/// The i-th of the entries that never match: distinct /32s in 10.0.0.0/8, port 443.
fn filler(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// A loopback server (TCP and UDP) in a namespace (None: ours).
fn server(netns: Option<&Netns>) -> Background {
    let cmd = match netns {
        Some(ns) => ns.command(probe_bin()),
        None => Command::new(probe_bin()),
    };
    let mut cmd = on_cpu(cmd, Cpu::Server);
    cmd.args(["serve", &target()]).stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("nc-probe serve");
    // It says when it listens.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("serve output");
    assert!(line.starts_with("listening"), "nc-probe serve: {line}");
    Background::adopt(child)
}

/// `netcontrol attach` on `cgroup` with `n` filler entries and the target; waits until it
/// enforces.
fn attach(cgroup: &Path, n: usize, dir: &Path, events: &str) -> Background {
    let mut policy = format!("allow:\n  - \"{}\"\n", target());
    for i in 0..n {
        let _ = writeln!(policy, "  - \"{}:443\"", filler(i));
    }
    policy.push_str("dns: {mode: resolver, servers: [127.0.0.53]}\n");
    let file = dir.join(format!("policy-{n}.yaml"));
    std::fs::write(&file, policy).expect("write policy");
    let mut cmd = Command::new(netcontrol_bin());
    cmd.args(["attach", "--no-pin", "--quiet", "--events", events, "--cgroup"])
        .arg(cgroup)
        .arg("--policy")
        .arg(&file)
        .stdout(Stdio::null());
    let mut p = Background::spawn(cmd);
    p.wait_for_line("netcontrol: enforcing on", Duration::from_secs(300));
    p
}

fn iptables(ns: &Netns, n: usize, dir: &Path) {
    let mut rules =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT DROP [0:0]\n");
    rules.push_str("-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    for i in 0..n {
        let _ = writeln!(rules, "-A OUTPUT -d {}/32 -p tcp --dport 443 -j ACCEPT", filler(i));
    }
    for proto in PROTOS {
        let _ = writeln!(rules, "-A OUTPUT -d 127.0.0.1/32 -p {proto} --dport {PORT} -j ACCEPT");
    }
    rules.push_str("COMMIT\n");
    let file = dir.join(format!("iptables-{n}"));
    std::fs::write(&file, rules).expect("write rules");
    ns.sh(&format!("iptables-restore < {}", file.display()));
}

fn nftables(ns: &Netns, n: usize, dir: &Path) {
    let mut elements: Vec<String> = (0..n).map(|i| format!("{} . 443", filler(i))).collect();
    elements.push(format!("127.0.0.1 . {PORT}"));
    let rules = format!(
        "table inet nc {{\n  set allow4 {{\n    type ipv4_addr . inet_service\n    elements = {{ {} }}\n  }}\n  \
         chain output {{\n    type filter hook output priority filter; policy drop;\n    \
         ct state established,related accept\n    ip daddr . th dport @allow4 accept\n  }}\n}}\n",
        elements.join(", ")
    );
    let file = dir.join(format!("nftables-{n}"));
    std::fs::write(&file, rules).expect("write rules");
    ns.sh(&format!("nft -f {}", file.display()));
}

pub fn connect(opts: &Opts) -> Section {
    let sizes: &[usize] = if opts.smoke { &[10, 1000] } else { &[10, 1000, 10_000, 100_000] };
    let (rounds, ms) = if opts.smoke { (1, 100) } else { (15, 300) };
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = TestCgroup::new();
    let _server = server(None);
    let none = Config { family: Family::None, entries: 0, netns: None, cgroup: plain.path.clone() };
    let mut candidates = Vec::new();
    let mut keep = Vec::new();
    // Servers first: each ends before the namespace holding it.
    let mut namespaces: Vec<(Background, Netns)> = Vec::new();
    for &n in sizes {
        eprintln!("nc-bench: connect: setting up {n} entries");
        let cg = TestCgroup::new();
        let nc = attach(&cg.path, n, dir.path(), "/dev/null");
        candidates.push(Config {
            family: Family::Netcontrol,
            entries: n,
            netns: None,
            cgroup: cg.path.clone(),
        });
        keep.push((cg, nc));
        for family in [Family::Iptables, Family::Nftables] {
            let ns = Netns::new();
            let srv = server(Some(&ns));
            match family {
                Family::Iptables => iptables(&ns, n, dir.path()),
                _ => nftables(&ns, n, dir.path()),
            }
            candidates.push(Config {
                family,
                entries: n,
                netns: Some(ns.path.clone()),
                cgroup: plain.path.clone(),
            });
            namespaces.push((srv, ns));
        }
    }
    let measure = |c: &Config, proto: &str| {
        let l = run_loop(proto, ms, &target(), c.netns.as_deref(), Some(&c.cgroup));
        assert_eq!(l.failed, 0, "{:?} {} {proto}: attempts failed", c.family, c.entries);
        l.ns_per_op as f64
    };
    let mut m = Measured::default();
    for round in 0..rounds {
        for proto in PROTOS {
            // No filter before and after every candidate: each candidate is compared with
            // the mean of its two neighbours, which cancels drift. A different order each
            // round, so that what drift remains favours no one.
            let mut before = measure(&none, proto);
            m.ns.entry((Family::None, 0, proto)).or_default().push(before);
            let k = candidates.len();
            for j in 0..k {
                let c = &candidates[(j + round) % k];
                let x = measure(c, proto);
                let after = measure(&none, proto);
                m.ns.entry((Family::None, 0, proto)).or_default().push(after);
                m.ns.entry((c.family, c.entries, proto)).or_default().push(x);
                m.ratio
                    .entry((c.family, c.entries, proto))
                    .or_default()
                    .push(x / ((before + after) / 2.0));
                before = after;
            }
        }
    }
    // Then, with the kernel's accounting on, the time spent in netcontrol's programs: rounds
    // over every size in turn, so that drift does not pass for growth with the entry count.
    let stats = progstats::StatsOn::enable();
    let ours: Vec<(&Config, Vec<progstats::Program>)> = candidates
        .iter()
        .filter(|c| c.family == Family::Netcontrol)
        .map(|c| (c, progstats::attached(&c.cgroup)))
        .collect();
    for _ in 0..rounds.min(7) {
        for (c, progs) in &ours {
            for proto in PROTOS {
                let t = progstats::per_attempt(progs, || {
                    run_loop(proto, ms, &target(), None, Some(&c.cgroup)).ops
                });
                m.program.entry((c.entries, proto)).or_default().push(progstats::total(&t));
                for (name, cost) in t {
                    m.by_program.entry((c.entries, proto, name)).or_default().push(cost);
                }
            }
        }
    }
    drop(stats);
    drop(keep);
    drop(namespaces);
    report(&m, sizes, rounds, ms, opts)
}

/// What the connect scenario measured, by (family, entries, protocol).
#[derive(Default)]
struct Measured<'a> {
    /// ns per attempt, one per measurement.
    ns: BTreeMap<(Family, usize, &'a str), Vec<f64>>,
    /// Each candidate measurement over the mean of the no-filter ones around it.
    ratio: BTreeMap<(Family, usize, &'a str), Vec<f64>>,
    /// netcontrol only, by (entries, protocol): ns in its programs per attempt.
    program: BTreeMap<(usize, &'a str), Vec<f64>>,
    /// The same by program.
    by_program: BTreeMap<(usize, &'a str, String), Vec<progstats::Cost>>,
}

fn report(m: &Measured, sizes: &[usize], rounds: usize, ms: u64, opts: &Opts) -> Section {
    let of = |map: &BTreeMap<(Family, usize, &str), Vec<f64>>, f: Family, n: usize, p: &str| {
        summarize(map.get(&(f, n, p)).map_or(&[][..], |v| v))
    };
    let ns = |f: Family, n: usize, p: &str| of(&m.ns, f, n, p);
    let ratio = |f: Family, n: usize, p: &str| of(&m.ratio, f, n, p);
    let program =
        |n: usize, p: &str| summarize(m.program.get(&(n, p)).map_or(&[][..], |v| v)).median;
    let none: BTreeMap<&str, Summary> =
        PROTOS.iter().map(|p| (*p, ns(Family::None, 0, p))).collect();
    let mut body = String::new();
    let _ = writeln!(
        body,
        "socket(), connect() and close() to a listening server on 127.0.0.1 in a tight loop, \
         {ms} ms per measurement, {rounds} rounds. TCP: the full handshake, closed with a reset \
         (no TIME_WAIT). UDP: connect() and one 1-byte datagram. The client runs on the first \
         CPU and the server on the last. Each configuration allows the server after N entries \
         that do not match it: netcontrol `N` /32 rules (one LPM lookup), iptables N OUTPUT \
         rules before the matching one (after an `ESTABLISHED,RELATED` accept, so only a \
         connection's first packet walks them; the nft backend of Debian's iptables), nftables \
         one `ipv4_addr . inet_service` hash set of N+1 elements.\n\n\
         Every measurement of a configuration sits between two of no filter, and × is its \
         ratio to their mean (median over rounds): this pairing cancels the drift of a shared \
         machine, which is larger than the effects measured here. ns per attempt: median \
         (smallest–largest measurement).\n"
    );
    let _ = writeln!(
        body,
        "| configuration | N | TCP ns | × | UDP ns | × |\n|---|---:|---:|---:|---:|---:|"
    );
    let cell = |s: Summary| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max);
    let _ = writeln!(
        body,
        "| no filter | – | {} | 1.00 | {} | 1.00 |",
        cell(none["tcp"]),
        cell(none["udp"])
    );
    let mut series: Vec<chart::Series> = Vec::new();
    for (color, family) in
        [Family::Netcontrol, Family::Iptables, Family::Nftables].into_iter().enumerate()
    {
        for p in PROTOS {
            let points = sizes.iter().map(|&n| (n as f64, ratio(family, n, p).median)).collect();
            series.push(chart::Series { label: family.name().into(), color, proto: p, points });
        }
        for &n in sizes {
            let _ = writeln!(
                body,
                "| {} | {} | {} | {:.3} | {} | {:.3} |",
                family.name(),
                count(n as u64),
                cell(ns(family, n, "tcp")),
                ratio(family, n, "tcp").median,
                cell(ns(family, n, "udp")),
                ratio(family, n, "udp").median,
            );
        }
    }
    let _ = writeln!(
        body,
        "\nTime inside netcontrol's programs per attempt — every program attached to the \
         client's cgroup: sock_create and connect4 once, skb egress and skb ingress for each \
         packet of the client's socket (the per-packet programs) —, from the kernel's accounting (`kernel.bpf_stats_enabled`, on only for this; its two clock \
         reads per program run are included), median of {} measurements, and its share of an \
         attempt with no filter. This is what netcontrol adds to connect(), measured exactly.\n",
        rounds.min(7)
    );
    let _ = writeln!(body, "| N | TCP ns | share | UDP ns | share |\n|---:|---:|---:|---:|---:|");
    for &n in sizes {
        let (t, u) = (program(n, "tcp"), program(n, "udp"));
        let _ = writeln!(
            body,
            "| {} | {t:.0} | {:.1}% | {u:.0} | {:.1}% |",
            count(n as u64),
            100.0 * t / none["tcp"].median,
            100.0 * u / none["udp"].median
        );
    }
    // Which program costs what, at the largest policy: the per-packet ones are the new hot path.
    let biggest = *sizes.last().expect("sizes");
    let names: BTreeSet<&str> = m
        .by_program
        .keys()
        .filter(|(n, _, _)| *n == biggest)
        .map(|(_, _, name)| name.as_str())
        .collect();
    let _ = writeln!(
        body,
        "\nBy program, at {} entries: ns per attempt (median), how often it ran per attempt, \
         and ns per run. `nc_sock_create` returns at once for TCP and UDP sockets: its time per \
         run is about what running a program and the accounting itself cost, which every run \
         of the others includes too.\n\n\
         | program | TCP ns | runs | ns/run | UDP ns | runs | ns/run |\n\
         |---|---:|---:|---:|---:|---:|---:|",
        count(biggest as u64)
    );
    for name in names {
        let per = |p: &str| match m.by_program.get(&(biggest, p, name.to_owned())) {
            None => "– | – | –".to_owned(),
            Some(v) => {
                let ns = summarize(&v.iter().map(|c| c.ns).collect::<Vec<_>>()).median;
                let runs = summarize(&v.iter().map(|c| c.runs).collect::<Vec<_>>()).median;
                format!("{ns:.0} | {runs:.1} | {:.0}", ns / runs.max(f64::MIN_POSITIVE))
            }
        };
        let _ = writeln!(body, "| `{name}` | {} | {} |", per("tcp"), per("udp"));
    }
    if let Some(dir) = &opts.out {
        for p in PROTOS {
            let file = format!("connect-{p}.png");
            let s: Vec<&chart::Series> = series.iter().filter(|s| s.proto == p).collect();
            chart::ratio_over_entries(
                &dir.join(&file),
                &format!("{} connect cost vs. no filter", p.to_uppercase()),
                &s,
            );
            let _ = writeln!(body, "\n![{p} connect cost over the number of entries]({file})");
        }
    }
    let smallest = sizes[0];
    let mut goals = Vec::new();
    for p in PROTOS {
        let r = ratio(Family::Netcontrol, biggest, p);
        let share = program(biggest, p) / none[p].median;
        let met = r.median <= 1.05;
        let mut detail = format!(
            "{:.3} × no filter ({:.3}–{:.3}); in netcontrol's programs: {:.0} ns, {:.1}% of an \
             attempt",
            r.median,
            r.min,
            r.max,
            program(biggest, p),
            100.0 * share
        );
        if !met {
            // Say why: the programs' own time against the machine's noise.
            let spread = (none[p].max - none[p].min) / none[p].median;
            let _ = write!(
                detail,
                ". Missed {}. The rest is the hook's own cost, paid before any program runs \
                 (for UDP the kernel takes the socket lock around connect4 programs), and \
                 noise: no filter alone varied by {:.0}% between measurements on this machine",
                if share <= 0.05 {
                    "end to end only: netcontrol's programs stay under 5%"
                } else {
                    "in netcontrol's programs too"
                },
                100.0 * spread
            );
        }
        goals.push(Goal {
            what: format!(
                "{} connect within 5% of no filter at {} entries",
                p.to_uppercase(),
                count(biggest as u64)
            ),
            met,
            detail,
        });
        // Flat: the entry count moves the time in the programs by under 1% of an attempt.
        // The end-to-end ratios are shown too, but their noise is larger than that.
        let growth = program(biggest, p) - program(smallest, p);
        let ratios: Vec<String> = sizes
            .iter()
            .map(|&n| format!("{:.3}", ratio(Family::Netcontrol, n, p).median))
            .collect();
        goals.push(Goal {
            what: format!("{} connect cost flat in the entry count", p.to_uppercase()),
            met: growth <= 0.01 * none[p].median,
            detail: format!(
                "in the programs {:.0} → {:.0} ns from {} to {} entries ({:+.1}% of an attempt; \
                 flat means under 1%); end to end {}",
                program(smallest, p),
                program(biggest, p),
                count(smallest as u64),
                count(biggest as u64),
                100.0 * growth / none[p].median,
                ratios.join(" → ")
            ),
        });
    }
    Section { title: "Connect cost against the number of entries".into(), body, goals }
}

/// A denied connect (EPERM) against an allowed one, from the same sandbox.
pub fn denied(opts: &Opts) -> Section {
    let (rounds, ms) = if opts.smoke { (1, 100) } else { (7, 300) };
    let dir = tempfile::tempdir().expect("tempdir");
    let _server = server(None);
    let cg = TestCgroup::new();
    // Events are read and written out as usual (to /dev/null), as they would be in use.
    let _nc = attach(&cg.path, 10, dir.path(), "/dev/null");
    let denied_target = format!("127.0.0.10:{PORT}");
    let measure = |p: &str, allowed: bool| {
        let t = if allowed { target() } else { denied_target.clone() };
        let l = run_loop(p, ms, &t, None, Some(&cg.path));
        if allowed {
            assert_eq!(l.failed, 0, "allowed {p} attempts failed");
        } else {
            assert_eq!(l.failed, l.ops, "denied {p} attempts got through");
        }
        l
    };
    let mut ns: BTreeMap<(&str, bool), Vec<f64>> = BTreeMap::new();
    let mut ratio: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for p in PROTOS {
            // Denied and allowed back to back, in alternating order; each pair gives a ratio.
            let first_allowed = round % 2 == 1;
            let a = measure(p, first_allowed).ns_per_op as f64;
            let b = measure(p, !first_allowed).ns_per_op as f64;
            let (d, al) = if first_allowed { (b, a) } else { (a, b) };
            ns.entry((p, false)).or_default().push(d);
            ns.entry((p, true)).or_default().push(al);
            ratio.entry(p).or_default().push(d / al);
        }
    }
    let stats = progstats::StatsOn::enable();
    let progs = progstats::attached(&cg.path);
    let mut program: BTreeMap<(&str, bool), f64> = BTreeMap::new();
    for p in PROTOS {
        for allowed in [true, false] {
            let t = progstats::per_attempt(&progs, || measure(p, allowed).ops);
            program.insert((p, allowed), progstats::total(&t));
        }
    }
    drop(stats);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "From one sandbox: attempts to a denied address ({denied_target}: EPERM from connect(), \
         no packet) and to the allowed server ({}), back to back, {rounds} rounds of {ms} ms \
         each. Every denied attempt is counted and becomes an event, read and written out as in \
         use. ns per attempt, median (smallest–largest); the ratio is the median over the \
         pairs; \"in programs\" is the time inside netcontrol's programs per attempt (kernel \
         accounting, as above).\n",
        target()
    );
    let _ = writeln!(
        body,
        "| protocol | denied | allowed | denied / allowed | in programs, denied | in programs, allowed |\n\
         |---|---:|---:|---:|---:|---:|"
    );
    let mut goals = Vec::new();
    for p in PROTOS {
        let (d, a) = (summarize(&ns[&(p, false)]), summarize(&ns[&(p, true)]));
        let r = summarize(&ratio[p]);
        let _ = writeln!(
            body,
            "| {} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:.2} | {:.0} | {:.0} |",
            p.to_uppercase(),
            d.median,
            d.min,
            d.max,
            a.median,
            a.min,
            a.max,
            r.median,
            program[&(p, false)],
            program[&(p, true)],
        );
        goals.push(Goal {
            what: format!("a denied {} connect is no slower than an allowed one", p.to_uppercase()),
            met: r.median <= 1.0,
            detail: format!(
                "{:.0} ns denied, {:.0} ns allowed ({:.2} ×)",
                d.median, a.median, r.median
            ),
        });
    }
    let _ = writeln!(
        body,
        "\nA denial costs more inside the programs than an allowance (the event: a ring buffer \
         record, and a wakeup of the reader at most every {} ms per CPU) but the attempt ends \
         there, with no handshake or datagram.",
        netcontrol_common::verdict::WAKEUP_INTERVAL_NS / 1_000_000
    );
    Section { title: "A denied connect against an allowed one".into(), body, goals }
}
