//! Robust line fits: Theil–Sen (the median of pairwise slopes), which a few outliers cannot
//! move, and Kendall's tau, which says how consistently one series moves with another.

use serde::Serialize;

/// The median of `values` (NaN-free); `None` when empty. Reorders `values`; linear time (a
/// selection, not a sort: Theil–Sen takes the median of n²/2 slopes on every evaluation).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let odd = values.len() % 2 == 1;
    let mid = values.len() / 2;
    let (below, upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    Some(if odd {
        upper
    } else {
        // The lower middle is the largest of the values below the upper one.
        let lower = below.iter().copied().max_by(f64::total_cmp)?;
        (lower + upper) / 2.0
    })
}

/// A line `y = intercept + slope * x` fitted to points, with how well it holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Line {
    pub slope: f64,
    pub intercept: f64,
    /// Kendall's tau between x and y, -1 to 1: the share of concordant pairs minus the share
    /// of discordant ones. 1 means every later point is higher.
    pub tau: f64,
    /// The median absolute residual around the line, in y's unit.
    pub mad: f64,
    pub points: usize,
}

impl Line {
    pub fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// The Theil–Sen line through `points` (x, y), or `None` with fewer than 3 points or when
/// every x is the same. O(n²) in the points: callers keep n in the hundreds at most.
pub fn theil_sen(points: &[(f64, f64)]) -> Option<Line> {
    let points: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if points.len() < 3 {
        return None;
    }
    let mut slopes = Vec::with_capacity(points.len() * (points.len() - 1) / 2);
    let (mut concordant, mut discordant) = (0i64, 0i64);
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            let dx = b.0 - a.0;
            let dy = b.1 - a.1;
            if dx != 0.0 {
                slopes.push(dy / dx);
            }
            let sign = (dx * dy).signum();
            if dx != 0.0 && dy != 0.0 {
                if sign > 0.0 {
                    concordant += 1;
                } else {
                    discordant += 1;
                }
            }
        }
    }
    let pairs = (points.len() * (points.len() - 1) / 2) as f64;
    let slope = median(&mut slopes)?;
    let mut offsets: Vec<f64> = points.iter().map(|(x, y)| y - slope * x).collect();
    let intercept = median(&mut offsets)?;
    let mut residuals: Vec<f64> = points
        .iter()
        .map(|(x, y)| (y - (intercept + slope * x)).abs())
        .collect();
    let mad = median(&mut residuals)?;
    Some(Line {
        slope,
        intercept,
        tau: (concordant - discordant) as f64 / pairs,
        mad,
        points: points.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    /// A line with two wild outliers: Theil–Sen keeps the slope, least squares would not.
    #[test]
    fn theil_sen_ignores_outliers() {
        let mut points: Vec<(f64, f64)> =
            (0..20).map(|i| (i as f64, 2.0 * i as f64 + 1.0)).collect();
        points[5].1 = 500.0;
        points[15].1 = -300.0;
        let line = theil_sen(&points).unwrap();
        assert!((line.slope - 2.0).abs() < 1e-9, "{line:?}");
        assert!((line.intercept - 1.0).abs() < 1e-9, "{line:?}");
        assert!(line.tau > 0.7, "{line:?}");
    }

    #[test]
    fn flat_noise_has_no_trend() {
        // A deterministic zig-zag: no direction.
        let points: Vec<(f64, f64)> = (0..30)
            .map(|i| (i as f64, if i % 2 == 0 { 10.0 } else { 12.0 }))
            .collect();
        let line = theil_sen(&points).unwrap();
        assert!(line.slope.abs() < 0.2, "{line:?}");
        assert!(line.tau.abs() < 0.1, "{line:?}");
    }

    #[test]
    fn too_few_or_degenerate_points_give_none() {
        assert!(theil_sen(&[(0.0, 1.0), (1.0, 2.0)]).is_none());
        assert!(theil_sen(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]).is_none());
        assert!(theil_sen(&[(0.0, f64::NAN), (1.0, 2.0), (2.0, f64::INFINITY)]).is_none());
    }
}
