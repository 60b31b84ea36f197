use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const PROGS: &[&str] = &["netdrift", "probe", "offwake"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR must be set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH must be set");
    let target_arch = match arch.as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        "riscv64" => "riscv",
        "powerpc64" => "powerpc",
        "s390x" => "s390",
        other => other,
    };
    // The skeletons are piped through rustfmt, only for looks; rustup's proxy
    // without the rustfmt component (`--profile minimal`, the rust images)
    // fails instead of being absent, which would fail the build: a path that
    // does not exist makes libbpf-cargo skip the formatting.
    let rustfmt_works = std::process::Command::new("rustfmt")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let rustfmt = if rustfmt_works { PathBuf::from("rustfmt") } else { out.join("no-rustfmt") };
    for name in PROGS {
        let src = format!("src/bpf/{name}.bpf.c");
        // -mcpu=v3: compare-and-swap (kernel 5.12; trace needs 5.15 for task_pt_regs anyway).
        SkeletonBuilder::new()
            .source(&src)
            .rustfmt(&rustfmt)
            .clang_args(["-I", "src/bpf", "-mcpu=v3", "-Wall", "-Wno-unused-variable", &format!("-D__TARGET_ARCH_{target_arch}")])
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| panic!("building {src}: {e:#}"));
        println!("cargo:rerun-if-changed={src}");
    }
    println!("cargo:rerun-if-changed=src/bpf/netdrift.h");
    println!("cargo:rerun-if-changed=src/bpf/offwake.h");
    println!("cargo:rerun-if-changed=src/bpf/targets.bpf.h");
    println!("cargo:rerun-if-changed=src/bpf/preempt.bpf.h");
    println!("cargo:rerun-if-changed=src/bpf/sched.bpf.h");
    println!("cargo:rerun-if-changed=src/bpf/vmlinux.h");
}
