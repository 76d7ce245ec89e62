//! The agent's CPU priority: it yields to the programs it watches.
//!
//! Spans wait in the probes' ring buffer (seconds of them at thousands of requests/s), so the
//! agent can run a little later without losing anything, while a request that waits behind it
//! shows in the workload's tail latency. A niceness above 0 lets the scheduler run the
//! workload's threads first when both want a core; the agent still gets its share (about a
//! tenth of a contended core at nice 10 against nice-0 threads), which Raft heartbeats and the
//! ring drain need.

use anyhow::{Context, Result};

/// Gives every thread of this process (and so every thread they start later) `nice`.
/// Linux keeps a niceness per thread: setting it for the process alone would leave the
/// runtime's workers as they were.
pub fn lower(nice: u8) -> Result<()> {
    if nice > 19 {
        anyhow::bail!("nice = {nice}: the niceness must be 0 to 19 (0 keeps the default priority)");
    }
    if nice == 0 {
        return Ok(());
    }
    let tasks =
        std::fs::read_dir("/proc/self/task").context("cannot list this process's threads")?;
    for task in tasks {
        let Some(tid) = task.ok().and_then(|t| {
            t.file_name()
                .to_str()
                .and_then(|s| s.parse::<libc::id_t>().ok())
        }) else {
            continue;
        };
        // SAFETY: setpriority takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, libc::c_int::from(nice)) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            // A thread that ended since the listing is no failure.
            if error.raw_os_error() != Some(libc::ESRCH) {
                return Err(error).with_context(|| {
                    format!("cannot lower the agent's priority to nice {nice} (--nice 0 keeps it)")
                });
            }
        }
    }
    tracing::info!(
        nice,
        "the agent runs at a lower CPU priority than the workload (--nice)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    #[test]
    fn threads_started_before_and_after_get_the_niceness() {
        let (go, wait) = mpsc::channel::<()>();
        let started_before = std::thread::spawn(move || {
            wait.recv().unwrap();
            current_nice()
        });
        super::lower(7).unwrap();
        go.send(()).unwrap();
        let before = started_before.join().unwrap();
        let after = std::thread::spawn(current_nice).join().unwrap();
        // At least 7: the test runner may itself run niced higher.
        assert!(before >= 7, "a thread started before has nice {before}");
        assert!(after >= 7, "a thread started after has nice {after}");
        assert!(current_nice() >= 7);
    }

    fn current_nice() -> i32 {
        // SAFETY: getpriority takes plain integers; 0 means the calling thread.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }
}
