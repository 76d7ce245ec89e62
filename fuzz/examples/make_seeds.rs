//! Writes the seed corpus, `seeds/<target>/<name>`, from the production encoders where there
//! are any (wire frames, OTLP messages, ring records), so the seeds are well-formed inputs of
//! today's formats. Run from `fuzz/` after a format changes, and commit what changed:
//!
//!     cargo run --example make_seeds
//!
//! (A plain build: no nightly, no sanitizer.) Each target's input layout is described at the
//! top of its file in `fuzz_targets/`.

use std::io::Write;
use std::path::PathBuf;

use apiary_fuzz::otlp::{KNOWN_PARENT_ID, KNOWN_TRACE_ID, TRACEPARENT};
use apiary_probes::abi::{encode_data_event, encode_exchange_event, Direction};
use apiary_wire::frame::{encode, JoinGrant, Message, Service};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;

fn main() {
    wire_frame();
    config_text();
    otlp_http();
    otlp_grpc();
    ring_record();
    http1();
    db_stream();
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create the seeds folder");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

/// `selector` then `body`.
fn with(selector: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend_from_slice(body);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

fn wire_frame() {
    let frames = [
        (
            "ping",
            Message::Request {
                service: Service::Ping,
                payload: b"hello".to_vec(),
            },
        ),
        (
            "append_entries",
            Message::Request {
                service: Service::RaftAppendEntries,
                payload: (0..=255).collect(),
            },
        ),
        (
            "response",
            Message::Response {
                payload: b"{\"ok\":true}".to_vec(),
            },
        ),
        (
            "refused",
            Message::Refused {
                reason: "not the leader: ask node-2".into(),
            },
        ),
        (
            "join_request",
            Message::JoinRequest {
                secret: vec![7; 32],
                node_name: "node-3".into(),
                csr_der: vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x01, 0x00],
            },
        ),
        (
            "join_granted",
            Message::JoinGranted(JoinGrant {
                node_id: 3,
                cert_der: vec![0x30; 40],
                ca_cert_der: vec![0x31; 40],
            }),
        ),
    ];
    for (name, message) in frames {
        let frame = encode(&message).expect("encodes");
        // The decoder takes the body: the frame without its 4-byte length.
        write("wire_frame", name, &frame[4..]);
    }
}

fn config_text() {
    let files: [(&str, &str); 5] = [
        (
            "file_init",
            "# Apiary node settings, written by `apiary init`.\n\
             name = \"node-1\"\ndata_dir = \"/var/lib/apiary\"\nlisten = \"0.0.0.0:7701\"\n\
             advertise = \"10.0.0.1:7701\"\napi = \"127.0.0.1:7700\"\n\n\
             [cluster.probe.http]\nenabled = true\n[cluster.probe.tls]\nenabled = false\n\
             [cluster.probe.tcp]\nenabled = true\n[cluster.probe.process]\nenabled = true\n\
             [cluster.destination.main]\nendpoint = \"http://collector:4317\"\nprotocol = \"grpc\"\n",
        ),
        (
            "file_every_kind",
            "name = \"from-file\"\nlisten = \"10.0.0.1:9000\"\nscopes = [\"netns:blue\", \"cgroup:/app\"]\n\
             metrics_interval = \"30s\"\nnice = 5\nno_probes = false\napi_names = [\"apiary.local\"]\n\
             api_max_connections = \"64\"\nexport_buffer_bytes = 1048576\nexport_buffer_full = \"block\"\n\
             export_file = \"telemetry.jsonl\"\notlp_grpc = \"off\"\notlp_http = \"127.0.0.1:4318\"\n\
             join = \"10.0.0.2:7701\"\njoin_token = \"apiary-join-abc\"\ntoken_file = \"token\"\n\
             [cluster.probe.http]\nsample_rate = 0.5\ncapture_bytes = 512\n\
             [cluster.probe.http.filters]\ninclude_ports = [80, 443]\nexclude_pids = [1]\n\
             [cluster.budget]\ncpu_percent_per_node = 2.5\n[cluster.budget.always_keep]\n\
             errors = true\nslower_than_ms = 500\n[cluster.privacy]\nkeep_query_params = [\"page\"]\n\
             [cluster.api]\npublic_read = true\n\
             [cluster.destination.main]\nendpoint = \"https://otlp.example:4318\"\n\
             protocol = \"http/protobuf\"\n",
        ),
        (
            // Refused today: a nested table is walked into dotted keys, and
            // `destination.main.headers.authorization` is no key.
            "file_headers",
            "[cluster.destination.main]\nendpoint = \"http://c:4318\"\n\
             headers = { authorization = \"Bearer x\" }\n",
        ),
        (
            "file_bad_value",
            "name = \"a\"\nlisten = \"nowhere\"\n[cluster.probe.http]\nsample_rate = 7\n",
        ),
        (
            "file_dotted_cluster",
            "[cluster]\n\"probe.http.sample_rate\" = 0.25\n\"destination.x.endpoint\" = \"http://c:4317\"\n",
        ),
    ];
    for (name, text) in files {
        write("config_text", name, &with(0, text.as_bytes()));
    }
    let sets: [(&str, &str); 3] = [
        (
            "set_many",
            "probe.http.sample_rate=0.2\nprobe.http.filters.include_ports=80,443\n\
             budget.always_keep.errors=true\nbudget.always_keep.slower_than_ms=250\n\
             destination.main.endpoint=http://collector:4317\ndestination.main.protocol=grpc\n\
             destination.main.headers={\"x-team\":\"obs\"}\nprivacy.keep_query_params=page,sort\n\
             api.public_read=true\nprobes.tcp.enabled=false",
        ),
        (
            "set_remove_destination",
            "destination.main.endpoint=http://collector:4318\ndestination.main=null",
        ),
        (
            "set_lists",
            "probe.process.filters.include_cgroups=[\"/a\",\"/b\"]\nprobe.tls.filters.exclude_pids=[1,2,3]\nprobe.http.capture_bytes=4095",
        ),
    ];
    for (name, text) in sets {
        write("config_text", name, &with(1, text.as_bytes()));
    }
}

/// An app's export request: a server span whose parent is the probe span the fuzz ingest
/// knows (re-parented), a server span with an unknown parent, and a client span.
fn traces() -> ExportTraceServiceRequest {
    let span = |id: u8, kind: SpanKind, parent: Vec<u8>| Span {
        trace_id: KNOWN_TRACE_ID.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: parent,
        kind: kind as i32,
        name: format!("GET /items/{id}"),
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000,
        attributes: vec![string("http.route", "/items/{id}")],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", "shop")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(3, SpanKind::Server, KNOWN_PARENT_ID.to_vec()),
                    span(4, SpanKind::Server, vec![2; 8]),
                    span(5, SpanKind::Client, vec![3; 8]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn metrics() -> ExportMetricsServiceRequest {
    let point = |value: f64| NumberDataPoint {
        attributes: vec![string("route", "/a")],
        time_unix_nano: 5,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "requests".into(),
                        unit: "1".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: vec![point(1.0), point(2.5)],
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "latency".into(),
                        unit: "s".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                count: 3,
                                sum: Some(0.3),
                                bucket_counts: vec![1, 2, 0],
                                explicit_bounds: vec![0.1, 1.0],
                                ..Default::default()
                            }],
                            aggregation_temporality: 1,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs() -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    LogRecord {
                        time_unix_nano: 9,
                        severity_number: 9,
                        severity_text: "INFO".into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("order placed".into())),
                        }),
                        attributes: vec![string("order", "42")],
                        trace_id: KNOWN_TRACE_ID.to_vec(),
                        span_id: vec![3; 8],
                        ..Default::default()
                    },
                    LogRecord::default(),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn otlp_http() {
    // Selector: signal (bits 0-1), content type (2-3: 0 protobuf, 1 JSON), encoding (4-5: 1
    // gzip), refuse (6), the harness gzips (7).
    let (traces, metrics, logs) = (traces(), metrics(), logs());
    let protobuf = [
        traces.encode_to_vec(),
        metrics.encode_to_vec(),
        logs.encode_to_vec(),
    ];
    let json = [
        serde_json::to_vec(&traces).expect("OTLP/JSON"),
        serde_json::to_vec(&metrics).expect("OTLP/JSON"),
        serde_json::to_vec(&logs).expect("OTLP/JSON"),
    ];
    for (signal, name) in ["traces", "metrics", "logs"].iter().enumerate() {
        let signal = signal as u8;
        write(
            "otlp_http",
            &format!("{name}_protobuf"),
            &with(signal, &protobuf[signal as usize]),
        );
        write(
            "otlp_http",
            &format!("{name}_json"),
            &with(signal | 0x04, &json[signal as usize]),
        );
    }
    write(
        "otlp_http",
        "traces_protobuf_gzip",
        &with(0x10, &gzip(&protobuf[0])),
    );
    write(
        "otlp_http",
        "traces_protobuf_harness_gzip",
        &with(0x90, &protobuf[0]),
    );
    write("otlp_http", "logs_json_harness_gzip", &with(0x96, &json[2]));
    write(
        "otlp_http",
        "traces_protobuf_refused",
        &with(0x40, &protobuf[0]),
    );
}

fn grpc_frame(compressed: bool, message: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn otlp_grpc() {
    // Selector: method (bits 0-1), grpc-encoding (2-3: 1 gzip), refuse (4), the harness frames
    // (5) and gzips (6), chunked (7); then the chunk size byte.
    let protobuf = [
        traces().encode_to_vec(),
        metrics().encode_to_vec(),
        logs().encode_to_vec(),
    ];
    for (method, name) in ["traces", "metrics", "logs"].iter().enumerate() {
        let framed = grpc_frame(false, &protobuf[method]);
        let mut seed = vec![method as u8, 0];
        seed.extend_from_slice(&framed);
        write("otlp_grpc", &format!("{name}_framed"), &seed);
        let mut seed = vec![0x20 | method as u8, 0];
        seed.extend_from_slice(&protobuf[method]);
        write("otlp_grpc", &format!("{name}_harness_framed"), &seed);
    }
    let mut seed = vec![0x04, 0];
    seed.extend_from_slice(&grpc_frame(true, &gzip(&protobuf[0])));
    write("otlp_grpc", "traces_gzip_framed", &seed);
    let mut seed = vec![0x64, 0];
    seed.extend_from_slice(&protobuf[0]);
    write("otlp_grpc", "traces_harness_gzip", &seed);
    let mut seed = vec![0xa6, 6];
    seed.extend_from_slice(&protobuf[2]);
    write("otlp_grpc", "logs_harness_gzip_chunked", &seed);
    let mut seed = vec![0x30, 0];
    seed.extend_from_slice(&protobuf[0]);
    write("otlp_grpc", "traces_refused", &seed);
}

/// Records one after another, each with its 2-byte little-endian length.
fn records(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(&(part.len() as u16).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A TCP state change or retransmit (`struct ap_tcp_event`, 136 bytes), at the offsets of
/// bpf/apiary.h as abi.rs's tests write them.
fn tcp_record(kind: u8, old_state: i32, new_state: i32) -> Vec<u8> {
    let mut tcp = vec![0u8; 136];
    tcp[0] = kind;
    tcp[1] = 2; // PROBE_TCP
    tcp[4..8].copy_from_slice(&9u32.to_le_bytes());
    tcp[32..36].copy_from_slice(b"srv\0");
    tcp[48..50].copy_from_slice(&10u16.to_le_bytes()); // AF_INET6
    tcp[50..52].copy_from_slice(&443u16.to_le_bytes());
    tcp[52..54].copy_from_slice(&50000u16.to_le_bytes());
    tcp[71] = 1; // ::1
    tcp[87] = 1;
    tcp[88..96].copy_from_slice(&0xdead_beefu64.to_le_bytes());
    tcp[96..100].copy_from_slice(&old_state.to_le_bytes());
    tcp[100..104].copy_from_slice(&new_state.to_le_bytes());
    tcp[104..112].copy_from_slice(&1000u64.to_le_bytes());
    tcp[112..120].copy_from_slice(&2000u64.to_le_bytes());
    tcp[128..132].copy_from_slice(&3u32.to_le_bytes());
    tcp
}

/// An exec or exit (`struct ap_proc_event`, 312 bytes) of pid 7.
fn proc_record(kind: u8, filename: &[u8]) -> Vec<u8> {
    let mut record = vec![0u8; 312];
    record[0] = kind;
    record[1] = 3; // PROBE_PROCESS
    record[4..8].copy_from_slice(&7u32.to_le_bytes());
    record[32..36].copy_from_slice(b"app\0");
    record[48..52].copy_from_slice(&1u32.to_le_bytes());
    record[52..56].copy_from_slice(&(-2i32).to_le_bytes());
    record[56..56 + filename.len()].copy_from_slice(filename);
    record
}

fn ring_record() {
    const EV_TCP_STATE: u8 = 2;
    const EV_TCP_RETRANSMIT: u8 = 3;
    const EV_EXEC: u8 = 4;
    const EV_EXIT: u8 = 5;
    let local = "127.0.0.1:8080".parse().expect("address");
    let remote = "127.0.0.2:40000".parse().expect("address");
    let request = format!(
        "GET /users/123/orders?page=2&token=x HTTP/1.1\r\nHost: shop\r\ntraceparent: {TRACEPARENT}\r\n\r\n"
    );
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let flow = Some((local, remote));
    write(
        "ring_record",
        "data_request_response",
        &records(&[
            encode_data_event(7, 3, 100, Direction::Ingress, flow, request.as_bytes()),
            encode_data_event(7, 3, 900, Direction::Egress, flow, response),
        ]),
    );
    write(
        "ring_record",
        "exchange",
        &records(&[encode_exchange_event(
            7,
            3,
            (100, 2_000_000),
            Direction::Ingress,
            flow,
            (request.as_bytes(), response),
            false,
        )]),
    );
    write(
        "ring_record",
        "exchange_sampled_out_error",
        &records(&[encode_exchange_event(
            7,
            4,
            (100, 200),
            Direction::Egress,
            None,
            (
                b"POST http://api.internal/v1/items HTTP/1.1\r\n\r\n",
                b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
            ),
            true,
        )]),
    );
    write(
        "ring_record",
        "process_lifetime",
        &records(&[
            proc_record(EV_EXEC, b"/usr/bin/shop\0"),
            encode_data_event(
                7,
                5,
                100,
                Direction::Egress,
                None,
                b"GET / HTTP/1.0\r\n\r\n",
            ),
            encode_data_event(
                7,
                5,
                300,
                Direction::Ingress,
                None,
                b"HTTP/1.0 404 Not Found\r\n",
            ),
            proc_record(EV_EXIT, b""),
        ]),
    );
    write(
        "ring_record",
        "tcp_close_and_retransmit",
        &records(&[
            tcp_record(EV_TCP_RETRANSMIT, 1, 1),
            tcp_record(EV_TCP_STATE, 5, 7),
            tcp_record(EV_TCP_STATE, 1, 4),
        ]),
    );
}

fn http1() {
    // Selector: 1 client side, 2 sampled out, 4 a keep rule may keep it, 8 the TLS probe.
    /// (name, selector, request, response).
    type Pair = (&'static str, u8, &'static [u8], Option<&'static [u8]>);
    let pairs: [Pair; 6] = [
        (
            "server_get",
            0,
            b"GET /users/123/orders/9f8e7d6c5b4a3f2e?x=1 HTTP/1.1\r\nHost: api\r\n\
              traceparent: 00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01\r\n\
              Accept: */*\r\n\r\n",
            Some(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello"),
        ),
        (
            "client_proxy_post",
            1 | 8,
            b"POST http://api.internal:8080/v1/items/550e8400-e29b-41d4-a716-446655440000 HTTP/1.1\r\nhost: api.internal\r\n\r\n{}",
            Some(b"HTTP/1.1 201 Created\r\n\r\n"),
        ),
        (
            "sampled_out_error",
            2 | 4,
            b"DELETE /items/42 HTTP/1.1\r\nHost: api\r\n\r\n",
            Some(b"HTTP/1.1 500 Internal Server Error\r\n\r\n"),
        ),
        (
            "sampled_out_dropped",
            2,
            b"PUT /a/b#frag HTTP/1.0\n\n",
            Some(b"HTTP/1.0 204 No Content\n"),
        ),
        (
            "cut_head",
            0,
            b"GET /search?q=a&page=2 HTTP/1.1\r\nHost: exam",
            None,
        ),
        (
            "response_only",
            0,
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: /\r\n\r\n",
            None,
        ),
    ];
    for (name, selector, request, response) in pairs {
        let mut seed = with(selector, request);
        if let Some(response) = response {
            seed.push(0);
            seed.extend_from_slice(response);
        }
        write("http1", name, &seed);
    }
}

/// Buffers of one connection as `db_stream` reads them: (flags, bytes); flags 1 = the requests'
/// side, 2 = more moved than captured, 4 = a new connection.
fn buffers(parts: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (flags, bytes) in parts {
        out.push(*flags);
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// A MySQL packet: 3-byte length, sequence number, payload.
fn mysql_packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    out.push(seq);
    out.extend_from_slice(payload);
    out
}

fn db_stream() {
    // Selector: bits 0-1 the protocol (0 redis, 1 postgres, 2 mysql, 3 http2), 4 the client's
    // side.
    let redis = buffers(&[
        (1, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
        (0, b"+OK\r\n$1\r\nv\r\n"),
        (1, b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n"),
        (0, b"-ERR value is not an integer or out of range\r\n"),
    ]);
    write("db_stream", "redis_pipeline", &with(0, &redis));

    let startup = b"\0\0\0\x17\0\x03\0\0user\0postgres\0\0";
    let ready = b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I";
    let query = b"Q\0\0\0\x26SELECT * FROM items WHERE id = 42\0";
    let result = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";
    let postgres = buffers(&[(1, startup), (0, ready), (1, query), (0, result)]);
    write("db_stream", "postgres_simple_query", &with(1, &postgres));

    // A MariaDB greeting (protocol 10, PROTOCOL_41 and SECURE_CONNECTION among the
    // capabilities), the client's handshake response, the OK, a query and its result set.
    let mut greeting = b"\x0a10.11.19-MariaDB\0\x05\0\0\0abcdefgh\0".to_vec();
    greeting.extend_from_slice(&0xf7feu16.to_le_bytes());
    greeting.extend_from_slice(b"\x08\x02\0");
    greeting.extend_from_slice(&0x81ffu16.to_le_bytes());
    greeting.extend_from_slice(&[0x15; 11]);
    greeting.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
    let mut handshake = (0x0200u32 | 0x8000 | 0x0008_0000).to_le_bytes().to_vec();
    handshake.extend_from_slice(&[0; 28]);
    handshake.extend_from_slice(b"root\0\0mysql_native_password\0");
    let ok = mysql_packet(2, b"\0\0\0\x02\0\0\0");
    let select = mysql_packet(0, b"\x03SELECT v FROM items WHERE id = 'a'");
    let mut column = b"\x03def\x01t\x05items\x05items\x01v\x01v\x0c".to_vec();
    column.extend_from_slice(b"\x21\0\xfc\xff\x03\0\xfc\x10\0\0\0\0");
    let result = [
        mysql_packet(1, b"\x01"),
        mysql_packet(2, &column),
        mysql_packet(3, b"\xfe\0\0\x02\0"),
        mysql_packet(4, b"\x01b"),
        mysql_packet(5, b"\xfe\0\0\x02\0"),
    ]
    .concat();
    let error = mysql_packet(1, b"\xff\x1e\x04#42S22Unknown column");
    let mysql = buffers(&[
        (0, &mysql_packet(0, &greeting)),
        (1, &mysql_packet(1, &handshake)),
        (0, &ok),
        (1, &select),
        (0, &result),
        (1, &mysql_packet(0, b"\x03SELECT nope FROM items")),
        (0, &error),
    ]);
    write("db_stream", "mysql_query_and_error", &with(2 | 4, &mysql));

    // HTTP/2: the preface, a GET / on stream 1 (static-table HPACK), a gRPC call on stream 3
    // (literal names, indexed into the dynamic table); nginx-like answers, the gRPC one with
    // its trailers, each frame header and payload in buffers of their own as writev sends them.
    let mut open = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    open.extend_from_slice(b"\0\0\x03\x01\x05\0\0\0\x01\x82\x84\x86");
    let grpc_block = b"\x83\x44\x0e/demo.Echo/Say\x40\x0ccontent-type\x10application/grpc";
    open.extend_from_slice(&[0, 0, grpc_block.len() as u8, 1, 4, 0, 0, 0, 3]);
    open.extend_from_slice(grpc_block);
    open.extend_from_slice(b"\0\0\x05\0\x01\0\0\0\x03\0\0\0\0\0");
    let trailers = b"\x40\x0bgrpc-status\x010";
    let http2 = buffers(&[
        (1, &open),
        (0, b"\0\0\x01\x01\x04\0\0\0\x01"),
        (0, b"\x88"),
        (0, b"\0\0\x02\0\x01\0\0\0\x01ok"),
        (0, b"\0\0\x01\x01\x04\0\0\0\x03\x88"),
        (0, &[&[0, 0, trailers.len() as u8, 1, 5, 0, 0, 0, 3][..], trailers].concat()),
    ]);
    write("db_stream", "http2_get_and_grpc", &with(3, &http2));
}
