//! A real DNS server for tests (dnsmasq), and a private /etc/resolv.conf pointing at it.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// dnsmasq on `<ip>:53` in the calling thread's network namespace. It answers only names set
/// with [`Dnsmasq::set`] (from a hosts directory it re-reads by itself) and says NXDOMAIN to
/// everything else; nothing is ever forwarded.
pub struct Dnsmasq {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// `ttl`: the TTL of every answer, in seconds.
    pub fn start(ip: &str, ttl: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = dir.path().join("hosts.d");
        fs::create_dir(&hosts).expect("hosts dir");
        let conf = dir.path().join("dnsmasq.conf");
        fs::write(
            &conf,
            format!(
                "port=53\nlisten-address={ip}\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\n\
                 user=root\npid-file=\nlocal-ttl={ttl}\nhostsdir={}\naddress=/#/\n",
                hosts.display()
            ),
        )
        .expect("write dnsmasq.conf");
        let log = dir.path().join("dnsmasq.log");
        let mut child = Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf.display()))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("dnsmasq (installed by `cargo xtask setup`)");
        let addr: SocketAddr = format!("{ip}:53").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "dnsmasq did not start on {addr} ({exited:?}): {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child: Some(child), dir, addr }
    }

    /// Make `name` resolve to `ips` (replacing what it had), atomically.
    pub fn set(&self, name: &str, ips: &[&str]) {
        let hosts = self.dir.path().join("hosts.d");
        let tmp = self.dir.path().join(format!("{name}.tmp"));
        let text: String = ips.iter().map(|ip| format!("{ip} {name}\n")).collect();
        fs::write(&tmp, text).expect("write hosts file");
        fs::rename(&tmp, hosts.join(name)).expect("rename hosts file");
        // dnsmasq notices through inotify; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Many names at once, one address each, in one hosts file.
    pub fn set_many(&self, names: &[(String, String)]) {
        let hosts = self.dir.path().join("hosts.d");
        let tmp = self.dir.path().join("many.tmp");
        let text: String = names.iter().map(|(name, ip)| format!("{ip} {name}\n")).collect();
        fs::write(&tmp, text).expect("write hosts file");
        fs::rename(&tmp, hosts.join("many")).expect("rename hosts file");
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Stop answering (the server goes away).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Give the calling thread (and what it starts) its own /etc/resolv.conf naming `server`, in a
/// private mount namespace: nothing it resolves goes to the machine's resolver. Keep the
/// returned directory as long as the thread runs.
pub fn private_resolv_conf(server: SocketAddr) -> tempfile::TempDir {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .expect("make mounts private");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("resolv.conf");
    fs::write(&file, format!("nameserver {}\noptions timeout:1 attempts:1\n", server.ip()))
        .expect("write resolv.conf");
    mount(Some(&file), "/etc/resolv.conf", None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .expect("bind-mount resolv.conf");
    dir
}

/// A DNS "server" that records every query's bytes and relays it to `upstream` (dnsmasq):
/// what a sandbox's queries look like when they reach whoever runs a name's DNS.
pub struct Recorder {
    pub addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    pub fn start(ip: &str, upstream: SocketAddr) -> Self {
        let sock = std::net::UdpSocket::bind(format!("{ip}:53")).expect("bind the recorder");
        let addr = sock.local_addr().expect("addr");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, client)) = sock.recv_from(&mut buf) {
                let query = buf[..n].to_vec();
                log.lock().expect("lock").push(query.clone());
                let up = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                up.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
                let _ = up.send_to(&query, upstream);
                let mut answer = vec![0u8; 65_535];
                if let Ok(m) = up.recv(&mut answer) {
                    let _ = sock.send_to(&answer[..m], client);
                }
            }
        });
        Self { addr, seen }
    }

    /// Every query received so far.
    pub fn queries(&self) -> Vec<Vec<u8>> {
        self.seen.lock().expect("lock").clone()
    }
}
