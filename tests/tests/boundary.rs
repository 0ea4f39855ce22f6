//! The ways out of a sandbox that the address hooks alone do not see, each against the real
//! kernel: the attempt fails (or its packet is dropped), the receiving side gets nothing
//! (a packet capture one veth hop away, or a server's count), and the event is there.

use std::time::Duration;

use netcontrol_tests::{
    Attached, Probe, Server, find_event, isolate_network, kernel_tests_enabled,
    peer::{self, Peer},
    probe_outside, probe_outside_tagged,
};
use serde_json::json;

const PROMPT: Duration = Duration::from_secs(1);
const ARRIVES: Duration = Duration::from_secs(10);

fn assert_denied(p: &Probe) {
    assert!(p.is_eperm(), "{} {} should fail with EPERM: {p:?}", p.op, p.target);
    assert!(p.elapsed < PROMPT, "EPERM took {:?}", p.elapsed);
}

fn assert_allowed(p: &Probe) {
    assert!(p.ok, "{} {} should succeed: {p:?}", p.op, p.target);
}

/// IPv6 routing headers (a type-4 segment routing header) and IPv4 source routes send the
/// packet to a first hop of the sandbox's choosing while the hooks judge the allowed final
/// destination. Outside a sandbox those packets reach the peer (the capture sees them);
/// inside, the socket options are refused, the per-datagram control message and hand-made
/// packets are dropped on the way out, and the peer sees nothing.
#[test]
fn routing_headers_and_source_routes_get_nothing_out() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["fd00:a::11", "127.0.0.11"]);
    let peer = Peer::start();
    let (s6, s4) = (Server::start("fd00:a::11"), Server::start("127.0.0.11"));
    let via6 = |s: &Server| format!("{}/{}", s.target(), peer::PEER_V6);
    let via4 = |s: &Server| format!("{}/{}", s.target(), peer::PEER_V4);
    let mut capture = peer.capture();
    // Without netcontrol each of these reaches the peer.
    for (op, target) in [("srh-udp", via6(&s6)), ("lsrr-udp", via4(&s4)), ("lsrr-cmsg", via4(&s4))]
    {
        assert_allowed(&probe_outside_tagged("outside", op, &target));
        capture.until(&format!("NCMARK:{op}:outside"), ARRIVES);
    }
    let mut sb = Attached::start(&["--allow", &s6.target(), "--allow", &s4.target()]);
    let r = sb.probe_tagged(
        "inside",
        &[
            ("srh-udp", &via6(&s6)),
            ("srh-tfo", &via6(&s6)),
            ("lsrr-udp", &via4(&s4)),
            ("lsrr-cmsg", &via4(&s4)),
        ],
    );
    r.iter().for_each(assert_denied);
    // A sentinel from outside: everything sent before it has arrived when it has.
    assert_allowed(&probe_outside_tagged("sentinel", "mark-udp", &format!("{}:9", peer::PEER_V4)));
    let seen = capture.until("NCMARK:mark-udp:sentinel", ARRIVES);
    assert!(!seen.iter().any(|m| m.ends_with(":inside")), "the peer got {seen:?}");
    let events = sb.events_at_least(4);
    // On 5.10 the fallback program judges setsockopt: it may not ask who the task is.
    let who = if netcontrol_tests::kernel_at_least(6, 1, "setsockopt events name the process") {
        json!("nc-probe")
    } else {
        json!("")
    };
    for option in ["IPV6_RTHDR", "IP_OPTIONS"] {
        find_event(
            &events,
            &[
                ("event", json!("socket")),
                ("hook", json!("setsockopt")),
                ("reason", json!("socket_option")),
                ("socket_option", json!(option)),
                ("comm", who.clone()),
            ],
        );
    }
    let dropped =
        find_event(&events, &[("hook", json!("skb_egress")), ("reason", json!("source_route"))]);
    assert_eq!(dropped["dst_ip"], json!(peer::PEER_V4), "the first hop: {dropped}");
    sb.stop();

    // A hand-made packet (raw sockets allowed) with a routing header: dropped on the way out.
    let mut sb = Attached::start(&["--allow-raw-sockets", "--allow", &s6.target()]);
    assert_allowed(&probe_outside_tagged("outside", "srh-raw", &via6(&s6)));
    capture.until("NCMARK:srh-raw:outside", ARRIVES);
    assert_denied(&sb.probe_tagged("inside", &[("srh-raw", &via6(&s6))])[0]);
    assert_allowed(&probe_outside_tagged("sentinel2", "mark-udp", &format!("{}:9", peer::PEER_V4)));
    let seen = capture.until("NCMARK:mark-udp:sentinel2", ARRIVES);
    assert!(!seen.iter().any(|m| m.ends_with(":inside")), "the peer got {seen:?}");
    let events = sb.events_at_least(1);
    let e = find_event(&events, &[("hook", json!("skb_egress")), ("family", json!("ipv6"))]);
    assert_eq!(e["dst_ip"], json!(peer::PEER_V6), "{e}");
    sb.stop();

    // The options stay usable where a policy allows them.
    let mut sb = Attached::start(&["--allow-routing-options", "--allow", &s6.target()]);
    assert_allowed(&sb.probe_tagged("allowed", &[("srh-udp", &via6(&s6))])[0]);
    capture.until("NCMARK:srh-udp:allowed", ARRIVES);
    sb.stop();
}

/// A connected UDP socket sending to an address of family AF_UNSPEC: udp_sendmsg sends to
/// that address, so it is judged, not the connected peer.
#[test]
fn an_unspec_address_is_a_destination_too() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.11"]);
    let denied = std::net::UdpSocket::bind("127.0.0.10:0").expect("bind");
    let d = denied.local_addr().expect("addr");
    let target = format!("127.0.0.11:9/{d}");
    assert_allowed(&probe_outside_tagged("outside", "unspec-sendto", &target));
    let mut sb = Attached::start(&["--allow", "127.0.0.11:9/udp"]);
    assert_denied(&sb.probe_tagged("inside", &[("unspec-sendto", &target)])[0]);
    // A sentinel from outside: what the sandbox sent is queued before it, if anything.
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .send_to(b"NCMARK:sentinel", d)
        .expect("send");
    denied.set_read_timeout(Some(ARRIVES)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let (n, _) = denied.recv_from(&mut buf).expect("the sentinel arrives");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m == "NCMARK:sentinel" {
            break;
        }
        got.push(m);
    }
    assert_eq!(got, ["NCMARK:unspec-sendto:outside"], "only the outside one arrived");
    let events = sb.events_at_least(1);
    let e = find_event(&events, &[("hook", json!("sendmsg4")), ("dst_ip", json!("127.0.0.10"))]);
    assert_eq!(e["dst_port"], json!(d.port()), "{e}");
    sb.stop();
}

/// Choosing the interface makes the kernel look for an (allowed) address on that link, where
/// whatever host answers for it gets the packets: SO_BINDTODEVICE is refused, and a packet to
/// loopback that an IP_PKTINFO control message sends out another interface is dropped.
#[test]
fn choosing_the_interface_gets_nothing_out() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.11"]);
    let peer = Peer::start();
    // The peer answers for the allowed loopback address on the veth.
    peer.answer_for("127.0.0.11");
    let mut capture = peer.capture();
    let on_veth = format!("{}/127.0.0.11:9", peer::HERE_IFACE);
    for op in ["bind-device", "pktinfo-udp"] {
        assert_allowed(&probe_outside_tagged("outside", op, &on_veth));
        capture.until(&format!("NCMARK:{op}:outside"), ARRIVES);
    }
    let mut sb = Attached::start(&["--allow", "127.0.0.11:9/udp"]);
    let r = sb.probe_tagged("inside", &[("bind-device", &on_veth), ("pktinfo-udp", &on_veth)]);
    r.iter().for_each(assert_denied);
    assert_allowed(&probe_outside_tagged("sentinel", "mark-udp", &format!("{}:9", peer::PEER_V4)));
    let seen = capture.until("NCMARK:mark-udp:sentinel", ARRIVES);
    assert!(!seen.iter().any(|m| m.ends_with(":inside")), "the peer got {seen:?}");
    let events = sb.events_at_least(2);
    find_event(
        &events,
        &[("hook", json!("setsockopt")), ("socket_option", json!("SO_BINDTODEVICE"))],
    );
    let e = find_event(
        &events,
        &[("hook", json!("skb_egress")), ("reason", json!("loopback_elsewhere"))],
    );
    assert_eq!(e["dst_ip"], "127.0.0.11", "{e}");
    // The allowed destination itself is fine, through lo.
    assert_allowed(&sb.probe(&[("udp-sendto", "127.0.0.11:9")])[0]);
    sb.stop();
}

/// Only TCP, UDP, UDP-Lite and MPTCP sockets are made without asking (others, such as
/// L2TP/IP or DCCP, run no connect or sendmsg hook; this kernel has neither, so their refusal
/// is unit-tested): the four keep working, and their destinations are judged.
#[test]
fn the_protocols_the_hooks_judge_keep_working_and_are_judged() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let allowed = Server::start("127.0.0.1");
    let mut sb = Attached::start(&["--allow", &allowed.target()]);
    let script = format!(
        "import socket\n\
         def attempt(ty, proto, to):\n\
         \x20   try:\n\
         \x20       s = socket.socket(socket.AF_INET, ty, proto)\n\
         \x20   except OSError as e:\n\
         \x20       return 'unsupported' if e.errno == 93 else str(e)\n\
         \x20   try:\n\
         \x20       s.connect(to) if ty == socket.SOCK_STREAM else s.sendto(b'x', to)\n\
         \x20       return 'ok'\n\
         \x20   except PermissionError:\n\
         \x20       return 'eperm'\n\
         \x20   finally:\n\
         \x20       s.close()\n\
         for ty, proto in [(socket.SOCK_STREAM, 262), (socket.SOCK_DGRAM, 136)]:\n\
         \x20   print(attempt(ty, proto, ('127.0.0.1', {a})), attempt(ty, proto, ('127.0.0.10', {d})))\n",
        a = allowed.addr.port(),
        d = denied.addr.port()
    );
    let out = sb.cgroup.command("python3").args(["-c", &script]).output().expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    // Debian's 5.10 is built without MPTCP (EPROTONOSUPPORT for anyone): nothing to judge.
    let mptcp = text.lines().next() != Some("unsupported unsupported");
    let expected = if mptcp {
        "ok eperm\nok eperm\n"
    } else {
        eprintln!("NOT APPLICABLE (MPTCP only): this kernel has no MPTCP");
        "unsupported unsupported\nok eperm\n"
    };
    assert_eq!(text, expected, "MPTCP, UDP-Lite: {}", netcontrol_tests::show(&out));
    let events = sb.events_at_least(if mptcp { 2 } else { 1 });
    if mptcp {
        find_event(&events, &[("hook", json!("connect4")), ("dst_ip", json!("127.0.0.10"))]);
    }
    find_event(&events, &[("hook", json!("sendmsg4")), ("dst_ip", json!("127.0.0.10"))]);
    sb.stop();
    assert_eq!(denied.accepted(), 0);
}

/// 0.0.0.0 and :: are never covered by broad rules: the kernel turns a connect to them into
/// one to the host itself (here a socket bound to ::ffff:127.0.0.1 connecting to [::] reaches
/// the IPv4 loopback server).
#[test]
fn unspecified_addresses_stay_closed_under_default_routes() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let server = Server::start("127.0.0.1");
    let port = server.addr.port();
    let unspec6 = format!("[::]:{port}");
    assert_allowed(&probe_outside("unspec6", &unspec6));
    // The server counts what it accepted in its own time: wait for the outside connect.
    assert!(netcontrol_tests::within(ARRIVES, || server.accepted() >= 1).is_some());
    let before = server.accepted();
    let mut sb = Attached::start(&["--allow", "0.0.0.0/0", "--allow", "::/0"]);
    let r = sb.probe(&[("unspec6", &unspec6), ("tcp", &format!("0.0.0.0:{port}"))]);
    r.iter().for_each(assert_denied);
    // Loopback itself stays reachable under the default route.
    assert_allowed(&sb.probe(&[("tcp", &server.target())])[0]);
    let events = sb.events_at_least(2);
    find_event(
        &events,
        &[
            ("dst_ip", json!("::")),
            ("reason", json!("unspecified_address")),
            ("hook", json!("connect6")),
        ],
    );
    find_event(&events, &[("dst_ip", json!("0.0.0.0")), ("reason", json!("unspecified_address"))]);
    sb.stop();
    // The outside connect and the allowed one: the two denied ones never arrived.
    assert!(
        netcontrol_tests::within(ARRIVES, || server.accepted() > before).is_some(),
        "the allowed connection did not arrive"
    );
    assert_eq!(server.accepted(), before + 1, "a denied connect reached the server");
}

/// A connected UDP socket sending with a control message (IP_TOS, as QUIC stacks do) runs
/// the sendmsg hook with no address: it is judged by the socket's connected peer, which
/// connect() allowed.
#[test]
fn connected_udp_with_control_messages_is_judged_by_its_peer() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["fd00:a::11"]);
    let (s4, s6) = (Server::start("127.0.0.11"), Server::start("fd00:a::11"));
    let mut sb = Attached::start(&["--allow", &s4.target(), "--allow", &s6.target()]);
    let r = sb.probe(&[("udp-cmsg", &s4.target()), ("udp-cmsg", &s6.target())]);
    r.iter().for_each(assert_allowed);
    sb.stop();
}

/// DNS rebinding: an allowed name whose DNS answers loopback, 0.0.0.0, a private address or
/// the host's own gets those addresses taken out of the answer, and they are not allowed; a
/// public one (here the peer's) works; `allow_private` opens private ones for its name.
#[test]
fn dns_answers_never_open_the_inside() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let peer = Peer::start();
    peer.sh(&format!("ip addr add 10.250.0.2/32 dev {}", peer::PEER_IFACE));
    netcontrol_tests::sh(&format!("ip route add 10.250.0.2/32 dev {}", peer::HERE_IFACE));
    let dns = netcontrol_tests::dns::Dnsmasq::start("127.0.0.53", 5);
    let _resolv = netcontrol_tests::dns::private_resolv_conf(dns.addr);
    let local = Server::start("127.0.0.1");
    let port = local.addr.port();
    let _serve = netcontrol_tests::Background::adopt(
        peer.command(netcontrol_tests::probe_bin().to_str().expect("utf8"))
            .args(["serve", &format!("{}:{port}", peer::PEER_V4)])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("serve"),
    );
    let _serve_private = netcontrol_tests::Background::adopt(
        peer.command(netcontrol_tests::probe_bin().to_str().expect("utf8"))
            .args(["serve", &format!("10.250.0.2:{port}")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("serve"),
    );
    dns.set("good.rb.test", &[peer::PEER_V4]);
    dns.set("rebind.rb.test", &["127.0.0.1"]);
    dns.set("zero.rb.test", &["0.0.0.0"]);
    dns.set("self.rb.test", &["192.0.2.1"]);
    dns.set("private.rb.test", &["10.250.0.2"]);
    dns.set("db.rb.test", &["10.250.0.2"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = netcontrol_tests::policy_file(
        dir.path(),
        &format!(
            "allow:\n  - \"**.rb.test:{port}\"\n  - domain: db.rb.test\n    ports: [{port}]\n    allow_private: true\ndns:\n  servers: [127.0.0.53]\n"
        ),
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    let ask = |name: &str| sb.probe(&[("dns", &format!("127.0.0.53:53/{name}"))]).remove(0);
    let answers = |p: &Probe| p.json["answers"].as_array().cloned().unwrap_or_default();
    assert_eq!(answers(&ask("good.rb.test")), [json!(peer::PEER_V4)]);
    let serving = netcontrol_tests::within(ARRIVES, || {
        sb.probe(&[("tcp", &format!("{}:{port}", peer::PEER_V4))])[0].ok
    });
    assert!(serving.is_some(), "a public answer is allowed");
    for name in ["rebind.rb.test", "zero.rb.test", "self.rb.test", "private.rb.test"] {
        let p = ask(name);
        assert!(p.ok && answers(&p).is_empty(), "{name}: {p:?}");
    }
    assert_eq!(answers(&ask("db.rb.test")), [json!("10.250.0.2")], "allow_private opens it");
    let r = sb.probe(&[
        ("tcp", &local.target()),
        ("tcp", &format!("0.0.0.0:{port}")),
        ("tcp", &format!("192.0.2.1:{port}")),
        ("tcp", &format!("10.250.0.2:{port}")),
    ]);
    assert_denied(&r[0]);
    assert_denied(&r[1]);
    assert_denied(&r[2]);
    assert_allowed(&r[3]);
    let events = sb.events_at_least(4);
    let e = find_event(
        &events,
        &[("domain", json!("rebind.rb.test")), ("reason", json!("rebinding_refused"))],
    );
    assert_eq!(e["refused_addresses"], json!(["127.0.0.1"]), "{e}");
    assert_eq!(e["event"], "dns");
    find_event(
        &events,
        &[("domain", json!("self.rb.test")), ("reason", json!("rebinding_refused"))],
    );
    sb.stop();
    assert_eq!(local.accepted(), 0, "nothing reached the host's loopback server");
}

/// What the DNS proxy forwards is a query made anew from the question: a payload in an EDNS
/// option (and the client's id, and the case of its name) never reaches the name's DNS.
#[test]
fn the_dns_proxy_forwards_only_the_question() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.54"]);
    let dns = netcontrol_tests::dns::Dnsmasq::start("127.0.0.53", 5);
    dns.set("api.test", &["127.0.0.20"]);
    let recorder = netcontrol_tests::dns::Recorder::start("127.0.0.54", dns.addr);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = netcontrol_tests::policy_file(
        dir.path(),
        "allow: [api.test]\ndns:\n  servers: [127.0.0.54]\n  rebinding: allow\n",
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    let p = sb.probe_tagged("smuggled", &[("dns-edns", "127.0.0.53:53/Api.TEST")]).remove(0);
    assert!(p.ok, "{p:?}");
    assert_eq!(p.json["answers"], json!(["127.0.0.20"]), "{p:?}");
    let queries = recorder.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert!(!q.windows(7).any(|w| w == b"NCMARK:"), "the payload got out: {q:?}");
    assert!(q.windows(9).any(|w| w == b"\x03api\x04test"), "the name, in lower case: {q:?}");
    sb.stop();
}

/// One sandbox holding thousands of TCP connections to its DNS proxy gets its share (the
/// rest are closed at once, counted) and nothing more: the proxy keeps answering, its fds stay
/// bounded, and its own upstream queries still work.
#[test]
fn a_dns_flood_over_tcp_takes_only_its_share() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = netcontrol_tests::dns::Dnsmasq::start("127.0.0.53", 5);
    dns.set("api.test", &["127.0.0.20"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = netcontrol_tests::policy_file(
        dir.path(),
        "allow: [api.test]\ndns:\n  servers: [127.0.0.53]\n  rebinding: allow\n",
    );
    let mut sb = Attached::start(&["--policy", policy.to_str().expect("utf8")]);
    let fds = netcontrol_tests::open_fds;
    let before = fds(sb.pid());
    let mut hog = netcontrol_tests::hold_connections(
        sb.cgroup.command(netcontrol_tests::probe_bin()),
        2000,
        "127.0.0.53:53",
    );
    // The proxy answers still, over UDP, with its upstream.
    let p = sb.probe(&[("dns", "127.0.0.53:53/api.test")]).remove(0);
    assert_eq!(p.json["answers"], json!(["127.0.0.20"]), "{p:?}");
    let during = fds(sb.pid());
    assert!(
        during < before + 32 + 16, // 32: the proxy's MAX_TCP_SESSIONS
        "netcontrol went from {before} to {during} fds"
    );
    drop(hog.stdin.take());
    let _ = hog.wait();
    // The sandbox's share is free again: TCP works.
    let tcp = netcontrol_tests::within(ARRIVES, || {
        sb.probe(&[("dns-tcp", "127.0.0.53:53/api.test")])[0].ok
    });
    assert!(tcp.is_some(), "TCP DNS works again once the connections are gone");
    sb.stop();
}

/// listen() without bind() (or after a bind to port 0) picks a port on every address, which
/// no bind hook judges: connections to it from elsewhere are dropped when they arrive, while
/// loopback ones work.
#[test]
fn listeners_nobody_bound_take_no_outside_connections() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let peer = Peer::start();
    let mut sb = Attached::start(&[]);
    let script = "import socket, sys\n\
                  s = socket.socket()\n\
                  s.listen(8)\n\
                  print(s.getsockname()[1], flush=True)\n\
                  while True:\n\
                  \x20   c, _ = s.accept(); c.sendall(b'secret'); c.close()\n";
    let mut listener = sb
        .cgroup
        .command("python3")
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(listener.stdout.take().expect("stdout")),
        &mut port,
    )
    .expect("port");
    let port = port.trim().to_owned();
    assert!(probe_outside("tcp", &format!("127.0.0.1:{port}")).ok, "loopback works");
    let from_peer = peer
        .command(netcontrol_tests::probe_bin().to_str().expect("utf8"))
        .args(["tcp", &format!("{}:{port}", peer::HERE_V4)])
        .output()
        .expect("probe from the peer");
    let p = netcontrol_tests::parse_probes(&from_peer.stdout);
    assert!(!p[0].ok, "a connection from the peer got in: {p:?}");
    let events = sb.events_at_least(1);
    let e = find_event(&events, &[("hook", json!("skb_ingress"))]);
    assert_eq!(
        (e["dst_ip"].clone(), e["event"].clone()),
        (json!(peer::PEER_V4), json!("listen")),
        "{e}"
    );
    assert_eq!(e["dst_port"], json!(port.parse::<u16>().expect("port")));
    let _ = listener.kill();
    let _ = listener.wait();
    sb.stop();

    // With a listen rule for the port, it takes them.
    let mut sb = Attached::start(&["--listen", "1-65535"]);
    let mut listener = sb
        .cgroup
        .command("python3")
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(listener.stdout.take().expect("stdout")),
        &mut port,
    )
    .expect("port");
    let from_peer = peer
        .command(netcontrol_tests::probe_bin().to_str().expect("utf8"))
        .args(["tcp", &format!("{}:{}", peer::HERE_V4, port.trim())])
        .output()
        .expect("probe from the peer");
    assert!(netcontrol_tests::parse_probes(&from_peer.stdout)[0].ok, "{from_peer:?}");
    let _ = listener.kill();
    let _ = listener.wait();
    sb.stop();
}

/// Whether a sandbox gets the host's rules (listening, abstract unix sockets) is not for one
/// of its processes to decide: a first process that made a network namespace of its own (any
/// user can, with a user namespace) leaves them on for a sibling in the host's namespace; and
/// a sandbox in a namespace root made (as a container's) gets them as soon as a process of it
/// is in the host's.
#[test]
fn a_namespace_of_its_own_does_not_lift_the_host_rules() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let ours = std::fs::read_link("/proc/thread-self/ns/net").expect("our netns");
    let settled = |pid: u32| {
        netcontrol_tests::within(ARRIVES, || {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l != ours)
        })
        .expect("the process's own namespace")
    };
    let listen = |sb: &Attached| sb.probe(&[("listen", "0.0.0.0:47123")]).remove(0);

    // A user and network namespace of its own, made without privileges.
    let cg = netcontrol_tests::TestCgroup::new();
    let mut hermit = cg
        .command("unshare")
        .args(["--user", "--map-root-user", "--net", "sleep", "600"])
        .spawn()
        .expect("unshare");
    settled(hermit.id());
    let mut sb = Attached::start_on(cg, &[]);
    assert_denied(&listen(&sb));
    let events = sb.events_at_least(1);
    find_event(&events, &[("reason", json!("listen_not_allowed")), ("dst_port", json!(47123))]);
    sb.stop();
    let _ = hermit.kill();
    let _ = hermit.wait();

    // A namespace root made: the sandbox's own, until a process shows up in the host's.
    let name = netcontrol_tests::unique("nc-ns");
    netcontrol_tests::sh(&format!("ip netns add {name}"));
    let cg = netcontrol_tests::TestCgroup::new();
    let mut resident =
        cg.command("ip").args(["netns", "exec", &name, "sleep", "600"]).spawn().expect("ip");
    settled(resident.id());
    let mut sb = Attached::start_on(cg, &[]);
    let mut lingering = sb.cgroup.command("sleep").arg("600").spawn().expect("sleep");
    let closed = netcontrol_tests::within(ARRIVES, || listen(&sb).is_eperm());
    assert!(closed.is_some(), "the host's rules came with the host's process");
    sb.stop();
    for c in [&mut resident, &mut lingering] {
        let _ = c.kill();
        let _ = c.wait();
    }
    netcontrol_tests::sh(&format!("ip netns del {name}"));
}

/// Credential and instance-agent endpoints of the major clouds stay closed under default
/// routes, and so does the rest of link-local; exact rules open what they name (NodeLocal
/// DNSCache, GKE's metadata DNS).
#[test]
fn cloud_endpoints_and_link_local_need_exact_rules() {
    if !kernel_tests_enabled() {
        return;
    }
    let endpoints = [
        "169.254.169.254",
        "169.254.170.2",
        "169.254.170.23",
        "169.254.169.252",
        "168.63.129.16",
        "100.100.100.200",
        "169.254.0.23",
        "fd00:ec2::254",
        "fd00:ec2::23",
    ];
    let mut on_lo: Vec<&str> = endpoints.to_vec();
    on_lo.extend(["169.254.20.10", "169.254.7.7", "fe80::7"]);
    isolate_network(&on_lo);
    let servers: Vec<Server> = endpoints.iter().map(|ip| Server::start(ip)).collect();
    let nodelocal = Server::start("169.254.20.10");
    let other_ll = Server::start("169.254.7.7");
    let mut sb = Attached::start(&[
        "--allow",
        "0.0.0.0/0",
        "--allow",
        "::/0",
        "--allow",
        &format!("{}/tcp", nodelocal.target()),
    ]);
    for s in &servers {
        assert_denied(&sb.probe(&[("tcp", &s.target())])[0]);
    }
    assert_denied(&sb.probe(&[("tcp", &other_ll.target())])[0]);
    assert_allowed(&sb.probe(&[("tcp", &nodelocal.target())])[0]);
    let events = sb.events_at_least(endpoints.len() + 1);
    for ip in endpoints {
        find_event(&events, &[("dst_ip", json!(ip)), ("reason", json!("metadata_address"))]);
    }
    find_event(
        &events,
        &[("dst_ip", json!("169.254.7.7")), ("reason", json!("link_local_address"))],
    );
    sb.stop();
    assert!(servers.iter().all(|s| s.accepted() == 0), "an endpoint got a connection");
}
