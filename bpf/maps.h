/* Every map of the programs, in one place (probes/src/loader.rs opens the ones userspace
 * drives by name: probe_config, probe_stats, pid_filter, port_filter, cgroup_filter,
 * scope_config, scope_cgroups, scope_netns, events), with the kernel-only types of their values.
 * The layouts userspace reads or writes are in apiary.h. */
#ifndef APIARY_MAPS_H
#define APIARY_MAPS_H

#include "common.h"

/* Every event goes through this one ring buffer; a full buffer counts the event as lost. The
 * size here is the default; the loader sets the node's --probe-ring-bytes. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} events SEC(".maps");

/* When each CPU last asked for a wakeup, and what it wrote since it last looked (events.h). */
struct ap_wakeup {
	__u64 last_ns;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ap_wakeup);
} last_wakeup SEC(".maps");

/* --- knobs, written by userspace (probes/src/loader.rs), read by filters.h ------------------ */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NUM_PROBES);
	__type(key, __u32);
	__type(value, struct ap_probe_config);
} probe_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NUM_PROBES);
	__type(key, __u32);
	__type(value, struct ap_probe_stats);
} probe_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ap_scope_config);
} scope_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, __u8);
} scope_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} scope_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PID_FILTER_ENTRIES);
	__type(key, struct ap_pid_filter_key);
	__type(value, __u8);
} pid_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PORT_FILTER_ENTRIES);
	__type(key, struct ap_port_filter_key);
	__type(value, __u8);
} port_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CGROUP_FILTER_ENTRIES);
	__type(key, struct ap_cgroup_filter_key);
	__type(value, __u8);
} cgroup_filter SEC(".maps");

/* --- per thread: a TLS read between its uprobe and its uretprobe (tls.h) ------------------- */

/* An OpenSSL read in flight: its buffer holds the plaintext only when the call returns.
 * (Socket reads need no such slot: their exit finds the syscall's arguments in the task's
 * saved registers.) */
struct ap_read_args {
	__u64 buf;
	__u64 conn_id;
	__u64 len_ptr; /* SSL_read_ex: where OpenSSL stores the byte count */
};

/* One slot per thread in the thread's own storage: a read's entry and return find it without
 * a hash update and delete per call. */
struct ap_reads_in_flight {
	struct ap_read_args tls; /* SSL_read/SSL_read_ex */
	__u8 tls_set;
	__u8 pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ap_reads_in_flight);
} reads_in_flight SEC(".maps");

/* --- per connection (conn.h), with the request that waits for its response (message.h) ----- */

/* ap_conn.keep: no request decided yet (else 0 dropped, 1 kept). */
#define KEEP_UNDECIDED 2

/* What the http and tls probes keep per connection, so that a request or response on a known
 * connection costs one lookup instead of a walk from the fd to the socket, and no map update. */
struct ap_conn {
	__u64 file; /* the struct file behind the fd when cached: a reused fd gets a fresh entry */
	__u64 sock; /* its struct tcp_sock (0: TLS, UDP): sequence numbers (bpf/propagate.h) */
	struct ap_flow flow;
	__u32 netns;
	__u32 keep; /* the last request's sampling decision (its response follows it), or undecided */
	/* Of the thread that first used the connection: the helpers that read them cost about
	 * 200 ns each per event, and a connection rarely changes cgroup. */
	__u64 cgroup_id;
	char comm[16];
	/* Requests sent or read and not yet answered (saturating): a response pairs with the waiting
	 * request only when it is the one outstanding, so pipelined requests keep their order. */
	__u8 in_flight;
	__u8 waiting; /* req_* below hold a request that waits for its response */
	__u16 req_captured;
	/* The protocol bpf/db.h found on this connection (PROTO_*; 0: none, HTTP/1 never sets
	 * it), and the direction its requests go: found once, from a request's first bytes. */
	__u8 db_proto;
	__u8 db_request_dir;
	/* A record of this connection was not sent (the ring was full, or the probe was off or
	 * filtered it): the next one says so (DATA_STREAM_GAP), since the stream has a hole. */
	__u8 db_gap;
	__u8 db_pad;
	__u32 req_direction;
	__u32 req_threshold;
	__u32 req_flags;
	__u64 req_ts;
	__s64 req_len;
	__u64 req_route; /* a sampled-out request's route key (red.h), 0: none */
	/* Trace context (trace.h): requests started on this connection (both sides count from the
	 * entry's creation, so a client's nth request is its server's nth), the thread that read
	 * the last server request (0 on a client), and the last request's context. */
	__u32 seq;
	__u32 reader_tid;
	struct ap_trace_ctx req_trace;
	__u8 req_data[BRIEF_CAPTURE];
};
_Static_assert(sizeof(struct ap_conn) == CONN_ENTRY_BYTES, "update CONN_ENTRY_BYTES in apiary.h");

/* Keyed by pid << 32 | fd, or, for TLS, by bit 63 set, the pid's low 16 bits in bits 47-62 and
 * the SSL pointer below (user addresses are under 2^47 on x86-64): forked workers often hold
 * their SSL objects at the same address, and each must have its own entry. Pids are far below
 * 2^31, so the two kinds of keys cannot meet. An entry is about 400 bytes with its waiting
 * request: 32 768 of them take about 13 MiB. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct ap_conn);
} conns SEC(".maps");

/* --- trace context across connections and threads (trace.h) ------------------------------ */

/* A client's last request on a connection, keyed by its flow as the client sees it (local =
 * the client), for the server side of the same connection on this node to join. */
struct ap_client_request {
	__u8 trace_id[16];
	__u8 span_id[8];
	__u64 ts;   /* bpf_ktime_get_ns() when it was sent */
	__u32 seq;  /* the client entry's request count at it */
	__u32 netns;
	__u32 keep;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ap_flow);
	__type(value, struct ap_client_request);
} client_requests SEC(".maps");

/* The server requests a thread is handling, keyed by pid_tgid: the last one read, and how
 * many it has read and not answered. */
struct ap_thread_request {
	__u64 conn_key; /* the server connection's key in `conns` */
	__u32 seq;      /* that connection's request count at it */
	__u16 outstanding;
	__u8 multiplexed; /* once set, the thread is never a parent (it interleaves requests) */
	__u8 pad;
	__u8 trace_id[16];
	__u8 span_id[8];
	__u32 keep;
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ap_thread_request);
} thread_requests SEC(".maps");

/* --- trace context across nodes, in TCP header options (propagate.h) ------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ap_trace_config);
} trace_config SEC(".maps");

/* A request's context to send, or one received: the sequence number of the request's first
 * byte (0 while the entry is rewritten), the trace id and the client span's id (its top bit
 * the sampling decision). */
struct ap_flow_context {
	__u32 seq;
	__u32 pad;
	__u8 trace_id[16];
	__u8 span_id[8];
	__u64 ts; /* bpf_ktime_get_ns() when it was written */
};

/* Keyed by the socket (its struct sock's address, which the syscall side has from the fd and
 * sock_ops as skops->sk): a u64 lookup where a flow key would be ~20 context reads and a 40-byte
 * hash per TCP callback. An entry outlives its socket at most until the address's next
 * connection is established (sock_ops deletes it then). */

/* The last client request on a connection to a peer: sock_ops writes the option on the
 * segment that starts at `seq`. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ap_flow_context);
} outgoing_contexts SEC(".maps");

/* The last context a peer's node sent on a server's connection: the server's read of the
 * request that starts at `seq` joins it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ap_flow_context);
} incoming_contexts SEC(".maps");

/* --- per-CPU scratch: values too large for the 512-byte BPF stack ------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ap_data_event);
} data_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ap_exchange_event);
} exchange_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ap_conn);
} conn_scratch SEC(".maps");

/* --- RED in the kernel (red.h) ----------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ap_red_config);
} red_config SEC(".maps");

/* Route keys userspace has resolved to a method and route (value unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RED_ROUTE_ENTRIES);
	__type(key, __u64);
	__type(value, __u8);
} red_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, RED_COUNT_ENTRIES);
	__type(key, struct ap_red_key);
	__type(value, struct ap_red_value);
} red_counts SEC(".maps");

/* A new red_counts entry's value (zero but its comm). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ap_red_value);
} red_scratch SEC(".maps");

#endif /* APIARY_MAPS_H */
