//! Builds netcontrol-ebpf for bpfel-unknown-none with aya-build and leaves the object at
//! OUT_DIR/netcontrol, where `bpf::object` embeds it.
//!
//! NETCONTROL_SKIP_EBPF=1 (or aya-build's AYA_BUILD_SKIP=1) writes an empty object instead, so
//! that the userspace compiles and its unit tests run on machines without the BPF toolchain;
//! loading then fails with a clear error.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=NETCONTROL_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    let skip = ["NETCONTROL_SKIP_EBPF", "AYA_BUILD_SKIP"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| v == "1" || v == "true"));
    if skip {
        std::fs::write(out.join("netcontrol"), [])?;
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
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
