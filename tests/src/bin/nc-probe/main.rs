//! nc-probe: makes one kind of network attempt per operation and prints the outcome as a JSON
//! line (`{"op":…,"target":…,"ok":…,"errno":…,"error":…,"elapsed_us":…}`), so that tests can
//! see exactly what the kernel answered.
//!
//! Usage: nc-probe OP TARGET [OP TARGET]...   (TARGET: 127.0.0.1:80, [::1]:80,
//! [::ffff:127.0.0.1]:80 for an IPv4-mapped destination on an IPv6 socket; "-" for ops that
//! take none). Exit status: 0 if every op succeeded, 1 otherwise.
//!
//! OPs: tcp, udp-connect, udp-sendto, udp-sendmmsg, udp-storm:N (N denied sends expected),
//! udp-spray:N (one denied send to each of N ports from TARGET's), tfo-sendto (MSG_FASTOPEN), tfo-connect
//! (TCP_FASTOPEN_CONNECT), raw4, raw6, ping4, ping6 (socket only), ping-connect (ICMP datagram
//! socket connected to TARGET), ping-sendto (an echo request sent unconnected; ok when the
//! reply came), lsrr-ping (TARGET = FINAL/VIA: the same with a loose source route), serve (listen on TARGET for TCP and UDP until killed).
//!
//! DNS ops take TARGET = SERVER/NAME (SERVER as above, NAME with an optional `:TYPE`, default A):
//! `dns` (UDP; the reply must come from SERVER, as resolvers check), `dns-tcp`, `dns-connected`
//! (UDP on a connected socket, as glibc does), `dns-edns` (UDP, the marker payload in an EDNS
//! option). Their result line adds "rcode" and "answers".
//! `dns-bench:N` sends N queries one after the other and adds "p50_us", "p99_us", "max_us".
//!
//! Benchmark loops, for MS milliseconds: `loop-tcp:MS` (socket, connect, close), `loop-udp:MS`
//! (socket, connect, one 1-byte datagram, close). Their line adds "ops", "failed" (attempts
//! that failed, e.g. with EPERM) and "ns_per_op".
//!
//! Ways around the address hooks (see escape.rs): `srh-udp`, `srh-tfo`, `lsrr-udp`,
//! `lsrr-cmsg`, `srh-raw` (TARGET = FINAL/VIA: judged destination / first hop), `unspec6`,
//! `listen`, `abstract-connect`, `abstract-sendto` (TARGET = name), `family` (TARGET = AF
//! number), `sctp`, `udp-cmsg`, `unspec-sendto` (TARGET = PEER/DEST), `bind-device` and
//! `pktinfo-udp` (TARGET = IFACE/DEST), `tiocsti` (TARGET = fd), `sock-packet`. And `capture
//! IFACE`, which prints `seen NCMARK:<op>` for each frame carrying one of their payloads, until
//! killed.
//!
//! `nc-probe --deny-setns CMD ARGS...` runs CMD under a seccomp filter that fails setns(2)
//! with EPERM (what a missing capability or an LSM does to a daemon joining a namespace).

mod escape;

use std::{
    io,
    mem::{size_of, zeroed},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--deny-setns") {
        deny_setns_exec(&args[1..]);
    }
    if args.is_empty() || !args.len().is_multiple_of(2) {
        eprintln!("usage: nc-probe OP TARGET [OP TARGET]...");
        std::process::exit(2);
    }
    let mut all_ok = true;
    for pair in args.chunks(2) {
        let (op, target) = (pair[0].as_str(), pair[1].as_str());
        if op == "serve" {
            serve(target);
        }
        if op == "capture" {
            escape::capture(target);
        }
        if op.starts_with("hold:") {
            escape::hold(op, target);
        }
        if op.starts_with("dns") {
            all_ok &= dns::run(op, target);
            continue;
        }
        if let Some(spec) = op.strip_prefix("loop-") {
            bench_loop(op, spec, target);
            continue;
        }
        let start = Instant::now();
        let result = run(op, target);
        let elapsed_us = start.elapsed().as_micros();
        let (ok, errno, error) = match &result {
            Ok(()) => (true, 0, String::new()),
            Err(e) => (false, e.raw_os_error().unwrap_or(-1), e.to_string()),
        };
        all_ok &= ok;
        println!(
            "{{\"op\":{op:?},\"target\":{target:?},\"ok\":{ok},\"errno\":{errno},\"error\":{error:?},\"elapsed_us\":{elapsed_us}}}"
        );
    }
    std::process::exit(if all_ok { 0 } else { 1 });
}

/// Attempts in a tight loop for a while; prints ops, failures and ns per op.
fn bench_loop(op: &str, spec: &str, target: &str) {
    let (kind, ms) = spec.split_once(':').unwrap_or((spec, "1000"));
    let ms: u64 = ms.parse().unwrap_or(1000);
    let a = match addr(target) {
        Ok(a) => a,
        Err(e) => {
            println!(
                "{{\"op\":{op:?},\"target\":{target:?},\"ok\":false,\"errno\":-1,\"error\":{:?}}}",
                e.to_string()
            );
            return;
        }
    };
    let family = if a.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let (ty, udp) = match kind {
        "udp" => (libc::SOCK_DGRAM, true),
        _ => (libc::SOCK_STREAM, false),
    };
    let (mut ops, mut failed, mut errno) = (0u64, 0u64, 0);
    let start = Instant::now();
    let until = Duration::from_millis(ms);
    while start.elapsed() < until {
        // Checking the clock every 64 attempts keeps it out of the measurement.
        for _ in 0..64 {
            let attempt = socket(family, ty, 0).and_then(|s| {
                if !udp {
                    // Close with a reset: no TIME_WAIT, so the ephemeral ports last.
                    reset_on_close(s.as_raw_fd());
                }
                connect(s.as_raw_fd(), a)?;
                if udp {
                    // SAFETY: a connected socket and a 1-byte buffer.
                    let n = unsafe { libc::send(s.as_raw_fd(), b"x".as_ptr().cast(), 1, 0) };
                    if n < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
            ops += 1;
            if let Err(e) = attempt {
                failed += 1;
                errno = e.raw_os_error().unwrap_or(-1);
            }
        }
    }
    let ns = start.elapsed().as_nanos() as u64 / ops.max(1);
    println!(
        "{{\"op\":{op:?},\"target\":{target:?},\"ok\":true,\"errno\":{errno},\"error\":\"\",\"ops\":{ops},\"failed\":{failed},\"ns_per_op\":{ns}}}"
    );
}

/// SO_LINGER 0: close() sends a reset and leaves no TIME_WAIT behind.
fn reset_on_close(fd: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid option value for a socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

fn addr(target: &str) -> io::Result<SocketAddr> {
    target
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{target}: {e}")))
}

fn run(op: &str, target: &str) -> io::Result<()> {
    match op {
        "tcp" => TcpStream::connect_timeout(&addr(target)?, Duration::from_secs(3)).map(drop),
        "udp-connect" => {
            let a = addr(target)?;
            let s = UdpSocket::bind(any(a))?;
            s.connect(a)?;
            s.send(b"probe").map(drop)
        }
        "udp-sendto" => {
            let a = addr(target)?;
            UdpSocket::bind(any(a))?.send_to(b"probe", a).map(drop)
        }
        "udp-sendmmsg" => sendmmsg(addr(target)?),
        op if op.starts_with("udp-storm:") => {
            storm(addr(target)?, op["udp-storm:".len()..].parse().unwrap_or(0))
        }
        op if op.starts_with("udp-spray:") => {
            spray(addr(target)?, op["udp-spray:".len()..].parse().unwrap_or(0))
        }
        "tfo-sendto" => tfo_sendto(addr(target)?),
        "tfo-connect" => tfo_connect(addr(target)?),
        "raw4" => socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP).map(drop),
        // Raw sockets of IP protocols 1..=N: every one a distinct kind of attempt (a STATS key
        // of its own). Ok when every one was refused with EPERM.
        op if op.starts_with("raw-protocols:") => {
            let n: i32 = op["raw-protocols:".len()..].parse().unwrap_or(0);
            for proto in 1..=n {
                match socket(libc::AF_INET, libc::SOCK_RAW, proto) {
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                    Err(e) => return Err(io::Error::other(format!("protocol {proto}: {e}"))),
                    Ok(_) => return Err(io::Error::other(format!("protocol {proto}: created"))),
                }
            }
            Ok(())
        }
        "raw6" => socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6).map(drop),
        "ping4" => socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP).map(drop),
        "ping6" => socket(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6).map(drop),
        "ping-connect" => {
            let a = addr(target)?;
            let (fam, proto) = match a {
                SocketAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
                SocketAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
            };
            let s = socket(fam, libc::SOCK_DGRAM, proto)?;
            connect(s.as_raw_fd(), a)
        }
        "ping-sendto" => ping_sendto(addr(target)?, None),
        // TARGET = FINAL/VIA: an echo request to FINAL with a loose source route via VIA.
        "lsrr-ping" => {
            let (fin, via) = target
                .split_once('/')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "want FINAL/VIA"))?;
            let via: std::net::Ipv4Addr = via
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "VIA: an IPv4 address"))?;
            let mut opts = vec![1u8, 0x83, 7, 4]; // NOP, LSRR, length 7, pointer 4
            opts.extend_from_slice(&via.octets());
            ping_sendto(addr(fin)?, Some(&opts))
        }
        other => escape::run(other, target).unwrap_or_else(|| {
            Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unknown op {other}")))
        }),
    }
}

fn any(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("addr"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("addr"),
    }
}

fn socket(family: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned on success.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A sockaddr for `a` and its length.
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large enough and suitably aligned.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn family(a: SocketAddr) -> i32 {
    if a.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 }
}

fn connect(fd: RawFd, a: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(a);
    // SAFETY: valid sockaddr of `len` bytes.
    let r = unsafe { libc::connect(fd, (&raw const ss).cast(), len) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// An echo request from an unconnected ping socket (sendto), and its reply: ok only if the
/// reply came, so a denied destination shows both the refused send and that nothing answered.
fn ping_sendto(a: SocketAddr, ip_options: Option<&[u8]>) -> io::Result<()> {
    let (proto, echo) = match a {
        SocketAddr::V4(_) => (libc::IPPROTO_ICMP, 8u8),
        SocketAddr::V6(_) => (libc::IPPROTO_ICMPV6, 128u8),
    };
    let s = socket(family(a), libc::SOCK_DGRAM, proto)?;
    let tv = libc::timeval { tv_sec: 3, tv_usec: 0 };
    // SAFETY: a valid timeval of its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if let Some(o) = ip_options {
        // SAFETY: a buffer of its size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_OPTIONS,
                o.as_ptr().cast(),
                o.len() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Type, code, checksum and id (the kernel fills both), sequence 1, a payload.
    let request = [echo, 0, 0, 0, 0, 0, 0, 1, b'N', b'C'];
    let (ss, len) = sockaddr(a);
    // SAFETY: a buffer and a sockaddr of their sizes.
    let n = unsafe {
        libc::sendto(
            s.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&raw const ss).cast(),
            len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 64];
    // SAFETY: a buffer of its size.
    let n = unsafe { libc::recv(s.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Three datagrams in one sendmmsg(2) call, unconnected.
fn sendmmsg(a: SocketAddr) -> io::Result<()> {
    let s = socket(family(a), libc::SOCK_DGRAM, 0)?;
    let (mut ss, len) = sockaddr(a);
    let mut payload = *b"probe";
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: zeroed mmsghdr is valid; pointers below outlive the call.
    let mut msgs: [libc::mmsghdr; 3] = unsafe { zeroed() };
    for m in &mut msgs {
        m.msg_hdr.msg_name = (&raw mut ss).cast();
        m.msg_hdr.msg_namelen = len;
        m.msg_hdr.msg_iov = &raw mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: three initialised headers.
    let n = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), 3, 0) };
    match n {
        3 => Ok(()),
        n if n < 0 => Err(io::Error::last_os_error()),
        n => Err(io::Error::other(format!("sendmmsg sent {n} of 3"))),
    }
}

/// N unconnected sends from one socket as fast as possible; succeeds if all of them got EPERM
/// (a burst of denied attempts).
fn storm(a: SocketAddr, n: u32) -> io::Result<()> {
    let s = UdpSocket::bind(any(a))?;
    let denied = (0..n)
        .filter(|_| s.send_to(b"x", a).is_err_and(|e| e.raw_os_error() == Some(libc::EPERM)))
        .count();
    if denied == n as usize {
        Ok(())
    } else {
        Err(io::Error::other(format!("{denied} of {n} denied")))
    }
}

/// One datagram to each of N ports from TARGET's on (N distinct destinations); succeeds if
/// every send got EPERM.
fn spray(a: SocketAddr, n: u16) -> io::Result<()> {
    let s = UdpSocket::bind(any(a))?;
    let denied = (0..n)
        .filter(|i| {
            let to = SocketAddr::new(a.ip(), a.port().wrapping_add(*i));
            s.send_to(b"x", to).is_err_and(|e| e.raw_os_error() == Some(libc::EPERM))
        })
        .count();
    if denied == usize::from(n) {
        Ok(())
    } else {
        Err(io::Error::other(format!("{denied} of {n} denied")))
    }
}

/// TCP Fast Open through sendto(MSG_FASTOPEN): the connect happens inside sendto.
fn tfo_sendto(a: SocketAddr) -> io::Result<()> {
    let s = socket(family(a), libc::SOCK_STREAM, 0)?;
    let (ss, len) = sockaddr(a);
    let data = b"GET / HTTP/1.0\r\n\r\n";
    // SAFETY: valid buffer and sockaddr.
    let n = unsafe {
        libc::sendto(
            s.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_FASTOPEN,
            (&raw const ss).cast(),
            len,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// TCP Fast Open through TCP_FASTOPEN_CONNECT, then connect().
fn tfo_connect(a: SocketAddr) -> io::Result<()> {
    let s = socket(family(a), libc::SOCK_STREAM, 0)?;
    let one: libc::c_int = 1;
    // SAFETY: valid option value.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN_CONNECT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    connect(s.as_raw_fd(), a)
}

/// Listen on TARGET (TCP and UDP) until killed; prints "listening" once ready.
fn serve(target: &str) -> ! {
    let a = addr(target).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let tcp = listen(a).unwrap_or_else(|e| {
        eprintln!("bind tcp {a}: {e}");
        std::process::exit(2)
    });
    let _udp = UdpSocket::bind(tcp.local_addr().expect("local addr"));
    println!("listening {}", tcp.local_addr().expect("local addr"));
    // Accepting on several threads keeps the queue short when a benchmark loop connects as
    // fast as the kernel completes handshakes (a full queue drops SYNs: 1 s stalls).
    let tcp = std::sync::Arc::new(tcp);
    for _ in 0..3 {
        let tcp = tcp.clone();
        std::thread::spawn(move || {
            for conn in tcp.incoming() {
                drop(conn);
            }
        });
    }
    for conn in tcp.incoming() {
        drop(conn);
    }
    std::process::exit(0)
}

/// A TCP listener with a long accept queue.
fn listen(a: SocketAddr) -> io::Result<TcpListener> {
    let s = socket(family(a), libc::SOCK_STREAM, 0)?;
    let one: libc::c_int = 1;
    // SAFETY: valid option values and sockaddr for this socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        let (ss, len) = sockaddr(a);
        if libc::bind(s.as_raw_fd(), (&raw const ss).cast(), len) != 0
            || libc::listen(s.as_raw_fd(), 4096) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(TcpListener::from(s))
}

/// DNS queries, made and read with hickory-proto.
mod dns {
    use std::{
        io::{self, Read, Write},
        net::{SocketAddr, TcpStream, UdpSocket},
        time::{Duration, Instant},
    };

    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::{Name, RecordType},
    };

    pub fn run(op: &str, target: &str) -> bool {
        let (result, extra) = match parse(target) {
            Err(e) => (Err(e), String::new()),
            Ok((server, name, qtype)) => match op {
                "dns" | "dns-connected" | "dns-tcp" | "dns-edns" => {
                    let start = Instant::now();
                    let r = ask(op, server, &name, qtype);
                    let us = start.elapsed().as_micros();
                    match r {
                        Ok(m) => (Ok(()), format!(",{},\"elapsed_us\":{us}", describe(&m))),
                        Err(e) => (Err(e), format!(",\"elapsed_us\":{us}")),
                    }
                }
                op if op.starts_with("dns-bench:") => {
                    let n: usize = op["dns-bench:".len()..].parse().unwrap_or(100);
                    bench(server, &name, qtype, n)
                }
                other => (Err(io::Error::other(format!("unknown op {other}"))), String::new()),
            },
        };
        let (ok, errno, error) = match &result {
            Ok(()) => (true, 0, String::new()),
            Err(e) => (false, e.raw_os_error().unwrap_or(-1), e.to_string()),
        };
        println!(
            "{{\"op\":{op:?},\"target\":{target:?},\"ok\":{ok},\"errno\":{errno},\"error\":{error:?}{extra}}}"
        );
        ok
    }

    fn parse(target: &str) -> io::Result<(SocketAddr, String, RecordType)> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{target}: want SERVER/NAME[:TYPE]"),
            )
        };
        let (server, rest) = target.rsplit_once('/').ok_or_else(bad)?;
        let (name, qtype) = rest.split_once(':').unwrap_or((rest, "A"));
        let qtype: RecordType = qtype.parse().map_err(|_| bad())?;
        Ok((server.parse().map_err(|_| bad())?, name.to_owned(), qtype))
    }

    fn query(name: &str, qtype: RecordType, id: u16) -> io::Result<Vec<u8>> {
        query_with(name, qtype, id, None)
    }

    /// With `payload`: carried in an EDNS option (padding), as data smuggled to whoever runs
    /// the name's DNS would be.
    fn query_with(
        name: &str,
        qtype: RecordType,
        id: u16,
        payload: Option<&[u8]>,
    ) -> io::Result<Vec<u8>> {
        use hickory_proto::{
            op::Edns,
            rr::rdata::opt::{EdnsCode, EdnsOption},
        };
        let name = Name::from_ascii(format!("{name}.")).map_err(io::Error::other)?;
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(name, qtype));
        if let Some(p) = payload {
            let mut edns = Edns::new();
            edns.set_max_payload(4096);
            edns.options_mut().insert(EdnsOption::Unknown(EdnsCode::Padding.into(), p.to_vec()));
            m.set_edns(edns);
        }
        m.to_vec().map_err(io::Error::other)
    }

    fn any(a: SocketAddr) -> SocketAddr {
        if a.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        }
    }

    fn ask(op: &str, server: SocketAddr, name: &str, qtype: RecordType) -> io::Result<Message> {
        let id = (std::process::id() as u16) ^ 0x5a5a;
        let q = if op == "dns-edns" {
            query_with(name, qtype, id, Some(&crate::escape::marker(op)))?
        } else {
            query(name, qtype, id)?
        };
        let answer = match op {
            "dns-tcp" => {
                let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.write_all(&(q.len() as u16).to_be_bytes())?;
                s.write_all(&q)?;
                let mut len = [0u8; 2];
                s.read_exact(&mut len)?;
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut buf)?;
                buf
            }
            _ => {
                let s = UdpSocket::bind(any(server))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                if op == "dns-connected" {
                    s.connect(server)?;
                    s.send(&q)?;
                } else {
                    s.send_to(&q, server)?;
                }
                let mut buf = vec![0u8; 65_535];
                let (n, from) = s.recv_from(&mut buf)?;
                // What resolvers check: the reply must come from the server asked.
                if from != server {
                    return Err(io::Error::other(format!("reply from {from}, not from {server}")));
                }
                buf.truncate(n);
                buf
            }
        };
        let m = Message::from_vec(&answer).map_err(io::Error::other)?;
        if m.id() != id {
            return Err(io::Error::other("reply with another id"));
        }
        Ok(m)
    }

    fn describe(m: &Message) -> String {
        let answers: Vec<String> =
            m.answers().iter().map(|r| format!("{:?}", r.data().to_string())).collect();
        format!("\"rcode\":\"{}\",\"answers\":[{}]", m.response_code(), answers.join(","))
    }

    fn bench(
        server: SocketAddr,
        name: &str,
        qtype: RecordType,
        n: usize,
    ) -> (io::Result<()>, String) {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            if let Err(e) = ask("dns", server, name, qtype) {
                return (Err(e), String::new());
            }
            times.push(start.elapsed().as_micros());
        }
        times.sort_unstable();
        let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
        let max = times.last().copied().unwrap_or(0);
        (Ok(()), format!(",\"p50_us\":{},\"p99_us\":{},\"max_us\":{max}", pct(50), pct(99)))
    }
}

/// Exec `cmd` with setns(2) failing (EPERM) for it and all its threads.
fn deny_setns_exec(cmd: &[String]) -> ! {
    use std::os::unix::process::CommandExt;
    // Load the syscall number; setns -> ERRNO(EPERM); everything else -> ALLOW. (The
    // architecture check is left out: the tests run x86_64 binaries only.)
    const LD_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    let filter = [
        libc::sock_filter { code: LD_NR, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: JEQ, jt: 0, jf: 1, k: libc::SYS_setns as u32 },
        libc::sock_filter { code: RET, jt: 0, jf: 0, k: 0x0005_0000 | libc::EPERM as u32 },
        libc::sock_filter { code: RET, jt: 0, jf: 0, k: 0x7fff_0000 },
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: a valid filter program for the duration of the calls.
    let r = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::syscall(libc::SYS_seccomp, 1, 1, &raw const prog) // SET_MODE_FILTER, TSYNC
    };
    if r != 0 {
        eprintln!("nc-probe: seccomp: {}", io::Error::last_os_error());
        std::process::exit(2);
    }
    let err = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
    eprintln!("nc-probe: exec {}: {err}", cmd[0]);
    std::process::exit(2);
}
