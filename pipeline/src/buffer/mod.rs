//! The disk buffer of each destination: batches are stored on disk (in the storage crate's
//! [`apiary_storage::Queue`]) and leave only once the destination acknowledged them, sent by
//! one delivery worker per destination with retries.

pub mod delivery;
mod frame;

pub use delivery::{backoff, Delivery, DeliveryStats, FullPolicy};
