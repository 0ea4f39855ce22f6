//! Builds netcontrol-ebpf for bpfel-unknown-none with aya-build and leaves the object at
//! OUT_DIR/netcontrol, where `bpf::object` embeds it.
//!
//! Without the BPF toolchain (`cargo xtask setup`), or with NETCONTROL_SKIP_EBPF=1 (or
//! aya-build's AYA_BUILD_SKIP=1), an empty object is embedded instead, with a cargo warning, so
//! that the userspace compiles and its unit tests run anywhere; loading then fails with a clear
//! error. NETCONTROL_REQUIRE_EBPF=1 (set by xtask and CI) turns a missing toolchain into a
//! build failure.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=NETCONTROL_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=NETCONTROL_REQUIRE_EBPF");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    let skip = ["NETCONTROL_SKIP_EBPF", "AYA_BUILD_SKIP"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| v == "1" || v == "true"));
    let required = std::env::var_os("NETCONTROL_REQUIRE_EBPF").is_some_and(|v| v == "1");
    let missing = if skip { None } else { missing_toolchain() };
    if skip || (missing.is_some() && !required) {
        if let Some(what) = missing {
            // Never created: the check runs again on every build until the toolchain is there.
            println!("cargo:rerun-if-changed={}", out.join("bpf-toolchain-appeared").display());
            println!(
                "cargo:warning=building netcontrol WITHOUT its eBPF programs ({what}); it will \
                 refuse to run. Install the toolchain with `cargo xtask setup`."
            );
        }
        std::fs::write(out.join("netcontrol"), [])?;
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    // The object also compiles netcontrol-common (the ABI): rebuild it when that changes.
    if let Some(common) = packages.iter().find(|p| p.name.as_str() == "netcontrol-common")
        && let Some(dir) = common.manifest_path.parent()
    {
        println!("cargo:rerun-if-changed={dir}");
    }
    let pkg = packages
        .into_iter()
        .find(|p| p.name.as_str() == "netcontrol-ebpf")
        .ok_or_else(|| anyhow!("package netcontrol-ebpf not found in the workspace"))?;
    let root_dir = pkg.manifest_path.parent().ok_or_else(|| anyhow!("no parent dir"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: pkg.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        // Debian's rustc-web linked as a rustup toolchain: see docs/toolchain.md.
        aya_build::Toolchain::Custom("bpf"),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the BPF \
         toolchain, or set NETCONTROL_SKIP_EBPF=1 to build without them",
    )
}

/// What is missing to build the eBPF programs, if anything.
fn missing_toolchain() -> Option<String> {
    let ok = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok("rustup", &["run", "bpf", "rustc", "--version"]) {
        return Some("no rustup toolchain named `bpf`".into());
    }
    if !ok("bpf-linker", &["--version"]) {
        return Some("bpf-linker not found".into());
    }
    None
}
