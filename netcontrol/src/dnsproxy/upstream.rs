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
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // A stray datagram with another ID (a late answer to a retry) is not ours.
        if n >= 2 && &buf[..2] == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp(server: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| io::Error::other("query too long for TCP"))?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(query).await?;
    read_message(&mut s).await
}

/// One length-prefixed DNS message from a TCP stream.
pub async fn read_message<R: AsyncReadExt + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg).await?;
    Ok(msg)
}

/// Write one length-prefixed DNS message to a TCP stream.
pub async fn write_message<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("answer too long for TCP"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(msg).await
}
