//! Every hook against the real kernel, through `netcontrol attach` on a test cgroup: the
//! allowed destination succeeds, the denied one fails with EPERM at once, the same attempt
//! from outside the cgroup is unaffected, and the right event is written.

use std::time::Duration;

use netcontrol_tests::{
    Attached, Probe, Server, find_event, isolate_network, kernel_tests_enabled, probe_outside,
};
use serde_json::{Value, json};

/// No timeout involved: EPERM comes back from the syscall itself.
const PROMPT: Duration = Duration::from_secs(1);

fn assert_allowed(p: &Probe) {
    assert!(p.ok, "{} {} should be allowed: {p:?}", p.op, p.target);
}

fn assert_denied(p: &Probe) {
    assert!(p.is_eperm(), "{} {} should fail with EPERM: {p:?}", p.op, p.target);
    assert!(p.elapsed < PROMPT, "EPERM took {:?}", p.elapsed);
}

fn port(target: &str) -> Value {
    json!(target.rsplit_once(':').expect("port").1.parse::<u16>().expect("port"))
}

/// The usual shape: allow `allowed` by an exact rule, probe both with `op`, check the event.
fn address_case(op: &str, allowed: &Server, denied: &Server, expect: &[(&str, Value)]) {
    let rule = allowed.target();
    let mut sb = Attached::start(&["--allow", &rule]);
    let r = sb.probe(&[(op, &allowed.target()), (op, &denied.target())]);
    assert_allowed(&r[0]);
    assert_denied(&r[1]);
    assert_allowed(&probe_outside(op, &denied.target()));
    let events = sb.events_at_least(1);
    let mut fields = vec![
        ("verdict", json!("blocked")),
        ("reason", json!("not_allowlisted")),
        ("dst_ip", json!(denied.addr.ip().to_string())),
        ("dst_port", port(&denied.target())),
        ("comm", json!("nc-probe")),
        ("sandbox_id", json!(sb.cgroup.id())),
    ];
    fields.extend(expect.iter().cloned());
    let e = find_event(&events, &fields);
    assert!(e["pid"].as_u64().is_some_and(|p| p > 0) && e["uid"] == json!(0), "{e}");
    // Nothing was reported for the allowed destination.
    assert!(!events.iter().any(|e| e["dst_port"] == port(&allowed.target())), "{events:?}");
    sb.stop();
}

/// [`address_case`] between 127.0.0.11 (allowed) and 127.0.0.10 (denied), in a private
/// network namespace.
fn v4_case(op: &str, expect: &[(&str, Value)]) {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    address_case(op, &Server::start("127.0.0.11"), &Server::start("127.0.0.10"), expect);
}

/// Allowed and denied IPv6 servers on this test's private loopback.
fn v6_servers() -> Option<(Server, Server)> {
    if !kernel_tests_enabled() {
        return None;
    }
    isolate_network(&["fd00:a::10", "fd00:a::11"]);
    Some((Server::start("fd00:a::11"), Server::start("fd00:a::10")))
}

#[test]
fn tcp_connect() {
    v4_case(
        "tcp",
        &[
            ("hook", json!("connect4")),
            ("protocol", json!("tcp")),
            ("family", json!("ipv4")),
            ("event", json!("egress")),
        ],
    );
}

#[test]
fn udp_connect() {
    v4_case("udp-connect", &[("hook", json!("connect4")), ("protocol", json!("udp"))]);
}

#[test]
fn unconnected_udp_sendto() {
    v4_case("udp-sendto", &[("hook", json!("sendmsg4")), ("protocol", json!("udp"))]);
}

#[test]
fn sendmmsg() {
    v4_case("udp-sendmmsg", &[("hook", json!("sendmsg4")), ("protocol", json!("udp"))]);
}

#[test]
fn tcp_fast_open_sendto() {
    v4_case("tfo-sendto", &[("hook", json!("connect4")), ("protocol", json!("tcp"))]);
}

#[test]
fn tcp_fast_open_connect() {
    v4_case("tfo-connect", &[("hook", json!("connect4")), ("protocol", json!("tcp"))]);
}

#[test]
fn ipv6_tcp() {
    let Some((allowed, denied)) = v6_servers() else { return };
    address_case(
        "tcp",
        &allowed,
        &denied,
        &[("hook", json!("connect6")), ("family", json!("ipv6")), ("protocol", json!("tcp"))],
    );
}

#[test]
fn ipv6_udp() {
    let Some((allowed, denied)) = v6_servers() else { return };
    address_case(
        "udp-sendto",
        &allowed,
        &denied,
        &[("hook", json!("sendmsg6")), ("family", json!("ipv6")), ("protocol", json!("udp"))],
    );
    address_case(
        "udp-connect",
        &allowed,
        &denied,
        &[("hook", json!("connect6")), ("family", json!("ipv6"))],
    );
}

/// `op` to `::ffff:a.b.c.d` on an IPv6 socket, judged by the IPv4 rules: an IPv4 rule opens it,
/// and even `::/0` does not. The event must have `expect`.
fn v4_mapped_case(op: &str, expect: &[(&str, Value)]) {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let (allowed, denied) = (Server::start("127.0.0.11"), Server::start("127.0.0.10"));
    let mapped = |s: &Server| format!("[::ffff:{}]:{}", s.addr.ip(), s.addr.port());
    let mut sb = Attached::start(&["--allow", &allowed.target(), "--allow", "::/0"]);
    let r = sb.probe(&[(op, &mapped(&allowed)), (op, &mapped(&denied))]);
    assert_allowed(&r[0]);
    assert_denied(&r[1]);
    assert_allowed(&probe_outside(op, &mapped(&denied)));
    let mut fields = vec![
        ("family", json!("ipv4")),
        ("dst_ip", json!("127.0.0.10")),
        ("dst_port", json!(denied.addr.port())),
        ("reason", json!("not_allowlisted")),
    ];
    fields.extend(expect.iter().cloned());
    find_event(&sb.events_at_least(1), &fields);
    sb.stop();
}

#[test]
fn v4_mapped_tcp_connect() {
    v4_mapped_case("tcp", &[("hook", json!("connect6")), ("v4_mapped", json!(true))]);
}

/// An unconnected mapped sendto is turned into an IPv4 send by the kernel (sendmsg4).
#[test]
fn v4_mapped_udp_sendto() {
    v4_mapped_case("udp-sendto", &[("hook", json!("sendmsg4")), ("protocol", json!("udp"))]);
}

#[test]
fn raw_socket() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let mut sb = Attached::start(&["--allow", "0.0.0.0/0"]);
    let r = sb.probe(&[("raw4", "-"), ("raw6", "-")]);
    assert_denied(&r[0]);
    assert_denied(&r[1]);
    assert_allowed(&probe_outside("raw4", "-"));
    let events = sb.events_at_least(2);
    for family in ["ipv4", "ipv6"] {
        find_event(
            &events,
            &[
                ("event", json!("socket")),
                ("hook", json!("sock_create")),
                ("family", json!(family)),
                ("socket_type", json!("raw")),
                ("reason", json!("raw_socket")),
                ("verdict", json!("blocked")),
                ("dst_ip", Value::Null),
            ],
        );
    }
    sb.stop();

    let mut sb = Attached::start(&["--allow-raw-sockets"]);
    assert_allowed(&sb.probe(&[("raw4", "-")])[0]);
    sb.stop();
}

#[test]
fn ping_socket() {
    if !kernel_tests_enabled() {
        return;
    }
    // isolate_network allows ping sockets for everyone in the test's namespace.
    isolate_network(&["127.0.0.10", "127.0.0.11"]);
    let mut sb = Attached::start(&["--allow", "0.0.0.0/0", "--allow", "::/0"]);
    let r = sb.probe(&[("ping4", "-"), ("ping6", "-")]);
    assert_denied(&r[0]);
    assert_denied(&r[1]);
    assert_allowed(&probe_outside("ping4", "-"));
    let events = sb.events_at_least(2);
    find_event(
        &events,
        &[
            ("socket_type", json!("dgram")),
            ("protocol", json!("icmp")),
            ("reason", json!("icmp_socket")),
        ],
    );
    find_event(
        &events,
        &[
            ("family", json!("ipv6")),
            ("protocol", json!("icmpv6")),
            ("reason", json!("icmp_socket")),
        ],
    );
    sb.stop();

    // Allowed ping sockets: where they send is still judged by the address rules, sent
    // unconnected (skb egress, on every kernel) or connected first.
    let mut sb = Attached::start(&["--allow-ping", "--allow", "127.0.0.11"]);
    let r = sb.probe(&[
        ("ping4", "-"),
        ("ping-connect", "127.0.0.11:0"),
        ("ping-sendto", "127.0.0.11:0"),
        ("ping-sendto", "127.0.0.10:0"),
        ("ping-sendto", "[::1]:0"),
    ]);
    assert_allowed(&r[0]);
    assert_allowed(&r[1]);
    // The allowed echo request got its reply; the denied ones never left (no reply).
    assert_allowed(&r[2]);
    assert_denied(&r[3]);
    // An ICMPv6 ping socket's sendto() does not pass the drop on (ping_v6_sendmsg ignores
    // what pushing the frame returned): it "succeeds", and no reply comes.
    assert!(r[4].is_eperm() || r[4].errno == libc::EAGAIN, "{:?}", r[4]);
    let events = sb.events_at_least(2);
    for (family, protocol, dst) in [("ipv4", "icmp", "127.0.0.10"), ("ipv6", "icmpv6", "::1")] {
        find_event(
            &events,
            &[
                ("hook", json!("skb_egress")),
                ("family", json!(family)),
                ("protocol", json!(protocol)),
                ("dst_ip", json!(dst)),
                ("reason", json!("not_allowlisted")),
            ],
        );
    }
    sb.stop();

    // Routing options allowed: still never on a ping socket, whose route would hide where
    // the echo goes.
    let mut sb =
        Attached::start(&["--allow-ping", "--allow-routing-options", "--allow", "127.0.0.0/8"]);
    assert_denied(&sb.probe(&[("lsrr-ping", "127.0.0.11:0/127.0.0.10")])[0]);
    find_event(
        &sb.events_at_least(1),
        &[("hook", json!("skb_egress")), ("reason", json!("source_route"))],
    );
    sb.stop();

    let mut sb = Attached::start(&["--allow-ping", "--allow", "127.0.0.11"]);
    // connect() is judged at once where the kernel runs the connect hooks for ping sockets.
    if netcontrol_tests::kernel_at_least(6, 1, "connect() of ping sockets runs the connect hooks") {
        assert_denied(&sb.probe(&[("ping-connect", "127.0.0.10:0")])[0]);
        find_event(
            &sb.events_at_least(3),
            &[
                ("hook", json!("connect4")),
                ("protocol", json!("icmp")),
                ("dst_ip", json!("127.0.0.10")),
            ],
        );
    }
    sb.stop();
}

/// A process started by a shell started in the sandbox is covered too.
#[test]
fn grandchild_process() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let (allowed, denied) = (Server::start("127.0.0.11"), Server::start("127.0.0.10"));
    let mut sb = Attached::start(&["--allow", &allowed.target()]);
    let py = |s: &Server| {
        format!(
            "python3 -c 'import socket; socket.create_connection((\"{}\", {}), timeout=3); print(\"connected\")'",
            s.addr.ip(),
            s.addr.port()
        )
    };
    let out = sb.sh_inside(&format!("sh -c '{}'", py(&allowed).replace('\'', "'\\''")));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("connected"),
        "{out:?}"
    );
    let out = sb.sh_inside(&format!("sh -c '{}'", py(&denied).replace('\'', "'\\''")));
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{out:?}");
    find_event(
        &sb.events_at_least(1),
        &[("comm", json!("python3")), ("dst_port", json!(denied.addr.port()))],
    );
    sb.stop();
}

/// 169.254.169.254 and fd00:ec2::254 stay closed under 0.0.0.0/0 and ::/0; only a rule naming
/// the exact address opens them. (The addresses live on this test's private loopback.)
#[test]
fn metadata_address_under_default_route() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["169.254.169.254", "fd00:ec2::254"]);
    let (md4, md6, other) = (
        Server::start("169.254.169.254"),
        Server::start("fd00:ec2::254"),
        Server::start("127.0.0.10"),
    );
    let mut sb = Attached::start(&["--allow", "0.0.0.0/0", "--allow", "::/0"]);
    let r = sb.probe(&[("tcp", &other.target()), ("tcp", &md4.target()), ("tcp", &md6.target())]);
    assert_allowed(&r[0]);
    assert_denied(&r[1]);
    assert_denied(&r[2]);
    assert_allowed(&probe_outside("tcp", &md4.target()));
    let events = sb.events_at_least(2);
    find_event(
        &events,
        &[("dst_ip", json!("169.254.169.254")), ("reason", json!("metadata_address"))],
    );
    find_event(
        &events,
        &[("dst_ip", json!("fd00:ec2::254")), ("reason", json!("metadata_address"))],
    );
    sb.stop();

    let exact = md4.target();
    let mut sb = Attached::start(&["--allow", "0.0.0.0/0", "--allow", &exact]);
    let r = sb.probe(&[("tcp", &md4.target()), ("udp-sendto", &md4.target())]);
    assert_allowed(&r[0]);
    assert_allowed(&r[1]);
    sb.stop();
}

#[test]
fn audit_mode_reports_without_blocking() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let (allowed, denied) = (Server::start("127.0.0.11"), Server::start("127.0.0.10"));
    let mut sb = Attached::start(&["--audit", "--allow", &allowed.target()]);
    let r = sb.probe(&[
        ("tcp", &allowed.target()),
        ("tcp", &denied.target()),
        ("udp-sendto", &denied.target()),
        ("raw4", "-"),
    ]);
    r.iter().for_each(assert_allowed);
    let events = sb.events_at_least(3);
    for (hook, reason) in [
        ("connect4", "not_allowlisted"),
        ("sendmsg4", "not_allowlisted"),
        ("sock_create", "raw_socket"),
    ] {
        find_event(
            &events,
            &[("hook", json!(hook)), ("reason", json!(reason)), ("verdict", json!("would_block"))],
        );
    }
    assert!(!events.iter().any(|e| e["verdict"] == json!("blocked")), "{events:?}");
    let stderr = sb.stop();
    assert!(
        stderr.contains("audit mode: 3 connection attempts would have been blocked"),
        "{stderr}"
    );
}

/// Ports and protocols of a rule are enforced, and a covering broader rule still applies to
/// a more specific one (the LPM entries carry both).
#[test]
fn ports_protocols_and_overlapping_prefixes() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let s = Server::start("127.0.0.10");
    let p = s.addr.port();
    let mut sb = Attached::start(&[
        "--allow",
        &format!("127.0.0.0/8:{p}/udp"),
        "--allow",
        &format!("127.0.0.10/32:{}/tcp", p + 1),
    ]);
    let r = sb.probe(&[
        ("udp-sendto", &s.target()),
        ("tcp", &s.target()),
        ("udp-sendto", &format!("127.0.0.10:{}", p + 2)),
    ]);
    assert_allowed(&r[0]);
    assert_denied(&r[1]);
    assert_denied(&r[2]);
    find_event(
        &sb.events_at_least(1),
        &[("protocol", json!("tcp")), ("reason", json!("port_not_allowed"))],
    );
    sb.stop();
}

/// A process already running in the cgroup, with a socket created before netcontrol
/// attached, is covered; after netcontrol detaches it is free again and the pins are gone.
#[test]
fn attach_covers_running_processes_and_detach_releases_them() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let cgroup = netcontrol_tests::TestCgroup::new();
    // Creates its socket now, connects each time a line arrives on stdin.
    let script = format!(
        "import socket, sys\n\
         s = socket.socket()\n\
         for line in sys.stdin:\n\
         \x20   try:\n\
         \x20       s.connect(('{}', {})); print('connected', flush=True); s.close(); s = socket.socket()\n\
         \x20   except OSError as e:\n\
         \x20       print(e.errno, flush=True)\n",
        denied.addr.ip(),
        denied.addr.port()
    );
    let mut py = cgroup
        .command("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = py.stdin.take().expect("stdin");
    let mut stdout = std::io::BufReader::new(py.stdout.take().expect("stdout"));
    let mut ask = || {
        use std::io::{BufRead, Write};
        writeln!(stdin).expect("write");
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        line.trim().to_owned()
    };
    let id = cgroup.id();
    let mut sb = Attached::start_on(cgroup, &[]);
    assert_eq!(ask(), libc::EPERM.to_string(), "the socket made before attaching is covered");
    assert_denied(&sb.probe(&[("tcp", &denied.target())])[0]);
    let stderr = sb.stop();
    assert!(stderr.contains("detached"), "{stderr}");
    assert_eq!(ask(), "connected", "after detaching, the cgroup is free again");
    assert_allowed(&sb.probe(&[("tcp", &denied.target())])[0]);
    let pins = netcontrol_tests::pin_abi_dir(std::path::Path::new(netcontrol_tests::TEST_PIN_ROOT))
        .join("standalone");
    let left: Vec<String> = std::fs::read_dir(&pins)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!left.iter().any(|n| n.starts_with(&format!("{id}-"))), "pins left: {left:?}");
    let _ = py.kill();
    let _ = py.wait();
}
