//! What a connection attempt costs: socket, connect and close on loopback (TCP; UDP with one
//! datagram) with no filter, netcontrol, iptables and nftables, each holding the same number
//! of allow entries; and a denied attempt against an allowed one.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use netcontrol_tests::{Background, TestCgroup, netcontrol_bin, probe_bin};

use crate::{
    Goal, Opts, Section, chart,
    measure::{Summary, count, run_loop, summarize},
    netns::Netns,
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
    let mut cmd = match netns {
        Some(ns) => ns.command(probe_bin()),
        None => Command::new(probe_bin()),
    };
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
    let (rounds, ms) = if opts.smoke { (1, 100) } else { (7, 300) };
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = TestCgroup::new();
    let _server = server(None);
    let mut configs =
        vec![Config { family: Family::None, entries: 0, netns: None, cgroup: plain.path.clone() }];
    let mut keep = Vec::new();
    for &n in sizes {
        eprintln!("nc-bench: connect: setting up {n} entries");
        let cg = TestCgroup::new();
        let nc = attach(&cg.path, n, dir.path(), "/dev/null");
        configs.push(Config {
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
            configs.push(Config {
                family,
                entries: n,
                netns: Some(ns.path.clone()),
                cgroup: plain.path.clone(),
            });
            keep_ns(ns, srv);
        }
    }
    let mut results: BTreeMap<(Family, usize, &str), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        // A different order each round, so that drift favours no one.
        let k = configs.len();
        for j in 0..k {
            let c = &configs[(j + round) % k];
            for proto in PROTOS {
                let l = run_loop(proto, ms, &target(), c.netns.as_deref(), Some(&c.cgroup));
                assert_eq!(l.failed, 0, "{:?} {} {proto}: attempts failed", c.family, c.entries);
                results.entry((c.family, c.entries, proto)).or_default().push(l.ns_per_op as f64);
            }
        }
    }
    drop(keep);
    report(&results, sizes, rounds, ms, opts)
}

/// Namespaces and their servers live until the process ends (they are few).
fn keep_ns(ns: Netns, server: Background) {
    std::mem::forget((ns, server));
}

fn report(
    results: &BTreeMap<(Family, usize, &str), Vec<f64>>,
    sizes: &[usize],
    rounds: usize,
    ms: u64,
    opts: &Opts,
) -> Section {
    let get =
        |f: Family, n: usize, p: &str| summarize(results.get(&(f, n, p)).map_or(&[][..], |v| v));
    let none: BTreeMap<&str, Summary> =
        PROTOS.iter().map(|p| (*p, get(Family::None, 0, p))).collect();
    let mut body = String::new();
    let _ = writeln!(
        body,
        "socket(), connect() and close() to a listening server on 127.0.0.1 in a tight loop, \
         {ms} ms per measurement, {rounds} rounds, every configuration once per round in a \
         rotating order. TCP: the full handshake, closed with a reset (no TIME_WAIT). UDP: \
         connect() and one 1-byte datagram. Each configuration allows the server after N \
         entries that do not match it: netcontrol `N` /32 rules (one LPM lookup), iptables N \
         OUTPUT rules before the matching one (after an `ESTABLISHED,RELATED` accept, so only \
         a connection's first packet walks them; the nft backend of Debian's iptables), nftables \
         one `ipv4_addr . inet_service` hash set of N+1 elements. ns per attempt, median \
         (smallest–largest round), and the ratio to no filter.\n"
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
    for family in [Family::Netcontrol, Family::Iptables, Family::Nftables] {
        for p in PROTOS {
            let points = sizes
                .iter()
                .map(|&n| (n as f64, get(family, n, p).median / none[p].median))
                .collect();
            series.push(chart::Series { label: family.name().into(), proto: p, points });
        }
        for &n in sizes {
            let (t, u) = (get(family, n, "tcp"), get(family, n, "udp"));
            let _ = writeln!(
                body,
                "| {} | {} | {} | {:.2} | {} | {:.2} |",
                family.name(),
                count(n as u64),
                cell(t),
                t.median / none["tcp"].median,
                cell(u),
                u.median / none["udp"].median
            );
        }
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
    let biggest = *sizes.last().expect("sizes");
    let mut goals = Vec::new();
    for p in PROTOS {
        let ratio = get(Family::Netcontrol, biggest, p).median / none[p].median;
        goals.push(Goal {
            what: format!(
                "{} connect within 5% of no filter at {} entries",
                p.to_uppercase(),
                count(biggest as u64)
            ),
            met: ratio <= 1.05,
            detail: format!("{ratio:.3} × no filter"),
        });
        let ratios: Vec<f64> =
            sizes.iter().map(|&n| get(Family::Netcontrol, n, p).median / none[p].median).collect();
        let spread = ratios.iter().copied().fold(f64::MIN, f64::max)
            - ratios.iter().copied().fold(f64::MAX, f64::min);
        goals.push(Goal {
            what: format!("{} connect cost flat in the entry count", p.to_uppercase()),
            met: spread <= 0.05,
            detail: format!(
                "{} from {} to {} entries",
                ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" → "),
                count(sizes[0] as u64),
                count(biggest as u64)
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
    let mut m: BTreeMap<(&str, bool), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for allowed in order {
            for p in PROTOS {
                let t = if allowed { target() } else { denied_target.clone() };
                let l = run_loop(p, ms, &t, None, Some(&cg.path));
                if allowed {
                    assert_eq!(l.failed, 0, "allowed {p} attempts failed");
                } else {
                    assert_eq!(l.failed, l.ops, "denied {p} attempts got through");
                }
                m.entry((p, allowed)).or_default().push(l.ns_per_op as f64);
            }
        }
    }
    let mut body = String::new();
    let _ = writeln!(
        body,
        "From one sandbox: attempts to a denied address ({denied_target}: EPERM from connect(), \
         no packet) and to the allowed server ({}), alternating, {rounds} rounds of {ms} ms. \
         Every denied attempt is counted and becomes an event, read and written out as in use. \
         ns per attempt, median (smallest–largest).\n",
        target()
    );
    let _ =
        writeln!(body, "| protocol | denied | allowed | denied / allowed |\n|---|---:|---:|---:|");
    let mut goals = Vec::new();
    for p in PROTOS {
        let (d, a) = (summarize(&m[&(p, false)]), summarize(&m[&(p, true)]));
        let _ = writeln!(
            body,
            "| {} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:.2} |",
            p.to_uppercase(),
            d.median,
            d.min,
            d.max,
            a.median,
            a.min,
            a.max,
            d.median / a.median
        );
        goals.push(Goal {
            what: format!("a denied {} connect is no slower than an allowed one", p.to_uppercase()),
            met: d.median <= a.median,
            detail: format!("{:.0} ns denied, {:.0} ns allowed", d.median, a.median),
        });
    }
    Section { title: "A denied connect against an allowed one".into(), body, goals }
}
