//! Transforms: what the pipeline computes from spans on their way, beside encoding them:
//! RED metrics counted from every exchange (`red`), and app spans re-parented under the probes'
//! spans of the same requests (`reparent`).

pub mod red;
pub mod reparent;

pub use red::RedMetrics;
pub use reparent::{Reparented, ServerSpanIndex};
