//! One request for every destination: stored in all of them, or in none. Room is reserved in
//! every buffer before anything is written, so that a request refused because one buffer is
//! full leaves no copy in the others (the app's retry would deliver it twice there).

use std::sync::Arc;

use crate::buffer::delivery::{Admission, Delivery, Framed};
use crate::signal::Signal;
use crate::sinks::sink::Sink;
use crate::sources::ingest::NotTaken;

/// Stores an encoded export request of `signal` (`items` items) in every delivery, or refuses
/// it: [`NotTaken::Backpressure`] when a buffer is full under the `refuse` policy (counted
/// there as pushed back), [`NotTaken::NotStored`] when a disk write failed.
///
/// A full buffer under `refuse` pushes back for all destinations: every acknowledged span
/// reaches every destination, so a destination down long enough to fill its buffer stops
/// intake for the others too (they still deliver their backlog). `drop` trades that for loss.
pub async fn store_everywhere<S: Sink>(
    deliveries: &[Arc<Delivery<S>>],
    signal: Signal,
    items: u32,
    payload: &[u8],
) -> Result<(), NotTaken> {
    let batch = Framed::new(signal, items, payload);
    let mut admitted = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match delivery.admit(&batch).await {
            Ok(admission) => admitted.push((delivery, admission)),
            Err(full) => {
                // The others' reservations go back as `admitted` drops; they are counted as
                // pushed back too, since this request reaches none of them.
                for (other, _) in &admitted {
                    other.count_pushed_back(items);
                }
                return Err(full.into());
            }
        }
    }
    let mut failed = None;
    for (delivery, admission) in admitted {
        match admission {
            Admission::Room(reservation) => {
                if let Err(e) = delivery.store(reservation, &batch).await {
                    failed.get_or_insert(e);
                }
            }
            Admission::Drop => delivery.count_dropped(items),
        }
    }
    // A disk failure after others stored it: the app's retry may duplicate it there, the
    // price of not losing it where the disk failed.
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
