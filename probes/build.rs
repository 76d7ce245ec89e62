//! Compiles `bpf/apiary.bpf.c` (CO-RE) with clang. `vmlinux.h` is generated from the build
//! machine's kernel BTF with bpftool, unless `APIARY_VMLINUX_H` names one to use.

use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str = "building Apiary's eBPF programs needs clang, libbpf-dev and bpftool: \
    `apt-get install clang llvm libbpf-dev bpftool` (.ci/run does this)";

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf = manifest.join("../bpf");
    for file in ["apiary.bpf.c", "apiary.h"] {
        println!("cargo:rerun-if-changed={}", bpf.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=APIARY_VMLINUX_H");
    println!("cargo:rerun-if-env-changed=CLANG");

    let include = out.join("include");
    std::fs::create_dir_all(&include).expect("create OUT_DIR/include");
    let vmlinux = include.join("vmlinux.h");
    match std::env::var_os("APIARY_VMLINUX_H") {
        Some(given) => {
            std::fs::copy(&given, &vmlinux)
                .unwrap_or_else(|e| panic!("APIARY_VMLINUX_H={given:?}: {e}"));
        }
        None if !vmlinux.exists() => generate_vmlinux(&vmlinux),
        None => {}
    }

    let object = out.join("apiary.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let output = Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-Wall",
            "-Wno-unused-function",
        ])
        .arg("-I")
        .arg(&include)
        .arg("-I")
        .arg(&bpf)
        .arg("-c")
        .arg(bpf.join("apiary.bpf.c"))
        .arg("-o")
        .arg(&object)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {clang}: {e}; {INSTALL_HINT}"));
    if !output.status.success() {
        panic!(
            "clang failed to compile bpf/apiary.bpf.c:\n{}\n{INSTALL_HINT}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn generate_vmlinux(target: &Path) {
    let btf = "/sys/kernel/btf/vmlinux";
    if !Path::new(btf).exists() {
        panic!("{btf} is missing: this kernel has no BTF; set APIARY_VMLINUX_H to a vmlinux.h generated on a machine with BTF");
    }
    let output = Command::new("bpftool")
        .args(["btf", "dump", "file", btf, "format", "c"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run bpftool: {e}; {INSTALL_HINT}"));
    if !output.status.success() {
        panic!(
            "bpftool failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::write(target, output.stdout).expect("write vmlinux.h");
}
