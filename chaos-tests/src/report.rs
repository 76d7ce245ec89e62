//! What a run measured, and how it is printed: the figures a soak reports (ops/s, faults,
//! violations, committed writes lost, acked spans lost, duplicates) and the seed to replay it.

use std::fmt;
use std::time::Duration;

use crate::checker::{self, Findings};
use crate::nemesis::Tally;
use crate::telemetry::SpanReport;

/// What a run measured.
pub struct Report {
    pub seed: u64,
    pub elapsed: Duration,
    pub ops: usize,
    pub faults: Tally,
    pub findings: Findings,
    pub description: String,
    /// Each read: (linearizable, answered).
    pub reads: Vec<(bool, bool)>,
    pub spans: SpanReport,
    /// Requests the counting receiver could not decode as OTLP traces.
    pub malformed_exports: u64,
    /// How long the nodes took after the heal to deliver every acked span (or the wait's end).
    pub drained_in: Duration,
}

impl Report {
    /// Config violations, plus acked spans lost and undecodable exports (goal: 0).
    pub fn violations(&self) -> usize {
        self.findings.violations() + self.spans.lost + self.malformed_exports as usize
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log = &self.findings.log;
        let secs = self.elapsed.as_secs_f64().max(0.001);
        writeln!(
            f,
            "chaos run, seed {} (replay: APIARY_CHAOS_SEED={})",
            self.seed, self.seed
        )?;
        writeln!(
            f,
            "  {} ops in {:.0} s: {:.1} ops/s; {} config versions committed",
            self.ops,
            secs,
            self.ops as f64 / secs,
            log.committed
        )?;
        writeln!(
            f,
            "  faults injected: {} {:?}",
            self.faults.total(),
            self.faults.by_kind
        )?;
        writeln!(
            f,
            "  writes: {} acknowledged, {} unknown that committed, {} unknown that did not",
            log.acknowledged, log.unknown_committed, log.unknown_not_committed
        )?;
        if self.faults.disk_full_reported + self.faults.disk_full_unreported > 0 {
            writeln!(
                f,
                "  disk full: the node said so in /healthz (503) after {} of {} (it may say ok when it had nothing to write)",
                self.faults.disk_full_reported,
                self.faults.disk_full_reported + self.faults.disk_full_unreported
            )?;
        }
        if self.faults.slow_disk_reported + self.faults.slow_disk_unreported > 0 {
            writeln!(
                f,
                "  slow disk: the node said degraded in /healthz after {} of {} (it says ok while no flush took longer than the election timeout)",
                self.faults.slow_disk_reported,
                self.faults.slow_disk_reported + self.faults.slow_disk_unreported
            )?;
        }
        let count = |linearizable: bool, ok: bool| {
            self.reads
                .iter()
                .filter(|&&(l, o)| l == linearizable && o == ok)
                .count()
        };
        writeln!(
            f,
            "  reads: {} local ({} unanswered), {} linearizable ({} unanswered: no confirmed leader)",
            count(false, true),
            count(false, false),
            count(true, true),
            count(true, false)
        )?;
        writeln!(
            f,
            "  violations: {}; committed lost: {}; config values committed twice: {}; reads of states the log never had: {}",
            self.violations(),
            log.lost,
            log.duplicates,
            log.bad_reads
        )?;
        let spans = &self.spans;
        writeln!(
            f,
            "  spans: {} posted, {} acked, {} delivered ({} of them never acked) after a drain of \
             {:.1} s; acked spans lost: {}; duplicate deliveries: {}; undecodable exports: {}",
            spans.posted,
            spans.acked,
            spans.delivered,
            spans.delivered_unacked,
            self.drained_in.as_secs_f64(),
            spans.lost,
            spans.duplicates,
            self.malformed_exports
        )?;
        if !spans.lost_sample.is_empty() {
            writeln!(
                f,
                "  PROBLEM: acked spans never delivered, e.g. ids {:?}",
                spans.lost_sample
            )?;
        }
        writeln!(f, "  writes and linearizable reads: {}", self.description)?;
        let local = match &self.findings.with_local_reads {
            checker::linearizable::Verdict::Linearizable => "linearizable".to_string(),
            other => format!(
                "not linearizable (allowed: local reads may be stale): {:?}",
                short(other)
            ),
        };
        writeln!(f, "  with local reads too: {local}")?;
        for problem in &log.problems {
            writeln!(f, "  PROBLEM: {problem}")?;
        }
        Ok(())
    }
}

fn short(verdict: &checker::linearizable::Verdict) -> String {
    match verdict {
        checker::linearizable::Verdict::Violation(v) => {
            format!("stuck after {} of {} ops", v.placed, v.total)
        }
        other => format!("{other:?}"),
    }
}
