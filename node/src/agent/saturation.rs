//! Cheap saturation signals of a service's processes, read from files the kernel keeps: CPU
//! used against the cgroup's quota and the share of throttled periods (cgroup v2 `cpu.max` /
//! `cpu.stat`, or v1's `cpu.cfs_*` on a hybrid machine), memory against the cgroup's limit
//! (`memory.current` / `memory.max`, or v1's `memory.usage_in_bytes` / `limit_in_bytes`), and
//! open file descriptors against the soft `RLIMIT_NOFILE`. A signal the machine cannot give
//! (no limit set, no controller) is named with the reason instead of guessed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use apiary_predict::Signal;

/// Where the cgroup hierarchies are mounted, read once from /proc/self/mountinfo.
#[derive(Debug, Default, Clone)]
pub struct Mounts {
    v2: Option<PathBuf>,
    v1_cpu: Option<PathBuf>,
    v1_cpuacct: Option<PathBuf>,
    v1_memory: Option<PathBuf>,
}

impl Mounts {
    pub fn read() -> Mounts {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts = Mounts::default();
        for line in text.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or("");
            let options = right.nth(1).unwrap_or("");
            let point = PathBuf::from(point);
            match fstype {
                "cgroup2" => mounts.v2 = mounts.v2.or(Some(point)),
                "cgroup" => {
                    let has = |name: &str| options.split(',').any(|o| o == name);
                    if has("cpu") && mounts.v1_cpu.is_none() {
                        mounts.v1_cpu = Some(point.clone());
                    }
                    if has("cpuacct") && mounts.v1_cpuacct.is_none() {
                        mounts.v1_cpuacct = Some(point.clone());
                    }
                    if has("memory") && mounts.v1_memory.is_none() {
                        mounts.v1_memory = Some(point);
                    }
                }
                _ => {}
            }
        }
        mounts
    }
}

/// Cumulative CPU counters of one cgroup at one time, for the next sample's rates.
#[derive(Debug, Clone, Copy)]
pub struct CpuCounters {
    at: f64,
    usage_seconds: f64,
    periods: u64,
    throttled: u64,
}

/// The signals of one service's processes now; `unavailable` says which could not be read
/// and why.
#[derive(Debug, Default)]
pub struct Reading {
    pub values: Vec<(Signal, f64)>,
    pub unavailable: Vec<String>,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// The cgroup paths of `pid`: (v2 path, v1 path by controller).
fn cgroups(pid: u32) -> (Option<String>, HashMap<String, String>) {
    let text = read(Path::new(&format!("/proc/{pid}/cgroup"))).unwrap_or_default();
    let mut v2 = None;
    let mut v1 = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path.to_string());
        } else {
            for controller in controllers.split(',') {
                v1.insert(controller.to_string(), path.to_string());
            }
        }
    }
    (v2, v1)
}

fn under(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// Quota as a share of one core (`cpu.max` `QUOTA PERIOD`), `None` for `max`.
fn cpu_limit(mounts: &Mounts, v2: &Option<String>, v1: &HashMap<String, String>) -> Option<f64> {
    if let (Some(mount), Some(path)) = (&mounts.v2, v2) {
        if let Some(text) = read(&under(mount, path).join("cpu.max")) {
            let mut parts = text.split_whitespace();
            let (quota, period) = (parts.next()?, parts.next()?);
            return match (quota.parse::<f64>(), period.parse::<f64>()) {
                (Ok(q), Ok(p)) if p > 0.0 => Some(q / p),
                _ => None,
            };
        }
    }
    let dir = under(mounts.v1_cpu.as_ref()?, v1.get("cpu")?);
    let quota: f64 = read(&dir.join("cpu.cfs_quota_us"))?.parse().ok()?;
    let period: f64 = read(&dir.join("cpu.cfs_period_us"))?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then_some(quota / period)
}

fn cpu_counters(
    mounts: &Mounts,
    v2: &Option<String>,
    v1: &HashMap<String, String>,
    at: f64,
) -> Option<CpuCounters> {
    if let (Some(mount), Some(path)) = (&mounts.v2, v2) {
        if let Some(stat) = read(&under(mount, path).join("cpu.stat")) {
            return Some(CpuCounters {
                at,
                usage_seconds: field(&stat, "usage_usec")? as f64 / 1e6,
                periods: field(&stat, "nr_periods").unwrap_or(0),
                throttled: field(&stat, "nr_throttled").unwrap_or(0),
            });
        }
    }
    let stat = read(&under(mounts.v1_cpu.as_ref()?, v1.get("cpu")?).join("cpu.stat"))?;
    let usage =
        read(&under(mounts.v1_cpuacct.as_ref()?, v1.get("cpuacct")?).join("cpuacct.usage"))?
            .parse::<f64>()
            .ok()?;
    Some(CpuCounters {
        at,
        usage_seconds: usage / 1e9,
        periods: field(&stat, "nr_periods").unwrap_or(0),
        throttled: field(&stat, "nr_throttled").unwrap_or(0),
    })
}

/// (used, limit) bytes, `Err` with the reason when there is no limit or no controller.
fn memory(
    mounts: &Mounts,
    v2: &Option<String>,
    v1: &HashMap<String, String>,
) -> Result<(f64, f64), String> {
    if let (Some(mount), Some(path)) = (&mounts.v2, v2) {
        let dir = under(mount, path);
        if let (Some(current), Some(max)) = (
            read(&dir.join("memory.current")),
            read(&dir.join("memory.max")),
        ) {
            let current: f64 = current.parse().map_err(|_| "memory.current unreadable")?;
            if max == "max" {
                return Err(format!("no memory.max on cgroup {path}"));
            }
            let max: f64 = max.parse().map_err(|_| "memory.max unreadable")?;
            return Ok((current, max));
        }
    }
    let (Some(mount), Some(path)) = (&mounts.v1_memory, v1.get("memory")) else {
        return Err("no memory controller for the process's cgroup".into());
    };
    let dir = under(mount, path);
    let used: f64 = read(&dir.join("memory.usage_in_bytes"))
        .and_then(|s| s.parse().ok())
        .ok_or("memory.usage_in_bytes unreadable")?;
    let limit: f64 = read(&dir.join("memory.limit_in_bytes"))
        .and_then(|s| s.parse().ok())
        .ok_or("memory.limit_in_bytes unreadable")?;
    // v1 writes "no limit" as a page-rounded i64::MAX.
    if limit >= (1u64 << 60) as f64 {
        return Err(format!("no memory limit on cgroup {path}"));
    }
    Ok((used, limit))
}

/// Open descriptors over the soft limit of `pid`.
fn fds(pid: u32) -> Option<f64> {
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64;
    let limits = read(Path::new(&format!("/proc/{pid}/limits")))?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft: f64 = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    (soft > 0.0).then_some(open / soft)
}

/// The signals of a service whose processes are `pids` (the cgroup of the first; the fds of
/// the one nearest its limit). `last` holds the previous CPU counters and is updated.
pub fn sample(mounts: &Mounts, pids: &[u32], at: f64, last: &mut Option<CpuCounters>) -> Reading {
    let mut reading = Reading::default();
    let Some(&pid) = pids.first() else {
        reading
            .unavailable
            .push("no running process of this name".into());
        return reading;
    };
    let (v2, v1) = cgroups(pid);
    match cpu_limit(mounts, &v2, &v1) {
        None => reading
            .unavailable
            .push("cpu_usage: no CPU quota (cpu.max) on the process's cgroup".into()),
        Some(cores) => {
            if let Some(now) = cpu_counters(mounts, &v2, &v1, at) {
                if let Some(before) = last.filter(|b| b.at < now.at) {
                    let used = (now.usage_seconds - before.usage_seconds) / (now.at - before.at);
                    reading.values.push((Signal::CpuUsage, used / cores));
                    let periods = now.periods.saturating_sub(before.periods);
                    if periods > 0 {
                        let throttled = now.throttled.saturating_sub(before.throttled);
                        reading
                            .values
                            .push((Signal::CpuThrottled, throttled as f64 / periods as f64));
                    }
                }
                *last = Some(now);
            }
        }
    }
    match memory(mounts, &v2, &v1) {
        Ok((used, limit)) if limit > 0.0 => reading.values.push((Signal::Memory, used / limit)),
        Ok(_) => {}
        Err(reason) => reading.unavailable.push(format!("memory: {reason}")),
    }
    let nearest = pids
        .iter()
        .filter_map(|pid| fds(*pid))
        .fold(None, |max: Option<f64>, f| {
            Some(max.map_or(f, |m| m.max(f)))
        });
    match nearest {
        Some(share) => reading.values.push((Signal::Fds, share)),
        None => reading
            .unavailable
            .push("fds: /proc/PID/fd unreadable".into()),
    }
    reading
}

/// Pids by process name (`comm`, the service name the probes give), for the names asked.
pub fn pids_by_name(names: &[&str]) -> HashMap<String, Vec<u32>> {
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(comm) = read(&entry.path().join("comm")) else {
            continue;
        };
        if names.contains(&comm.as_str()) {
            out.entry(comm).or_default().push(pid);
        }
    }
    for pids in out.values_mut() {
        pids.sort_unstable();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test process: fds always readable and under its limit; the cgroup files either
    /// give a value or a reason, never both for one signal.
    #[test]
    fn this_process_gives_each_signal_or_a_reason() {
        let mounts = Mounts::read();
        let pid = std::process::id();
        let mut last = None;
        let first = sample(&mounts, &[pid], 1.0, &mut last);
        let share = first
            .values
            .iter()
            .find(|(s, _)| *s == Signal::Fds)
            .map(|(_, v)| *v)
            .expect("fds of this process");
        assert!(share > 0.0 && share < 1.0, "{share}");
        let memory_known = first.values.iter().any(|(s, _)| *s == Signal::Memory);
        let memory_reason = first.unavailable.iter().any(|r| r.starts_with("memory:"));
        assert!(memory_known != memory_reason, "{first:?}");
        let none = sample(&mounts, &[], 2.0, &mut last);
        assert!(none.values.is_empty() && !none.unavailable.is_empty());
    }

    #[test]
    fn finds_this_process_by_its_name() {
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let comm = comm.trim();
        let found = pids_by_name(&[comm]);
        assert!(found[comm].contains(&std::process::id()), "{found:?}");
    }
}
