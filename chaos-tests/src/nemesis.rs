//! The nemesis: faults drawn from a seeded generator (so a run replays from its seed), each
//! held for a while and then healed, with a quiet spell between faults.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::Result;

use crate::hosts::{Network, Node, SmallDisk};
use crate::slow_disk::SlowDisk;
use crate::telemetry::Receiver;

/// SplitMix64: tiny, and the same sequence from a seed whatever crate versions the lock holds.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `k` distinct indices of `0..n`, sorted.
    pub fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            all.swap(i, j);
        }
        let mut chosen = all[..k].to_vec();
        chosen.sort_unstable();
        chosen
    }

    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

/// One fault, as drawn. `Leader` faults pick their node when they strike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then a restart from the same data dir when the fault heals.
    Kill(Target),
    /// SIGSTOP, then SIGCONT.
    Pause(Target),
    /// These nodes cannot exchange packets with the others (both ways).
    Partition(Vec<usize>),
    /// The leader and one more node cut off from the other three (the old leader is in the
    /// minority and must step down; the majority elects a new one).
    LeaderInMinority,
    /// Two halves that see only a middle node (Jepsen's bridge).
    Bridge,
    /// Packets from `from` to `to` dropped, the other direction untouched.
    OneWay { from: Vec<usize>, to: Vec<usize> },
    /// Every node drops 20 % of the packets it receives from its peers.
    Loss,
    /// The counting receiver (the nodes' export destination) stops: connections refused.
    ReceiverDown,
    /// A running node's wall clock jumps by `seconds` (libfaketime), back when it heals.
    ClockJump { target: Target, seconds: i64 },
    /// The node whose data dir is a small tmpfs (the last) has its disk filled; when it heals
    /// the room comes back, and a node that says it cannot write its Raft log is restarted.
    DiskFull,
    /// Every write and sync of the node whose data dir is the slow disk (the one before the
    /// last) takes `millis` ms, until it heals.
    SlowDisk { millis: u64 },
}

/// The nodes' special data dirs: the last node's can be filled, the one before it made slow
/// (None when FUSE cannot be used here: the fault is then skipped with a line in the log).
pub struct Disks {
    pub full: SmallDisk,
    pub slow: Option<SlowDisk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Node(usize),
    Leader,
}

impl Fault {
    /// Its kind, for the counts in the report.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(Target::Leader) => "kill leader",
            Fault::Kill(_) => "kill node",
            Fault::Pause(_) => "pause (SIGSTOP)",
            Fault::Partition(_) => "partition",
            Fault::LeaderInMinority => "leader in minority",
            Fault::Bridge => "bridge partition",
            Fault::OneWay { .. } => "one-way cut",
            Fault::Loss => "20 % loss",
            Fault::ReceiverDown => "receiver outage",
            Fault::ClockJump { seconds, .. } if *seconds < 0 => "clock jump back",
            Fault::ClockJump { .. } => "clock jump ahead",
            Fault::DiskFull => "disk full",
            Fault::SlowDisk { .. } => "slow disk",
        }
    }

    /// A fault drawn for a cluster of `size` nodes.
    pub fn draw(rng: &mut Rng, size: usize) -> Fault {
        let node = |rng: &mut Rng| {
            if rng.below(2) == 0 {
                Target::Leader
            } else {
                Target::Node(rng.below(size as u64) as usize)
            }
        };
        match rng.below(12) {
            0 | 1 => Fault::Kill(node(rng)),
            2 => Fault::Pause(node(rng)),
            3 => {
                let k = 1 + rng.below(2) as usize;
                Fault::Partition(rng.pick(size, k))
            }
            4 => Fault::LeaderInMinority,
            5 => Fault::Bridge,
            6 => {
                let k = 1 + rng.below(2) as usize;
                let from = rng.pick(size, k);
                let to = (0..size).filter(|i| !from.contains(i)).collect();
                Fault::OneWay { from, to }
            }
            7 => Fault::Loss,
            8 => Fault::ReceiverDown,
            9 => Fault::DiskFull,
            10 => Fault::SlowDisk {
                // From a busy disk to one that barely moves: 20 ms to 1 s a write.
                millis: 20 + rng.below(981),
            },
            _ => {
                let target = node(rng);
                // Minutes to an hour, either way.
                let seconds = 60 + rng.below(3541) as i64;
                let seconds = if rng.below(2) == 0 { -seconds } else { seconds };
                Fault::ClockJump { target, seconds }
            }
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// What the nemesis did, for the report.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub by_kind: BTreeMap<&'static str, usize>,
    pub log: Vec<String>,
    /// Disk-full faults after which the node's /healthz said it was failing (503) / said ok.
    /// A node whose disk was full but that had nothing to write meanwhile may rightly say ok.
    pub disk_full_reported: usize,
    pub disk_full_unreported: usize,
    /// Slow-disk faults after which the node's /healthz said it was degraded / said ok (it
    /// rightly says ok when no flush took longer than the election timeout).
    pub slow_disk_reported: usize,
    pub slow_disk_unreported: usize,
}

impl Tally {
    pub fn total(&self) -> usize {
        self.by_kind.values().sum()
    }
}

/// Cuts traffic between groups `a` and `b` in both directions.
fn cut(network: &Network, a: &[usize], b: &[usize]) -> Result<()> {
    cut_one_way(network, a, b)?;
    cut_one_way(network, b, a)
}

/// Drops what `from` sends to `to`, in `to`'s namespace (INPUT) and `from`'s (OUTPUT).
fn cut_one_way(network: &Network, from: &[usize], to: &[usize]) -> Result<()> {
    for &f in from {
        for &t in to {
            let (src, dst) = (network.ips[f].to_string(), network.ips[t].to_string());
            network.iptables(t, &["-A", "INPUT", "-s", &src, "-j", "DROP"])?;
            network.iptables(f, &["-A", "OUTPUT", "-d", &dst, "-j", "DROP"])?;
        }
    }
    Ok(())
}

/// Removes every rule the nemesis added (the namespaces hold nothing else).
pub fn heal_network(network: &Network) -> Result<()> {
    for i in 0..network.namespaces.len() {
        network.iptables(i, &["-F", "INPUT"])?;
        network.iptables(i, &["-F", "OUTPUT"])?;
    }
    Ok(())
}

/// Strikes `fault`; `leader` is the index of the current leader if one is known. Returns the
/// nodes it killed or paused (to restart or continue when it heals) and a line for the log.
pub fn strike(
    fault: &Fault,
    network: &Network,
    nodes: &mut [Node],
    receiver: &mut Receiver,
    disks: &Disks,
    leader: Option<usize>,
    rng: &mut Rng,
) -> Result<String> {
    let size = nodes.len();
    let resolve = |target: Target| match target {
        Target::Node(i) => i,
        Target::Leader => leader.unwrap_or(0),
    };
    let everyone: Vec<usize> = (0..size).collect();
    let rest = |group: &[usize]| -> Vec<usize> {
        everyone
            .iter()
            .copied()
            .filter(|i| !group.contains(i))
            .collect()
    };
    Ok(match fault {
        Fault::Kill(target) => {
            let i = resolve(*target);
            nodes[i].kill();
            format!("SIGKILL {}", nodes[i].name)
        }
        Fault::Pause(target) => {
            let i = resolve(*target);
            nodes[i].pause();
            format!("SIGSTOP {}", nodes[i].name)
        }
        Fault::Partition(group) => {
            cut(network, group, &rest(group))?;
            format!("partition {group:?} | {:?}", rest(group))
        }
        Fault::LeaderInMinority => {
            let l = leader.unwrap_or(0);
            let others = rest(&[l]);
            let buddy = others[rng.below(others.len() as u64) as usize];
            let mut minority = vec![l, buddy];
            minority.sort_unstable();
            cut(network, &minority, &rest(&minority))?;
            format!(
                "partition {minority:?} (with leader {l}) | {:?}",
                rest(&minority)
            )
        }
        Fault::Bridge => {
            let mut shuffled: Vec<usize> = (0..size).collect();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let middle = shuffled[0];
            let half = (size - 1) / 2;
            let left = shuffled[1..1 + half].to_vec();
            let right = shuffled[1 + half..].to_vec();
            cut(network, &left, &right)?;
            format!("bridge {left:?} | {middle} | {right:?}")
        }
        Fault::OneWay { from, to } => {
            cut_one_way(network, from, to)?;
            format!("one-way cut {from:?} -> {to:?}")
        }
        Fault::Loss => {
            for i in 0..size {
                let client = network.client_ip.to_string();
                network.iptables(i, &["-A", "INPUT", "-s", &client, "-j", "ACCEPT"])?;
                network.iptables(
                    i,
                    &[
                        "-A",
                        "INPUT",
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        "0.2",
                        "-j",
                        "DROP",
                    ],
                )?;
            }
            "20 % loss on every node".into()
        }
        Fault::ReceiverDown => {
            receiver.down();
            format!("counting receiver at {} down", receiver.addr)
        }
        Fault::DiskFull => {
            let used = disks.full.usage();
            let written = disks.full.fill()?;
            format!(
                "disk of {} full ({} MiB of filler; the node had {used})",
                nodes[size - 1].name,
                written >> 20
            )
        }
        Fault::SlowDisk { millis } => match &disks.slow {
            Some(slow) => {
                slow.set_delay(*millis)?;
                format!(
                    "disk of {} slow: {millis} ms a write or sync",
                    nodes[size - 2].name
                )
            }
            None => format!(
                "slow disk of {} skipped: no FUSE here (see the start of the log)",
                nodes[size - 2].name
            ),
        },
        Fault::ClockJump { target, seconds } => {
            let i = resolve(*target);
            if nodes[i].set_clock_offset(*seconds)? {
                format!("{}'s wall clock jumps {seconds:+} s", nodes[i].name)
            } else {
                format!(
                    "clock jump of {} skipped: libfaketime is not installed (Debian package faketime)",
                    nodes[i].name
                )
            }
        }
    })
}

/// Undoes every fault: rules flushed, paused nodes continued, killed nodes restarted, the
/// receiver up.
pub async fn heal(
    network: &Network,
    nodes: &mut [Node],
    receiver: &mut Receiver,
    disks: &Disks,
    tally: &mut Tally,
) -> Result<Vec<String>> {
    heal_network(network)?;
    let mut done = Vec::new();
    if let Some(slow) = disks.slow.as_ref().filter(|slow| slow.slow()) {
        // What the node said while its disk was slow, before it is fast again.
        let at = nodes.len() - 2;
        let health = nodes[at].health().await;
        slow.set_delay(0)?;
        match &health {
            Some((_, body)) if body["status"] == "degraded" => tally.slow_disk_reported += 1,
            Some(_) => tally.slow_disk_unreported += 1,
            None => {}
        }
        done.push(match health {
            Some((status, body)) => format!(
                "disk of {} fast again (it answered /healthz {status} {} {})",
                nodes[at].name, body["status"], body["warnings"]
            ),
            None => format!(
                "disk of {} fast again (it did not answer /healthz)",
                nodes[at].name
            ),
        });
    }
    let disk = &disks.full;
    if disk.full() {
        // What the node said while it could not write, before it gets room again.
        let last = nodes.len() - 1;
        let health = nodes[last].health().await;
        disk.free()?;
        done.push(format!("disk of {} freed", nodes[last].name));
        match health {
            Some((503, body)) => {
                tally.disk_full_reported += 1;
                nodes[last].kill();
                done.push(format!(
                    "{} said it cannot write ({}): restarted",
                    nodes[last].name, body["problems"]
                ));
            }
            Some((status, _)) => {
                tally.disk_full_unreported += 1;
                done.push(format!("{} answered /healthz {status}", nodes[last].name));
            }
            None => done.push(format!("{} did not answer /healthz", nodes[last].name)),
        }
    }
    if !receiver.is_up() {
        receiver.up()?;
        done.push("counting receiver up".into());
    }
    for node in nodes.iter_mut() {
        if node
            .skew_file
            .as_ref()
            .is_some_and(|f| std::fs::read_to_string(f).is_ok_and(|offset| offset.trim() != "+0"))
        {
            node.set_clock_offset(0)?;
            done.push(format!("{}'s wall clock back to the real time", node.name));
        }
        if node.paused {
            node.resume();
            done.push(format!("SIGCONT {}", node.name));
        }
        if !node.running() {
            node.spawn()?;
            done.push(format!("restart {}", node.name));
        }
    }
    Ok(done)
}
