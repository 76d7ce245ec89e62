//! Each probe's programs and where they attach; loading a program (once) and attaching it (as
//! often as its probe is enabled again), with the verifier's complaint cut to what it says.

use std::path::Path;

use aya::programs::trace_point::TracePointLink;
use aya::programs::uprobe::UProbeLink;
use aya::programs::{TracePoint, UProbe};
use aya::Ebpf;

/// Where each probe's programs attach.
pub(crate) enum Attach {
    Tracepoint(&'static str, &'static str),
    Uprobe(&'static str),
    Uretprobe(&'static str),
}

pub(crate) const PROGRAMS: &[(&str, &str, Attach)] = &[
    (
        "http",
        "http_enter_write",
        Attach::Tracepoint("syscalls", "sys_enter_write"),
    ),
    (
        "http",
        "http_enter_sendto",
        Attach::Tracepoint("syscalls", "sys_enter_sendto"),
    ),
    (
        "http",
        "http_enter_writev",
        Attach::Tracepoint("syscalls", "sys_enter_writev"),
    ),
    (
        "http",
        "http_enter_sendmsg",
        Attach::Tracepoint("syscalls", "sys_enter_sendmsg"),
    ),
    (
        "http",
        "http_exit_read",
        Attach::Tracepoint("syscalls", "sys_exit_read"),
    ),
    (
        "http",
        "http_exit_recvfrom",
        Attach::Tracepoint("syscalls", "sys_exit_recvfrom"),
    ),
    (
        "http",
        "http_exit_readv",
        Attach::Tracepoint("syscalls", "sys_exit_readv"),
    ),
    (
        "http",
        "http_exit_recvmsg",
        Attach::Tracepoint("syscalls", "sys_exit_recvmsg"),
    ),
    (
        "http",
        "http_enter_close",
        Attach::Tracepoint("syscalls", "sys_enter_close"),
    ),
    ("tls", "tls_ssl_write", Attach::Uprobe("SSL_write")),
    ("tls", "tls_ssl_read", Attach::Uprobe("SSL_read")),
    ("tls", "tls_ssl_read_ret", Attach::Uretprobe("SSL_read")),
    ("tls", "tls_ssl_write_ex", Attach::Uprobe("SSL_write_ex")),
    ("tls", "tls_ssl_read_ex", Attach::Uprobe("SSL_read_ex")),
    ("tls", "tls_ssl_free", Attach::Uprobe("SSL_free")),
    (
        "tls",
        "tls_ssl_read_ex_ret",
        Attach::Uretprobe("SSL_read_ex"),
    ),
    (
        "tcp",
        "tcp_state",
        Attach::Tracepoint("sock", "inet_sock_set_state"),
    ),
    (
        "tcp",
        "tcp_retransmit",
        Attach::Tracepoint("tcp", "tcp_retransmit_skb"),
    ),
    (
        "process",
        "process_exec",
        Attach::Tracepoint("sched", "sched_process_exec"),
    ),
    (
        "process",
        "process_exit",
        Attach::Tracepoint("sched", "sched_process_exit"),
    ),
];

/// An attached program: dropping it detaches the program, which stays loaded.
pub(crate) enum Link {
    // Held for their Drop (the detach).
    Tracepoint(#[allow(dead_code)] TracePointLink),
    Uprobe(#[allow(dead_code)] UProbeLink),
}

/// Loads one program into the kernel (the verifier runs here): once, whatever its attachments.
pub(crate) fn load_one(
    ebpf: &mut Ebpf,
    name: &str,
    attach: &Attach,
    libssl: Result<&Path, String>,
) -> Result<(), String> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("the eBPF object has no program {name}"))?;
    let explain = |e: aya::programs::ProgramError| verifier_summary(&e.to_string());
    match attach {
        Attach::Tracepoint(..) => {
            let tracepoint: &mut TracePoint = program.try_into().map_err(|e| format!("{e}"))?;
            tracepoint.load().map_err(explain)
        }
        Attach::Uprobe(_) | Attach::Uretprobe(_) => {
            let libssl = libssl?;
            if !libssl.exists() {
                return Err(format!(
                    "{} does not exist: no HTTPS plaintext from this node",
                    libssl.display()
                ));
            }
            let uprobe: &mut UProbe = program.try_into().map_err(|e| format!("{e}"))?;
            uprobe.load().map_err(explain)
        }
    }
}

/// Attaches one loaded program; the link detaches it when dropped.
pub(crate) fn attach_one(
    ebpf: &mut Ebpf,
    name: &str,
    attach: &Attach,
    libssl: Result<&Path, String>,
) -> Result<Link, String> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("the eBPF object has no program {name}"))?;
    match attach {
        Attach::Tracepoint(category, event) => {
            let tracepoint: &mut TracePoint = program.try_into().map_err(|e| format!("{e}"))?;
            let id = tracepoint
                .attach(category, event)
                .map_err(|e| format!("cannot attach to tracepoint {category}/{event}: {e}"))?;
            Ok(Link::Tracepoint(
                tracepoint.take_link(id).map_err(|e| e.to_string())?,
            ))
        }
        Attach::Uprobe(symbol) | Attach::Uretprobe(symbol) => {
            let libssl = libssl?;
            let uprobe: &mut UProbe = program.try_into().map_err(|e| format!("{e}"))?;
            let id = uprobe
                .attach(
                    *symbol,
                    libssl,
                    aya::programs::uprobe::UProbeScope::AllProcesses,
                )
                .map_err(|e| format!("cannot attach to {symbol} in {}: {e}", libssl.display()))?;
            Ok(Link::Uprobe(
                uprobe.take_link(id).map_err(|e| e.to_string())?,
            ))
        }
    }
}

/// The verifier's log can run to thousands of lines; its end says what was wrong.
pub(crate) fn verifier_summary(message: &str) -> String {
    let lines: Vec<&str> = message.lines().collect();
    if lines.len() <= 12 {
        return message.to_string();
    }
    format!("{} … {}", lines[0], lines[lines.len() - 8..].join(" | "))
}
