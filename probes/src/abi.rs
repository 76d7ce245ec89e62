//! Rust mirrors of `bpf/apiary.h`, and decoding of ring-buffer records.
//!
//! Every struct of apiary.h has a `#[repr(C)]` mirror here: map keys and values are used as
//! they are, and records are decoded field by field at their mirror's offsets, each read with
//! the width of its mirror's field and bounds-checked, so a short or odd record is an error,
//! never undefined behaviour. No offset is counted by hand: the mirrors and the constants are
//! checked at compile time against apiary.h (`mirrors!` and `same_as_c!` below), whose own
//! `AP_ABI_*` lines clang checks against the C structs, so a layout changed on one side only
//! fails the build.

use std::borrow::Cow;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use apiary_span::{Link, TraceLink};

pub const PROBE_HTTP: u32 = 0;
pub const PROBE_TLS: u32 = 1;
pub const PROBE_TCP: u32 = 2;
pub const PROBE_PROCESS: u32 = 3;
pub const PROBE_REDIS: u32 = 4;
pub const PROBE_POSTGRES: u32 = 5;
pub const PROBE_MYSQL: u32 = 6;
pub const PROBE_HTTP2: u32 = 7;

pub const MAX_CAPTURE: u32 = 4095;

pub const HAS_PID_INCLUDE: u32 = 1;
pub const HAS_PORT_INCLUDE: u32 = 2;
pub const HAS_CGROUP_INCLUDE: u32 = 4;
pub const HAS_PID_RULES: u32 = 8;
pub const HAS_PORT_RULES: u32 = 16;
pub const HAS_CGROUP_RULES: u32 = 32;
pub const FILTER_INCLUDE: u8 = 1;
pub const FILTER_EXCLUDE: u8 = 2;

const EV_DATA: u8 = 1;
const EV_TCP_STATE: u8 = 2;
const EV_TCP_RETRANSMIT: u8 = 3;
const EV_EXEC: u8 = 4;
const EV_EXIT: u8 = 5;
const EV_EXCHANGE: u8 = 6;

const DIR_INGRESS: u32 = 0;
const DIR_EGRESS: u32 = 1;

/// `flags` bit of a data event (apiary.h).
const DATA_SAMPLED_OUT: u32 = 1;
/// `flags` bit of a data event of a connection-detected protocol: the requests' side.
const DATA_REQUEST_SIDE: u32 = 4;
/// `flags` bit of a data event: the first buffer of a connection-detected protocol's connection.
const DATA_STREAM_START: u32 = 8;
/// `flags` bit of a data event: a record of its connection before it was not sent.
const DATA_STREAM_GAP: u32 = 16;
/// `flags` bit of an exchange event: the response part is there.
const EXCHANGE_RESPONSE: u32 = 2;
/// What an exchange record keeps of its request, and of its response.
const BRIEF_CAPTURE: usize = 256;

/// `ap_trace_ctx.link` (apiary.h): how the kernel placed a request in a trace.
const LINK_NONE: u32 = 0;
const LINK_CONNECTION: u32 = 1;
const LINK_THREAD: u32 = 2;
const LINK_ROOT: u32 = 3;
const LINK_ROOT_ORDER: u32 = 4;
const LINK_ROOT_THREAD_BUSY: u32 = 5;
const LINK_ROOT_THREAD_STALE: u32 = 6;
const LINK_ROOT_MULTIPLEXED: u32 = 7;
const LINK_REMOTE: u32 = 8;
const LINK_ROOT_REMOTE_ORDER: u32 = 9;
/// The TCP header option of trace context across nodes (bpf/propagate.h), as `tcpdump` shows
/// it: checked here so that docs and the kernel agree.
pub const TRACE_OPTION_KIND: u32 = 253;
pub const TRACE_OPTION_BYTES: u32 = 28;

/// Address families of `ap_flow.family` (Linux's).
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// bpf/apiary.h as `build.rs` reads it: each integer `#define` as a `u64`, and per struct
/// (`STRUCTS`) its `SIZE`, its `FIELDS` in order and their `offset`s, from the header's
/// `AP_ABI_SIZE` / `AP_ABI_OFFSET` lines. Not every constant there is used in userspace.
#[allow(dead_code)]
mod c {
    include!(concat!(env!("OUT_DIR"), "/apiary_abi.rs"));
}

/// Fails the build unless each constant equals apiary.h's constant of the same name.
macro_rules! same_as_c {
    ($($name:ident),* $(,)?) => {
        const _: () = {
            $(assert!(
                $name as u64 == c::$name,
                concat!(stringify!($name), " differs from its #define in bpf/apiary.h")
            );)*
        };
    };
}

same_as_c!(
    PROBE_HTTP,
    PROBE_TLS,
    PROBE_TCP,
    PROBE_PROCESS,
    PROBE_REDIS,
    PROBE_POSTGRES,
    PROBE_MYSQL,
    PROBE_HTTP2,
    MAX_CAPTURE,
    HAS_PID_INCLUDE,
    HAS_PORT_INCLUDE,
    HAS_CGROUP_INCLUDE,
    HAS_PID_RULES,
    HAS_PORT_RULES,
    HAS_CGROUP_RULES,
    FILTER_INCLUDE,
    FILTER_EXCLUDE,
    EV_DATA,
    EV_TCP_STATE,
    EV_TCP_RETRANSMIT,
    EV_EXEC,
    EV_EXIT,
    EV_EXCHANGE,
    DIR_INGRESS,
    DIR_EGRESS,
    DATA_SAMPLED_OUT,
    DATA_REQUEST_SIDE,
    DATA_STREAM_START,
    DATA_STREAM_GAP,
    EXCHANGE_RESPONSE,
    BRIEF_CAPTURE,
    LINK_NONE,
    LINK_CONNECTION,
    LINK_THREAD,
    LINK_ROOT,
    LINK_ROOT_ORDER,
    LINK_ROOT_THREAD_BUSY,
    LINK_ROOT_THREAD_STALE,
    LINK_ROOT_MULTIPLEXED,
    LINK_REMOTE,
    LINK_ROOT_REMOTE_ORDER,
    TRACE_OPTION_KIND,
    TRACE_OPTION_BYTES,
    RED_BUCKETS,
    RED_ROUTE_ENTRIES,
    CONN_ENTRY_BYTES,
);

// The replicated config refuses filters the kernel's maps cannot hold: its limits are theirs.
const _: () = {
    assert!(
        apiary_config::MAX_PID_FILTERS as u64 == c::PID_FILTER_ENTRIES
            && apiary_config::MAX_PORT_FILTERS as u64 == c::PORT_FILTER_ENTRIES
            && apiary_config::MAX_CGROUP_FILTERS as u64 == c::CGROUP_FILTER_ENTRIES,
        "config/src/model.rs's filter limits differ from the filter maps' sizes in bpf/apiary.h"
    );
};

/// Fails the build unless every struct of bpf/apiary.h has a mirror here (in the header's
/// order), and each mirror has its C struct's size, fields (names, in order) and offsets.
macro_rules! mirrors {
    ($($rust:ty => $c:ident { $($field:ident),* $(,)? })*) => {
        const _: () = {
            assert!(
                same_names(&[$(stringify!($c)),*], c::STRUCTS),
                "the structs of bpf/apiary.h and their mirrors in probes/src/abi.rs differ"
            );
            $(
                assert!(
                    size_of::<$rust>() == c::$c::SIZE,
                    concat!("size of ", stringify!($rust), " differs from struct ", stringify!($c))
                );
                assert!(
                    same_names(&[$(stringify!($field)),*], c::$c::FIELDS),
                    concat!("fields of ", stringify!($rust), " differ from struct ", stringify!($c))
                );
                $(assert!(
                    offset_of!($rust, $field) == c::$c::offset::$field,
                    concat!(stringify!($rust), ".", stringify!($field), " is not where C has it")
                );)*
            )*
        };
    };
}

const fn same_names(a: &[&str], b: &[&str]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        let (x, y) = (a[i].as_bytes(), b[i].as_bytes());
        if x.len() != y.len() {
            return false;
        }
        let mut j = 0;
        while j < x.len() {
            if x[j] != y[j] {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    pub enabled: u32,
    pub sample_threshold: u32,
    pub capture_bytes: u32,
    pub filter_flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub offered: u64,
    pub emitted: u64,
    pub lost: u64,
    pub sampled_out: u64,
    pub filtered: u64,
    pub counted: u64,
}

/// `red_config` (bpf/red.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedConfig {
    pub seed: u64,
    pub slower_than_ns: u64,
    pub keep_errors: u32,
    pub enabled: u32,
}

/// A key of `red_counts`: sampled-out requests the kernel counted.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RedKey {
    pub route: u64,
    pub pid: u32,
    pub status: u16,
    pub direction: u8,
    pub link: u8,
}

/// A value of `red_counts` on one CPU (cumulative).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedValue {
    pub count: u64,
    pub sum_ns: u64,
    pub buckets: [u64; RED_BUCKETS],
    pub comm: [u8; 16],
}

pub const RED_BUCKETS: usize = 20;
pub const RED_ROUTE_ENTRIES: u32 = 4096;
pub const CONN_ENTRY_BYTES: usize = 440;
/// The upper bounds (ns) of the kernel's duration buckets; the last bucket is +Inf.
pub const RED_BOUNDS_NS: [u64; RED_BUCKETS - 1] = [
    c::RED_BOUND_0,
    c::RED_BOUND_1,
    c::RED_BOUND_2,
    c::RED_BOUND_3,
    c::RED_BOUND_4,
    c::RED_BOUND_5,
    c::RED_BOUND_6,
    c::RED_BOUND_7,
    c::RED_BOUND_8,
    c::RED_BOUND_9,
    c::RED_BOUND_10,
    c::RED_BOUND_11,
    c::RED_BOUND_12,
    c::RED_BOUND_13,
    c::RED_BOUND_14,
    c::RED_BOUND_15,
    c::RED_BOUND_16,
    c::RED_BOUND_17,
    c::RED_BOUND_18,
];
/// A `conns` entry (kernel-only layout, bpf/maps.h), as bytes: userspace only deletes them.
pub type ConnEntry = [u8; CONN_ENTRY_BYTES];

/// The direction of a `red_counts` key.
pub fn red_direction(raw: u8) -> Direction {
    direction(raw as u32)
}

/// The link of a `red_counts` key (None: one this decoder does not know).
pub fn red_link(raw: u8) -> Option<Link> {
    link_of(raw as u32)
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ScopeConfig {
    pub by_cgroup: u32,
    pub by_netns: u32,
}

/// Whether this node sends and reads trace context in TCP header options (bpf/propagate.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceConfig {
    pub propagate: u32,
    pub write_seq_offset: u32,
    pub copied_seq_offset: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PidFilterKey {
    pub probe: u32,
    pub pid: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortFilterKey {
    pub probe: u32,
    pub port: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupFilterKey {
    pub probe: u32,
    pub pad: u32,
    pub cgroup_id: u64,
}

// SAFETY: plain #[repr(C)] structs of integers with no padding, valid for any bit pattern.
unsafe impl aya::Pod for ProbeConfig {}
unsafe impl aya::Pod for ProbeStats {}
unsafe impl aya::Pod for ScopeConfig {}
unsafe impl aya::Pod for TraceConfig {}
unsafe impl aya::Pod for PidFilterKey {}
unsafe impl aya::Pod for PortFilterKey {}
unsafe impl aya::Pod for CgroupFilterKey {}
unsafe impl aya::Pod for RedConfig {}
unsafe impl aya::Pod for RedKey {}
unsafe impl aya::Pod for RedValue {}

// The records. These mirrors are never built: they give the decoder and the encoders each
// field's offset and width.

#[allow(dead_code)]
#[repr(C)]
struct ApEventHeader {
    kind: u8,
    probe: u8,
    proto: u16,
    pid: u32,
    tid: u32,
    netns: u32,
    ts_ns: u64,
    cgroup_id: u64,
    comm: [u8; 16],
}

#[allow(dead_code)]
#[repr(C)]
struct ApFlow {
    family: u16,
    local_port: u16,
    remote_port: u16,
    pad: u16,
    local_addr: [u8; 16],
    remote_addr: [u8; 16],
}

#[allow(dead_code)]
#[repr(C)]
struct ApTraceCtx {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: [u8; 8],
    link: u32,
    keep: u32,
}

#[allow(dead_code)]
#[repr(C)]
struct ApDataEvent {
    h: ApEventHeader,
    flow: ApFlow,
    conn_id: u64,
    total_len: i64,
    direction: u32,
    captured: u32,
    sample_threshold: u32,
    flags: u32,
    trace: ApTraceCtx,
    data: [u8; MAX_CAPTURE as usize + 1],
}

#[allow(dead_code)]
#[repr(C)]
struct ApExchangeEvent {
    h: ApEventHeader,
    flow: ApFlow,
    conn_id: u64,
    request_ts: u64,
    request_len: i64,
    response_len: i64,
    direction: u32,
    sample_threshold: u32,
    flags: u32,
    request_captured: u16,
    response_captured: u16,
    trace: ApTraceCtx,
    route: u64,
    data: [u8; BRIEF_CAPTURE * 2],
}

#[allow(dead_code)]
#[repr(C)]
struct ApTcpEvent {
    h: ApEventHeader,
    flow: ApFlow,
    sock: u64,
    old_state: i32,
    new_state: i32,
    bytes_sent: u64,
    bytes_received: u64,
    bytes_acked: u64,
    retransmits: u32,
    pad: u32,
}

#[allow(dead_code)]
#[repr(C)]
struct ApProcEvent {
    h: ApEventHeader,
    ppid: u32,
    exit_code: i32,
    filename: [u8; 256],
}

mirrors! {
    ProbeConfig => ap_probe_config { enabled, sample_threshold, capture_bytes, filter_flags }
    ProbeStats => ap_probe_stats { offered, emitted, lost, sampled_out, filtered, counted }
    ScopeConfig => ap_scope_config { by_cgroup, by_netns }
    PidFilterKey => ap_pid_filter_key { probe, pid }
    PortFilterKey => ap_port_filter_key { probe, port }
    CgroupFilterKey => ap_cgroup_filter_key { probe, pad, cgroup_id }
    ApEventHeader => ap_event_header { kind, probe, proto, pid, tid, netns, ts_ns, cgroup_id, comm }
    ApFlow => ap_flow { family, local_port, remote_port, pad, local_addr, remote_addr }
    TraceConfig => ap_trace_config { propagate, write_seq_offset, copied_seq_offset, pad }
    ApTraceCtx => ap_trace_ctx { trace_id, span_id, parent_span_id, link, keep }
    ApDataEvent => ap_data_event {
        h, flow, conn_id, total_len, direction, captured, sample_threshold, flags, trace, data
    }
    ApExchangeEvent => ap_exchange_event {
        h, flow, conn_id, request_ts, request_len, response_len, direction, sample_threshold,
        flags, request_captured, response_captured, trace, route, data
    }
    ApTcpEvent => ap_tcp_event {
        h, flow, sock, old_state, new_state, bytes_sent, bytes_received, bytes_acked,
        retransmits, pad
    }
    ApProcEvent => ap_proc_event { h, ppid, exit_code, filename }
    RedConfig => ap_red_config { seed, slower_than_ns, keep_errors, enabled }
    RedKey => ap_red_key { route, pid, status, direction, link }
    RedValue => ap_red_value { count, sum_ns, buckets, comm }
}

// Where the records' parts are (`layout_matches_the_c_header` pins the numbers).
const DATA_PAYLOAD_AT: usize = offset_of!(ApDataEvent, data);
const EXCHANGE_PAYLOAD_AT: usize = offset_of!(ApExchangeEvent, data);
const TCP_EVENT_SIZE: usize = size_of::<ApTcpEvent>();
const PROC_EVENT_SIZE: usize = size_of::<ApProcEvent>();

/// A sampling rate in [0, 1] as the kernel's threshold on `bpf_get_prandom_u32()`.
pub fn sample_threshold(rate: f64) -> u32 {
    if rate >= 1.0 {
        u32::MAX
    } else if rate <= 0.0 || rate.is_nan() {
        0
    } else {
        (rate * 4_294_967_296.0) as u32
    }
}

pub fn rate_of_threshold(threshold: u32) -> f64 {
    if threshold == u32::MAX {
        1.0
    } else {
        threshold as f64 / 4_294_967_296.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub probe: u32,
    pub pid: u32,
    pub tid: u32,
    pub netns: u32,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    /// Borrowed from the record unless it had to be repaired (invalid UTF-8).
    pub comm: Cow<'a, str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// One ring-buffer record, borrowing its bytes from the record: decoding copies nothing, so the
/// probe path pays for a copy only where a span keeps a value.
pub enum Event<'a> {
    Data {
        header: Header<'a>,
        flow: Option<Flow>,
        conn_id: u64,
        total_len: i64,
        direction: Direction,
        sample_threshold: u32,
        /// Sampling dropped the request: count it, do not export it.
        sampled_out: bool,
        /// A request's trace context (None in a response's record).
        trace: Option<TraceLink>,
        /// A connection-detected protocol's buffer (bpf/db.h) on its requests' side.
        request_side: bool,
        /// The first buffer of a connection-detected protocol's connection.
        stream_start: bool,
        /// A record of its connection before it was not sent (a hole in the stream).
        stream_gap: bool,
        data: &'a [u8],
    },
    /// A request and the start of its response, paired in the kernel (`response` None: a
    /// request whose pairing the kernel gave up, e.g. a pipelined one).
    Exchange {
        /// `ts_ns` is when the response started.
        header: Header<'a>,
        flow: Option<Flow>,
        conn_id: u64,
        request_ts_ns: u64,
        /// The request's direction: Ingress on a server, Egress on a client.
        direction: Direction,
        sample_threshold: u32,
        sampled_out: bool,
        trace: Option<TraceLink>,
        /// A sampled-out request's route key (bpf/red.h), 0 when the kernel took none.
        route: u64,
        request: &'a [u8],
        response: Option<&'a [u8]>,
    },
    TcpState {
        header: Header<'a>,
        flow: Option<Flow>,
        sock: u64,
        old_state: i32,
        new_state: i32,
        bytes_sent: u64,
        bytes_received: u64,
        retransmits: u32,
    },
    TcpRetransmit {
        header: Header<'a>,
        flow: Option<Flow>,
        sock: u64,
    },
    Exec {
        header: Header<'a>,
        ppid: u32,
        filename: Cow<'a, str>,
    },
    Exit {
        header: Header<'a>,
        exit_code: i32,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record of {0} bytes is shorter than its layout")]
    Short(usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
}

/// An integer field of a record, little-endian.
trait Scalar: Sized {
    fn from_le(raw: &[u8]) -> Self;
    fn write_le(self, out: &mut [u8]);
}

macro_rules! scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            fn from_le(raw: &[u8]) -> Self {
                <$t>::from_le_bytes(raw.try_into().unwrap_or_default())
            }
            fn write_le(self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}

scalar!(u8, u16, u32, u64, i32, i64);

/// Field `a.b…` of the mirror `S` in record `r`, where `S` starts at byte `base` (0 unless
/// given): `get!(r, S, a.b)`, `get!(r at base, S, a)`. The offset and the width are the
/// mirror's.
macro_rules! get {
    ($r:ident, $s:ty, $($field:ident).+) => {
        get!($r at 0, $s, $($field).+)
    };
    ($r:ident at $base:expr, $s:ty, $($field:ident).+) => {
        $r.scalar($base + offset_of!($s, $($field).+), |s: &$s| &s.$($field).+)
    };
}

/// A NUL-terminated text field (a `char[N]` of the mirror `S`) of record `r`.
macro_rules! text {
    ($r:ident, $s:ty, $($field:ident).+) => {
        $r.cstr(offset_of!($s, $($field).+), array_len(|s: &$s| &s.$($field).+))
    };
}

/// Writes field `a.b…` of the mirror `S` into a record being built: `put!(record, S, a.b = v)`.
macro_rules! put {
    ($record:expr, $s:ty, $($field:ident).+ = $value:expr) => {
        write_field(&mut $record[..], offset_of!($s, $($field).+), |s: &$s| &s.$($field).+, $value)
    };
}

fn array_len<S, const N: usize>(_field: fn(&S) -> &[u8; N]) -> usize {
    N
}

fn write_field<S, T: Scalar>(record: &mut [u8], at: usize, _field: fn(&S) -> &T, value: T) {
    value.write_le(&mut record[at..at + size_of::<T>()]);
}

/// Bounds-checked little-endian reads from one record.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&self, at: usize, len: usize) -> Result<&'a [u8], DecodeError> {
        self.0
            .get(at..at + len)
            .ok_or(DecodeError::Short(self.0.len()))
    }
    /// The field at `at` that `_field` picks out of a mirror (which gives its type).
    fn scalar<S, T: Scalar>(&self, at: usize, _field: fn(&S) -> &T) -> Result<T, DecodeError> {
        Ok(T::from_le(self.bytes(at, size_of::<T>())?))
    }
    fn cstr(&self, at: usize, len: usize) -> Result<Cow<'a, str>, DecodeError> {
        let raw = self.bytes(at, len)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        // from_utf8 first: from_utf8_lossy walks valid input more slowly, and this runs for
        // every event.
        Ok(match std::str::from_utf8(&raw[..end]) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(&raw[..end]),
        })
    }
}

fn header<'a>(r: &Reader<'a>) -> Result<Header<'a>, DecodeError> {
    type H = ApEventHeader;
    Ok(Header {
        probe: get!(r, H, probe)? as u32,
        pid: get!(r, H, pid)?,
        tid: get!(r, H, tid)?,
        netns: get!(r, H, netns)?,
        ts_ns: get!(r, H, ts_ns)?,
        cgroup_id: get!(r, H, cgroup_id)?,
        comm: text!(r, H, comm)?,
    })
}

/// The flow of a record whose `struct ap_flow` starts at byte `at`.
fn flow(r: &Reader, at: usize) -> Result<Option<Flow>, DecodeError> {
    type F = ApFlow;
    let family = get!(r at at, F, family)?;
    let (local_port, remote_port) = (
        get!(r at at, F, local_port)?,
        get!(r at at, F, remote_port)?,
    );
    let addr = |offset: usize| -> Result<Option<IpAddr>, DecodeError> {
        let raw = r.bytes(at + offset, 16)?;
        Ok(match family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            AF_INET6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(raw);
                Some(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            _ => None,
        })
    };
    Ok(
        match (
            addr(offset_of!(F, local_addr))?,
            addr(offset_of!(F, remote_addr))?,
        ) {
            (Some(local), Some(remote)) => Some(Flow {
                local: SocketAddr::new(local, local_port),
                remote: SocketAddr::new(remote, remote_port),
            }),
            _ => None,
        },
    )
}

/// The trace context of a record whose `struct ap_trace_ctx` starts at byte `at`; None for
/// LINK_NONE, and for a link this decoder does not know (a newer kernel side).
fn trace(r: &Reader, at: usize) -> Result<Option<TraceLink>, DecodeError> {
    type T = ApTraceCtx;
    let Some(link) = link_of(get!(r at at, T, link)?) else {
        return Ok(None);
    };
    let array = |offset: usize, out: &mut [u8]| -> Result<(), DecodeError> {
        out.copy_from_slice(r.bytes(at + offset, out.len())?);
        Ok(())
    };
    let (mut trace_id, mut span_id, mut parent) = ([0u8; 16], [0u8; 8], [0u8; 8]);
    array(offset_of!(T, trace_id), &mut trace_id)?;
    array(offset_of!(T, span_id), &mut span_id)?;
    array(offset_of!(T, parent_span_id), &mut parent)?;
    Ok(Some(TraceLink {
        trace_id,
        span_id,
        parent_span_id: link.is_joined().then_some(parent),
        link,
    }))
}

fn link_of(raw: u32) -> Option<Link> {
    Some(match raw {
        LINK_CONNECTION => Link::Connection,
        LINK_THREAD => Link::Thread,
        LINK_ROOT => Link::Root,
        LINK_ROOT_ORDER => Link::RootOutOfOrder,
        LINK_ROOT_THREAD_BUSY => Link::RootThreadBusy,
        LINK_ROOT_THREAD_STALE => Link::RootThreadStale,
        LINK_ROOT_MULTIPLEXED => Link::RootMultiplexed,
        LINK_REMOTE => Link::Remote,
        LINK_ROOT_REMOTE_ORDER => Link::RootRemoteOutOfOrder,
        _ => return None,
    })
}

fn direction(raw: u32) -> Direction {
    if raw == DIR_INGRESS {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

fn direction_raw(direction: Direction) -> u32 {
    match direction {
        Direction::Ingress => DIR_INGRESS,
        Direction::Egress => DIR_EGRESS,
    }
}

/// The header and flow of a test or benchmark record whose `struct ap_flow` starts at `flow_at`
/// (its header at 0), as the kernel writes them.
fn encode_header_and_flow(
    record: &mut [u8],
    kind: u8,
    pid: u32,
    ts_ns: u64,
    flow_at: usize,
    flow: Option<(std::net::SocketAddrV4, std::net::SocketAddrV4)>,
) {
    type H = ApEventHeader;
    type F = ApFlow;
    put!(record, H, kind = kind);
    put!(record, H, pid = pid);
    put!(record, H, tid = pid);
    put!(record, H, ts_ns = ts_ns);
    let comm = offset_of!(H, comm);
    record[comm..comm + 4].copy_from_slice(b"app\0");
    if let Some((local, remote)) = flow {
        let flow = &mut record[flow_at..];
        put!(flow, F, family = AF_INET);
        put!(flow, F, local_port = local.port());
        put!(flow, F, remote_port = remote.port());
        let (local_at, remote_at) = (offset_of!(F, local_addr), offset_of!(F, remote_addr));
        flow[local_at..local_at + 4].copy_from_slice(&local.ip().octets());
        flow[remote_at..remote_at + 4].copy_from_slice(&remote.ip().octets());
    }
}

/// A data event's bytes exactly as the kernel writes them (apiary.h), for benchmarks and for
/// testing the decoder without a kernel.
pub fn encode_data_event(
    pid: u32,
    conn_id: u64,
    ts_ns: u64,
    direction: Direction,
    flow: Option<(std::net::SocketAddrV4, std::net::SocketAddrV4)>,
    data: &[u8],
) -> Vec<u8> {
    type D = ApDataEvent;
    let captured = data.len().min(MAX_CAPTURE as usize);
    let mut record = vec![0u8; DATA_PAYLOAD_AT + captured];
    encode_header_and_flow(&mut record, EV_DATA, pid, ts_ns, offset_of!(D, flow), flow);
    put!(record, D, conn_id = conn_id);
    put!(record, D, total_len = data.len() as i64);
    put!(record, D, direction = direction_raw(direction));
    put!(record, D, captured = captured as u32);
    put!(record, D, sample_threshold = u32::MAX);
    record[DATA_PAYLOAD_AT..].copy_from_slice(&data[..captured]);
    record
}

/// An exchange event's bytes exactly as the kernel writes them (apiary.h): a request seen at
/// `request_ts_ns` and the start of its response at `ts_ns`, each cut to the kernel's 256 bytes.
pub fn encode_exchange_event(
    pid: u32,
    conn_id: u64,
    (request_ts_ns, ts_ns): (u64, u64),
    direction: Direction,
    flow: Option<(std::net::SocketAddrV4, std::net::SocketAddrV4)>,
    (request, response): (&[u8], &[u8]),
    sampled_out: bool,
) -> Vec<u8> {
    type X = ApExchangeEvent;
    let request = &request[..request.len().min(BRIEF_CAPTURE)];
    let response = &response[..response.len().min(BRIEF_CAPTURE)];
    let mut record = vec![0u8; EXCHANGE_PAYLOAD_AT + request.len() + response.len()];
    encode_header_and_flow(
        &mut record,
        EV_EXCHANGE,
        pid,
        ts_ns,
        offset_of!(X, flow),
        flow,
    );
    put!(record, X, conn_id = conn_id);
    put!(record, X, request_ts = request_ts_ns);
    put!(record, X, request_len = request.len() as i64);
    put!(record, X, response_len = response.len() as i64);
    put!(record, X, direction = direction_raw(direction));
    put!(record, X, sample_threshold = u32::MAX);
    let flags = EXCHANGE_RESPONSE | if sampled_out { DATA_SAMPLED_OUT } else { 0 };
    put!(record, X, flags = flags);
    put!(record, X, request_captured = request.len() as u16);
    put!(record, X, response_captured = response.len() as u16);
    record[EXCHANGE_PAYLOAD_AT..][..request.len()].copy_from_slice(request);
    record[EXCHANGE_PAYLOAD_AT + request.len()..].copy_from_slice(response);
    record
}

pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    let r = Reader(record);
    let kind = get!(r, ApEventHeader, kind)?;
    let header = header(&r)?;
    match kind {
        EV_DATA => {
            type D = ApDataEvent;
            let captured = (get!(r, D, captured)?.min(MAX_CAPTURE)) as usize;
            Ok(Event::Data {
                flow: flow(&r, offset_of!(D, flow))?,
                conn_id: get!(r, D, conn_id)?,
                total_len: get!(r, D, total_len)?,
                direction: direction(get!(r, D, direction)?),
                sample_threshold: get!(r, D, sample_threshold)?,
                sampled_out: get!(r, D, flags)? & DATA_SAMPLED_OUT != 0,
                trace: trace(&r, offset_of!(D, trace))?,
                request_side: get!(r, D, flags)? & DATA_REQUEST_SIDE != 0,
                stream_start: get!(r, D, flags)? & DATA_STREAM_START != 0,
                stream_gap: get!(r, D, flags)? & DATA_STREAM_GAP != 0,
                data: r.bytes(DATA_PAYLOAD_AT, captured)?,
                header,
            })
        }
        EV_EXCHANGE => {
            type X = ApExchangeEvent;
            let flags = get!(r, X, flags)?;
            let request_len = usize::from(get!(r, X, request_captured)?).min(BRIEF_CAPTURE);
            let response_len = usize::from(get!(r, X, response_captured)?).min(BRIEF_CAPTURE);
            let request = r.bytes(EXCHANGE_PAYLOAD_AT, request_len)?;
            let response = r.bytes(EXCHANGE_PAYLOAD_AT + request_len, response_len)?;
            Ok(Event::Exchange {
                flow: flow(&r, offset_of!(X, flow))?,
                conn_id: get!(r, X, conn_id)?,
                request_ts_ns: get!(r, X, request_ts)?,
                direction: direction(get!(r, X, direction)?),
                sample_threshold: get!(r, X, sample_threshold)?,
                sampled_out: flags & DATA_SAMPLED_OUT != 0,
                trace: trace(&r, offset_of!(X, trace))?,
                route: get!(r, X, route)?,
                request,
                response: (flags & EXCHANGE_RESPONSE != 0).then_some(response),
                header,
            })
        }
        EV_TCP_STATE | EV_TCP_RETRANSMIT => {
            type T = ApTcpEvent;
            if record.len() < TCP_EVENT_SIZE {
                return Err(DecodeError::Short(record.len()));
            }
            let flow = flow(&r, offset_of!(T, flow))?;
            let sock = get!(r, T, sock)?;
            if kind == EV_TCP_RETRANSMIT {
                return Ok(Event::TcpRetransmit { header, flow, sock });
            }
            Ok(Event::TcpState {
                header,
                flow,
                sock,
                old_state: get!(r, T, old_state)?,
                new_state: get!(r, T, new_state)?,
                bytes_sent: get!(r, T, bytes_sent)?,
                bytes_received: get!(r, T, bytes_received)?,
                retransmits: get!(r, T, retransmits)?,
            })
        }
        EV_EXEC | EV_EXIT => {
            type P = ApProcEvent;
            if record.len() < PROC_EVENT_SIZE {
                return Err(DecodeError::Short(record.len()));
            }
            if kind == EV_EXIT {
                return Ok(Event::Exit {
                    exit_code: get!(r, P, exit_code)?,
                    header,
                });
            }
            Ok(Event::Exec {
                ppid: get!(r, P, ppid)?,
                filename: text!(r, P, filename)?,
                header,
            })
        }
        other => Err(DecodeError::Kind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_c_header() {
        // The numbers of bpf/apiary.h, written out: the build already fails when a mirror and
        // its C struct differ (`mirrors!`); this pins the record format itself.
        assert_eq!(std::mem::size_of::<ProbeConfig>(), 16);
        assert_eq!(std::mem::size_of::<ProbeStats>(), 48);
        assert_eq!(std::mem::size_of::<CgroupFilterKey>(), 16);
        assert_eq!(DATA_PAYLOAD_AT, 160);
        assert_eq!(EXCHANGE_PAYLOAD_AT, 184);
        assert_eq!(TCP_EVENT_SIZE, 136);
        assert_eq!(PROC_EVENT_SIZE, 312);
    }

    #[test]
    fn thresholds() {
        assert_eq!(sample_threshold(1.0), u32::MAX);
        assert_eq!(sample_threshold(0.0), 0);
        assert!((rate_of_threshold(sample_threshold(0.1)) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::Short(0)));
        assert_eq!(decode(&[1; 60]), Err(DecodeError::Short(60)));
        let mut odd = vec![0u8; 400];
        odd[0] = 99;
        assert_eq!(decode(&odd), Err(DecodeError::Kind(99)));
    }

    #[test]
    fn encoded_data_event_round_trips() {
        let local = "127.0.0.1:8080".parse().unwrap();
        let remote = "127.0.0.2:40000".parse().unwrap();
        let record = encode_data_event(
            7,
            3,
            99,
            Direction::Ingress,
            Some((local, remote)),
            b"GET / HTTP/1.1",
        );
        let Event::Data {
            header,
            flow,
            conn_id,
            direction,
            sample_threshold,
            sampled_out,
            data,
            ..
        } = decode(&record).unwrap()
        else {
            panic!("not a data event");
        };
        assert_eq!((header.pid, header.ts_ns, conn_id), (7, 99, 3));
        assert_eq!(flow.unwrap().remote.to_string(), "127.0.0.2:40000");
        assert_eq!(direction, Direction::Ingress);
        assert_eq!(sample_threshold, u32::MAX);
        assert!(!sampled_out);
        assert_eq!(data, b"GET / HTTP/1.1");
    }

    #[test]
    fn data_record_decodes() {
        let mut record = vec![0u8; DATA_PAYLOAD_AT + 5];
        record[0] = EV_DATA;
        record[4..8].copy_from_slice(&42u32.to_le_bytes());
        record[32..37].copy_from_slice(b"curl\0");
        record[48..50].copy_from_slice(&2u16.to_le_bytes());
        record[50..52].copy_from_slice(&40000u16.to_le_bytes());
        record[52..54].copy_from_slice(&8080u16.to_le_bytes());
        record[56..60].copy_from_slice(&[127, 0, 0, 1]);
        record[72..76].copy_from_slice(&[127, 0, 0, 2]);
        record[104..108].copy_from_slice(&1u32.to_le_bytes()); // direction: egress
        record[108..112].copy_from_slice(&5u32.to_le_bytes()); // captured
        record[120..136].copy_from_slice(&[0xaa; 16]); // trace id
        record[136..144].copy_from_slice(&[0xbb; 8]); // span id
        record[144..152].copy_from_slice(&[0xcc; 8]); // parent span id
        record[152..156].copy_from_slice(&2u32.to_le_bytes()); // link: thread
        record[160..165].copy_from_slice(b"GET /");
        let Event::Data {
            header,
            flow,
            direction,
            trace,
            data,
            ..
        } = decode(&record).unwrap()
        else {
            panic!("not a data event");
        };
        assert_eq!(header.pid, 42);
        assert_eq!(header.comm, "curl");
        let flow = flow.unwrap();
        assert_eq!(flow.local.to_string(), "127.0.0.1:40000");
        assert_eq!(flow.remote.to_string(), "127.0.0.2:8080");
        assert_eq!(direction, Direction::Egress);
        assert_eq!(data, b"GET /");
        assert_eq!(
            trace,
            Some(TraceLink {
                trace_id: [0xaa; 16],
                span_id: [0xbb; 8],
                parent_span_id: Some([0xcc; 8]),
                link: Link::Thread,
            })
        );
        // A root's parent field is not read; an unknown link is no context at all.
        record[152..156].copy_from_slice(&3u32.to_le_bytes());
        let Event::Data { trace, .. } = decode(&record).unwrap() else {
            panic!("not a data event");
        };
        assert_eq!(
            trace.map(|t| (t.link, t.parent_span_id)),
            Some((Link::Root, None))
        );
        record[152..156].copy_from_slice(&99u32.to_le_bytes());
        let Event::Data { trace, .. } = decode(&record).unwrap() else {
            panic!("not a data event");
        };
        assert_eq!(trace, None);
    }

    #[test]
    fn exchange_record_round_trips() {
        let local = "127.0.0.1:8080".parse().unwrap();
        let remote = "127.0.0.2:40000".parse().unwrap();
        let record = encode_exchange_event(
            7,
            3,
            (90, 99),
            Direction::Ingress,
            Some((local, remote)),
            (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 204 No Content\r\n"),
            false,
        );
        let Event::Exchange {
            header,
            flow,
            conn_id,
            request_ts_ns,
            direction,
            sampled_out,
            request,
            response,
            ..
        } = decode(&record).unwrap()
        else {
            panic!("not an exchange event");
        };
        assert_eq!(
            (header.pid, header.ts_ns, conn_id, request_ts_ns),
            (7, 99, 3, 90)
        );
        assert_eq!(flow.unwrap().remote.to_string(), "127.0.0.2:40000");
        assert_eq!(direction, Direction::Ingress);
        assert!(!sampled_out);
        assert_eq!(request, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(response, Some(&b"HTTP/1.1 204 No Content\r\n"[..]));
    }

    #[test]
    fn tcp_and_process_records_decode() {
        // Built at the byte offsets of bpf/apiary.h, written out here on purpose: the kernel's
        // format, independent of the mirrors the decoder reads it with.
        let mut tcp = vec![0u8; 136];
        tcp[0] = EV_TCP_STATE;
        tcp[1] = PROBE_TCP as u8;
        tcp[4..8].copy_from_slice(&9u32.to_le_bytes());
        tcp[32..36].copy_from_slice(b"srv\0");
        tcp[48..50].copy_from_slice(&10u16.to_le_bytes());
        tcp[50..52].copy_from_slice(&443u16.to_le_bytes());
        tcp[52..54].copy_from_slice(&50000u16.to_le_bytes());
        tcp[71] = 1; // ::1
        tcp[87] = 1;
        tcp[88..96].copy_from_slice(&0xdead_beefu64.to_le_bytes());
        tcp[96..100].copy_from_slice(&1i32.to_le_bytes());
        tcp[100..104].copy_from_slice(&7i32.to_le_bytes());
        tcp[104..112].copy_from_slice(&1000u64.to_le_bytes());
        tcp[112..120].copy_from_slice(&2000u64.to_le_bytes());
        tcp[128..132].copy_from_slice(&3u32.to_le_bytes());
        let Event::TcpState {
            header,
            flow,
            sock,
            old_state,
            new_state,
            bytes_sent,
            bytes_received,
            retransmits,
        } = decode(&tcp).unwrap()
        else {
            panic!("not a tcp state event");
        };
        assert_eq!(
            (header.probe, header.pid, &*header.comm),
            (PROBE_TCP, 9, "srv")
        );
        let flow = flow.unwrap();
        assert_eq!(flow.local.to_string(), "[::1]:443");
        assert_eq!(flow.remote.to_string(), "[::1]:50000");
        assert_eq!((sock, old_state, new_state), (0xdead_beef, 1, 7));
        assert_eq!((bytes_sent, bytes_received, retransmits), (1000, 2000, 3));
        tcp[0] = EV_TCP_RETRANSMIT;
        assert!(matches!(
            decode(&tcp),
            Ok(Event::TcpRetransmit {
                sock: 0xdead_beef,
                ..
            })
        ));
        assert_eq!(decode(&tcp[..135]), Err(DecodeError::Short(135)));

        let mut exec = vec![0u8; 312];
        exec[0] = EV_EXEC;
        exec[48..52].copy_from_slice(&1u32.to_le_bytes());
        exec[56..66].copy_from_slice(b"/bin/true\0");
        let Event::Exec { ppid, filename, .. } = decode(&exec).unwrap() else {
            panic!("not an exec event");
        };
        assert_eq!((ppid, &*filename), (1, "/bin/true"));
        exec[0] = EV_EXIT;
        exec[52..56].copy_from_slice(&(-2i32).to_le_bytes());
        assert!(matches!(
            decode(&exec),
            Ok(Event::Exit { exit_code: -2, .. })
        ));
        assert_eq!(decode(&exec[..311]), Err(DecodeError::Short(311)));
    }

    #[test]
    fn an_exchange_record_cut_short_is_an_error() {
        let record = encode_exchange_event(
            7,
            3,
            (90, 99),
            Direction::Egress,
            None,
            (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n"),
            true,
        );
        let cut = &record[..record.len() - 4];
        assert_eq!(decode(cut), Err(DecodeError::Short(cut.len())));
    }
}
