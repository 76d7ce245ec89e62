//! The per-connection state of the protocols followed as byte streams (bpf/db.h), kept in one
//! bounded table each.

use std::collections::HashMap;

use super::Message;

/// A connection: the process, its fd, and the ports, so that a reused fd on a new connection
/// starts afresh (a stream given up stays given up until its connection ends).
pub type Key = (u32, u64, u16, u16);

/// Connections followed per protocol; past it the one seen least recently is forgotten.
const MAX_CONNECTIONS: usize = 65_536;

struct Entry<C> {
    state: C,
    last_ts_ns: u64,
}

/// A connection's state, which stops being followed when its stream cannot be trusted.
pub trait Followed {
    /// Stops following the connection; returns how many requests this leaves unparsed (its
    /// waiting ones and the buffer at hand).
    fn give_up(&mut self) -> u64;
    fn lost(&self) -> bool;
}

/// Each connection's state `C`, created on its first buffer.
pub struct Table<C> {
    entries: HashMap<Key, Entry<C>>,
}

impl<C> Default for Table<C> {
    fn default() -> Self {
        Table {
            entries: HashMap::new(),
        }
    }
}

fn key_of(message: &Message) -> Key {
    let ports = message
        .flow
        .map_or((0, 0), |f| (f.local.port(), f.remote.port()));
    (message.pid, message.conn_id, ports.0, ports.1)
}

impl<C: Default> Table<C> {
    /// The state of the connection `message` came on.
    pub fn of(&mut self, message: &Message) -> &mut C {
        let key = key_of(message);
        if self.entries.len() >= MAX_CONNECTIONS && !self.entries.contains_key(&key) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_ts_ns)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            state: C::default(),
            last_ts_ns: 0,
        });
        entry.last_ts_ns = message.ts_ns;
        &mut entry.state
    }

    /// Forgets what was followed under the key of `message`'s connection: an earlier
    /// connection's (a new one starts with `message`).
    pub fn forget(&mut self, message: &Message) {
        self.entries.remove(&key_of(message));
    }

    /// The kernel did not send a buffer of `message`'s connection (bpf/db.h DATA_STREAM_GAP):
    /// it is given up; returns the requests left unparsed.
    pub fn lose(&mut self, message: &Message) -> u64
    where
        C: Followed,
    {
        self.of(message).give_up()
    }

    /// Gives every connection up (the probe was switched off: each has a hole); returns the
    /// requests left unparsed.
    pub fn lose_all(&mut self) -> u64
    where
        C: Followed,
    {
        self.entries
            .values_mut()
            .filter(|entry| !entry.state.lost())
            .map(|entry| entry.state.give_up())
            .sum()
    }

    /// Forgets the connections of a process that exited.
    pub fn forget_process(&mut self, pid: u32) {
        self.entries.retain(|(p, ..), _| *p != pid);
    }

    pub fn states(&self) -> impl Iterator<Item = &C> {
        self.entries.values().map(|e| &e.state)
    }
}
