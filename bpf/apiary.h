/* The ABI between the eBPF programs and userspace: the constants, map keys and values, and ring
 * buffer records both sides use. Little-endian x86-64, natural alignment, no implicit padding.
 *
 * probes/src/abi.rs mirrors every struct here (#[repr(C)]) and every constant it uses, and both
 * sides are checked when they build: clang checks each struct against its AP_ABI_SIZE and
 * AP_ABI_OFFSET lines below, and probes/build.rs reads those lines and the integer #defines for
 * probes/src/abi.rs, whose mirrors must match them (size, field names in order, offsets). A
 * change on one side only fails the build. Changing a struct: change its AP_ABI_* lines, then
 * its mirror in abi.rs. Keep one AP_ABI_* per line; build.rs reads them as written. */
#ifndef APIARY_H
#define APIARY_H

#define AP_ABI_SIZE(type, size)                                                             \
	_Static_assert(sizeof(struct type) == (size),                                     \
		       "sizeof(struct " #type ") != " #size ": update its AP_ABI_SIZE line and probes/src/abi.rs")
#define AP_ABI_OFFSET(type, field, offset)                                                  \
	_Static_assert(__builtin_offsetof(struct type, field) == (offset),                \
		       "offsetof(struct " #type ", " #field ") != " #offset                 \
		       ": update its AP_ABI_OFFSET line and probes/src/abi.rs")

#define PROBE_HTTP 0
#define PROBE_TLS 1
#define PROBE_TCP 2
#define PROBE_PROCESS 3
/* Protocols found per connection on the http probe's socket tracepoints (bpf/db.h): each has
 * its own switch, sampling, capture size, filters and counters, but no programs of its own. */
#define PROBE_REDIS 4
#define PROBE_POSTGRES 5
#define PROBE_MYSQL 6
#define PROBE_HTTP2 7
#define NUM_PROBES 8

/* Largest payload prefix an event carries; the config's capture_bytes is clamped to it. */
#define MAX_CAPTURE 4095
#define CAPTURE_MASK 4095

/* probe_config.filter_flags: an include list exists, so anything not on it is dropped. */
#define HAS_PID_INCLUDE 1
#define HAS_PORT_INCLUDE 2
#define HAS_CGROUP_INCLUDE 4
/* ...and any rule of that kind exists (include or exclude): without one, its lookups are skipped,
 * so a probe with no filters pays for none. */
#define HAS_PID_RULES 8
#define HAS_PORT_RULES 16
#define HAS_CGROUP_RULES 32

/* Entries of the filter maps (maps.h), shared by the probes; the replicated config refuses more
 * (config/src/model.rs holds the same numbers, checked at build time in probes/src/abi.rs). */
#define PID_FILTER_ENTRIES 4096
#define PORT_FILTER_ENTRIES 4096
#define CGROUP_FILTER_ENTRIES 1024

#define FILTER_INCLUDE 1
#define FILTER_EXCLUDE 2

#define EV_DATA 1
#define EV_TCP_STATE 2
#define EV_TCP_RETRANSMIT 3
#define EV_EXEC 4
#define EV_EXIT 5
#define EV_EXCHANGE 6

/* ap_event_header.proto of EV_DATA and EV_EXCHANGE records: the protocol of the message
 * (bpf/protocol.h). HTTP/1 records carry 0; a protocol found per connection (bpf/db.h) its
 * own value, in records of its own probe (PROBE_REDIS, PROBE_POSTGRES, PROBE_MYSQL,
 * PROBE_HTTP2). */
#define PROTO_HTTP1 0
#define PROTO_REDIS 1
#define PROTO_POSTGRES 2
#define PROTO_MYSQL 3
#define PROTO_HTTP2 4

#define DIR_INGRESS 0 /* read/recv: bytes into the process */
#define DIR_EGRESS 1  /* write/send: bytes out of the process */

/* A request sampling dropped still sends its first bytes (method, path, status line) so that
 * request counts, errors and latency stay exact; only the span is not exported. */
#define DATA_SAMPLED_OUT 1
/* A buffer of a connection-detected protocol (bpf/db.h) going the way its requests go (read by
 * a server, written by a client); without it, the way its responses go. */
#define DATA_REQUEST_SIDE 4
/* The first buffer of a connection-detected protocol's connection (its entry in `conns` is new):
 * userspace starts its state afresh, since the key it follows a connection by may be an old
 * one's (OpenSSL reuses a freed SSL object's address for the next connection). */
#define DATA_STREAM_START 8
/* A record of the connection before this one was not sent (bpf/db.h: ring full, probe off):
 * the stream has a hole and userspace stops following it. */
#define DATA_STREAM_GAP 16
#define BRIEF_CAPTURE 256
/* ap_exchange_event.flags: the response part is there (without it, a request whose pairing was
 * given up, e.g. a pipelined one: userspace pairs it as a plain message). */
#define EXCHANGE_RESPONSE 2
/* What a sampled-out exchange keeps of its response: the status line. */
#define STATUS_CAPTURE 32

struct ap_probe_config {
	__u32 enabled;
	/* Keep an event when bpf_get_prandom_u32() < sample_threshold; 0xffffffff keeps all. */
	__u32 sample_threshold;
	__u32 capture_bytes;
	__u32 filter_flags;
};
AP_ABI_SIZE(ap_probe_config, 16);
AP_ABI_OFFSET(ap_probe_config, enabled, 0);
AP_ABI_OFFSET(ap_probe_config, sample_threshold, 4);
AP_ABI_OFFSET(ap_probe_config, capture_bytes, 8);
AP_ABI_OFFSET(ap_probe_config, filter_flags, 12);

struct ap_probe_stats {
	__u64 offered;     /* events that passed scope and filters, before sampling */
	__u64 emitted;     /* events written to the ring buffer */
	__u64 lost;        /* events the ring buffer had no room for */
	__u64 sampled_out; /* events dropped by sampling */
	__u64 filtered;    /* events dropped by the probe's pid/port/cgroup filters */
	__u64 counted;     /* sampled-out requests counted in the kernel (red_counts), no record */
};
AP_ABI_SIZE(ap_probe_stats, 48);
AP_ABI_OFFSET(ap_probe_stats, offered, 0);
AP_ABI_OFFSET(ap_probe_stats, emitted, 8);
AP_ABI_OFFSET(ap_probe_stats, lost, 16);
AP_ABI_OFFSET(ap_probe_stats, sampled_out, 24);
AP_ABI_OFFSET(ap_probe_stats, filtered, 32);
AP_ABI_OFFSET(ap_probe_stats, counted, 40);

struct ap_scope_config {
	__u32 by_cgroup;
	__u32 by_netns;
};
AP_ABI_SIZE(ap_scope_config, 8);
AP_ABI_OFFSET(ap_scope_config, by_cgroup, 0);
AP_ABI_OFFSET(ap_scope_config, by_netns, 4);

struct ap_pid_filter_key {
	__u32 probe;
	__u32 pid;
};
AP_ABI_SIZE(ap_pid_filter_key, 8);
AP_ABI_OFFSET(ap_pid_filter_key, probe, 0);
AP_ABI_OFFSET(ap_pid_filter_key, pid, 4);

struct ap_port_filter_key {
	__u32 probe;
	__u32 port;
};
AP_ABI_SIZE(ap_port_filter_key, 8);
AP_ABI_OFFSET(ap_port_filter_key, probe, 0);
AP_ABI_OFFSET(ap_port_filter_key, port, 4);

struct ap_cgroup_filter_key {
	__u32 probe;
	__u32 pad;
	__u64 cgroup_id;
};
AP_ABI_SIZE(ap_cgroup_filter_key, 16);
AP_ABI_OFFSET(ap_cgroup_filter_key, probe, 0);
AP_ABI_OFFSET(ap_cgroup_filter_key, pad, 4);
AP_ABI_OFFSET(ap_cgroup_filter_key, cgroup_id, 8);

struct ap_event_header {
	__u8 kind;
	__u8 probe;
	__u16 proto; /* EV_DATA, EV_EXCHANGE: PROTO_*; 0 in other records */
	__u32 pid; /* process (tgid) */
	__u32 tid;
	__u32 netns;
	__u64 ts_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u64 cgroup_id;
	char comm[16];
};
AP_ABI_SIZE(ap_event_header, 48);
AP_ABI_OFFSET(ap_event_header, kind, 0);
AP_ABI_OFFSET(ap_event_header, probe, 1);
AP_ABI_OFFSET(ap_event_header, proto, 2);
AP_ABI_OFFSET(ap_event_header, pid, 4);
AP_ABI_OFFSET(ap_event_header, tid, 8);
AP_ABI_OFFSET(ap_event_header, netns, 12);
AP_ABI_OFFSET(ap_event_header, ts_ns, 16);
AP_ABI_OFFSET(ap_event_header, cgroup_id, 24);
AP_ABI_OFFSET(ap_event_header, comm, 32);

struct ap_flow {
	__u16 family; /* AF_INET (2) or AF_INET6 (10) */
	__u16 local_port;
	__u16 remote_port;
	__u16 pad;
	__u8 local_addr[16];  /* IPv4 in the first 4 bytes */
	__u8 remote_addr[16];
};
AP_ABI_SIZE(ap_flow, 40);
AP_ABI_OFFSET(ap_flow, family, 0);
AP_ABI_OFFSET(ap_flow, local_port, 2);
AP_ABI_OFFSET(ap_flow, remote_port, 4);
AP_ABI_OFFSET(ap_flow, pad, 6);
AP_ABI_OFFSET(ap_flow, local_addr, 8);
AP_ABI_OFFSET(ap_flow, remote_addr, 24);

/* ap_trace_ctx.link: how the kernel placed a request in a trace (bpf/trace.h). */
#define LINK_NONE 0       /* no context: a response record, whose request carries it */
#define LINK_CONNECTION 1 /* server: the child of the client request sent on this connection */
#define LINK_THREAD 2     /* client: the child of the server request its thread is handling */
#define LINK_ROOT 3       /* no parent seen here: a new trace */
#define LINK_ROOT_ORDER 4 /* server: the connection's client is traced, not at this request */
#define LINK_ROOT_THREAD_BUSY 5 /* client: the thread handles several server requests at once */
#define LINK_ROOT_THREAD_STALE 6 /* client: the thread's server request is answered or gone */
#define LINK_ROOT_MULTIPLEXED 7 /* client: the thread once handled several requests at a time */
#define LINK_REMOTE 8 /* server: the child of the client request whose node sent its context
		       * in the request's first TCP segment (bpf/propagate.h) */
#define LINK_ROOT_REMOTE_ORDER 9 /* server: a context came on the flow, not for this request */

/* What the node's trace propagation does (bpf/propagate.h): `propagate` 1 when its sock_ops
 * program is attached and this node sends and reads trace context in TCP header options; the
 * offsets of struct tcp_sock's write_seq and copied_seq in the running kernel, which userspace
 * reads from the kernel's BTF (aya 0.14 fails the CO-RE relocation of these two fields that
 * libbpf resolves, and poisons the program). */
struct ap_trace_config {
	__u32 propagate;
	__u32 write_seq_offset;
	__u32 copied_seq_offset;
	__u32 pad;
};
AP_ABI_SIZE(ap_trace_config, 16);
AP_ABI_OFFSET(ap_trace_config, propagate, 0);
AP_ABI_OFFSET(ap_trace_config, write_seq_offset, 4);
AP_ABI_OFFSET(ap_trace_config, copied_seq_offset, 8);
AP_ABI_OFFSET(ap_trace_config, pad, 12);

/* The TCP header option that carries a request's trace context to the peer's node: an
 * experimental option (kind 253, RFC 6994) with this 16-bit experiment id, the trace id and
 * the client span's id, whose top bit is the trace's sampling decision. 28 bytes: what is left
 * of the 40 bytes of options next to timestamps. */
#define TRACE_OPTION_KIND 253
#define TRACE_OPTION_EXID_HI 0xa7
#define TRACE_OPTION_EXID_LO 0x1a
#define TRACE_OPTION_BYTES 28

/* The trace context of a request, decided when it starts: ids and the sampling decision are
 * the parent's when one was found (parent_span_id set), else new. */
struct ap_trace_ctx {
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_span_id[8]; /* zero for a root */
	__u32 link;             /* LINK_* */
	__u32 keep;             /* the trace's sampling decision (1 kept) */
};
AP_ABI_SIZE(ap_trace_ctx, 40);
AP_ABI_OFFSET(ap_trace_ctx, trace_id, 0);
AP_ABI_OFFSET(ap_trace_ctx, span_id, 16);
AP_ABI_OFFSET(ap_trace_ctx, parent_span_id, 24);
AP_ABI_OFFSET(ap_trace_ctx, link, 32);
AP_ABI_OFFSET(ap_trace_ctx, keep, 36);

struct ap_data_event {
	struct ap_event_header h;
	struct ap_flow flow;
	__u64 conn_id; /* fd for the http probe, the SSL pointer for the tls probe */
	__s64 total_len; /* bytes the syscall moved */
	__u32 direction;
	__u32 captured;  /* bytes of data[] that are valid */
	__u32 sample_threshold;
	__u32 flags;     /* DATA_SAMPLED_OUT: counted for RED metrics, not exported as a span */
	struct ap_trace_ctx trace; /* a request's; LINK_NONE in a response's */
	__u8 data[MAX_CAPTURE + 1];
};
AP_ABI_SIZE(ap_data_event, 4256);
AP_ABI_OFFSET(ap_data_event, h, 0);
AP_ABI_OFFSET(ap_data_event, flow, 48);
AP_ABI_OFFSET(ap_data_event, conn_id, 88);
AP_ABI_OFFSET(ap_data_event, total_len, 96);
AP_ABI_OFFSET(ap_data_event, direction, 104);
AP_ABI_OFFSET(ap_data_event, captured, 108);
AP_ABI_OFFSET(ap_data_event, sample_threshold, 112);
AP_ABI_OFFSET(ap_data_event, flags, 116);
AP_ABI_OFFSET(ap_data_event, trace, 120);
AP_ABI_OFFSET(ap_data_event, data, 160);

/* A request and the start of its response on one connection, paired in the kernel: one record
 * per exchange instead of one per message. The request waits in its connection's entry
 * (struct ap_conn in bpf/maps.h) until the response starts. */
struct ap_exchange_event {
	struct ap_event_header h; /* ts_ns: when the response started */
	struct ap_flow flow;
	__u64 conn_id;
	__u64 request_ts;
	__s64 request_len;
	__s64 response_len;
	__u32 direction;        /* the request's: DIR_INGRESS on a server, DIR_EGRESS on a client */
	__u32 sample_threshold; /* when the request was decided */
	__u32 flags;            /* DATA_SAMPLED_OUT, EXCHANGE_RESPONSE */
	__u16 request_captured; /* data[0..request_captured] */
	__u16 response_captured; /* then data[request_captured..][..response_captured] */
	struct ap_trace_ctx trace; /* the request's */
	/* A sampled-out request's route key (bpf/red.h: a hash of its method and path), 0 when
	 * the kernel could not tell it: userspace learns which route the key is, and writes it
	 * into red_routes so that the route's next sampled-out requests are counted in the kernel. */
	__u64 route;
	__u8 data[BRIEF_CAPTURE * 2];
};
AP_ABI_SIZE(ap_exchange_event, 696);
AP_ABI_OFFSET(ap_exchange_event, h, 0);
AP_ABI_OFFSET(ap_exchange_event, flow, 48);
AP_ABI_OFFSET(ap_exchange_event, conn_id, 88);
AP_ABI_OFFSET(ap_exchange_event, request_ts, 96);
AP_ABI_OFFSET(ap_exchange_event, request_len, 104);
AP_ABI_OFFSET(ap_exchange_event, response_len, 112);
AP_ABI_OFFSET(ap_exchange_event, direction, 120);
AP_ABI_OFFSET(ap_exchange_event, sample_threshold, 124);
AP_ABI_OFFSET(ap_exchange_event, flags, 128);
AP_ABI_OFFSET(ap_exchange_event, request_captured, 132);
AP_ABI_OFFSET(ap_exchange_event, response_captured, 134);
AP_ABI_OFFSET(ap_exchange_event, trace, 136);
AP_ABI_OFFSET(ap_exchange_event, route, 176);
AP_ABI_OFFSET(ap_exchange_event, data, 184);

struct ap_tcp_event {
	struct ap_event_header h;
	struct ap_flow flow;
	__u64 sock;
	__s32 old_state;
	__s32 new_state;
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 bytes_acked;
	__u32 retransmits;
	__u32 pad;
};
AP_ABI_SIZE(ap_tcp_event, 136);
AP_ABI_OFFSET(ap_tcp_event, h, 0);
AP_ABI_OFFSET(ap_tcp_event, flow, 48);
AP_ABI_OFFSET(ap_tcp_event, sock, 88);
AP_ABI_OFFSET(ap_tcp_event, old_state, 96);
AP_ABI_OFFSET(ap_tcp_event, new_state, 100);
AP_ABI_OFFSET(ap_tcp_event, bytes_sent, 104);
AP_ABI_OFFSET(ap_tcp_event, bytes_received, 112);
AP_ABI_OFFSET(ap_tcp_event, bytes_acked, 120);
AP_ABI_OFFSET(ap_tcp_event, retransmits, 128);
AP_ABI_OFFSET(ap_tcp_event, pad, 132);

struct ap_proc_event {
	struct ap_event_header h;
	__u32 ppid;
	__s32 exit_code;
	char filename[256];
};
AP_ABI_SIZE(ap_proc_event, 312);
AP_ABI_OFFSET(ap_proc_event, h, 0);
AP_ABI_OFFSET(ap_proc_event, ppid, 48);
AP_ABI_OFFSET(ap_proc_event, exit_code, 52);
AP_ABI_OFFSET(ap_proc_event, filename, 56);

/* --- RED in the kernel (bpf/red.h) ---------------------------------------------------------
 * A request sampling dropped whose route userspace knows (red_routes) and whose response no
 * keep rule may want is counted in red_counts, and sends no record. */
#define RED_BUCKETS 20
#define RED_ROUTE_ENTRIES 4096
#define RED_COUNT_ENTRIES 16384
/* The request-line bytes red.h scans for the method and path. */
#define RED_SCAN 192
/* sizeof(struct ap_conn) (maps.h, kernel-only): userspace empties the map of socket entries. */
#define CONN_ENTRY_BYTES 440
/* The histogram's upper bounds in ns (pipeline's DURATION_BOUNDS_SECONDS); the last bucket
 * is +Inf. */
#define RED_BOUND_0 100000
#define RED_BOUND_1 250000
#define RED_BOUND_2 500000
#define RED_BOUND_3 1000000
#define RED_BOUND_4 2500000
#define RED_BOUND_5 5000000
#define RED_BOUND_6 10000000
#define RED_BOUND_7 25000000
#define RED_BOUND_8 50000000
#define RED_BOUND_9 75000000
#define RED_BOUND_10 100000000
#define RED_BOUND_11 250000000
#define RED_BOUND_12 500000000
#define RED_BOUND_13 750000000
#define RED_BOUND_14 1000000000
#define RED_BOUND_15 2500000000
#define RED_BOUND_16 5000000000
#define RED_BOUND_17 7500000000
#define RED_BOUND_18 10000000000

struct ap_red_config {
	__u64 seed;           /* of the route hash, random per load */
	__u64 slower_than_ns; /* budget.always_keep.slower_than_ms (0: off): slower goes to userspace */
	__u32 keep_errors;    /* budget.always_keep.errors: a 5xx goes to userspace */
	__u32 enabled;        /* 0: every sampled-out request is sent as a record */
};
AP_ABI_SIZE(ap_red_config, 24);
AP_ABI_OFFSET(ap_red_config, seed, 0);
AP_ABI_OFFSET(ap_red_config, slower_than_ns, 8);
AP_ABI_OFFSET(ap_red_config, keep_errors, 16);
AP_ABI_OFFSET(ap_red_config, enabled, 20);

struct ap_red_key {
	__u64 route;  /* ap_exchange_event.route */
	__u32 pid;    /* the process that answered or got the response (service.name) */
	__u16 status;
	__u8 direction; /* the request's */
	__u8 link;      /* LINK_* */
};
AP_ABI_SIZE(ap_red_key, 16);
AP_ABI_OFFSET(ap_red_key, route, 0);
AP_ABI_OFFSET(ap_red_key, pid, 8);
AP_ABI_OFFSET(ap_red_key, status, 12);
AP_ABI_OFFSET(ap_red_key, direction, 14);
AP_ABI_OFFSET(ap_red_key, link, 15);

/* Per CPU, cumulative: userspace reads the deltas. */
struct ap_red_value {
	__u64 count;
	__u64 sum_ns;
	__u64 buckets[RED_BUCKETS];
	char comm[16]; /* set on the CPU that created the entry */
};
AP_ABI_SIZE(ap_red_value, 192);
AP_ABI_OFFSET(ap_red_value, count, 0);
AP_ABI_OFFSET(ap_red_value, sum_ns, 8);
AP_ABI_OFFSET(ap_red_value, buckets, 16);
AP_ABI_OFFSET(ap_red_value, comm, 176);

#endif
