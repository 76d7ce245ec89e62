//! Rust mirrors of `bpf/apiary.h`, and decoding of ring-buffer records.
//!
//! Map keys and values are `#[repr(C)]` copies of the C structs. Events are decoded field by field
//! from the record bytes with bounds checks, so a short or odd record is an error, never
//! undefined behaviour.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const PROBE_HTTP: u32 = 0;
pub const PROBE_TLS: u32 = 1;
pub const PROBE_TCP: u32 = 2;
pub const PROBE_PROCESS: u32 = 3;

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
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ScopeConfig {
    pub by_cgroup: u32,
    pub by_netns: u32,
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
unsafe impl aya::Pod for PidFilterKey {}
unsafe impl aya::Pod for PortFilterKey {}
unsafe impl aya::Pod for CgroupFilterKey {}

/// A sampling rate in [0, 1] as the kernel's threshold on `bpf_get_prandom_u32()`.
/// `flags` bit of a data event (apiary.h).
const DATA_SAMPLED_OUT: u32 = 1;
/// `flags` bit of an exchange event: the response part is there.
const EXCHANGE_RESPONSE: u32 = 2;

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

/// Bounds-checked little-endian reads from one record.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&self, at: usize, len: usize) -> Result<&'a [u8], DecodeError> {
        self.0
            .get(at..at + len)
            .ok_or(DecodeError::Short(self.0.len()))
    }
    fn u8(&self, at: usize) -> Result<u8, DecodeError> {
        Ok(self.bytes(at, 1)?[0])
    }
    fn u16(&self, at: usize) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.bytes(at, 2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&self, at: usize) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.bytes(at, 4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&self, at: usize) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.bytes(at, 8)?.try_into().unwrap_or_default(),
        ))
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

// Offsets in bpf/apiary.h (checked by `layout_matches_the_c_header`).
const HEADER_SIZE: usize = 48;
const FLOW_SIZE: usize = 40;
const DATA_PAYLOAD_AT: usize = HEADER_SIZE + FLOW_SIZE + 32;
const EXCHANGE_PAYLOAD_AT: usize = HEADER_SIZE + FLOW_SIZE + 48;
const BRIEF_CAPTURE: usize = 256;
const TCP_EVENT_SIZE: usize = HEADER_SIZE + FLOW_SIZE + 48;
const PROC_EVENT_SIZE: usize = HEADER_SIZE + 8 + 256;

fn header<'a>(r: &Reader<'a>) -> Result<Header<'a>, DecodeError> {
    Ok(Header {
        probe: r.u8(1)? as u32,
        pid: r.u32(4)?,
        tid: r.u32(8)?,
        netns: r.u32(12)?,
        ts_ns: r.u64(16)?,
        cgroup_id: r.u64(24)?,
        comm: r.cstr(32, 16)?,
    })
}

fn flow(r: &Reader, at: usize) -> Result<Option<Flow>, DecodeError> {
    let family = r.u16(at)?;
    let (local_port, remote_port) = (r.u16(at + 2)?, r.u16(at + 4)?);
    let addr = |offset: usize| -> Result<Option<IpAddr>, DecodeError> {
        let raw = r.bytes(at + offset, 16)?;
        Ok(match family {
            2 => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            10 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(raw);
                Some(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            _ => None,
        })
    };
    Ok(match (addr(8)?, addr(24)?) {
        (Some(local), Some(remote)) => Some(Flow {
            local: SocketAddr::new(local, local_port),
            remote: SocketAddr::new(remote, remote_port),
        }),
        _ => None,
    })
}

fn direction(raw: u32) -> Direction {
    if raw == 0 {
        Direction::Ingress
    } else {
        Direction::Egress
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
    let captured = data.len().min(MAX_CAPTURE as usize);
    let mut record = vec![0u8; DATA_PAYLOAD_AT + captured];
    record[0] = EV_DATA;
    record[4..8].copy_from_slice(&pid.to_le_bytes());
    record[8..12].copy_from_slice(&pid.to_le_bytes());
    record[16..24].copy_from_slice(&ts_ns.to_le_bytes());
    record[32..36].copy_from_slice(b"app\0");
    if let Some((local, remote)) = flow {
        record[48..50].copy_from_slice(&2u16.to_le_bytes());
        record[50..52].copy_from_slice(&local.port().to_le_bytes());
        record[52..54].copy_from_slice(&remote.port().to_le_bytes());
        record[56..60].copy_from_slice(&local.ip().octets());
        record[72..76].copy_from_slice(&remote.ip().octets());
    }
    record[88..96].copy_from_slice(&conn_id.to_le_bytes());
    record[96..104].copy_from_slice(&(data.len() as u64).to_le_bytes());
    let egress = u32::from(direction == Direction::Egress);
    record[104..108].copy_from_slice(&egress.to_le_bytes());
    record[108..112].copy_from_slice(&(captured as u32).to_le_bytes());
    record[112..116].copy_from_slice(&u32::MAX.to_le_bytes());
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
    let request = &request[..request.len().min(BRIEF_CAPTURE)];
    let response = &response[..response.len().min(BRIEF_CAPTURE)];
    let mut record = vec![0u8; EXCHANGE_PAYLOAD_AT + request.len() + response.len()];
    record[0] = EV_EXCHANGE;
    record[4..8].copy_from_slice(&pid.to_le_bytes());
    record[8..12].copy_from_slice(&pid.to_le_bytes());
    record[16..24].copy_from_slice(&ts_ns.to_le_bytes());
    record[32..36].copy_from_slice(b"app\0");
    if let Some((local, remote)) = flow {
        record[48..50].copy_from_slice(&2u16.to_le_bytes());
        record[50..52].copy_from_slice(&local.port().to_le_bytes());
        record[52..54].copy_from_slice(&remote.port().to_le_bytes());
        record[56..60].copy_from_slice(&local.ip().octets());
        record[72..76].copy_from_slice(&remote.ip().octets());
    }
    record[88..96].copy_from_slice(&conn_id.to_le_bytes());
    record[96..104].copy_from_slice(&request_ts_ns.to_le_bytes());
    record[104..112].copy_from_slice(&(request.len() as u64).to_le_bytes());
    record[112..120].copy_from_slice(&(response.len() as u64).to_le_bytes());
    let egress = u32::from(direction == Direction::Egress);
    record[120..124].copy_from_slice(&egress.to_le_bytes());
    record[124..128].copy_from_slice(&u32::MAX.to_le_bytes());
    let flags = EXCHANGE_RESPONSE | if sampled_out { DATA_SAMPLED_OUT } else { 0 };
    record[128..132].copy_from_slice(&flags.to_le_bytes());
    record[132..134].copy_from_slice(&(request.len() as u16).to_le_bytes());
    record[134..136].copy_from_slice(&(response.len() as u16).to_le_bytes());
    record[EXCHANGE_PAYLOAD_AT..][..request.len()].copy_from_slice(request);
    record[EXCHANGE_PAYLOAD_AT + request.len()..].copy_from_slice(response);
    record
}

pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    let r = Reader(record);
    let kind = r.u8(0)?;
    let header = header(&r)?;
    match kind {
        EV_DATA => {
            let at = HEADER_SIZE + FLOW_SIZE;
            let captured = (r.u32(at + 20)?.min(MAX_CAPTURE)) as usize;
            Ok(Event::Data {
                flow: flow(&r, HEADER_SIZE)?,
                conn_id: r.u64(at)?,
                total_len: r.u64(at + 8)? as i64,
                direction: direction(r.u32(at + 16)?),
                sample_threshold: r.u32(at + 24)?,
                sampled_out: r.u32(at + 28)? & DATA_SAMPLED_OUT != 0,
                data: r.bytes(DATA_PAYLOAD_AT, captured)?,
                header,
            })
        }
        EV_EXCHANGE => {
            let at = HEADER_SIZE + FLOW_SIZE;
            let flags = r.u32(at + 40)?;
            let request_len = usize::from(r.u16(at + 44)?).min(BRIEF_CAPTURE);
            let response_len = usize::from(r.u16(at + 46)?).min(BRIEF_CAPTURE);
            let request = r.bytes(EXCHANGE_PAYLOAD_AT, request_len)?;
            let response = r.bytes(EXCHANGE_PAYLOAD_AT + request_len, response_len)?;
            Ok(Event::Exchange {
                flow: flow(&r, HEADER_SIZE)?,
                conn_id: r.u64(at)?,
                request_ts_ns: r.u64(at + 8)?,
                direction: direction(r.u32(at + 32)?),
                sample_threshold: r.u32(at + 36)?,
                sampled_out: flags & DATA_SAMPLED_OUT != 0,
                request,
                response: (flags & EXCHANGE_RESPONSE != 0).then_some(response),
                header,
            })
        }
        EV_TCP_STATE | EV_TCP_RETRANSMIT => {
            if record.len() < TCP_EVENT_SIZE {
                return Err(DecodeError::Short(record.len()));
            }
            let at = HEADER_SIZE + FLOW_SIZE;
            let flow = flow(&r, HEADER_SIZE)?;
            let sock = r.u64(at)?;
            if kind == EV_TCP_RETRANSMIT {
                return Ok(Event::TcpRetransmit { header, flow, sock });
            }
            Ok(Event::TcpState {
                header,
                flow,
                sock,
                old_state: r.u32(at + 8)? as i32,
                new_state: r.u32(at + 12)? as i32,
                bytes_sent: r.u64(at + 16)?,
                bytes_received: r.u64(at + 24)?,
                retransmits: r.u32(at + 40)?,
            })
        }
        EV_EXEC | EV_EXIT => {
            if record.len() < PROC_EVENT_SIZE {
                return Err(DecodeError::Short(record.len()));
            }
            if kind == EV_EXIT {
                return Ok(Event::Exit {
                    exit_code: r.u32(HEADER_SIZE + 4)? as i32,
                    header,
                });
            }
            Ok(Event::Exec {
                ppid: r.u32(HEADER_SIZE)?,
                filename: r.cstr(HEADER_SIZE + 8, 256)?,
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
        // struct sizes from bpf/apiary.h, computed by hand and asserted here so that a change on
        // one side without the other fails a test.
        assert_eq!(std::mem::size_of::<ProbeConfig>(), 16);
        assert_eq!(std::mem::size_of::<ProbeStats>(), 40);
        assert_eq!(std::mem::size_of::<CgroupFilterKey>(), 16);
        assert_eq!(DATA_PAYLOAD_AT, 120);
        assert_eq!(EXCHANGE_PAYLOAD_AT, 136);
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
        record[120..125].copy_from_slice(b"GET /");
        let Event::Data {
            header,
            flow,
            direction,
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
