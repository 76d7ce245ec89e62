//! Sending a destination's buffer at the destination's speed: up to `SendLimits::window`
//! sends in flight, each of several stored batches of one signal merged into one request (an OTLP export
//! request is a list, and concatenated protobuf lists are the list of both), acknowledged to the
//! buffer in order so that a restart re-sends from the oldest unacknowledged batch.
//!
//! Retryable failures back off exponentially with jitter (or as long as the destination
//! asked); a batch refused for good is counted as refused and acknowledged. A merged request
//! refused for good is sent again batch by batch, so that one app's batch the destination will
//! not take (bad bytes the receivers did not decode) costs only that batch.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::buffer::delivery::{backoff, Delivery};
use crate::buffer::frame::unframe;
use crate::signal::Signal;
use crate::sinks::sink::{SendError, Sink};

/// Stored batches read from disk at a time.
const READ_BATCHES: usize = 64;

/// One request to send: stored batches `first..=last` of one signal, merged.
struct Send {
    last: u64,
    signal: Signal,
    items: u32,
    batches: u64,
    payload: Vec<u8>,
    /// Where each stored batch ends in `payload`, and its items.
    parts: Vec<(usize, u32)>,
}

/// What became of a send, by its place in the order.
struct Finished {
    last: u64,
    items: u32,
    batches: u64,
    refused: u64,
}

impl<S: Sink> Delivery<S> {
    /// Sends forever. Ends only when the task is aborted (the destination removed).
    pub async fn run(self: Arc<Self>) {
        let mut ready: VecDeque<Send> = VecDeque::new();
        // In send order: `None` while in flight.
        let mut order: VecDeque<(u64, Option<Finished>)> = VecDeque::new();
        let mut sending: JoinSet<Finished> = JoinSet::new();
        let window = self.limits.window;
        loop {
            // Read until the window can be filled (or the buffer has nothing more).
            while ready.len() + sending.len() < window {
                match self.read_sends() {
                    Ok(sends) if sends.is_empty() => break,
                    Ok(sends) => ready.extend(sends),
                    Err(e) => {
                        tracing::error!(destination = %self.name, "export buffer unreadable: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
            while sending.len() < window {
                let Some(send) = ready.pop_front() else { break };
                order.push_back((send.last, None));
                let delivery = self.clone();
                sending.spawn(async move { delivery.send_until_done(send).await });
            }
            self.stats
                .in_flight
                .store(sending.len() as u64, Ordering::Relaxed);
            if sending.is_empty() {
                // Every store notifies; the timeout is a safety net.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            }
            let joined = if sending.len() < window && ready.is_empty() {
                tokio::select! {
                    joined = sending.join_next() => joined,
                    () = self.wake.notified() => continue,
                }
            } else {
                sending.join_next().await
            };
            let finished = match joined {
                Some(Ok(finished)) => finished,
                Some(Err(e)) => {
                    // A panicking sink: what it held is re-sent after a restart.
                    tracing::error!(destination = %self.name, "a send task failed: {e}");
                    continue;
                }
                None => continue,
            };
            if let Some(slot) = order.iter_mut().find(|(last, _)| *last == finished.last) {
                slot.1 = Some(finished);
            }
            self.acknowledge_in_order(&mut order);
        }
    }

    /// Acknowledges the finished sends at the front of the order to the buffer.
    fn acknowledge_in_order(&self, order: &mut VecDeque<(u64, Option<Finished>)>) {
        let mut through = None;
        while let Some((_, Some(_))) = order.front() {
            let (last, finished) = order.pop_front().expect("checked above");
            let finished = finished.expect("checked above");
            through = Some(last);
            let delivered = (finished.items as u64).saturating_sub(finished.refused);
            let stats = &self.stats;
            stats
                .delivered_items
                .fetch_add(delivered, Ordering::Relaxed);
            stats
                .refused_items
                .fetch_add(finished.refused, Ordering::Relaxed);
            stats
                .delivered_batches
                .fetch_add(finished.batches, Ordering::Relaxed);
            decrement(&stats.queued_items, finished.items as u64);
            decrement(&stats.queued_batches, finished.batches);
            stats.drain.record(finished.items as u64);
        }
        if let Some(last) = through {
            if let Err(e) = self.queue.ack_through(last) {
                tracing::error!(destination = %self.name, "cannot acknowledge delivered batches: {e}");
            }
            self.stats
                .queued_bytes
                .store(self.queue.bytes_on_disk(), Ordering::Relaxed);
        }
    }

    /// The next stored batches, merged into sends of one signal under the size limits.
    fn read_sends(&self) -> Result<Vec<Send>, String> {
        let stored = self
            .queue
            // About one request's worth per read: the loop in `run` reads again until the
            // window is full, and reading further ahead only holds memory.
            .read_next(READ_BATCHES, self.limits.max_bytes.max(1 << 20) as u64)
            .map_err(|e| e.to_string())?;
        let mut sends: Vec<Send> = Vec::new();
        for (seq, item) in stored {
            let Some((signal, items, payload)) = unframe(&item) else {
                tracing::error!(destination = %self.name, seq, "unreadable batch in the export buffer, skipped");
                // Acknowledged with the send before it (or alone), so it is not read again.
                sends.push(Send {
                    last: seq,
                    signal: Signal::Traces,
                    items: 0,
                    batches: 1,
                    payload: Vec::new(),
                    parts: Vec::new(),
                });
                continue;
            };
            match sends.last_mut() {
                Some(send)
                    if send.signal == signal
                        && send.items > 0
                        && send.payload.len() + payload.len() <= self.limits.max_bytes
                        && send.items.saturating_add(items) <= self.limits.max_items =>
                {
                    send.payload.extend_from_slice(&payload);
                    send.parts.push((send.payload.len(), items));
                    send.items += items;
                    send.batches += 1;
                    send.last = seq;
                }
                _ => sends.push(Send {
                    last: seq,
                    signal,
                    items,
                    batches: 1,
                    parts: vec![(payload.len(), items)],
                    payload: payload.into_owned(),
                }),
            }
        }
        Ok(sends)
    }

    /// Sends until the destination took it or refused it for good; a merged request refused
    /// for good goes again one stored batch at a time.
    async fn send_until_done(&self, send: Send) -> Finished {
        let finished = |refused| Finished {
            last: send.last,
            items: send.items,
            batches: send.batches,
            refused,
        };
        if send.payload.is_empty() {
            return finished(send.items as u64);
        }
        match self
            .send_payload(send.signal, &send.payload, send.items)
            .await
        {
            Ok(rejected) => finished(rejected),
            Err(()) if send.parts.len() > 1 => {
                tracing::warn!(destination = %self.name, batches = send.parts.len(),
                    "a merged request was refused for good: sending its batches one by one");
                let mut refused = 0;
                let mut start = 0;
                for &(end, items) in &send.parts {
                    let part = &send.payload[start..end];
                    refused += match self.send_payload(send.signal, part, items).await {
                        Ok(rejected) => rejected,
                        Err(()) => items as u64,
                    };
                    start = end;
                }
                finished(refused)
            }
            Err(()) => finished(send.items as u64),
        }
    }

    /// Sends `payload` (`items` items) until the destination takes it (`Ok`: how many items
    /// it rejected) or refuses it for good (`Err`, logged and counted as a failed attempt).
    async fn send_payload(&self, signal: Signal, payload: &[u8], items: u32) -> Result<u64, ()> {
        let mut attempt: u32 = 0;
        loop {
            match self.sink.send(signal, payload).await {
                Ok(outcome) => {
                    if outcome.rejected_items > 0 {
                        tracing::warn!(destination = %self.name, rejected = outcome.rejected_items,
                            "destination rejected part of a batch: {}", outcome.message);
                    }
                    self.stats.set_last_error(None);
                    return Ok(outcome.rejected_items.min(items as u64));
                }
                Err(SendError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    let wait = retry_after.unwrap_or_else(|| backoff(attempt));
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(destination = %self.name, "export failed, retrying in {wait:?}: {reason}");
                    self.stats.set_last_error(Some(reason));
                    tokio::time::sleep(wait).await;
                }
                Err(SendError::Permanent(reason)) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(destination = %self.name, items,
                        "destination refused a batch for good: {reason}");
                    self.stats.set_last_error(Some(reason));
                    return Err(());
                }
            }
        }
    }
}

/// Subtracts without wrapping: after a restart the counters start at what this process saw.
fn decrement(counter: &std::sync::atomic::AtomicU64, by: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(by))
    });
}
