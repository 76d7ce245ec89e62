//! The format of a batch in the disk buffer: the signal's code (with [`COMPRESSED`] set) in
//! the first byte, the item count (4 bytes, big-endian), then the encoded OTLP export request,
//! LZ4-compressed with its size prepended.

use std::borrow::Cow;

use crate::signal::Signal;

/// Set in a stored batch's first byte when its payload is LZ4-compressed.
const COMPRESSED: u8 = 0x80;

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

/// The signal, item count and (decompressed) payload of a stored batch; `None` when it is not
/// one. A batch without [`COMPRESSED`] has its payload as it is.
pub(crate) fn unframe(item: &[u8]) -> Option<(Signal, u32, Cow<'_, [u8]>)> {
    let (&code, rest) = item.split_first()?;
    let (count, payload) = rest.split_first_chunk::<4>()?;
    let payload = if code & COMPRESSED != 0 {
        Cow::Owned(lz4_flex::decompress_size_prepended(payload).ok()?)
    } else {
        Cow::Borrowed(payload)
    };
    Some((
        Signal::from_code(code & !COMPRESSED)?,
        u32::from_be_bytes(*count),
        payload,
    ))
}
