//! The peers' QUIC frame decoder, `apiary_wire::frame::decode`: one frame body (without its
//! 4-byte length prefix) as a peer sends it, validated by bytecheck before anything reads it.
//! Every peer reaches this, even one without a cluster certificate (its join request).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(message) = apiary_wire::frame::decode(body) {
        // What decodes must encode again (the node answers and forwards what it read).
        let _ = apiary_wire::frame::encode(&message);
    }
});
