//! Following one direction of a connection's byte stream from the buffers the kernel sends
//! (bpf/db.h): each a captured prefix of a read or write whose full length is known. Shared by
//! the protocols found per connection (Redis, PostgreSQL); each gives its message parser.
//!
//! A message split over two buffers is carried over and parsed again with the next; a message
//! longer than the capture whose end is known exactly (its last string's length was given) is
//! passed over byte for byte. Anything else that falls in bytes never captured makes the
//! stream impossible to follow, and says so: guessing where the next message starts would
//! pair replies with the wrong commands.

/// Why a message could not be walked to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The bytes end inside the message; `Some(n)`: it ends exactly `n` bytes after them.
    Short(Option<u64>),
    /// Not the protocol.
    Invalid,
}

/// Bytes of a message cut at the end of a buffer that are kept to parse again with the next.
const MAX_CARRY: usize = 8 * 1024;

/// Why a stream can no longer be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// A message started in bytes beyond the capture (raise `capture_bytes`).
    Unseen,
    /// Bytes that are not the protocol.
    Invalid,
    /// A message longer than can be carried, whose end is not known.
    TooLong,
}

#[derive(Default)]
pub struct Stream {
    carry: Vec<u8>,
    carry_ts: u64,
    /// Bytes still to pass over: the rest of a message already counted.
    skip: u64,
}

/// A parser of one message at an offset: what it is (as far as known) and where it ends.
pub type Parse<T> = fn(&[u8], usize) -> (Result<T, Cut>, Result<usize, Cut>);

impl Stream {
    /// Feeds one buffer: `data`, the first bytes of `total` seen at `ts`. Calls `each` with
    /// every message that starts in it (or in the bytes carried from the last one) and the time
    /// its first byte was seen.
    pub fn feed<T>(
        &mut self,
        data: &[u8],
        total: u64,
        ts: u64,
        parse: Parse<T>,
        mut each: impl FnMut(T, u64),
    ) -> Result<(), Lost> {
        let total = total.max(data.len() as u64);
        let unseen = total - data.len() as u64;
        let mut data = data;
        if self.skip > 0 {
            if self.skip >= total {
                self.skip -= total;
                return Ok(());
            }
            let skip = std::mem::take(&mut self.skip) as usize;
            data = data.get(skip..).ok_or(Lost::Unseen)?;
        }
        let carried = std::mem::take(&mut self.carry);
        let joined;
        let buf: &[u8] = if carried.is_empty() {
            data
        } else {
            joined = [&carried[..], data].concat();
            &joined
        };
        let mut at = 0;
        while at < buf.len() {
            let message_ts = if at < carried.len() {
                self.carry_ts
            } else {
                ts
            };
            let (head, end) = parse(buf, at);
            match end {
                Ok(end) => {
                    each(head.map_err(|_| Lost::Invalid)?, message_ts);
                    at = end;
                }
                Err(Cut::Invalid) => return Err(Lost::Invalid),
                Err(Cut::Short(known)) => {
                    let rest = &buf[at..];
                    if unseen == 0 && rest.len() <= MAX_CARRY {
                        // The buffer is whole: the message goes on in the next one.
                        self.carry = rest.to_vec();
                        self.carry_ts = message_ts;
                        return Ok(());
                    }
                    let (Ok(head), Some(rest)) = (head, known) else {
                        return Err(if unseen == 0 {
                            Lost::TooLong
                        } else {
                            Lost::Unseen
                        });
                    };
                    if rest < unseen {
                        return Err(Lost::Unseen); // more messages after it, never captured
                    }
                    each(head, message_ts);
                    self.skip = rest - unseen;
                    return Ok(());
                }
            }
        }
        if unseen > 0 {
            return Err(Lost::Unseen);
        }
        Ok(())
    }
}
