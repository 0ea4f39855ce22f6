//! The kernel lane: the tests that need a kernel feature this machine's kernel lacks (the BPF
//! LSM, L2TP/IP), on Debian's 6.12 kernel under QEMU. KVM does not work here (a nested guest),
//! so QEMU emulates the CPU (TCG): slow, but a real kernel with a real verifier. The guest
//! shares the host's root read-only (9p, under an overlay) and has no network device; the
//! test binaries and their results go through a second, writable share.
//!
//! `setup` installs QEMU (from bookworm-backports: bookworm's own would remove the image's
//! qemu-utils) and unpacks the kernel; `test` runs the lane after the host's kernel tests.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{TOOLS_DIR, is_root, run};

/// The kernel series: Debian 12's backported 6.12, whose kernels run the BPF LSM by default
/// (`CONFIG_LSM` includes `bpf`) and have L2TP/IP as a module.
const SERIES: &str = "6.12";
/// Modules the guest loads, in dependency order: the 9p root and its overlay, then what the
/// tests use.
const MODULES: &[&str] = &[
    "fs/netfs/netfs",
    "net/9p/9pnet",
    "net/9p/9pnet_virtio",
    "fs/9p/9p",
    "fs/overlayfs/overlay",
    "drivers/net/veth",
    "net/ipv4/udp_tunnel",
    "net/ipv6/ip6_udp_tunnel",
    "net/l2tp/l2tp_core",
    "net/l2tp/l2tp_ip",
];
/// The test binaries the lane runs (tests/tests/<name>.rs).
const TESTS: &[&str] = &["lsm"];
/// How much slower than the host the guest is, for the tests' deadlines.
const SLOWDOWN: &str = "20";
/// The whole guest run, at most.
const GUEST_TIMEOUT: Duration = Duration::from_secs(20 * 60);

fn bpo_apt(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        "-o".into(),
        format!("Dir::Etc::sourcelist={d}/sources.list"),
        "-o".into(),
        format!("Dir::State::lists={d}/lists"),
        "-o".into(),
        format!("Dir::Cache::archives={d}/archives"),
        "-o".into(),
        "APT::Sandbox::User=root".into(),
    ]
}

fn kernel_dir() -> PathBuf {
    Path::new(TOOLS_DIR).join(format!("kernel-{SERIES}"))
}

/// Install QEMU and unpack the newest 6.12 kernel of bookworm-backports (idempotent).
pub fn setup() -> Result<()> {
    let apt = Path::new(TOOLS_DIR).join("apt-bpo");
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    let kdir = kernel_dir();
    if qemu.exists() && kdir.join("vmlinuz").exists() {
        eprintln!("setup: QEMU and the {SERIES} kernel for the kernel lane are installed");
        return Ok(());
    }
    ensure!(is_root(), "setup must install QEMU and a kernel for the kernel lane and needs root");
    for sub in ["lists/partial", "archives/partial"] {
        fs::create_dir_all(apt.join(sub))?;
    }
    fs::write(
        apt.join("sources.list"),
        "deb http://deb.debian.org/debian bookworm-backports main\n",
    )?;
    let o = bpo_apt(&apt);
    run(Command::new("apt-get").args(&o).arg("update"))?;
    if !qemu.exists() {
        run(Command::new("apt-get")
            .args(&o)
            .args(["install", "-y", "--no-install-recommends", "-t", "bookworm-backports"])
            .args(["qemu-system-x86", "qemu-utils"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let search = Command::new("apt-cache")
        .args(&o)
        .args(["search", "--names-only", &format!("^linux-image-{SERIES}\\.[0-9]+\\+deb12-amd64$")])
        .output()
        .context("apt-cache search")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&search.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    names.sort_by_key(|n| patch_level(n));
    let Some(package) = names.pop() else {
        bail!("bookworm-backports lists no linux-image-{SERIES}.*+deb12-amd64")
    };
    let work = apt.join("kernel");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    run(Command::new("apt-get").args(&o).args(["download", &package]).current_dir(&work))?;
    let deb = fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("the downloaded kernel package")?;
    let unpacked = work.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let _ = fs::remove_dir_all(&kdir);
    fs::create_dir_all(kdir.join("modules"))?;
    let boot = fs::read_dir(unpacked.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("vmlinuz in the kernel package")?;
    fs::copy(&boot, kdir.join("vmlinuz"))?;
    let version = boot.file_name().expect("name").to_string_lossy().replace("vmlinuz-", "");
    let tree = unpacked.join("lib/modules").join(&version).join("kernel");
    for m in MODULES {
        let name = Path::new(m).file_name().expect("name").to_string_lossy().into_owned();
        let xz = tree.join(format!("{m}.ko.xz"));
        let out = Command::new("xz").arg("-dc").arg(&xz).output().context("xz")?;
        ensure!(out.status.success(), "decompressing {}", xz.display());
        fs::write(kdir.join("modules").join(format!("{name}.ko")), out.stdout)?;
    }
    fs::write(kdir.join("version"), &version)?;
    let _ = fs::remove_dir_all(&work);
    eprintln!("setup: kernel lane: {version}");
    Ok(())
}

/// `linux-image-6.12.117+deb12-amd64` -> 117.
fn patch_level(package: &str) -> u32 {
    package
        .split('.')
        .nth(2)
        .and_then(|p| p.split('+').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The guest's /init: the 9p root under a tmpfs overlay, the results share, then the script.
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in @MODULES@; do $B insmod /modules/$m.ko || echo "lane: insmod $m failed"; done
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /hostroot
$B mount -t tmpfs tmpfs /upper
$B mkdir -p /upper/u /upper/w
$B mount -t overlay overlay -o lowerdir=/hostroot,upperdir=/upper/u,workdir=/upper/w /newroot
$B mkdir -p /newroot/lane-out
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 laneout /newroot/lane-out
$B umount /proc /sys /dev
exec $B switch_root /newroot /bin/sh /lane-out/guest.sh
"#;

/// In the guest's root: the mounts the tests expect, then each test binary.
const GUEST: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
ip link set lo up
cd /lane-out
echo "kernel $(uname -r), LSMs $(cat /sys/kernel/security/lsm)" > guest.log
for t in @TESTS@; do
  NETCONTROL_REQUIRE_KERNEL_TESTS=1 NETCONTROL_REQUIRE_LSM=1 NETCONTROL_REQUIRE_L2TP=1 \
    NETCONTROL_TEST_SLOWDOWN=@SLOWDOWN@ @STAGE@/deps/$t --test-threads=1 >> guest.log 2>&1
  echo "$t $?" >> results
done
sync
echo o > /proc/sysrq-trigger
"#;

/// Run the lane's tests in the guest; fail unless every one passed there.
pub fn test() -> Result<()> {
    let started = Instant::now();
    let kdir = kernel_dir();
    ensure!(
        kdir.join("vmlinuz").exists() && Path::new("/usr/bin/qemu-system-x86_64").exists(),
        "the kernel lane is not installed: run `cargo xtask setup`"
    );
    let version = fs::read_to_string(kdir.join("version")).unwrap_or_default();
    let work = tempfile_dir()?;
    let result = run_guest(&kdir, &work);
    let log = fs::read_to_string(work.join("out/guest.log")).unwrap_or_default();
    let results = fs::read_to_string(work.join("out/results")).unwrap_or_default();
    let _ = fs::remove_dir_all(&work);
    result?;
    eprintln!("{log}");
    let failed: Vec<&str> = results.lines().filter(|l| !l.ends_with(" 0")).collect();
    ensure!(
        results.lines().count() == TESTS.len() && failed.is_empty(),
        "kernel lane ({version}): {} (results: {results:?})",
        if results.is_empty() { "the guest ran no test" } else { "tests failed" }
    );
    eprintln!("test: kernel lane on {version} passed in {:.0?}", started.elapsed());
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("netcontrol-lane-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for sub in ["initramfs", "out/stage/deps"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    Ok(dir)
}

fn run_guest(kdir: &Path, work: &Path) -> Result<()> {
    // The binaries, without debug information (read over 9p, they would be hundreds of MB),
    // in the results share (the guest's /tmp is its own).
    let stage = work.join("out/stage");
    let target = super::workspace_root().join("target/debug");
    for bin in ["netcontrol", "nc-probe"] {
        strip(&target.join(bin), &stage.join(bin))?;
    }
    for t in TESTS {
        strip(&test_binary(t)?, &stage.join("deps").join(t))?;
    }
    // The initramfs: busybox, the modules, /init.
    let ir = work.join("initramfs");
    for d in ["bin", "proc", "sys", "dev", "hostroot", "upper", "newroot", "modules"] {
        fs::create_dir_all(ir.join(d))?;
    }
    fs::copy("/bin/busybox", ir.join("bin/busybox"))?;
    let mut order = Vec::new();
    for m in MODULES {
        let name = Path::new(m).file_name().expect("name").to_string_lossy().into_owned();
        fs::copy(
            kdir.join("modules").join(format!("{name}.ko")),
            ir.join(format!("modules/{name}.ko")),
        )?;
        order.push(name);
    }
    write_exec(&ir.join("init"), &INIT.replace("@MODULES@", &order.join(" ")))?;
    let cpio = Command::new("sh")
        .arg("-c")
        .arg("find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz")
        .current_dir(&ir)
        .status()?;
    ensure!(cpio.success(), "building the initramfs");
    let guest = GUEST
        .replace("@TESTS@", &TESTS.join(" "))
        .replace("@SLOWDOWN@", SLOWDOWN)
        .replace("@STAGE@", "/lane-out/stage");
    write_exec(&work.join("out/guest.sh"), &guest)?;
    let mut qemu = Command::new("timeout");
    qemu.arg(GUEST_TIMEOUT.as_secs().to_string())
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-nic", "none"])
        .arg("-serial")
        .arg(format!("file:{}", work.join("out/serial.log").display()))
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=laneout,security_model=none",
            work.join("out").display()
        ))
        .arg("-kernel")
        .arg(kdir.join("vmlinuz"))
        .arg("-initrd")
        .arg(work.join("initrd.gz"))
        .args(["-append", "console=ttyS0 panic=-1 quiet"]);
    run(&mut qemu).with_context(|| {
        let serial = fs::read_to_string(work.join("out/serial.log")).unwrap_or_default();
        format!("the guest (serial console):\n{}", tail(&serial, 40))
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn strip(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("objcopy").arg("--strip-debug").arg(from).arg(to))
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The test binary cargo built for tests/tests/<name>.rs.
fn test_binary(name: &str) -> Result<PathBuf> {
    let out = Command::new("cargo")
        .args([
            "test",
            "-p",
            "netcontrol-tests",
            "--test",
            name,
            "--no-run",
            "--message-format=json",
        ])
        .env("NETCONTROL_REQUIRE_EBPF", "1")
        .output()
        .context("cargo test --no-run")?;
    ensure!(out.status.success(), "building the {name} tests");
    // One JSON object per line; the test's has `"executable":"<path>"`.
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains("\"executable\":\"") && l.contains(&format!("\"name\":\"{name}\"")))
        .find_map(|l| {
            let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = l[start..].find('"')? + start;
            Some(PathBuf::from(&l[start..end]))
        })
        .with_context(|| format!("no executable for the {name} tests in cargo's output"))
}
