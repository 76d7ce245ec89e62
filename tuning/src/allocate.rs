//! Max-min fair water-filling of the cluster's export budget across nodes by demand.

use serde::Serialize;

use crate::LoadReport;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Budget {
    /// Spans per second the backend takes, for the whole cluster.
    pub export_events_per_second: f64,
}

/// One node's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub node: u64,
    pub name: String,
    pub demand: f64,
    /// What it would export at its configured rate, capped by its CPU budget.
    pub want: f64,
    /// Its share of the export budget, spans per second.
    pub share: f64,
    /// The sampling rate that share means (never above the configured rate).
    pub rate: f64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Allocation {
    pub decisions: Vec<Decision>,
    /// The level every unsatisfied node is filled to.
    pub level: f64,
    pub total_share: f64,
}

impl Allocation {
    pub fn of(&self, node: u64) -> Option<&Decision> {
        self.decisions.iter().find(|d| d.node == node)
    }
}

/// The lowest rate a node with demand is given: enough to keep some traces, never starving.
pub const MIN_RATE: f64 = 0.001;

/// Shares `budget` among the nodes of `reports`: each gets what it wants if all fits; otherwise
/// the nodes wanting less than an equal level get all they want and the rest split what remains
/// equally (max-min fairness). Deterministic: the same reports, in any order, give the same
/// result on every node.
pub fn allocate(reports: &[LoadReport], budget: Budget) -> Allocation {
    let mut nodes: Vec<&LoadReport> = reports.iter().collect();
    nodes.sort_by_key(|r| r.node);
    nodes.dedup_by_key(|r| r.node);
    let want = |r: &LoadReport| {
        let at_configured = r.demand.max(0.0) * r.configured_rate.clamp(0.0, 1.0);
        match r.cpu_cap {
            Some(cap) => at_configured.min(cap.max(0.0)),
            None => at_configured,
        }
    };
    let mut wants: Vec<(f64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, r)| (want(r), i))
        .collect();
    // Ascending by want, ties by node id (the index follows the node order).
    wants.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let total = budget.export_events_per_second.max(0.0);
    let mut remaining = total;
    let mut level = f64::INFINITY;
    let mut shares = vec![0.0; nodes.len()];
    for (k, (want, i)) in wants.iter().enumerate() {
        let left = (wants.len() - k) as f64;
        let fair = remaining / left;
        if *want <= fair {
            shares[*i] = *want;
            remaining -= want;
        } else {
            level = fair;
            for (_, j) in &wants[k..] {
                shares[*j] = fair;
            }
            break;
        }
    }
    let decisions = nodes
        .iter()
        .zip(&shares)
        .map(|(r, share)| {
            let configured = r.configured_rate.clamp(0.0, 1.0);
            let (rate, reason) = if r.demand <= 0.0 {
                (
                    configured,
                    "no demand: runs at the configured rate".to_string(),
                )
            } else if *share >= want(r) - 1e-9
                && r.cpu_cap.is_none_or(|cap| r.demand * configured <= cap)
            {
                (configured, "fits the budget: configured rate".to_string())
            } else {
                let rate = (share / r.demand).clamp(MIN_RATE.min(configured), configured);
                let why = if r.cpu_cap.is_some_and(|cap| *share >= cap - 1e-9) {
                    format!("capped by its CPU budget at {:.0} spans/s", share)
                } else {
                    format!(
                        "export budget: {:.0} of {:.0} spans/s cluster-wide (fair level {:.0})",
                        share, total, level
                    )
                };
                (rate, why)
            };
            Decision {
                node: r.node,
                name: r.name.clone(),
                demand: r.demand,
                want: want(r),
                share: *share,
                rate,
                reason,
            }
        })
        .collect::<Vec<_>>();
    Allocation {
        total_share: shares.iter().sum(),
        level: if level.is_finite() { level } else { total },
        decisions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: u64, demand: f64) -> LoadReport {
        LoadReport {
            node,
            name: format!("n{node}"),
            demand,
            cpu_cap: None,
            cpu_percent: 0.0,
            configured_rate: 1.0,
            rate: 1.0,
            exported: 0.0,
        }
    }

    fn budget(eps: f64) -> Budget {
        Budget {
            export_events_per_second: eps,
        }
    }

    #[test]
    fn everyone_gets_what_they_want_when_it_fits() {
        let a = allocate(&[report(1, 100.0), report(2, 200.0)], budget(1000.0));
        assert_eq!(a.of(1).unwrap().rate, 1.0);
        assert_eq!(a.of(2).unwrap().share, 200.0);
        assert_eq!(a.total_share, 300.0);
    }

    #[test]
    fn a_heavy_node_is_throttled_and_light_ones_keep_their_rate() {
        let a = allocate(
            &[report(1, 5000.0), report(2, 100.0), report(3, 100.0)],
            budget(1000.0),
        );
        assert_eq!(a.of(2).unwrap().rate, 1.0);
        assert_eq!(a.of(3).unwrap().rate, 1.0);
        let heavy = a.of(1).unwrap();
        assert!((heavy.share - 800.0).abs() < 1e-9, "{heavy:?}");
        assert!((heavy.rate - 0.16).abs() < 1e-9);
        assert!((a.total_share - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn deterministic_whatever_the_order() {
        let reports = vec![
            report(3, 700.0),
            report(1, 50.0),
            report(2, 9000.0),
            report(4, 700.0),
        ];
        let mut reversed = reports.clone();
        reversed.reverse();
        assert_eq!(
            allocate(&reports, budget(1200.0)),
            allocate(&reversed, budget(1200.0))
        );
    }

    #[test]
    fn sum_within_budget_no_starvation_and_monotone_in_demand() {
        // A small deterministic generator instead of a property-testing dependency.
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 10_000) as f64
        };
        for _ in 0..500 {
            let n = 1 + (next() as usize % 8);
            let reports: Vec<LoadReport> = (0..n as u64).map(|i| report(i, next())).collect();
            let b = budget(1.0 + next());
            let a = allocate(&reports, b);
            assert!(a.total_share <= b.export_events_per_second + 1e-6, "{a:?}");
            for d in &a.decisions {
                assert!(d.share <= d.want + 1e-9);
                assert!(d.rate > 0.0 && d.rate <= 1.0, "{d:?}");
                if d.demand > 0.0 {
                    // At least the smaller of its want and an equal split.
                    let floor = d.want.min(b.export_events_per_second / n as f64);
                    assert!(d.share >= floor - 1e-6, "starved: {d:?}");
                }
            }
            // More demand on one node never lowers its share.
            let mut more = reports.clone();
            more[0].demand += 1.0 + next();
            let after = allocate(&more, b);
            assert!(after.decisions[0].share >= a.decisions[0].share - 1e-9);
        }
    }

    #[test]
    fn cpu_cap_and_configured_rate_bound_the_rate() {
        let mut capped = report(1, 1000.0);
        capped.cpu_cap = Some(100.0);
        let mut half = report(2, 1000.0);
        half.configured_rate = 0.5;
        let a = allocate(&[capped, half], budget(1_000_000.0));
        assert!((a.of(1).unwrap().rate - 0.1).abs() < 1e-9);
        assert!(a.of(1).unwrap().reason.contains("CPU"));
        assert_eq!(a.of(2).unwrap().rate, 0.5);
    }
}
