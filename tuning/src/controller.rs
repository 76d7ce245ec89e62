//! Turns a target rate into the rate a node runs at, without oscillating: a rate falls at once
//! when the target is even slightly lower (so the budget is not overrun by a dead band), but rises
//! at once only for a clear difference (hysteresis), and at most by a factor per step. Around a
//! noisy target the rate therefore settles at the low edge of the noise, never above it.
//!
//! A small rise that holds for several rounds in a row is no noise, though: a target that creeps
//! up (demand falling slowly) would otherwise leave the rate up to the whole dead band below it
//! for as long as the trend lasts. The three-node test saw the cluster export 11 % under its
//! budget that way, the rate climbing 0.029 to 0.048 in 13 % steps behind its target.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct RateController {
    rate: f64,
    /// Relative rise below which the rate stays.
    pub dead_band: f64,
    /// Relative fall below which the rate stays (measurement jitter).
    pub fall_band: f64,
    /// Largest factor the rate may grow by in one step.
    pub max_rise: f64,
    /// Rounds in a row a small rise (over `fall_band`) must hold to apply.
    pub persist_rounds: u32,
    /// Rounds in a row the target has been a small rise above the rate.
    rising_for: u32,
}

impl RateController {
    pub fn new(rate: f64) -> Self {
        RateController {
            rate: rate.clamp(0.0, 1.0),
            dead_band: 0.10,
            fall_band: 0.02,
            max_rise: 2.0,
            persist_rounds: 3,
            rising_for: 0,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// One step toward `target` (at most `ceiling`, the configured rate); returns the new rate
    /// and whether it changed.
    pub fn step(&mut self, target: f64, ceiling: f64) -> (f64, bool) {
        let ceiling = ceiling.clamp(0.0, 1.0);
        let target = target.clamp(0.0, ceiling);
        let current = self.rate;
        let small_rise = current > 0.0 && (target - current) / current > self.fall_band;
        self.rising_for = if small_rise { self.rising_for + 1 } else { 0 };
        let differs = if current == 0.0 {
            target > 0.0
        } else if target < current {
            (current - target) / current > self.fall_band
        } else {
            (target - current) / current > self.dead_band || self.rising_for >= self.persist_rounds
        };
        // The configured rate is always reachable exactly, whatever the dead band; and a lowered
        // ceiling applies at once.
        let to_full = target == ceiling && current != ceiling;
        if !(differs || to_full) {
            return (current, false);
        }
        let next = if target < current {
            target
        } else {
            target.min((current * self.max_rise).max(crate::allocate::MIN_RATE))
        };
        self.rate = next;
        self.rising_for = 0;
        (next, next != current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_at_once_rises_gradually_and_ignores_jitter() {
        let mut c = RateController::new(1.0);
        assert_eq!(
            c.step(0.99, 1.0),
            (1.0, false),
            "jitter below the fall band"
        );
        assert_eq!(
            c.step(0.95, 1.0),
            (0.95, true),
            "a small fall applies: no budget overrun"
        );
        assert_eq!(
            c.step(1.0, 1.0),
            (1.0, true),
            "the configured rate is always reachable"
        );
        assert_eq!(c.step(0.1, 1.0), (0.1, true), "falls at once");
        assert_eq!(c.step(0.105, 1.0), (0.1, false));
        assert_eq!(c.step(1.0, 1.0), (0.2, true), "rises at most 2x per step");
        assert_eq!(c.step(1.0, 1.0).0, 0.4);
        assert_eq!(c.step(1.0, 1.0).0, 0.8);
        assert_eq!(c.step(1.0, 1.0).0, 1.0);
        assert_eq!(c.step(1.0, 1.0), (1.0, false));
        assert_eq!(
            c.step(1.0, 0.3),
            (0.3, true),
            "a lowered ceiling applies at once"
        );
        assert_eq!(c.step(0.296, 0.3), (0.3, false), "jitter");
    }

    #[test]
    fn no_oscillation_around_a_noisy_target() {
        let mut c = RateController::new(0.5);
        let mut changes = 0;
        for i in 0..100 {
            let noise = if i % 2 == 0 { 0.52 } else { 0.48 };
            changes += usize::from(c.step(noise, 1.0).1);
        }
        assert_eq!(
            changes, 1,
            "one fall to the low edge of the noise, then still"
        );
        assert_eq!(c.rate(), 0.48);
    }

    #[test]
    fn a_target_creeping_up_is_followed_closely() {
        let mut c = RateController::new(0.03);
        let mut target: f64 = 0.03;
        let mut worst: f64 = 0.0;
        for round in 0..100 {
            target *= 1.01;
            c.step(target, 1.0);
            if round >= 5 {
                worst = worst.max((target - c.rate()) / target);
            }
        }
        // The fall band and three rounds of 1 % behind at most, not the 10 % dead band.
        assert!(
            worst < 0.06,
            "the rate lagged {:.1} % behind",
            worst * 100.0
        );
    }
}
