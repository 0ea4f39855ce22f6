//! Domain rules in resolver mode (netcontrol resolves names itself) against a real dnsmasq
//! (started by each test on its own loopback): resolution, following address changes, rotation
//! within the grace window, NXDOMAIN, DNS outages, reloading the policy, and the sandbox's
//! access to its resolver. DNS-aware (proxy) mode is tested in dns_aware.rs.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netcontrol_tests::{
    Attached, HttpServer, TEST_PIN_ROOT, dns::Dnsmasq, dns::private_resolv_conf, find_event,
    isolate_network, kernel_tests_enabled, netcontrol_bin, policy_file, servers, show, tcp, within,
    write_atomic as write,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::json;

/// An address change in DNS is allowed within TTL + 1 s, and the old address goes after its TTL.
#[test]
fn follows_an_address_change_within_ttl_plus_one_second() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 2);
    dns.set("api.github.com", &["127.0.0.20"]);
    let (_srv, port) = servers(&["127.0.0.20", "127.0.0.21"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_file(
        dir.path(),
        &format!(
            "allow:\n  - api.github.com:{port}\ndns:\n  mode: resolver\n  rebinding: allow\n  servers: [127.0.0.53]\n  min_ttl: 1s\n  grace: 0s\n"
        ),
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    assert!(tcp(&sb, "127.0.0.20", port).ok, "resolved before attaching");
    assert!(tcp(&sb, "127.0.0.21", port).is_eperm());

    dns.set("api.github.com", &["127.0.0.21"]);
    let took = within(Duration::from_secs(6), || tcp(&sb, "127.0.0.21", port).ok)
        .expect("the new address allowed");
    // dns.set waited 0.3 s for dnsmasq to reload; the budget is TTL (2 s) + 1 s.
    assert!(took <= Duration::from_millis(2700), "took {took:?}");
    within(Duration::from_secs(6), || tcp(&sb, "127.0.0.20", port).is_eperm())
        .expect("the old address expires");
    sb.stop();
}

/// Addresses rotating in and out of the answers stay allowed for the grace window: a client
/// holding any address it was given is never blocked.
#[test]
fn rotation_never_blocks_within_the_grace_window() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 1);
    let ips = ["127.0.0.20", "127.0.0.21", "127.0.0.22"];
    let (_srv, port) = servers(&ips);
    dns.set("cdn.example.test", &ips[..2]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_file(
        dir.path(),
        &format!(
            "allow:\n  - cdn.example.test:{port}\ndns:\n  mode: resolver\n  rebinding: allow\n  servers: [127.0.0.53]\n  min_ttl: 1s\n  grace: 60s\n"
        ),
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    // (address, when a client could first have it): announced addresses get TTL + 1 s to be
    // learned; after that every probe of every address ever announced must pass.
    let mut announced: Vec<(&str, Instant)> =
        ips[..2].iter().map(|ip| (*ip, Instant::now())).collect();
    let rounds: [&[&str]; 3] = [&ips[2..], &ips[..1], &ips[1..2]];
    for round in rounds {
        dns.set("cdn.example.test", round);
        let now = Instant::now();
        for ip in round {
            if !announced.iter().any(|(a, _)| a == ip) {
                announced.push((ip, now + Duration::from_secs(2)));
            }
        }
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            for (ip, from) in &announced {
                if Instant::now() >= *from {
                    let p = tcp(&sb, ip, port);
                    assert!(p.ok, "{ip} blocked during the grace window: {p:?}");
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    sb.stop();
}

/// NXDOMAIN is reported by name; the other rules work.
#[test]
fn nxdomain_names_are_reported() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 5);
    dns.set("api.github.com", &["127.0.0.20"]);
    let (_srv, port) = servers(&["127.0.0.20"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_file(
        dir.path(),
        &format!(
            "allow:\n  - api.github.com:{port}\n  - nosuch.example.test:{port}\n  - \"*.wild.example.test\"\ndns:\n  mode: resolver\n  rebinding: allow\n  servers: [127.0.0.53]\n"
        ),
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    assert!(tcp(&sb, "127.0.0.20", port).ok);
    let all = sb.stop();
    assert!(
        all.contains(
            "nosuch.example.test: no such domain (NXDOMAIN); nothing is allowed for it; retrying"
        ),
        "{all}"
    );
    assert!(
        all.contains("*.wild.example.test: wildcard rules cannot be resolved in advance"),
        "{all}"
    );
}

/// When DNS stops answering, the last known addresses stay allowed (stale-if-error), and that
/// is reported.
#[test]
fn dns_down_keeps_the_last_known_addresses() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let mut dns = Dnsmasq::start("127.0.0.53", 1);
    dns.set("api.github.com", &["127.0.0.20"]);
    let (_srv, port) = servers(&["127.0.0.20"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_file(
        dir.path(),
        &format!(
            "allow:\n  - api.github.com:{port}\ndns:\n  mode: resolver\n  rebinding: allow\n  servers: [127.0.0.53]\n  min_ttl: 1s\n  grace: 0s\n  timeout: 500ms\n"
        ),
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    assert!(tcp(&sb, "127.0.0.20", port).ok);
    dns.stop();
    // Well past TTL + grace: without stale-if-error it would be gone.
    std::thread::sleep(Duration::from_secs(4));
    assert!(tcp(&sb, "127.0.0.20", port).ok, "kept while DNS is down");
    let line = sb.wait_for_line("api.github.com: DNS lookup failed", Duration::from_secs(5));
    assert!(line.contains("keeping its 1 last known address"), "{line}");
    sb.stop();
}

/// SIGHUP with a broken file: the error names the line, the old policy stays. A valid change
/// is picked up from the file by itself. Addresses both policies allow are never interrupted.
#[test]
fn reload_validates_first_and_adds_before_it_removes() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let (_srv, port) = servers(&["127.0.0.20", "127.0.0.21", "127.0.0.22"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = format!("allow:\n  - 127.0.0.20:{port}\n  - 127.0.0.21:{port}\n");
    let v2 = format!("allow:\n  - 127.0.0.21:{port}\n  - 127.0.0.22:{port}\n");
    let policy = policy_file(dir.path(), &v1);
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    assert!(tcp(&sb, "127.0.0.20", port).ok);

    write(&policy, "allow:\n  - 127.0.0.20:{port\n  - bogus: 1\n");
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(sb.pid() as i32), Signal::SIGHUP).expect("SIGHUP");
    let line = sb.wait_for_line(&format!("{}:", policy.display()), Duration::from_secs(5));
    assert!(line.contains(":2:") || line.contains(":3:"), "names the line: {line}");
    sb.wait_for_line("keeping the previous policy", Duration::from_secs(5));
    assert!(tcp(&sb, "127.0.0.20", port).ok, "the old policy is still enforced");
    assert!(tcp(&sb, "127.0.0.22", port).is_eperm());

    // Hammer the address both versions allow while the file flips between them.
    let script = format!(
        "import socket, time\nfails = 0\nend = time.time() + 4\nwhile time.time() < end:\n    try:\n        socket.create_connection(('127.0.0.21', {port}), timeout=2).close()\n    except OSError:\n        fails += 1\nprint(fails)\n"
    );
    let hammer = sb
        .cgroup
        .command("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    for i in 0..6 {
        write(&policy, if i % 2 == 0 { &v2 } else { &v1 });
        sb.wait_for_line("policy file changed: reloaded", Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = hammer.wait_with_output().expect("hammer");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "connections to 127.0.0.21 failed during reloads"
    );
    // The last write was v1: .20 allowed again, .22 not.
    assert!(tcp(&sb, "127.0.0.20", port).ok && tcp(&sb, "127.0.0.22", port).is_eperm());
    sb.stop();
}

/// Events for an address netcontrol resolved carry the domain.
#[test]
fn events_name_the_domain() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 5);
    dns.set("api.github.com", &["127.0.0.20"]);
    let (_srv, port) = servers(&["127.0.0.20"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_file(
        dir.path(),
        &format!(
            "allow:\n  - api.github.com:{port}/tcp\ndns:\n  mode: resolver\n  rebinding: allow\n  servers: [127.0.0.53]\n"
        ),
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    let p = sb.probe(&[("udp-sendto", &format!("127.0.0.20:{port}"))]).remove(0);
    assert!(p.is_eperm(), "UDP is not allowed: {p:?}");
    find_event(
        &sb.events_at_least(1),
        &[
            ("dst_ip", json!("127.0.0.20")),
            ("domain", json!("api.github.com")),
            ("reason", json!("port_not_allowed")),
        ],
    );
    sb.stop();
}

/// The sandbox can use its resolver (UDP and TCP 53) and no other, and nothing else on it.
#[test]
fn the_sandbox_reaches_its_resolver_only() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 5);
    dns.set("api.github.com", &["127.0.0.20"]);
    let other = Dnsmasq::start("127.0.0.54", 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_file(
        dir.path(),
        "allow:\n  - api.github.com:443\ndns:\n  mode: resolver\n  rebinding: allow\n  servers: [127.0.0.53]\n",
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    let r = sb.probe(&[
        ("udp-sendto", "127.0.0.53:53"),
        ("tcp", "127.0.0.53:53"),
        ("udp-sendto", "127.0.0.54:53"),
        ("tcp", "127.0.0.54:53"),
    ]);
    assert!(r[0].ok && r[1].ok, "{r:?}");
    assert!(r[2].is_eperm() && r[3].is_eperm(), "{r:?}");
    // A real lookup from inside works through the allowed server only.
    let ok = sb.sh_inside("dig +short +time=1 +tries=1 @127.0.0.53 api.github.com");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "127.0.0.20", "{ok:?}");
    let blocked = sb.sh_inside("dig +short +time=1 +tries=1 @127.0.0.54 api.github.com");
    assert!(!blocked.status.success(), "{blocked:?}");
    drop(other);
    sb.stop();
}

/// The acceptance check: `run --policy` with `allow: [api.github.com:443]` lets CMD reach
/// the address dnsmasq gives for api.github.com and nothing else, and follows dnsmasq when that
/// address changes. CMD resolves through its own /etc/resolv.conf, like any program.
#[test]
fn run_follows_dnsmasq_for_an_allowed_name() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 2);
    let _resolv = private_resolv_conf(dns.addr);
    dns.set("api.github.com", &["127.0.0.20"]);
    let _http: Vec<HttpServer> = ["127.0.0.20", "127.0.0.21", "127.0.0.30"]
        .iter()
        .map(|ip| HttpServer::start(ip, 443))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_file(
        dir.path(),
        "allow: [api.github.com:443]\ndns:\n  mode: resolver\n  rebinding: allow\n  min_ttl: 1s\n  grace: 0s\n",
    );
    let flag = dir.path().join("go");
    let curl = "curl -sS -m 5 -o /dev/null -w '%{remote_ip}\\n'";
    let script = format!(
        "{curl} http://api.github.com:443/ || echo failed\n\
         while [ ! -e {flag} ]; do sleep 0.1; done\n\
         {curl} http://api.github.com:443/ || echo failed\n\
         curl -sS -m 5 -o /dev/null http://127.0.0.30:443/ || echo blocked $?\n",
        flag = flag.display()
    );
    let mut child = Command::new(netcontrol_bin())
        .args(["run", "--policy", policy.to_str().expect("utf8"), "--", "sh", "-c", &script])
        .env("NETCONTROL_PIN_ROOT", TEST_PIN_ROOT)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netcontrol run");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("first curl");
    assert_eq!(first.trim(), "127.0.0.20");
    dns.set("api.github.com", &["127.0.0.21"]);
    std::thread::sleep(Duration::from_secs(3)); // TTL + 1 s: CMD's own resolver may cache
    std::fs::write(&flag, "").expect("flag");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("rest");
    let out = child.wait_with_output().expect("netcontrol");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(lines, ["127.0.0.21", "blocked 7"], "stderr: {stderr}");
    assert!(
        stderr.contains("tcp connect to 127.0.0.30:443: not allowlisted (Operation not permitted)"),
        "{stderr}"
    );
    assert!(out.status.success(), "{}", show(&out));
}

/// `--allow` takes domains too; without `dns.servers` they are resolved through the
/// nameservers of /etc/resolv.conf (here the test's private one), which the sandbox may reach.
#[test]
fn allow_flag_domains_use_resolv_conf() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 5);
    let _resolv = private_resolv_conf(dns.addr);
    dns.set("api.github.com", &["127.0.0.20"]);
    let (_srv, port) = servers(&["127.0.0.20", "127.0.0.21"]);
    let mut sb = Attached::start(&[
        "--dns-mode",
        "resolver",
        "--dns-rebinding",
        "allow",
        "--allow",
        &format!("API.GitHub.com.:{port}"),
    ]);
    assert!(tcp(&sb, "127.0.0.20", port).ok);
    assert!(tcp(&sb, "127.0.0.21", port).is_eperm());
    let r = sb.probe(&[("udp-sendto", "127.0.0.53:53"), ("udp-sendto", "127.0.0.54:53")]);
    assert!(r[0].ok && r[1].is_eperm(), "{r:?}");
    sb.stop();
}
