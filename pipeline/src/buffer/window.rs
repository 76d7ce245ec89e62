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

use bytes::Bytes;
use tokio::task::JoinSet;

use crate::buffer::delivery::{backoff, Delivery};
use crate::buffer::frame::{expanded_len, peek, Stored};
use crate::signal::Signal;
use crate::sinks::sink::{SendError, Sink};

/// Stored batches read from disk at a time.
const READ_BATCHES: usize = 64;

/// One request to send: stored batches `first..=last` of one signal, merged.
struct Send {
    last: u64,
    signal: Signal,
    /// Every stored batch's items, `damaged_items` among them.
    items: u32,
    batches: u64,
    /// Items of batches that did not decompress: not in `payload`, counted refused.
    damaged_items: u64,
    payload: Bytes,
    /// Where each stored batch ends in `payload`, and its items.
    parts: Vec<(usize, u32)>,
}

/// Stored batches that will go as one send: one signal, within the size limits.
struct Group<'a> {
    signal: Signal,
    /// Expanded bytes and items of all of them.
    len: usize,
    items: u32,
    batches: Vec<(u64, Stored<'a>)>,
}

impl Send {
    /// A stored batch whose header cannot be read (its items unknown): acknowledged, not sent.
    fn unreadable(seq: u64) -> Send {
        Send {
            last: seq,
            signal: Signal::Traces,
            items: 0,
            batches: 1,
            damaged_items: 0,
            payload: Bytes::new(),
            parts: Vec::new(),
        }
    }
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
                        // Shown as the destination's reason in /v1/export: nothing leaves
                        // while the buffer cannot be read, and the counters alone say nothing.
                        self.stats
                            .set_last_error(Some(format!("export buffer unreadable: {e}")));
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

    /// The next stored batches, merged into sends of one signal under the size limits. Reads
    /// are bounded by the batches' expanded size, and each send's payload is one allocation of
    /// its exact size with every batch expanded straight into its place: what delivery holds
    /// is what it sends, and the sinks take it without a copy.
    fn read_sends(&self) -> Result<Vec<Send>, String> {
        let stored = self
            .queue
            // About one request's worth per read: the loop in `run` reads again until the
            // window is full, and reading further ahead only holds memory.
            .read_next_weighed(
                READ_BATCHES,
                self.limits.max_bytes.max(1 << 20) as u64,
                expanded_len,
            )
            .map_err(|e| e.to_string())?;
        let mut groups: Vec<Group<'_>> = Vec::new();
        let mut sends: Vec<Send> = Vec::new();
        for (seq, item) in &stored {
            let Some(batch) = peek(item) else {
                tracing::error!(destination = %self.name, seq, "unreadable batch in the export buffer, skipped");
                // Acknowledged in its place in the order, so it is not read again.
                sends.extend(groups.drain(..).map(|group| self.merge(group)));
                sends.push(Send::unreadable(*seq));
                continue;
            };
            let (len, items) = (batch.len, batch.items);
            match groups.last_mut() {
                Some(group)
                    if group.signal == batch.signal
                        && group.len + len <= self.limits.max_bytes
                        && group.items.saturating_add(items) <= self.limits.max_items =>
                {
                    group.batches.push((*seq, batch));
                    group.len += len;
                    group.items += items;
                }
                _ => groups.push(Group {
                    signal: batch.signal,
                    len,
                    items,
                    batches: vec![(*seq, batch)],
                }),
            }
        }
        sends.extend(groups.into_iter().map(|group| self.merge(group)));
        Ok(sends)
    }

    /// One send of `group`: its batches expanded one after another. A batch that does not
    /// expand to what its header says is left out and counted refused.
    fn merge(&self, group: Group<'_>) -> Send {
        let mut payload = Vec::with_capacity(group.len);
        let mut send = Send {
            last: group.batches.last().map_or(0, |(seq, _)| *seq),
            signal: group.signal,
            items: group.items,
            batches: group.batches.len() as u64,
            damaged_items: 0,
            payload: Bytes::new(),
            parts: Vec::with_capacity(group.batches.len()),
        };
        for (seq, batch) in &group.batches {
            let start = payload.len();
            payload.resize(start + batch.len, 0);
            if batch.expand_into(&mut payload[start..]).is_none() {
                tracing::error!(destination = %self.name, seq, items = batch.items,
                    "a batch in the export buffer does not decompress: counted refused, skipped");
                payload.truncate(start);
                send.damaged_items += batch.items as u64;
                continue;
            }
            send.parts.push((payload.len(), batch.items));
        }
        send.payload = Bytes::from(payload);
        send
    }

    /// Sends until the destination took it or refused it for good; a merged request refused
    /// for good goes again one stored batch at a time.
    async fn send_until_done(&self, send: Send) -> Finished {
        let finished = |refused: u64| Finished {
            last: send.last,
            items: send.items,
            batches: send.batches,
            refused: refused + send.damaged_items,
        };
        let sent_items = (send.items as u64).saturating_sub(send.damaged_items) as u32;
        if send.payload.is_empty() {
            return finished(sent_items as u64);
        }
        match self
            .send_payload(send.signal, send.payload.clone(), sent_items)
            .await
        {
            Ok(rejected) => finished(rejected),
            Err(()) if send.parts.len() > 1 => {
                tracing::warn!(destination = %self.name, batches = send.parts.len(),
                    "a merged request was refused for good: sending its batches one by one");
                let mut refused = 0;
                let mut start = 0;
                for &(end, items) in &send.parts {
                    let part = send.payload.slice(start..end);
                    refused += match self.send_payload(send.signal, part, items).await {
                        Ok(rejected) => rejected,
                        Err(()) => items as u64,
                    };
                    start = end;
                }
                finished(refused)
            }
            Err(()) => finished(sent_items as u64),
        }
    }

    /// Sends `payload` (`items` items) until the destination takes it (`Ok`: how many items
    /// it rejected) or refuses it for good (`Err`, logged and counted as a failed attempt).
    async fn send_payload(&self, signal: Signal, payload: Bytes, items: u32) -> Result<u64, ()> {
        let mut attempt: u32 = 0;
        loop {
            match self.sink.send(signal, payload.clone()).await {
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
