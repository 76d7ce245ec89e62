//! A process's CPU time: the node's own cost in its load reports (to the nanosecond), and what
//! the tests and benchmarks measure a node by (from `/proc`).

/// CPU seconds the calling process has used, to the nanosecond (`CLOCK_PROCESS_CPUTIME_ID`).
/// `/proc`'s 10 ms ticks made a one-second reading 0 % or 1 % of a core, too coarse against a
/// CPU budget of a few percent.
pub fn own_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant Linux supports.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) } != 0 {
        return process_cpu_seconds("self");
    }
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat` (`self` for the
/// calling process; USER_HZ is 100 on Linux). 0 when the file cannot be read.
pub fn process_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields 14 and 15 of stat; after the comm they are the 12th and 13th (0-based 11, 12).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_a_missing_one_none() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(process_cpu_seconds("self") > 0.0);
        let (before, spin) = (own_cpu_seconds(), std::time::Instant::now());
        while spin.elapsed() < std::time::Duration::from_millis(1) {
            std::hint::black_box(0u64);
        }
        // Finer than a 10 ms tick: a millisecond of work reads as neither 0 nor 10 ms.
        let spent = own_cpu_seconds() - before;
        assert!(spent > 0.0 && spent < 0.005, "{spent}");
        assert_eq!(process_cpu_seconds("not-a-pid"), 0.0);
    }
}
