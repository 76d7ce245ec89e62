//! The format of a batch in the disk buffer: the signal's code (with [`COMPRESSED`] set) in
//! the first byte, the item count (4 bytes, big-endian), then the encoded OTLP export request,
//! LZ4-compressed with its size prepended.

use crate::signal::Signal;

/// Set in a stored batch's first byte when its payload is LZ4-compressed.
const COMPRESSED: u8 = 0x80;

/// No stored batch expands beyond this (the receivers store requests of at most 8 MiB): a
/// damaged header claiming more is refused before anything is allocated for it.
const MAX_EXPANDED: usize = 64 << 20;

/// A stored batch: signal code (| COMPRESSED), item count, payload. The payload is compressed
/// with LZ4 because OTLP batches shrink several times over, and sled writes a large value (or a
/// tree node full of them) as a file of its own, which cost more than the rest of the pipeline.
pub(crate) fn frame(signal: Signal, items: u32, payload: &[u8]) -> Vec<u8> {
    let compressed = lz4_flex::compress_prepend_size(payload);
    let mut item = Vec::with_capacity(5 + compressed.len());
    item.push(signal.code() | COMPRESSED);
    item.extend_from_slice(&items.to_be_bytes());
    item.extend_from_slice(&compressed);
    item
}

/// A stored batch read back, not yet expanded: what it is and how large its payload will be,
/// so that a reader can size (and bound) what it holds before decompressing.
pub(crate) struct Stored<'a> {
    pub signal: Signal,
    pub items: u32,
    /// The payload's size once expanded.
    pub len: usize,
    body: Body<'a>,
}

enum Body<'a> {
    /// LZ4 block without its size prefix.
    Compressed(&'a [u8]),
    Plain(&'a [u8]),
}

/// Reads a stored batch's header; `None` when it is not one. A batch without [`COMPRESSED`]
/// has its payload as it is.
pub(crate) fn peek(item: &[u8]) -> Option<Stored<'_>> {
    let (&code, rest) = item.split_first()?;
    let (count, payload) = rest.split_first_chunk::<4>()?;
    let signal = Signal::from_code(code & !COMPRESSED)?;
    let (len, body) = if code & COMPRESSED != 0 {
        let (len, block) = lz4_flex::block::uncompressed_size(payload).ok()?;
        if len > MAX_EXPANDED {
            return None;
        }
        (len, Body::Compressed(block))
    } else {
        (payload.len(), Body::Plain(payload))
    };
    Some(Stored {
        signal,
        items: u32::from_be_bytes(*count),
        len,
        body,
    })
}

/// What a stored batch's header says its payload weighs expanded (its stored size when the
/// header is unreadable): the weight a reader bounds its reads by.
pub(crate) fn expanded_len(item: &[u8]) -> u64 {
    peek(item).map_or(item.len(), |stored| stored.len) as u64
}

impl Stored<'_> {
    /// Writes the payload into `out`, exactly [`len`](Self::len) bytes; `None` when the stored
    /// bytes do not expand to that (a damaged batch).
    pub(crate) fn expand_into(&self, out: &mut [u8]) -> Option<()> {
        if out.len() != self.len {
            return None;
        }
        match self.body {
            Body::Compressed(block) => {
                (lz4_flex::decompress_into(block, out).ok()? == self.len).then_some(())
            }
            Body::Plain(bytes) => {
                out.copy_from_slice(bytes);
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(item: &[u8]) -> Option<(Signal, u32, Vec<u8>)> {
        let stored = peek(item)?;
        let mut out = vec![0; stored.len];
        stored.expand_into(&mut out)?;
        Some((stored.signal, stored.items, out))
    }

    #[test]
    fn a_batch_reads_back_as_it_was_stored() {
        let payload: Vec<u8> = (0..5000u32).flat_map(|i| (i % 7).to_le_bytes()).collect();
        let item = frame(Signal::Logs, 42, &payload);
        assert!(item.len() < payload.len() / 4, "compressed");
        assert_eq!(expanded_len(&item), payload.len() as u64);
        assert_eq!(expand(&item), Some((Signal::Logs, 42, payload)));
    }

    #[test]
    fn a_damaged_batch_is_refused_not_misread() {
        let payload = vec![7u8; 4000];
        let item = frame(Signal::Traces, 3, &payload);
        // Cut short: the block does not expand to the size its header gives.
        assert_eq!(expand(&item[..item.len() - 3]), None);
        // A header claiming more than the block holds.
        let mut lying = item.clone();
        lying[5..9].copy_from_slice(&8000u32.to_le_bytes());
        assert_eq!(expand(&lying), None);
        let mut huge = item.clone();
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(peek(&huge).is_none(), "refused before allocating 4 GiB");
        assert!(peek(&[]).is_none());
        assert!(peek(&[0x7f, 0, 0, 0, 1]).is_none(), "no such signal");
        // Uncompressed batches (an older format) are read as they are.
        let plain = [&[Signal::Metrics.code()][..], &2u32.to_be_bytes(), b"abc"].concat();
        assert_eq!(expand(&plain), Some((Signal::Metrics, 2, b"abc".to_vec())));
    }
}
