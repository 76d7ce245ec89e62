//! The agent's CPU priority (`--nice`): it can yield to the programs it watches.
//!
//! Spans wait in the probes' ring buffer (seconds of them at thousands of requests/s), so the
//! agent can run a little later without losing anything, while a request that waits behind it
//! shows in the workload's tail latency. A niceness above 0 lets the scheduler run the
//! workload's threads first when both want a core. Off by default: on a machine the workload
//! saturates, a niced reader falls behind and loses records (docs/operations.md has the figures).

use anyhow::{Context, Result};

/// Gives every thread of this process (and so every thread they start later) at least `nice`:
/// a thread already niced higher (`nice -n 15 apiary node`, systemd's `Nice=`) keeps its value.
/// Linux keeps a niceness per thread: setting it for the process alone would leave the
/// runtime's workers as they were. A refusal (a container without the right) is a warning, not
/// a reason to stop the node.
/// `nice` is 0 to 19: `--nice` and the settings file check that where it comes in.
pub fn lower(nice: u8) -> Result<()> {
    if nice == 0 {
        return Ok(());
    }
    let nice = libc::c_int::from(nice);
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
        if niceness(tid).is_some_and(|current| current >= nice) {
            continue;
        }
        // SAFETY: setpriority takes plain integers and touches no memory of ours.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } == 0 {
            continue;
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            // A thread that ended since the listing.
            Some(libc::ESRCH) => continue,
            Some(libc::EACCES | libc::EPERM) => {
                tracing::warn!(
                    nice,
                    "cannot lower the agent's CPU priority ({error}); it competes with the workload at its current priority"
                );
                return Ok(());
            }
            _ => {
                return Err(error).with_context(|| {
                    format!("cannot lower the agent's priority to nice {nice} (--nice 0 keeps it)")
                })
            }
        }
    }
    tracing::info!(
        nice,
        "the agent runs at a lower CPU priority than the workload (--nice)"
    );
    Ok(())
}

/// A thread's niceness, or None when it cannot be read.
fn niceness(tid: libc::id_t) -> Option<libc::c_int> {
    // getpriority returns -1 both as a niceness and as an error: errno tells them apart.
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life;
    // getpriority takes plain integers.
    unsafe {
        *libc::__errno_location() = 0;
        let value = libc::getpriority(libc::PRIO_PROCESS, tid);
        (value != -1 || *libc::__errno_location() == 0).then_some(value)
    }
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
        // A lower value never raises a thread's priority back.
        super::lower(3).unwrap();
        assert!(current_nice() >= 7, "nice went back to {}", current_nice());
    }

    fn current_nice() -> i32 {
        // SAFETY: getpriority takes plain integers; 0 means the calling thread.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }
}
