// SPDX-License-Identifier: GPL-2.0
/* Apiary's eBPF programs (CO-RE). Every knob is read from a map at run time, so a config change
 * is a map write, never a reload. Only tracepoints and uprobes are used: this kernel has no
 * kprobes and refuses fentry/fexit. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "apiary.h"

#ifndef offsetof
#define offsetof(type, member) __builtin_offsetof(type, member)
#endif

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define MAX_CGROUP_DEPTH 16

/* Tracepoint contexts, laid out as in /sys/kernel/tracing/events/.../format. Declared here (not
 * taken from vmlinux.h) so they carry no CO-RE relocations. */
struct ap_sys_enter_ctx {
	__u64 common;
	__s64 id;
	__u64 args[6];
};

struct ap_sys_exit_ctx {
	__u64 common;
	__s64 id;
	__s64 ret;
};

struct ap_sock_state_ctx {
	__u64 common;
	const void *skaddr;
	int oldstate;
	int newstate;
	__u16 sport, dport, family, protocol;
	__u8 saddr[4], daddr[4], saddr_v6[16], daddr_v6[16];
};

struct ap_retransmit_ctx {
	__u64 common;
	const void *skbaddr;
	const void *skaddr;
	int state;
	__u16 sport, dport, family;
	__u8 saddr[4], daddr[4], saddr_v6[16], daddr_v6[16];
} __attribute__((packed));

struct ap_exec_ctx {
	__u64 common;
	__u32 filename_loc;
	int pid;
	int old_pid;
};

struct ap_exit_ctx {
	__u64 common;
	char comm[16];
	int pid;
	int prio;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");

/* Waking the reader for every event made each traced syscall pay for a wakeup and a context
 * switch. Events are written without a wakeup; the reader drains on a timer, and is woken at
 * once when this much data waits (an eighth of the ring), so a burst cannot fill it.
 *
 * Above the mark each CPU asks for a wakeup at most once per WAKEUP_GAP_NS. A reader that stays
 * behind (busy, or niced below a workload that saturates the machine) was otherwise asked to
 * wake by every write: each traced syscall paid a forced wakeup, and the kernel time per request
 * went from 1.3 to 4.4 us in the overhead bench, just when the machine had no time to spare.
 * (Waking only the writes that cross the mark would be free, but several CPUs writing at once
 * can jump over any window, and the reader would then wait for its timer.) */
#define WAKEUP_BYTES (1024 * 1024)
#define WAKEUP_GAP_NS 1000000

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_wakeup SEC(".maps");

static __always_inline __u64 wakeup_flags(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) < WAKEUP_BYTES)
		return BPF_RB_NO_WAKEUP;
	__u32 zero = 0;
	__u64 *last = bpf_map_lookup_elem(&last_wakeup, &zero);
	__u64 now = bpf_ktime_get_ns();
	if (!last || now - *last < WAKEUP_GAP_NS)
		return BPF_RB_NO_WAKEUP;
	*last = now;
	return BPF_RB_FORCE_WAKEUP;
}

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
	__uint(max_entries, 4096);
	__type(key, struct ap_pid_filter_key);
	__type(value, __u8);
} pid_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ap_port_filter_key);
	__type(value, __u8);
} port_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ap_cgroup_filter_key);
	__type(value, __u8);
} cgroup_filter SEC(".maps");

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

static __always_inline struct ap_reads_in_flight *thread_reads(int create)
{
	return bpf_task_storage_get(&reads_in_flight, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

#define KEEP_UNDECIDED 2

/* What the http and tls probes keep per connection, so that a request or response on a known
 * connection costs one lookup instead of a walk from the fd to the socket, and no map update. */
struct ap_conn {
	__u64 file; /* the struct file behind the fd when cached: a reused fd gets a fresh entry */
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
	__u32 req_direction;
	__u32 req_threshold;
	__u32 req_flags;
	__u64 req_ts;
	__s64 req_len;
	__u8 req_data[BRIEF_CAPTURE];
};

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

#define TLS_CONN_KEY(ssl, pid)                                                              \
	((__u64)(ssl) | ((__u64)((pid) & 0xffff) << 47) | (1ULL << 63))

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

static __always_inline struct ap_probe_stats *stats_of(__u32 probe)
{
	return bpf_map_lookup_elem(&probe_stats, &probe);
}

static __always_inline int in_scope(__u32 netns)
{
	__u32 zero = 0;
	struct ap_scope_config *scope = bpf_map_lookup_elem(&scope_config, &zero);
	if (!scope || (!scope->by_cgroup && !scope->by_netns))
		return 1;
	if (scope->by_netns && bpf_map_lookup_elem(&scope_netns, &netns))
		return 1;
	if (scope->by_cgroup) {
		for (int level = 0; level < MAX_CGROUP_DEPTH; level++) {
			__u64 id = bpf_get_current_ancestor_cgroup_id(level);
			if (id == 0)
				break;
			if (bpf_map_lookup_elem(&scope_cgroups, &id))
				return 1;
		}
	}
	return 0;
}

static __always_inline __u32 task_netns(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
}

/* Filters of one probe: exclusions first, then include lists where they exist. A kind of
 * filter with no rules costs nothing: its map lookups (and the cgroup ancestry walk, up to
 * MAX_CGROUP_DEPTH helper calls and lookups) run only when the config holds such rules. */
static __always_inline int passes_filters(__u32 probe, struct ap_probe_config *config, __u32 pid,
					  __u16 port_a, __u16 port_b)
{
	__u32 flags = config->filter_flags;
	if (flags & HAS_PID_RULES) {
		struct ap_pid_filter_key pid_key = { .probe = probe, .pid = pid };
		__u8 *pid_rule = bpf_map_lookup_elem(&pid_filter, &pid_key);
		if (pid_rule && *pid_rule == FILTER_EXCLUDE)
			return 0;
		if ((flags & HAS_PID_INCLUDE) && !(pid_rule && *pid_rule == FILTER_INCLUDE))
			return 0;
	}

	if (flags & HAS_PORT_RULES) {
		struct ap_port_filter_key port_key = { .probe = probe, .port = port_a };
		__u8 *rule_a = bpf_map_lookup_elem(&port_filter, &port_key);
		port_key.port = port_b;
		__u8 *rule_b = bpf_map_lookup_elem(&port_filter, &port_key);
		if ((rule_a && *rule_a == FILTER_EXCLUDE) || (rule_b && *rule_b == FILTER_EXCLUDE))
			return 0;
		if ((flags & HAS_PORT_INCLUDE) &&
		    !((rule_a && *rule_a == FILTER_INCLUDE) || (rule_b && *rule_b == FILTER_INCLUDE)))
			return 0;
	}

	if (flags & HAS_CGROUP_RULES) {
		int included = 0;
		for (int level = 0; level < MAX_CGROUP_DEPTH; level++) {
			struct ap_cgroup_filter_key key = { .probe = probe };
			key.cgroup_id = bpf_get_current_ancestor_cgroup_id(level);
			if (key.cgroup_id == 0)
				break;
			__u8 *rule = bpf_map_lookup_elem(&cgroup_filter, &key);
			if (rule && *rule == FILTER_EXCLUDE)
				return 0;
			if (rule && *rule == FILTER_INCLUDE)
				included = 1;
		}
		if ((flags & HAS_CGROUP_INCLUDE) && !included)
			return 0;
	}
	return 1;
}

/* Everything of a header but the cgroup and comm, which callers fill from helpers or a cache. */
static __always_inline void fill_header_ids(struct ap_event_header *h, __u8 kind, __u8 probe,
					    __u32 netns)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	h->kind = kind;
	h->probe = probe;
	h->pad = 0;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->netns = netns;
	h->ts_ns = bpf_ktime_get_ns();
}

static __always_inline void fill_header(struct ap_event_header *h, __u8 kind, __u8 probe, __u32 netns)
{
	fill_header_ids(h, kind, probe, netns);
	h->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

static __always_inline void fill_flow_from_sock(struct ap_flow *flow, struct sock *sk)
{
	flow->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	flow->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	flow->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	flow->pad = 0;
	__builtin_memset(flow->local_addr, 0, 16);
	__builtin_memset(flow->remote_addr, 0, 16);
	/* Read into typed locals: BPF_CORE_READ_INTO on a byte array copies one byte. */
	if (flow->family == AF_INET) {
		__be32 local = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__be32 remote = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(flow->local_addr, &local, 4);
		__builtin_memcpy(flow->remote_addr, &remote, 4);
	} else {
		struct in6_addr local = BPF_CORE_READ(sk, __sk_common.skc_v6_rcv_saddr);
		struct in6_addr remote = BPF_CORE_READ(sk, __sk_common.skc_v6_daddr);
		__builtin_memcpy(flow->local_addr, &local, 16);
		__builtin_memcpy(flow->remote_addr, &remote, 16);
	}
}

/* The open file behind a file descriptor of the current process, or NULL. The task's BTF
 * pointer allows plain loads down to the fd array (no helper call each); only the array slot
 * itself needs a probe read. */
static __always_inline struct file *file_of_fd(__u32 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct files_struct *files = task->files;
	if (!files)
		return 0;
	struct fdtable *fdt = files->fdt;
	if (!fdt || fd >= fdt->max_fds)
		return 0;
	struct file **fds = fdt->fd;
	struct file *file = 0;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

/* The TCP/UDP socket of an open file, or NULL. */
static __always_inline struct sock *sock_of_file(struct file *file)
{
	umode_t mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *socket = BPF_CORE_READ(file, private_data);
	if (!socket)
		return 0;
	struct sock *sk = BPF_CORE_READ(socket, sk);
	if (!sk)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	return sk;
}

#define PREFIX_NONE 0
#define PREFIX_REQUEST 1
#define PREFIX_RESPONSE 2

static __always_inline int http_prefix(const char *p)
{
	if (p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P' && p[4] == '/')
		return PREFIX_RESPONSE;
	if ((p[0] == 'G' && p[1] == 'E' && p[2] == 'T' && p[3] == ' ') ||
	    (p[0] == 'P' && p[1] == 'O' && p[2] == 'S' && p[3] == 'T' && p[4] == ' ') ||
	    (p[0] == 'P' && p[1] == 'U' && p[2] == 'T' && p[3] == ' ') ||
	    (p[0] == 'H' && p[1] == 'E' && p[2] == 'A' && p[3] == 'D' && p[4] == ' ') ||
	    (p[0] == 'P' && p[1] == 'A' && p[2] == 'T' && p[3] == 'C' && p[4] == 'H') ||
	    (p[0] == 'D' && p[1] == 'E' && p[2] == 'L' && p[3] == 'E' && p[4] == 'T') ||
	    (p[0] == 'O' && p[1] == 'P' && p[2] == 'T' && p[3] == 'I' && p[4] == 'O'))
		return PREFIX_REQUEST;
	return PREFIX_NONE;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ap_conn);
} conn_scratch SEC(".maps");

/* A new connection entry, built in per-CPU scratch (it is too large for the BPF stack). Its
 * request fields are unset: nothing waits. */
static __always_inline struct ap_conn *fresh_conn(__u64 file, __u32 netns)
{
	__u32 zero = 0;
	struct ap_conn *fresh = bpf_map_lookup_elem(&conn_scratch, &zero);
	if (!fresh)
		return 0;
	fresh->file = file;
	fresh->netns = netns;
	fresh->keep = KEEP_UNDECIDED;
	fresh->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&fresh->comm, sizeof(fresh->comm));
	fresh->in_flight = 0;
	fresh->waiting = 0;
	return fresh;
}

/* The connection behind an fd: from the cache while the fd still holds the same file, else
 * read from the socket once. NULL when the fd is not a TCP/UDP socket.
 *
 * `kind` is the message's: a request checks that the fd still holds the cached file (close()
 * deletes an entry, but dup2, exec's close-on-exec and close_range do not); a response that
 * answers a request seen on this entry trusts it. A new connection's first message is its
 * request on both sides, so a reused fd is caught there, and the check (about 100 ns: four
 * dependent loads down the fd table) is paid once per exchange instead of twice. A response
 * with no request outstanding (its request went by an untraced path, or the fd is not what
 * it was) is checked like a request. */
static __always_inline struct ap_conn *conn_of_fd(__u64 key, __u32 fd, int kind)
{
	struct ap_conn *conn;
	if (kind == PREFIX_RESPONSE) {
		conn = bpf_map_lookup_elem(&conns, &key);
		if (conn && (conn->waiting || conn->in_flight))
			return conn;
	}
	struct file *file = file_of_fd(fd);
	if (!file)
		return 0;
	conn = bpf_map_lookup_elem(&conns, &key);
	if (conn && conn->file == (__u64)file)
		return conn;
	struct sock *sk = sock_of_file(file);
	if (!sk)
		return 0;
	struct ap_conn *fresh =
		fresh_conn((__u64)file, BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum));
	if (!fresh)
		return 0;
	fill_flow_from_sock(&fresh->flow, sk);
	if (bpf_map_update_elem(&conns, &key, fresh, BPF_ANY) < 0)
		return 0;
	return bpf_map_lookup_elem(&conns, &key);
}

/* TLS connections have no socket at hand: no addresses, the task's netns. */
static __always_inline struct ap_conn *conn_of_ssl(__u64 ssl)
{
	__u64 key = TLS_CONN_KEY(ssl, bpf_get_current_pid_tgid() >> 32);
	struct ap_conn *conn = bpf_map_lookup_elem(&conns, &key);
	if (conn)
		return conn;
	struct ap_conn *fresh = fresh_conn(0, task_netns());
	if (!fresh)
		return 0;
	__builtin_memset(&fresh->flow, 0, sizeof(fresh->flow));
	if (bpf_map_update_elem(&conns, &key, fresh, BPF_ANY) < 0)
		return 0;
	return bpf_map_lookup_elem(&conns, &key);
}

static __always_inline struct ap_data_event *scratch_event(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&data_scratch, &zero);
}

/* Reads the start of a buffer into the CPU's scratch event and says whether it starts an HTTP
 * message. One read of user memory serves both the check and a capture of the default size:
 * a read cost about 140 ns here for 8 as for 70 bytes (the call, not the copy). `got` is how
 * many bytes were read. */
static __always_inline int read_message_start(struct ap_data_event *ev, const void *buf, __s64 len,
					      __u32 *got)
{
	if (len < 8 || !buf)
		return PREFIX_NONE;
	__u32 n = len < BRIEF_CAPTURE ? len : BRIEF_CAPTURE;
	asm volatile("%0 &= %1" : "+r"(n) : "i"(CAPTURE_MASK));
	if (bpf_probe_read_user(ev->data, n, buf) < 0)
		return PREFIX_NONE;
	*got = n;
	return http_prefix((const char *)ev->data);
}

static __always_inline void fill_data_event(struct ap_data_event *ev, __u32 probe,
					    struct ap_conn *conn, __u64 conn_id, __s64 len,
					    __u32 direction, __u32 threshold, __u32 flags)
{
	fill_header_ids(&ev->h, EV_DATA, probe, conn->netns);
	ev->h.cgroup_id = conn->cgroup_id;
	__builtin_memcpy(ev->h.comm, conn->comm, sizeof(ev->h.comm));
	ev->flow = conn->flow;
	ev->conn_id = conn_id;
	ev->total_len = len;
	ev->direction = direction;
	ev->sample_threshold = threshold;
	ev->flags = flags;
}

/* *n = min(*n, BRIEF_CAPTURE), written so that the verifier sees the bound: clang turns a plain
 * min into code whose bound the verifier loses (it then refuses the copies below). */
static __always_inline void clamp_brief(__u32 *n)
{
	__u32 v = *n;
	asm volatile("if %0 <= %1 goto +1; %0 = %1" : "+r"(v) : "i"(BRIEF_CAPTURE));
	*n = v;
}

/* Keeps a request in its connection's entry until its response starts: no event yet. */
static __always_inline void hold_request(struct ap_conn *conn, struct ap_data_event *ev,
					 __u32 captured, __s64 len, __u32 direction,
					 __u32 threshold, __u32 flags)
{
	/* Only the bytes there are: most requests are far shorter than the room, and each cache
	 * line written here is one more to fetch when the response comes. */
	clamp_brief(&captured);
	if (bpf_probe_read_kernel(conn->req_data, captured, ev->data) < 0)
		captured = 0;
	conn->req_captured = captured;
	conn->req_direction = direction;
	conn->req_threshold = threshold;
	conn->req_flags = flags;
	conn->req_ts = bpf_ktime_get_ns();
	conn->req_len = len;
	conn->waiting = 1;
}

/* Sends the connection's waiting request as one record: with the start of its response (`ev`,
 * `captured` bytes of it) or, when its pairing is given up, alone (`ev` NULL). */
static __always_inline void emit_exchange(__u32 probe, struct ap_probe_stats *stats,
					  struct ap_conn *conn, __u64 conn_id,
					  struct ap_data_event *ev, __u32 captured, __s64 len)
{
	__u32 zero = 0;
	struct ap_exchange_event *x = bpf_map_lookup_elem(&exchange_scratch, &zero);
	conn->waiting = 0;
	if (!x)
		return;
	fill_header_ids(&x->h, EV_EXCHANGE, probe, conn->netns);
	x->h.cgroup_id = conn->cgroup_id;
	__builtin_memcpy(x->h.comm, conn->comm, sizeof(x->h.comm));
	x->flow = conn->flow;
	x->conn_id = conn_id;
	x->request_ts = conn->req_ts;
	x->request_len = conn->req_len;
	x->response_len = 0;
	x->direction = conn->req_direction;
	x->sample_threshold = conn->req_threshold;
	x->flags = conn->req_flags;
	__u32 request = conn->req_captured;
	clamp_brief(&request);
	if (bpf_probe_read_kernel(x->data, request, conn->req_data) < 0)
		request = 0;
	__u32 response = 0;
	if (ev) {
		x->flags |= EXCHANGE_RESPONSE;
		x->response_len = len;
		response = captured;
		clamp_brief(&response);
		if (response && bpf_probe_read_kernel(x->data + request, response, ev->data) < 0)
			response = 0;
	}
	x->request_captured = request;
	x->response_captured = response;
	__u64 size = offsetof(struct ap_exchange_event, data) + request + response;
	if (bpf_ringbuf_output(&events, x, size, wakeup_flags()) < 0)
		stats->lost++;
	else
		stats->emitted++;
}

/* Emits one HTTP message start seen in a socket buffer (`probe` http) or in TLS plaintext
 * (`probe` tls). Sampling is per request: a kept request keeps its response. A request waits
 * in its connection's entry and leaves with its response as one record; pipelined requests
 * (a second before the first's response) and captures above BRIEF_CAPTURE go out one record
 * per message, paired in userspace. */
static __always_inline void emit_data(__u32 probe, struct ap_conn *conn, struct ap_data_event *ev,
				      __u32 got, __u64 conn_id, int kind, const void *buf, __s64 len,
				      __u32 direction)
{
	struct ap_probe_config *config = bpf_map_lookup_elem(&probe_config, &probe);
	struct ap_probe_stats *stats = stats_of(probe);
	if (!config || !stats || !config->enabled)
		return;
	__u32 netns = conn->netns;
	if (!in_scope(netns))
		return;
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!passes_filters(probe, config, pid, conn->flow.local_port, conn->flow.remote_port)) {
		stats->filtered++;
		return;
	}

	__u32 threshold = config->sample_threshold;
	__u32 capture = config->capture_bytes;
	__u32 flags = 0;
	if (kind == PREFIX_REQUEST) {
		stats->offered++;
		__u32 keep = threshold == 0xffffffff || bpf_get_prandom_u32() < threshold;
		conn->keep = keep;
		if (!keep) {
			stats->sampled_out++;
			flags = DATA_SAMPLED_OUT;
		}
		if (conn->waiting) {
			/* Pipelined: pairing here would give the new request the old one's response. */
			emit_exchange(probe, stats, conn, conn_id, 0, 0, 0);
		} else if (conn->in_flight == 0 && capture <= BRIEF_CAPTURE) {
			/* A sampled-out request keeps its brief prefix (always_keep may want its
			 * traceparent); a kept one what the config asks. */
			hold_request(conn, ev, flags || capture > got ? got : capture, len, direction,
				     threshold, flags);
			conn->in_flight = 1;
			return;
		}
		if (conn->in_flight < 255)
			conn->in_flight++;
	} else {
		if (conn->waiting && conn->in_flight == 1 && conn->req_direction != direction) {
			__u32 limit = conn->req_flags & DATA_SAMPLED_OUT ? STATUS_CAPTURE : capture;
			emit_exchange(probe, stats, conn, conn_id, ev, got < limit ? got : limit, len);
			conn->in_flight = 0;
			conn->keep = KEEP_UNDECIDED;
			return;
		}
		if (conn->waiting)
			emit_exchange(probe, stats, conn, conn_id, 0, 0, 0);
		if (conn->in_flight > 0)
			conn->in_flight--;
		__u32 decision = conn->keep;
		conn->keep = KEEP_UNDECIDED;
		if (decision == 0) {
			flags = DATA_SAMPLED_OUT;
		} else if (decision == KEEP_UNDECIDED &&
			   !(threshold == 0xffffffff || bpf_get_prandom_u32() < threshold)) {
			/* A response whose request we never saw (connection older than the probe). */
			return;
		}
	}

	__u32 captured = capture;
	if (flags && captured > BRIEF_CAPTURE)
		captured = BRIEF_CAPTURE;
	if ((__s64)captured > len)
		captured = len;
	if (captured > MAX_CAPTURE)
		captured = MAX_CAPTURE;
	if (captured > got) {
		/* Only for captures above the default size: read the whole prefix again. */
		asm volatile("%0 &= %1" : "+r"(captured) : "i"(CAPTURE_MASK));
		if (bpf_probe_read_user(ev->data, captured, buf) < 0)
			captured = got;
	}
	fill_data_event(ev, probe, conn, conn_id, len, direction, threshold, flags);
	ev->captured = captured;
	/* The verifier needs the bound in the register itself; clang would drop a plain mask. */
	asm volatile("%0 &= %1" : "+r"(captured) : "i"(CAPTURE_MASK));
	__u64 size = offsetof(struct ap_data_event, data) + captured;
	if (bpf_ringbuf_output(&events, ev, size, wakeup_flags()) < 0)
		stats->lost++;
	else
		stats->emitted++;
}

/* One buffer seen by the http probe (`conn_id` an fd of the current process) or the tls probe
 * (an SSL pointer). Most buffers are not HTTP: their first bytes are checked before the
 * connection is looked up (and, the first time, walked to from the fd). */
static __always_inline void emit_message(__u32 probe, __u64 conn_id, const void *buf, __s64 len,
					 __u32 direction)
{
	struct ap_data_event *ev = scratch_event();
	__u32 got = 0;
	if (!ev)
		return;
	int kind = read_message_start(ev, buf, len, &got);
	if (kind == PREFIX_NONE)
		return;
	struct ap_conn *conn;
	if (probe == PROBE_HTTP) {
		__u64 key = (bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | (__u32)conn_id;
		conn = conn_of_fd(key, conn_id, kind);
	} else {
		conn = conn_of_ssl(conn_id);
	}
	if (!conn)
		return;
	emit_data(probe, conn, ev, got, conn_id, kind, buf, len, direction);
}

static __always_inline int probe_enabled(__u32 probe)
{
	struct ap_probe_config *config = bpf_map_lookup_elem(&probe_config, &probe);
	return config && config->enabled;
}

static __always_inline void socket_send(__u32 fd, const void *buf, __s64 len)
{
	if (len <= 0 || !probe_enabled(PROBE_HTTP))
		return;
	emit_message(PROBE_HTTP, fd, buf, len, DIR_EGRESS);
}

/* A read on a socket returned `ret` bytes. Its fd and buffer are the syscall's own arguments,
 * still in the registers the task saved on entry (the kernel does not change them): no program
 * on the syscall's entry, and nothing kept per thread between entry and exit. */
static __always_inline void finish_read(__s64 ret, __u32 iovec)
{
	if (ret <= 0 || !probe_enabled(PROBE_HTTP))
		return;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs)
		return;
	__u32 fd = regs->di;
	__u64 buf = regs->si;
	if (iovec) {
		struct iovec first = {};
		if (bpf_probe_read_user(&first, sizeof(first), (void *)buf) < 0)
			return;
		buf = (__u64)first.iov_base;
		if ((__s64)first.iov_len < ret)
			ret = first.iov_len;
	}
	emit_message(PROBE_HTTP, fd, (void *)buf, ret, DIR_INGRESS);
}

SEC("tracepoint/syscalls/sys_enter_write")
int http_enter_write(struct ap_sys_enter_ctx *ctx)
{
	socket_send(ctx->args[0], (void *)ctx->args[1], ctx->args[2]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int http_enter_sendto(struct ap_sys_enter_ctx *ctx)
{
	socket_send(ctx->args[0], (void *)ctx->args[1], ctx->args[2]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_writev")
int http_enter_writev(struct ap_sys_enter_ctx *ctx)
{
	if (!probe_enabled(PROBE_HTTP))
		return 0;
	struct iovec first = {};
	if (bpf_probe_read_user(&first, sizeof(first), (void *)ctx->args[1]) < 0)
		return 0;
	socket_send(ctx->args[0], first.iov_base, first.iov_len);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int http_exit_read(struct ap_sys_exit_ctx *ctx)
{
	finish_read(ctx->ret, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int http_exit_recvfrom(struct ap_sys_exit_ctx *ctx)
{
	finish_read(ctx->ret, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_readv")
int http_exit_readv(struct ap_sys_exit_ctx *ctx)
{
	finish_read(ctx->ret, 1);
	return 0;
}

/* Drops a connection's entry. Most closed fds and freed SSL objects were never an HTTP
 * connection: a lookup takes no lock, a delete does. */
static __always_inline void forget_conn(__u64 key)
{
	if (bpf_map_lookup_elem(&conns, &key))
		bpf_map_delete_elem(&conns, &key);
}

SEC("tracepoint/syscalls/sys_enter_close")
int http_enter_close(struct ap_sys_enter_ctx *ctx)
{
	forget_conn((bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | (__u32)ctx->args[0]);
	return 0;
}

/* --- tls: OpenSSL 3 plaintext ------------------------------------------------------------ */

static __always_inline void tls_emit(__u64 ssl, const void *buf, __s64 len, __u32 direction)
{
	if (!probe_enabled(PROBE_TLS))
		return;
	emit_message(PROBE_TLS, ssl, buf, len, direction);
}

static __always_inline void tls_remember_read(void *ssl, void *buf, void *len_ptr)
{
	struct ap_reads_in_flight *reads = thread_reads(1);
	if (!reads)
		return;
	reads->tls.buf = (__u64)buf;
	reads->tls.conn_id = (__u64)ssl;
	reads->tls.len_ptr = (__u64)len_ptr;
	reads->tls_set = 1;
}

static __always_inline void tls_finish_read(__s64 ret)
{
	struct ap_reads_in_flight *reads = thread_reads(0);
	if (!reads || !reads->tls_set)
		return;
	struct ap_read_args copy = reads->tls;
	reads->tls_set = 0;
	if (copy.len_ptr) {
		/* SSL_read_ex returns 1 on success and stores the count. */
		__u64 count = 0;
		if (ret != 1 || bpf_probe_read_user(&count, sizeof(count), (void *)copy.len_ptr) < 0)
			return;
		ret = count;
	}
	tls_emit(copy.conn_id, (void *)copy.buf, ret, DIR_INGRESS);
}

/* OpenSSL 3 has two pairs: SSL_read/SSL_write (curl) and SSL_read_ex/SSL_write_ex (Python). */
SEC("uprobe")
int BPF_KPROBE(tls_ssl_write, void *ssl, const void *buf, int num)
{
	tls_emit((__u64)ssl, buf, num, DIR_EGRESS);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(tls_ssl_write_ex, void *ssl, const void *buf, __u64 num)
{
	tls_emit((__u64)ssl, buf, num, DIR_EGRESS);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(tls_ssl_read, void *ssl, void *buf, int num)
{
	tls_remember_read(ssl, buf, 0);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(tls_ssl_read_ex, void *ssl, void *buf, __u64 num, void *readbytes)
{
	tls_remember_read(ssl, buf, readbytes);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(tls_ssl_read_ret, int ret)
{
	tls_finish_read(ret);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(tls_ssl_read_ex_ret, int ret)
{
	tls_finish_read(ret);
	return 0;
}

/* SSL_free: the next connection's SSL object often gets the same address, and must not inherit
 * this one's entry (a request that never got its response would make the next one look
 * pipelined, and its response would be paired with the old request). */
SEC("uprobe")
int BPF_KPROBE(tls_ssl_free, void *ssl)
{
	forget_conn(TLS_CONN_KEY(ssl, bpf_get_current_pid_tgid() >> 32));
	return 0;
}

/* --- tcp: connection lifecycle and bytes -------------------------------------------------- */

static __always_inline int tcp_gate(struct sock *sk, __u32 *netns, struct ap_probe_stats **stats,
				    struct ap_probe_config **config)
{
	__u32 probe = PROBE_TCP;
	*config = bpf_map_lookup_elem(&probe_config, &probe);
	*stats = stats_of(probe);
	if (!*config || !*stats || !(*config)->enabled)
		return 0;
	*netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	/* State changes often run in softirq context: scope by the socket's netns only. */
	__u32 zero = 0;
	struct ap_scope_config *scope = bpf_map_lookup_elem(&scope_config, &zero);
	if (scope && scope->by_netns && !bpf_map_lookup_elem(&scope_netns, netns))
		return 0;
	return 1;
}

static __always_inline void flow_from_fields(struct ap_flow *flow, __u16 family, __u16 sport, __u16 dport,
					     const __u8 *saddr, const __u8 *daddr, const __u8 *saddr6,
					     const __u8 *daddr6)
{
	flow->family = family;
	flow->local_port = sport;
	flow->remote_port = dport;
	flow->pad = 0;
	__builtin_memset(flow->local_addr, 0, 16);
	__builtin_memset(flow->remote_addr, 0, 16);
	if (family == AF_INET) {
		__builtin_memcpy(flow->local_addr, saddr, 4);
		__builtin_memcpy(flow->remote_addr, daddr, 4);
	} else {
		__builtin_memcpy(flow->local_addr, saddr6, 16);
		__builtin_memcpy(flow->remote_addr, daddr6, 16);
	}
}

/* `flow` comes from the tracepoint: by the time a socket closes, its own address fields may
 * already be cleared. */
static __always_inline void emit_tcp(struct sock *sk, struct ap_flow *flow, __u8 kind, int old_state,
				     int new_state)
{
	__u32 netns;
	struct ap_probe_stats *stats;
	struct ap_probe_config *config;
	if (!tcp_gate(sk, &netns, &stats, &config))
		return;
	struct ap_port_filter_key key = { .probe = PROBE_TCP, .port = flow->local_port };
	__u8 *rule_a = bpf_map_lookup_elem(&port_filter, &key);
	key.port = flow->remote_port;
	__u8 *rule_b = bpf_map_lookup_elem(&port_filter, &key);
	if ((rule_a && *rule_a == FILTER_EXCLUDE) || (rule_b && *rule_b == FILTER_EXCLUDE) ||
	    ((config->filter_flags & HAS_PORT_INCLUDE) &&
	     !((rule_a && *rule_a == FILTER_INCLUDE) || (rule_b && *rule_b == FILTER_INCLUDE)))) {
		stats->filtered++;
		return;
	}
	stats->offered++;
	struct ap_tcp_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		stats->lost++;
		return;
	}
	fill_header(&ev->h, kind, PROBE_TCP, netns);
	ev->flow = *flow;
	ev->sock = (__u64)sk;
	ev->old_state = old_state;
	ev->new_state = new_state;
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	ev->bytes_sent = BPF_CORE_READ(tp, bytes_sent);
	ev->bytes_received = BPF_CORE_READ(tp, bytes_received);
	ev->bytes_acked = BPF_CORE_READ(tp, bytes_acked);
	ev->retransmits = BPF_CORE_READ(tp, total_retrans);
	ev->pad = 0;
	bpf_ringbuf_submit(ev, wakeup_flags());
	stats->emitted++;
}

SEC("tracepoint/sock/inet_sock_set_state")
int tcp_state(struct ap_sock_state_ctx *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	struct ap_flow flow;
	flow_from_fields(&flow, ctx->family, ctx->sport, ctx->dport, ctx->saddr, ctx->daddr, ctx->saddr_v6,
			 ctx->daddr_v6);
	emit_tcp((struct sock *)ctx->skaddr, &flow, EV_TCP_STATE, ctx->oldstate, ctx->newstate);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tcp_retransmit(struct ap_retransmit_ctx *ctx)
{
	struct ap_flow flow;
	flow_from_fields(&flow, ctx->family, ctx->sport, ctx->dport, ctx->saddr, ctx->daddr, ctx->saddr_v6,
			 ctx->daddr_v6);
	emit_tcp((struct sock *)ctx->skaddr, &flow, EV_TCP_RETRANSMIT, ctx->state, ctx->state);
	return 0;
}

/* --- process: exec and exit ----------------------------------------------------------------- */

static __always_inline struct ap_proc_event *process_event(__u8 kind)
{
	__u32 probe = PROBE_PROCESS;
	struct ap_probe_config *config = bpf_map_lookup_elem(&probe_config, &probe);
	struct ap_probe_stats *stats = stats_of(probe);
	if (!config || !stats || !config->enabled)
		return 0;
	__u32 netns = task_netns();
	if (!in_scope(netns))
		return 0;
	stats->offered++;
	struct ap_proc_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		stats->lost++;
		return 0;
	}
	stats->emitted++;
	fill_header(&ev->h, kind, PROBE_PROCESS, netns);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->exit_code = 0;
	ev->filename[0] = 0;
	return ev;
}

SEC("tracepoint/sched/sched_process_exec")
int process_exec(struct ap_exec_ctx *ctx)
{
	struct ap_proc_event *ev = process_event(EV_EXEC);
	if (!ev)
		return 0;
	bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename),
				  (void *)ctx + (ctx->filename_loc & 0xffff));
	bpf_ringbuf_submit(ev, wakeup_flags());
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int process_exit(struct ap_exit_ctx *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if ((__u32)pid_tgid != (pid_tgid >> 32))
		return 0; /* a thread, not the process */
	struct ap_proc_event *ev = process_event(EV_EXIT);
	if (!ev)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	ev->exit_code = BPF_CORE_READ(task, exit_code) >> 8;
	bpf_ringbuf_submit(ev, wakeup_flags());
	return 0;
}
