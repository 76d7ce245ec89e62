/* Types shared by the eBPF programs and the Rust loader (probes/src/abi.rs mirrors them; a test
 * there checks the sizes). Little-endian x86-64, natural alignment, no implicit padding. */
#ifndef APIARY_H
#define APIARY_H

#define PROBE_HTTP 0
#define PROBE_TLS 1
#define PROBE_TCP 2
#define PROBE_PROCESS 3
#define NUM_PROBES 4

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

#define FILTER_INCLUDE 1
#define FILTER_EXCLUDE 2

#define EV_DATA 1
#define EV_TCP_STATE 2
#define EV_TCP_RETRANSMIT 3
#define EV_EXEC 4
#define EV_EXIT 5
#define EV_EXCHANGE 6

#define DIR_INGRESS 0 /* read/recv: bytes into the process */
#define DIR_EGRESS 1  /* write/send: bytes out of the process */

/* A request sampling dropped still sends its first bytes (method, path, status line) so that
 * request counts, errors and latency stay exact; only the span is not exported. */
#define DATA_SAMPLED_OUT 1
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

struct ap_probe_stats {
	__u64 offered;     /* events that passed scope and filters, before sampling */
	__u64 emitted;     /* events written to the ring buffer */
	__u64 lost;        /* events the ring buffer had no room for */
	__u64 sampled_out; /* events dropped by sampling */
	__u64 filtered;    /* events dropped by the probe's pid/port/cgroup filters */
};

struct ap_scope_config {
	__u32 by_cgroup;
	__u32 by_netns;
};

struct ap_pid_filter_key {
	__u32 probe;
	__u32 pid;
};

struct ap_port_filter_key {
	__u32 probe;
	__u32 port;
};

struct ap_cgroup_filter_key {
	__u32 probe;
	__u32 pad;
	__u64 cgroup_id;
};

struct ap_event_header {
	__u8 kind;
	__u8 probe;
	__u16 pad;
	__u32 pid; /* process (tgid) */
	__u32 tid;
	__u32 netns;
	__u64 ts_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u64 cgroup_id;
	char comm[16];
};

struct ap_flow {
	__u16 family; /* AF_INET (2) or AF_INET6 (10) */
	__u16 local_port;
	__u16 remote_port;
	__u16 pad;
	__u8 local_addr[16];  /* IPv4 in the first 4 bytes */
	__u8 remote_addr[16];
};

struct ap_data_event {
	struct ap_event_header h;
	struct ap_flow flow;
	__u64 conn_id; /* fd for the http probe, the SSL pointer for the tls probe */
	__s64 total_len; /* bytes the syscall moved */
	__u32 direction;
	__u32 captured;  /* bytes of data[] that are valid */
	__u32 sample_threshold;
	__u32 flags;     /* DATA_SAMPLED_OUT: counted for RED metrics, not exported as a span */
	__u8 data[MAX_CAPTURE + 1];
};

/* A request and the start of its response on one connection, paired in the kernel: one record
 * per exchange instead of one per message. The request waits in its connection's entry
 * (struct ap_conn in apiary.bpf.c) until the response starts. */
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
	__u8 data[BRIEF_CAPTURE * 2];
};

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

struct ap_proc_event {
	struct ap_event_header h;
	__u32 ppid;
	__s32 exit_code;
	char filename[256];
};

#endif
