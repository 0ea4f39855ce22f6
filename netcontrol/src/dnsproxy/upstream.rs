//! Forwarding allowed queries to the upstream servers, unchanged, and bringing the answer back.
//!
//! Each query gets its own connected socket: the kernel then drops datagrams from anyone but
//! the server, and no ID table is shared between queries.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Ask the servers in turn until one answers; the error of the last one otherwise.
pub async fn forward(
    servers: &[SocketAddr],
    query: &[u8],
    transport: Transport,
    per_server: Duration,
) -> Result<Vec<u8>, String> {
    let id = query.get(..2).ok_or("a query shorter than its header")?;
    let mut last = "no upstream DNS server".to_owned();
    for server in servers {
        let attempt = match transport {
            Transport::Udp => timeout(per_server, udp(*server, query, id)).await,
            Transport::Tcp => timeout(per_server, tcp(*server, query)).await,
        };
        match attempt {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = format!("{server}: {e}"),
            Err(_) => last = format!("{server}: no answer within {per_server:?}"),
        }
    }
    Err(last)
}

async fn udp(server: SocketAddr, query: &[u8], id: &[u8]) -> io::Result<Vec<u8>> {
    let local: SocketAddr =
        if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("addr");
    let sock = UdpSocket::bind(local).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    loop {
        let (answer, _) = receive(&sock, |b| sock.try_recv(b).map(|n| (n, server))).await?;
        // A stray datagram with another ID (a late answer to a retry) is not ours.
        if answer.get(..2) == Some(id) {
            return Ok(answer);
        }
    }
}

thread_local! {
    /// The one receive buffer of each thread. A buffer per socket would cost every idle proxy
    /// (thousands of sandboxes) and every query waiting on a slow server 64 KiB.
    static DATAGRAM: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; 65_535].into_boxed_slice());
}

/// The next datagram on `sock` (read by `recv` into the thread's buffer) and its sender,
/// copied out at its own length.
pub async fn receive(
    sock: &UdpSocket,
    recv: impl Fn(&mut [u8]) -> io::Result<(usize, SocketAddr)>,
) -> io::Result<(Vec<u8>, SocketAddr)> {
    loop {
        sock.readable().await?;
        // No await while the buffer is borrowed: another task on this thread may need it.
        let got =
            DATAGRAM.with_borrow_mut(|buf| recv(buf).map(|(n, from)| (buf[..n].to_vec(), from)));
        match got {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

async fn tcp(server: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| io::Error::other("query too long for TCP"))?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(query).await?;
    read_message(&mut s, usize::from(u16::MAX)).await
}

/// One length-prefixed DNS message of at most `max` bytes from a TCP stream. Memory grows
/// with what arrives, not with what the length prefix claims.
pub async fn read_message<R: AsyncReadExt + Unpin>(r: &mut R, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {len}-byte message (at most {max} taken)"),
        ));
    }
    let mut msg = Vec::with_capacity(len.min(512));
    r.take(len as u64).read_to_end(&mut msg).await?;
    if msg.len() < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(msg)
}

/// Write one length-prefixed DNS message to a TCP stream.
pub async fn write_message<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("answer too long for TCP"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(msg).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: u16, body: &[u8]) -> Vec<u8> {
        let mut m = len.to_be_bytes().to_vec();
        m.extend_from_slice(body);
        m
    }

    #[tokio::test]
    async fn a_message_is_read_as_it_arrives_and_only_up_to_its_limit() {
        let m = read_message(&mut &framed(3, b"abc")[..], 4096).await.expect("whole");
        assert_eq!(m, b"abc");
        // A prefix claiming more than a query can be is refused before anything is taken.
        let e = read_message(&mut &framed(5000, b"abc")[..], 4096).await.expect_err("too long");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A claim that the bytes never make good: an error, and no 64 KiB held meanwhile.
        let e = read_message(&mut &framed(65_535, b"abc")[..], 65_535).await.expect_err("short");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
