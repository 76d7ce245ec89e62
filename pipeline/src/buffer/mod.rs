//! The disk buffer of each destination: batches are stored on disk (in the storage crate's
//! [`apiary_storage::SegmentQueue`], whose files' size is the cap's measure) and leave only
//! once the destination acknowledged them. `delivery` admits and stores (with the
//! [`FullPolicy`] of `policy` when full), `fanout` stores one request for every destination or none, `window` sends several at a time,
//! `stats` counts.

pub mod delivery;
pub mod fanout;
mod frame;
pub mod policy;
pub mod stats;
pub mod window;

pub use delivery::{backoff, Admission, Delivery, DiskRoom, Framed, Reservation, SendLimits};
pub use fanout::store_everywhere;
pub use policy::{EnqueueError, FullPolicy};
pub use stats::DeliveryStats;
