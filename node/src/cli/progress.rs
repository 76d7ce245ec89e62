//! Progress of long steps (joining, being admitted, loading probes, waiting for a leader,
//! catching up the log): an `indicatif` spinner or bar on a terminal, plain lines otherwise, so
//! a journal or a CI log gets one line per change rather than redraw codes.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
}

impl Progress {
    /// A step of unknown length.
    pub fn spinner(label: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            eprintln!("{label}…");
            return Progress {
                bar: None,
                label: label.to_string(),
            };
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress {
            bar: Some(bar),
            label: label.to_string(),
        }
    }

    /// A step with a known total, e.g. log entries to apply.
    pub fn counter(label: &str, total: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            eprintln!("{label}: 0/{total}");
            return Progress {
                bar: None,
                label: label.to_string(),
            };
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Progress {
            bar: Some(bar),
            label: label.to_string(),
        }
    }

    /// A new state of the step (an attempt, a reason): redrawn on a terminal, a line otherwise.
    pub fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None => eprintln!("{}: {message}", self.label),
        }
    }

    pub fn position(&self, done: u64, total: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None => eprintln!("{}: {done}/{total}", self.label),
        }
    }

    pub fn finish(self, message: &str) {
        match self.bar {
            Some(bar) => bar.finish_with_message(message.to_string()),
            None => eprintln!("{}: {message}", self.label),
        }
    }
}
