//! A node's demand (requests per second its probes see), measured over the last few one-second
//! rounds.
//!
//! The probes' records are read from the ring in bursts on a busy machine, so one second's count
//! swings by half either way around the true rate (seen: 800 to 1 600 requests/s under a steady
//! load), a burst late in one second being the next second's. A rate set from one second's
//! count and applied to the next therefore overran the export budget whenever a low count was
//! followed by a high one (the three-node test saw the cluster 13 % over). Counted over a window
//! of rounds, a late burst moves only the window's edge. A round well above the window's rate is
//! a surge and starts the window afresh, so a load that really grows is sampled down within a
//! round instead of overrunning the budget while the window catches up.

use std::collections::VecDeque;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct DemandMeter {
    /// (requests, seconds) of the last rounds, newest last.
    rounds: VecDeque<(f64, f64)>,
    /// Rounds in the window.
    pub window: usize,
    /// A round at least this many times the window's rate is a surge.
    pub surge: f64,
}

impl Default for DemandMeter {
    fn default() -> Self {
        DemandMeter {
            rounds: VecDeque::new(),
            window: 5,
            surge: 2.0,
        }
    }
}

impl DemandMeter {
    /// Folds in one round (`requests` seen in `seconds`); returns the demand to plan with.
    pub fn observe(&mut self, requests: f64, seconds: f64) -> f64 {
        let round = (requests.max(0.0), seconds.max(1e-3));
        if round.0 / round.1 >= self.demand() * self.surge {
            self.rounds.clear();
        }
        self.rounds.push_back(round);
        while self.rounds.len() > self.window.max(1) {
            self.rounds.pop_front();
        }
        self.demand()
    }

    /// Requests per second over the window (0 before the first round).
    pub fn demand(&self) -> f64 {
        let (requests, seconds) = self
            .rounds
            .iter()
            .fold((0.0, 0.0), |(r, s), (dr, ds)| (r + dr, s + ds));
        if seconds > 0.0 {
            requests / seconds
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_surge_is_taken_at_once() {
        let mut meter = DemandMeter::default();
        assert_eq!(meter.observe(0.0, 1.0), 0.0);
        assert_eq!(meter.observe(1200.0, 1.0), 1200.0, "from nothing to a load");
        meter.observe(1200.0, 1.0);
        assert_eq!(
            meter.observe(5000.0, 1.0),
            5000.0,
            "a load four times the last"
        );
    }

    #[test]
    fn late_bursts_of_a_steady_load_move_only_the_window_edge() {
        let mut meter = DemandMeter::default();
        meter.observe(1200.0, 1.0);
        let mut seen = Vec::new();
        // Each second's count is 1 200 give or take a burst read late.
        let mut late = 0.0;
        for i in 0..60u32 {
            let next_late = [0.0, 400.0, 250.0, 0.0, 350.0][i as usize % 5];
            seen.push(meter.observe(1200.0 + late - next_late, 1.0));
            late = next_late;
        }
        for demand in &seen[5..] {
            assert!(
                (demand - 1200.0).abs() < 1200.0 * 0.08,
                "{demand} strays from 1200: {seen:?}"
            );
        }
    }

    #[test]
    fn a_load_that_stops_fades_within_the_window() {
        let mut meter = DemandMeter::default();
        for _ in 0..5 {
            meter.observe(1000.0, 1.0);
        }
        let rounds = (0..60)
            .take_while(|_| meter.observe(0.0, 1.0) > 0.0)
            .count();
        assert_eq!(rounds, 4, "the last loaded round leaves the window");
    }
}
