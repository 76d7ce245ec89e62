//! A bounded history per series: one ring of (time, value) per service and signal, at the
//! node's sampling resolution, saved to one file so that it survives a restart.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{PredictError, Signal};

/// One series' points, oldest first, at most `capacity` of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ring {
    /// (unix seconds, value).
    points: VecDeque<(f64, f64)>,
}

impl Ring {
    pub fn push(&mut self, at: f64, value: f64, capacity: usize) {
        if !value.is_finite() {
            return;
        }
        // Time only moves forward in a ring: a sample from the past (a clock step back) is
        // dropped rather than folded into the fits out of order.
        if self.points.back().is_some_and(|(last, _)| *last >= at) {
            return;
        }
        self.points.push_back((at, value));
        while self.points.len() > capacity {
            self.points.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The newest `n` points (fewer if the ring holds fewer), oldest first.
    pub fn last(&self, n: usize) -> Vec<(f64, f64)> {
        let skip = self.points.len().saturating_sub(n);
        self.points.iter().skip(skip).copied().collect()
    }

    /// Points at or after `since` (unix seconds).
    pub fn since(&self, since: f64) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .filter(|(t, _)| *t >= since)
            .copied()
            .collect()
    }

    pub fn latest(&self) -> Option<(f64, f64)> {
        self.points.back().copied()
    }
}

/// The key of one series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    pub service: String,
    pub signal: Signal,
}

/// Every series of this node, each a [`Ring`] of `capacity` points. Series beyond
/// `max_series` are refused (counted), so that many short-lived services cannot grow it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    pub capacity: usize,
    pub max_series: usize,
    series: BTreeMap<String, BTreeMap<Signal, Ring>>,
    #[serde(default)]
    pub refused_series: u64,
}

/// What the history file holds: the format version, then the history.
#[derive(Serialize, Deserialize)]
struct Saved {
    format: u32,
    history: History,
}

const FORMAT: u32 = 1;

impl History {
    pub fn new(capacity: usize, max_series: usize) -> Self {
        History {
            capacity: capacity.max(1),
            max_series,
            series: BTreeMap::new(),
            refused_series: 0,
        }
    }

    /// Appends one point; `false` when the series is new and the history already holds
    /// `max_series` series.
    pub fn push(&mut self, service: &str, signal: Signal, at: f64, value: f64) -> bool {
        let count: usize = self.series.values().map(BTreeMap::len).sum();
        let exists = self
            .series
            .get(service)
            .is_some_and(|signals| signals.contains_key(&signal));
        if !exists && count >= self.max_series {
            self.refused_series += 1;
            return false;
        }
        self.series
            .entry(service.to_string())
            .or_default()
            .entry(signal)
            .or_default()
            .push(at, value, self.capacity);
        true
    }

    pub fn ring(&self, service: &str, signal: Signal) -> Option<&Ring> {
        self.series.get(service)?.get(&signal)
    }

    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.series.keys().map(String::as_str)
    }

    pub fn series_count(&self) -> usize {
        self.series.values().map(BTreeMap::len).sum()
    }

    pub fn points(&self) -> usize {
        self.series
            .values()
            .flat_map(BTreeMap::values)
            .map(Ring::len)
            .sum()
    }

    /// Drops services with no point since `before` (unix seconds).
    pub fn forget_older_than(&mut self, before: f64) {
        self.series.retain(|_, signals| {
            signals.retain(|_, ring| ring.latest().is_some_and(|(t, _)| t >= before));
            !signals.is_empty()
        });
    }

    /// Writes the history to `path` (through a temporary file and a rename, so that a crash
    /// leaves the old file or the new one, never half of one).
    pub fn save(&self, path: &Path) -> Result<(), PredictError> {
        let saved = Saved {
            format: FORMAT,
            history: self.clone(),
        };
        let bytes = serde_json::to_vec(&saved).map_err(|e| PredictError::Format(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(|e| PredictError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| PredictError::io(path, e))
    }

    /// Reads a history saved by [`History::save`], resized to `capacity` and `max_series`
    /// (the settings may have changed since). A missing file is an empty history.
    pub fn load(path: &Path, capacity: usize, max_series: usize) -> Result<Self, PredictError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(History::new(capacity, max_series))
            }
            Err(e) => return Err(PredictError::io(path, e)),
        };
        let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| {
            PredictError::Format(format!(
                "{} is not a prediction history ({e}); delete it to start afresh",
                path.display()
            ))
        })?;
        if saved.format != FORMAT {
            return Err(PredictError::Format(format!(
                "{} has format {}, this node reads {FORMAT}; delete it to start afresh",
                path.display(),
                saved.format
            )));
        }
        let mut history = History::new(capacity, max_series);
        for (service, signals) in saved.history.series {
            for (signal, ring) in signals {
                for (at, value) in ring.points {
                    history.push(&service, signal, at, value);
                }
            }
        }
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_points_in_time_order() {
        let mut ring = Ring::default();
        for i in 0..10 {
            ring.push(i as f64, i as f64 * 10.0, 4);
        }
        ring.push(5.0, -1.0, 4); // from the past: dropped
        ring.push(10.0, f64::NAN, 4); // not a number: dropped
        assert_eq!(
            ring.last(10),
            vec![(6.0, 60.0), (7.0, 70.0), (8.0, 80.0), (9.0, 90.0)]
        );
        assert_eq!(ring.last(2), vec![(8.0, 80.0), (9.0, 90.0)]);
        assert_eq!(ring.since(8.5), vec![(9.0, 90.0)]);
    }

    #[test]
    fn series_beyond_the_cap_are_refused_and_counted() {
        let mut history = History::new(8, 2);
        assert!(history.push("a", Signal::Rate, 1.0, 1.0));
        assert!(history.push("a", Signal::P99, 1.0, 1.0));
        assert!(!history.push("b", Signal::Rate, 1.0, 1.0));
        assert!(history.push("a", Signal::Rate, 2.0, 1.0));
        assert_eq!(history.refused_series, 1);
        assert_eq!(history.series_count(), 2);
    }

    #[test]
    fn survives_a_save_and_load_with_new_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("predict-history.json");
        let mut history = History::new(100, 10);
        for i in 0..50 {
            history.push("web", Signal::P99, i as f64, i as f64);
        }
        history.save(&path).unwrap();
        let loaded = History::load(&path, 20, 10).unwrap();
        let ring = loaded.ring("web", Signal::P99).unwrap();
        assert_eq!(ring.len(), 20);
        assert_eq!(ring.latest(), Some((49.0, 49.0)));
        // No file yet: empty. A damaged file: a clear error naming it.
        assert_eq!(
            History::load(&dir.path().join("none"), 5, 5)
                .unwrap()
                .points(),
            0
        );
        std::fs::write(&path, b"{not json").unwrap();
        let error = History::load(&path, 5, 5).unwrap_err().to_string();
        assert!(error.contains("delete it to start afresh"), "{error}");
    }
}
