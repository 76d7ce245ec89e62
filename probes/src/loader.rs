//! Loads the eBPF object, attaches each probe's programs (a probe that fails is reported and the
//! others go on), and writes the replicated config into the maps. A probe disabled in the config
//! has its programs detached (loaded still, so enabling it again attaches them without a reload
//! and without touching the other probes' programs or the ring buffer).

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use apiary_config::{ClusterConfig, ProbeSettings};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::Ebpf;
use serde::Serialize;

use crate::abi::*;
use crate::attach::{attach_one, load_one, Link, PROGRAMS};
use crate::kernel_red::KernelRed;
use crate::observer::Events;
use crate::{ProbeError, DB_PROBES};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apiary.bpf.o"));

/// Limits a node to some processes (`--scope cgroup:PATH` or `--scope netns:NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Cgroup(PathBuf),
    Netns(String),
}

impl std::str::FromStr for Scope {
    type Err = ProbeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            Some(("cgroup", path)) if !path.is_empty() => Ok(Scope::Cgroup(PathBuf::from(path))),
            Some(("netns", name)) if !name.is_empty() && !name.contains('/') => Ok(Scope::Netns(name.to_string())),
            _ => Err(ProbeError::Scope(format!(
                "--scope {text:?}: use cgroup:/PATH (relative to the cgroup v2 root) or netns:NAME (as in `ip netns`)"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeState {
    Attached,
    Disabled,
    Failed,
}

/// One row of `GET /v1/probes`.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub name: &'static str,
    pub state: ProbeState,
    pub reason: Option<String>,
    pub sample_rate: f64,
    /// Program runs and kernel time, from the kernel's BPF run-time statistics.
    pub runs: u64,
    pub run_time_ns: u64,
    pub ns_per_run: f64,
    /// Events offered before sampling, written to the ring buffer, and lost for lack of room.
    pub offered: u64,
    pub events: u64,
    pub lost: u64,
    pub sampled_out: u64,
    pub filtered: u64,
    /// Sampled-out requests counted in the kernel (RED), for which no record was sent.
    pub counted: u64,
    /// Messages of the probe's protocol that gave no span (bad bytes, beyond the capture, on a
    /// connection no longer followed); filled in from the observer, 0 for the other probes.
    pub unparsed: u64,
}

pub struct ProbeSet {
    ebpf: Ebpf,
    failures: std::collections::HashMap<&'static str, String>,
    /// The attached programs, by name; a program of a disabled probe has none.
    links: std::collections::HashMap<&'static str, Link>,
    /// The connection entries (bpf/maps.h), emptied of socket connections when the http
    /// programs attach again.
    conns: Option<HashMap<MapData, u64, ConnEntry>>,
    /// Where the tls probe's uprobes go (or why they cannot).
    libssl: Result<PathBuf, String>,
    settings: std::collections::HashMap<&'static str, ProbeSettings>,
    config: Array<MapData, ProbeConfig>,
    stats: PerCpuArray<MapData, ProbeStats>,
    pid_filter: HashMap<MapData, PidFilterKey, u8>,
    port_filter: HashMap<MapData, PortFilterKey, u8>,
    cgroup_filter: HashMap<MapData, CgroupFilterKey, u8>,
    events: Option<Events>,
    red_config: Array<MapData, RedConfig>,
    /// The route hash's seed (bpf/red.h), random per load.
    red_seed: u64,
    cgroup_root: Option<PathBuf>,
    /// Trace context across nodes (bpf/propagate.h): off until [`ProbeSet::propagate_traces`],
    /// or why it could not be turned on.
    propagation: Result<(), String>,
    // Keeps the kernel's BPF run-time statistics on while the probes live.
    _stats_enabled: Option<OwnedFd>,
}

fn probe_index(name: &str) -> u32 {
    match name {
        "http" => PROBE_HTTP,
        "tls" => PROBE_TLS,
        "tcp" => PROBE_TCP,
        "redis" => PROBE_REDIS,
        "postgres" => PROBE_POSTGRES,
        "mysql" => PROBE_MYSQL,
        "http2" => PROBE_HTTP2,
        _ => PROBE_PROCESS,
    }
}

fn map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T, ProbeError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| ProbeError::Load(format!("the eBPF object has no map {name}")))?;
    T::try_from(map).map_err(|e| ProbeError::Load(format!("map {name}: {e}")))
}

/// The ring buffer's default size. The kernel maps a ring's pages twice into the reader (so
/// that a record can wrap), and all of them at once, so the agent's RSS counts twice this from
/// the start: 8 MiB of RSS for 4 MiB of kernel memory. The reader is woken at 1 MiB waiting
/// (bpf/events.h), which leaves 3 MiB for a burst while it runs.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// A ring size the kernel takes: a power of two, and here at least 2 MiB (above the 1 MiB at
/// which the reader is woken) and at most 256 MiB.
pub fn check_ring_bytes(bytes: u32) -> Result<(), String> {
    if !bytes.is_power_of_two() || !(2 << 20..=256 << 20).contains(&bytes) {
        return Err(format!(
            "a probe ring of {bytes} bytes: the kernel takes a power of two; use 2 MiB to 256 MiB \
             (2097152, 4194304, 8388608, …)"
        ));
    }
    Ok(())
}

impl ProbeSet {
    /// Loads and attaches every probe. Fails only if nothing can be loaded at all (not root, no
    /// BPF); a single probe that cannot attach is reported by [`ProbeSet::reports`].
    pub fn load(scopes: &[Scope]) -> Result<Self, ProbeError> {
        Self::load_with_libssl(scopes, None, DEFAULT_RING_BYTES)
    }

    /// [`ProbeSet::load`], with the `tls` probe on a given libssl (e.g. an OpenSSL 3 built into
    /// /opt) instead of the one found on the system, and a ring buffer of `ring_bytes` (see
    /// [`check_ring_bytes`]).
    pub fn load_with_libssl(
        scopes: &[Scope],
        libssl: Option<&Path>,
        ring_bytes: u32,
    ) -> Result<Self, ProbeError> {
        check_ring_bytes(ring_bytes).map_err(ProbeError::Load)?;
        crate::check_privileges()?;
        ensure_tracefs()?;
        let stats_enabled = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!("BPF run-time statistics unavailable ({e}); probe cost will read 0");
                None
            }
        };
        // aya 0.14 has no userspace type for task storage (the per-thread read slots); the
        // kernel creates and uses it, userspace never reads it.
        let mut ebpf = aya::EbpfLoader::new()
            .allow_unsupported_maps()
            .map_max_entries("events", ring_bytes)
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(e.to_string()))?;
        let libssl = match libssl {
            Some(path) => Ok(path.to_path_buf()),
            None => find_libssl().ok_or_else(|| {
                "no OpenSSL 3 library (libssl.so.3) found on this machine; install libssl3 or pass --libssl PATH to see HTTPS".to_string()
            }),
        };
        let mut failures = std::collections::HashMap::new();
        let mut links = std::collections::HashMap::new();
        for (probe, program, attach) in PROGRAMS {
            if failures.contains_key(probe) {
                continue;
            }
            let loaded = load_one(
                &mut ebpf,
                program,
                attach,
                libssl.as_deref().map_err(Clone::clone),
            )
            .and_then(|()| {
                attach_one(
                    &mut ebpf,
                    program,
                    attach,
                    libssl.as_deref().map_err(Clone::clone),
                )
            });
            match loaded {
                Ok(link) => {
                    links.insert(*program, link);
                }
                Err(reason) => {
                    tracing::warn!(probe, program, "probe failed: {reason}");
                    failures.insert(*probe, reason);
                }
            }
        }
        let mut set = ProbeSet {
            config: map(&mut ebpf, "probe_config")?,
            stats: map(&mut ebpf, "probe_stats")?,
            pid_filter: map(&mut ebpf, "pid_filter")?,
            port_filter: map(&mut ebpf, "port_filter")?,
            cgroup_filter: map(&mut ebpf, "cgroup_filter")?,
            events: Some(Events {
                ring: map(&mut ebpf, "events")?,
                red: Some(KernelRed::new(
                    map(&mut ebpf, "red_routes")?,
                    map::<PerCpuHashMap<MapData, RedKey, RedValue>>(&mut ebpf, "red_counts")?,
                )),
            }),
            red_config: map(&mut ebpf, "red_config")?,
            red_seed: {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
            },
            cgroup_root: cgroup2_root(),
            propagation: Err("not asked for".into()),
            failures,
            links,
            conns: Some(map(&mut ebpf, "conns")?),
            libssl,
            settings: Default::default(),
            ebpf,
            _stats_enabled: stats_enabled,
        };
        set.set_scope(scopes)?;
        Ok(set)
    }

    fn set_scope(&mut self, scopes: &[Scope]) -> Result<(), ProbeError> {
        let mut cgroups: HashMap<MapData, u64, u8> = map(&mut self.ebpf, "scope_cgroups")?;
        let mut netns: HashMap<MapData, u32, u8> = map(&mut self.ebpf, "scope_netns")?;
        let mut config: Array<MapData, ScopeConfig> = map(&mut self.ebpf, "scope_config")?;
        let mut scope = ScopeConfig::default();
        for entry in scopes {
            match entry {
                Scope::Cgroup(path) => {
                    let id = self.cgroup_id(path)?;
                    cgroups.insert(id, 1, 0).map_err(map_error)?;
                    scope.by_cgroup = 1;
                }
                Scope::Netns(name) => {
                    let path = Path::new("/run/netns").join(name);
                    let inode = std::fs::metadata(&path)
                        .map_err(|e| {
                            ProbeError::Scope(format!(
                                "netns {name}: {}: {e} (see `ip netns list`)",
                                path.display()
                            ))
                        })?
                        .ino();
                    netns.insert(inode as u32, 1, 0).map_err(map_error)?;
                    scope.by_netns = 1;
                }
            }
        }
        config.set(0, scope, 0).map_err(map_error)
    }

    fn cgroup_id(&self, path: &Path) -> Result<u64, ProbeError> {
        let root = self
            .cgroup_root
            .as_ref()
            .ok_or_else(|| ProbeError::Scope("no cgroup v2 hierarchy is mounted".into()))?;
        let full = root.join(path.strip_prefix("/").unwrap_or(path));
        Ok(std::fs::metadata(&full)
            .map_err(|e| ProbeError::Scope(format!("cgroup {}: {e}", full.display())))?
            .ino())
    }

    /// Sends each client request's trace context to the peer's node in a TCP header option and
    /// reads the peers' (bpf/propagate.h): attaches the sock_ops program to the cgroup v2 root,
    /// so every TCP connection made from now on (on this host, whichever node's scope) gets
    /// the option callbacks. Other nodes' programs on the same host attach beside it (links
    /// are multi-attach). Returns why it cannot, and the probes go on without it.
    pub fn propagate_traces(&mut self) -> Result<(), String> {
        if self.propagation.is_ok() {
            return Ok(());
        }
        let attached =
            crate::btf_offsets::kernel_member_offsets("tcp_sock", &["write_seq", "copied_seq"])
                .and_then(|offsets| {
                    self.attach_sock_ops()?;
                    let mut config: Array<MapData, TraceConfig> =
                        map(&mut self.ebpf, "trace_config").map_err(|e| e.to_string())?;
                    let on = TraceConfig {
                        propagate: 1,
                        write_seq_offset: offsets[0],
                        copied_seq_offset: offsets[1],
                        pad: 0,
                    };
                    config
                        .set(0, on, 0)
                        .map_err(|e| format!("trace_config: {e}"))
                });
        self.propagation = attached.clone();
        attached
    }

    /// Whether trace context goes across nodes, or why not.
    pub fn propagation(&self) -> Result<(), String> {
        self.propagation.clone()
    }

    fn attach_sock_ops(&mut self) -> Result<(), String> {
        let cgroup = open_cgroup2_root(self.cgroup_root.as_deref())?;
        let program: &mut aya::programs::SockOps = self
            .ebpf
            .program_mut("trace_sock_ops")
            .ok_or("the eBPF object has no program trace_sock_ops")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        program
            .load()
            .map_err(|e| crate::attach::verifier_summary(&e.to_string()))?;
        // Through a BPF link, which the kernel always attaches beside others (a link asked
        // to allow multiple programs is refused: EINVAL).
        program
            .attach(&cgroup, aya::programs::links::CgroupAttachMode::Single)
            .map_err(|e| format!("cannot attach sock_ops to the cgroup v2 root: {e}"))?;
        Ok(())
    }

    /// Takes the ring buffer and the kernel's RED counts for the event reader (once).
    pub fn take_events(&mut self) -> Option<Events> {
        self.events.take()
    }

    /// Writes the replicated config into the maps, and detaches the programs of the probes it
    /// disables (attaching those it enables again). No program is reloaded.
    pub fn apply(&mut self, config: &ClusterConfig) -> Result<(), ProbeError> {
        let mut pids = BTreeSet::new();
        let mut ports = BTreeSet::new();
        let mut cgroups = BTreeSet::new();
        let mut values = Vec::new();
        for (name, settings) in config.probes.iter() {
            let probe = probe_index(name);
            let filters = &settings.filters;
            let mut flags = 0;
            for (list, rule) in [
                (&filters.include_pids, FILTER_INCLUDE),
                (&filters.exclude_pids, FILTER_EXCLUDE),
            ] {
                pids.extend(list.iter().map(|&pid| (PidFilterKey { probe, pid }, rule)));
            }
            for (list, rule) in [
                (&filters.include_ports, FILTER_INCLUDE),
                (&filters.exclude_ports, FILTER_EXCLUDE),
            ] {
                ports.extend(list.iter().map(|&port| {
                    (
                        PortFilterKey {
                            probe,
                            port: port as u32,
                        },
                        rule,
                    )
                }));
            }
            for (list, rule) in [
                (&filters.include_cgroups, FILTER_INCLUDE),
                (&filters.exclude_cgroups, FILTER_EXCLUDE),
            ] {
                for path in list {
                    match self.cgroup_id(Path::new(path)) {
                        Ok(cgroup_id) => {
                            cgroups.insert((
                                CgroupFilterKey {
                                    probe,
                                    pad: 0,
                                    cgroup_id,
                                },
                                rule,
                            ));
                        }
                        // An include of a cgroup that does not exist here matches nothing here.
                        Err(e) => tracing::warn!(probe = name, "filter ignored on this node: {e}"),
                    }
                }
            }
            if !filters.include_pids.is_empty() {
                flags |= HAS_PID_INCLUDE;
            }
            if !filters.include_ports.is_empty() {
                flags |= HAS_PORT_INCLUDE;
            }
            if !filters.include_cgroups.is_empty() {
                flags |= HAS_CGROUP_INCLUDE;
            }
            if !(filters.include_pids.is_empty() && filters.exclude_pids.is_empty()) {
                flags |= HAS_PID_RULES;
            }
            if !(filters.include_ports.is_empty() && filters.exclude_ports.is_empty()) {
                flags |= HAS_PORT_RULES;
            }
            if !(filters.include_cgroups.is_empty() && filters.exclude_cgroups.is_empty()) {
                flags |= HAS_CGROUP_RULES;
            }
            let value = ProbeConfig {
                enabled: settings.enabled as u32,
                sample_threshold: sample_threshold(settings.sample_rate),
                capture_bytes: settings.capture_bytes.min(MAX_CAPTURE),
                filter_flags: flags,
            };
            // Filters first, switch second: a probe never runs with the new flags and old lists.
            self.settings.insert(name, settings.clone());
            values.push((probe, value));
        }
        sync(&mut self.pid_filter, &pids)?;
        sync(&mut self.port_filter, &ports)?;
        sync(&mut self.cgroup_filter, &cgroups)?;
        for (probe, value) in values {
            self.config.set(probe, value, 0).map_err(map_error)?;
        }
        // A sampled-out request a keep rule may want still goes to userspace (bpf/red.h).
        let keep = &config.budget.always_keep;
        let red = RedConfig {
            seed: self.red_seed,
            slower_than_ns: keep.slower_than_ms.saturating_mul(1_000_000),
            keep_errors: keep.errors as u32,
            enabled: 1,
        };
        self.red_config.set(0, red, 0).map_err(map_error)?;
        self.attach_wanted();
        Ok(())
    }

    /// Whether a probe's programs should be attached: it is enabled (the http probe's also
    /// while a protocol found per connection rides them). A probe without settings yet (before
    /// the first apply) keeps what it has.
    fn wanted(&self, probe: &str) -> Option<bool> {
        let enabled = |name: &str| self.settings.get(name).map(|s| s.enabled);
        match probe {
            "http" => Some(
                enabled("http")? || DB_PROBES.iter().any(|name| enabled(name).unwrap_or(false)),
            ),
            other => enabled(other),
        }
    }

    /// Attaches the programs of the probes that want them and detaches the others'. A program
    /// that cannot attach again fails its probe (reported, with the reason); the others go on.
    fn attach_wanted(&mut self) {
        let mut forgotten = false;
        for (probe, program, attach) in PROGRAMS {
            let Some(wanted) = self.wanted(probe) else {
                continue;
            };
            let attached = self.links.contains_key(program);
            if !wanted && attached {
                // Dropping the link detaches the program.
                self.links.remove(program);
                tracing::info!(probe, program, "detached (probe disabled)");
            } else if wanted && !attached && !self.load_failed(probe) {
                if *probe == "http" && !forgotten {
                    // The connections it followed went on unseen while it was off.
                    self.forget_socket_connections();
                    forgotten = true;
                }
                let libssl = self.libssl.as_deref().map_err(Clone::clone);
                match attach_one(&mut self.ebpf, program, attach, libssl) {
                    Ok(link) => {
                        self.links.insert(program, link);
                        self.failures.remove(probe);
                        tracing::info!(probe, program, "attached (probe enabled)");
                    }
                    Err(reason) => {
                        tracing::warn!(probe, program, "probe failed to attach again: {reason}");
                        self.failures.insert(probe, reason);
                    }
                }
            }
        }
    }

    /// Whether a probe's programs never loaded (attaching them again cannot help).
    fn load_failed(&self, probe: &str) -> bool {
        self.failures.contains_key(probe)
            && PROGRAMS
                .iter()
                .filter(|(p, _, _)| *p == probe)
                .any(|(_, program, _)| self.ebpf.program(program).is_none_or(|p| p.fd().is_err()))
    }

    /// Drops the socket connections' entries (`conns` keys without bit 63, bpf/conn.h): while
    /// the http programs were off, requests and responses went by unseen, and an entry left
    /// waiting would pair a response with a request long answered. TLS entries stay: the tls
    /// probe may be running.
    fn forget_socket_connections(&mut self) {
        let conns = match self.conns.as_mut() {
            Some(conns) => conns,
            None => return,
        };
        let keys: Vec<u64> = conns
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key >> 63 == 0)
            .collect();
        for key in keys {
            // Already gone (evicted, or closed by a tls program) is fine.
            let _ = conns.remove(&key);
        }
    }

    /// The kernel's id of a loaded program (as `bpftool prog` and `bpftool link` show it).
    pub fn program_id(&self, program: &str) -> Option<u32> {
        Some(self.ebpf.program(program)?.info().ok()?.id())
    }

    /// Names of the programs attached now (`bpftool link` shows the same links).
    pub fn attached_programs(&self) -> Vec<&'static str> {
        PROGRAMS
            .iter()
            .map(|(_, program, _)| *program)
            .filter(|program| self.links.contains_key(program))
            .collect()
    }

    /// Run count and total run time (BPF statistics) of each attached program, by name: the
    /// overhead benchmark's breakdown of where kernel time goes.
    pub fn program_stats(&self) -> Vec<(&'static str, u64, u64)> {
        PROGRAMS
            .iter()
            .filter_map(|(_, program, _)| {
                let info = self.ebpf.program(program)?.info().ok()?;
                Some((
                    *program,
                    info.run_count(),
                    info.run_time().as_nanos() as u64,
                ))
            })
            .collect()
    }

    pub fn reports(&self) -> Vec<ProbeReport> {
        apiary_config::PROBE_NAMES
            .into_iter()
            .map(|name| {
                let probe = probe_index(name);
                let stats = self
                    .stats
                    .get(&probe, 0)
                    .map(|per_cpu| {
                        per_cpu.iter().fold(ProbeStats::default(), |mut sum, s| {
                            sum.offered += s.offered;
                            sum.emitted += s.emitted;
                            sum.lost += s.lost;
                            sum.sampled_out += s.sampled_out;
                            sum.filtered += s.filtered;
                            sum.counted += s.counted;
                            sum
                        })
                    })
                    .unwrap_or_default();
                let (mut runs, mut run_time_ns) = (0u64, 0u64);
                for (_, program, _) in PROGRAMS.iter().filter(|(p, _, _)| *p == name) {
                    if let Some(info) = self.ebpf.program(program).and_then(|p| p.info().ok()) {
                        runs += info.run_count();
                        run_time_ns += info.run_time().as_nanos() as u64;
                    }
                }
                let settings = self.settings.get(name);
                // A protocol found per connection rides the http probe's programs.
                let failure = self.failures.get(name).cloned().or_else(|| {
                    DB_PROBES
                        .contains(&name)
                        .then(|| self.failures.get("http"))
                        .flatten()
                        .map(|e| {
                            format!("needs the http probe's socket tracepoints, which failed: {e}")
                        })
                });
                let state = match (&failure, settings) {
                    (Some(_), _) => ProbeState::Failed,
                    (None, Some(s)) if !s.enabled => ProbeState::Disabled,
                    _ => ProbeState::Attached,
                };
                ProbeReport {
                    name,
                    state,
                    reason: failure,
                    sample_rate: settings.map(|s| s.sample_rate).unwrap_or(0.0),
                    runs,
                    run_time_ns,
                    ns_per_run: if runs == 0 {
                        0.0
                    } else {
                        run_time_ns as f64 / runs as f64
                    },
                    offered: stats.offered,
                    events: stats.emitted,
                    lost: stats.lost,
                    sampled_out: stats.sampled_out,
                    filtered: stats.filtered,
                    counted: stats.counted,
                    unparsed: 0,
                }
            })
            .collect()
    }
}

fn sync<K: aya::Pod + Ord>(
    map: &mut HashMap<MapData, K, u8>,
    wanted: &BTreeSet<(K, u8)>,
) -> Result<(), ProbeError> {
    let present: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for (key, rule) in wanted {
        map.insert(key, rule, 0).map_err(map_error)?;
    }
    for key in present {
        if !wanted.iter().any(|(k, _)| *k == key) {
            map.remove(&key).map_err(map_error)?;
        }
    }
    Ok(())
}

fn map_error(e: aya::maps::MapError) -> ProbeError {
    ProbeError::Map(e.to_string())
}

/// Tracepoints need tracefs, which a fresh machine does not mount.
/// Serialised: probe sets loaded at once in one process (tests, several scopes) must not race
/// to mount it, and a mount that fails because another process just mounted it is no failure.
fn ensure_tracefs() -> Result<(), ProbeError> {
    static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MOUNTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mounted = || {
        Path::new("/sys/kernel/tracing/events").exists()
            || Path::new("/sys/kernel/debug/tracing/events").exists()
    };
    if mounted() {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).map_err(|e| ProbeError::Load(e.to_string()));
    let (source, dir, fstype) = (c("nodev")?, c("/sys/kernel/tracing")?, c("tracefs")?);
    // SAFETY: valid NUL-terminated strings; a null data pointer is allowed for tracefs.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        if !mounted() {
            return Err(ProbeError::Load(format!(
                "tracefs is not mounted and mounting it failed ({error}); run `mount -t tracefs nodev /sys/kernel/tracing`"
            )));
        }
    }
    tracing::info!("mounted tracefs on /sys/kernel/tracing");
    Ok(())
}

/// OpenSSL 3's libssl: the usual paths first, then whatever running processes have mapped.
pub fn find_libssl() -> Option<PathBuf> {
    let known = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
        "/usr/lib64/libssl.so.3",
        "/usr/lib/libssl.so.3",
    ];
    if let Some(found) = known.iter().map(Path::new).find(|p| p.exists()) {
        return Some(found.to_path_buf());
    }
    let maps = std::fs::read_dir("/proc").ok()?.filter_map(Result::ok);
    for entry in maps {
        let Ok(text) = std::fs::read_to_string(entry.path().join("maps")) else {
            continue;
        };
        if let Some(path) = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libssl.so.3"))
        {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// The cgroup v2 root directory, open. Where none is mounted in this mount namespace (`ip netns
/// exec` mounts a fresh /sys without the cgroup mounts), one is mounted on a private directory
/// and detached again at once: the open directory still names the hierarchy's root.
fn open_cgroup2_root(mounted: Option<&Path>) -> Result<std::fs::File, String> {
    if let Some(root) = mounted {
        return std::fs::File::open(root).map_err(|e| format!("{}: {e}", root.display()));
    }
    let dir = std::env::temp_dir().join(format!("apiary-cgroup2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let c = |s: &str| std::ffi::CString::new(s).map_err(|e| e.to_string());
    let (source, target, fstype) = (c("cgroup2")?, c(&dir.to_string_lossy())?, c("cgroup2")?);
    // SAFETY: valid NUL-terminated strings; cgroup2 takes a null data pointer.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    let opened = if rc == 0 {
        let opened = std::fs::File::open(&dir).map_err(|e| format!("{}: {e}", dir.display()));
        // SAFETY: a valid NUL-terminated path; MNT_DETACH has no other precondition.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        opened
    } else {
        Err(format!(
            "no cgroup v2 hierarchy is mounted, and mounting one failed: {}",
            std::io::Error::last_os_error()
        ))
    };
    let _ = std::fs::remove_dir(&dir);
    opened
}

fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}
