//! Attempts to get out of a sandbox by ways the address hooks alone do not see: routing
//! headers and source routes, the unspecified address, listening, abstract unix sockets,
//! other socket families; and `capture`, which watches what arrives on the receiving side.
//!
//! Payloads carry a marker (`NCMARK:<op>`) that `capture` looks for.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use super::{connect, family, sockaddr, socket};

/// The payload of an op: what a capture on the far side looks for (`NCMARK:<op>:<tag>`,
/// the tag from $NCPROBE_TAG, so that a test can tell its attempts apart).
pub fn marker(op: &str) -> Vec<u8> {
    let tag = std::env::var("NCPROBE_TAG").unwrap_or_default();
    format!("NCMARK:{op}:{tag}").into_bytes()
}

/// `FINAL/VIA`: the destination the hooks judge, and the host the packet goes to first.
fn final_via(target: &str) -> io::Result<(SocketAddr, std::net::IpAddr)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("{target}: want FINAL/VIA"));
    let (f, v) = target.rsplit_once('/').ok_or_else(bad)?;
    Ok((f.parse().map_err(|_| bad())?, v.parse().map_err(|_| bad())?))
}

fn setsockopt(fd: i32, level: i32, name: i32, val: &[u8]) -> io::Result<()> {
    // SAFETY: a valid buffer of val.len() bytes.
    let r = unsafe {
        libc::setsockopt(fd, level, name, val.as_ptr().cast(), val.len() as libc::socklen_t)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A type-4 (segment routing) header that sends the packet to `via` first. The kernel puts
/// the judged destination into segments[0] and sends to segments[segments_left].
fn srh(via: Ipv6Addr) -> Vec<u8> {
    let mut h = vec![0u8, 4, 4, 1, 1, 0, 0, 0]; // nexthdr, hdrlen (40/8 - 1), type 4, left 1, last 1
    h.extend_from_slice(&[0u8; 16]); // segments[0]: the final destination, filled by the kernel
    h.extend_from_slice(&via.octets()); // segments[1]: the first hop
    h
}

/// IPv4 options: a loose source route through `via`.
fn lsrr(via: Ipv4Addr) -> Vec<u8> {
    let mut o = vec![1u8, 0x83, 7, 4]; // NOP, LSRR, length 7, pointer 4
    o.extend_from_slice(&via.octets());
    o
}

fn v6(ip: std::net::IpAddr) -> io::Result<Ipv6Addr> {
    match ip {
        std::net::IpAddr::V6(a) => Ok(a),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "an IPv6 first hop")),
    }
}

fn v4(ip: std::net::IpAddr) -> io::Result<Ipv4Addr> {
    match ip {
        std::net::IpAddr::V4(a) => Ok(a),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "an IPv4 first hop")),
    }
}

fn sendto(fd: i32, data: &[u8], to: SocketAddr, flags: i32) -> io::Result<()> {
    let (ss, len) = sockaddr(to);
    // SAFETY: valid buffer and sockaddr.
    let n = unsafe {
        libc::sendto(fd, data.as_ptr().cast(), data.len(), flags, (&raw const ss).cast(), len)
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// One datagram with one control message (level, type, data).
fn sendmsg_cmsg(
    fd: i32,
    data: &[u8],
    to: SocketAddr,
    level: i32,
    ty: i32,
    cdata: &[u8],
) -> io::Result<()> {
    let (mut ss, len) = sockaddr(to);
    let mut payload = data.to_vec();
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(cdata.len() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: zeroed msghdr is valid; the pointers below outlive the call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&raw mut ss).cast();
    msg.msg_namelen = len;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer holds one header of CMSG_SPACE(cdata.len()) bytes.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = level;
        (*c).cmsg_type = ty;
        (*c).cmsg_len = libc::CMSG_LEN(cdata.len() as u32) as usize;
        std::ptr::copy_nonoverlapping(cdata.as_ptr(), libc::CMSG_DATA(c), cdata.len());
    }
    // SAFETY: a complete msghdr.
    let n = unsafe { libc::sendmsg(fd, &raw const msg, 0) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `hold:N TARGET`: open N TCP connections to TARGET (the connects that fail are counted),
/// print `{"op":...,"held":K}` and keep them until stdin closes.
pub fn hold(op: &str, target: &str) -> ! {
    let n: usize = op.strip_prefix("hold:").and_then(|n| n.parse().ok()).unwrap_or(0);
    let a: SocketAddr = target.parse().unwrap_or_else(|e| {
        eprintln!("{target}: {e}");
        std::process::exit(2)
    });
    let held: Vec<std::net::TcpStream> = (0..n)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).ok()
        })
        .collect();
    println!(
        "{{\"op\":{op:?},\"target\":{target:?},\"ok\":true,\"errno\":0,\"error\":\"\",\"held\":{}}}",
        held.len()
    );
    let mut sink = Vec::new();
    let _ = io::Read::read_to_end(&mut io::stdin(), &mut sink);
    drop(held);
    std::process::exit(0)
}

pub fn run(op: &str, target: &str) -> Option<io::Result<()>> {
    Some(match op {
        // A UDP datagram to FINAL, routed through VIA by a sticky routing header.
        "srh-udp" => (|| {
            let (fin, via) = final_via(target)?;
            let s = socket(libc::AF_INET6, libc::SOCK_DGRAM, 0)?;
            setsockopt(s.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &srh(v6(via)?))?;
            sendto(s.as_raw_fd(), &marker(op), fin, 0)
        })(),
        // A TCP Fast Open SYN with data to FINAL, routed through VIA.
        "srh-tfo" => (|| {
            let (fin, via) = final_via(target)?;
            let s = socket(libc::AF_INET6, libc::SOCK_STREAM, 0)?;
            setsockopt(s.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &srh(v6(via)?))?;
            sendto(s.as_raw_fd(), &marker(op), fin, libc::MSG_FASTOPEN)
        })(),
        // A UDP datagram to FINAL, source-routed through VIA by IP_OPTIONS.
        "lsrr-udp" => (|| {
            let (fin, via) = final_via(target)?;
            let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
            setsockopt(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_OPTIONS, &lsrr(v4(via)?))?;
            sendto(s.as_raw_fd(), &marker(op), fin, 0)
        })(),
        // The same with the route in a control message of this one datagram (IP_RETOPTS).
        "lsrr-cmsg" => (|| {
            let (fin, via) = final_via(target)?;
            let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
            sendmsg_cmsg(
                s.as_raw_fd(),
                &marker(op),
                fin,
                libc::IPPROTO_IP,
                libc::IP_RETOPTS,
                &lsrr(v4(via)?),
            )
        })(),
        // A hand-made IPv6 packet with a routing header (needs a raw socket).
        "srh-raw" => (|| {
            let (fin, via) = final_via(target)?;
            let s = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
            let body = marker(op);
            let mut pkt = Vec::new();
            let rh = srh(v6(via)?);
            let plen = (rh.len() + 8 + body.len()) as u16;
            pkt.extend_from_slice(&[0x60, 0, 0, 0]);
            pkt.extend_from_slice(&plen.to_be_bytes());
            pkt.extend_from_slice(&[43, 64]); // next header: routing; hop limit
            pkt.extend_from_slice(&[0u8; 16]); // source: any (the kernel picks none; fine)
            pkt.extend_from_slice(&v6(via)?.octets());
            let mut rh = rh;
            rh[0] = 17; // then UDP
            if let std::net::IpAddr::V6(f) = fin.ip() {
                rh[8..24].copy_from_slice(&f.octets());
            }
            pkt.extend_from_slice(&rh);
            let ulen = (8 + body.len()) as u16;
            pkt.extend_from_slice(&9999u16.to_be_bytes());
            pkt.extend_from_slice(&fin.port().to_be_bytes());
            pkt.extend_from_slice(&ulen.to_be_bytes());
            pkt.extend_from_slice(&[0, 0]);
            pkt.extend_from_slice(&body);
            let to = SocketAddr::new(via, 0);
            sendto(s.as_raw_fd(), &pkt, to, 0)
        })(),
        // connect() to [::]:PORT from a socket bound to ::ffff:127.0.0.1: the kernel makes it
        // a connection to IPv4 loopback.
        "unspec6" => (|| {
            let a: SocketAddr = target
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
            let s = socket(libc::AF_INET6, libc::SOCK_STREAM, 0)?;
            let (ss, len) = sockaddr("[::ffff:127.0.0.1]:0".parse().expect("addr"));
            // SAFETY: a valid sockaddr.
            if unsafe { libc::bind(s.as_raw_fd(), (&raw const ss).cast(), len) } < 0 {
                return Err(io::Error::last_os_error());
            }
            connect(s.as_raw_fd(), a)
        })(),
        // bind() a TCP socket to TARGET and listen.
        "listen" => (|| {
            let a: SocketAddr = target
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
            let s = socket(family(a), libc::SOCK_STREAM, 0)?;
            let (ss, len) = sockaddr(a);
            // SAFETY: valid sockaddr; listen on our own socket.
            unsafe {
                if libc::bind(s.as_raw_fd(), (&raw const ss).cast(), len) < 0
                    || libc::listen(s.as_raw_fd(), 16) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })(),
        // connect() (stream) to the abstract unix socket @TARGET.
        "abstract-connect" => abstract_unix(target, libc::SOCK_STREAM, true),
        // sendto() (datagram) to the abstract unix socket @TARGET.
        "abstract-sendto" => abstract_unix(target, libc::SOCK_DGRAM, false),
        // socket() of a family by number (TARGET), e.g. 40 (vsock), 17 (packet).
        "family" => (|| {
            let f: i32 = target
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
            let ty = if f == libc::AF_PACKET { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
            socket(f, ty, 0).map(drop)
        })(),
        // PTRACE_SEIZE another process (TARGET = pid), as an injection would start.
        "ptrace" => (|| {
            let pid: libc::pid_t = target
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
            // SAFETY: PTRACE_SEIZE with no data; detached again below.
            if unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: as above.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
            Ok(())
        })(),
        // Take a copy of another process's fd (TARGET = pid:fd) with pidfd_getfd.
        "pidfd-getfd" => (|| {
            let (pid, fd) = target
                .split_once(':')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "PID:FD"))?;
            let (pid, fd): (i32, i32) = (
                pid.parse()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?,
                fd.parse()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?,
            );
            // SAFETY: raw system calls with integer arguments; the fds are closed right after.
            unsafe {
                let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
                if pidfd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
                let err = io::Error::last_os_error();
                libc::close(pidfd);
                if got < 0 {
                    return Err(err);
                }
                libc::close(got);
            }
            Ok(())
        })(),
        // Send SIGCONT (harmless) to another process (TARGET = pid).
        "signal" => (|| {
            let pid: libc::pid_t = target
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
            // SAFETY: kill with a valid signal.
            if unsafe { libc::kill(pid, libc::SIGCONT) } < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })(),
        // io_uring_setup (a ring can create sockets without the socket system call).
        "io-uring" => (|| {
            let mut params = [0u8; 120];
            // SAFETY: a zeroed io_uring_params (120 bytes) for the kernel to fill.
            let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: our own fd.
            unsafe { libc::close(fd as i32) };
            Ok(())
        })(),
        // One UDP datagram carrying the marker (a sentinel sent from outside the sandbox).
        "mark-udp" => (|| {
            let a: SocketAddr = target
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
            let s = socket(family(a), libc::SOCK_DGRAM, 0)?;
            sendto(s.as_raw_fd(), &marker(op), a, 0)
        })(),
        // An SCTP socket.
        "sctp" => socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP).map(drop),
        // A connected UDP socket sending one datagram with a control message (IP_TOS).
        "udp-cmsg" => (|| {
            let a: SocketAddr = target
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
            let s = socket(family(a), libc::SOCK_DGRAM, 0)?;
            connect(s.as_raw_fd(), a)?;
            let tos = 0x10i32.to_ne_bytes();
            let (level, ty) = if a.is_ipv4() {
                (libc::IPPROTO_IP, libc::IP_TOS)
            } else {
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
            };
            send_cmsg_connected(s.as_raw_fd(), &marker(op), level, ty, &tos)
        })(),
        // `PEER/DEST`: a UDP socket connected to PEER sends to DEST given with family
        // AF_UNSPEC, which udp_sendmsg takes as a destination all the same.
        "unspec-sendto" => (|| {
            let (peer, dest) = two_addrs(target)?;
            let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
            connect(s.as_raw_fd(), peer)?;
            let (mut ss, len) = sockaddr(dest);
            // SAFETY: the storage holds a sockaddr_in; only its family changes.
            unsafe { (*(&raw mut ss).cast::<libc::sockaddr_in>()).sin_family = 0 };
            let data = marker(op);
            // SAFETY: valid buffer and address.
            let n = unsafe {
                libc::sendto(
                    s.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    0,
                    (&raw const ss).cast(),
                    len,
                )
            };
            if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        })(),
        // `IFACE/DEST`: a UDP socket bound to IFACE (SO_BINDTODEVICE) sends to DEST: the
        // kernel looks for DEST on that link.
        "bind-device" => (|| {
            let (iface, dest) = target.split_once('/').ok_or_else(|| invalid(target))?;
            let dest: SocketAddr = dest.parse().map_err(|_| invalid(target))?;
            let s = socket(family(dest), libc::SOCK_DGRAM, 0)?;
            setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_BINDTODEVICE, iface.as_bytes())?;
            sendto(s.as_raw_fd(), &marker(op), dest, 0)
        })(),
        // `IFACE/DEST` (IPv4): one datagram to DEST whose IP_PKTINFO control message names
        // IFACE as the way out.
        "pktinfo-udp" => (|| {
            let (iface, dest) = target.split_once('/').ok_or_else(|| invalid(target))?;
            let dest: SocketAddr = dest.parse().map_err(|_| invalid(target))?;
            let name = std::ffi::CString::new(iface).map_err(|_| invalid(target))?;
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: zeroed in_pktinfo is valid.
            let mut info: libc::in_pktinfo = unsafe { zeroed() };
            info.ipi_ifindex = index as i32;
            // SAFETY: a plain struct viewed as its bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&raw const info).cast::<u8>(),
                    size_of::<libc::in_pktinfo>(),
                )
            };
            let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
            sendmsg_cmsg(
                s.as_raw_fd(),
                &marker(op),
                dest,
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                bytes,
            )
        })(),
        // Push a character into the terminal's input (TIOCSTI) through fd TARGET.
        "tiocsti" => (|| {
            let fd: i32 = target.parse().map_err(|_| invalid(target))?;
            let c = b'x';
            // SAFETY: TIOCSTI reads one byte from the pointer.
            let r = unsafe { libc::ioctl(fd, libc::TIOCSTI, &raw const c) };
            if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        })(),
        // socket(AF_INET, SOCK_PACKET): a packet socket by another name.
        "sock-packet" => {
            // SOCK_PACKET (10), deprecated: the point is to try it.
            const SOCK_PACKET: i32 = 10;
            let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
            socket(libc::AF_INET, SOCK_PACKET, proto).map(drop)
        }
        _ => return None,
    })
}

fn invalid(target: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{target}: not what the op takes"))
}

/// `A/B`, two socket addresses.
fn two_addrs(target: &str) -> io::Result<(SocketAddr, SocketAddr)> {
    let (a, b) = target.split_once('/').ok_or_else(|| invalid(target))?;
    Ok((a.parse().map_err(|_| invalid(target))?, b.parse().map_err(|_| invalid(target))?))
}

/// sendmsg without an address on a connected socket, with one control message.
fn send_cmsg_connected(fd: i32, data: &[u8], level: i32, ty: i32, cdata: &[u8]) -> io::Result<()> {
    let mut payload = data.to_vec();
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: a pure computation.
    let space = unsafe { libc::CMSG_SPACE(cdata.len() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: zeroed msghdr is valid; pointers outlive the call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the buffer holds one header.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = level;
        (*c).cmsg_type = ty;
        (*c).cmsg_len = libc::CMSG_LEN(cdata.len() as u32) as usize;
        std::ptr::copy_nonoverlapping(cdata.as_ptr(), libc::CMSG_DATA(c), cdata.len());
    }
    // SAFETY: a complete msghdr.
    let n = unsafe { libc::sendmsg(fd, &raw const msg, 0) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn abstract_unix(name: &str, ty: i32, stream: bool) -> io::Result<()> {
    let s = socket(libc::AF_UNIX, ty, 0)?;
    // SAFETY: zeroed sockaddr_un is valid.
    let mut sun: libc::sockaddr_un = unsafe { zeroed() };
    sun.sun_family = libc::AF_UNIX as u16;
    let bytes = name.as_bytes();
    for (i, b) in bytes.iter().enumerate().take(sun.sun_path.len() - 1) {
        sun.sun_path[i + 1] = *b as libc::c_char;
    }
    let len = (size_of::<libc::sa_family_t>() + 1 + bytes.len()) as libc::socklen_t;
    // SAFETY: a valid sockaddr_un of `len` bytes.
    let r = unsafe {
        if stream {
            libc::connect(s.as_raw_fd(), (&raw const sun).cast(), len)
        } else {
            libc::sendto(s.as_raw_fd(), b"x".as_ptr().cast(), 1, 0, (&raw const sun).cast(), len)
                as i32
        }
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `capture IFACE`: print `seen <marker>` for every frame on IFACE carrying a marker, until
/// killed. Prints `capturing` once the socket is bound.
pub fn capture(iface: &str) -> ! {
    let fail = |what: &str, e: io::Error| -> ! {
        eprintln!("capture {iface}: {what}: {e}");
        std::process::exit(2)
    };
    let proto = (libc::ETH_P_ALL as u16).to_be();
    let s = socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto))
        .unwrap_or_else(|e| fail("socket", e));
    let name = std::ffi::CString::new(iface).expect("name");
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        fail("if_nametoindex", io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_ll is valid.
    let mut ll: libc::sockaddr_ll = unsafe { zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = proto;
    ll.sll_ifindex = index as i32;
    // SAFETY: a valid sockaddr_ll.
    if unsafe {
        libc::bind(s.as_raw_fd(), (&raw const ll).cast(), size_of::<libc::sockaddr_ll>() as u32)
    } < 0
    {
        fail("bind", io::Error::last_os_error());
    }
    println!("capturing");
    let mut buf = vec![0u8; 65_536];
    loop {
        // SAFETY: a buffer of buf.len() bytes.
        let n = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            fail("recv", io::Error::last_os_error());
        }
        let frame = &buf[..n as usize];
        if let Some(at) = frame.windows(7).position(|w| w == b"NCMARK:") {
            let rest = &frame[at..];
            let end = rest.iter().position(|b| !b.is_ascii_graphic()).unwrap_or(rest.len());
            println!("seen {}", String::from_utf8_lossy(&rest[..end]));
        }
    }
}
