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
    for option in ["IPV6_RTHDR", "IP_OPTIONS"] {
        find_event(
            &events,
            &[
                ("event", json!("socket")),
                ("hook", json!("setsockopt")),
                ("reason", json!("socket_option")),
                ("socket_option", json!(option)),
                ("comm", json!("nc-probe")),
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
