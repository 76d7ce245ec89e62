//! Histories the checker must accept and histories it must reject.

use super::linearizable::{check, events, Verdict};
use super::log::{self, Entry};
use crate::history::{Action, Op, ReadOutcome, WriteOutcome};

fn write(
    client: usize,
    invoke: u64,
    complete: Option<u64>,
    value: u64,
    outcome: WriteOutcome,
) -> Op {
    Op {
        client,
        node: client,
        invoke,
        complete,
        action: Action::Write { value, outcome },
    }
}

fn ok_write(client: usize, invoke: u64, complete: u64, value: u64, version: u64) -> Op {
    write(
        client,
        invoke,
        Some(complete),
        value,
        WriteOutcome::Ok { version },
    )
}

fn read(client: usize, invoke: u64, complete: u64, version: u64, value: u64) -> Op {
    Op {
        client,
        node: client,
        invoke,
        complete: Some(complete),
        action: Action::Read {
            linearizable: true,
            outcome: ReadOutcome::Ok { version, value },
        },
    }
}

fn verdict(ops: &[Op]) -> Verdict {
    check(&events(ops, None, true), Some((0, 0)), 1_000_000)
}

fn window(ops: &[Op]) -> Vec<usize> {
    match verdict(ops) {
        Verdict::Violation(v) => v.window,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn a_sequential_history_is_linearizable() {
    let ops = [
        ok_write(0, 0, 10, 7, 1),
        read(1, 20, 30, 1, 7),
        ok_write(0, 40, 50, 8, 2),
        read(1, 60, 70, 2, 8),
    ];
    assert_eq!(verdict(&ops), Verdict::Linearizable);
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    for seen in [(0, 0), (1, 7)] {
        let ops = [ok_write(0, 0, 100, 7, 1), read(1, 10, 20, seen.0, seen.1)];
        assert_eq!(verdict(&ops), Verdict::Linearizable, "{seen:?}");
    }
}

#[test]
fn a_stale_read_after_an_acknowledged_write_is_rejected() {
    let ops = [
        ok_write(0, 0, 10, 7, 1),
        ok_write(0, 20, 30, 8, 2),
        read(1, 40, 50, 1, 7),
    ];
    let window = window(&ops);
    assert!(
        window.contains(&2),
        "the stale read is in the window: {window:?}"
    );
}

#[test]
fn a_read_from_the_future_is_rejected() {
    // The read completed before the write was even sent.
    let ops = [read(1, 0, 10, 1, 7), ok_write(0, 20, 30, 7, 1)];
    assert!(matches!(verdict(&ops), Verdict::Violation(_)));
}

#[test]
fn two_writes_acknowledged_at_one_version_are_rejected() {
    let ops = [ok_write(0, 0, 10, 7, 1), ok_write(1, 5, 15, 8, 1)];
    assert!(matches!(verdict(&ops), Verdict::Violation(_)));
}

#[test]
fn versions_against_real_time_are_rejected() {
    // The first write finished before the second began, yet got the later version.
    let ops = [ok_write(0, 0, 10, 7, 2), ok_write(1, 20, 30, 8, 1)];
    assert!(matches!(verdict(&ops), Verdict::Violation(_)));
}

#[test]
fn an_unknown_write_may_take_effect_late_or_never() {
    let seen_later = [
        write(0, 0, None, 7, WriteOutcome::Unknown),
        read(1, 50, 60, 0, 0),
        read(1, 500, 600, 1, 7),
    ];
    assert_eq!(verdict(&seen_later), Verdict::Linearizable);
    let never = [
        write(0, 0, None, 7, WriteOutcome::Unknown),
        read(1, 500, 600, 0, 0),
    ];
    assert_eq!(verdict(&never), Verdict::Linearizable);
    // But not before it was sent.
    let too_early = [
        read(1, 0, 10, 1, 7),
        write(0, 20, None, 7, WriteOutcome::Unknown),
    ];
    assert!(matches!(verdict(&too_early), Verdict::Violation(_)));
}

#[test]
fn the_window_is_small_in_a_long_history() {
    // 200 sequential writes and reads, then one stale read: the window is that read, not the run.
    let mut ops = Vec::new();
    for i in 0..200u64 {
        ops.push(ok_write(0, i * 100, i * 100 + 10, 1000 + i, i + 1));
        ops.push(read(1, i * 100 + 20, i * 100 + 30, i + 1, 1000 + i));
    }
    ops.push(read(2, 20_000, 20_010, 150, 1149));
    let window = window(&ops);
    assert!(window.len() <= 2, "{window:?}");
    assert!(window.contains(&400), "{window:?}");
}

/// A random concurrent history made from a real sequential execution: each operation takes
/// effect at a point inside its interval. The checker must accept every one of them.
#[test]
fn random_linearizable_histories_are_accepted() {
    let mut seed = 42u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..20 {
        let mut ops = Vec::new();
        let (mut version, mut value) = (0u64, 0u64);
        let mut t = 0u64;
        for i in 0..300u64 {
            t += 1 + next(5);
            let point = t; // where it takes effect
            let invoke = point - next(20).min(point);
            let complete = point + next(20);
            let client = next(6) as usize;
            if next(3) == 0 {
                version += 1;
                value = 10_000 + i;
                let outcome = if next(10) == 0 {
                    WriteOutcome::Unknown
                } else {
                    WriteOutcome::Ok { version }
                };
                let complete = (outcome != WriteOutcome::Unknown).then_some(complete);
                ops.push(write(client, invoke, complete, value, outcome));
            } else {
                ops.push(read(client, invoke, complete, version, value));
            }
        }
        assert_eq!(verdict(&ops), Verdict::Linearizable);
    }
}

fn log_of(values: &[Option<u64>]) -> Vec<Entry> {
    values
        .iter()
        .enumerate()
        .map(|(i, &value)| Entry {
            version: i as u64 + 1,
            value,
        })
        .collect()
}

#[test]
fn the_log_checks_pass_on_a_sound_log() {
    let ops = [ok_write(0, 0, 10, 7, 1), read(1, 20, 30, 1, 7)];
    let report = log::check(&[("n0".into(), log_of(&[Some(7)]))], &ops, 0);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(
        (report.acknowledged, report.lost, report.duplicates),
        (1, 0, 0)
    );
}

#[test]
fn a_write_committed_twice_is_a_duplicate() {
    let ops = [ok_write(0, 0, 10, 7, 1)];
    let report = log::check(&[("n0".into(), log_of(&[Some(7), Some(7)]))], &ops, 0);
    assert_eq!(report.duplicates, 1, "{:?}", report.problems);
}

#[test]
fn an_acknowledged_write_missing_from_the_log_is_lost() {
    let ops = [ok_write(0, 0, 10, 7, 1), ok_write(0, 20, 30, 8, 2)];
    let report = log::check(&[("n0".into(), log_of(&[Some(7)]))], &ops, 0);
    assert_eq!(report.lost, 1, "{:?}", report.problems);
}

#[test]
fn gaps_divergent_logs_and_phantom_reads_are_reported() {
    let gap = vec![
        Entry {
            version: 1,
            value: Some(7),
        },
        Entry {
            version: 3,
            value: Some(8),
        },
    ];
    let report = log::check(&[("n0".into(), gap)], &[], 0);
    assert!(
        report.problems.iter().any(|p| p.contains("without gaps")),
        "{:?}",
        report.problems
    );

    let logs = [
        ("n0".to_string(), log_of(&[Some(7)])),
        ("n1".to_string(), log_of(&[Some(8)])),
    ];
    let report = log::check(&logs, &[], 0);
    assert!(
        report.problems.iter().any(|p| p.contains("differs")),
        "{:?}",
        report.problems
    );

    let phantom = [read(1, 0, 10, 1, 9)];
    let report = log::check(&[("n0".into(), log_of(&[Some(7)]))], &phantom, 0);
    assert_eq!(report.bad_reads, 1, "{:?}", report.problems);
}

#[test]
fn a_certainly_failed_write_must_not_commit() {
    let ops = [write(0, 0, Some(10), 7, WriteOutcome::Fail)];
    let report = log::check(&[("n0".into(), log_of(&[Some(7)]))], &ops, 0);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("certainly failed")),
        "{:?}",
        report.problems
    );
}
