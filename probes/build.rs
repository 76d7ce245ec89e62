//! Compiles the eBPF programs, `bpf/apiary.bpf.c` and the headers beside it (CO-RE), with clang.
//! `vmlinux.h` is generated from the build machine's kernel BTF with bpftool, unless
//! `APIARY_VMLINUX_H` names one to use.
//!
//! Also reads the ABI of `bpf/apiary.h` (its integer `#define`s and its `AP_ABI_SIZE` /
//! `AP_ABI_OFFSET` lines, which clang checks against the C structs) into
//! `$OUT_DIR/apiary_abi.rs`, against which `src/abi.rs` checks its `#[repr(C)]` mirrors: a layout
//! change on one side only fails the build.
//!
//! A missing tool or a failed step ends the build with one message (no panic).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str = "run ./dev at the repository root (it installs clang, llvm, \
    libbpf-dev and bpftool when they are absent), or `apt-get install clang llvm libbpf-dev bpftool`";

fn main() {
    if let Err(message) = build() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf = manifest.join("../bpf");
    // The directory: cargo rebuilds when any file in it changes, a new header included.
    println!("cargo:rerun-if-changed={}", bpf.display());
    for var in ["APIARY_VMLINUX_H", "CLANG", "BPFTOOL"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let given_vmlinux = std::env::var_os("APIARY_VMLINUX_H").map(PathBuf::from);
    if let Some(given) = &given_vmlinux {
        println!("cargo:rerun-if-changed={}", given.display());
    }

    let header = bpf.join("apiary.h");
    let text = std::fs::read_to_string(&header)
        .map_err(|e| format!("cannot read {}: {e}", header.display()))?;
    let abi = abi_module(&text).map_err(|e| format!("{}: {e}", header.display()))?;
    std::fs::write(out.join("apiary_abi.rs"), abi)
        .map_err(|e| format!("cannot write OUT_DIR/apiary_abi.rs: {e}"))?;

    let include = out.join("include");
    std::fs::create_dir_all(&include)
        .map_err(|e| format!("cannot create {}: {e}", include.display()))?;
    let vmlinux = include.join("vmlinux.h");
    let need_bpftool = given_vmlinux.is_none() && !vmlinux.exists();

    // Every missing tool in one message, before running any.
    let clang = tool("CLANG", "clang");
    let bpftool = tool("BPFTOOL", "bpftool");
    let mut missing = Vec::new();
    if clang.is_none() {
        missing.push(describe_missing("CLANG", "clang"));
    }
    if need_bpftool && bpftool.is_none() {
        missing.push(describe_missing("BPFTOOL", "bpftool"));
    }
    if !missing.is_empty() {
        return Err(format!(
            "building Apiary's eBPF programs needs {}: {INSTALL_HINT}",
            missing.join(" and ")
        ));
    }
    let clang = clang.expect("checked above");

    match (&given_vmlinux, bpftool) {
        (Some(given), _) => {
            std::fs::copy(given, &vmlinux)
                .map_err(|e| format!("APIARY_VMLINUX_H={}: {e}", given.display()))?;
        }
        (None, Some(bpftool)) if need_bpftool => generate_vmlinux(&bpftool, &vmlinux)?,
        _ => {}
    }

    let source = bpf.join("apiary.bpf.c");
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
        .arg(&source)
        .arg("-o")
        .arg(out.join("apiary.bpf.o"))
        .output()
        .map_err(|e| format!("cannot run {}: {e}; {INSTALL_HINT}", clang.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("bpf/bpf_helpers.h' file not found") {
            return Err(format!(
                "building Apiary's eBPF programs needs libbpf-dev (clang finds no \
                 bpf/bpf_helpers.h): {INSTALL_HINT}"
            ));
        }
        return Err(format!(
            "clang failed to compile bpf/apiary.bpf.c:\n{stderr}"
        ));
    }
    Ok(())
}

/// The program to run for a tool: `$VAR` if set, else `name` on PATH or, as Debian puts bpftool
/// there and a user's PATH often lacks it, in /usr/sbin or /sbin. None if there is none.
fn tool(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(given) = std::env::var_os(var) {
        let given = PathBuf::from(given);
        return if given.components().count() > 1 {
            given.is_file().then_some(given)
        } else {
            find_program(&given.to_string_lossy())
        };
    }
    find_program(name)
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn describe_missing(var: &str, name: &str) -> String {
    match std::env::var(var) {
        Ok(given) => format!("{name} ({var}={given} is not a program)"),
        Err(_) => format!("{name}, which is not installed (not on PATH)"),
    }
}

fn generate_vmlinux(bpftool: &Path, target: &Path) -> Result<(), String> {
    let btf = "/sys/kernel/btf/vmlinux";
    if !Path::new(btf).exists() {
        return Err(format!(
            "{btf} is missing: this kernel has no BTF; set APIARY_VMLINUX_H to a vmlinux.h \
             generated on a machine with BTF"
        ));
    }
    let output = Command::new(bpftool)
        .args(["btf", "dump", "file", btf, "format", "c"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}; {INSTALL_HINT}", bpftool.display()))?;
    if !output.status.success() {
        return Err(format!(
            "bpftool failed to dump {btf}: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    std::fs::write(target, output.stdout)
        .map_err(|e| format!("cannot write {}: {e}", target.display()))
}

/// One struct of apiary.h as its AP_ABI_* lines give it.
struct Layout {
    name: String,
    size: Option<u64>,
    fields: Vec<(String, u64)>,
}

/// The Rust module of apiary.h's ABI: each integer `#define NAME VALUE` as a `u64` constant,
/// `STRUCTS`, and per struct a module with its `SIZE`, its `FIELDS` in order and their
/// offsets in `offset`.
fn abi_module(header: &str) -> Result<String, String> {
    let mut constants = Vec::new();
    let mut layouts: Vec<Layout> = Vec::new();
    for (number, line) in header.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", number + 1);
        let line = line.trim();
        if let Some(define) = line.strip_prefix("#define ") {
            let mut words = define.split_whitespace();
            if let (Some(name), Some(value)) = (words.next(), words.next()) {
                let rest: Vec<&str> = words.collect();
                let plain = rest.is_empty() || rest[0].starts_with("/*");
                if let (true, Some(value)) = (plain, integer(value)) {
                    constants.push((name.to_string(), value));
                }
            }
        } else if let Some(args) = macro_args(line, "AP_ABI_SIZE") {
            let [name, size] = args.as_slice() else {
                return Err(at("AP_ABI_SIZE takes (struct, size)".into()));
            };
            let size = integer(size).ok_or_else(|| at(format!("size {size:?} is not a number")))?;
            let layout = layout_of(&mut layouts, name);
            if layout.size.replace(size).is_some() {
                return Err(at(format!("a second AP_ABI_SIZE for {name}")));
            }
        } else if let Some(args) = macro_args(line, "AP_ABI_OFFSET") {
            let [name, field, offset] = args.as_slice() else {
                return Err(at("AP_ABI_OFFSET takes (struct, field, offset)".into()));
            };
            let offset =
                integer(offset).ok_or_else(|| at(format!("offset {offset:?} is not a number")))?;
            let layout = layout_of(&mut layouts, name);
            if layout
                .fields
                .last()
                .is_some_and(|&(_, last)| offset <= last)
            {
                return Err(at(format!(
                    "{name}.{field}: list a struct's fields in the order they are declared"
                )));
            }
            layout.fields.push((field.to_string(), offset));
        } else if line.starts_with("AP_ABI_") {
            return Err(at(format!(
                "cannot read {line:?}: write AP_ABI_SIZE(struct, size); or AP_ABI_OFFSET(struct, field, offset); on one line"
            )));
        }
    }

    let mut rust =
        String::from("// Generated by probes/build.rs from bpf/apiary.h: do not edit.\n\n");
    for (name, value) in &constants {
        writeln!(rust, "pub const {name}: u64 = {value};").unwrap();
    }
    let names: Vec<String> = layouts.iter().map(|l| format!("{:?}", l.name)).collect();
    writeln!(
        rust,
        "\npub const STRUCTS: &[&str] = &[{}];",
        names.join(", ")
    )
    .unwrap();
    for layout in &layouts {
        let size = layout.size.ok_or_else(|| {
            format!(
                "struct {} has AP_ABI_OFFSET lines but no AP_ABI_SIZE",
                layout.name
            )
        })?;
        let fields: Vec<String> = layout
            .fields
            .iter()
            .map(|(f, _)| format!("{f:?}"))
            .collect();
        writeln!(rust, "\npub mod {} {{", layout.name).unwrap();
        writeln!(rust, "    pub const SIZE: usize = {size};").unwrap();
        writeln!(
            rust,
            "    pub const FIELDS: &[&str] = &[{}];",
            fields.join(", ")
        )
        .unwrap();
        writeln!(
            rust,
            "    #[allow(non_upper_case_globals)]\n    pub mod offset {{"
        )
        .unwrap();
        for (field, offset) in &layout.fields {
            writeln!(rust, "        pub const {field}: usize = {offset};").unwrap();
        }
        writeln!(rust, "    }}\n}}").unwrap();
    }
    Ok(rust)
}

fn layout_of<'a>(layouts: &'a mut Vec<Layout>, name: &str) -> &'a mut Layout {
    let index = match layouts.iter().position(|l| l.name == name) {
        Some(index) => index,
        None => {
            layouts.push(Layout {
                name: name.to_string(),
                size: None,
                fields: Vec::new(),
            });
            layouts.len() - 1
        }
    };
    &mut layouts[index]
}

/// The arguments of `NAME(a, b, c);` on one line, trimmed.
fn macro_args<'a>(line: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let inner = line.strip_prefix(name)?.trim_start().strip_prefix('(')?;
    let inner = inner
        .trim_end()
        .strip_suffix(';')?
        .trim_end()
        .strip_suffix(')')?;
    Some(inner.split(',').map(str::trim).collect())
}

/// A C integer literal: decimal, 0x hexadecimal or 0 octal.
fn integer(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if text.len() > 1 && text.starts_with('0') {
        u64::from_str_radix(&text[1..], 8).ok()
    } else {
        text.parse().ok()
    }
}
