/* Trace context: which trace a request belongs to and its parent, decided in the kernel when
 * the request starts, in causal order (a parent's request always starts before its child's).
 *
 * - A server request joins the client request sent on the same connection when this node saw
 *   that client send it (loopback, or two processes on one host): the client's last request
 *   on the flow (client_requests, keyed by the flow as the client sees it) is the server's
 *   parent only if it is the same request by count (each side counts the requests of its
 *   entry, so the nth request a client sent is the nth its server read; a client that sent
 *   the next one already, or entries created at different points, do not match) and was sent
 *   in the last CLIENT_REQUEST_MAX_AGE_NS.
 * - A client request joins the server request its thread is handling (thread-per-request
 *   servers): only while the thread has exactly one server request read and not answered, that
 *   request's connection still waits for its response, and the thread never handled two at
 *   once (an event loop interleaves requests, and its thread says nothing about causality).
 *
 * Anything else is a root, with the reason in `link`. A joined request follows its parent's
 * sampling decision, so a trace is kept or dropped whole; a root decides by the threshold. */
#ifndef APIARY_TRACE_H
#define APIARY_TRACE_H

#include "maps.h"
#include "flow.h"
#include "propagate.h"

/* A server that reads a request this long after its client sent it does not join it: the
 * entry is then more likely a reused flow's. */
#define CLIENT_REQUEST_MAX_AGE_NS (10ULL * 1000000000ULL)

static __always_inline void random_bytes(__u8 *out, int words)
{
	for (int i = 0; i < words; i++) {
		__u32 r = bpf_get_prandom_u32();
		__builtin_memcpy(out + 4 * i, &r, 4);
	}
}

/* A server request: the client request this node saw sent on the same connection, if any. */
static __always_inline int join_client(struct ap_conn *conn, struct ap_trace_ctx *t, __u64 now)
{
	struct ap_flow key;
	if (!client_flow_key(&conn->flow, 1, &key))
		return 0;
	struct ap_client_request *client = bpf_map_lookup_elem(&client_requests, &key);
	if (!client)
		return 0;
	/* The client rewrites its entry in place (note_client_request): seq is 0 while it does,
	 * and the entry is taken only if seq is the same before and after reading it. */
	__u32 seq = *(volatile __u32 *)&client->seq;
	barrier();
	if (seq != conn->seq || now < client->ts || now - client->ts > CLIENT_REQUEST_MAX_AGE_NS ||
	    (is_loopback(&key) && client->netns != conn->netns)) {
		t->link = LINK_ROOT_ORDER;
		return 0;
	}
	__builtin_memcpy(t->trace_id, client->trace_id, 16);
	__builtin_memcpy(t->parent_span_id, client->span_id, 8);
	t->keep = client->keep;
	barrier();
	if (*(volatile __u32 *)&client->seq != seq) {
		t->link = LINK_ROOT_ORDER;
		return 0;
	}
	t->link = LINK_CONNECTION;
	return 1;
}

/* Whether the server request a thread entry names still waits for its response. */
static __always_inline int thread_request_open(struct ap_thread_request *s, __u32 tid)
{
	struct ap_conn *server = bpf_map_lookup_elem(&conns, &s->conn_key);
	return server && server->seq == s->seq && server->in_flight && server->reader_tid == tid;
}

/* A client request: the server request its thread is handling, if that is certain. */
static __always_inline int join_thread(struct ap_trace_ctx *t, __u64 pid_tgid)
{
	struct ap_thread_request *s = bpf_map_lookup_elem(&thread_requests, &pid_tgid);
	if (!s || !s->outstanding)
		return 0;
	if (s->outstanding > 1) {
		t->link = LINK_ROOT_THREAD_BUSY;
		return 0;
	}
	if (s->multiplexed) {
		t->link = LINK_ROOT_MULTIPLEXED;
		return 0;
	}
	if (!thread_request_open(s, (__u32)pid_tgid)) {
		t->link = LINK_ROOT_THREAD_STALE;
		return 0;
	}
	__builtin_memcpy(t->trace_id, s->trace_id, 16);
	__builtin_memcpy(t->parent_span_id, s->span_id, 8);
	t->keep = s->keep;
	t->link = LINK_THREAD;
	return 1;
}

/* A server request read on this thread: it becomes the thread's current one. */
static __always_inline void note_server_request(struct ap_conn *conn, __u64 conn_key,
						struct ap_trace_ctx *t, __u64 pid_tgid)
{
	conn->reader_tid = (__u32)pid_tgid;
	struct ap_thread_request *s = bpf_map_lookup_elem(&thread_requests, &pid_tgid);
	if (!s) {
		struct ap_thread_request fresh = {};
		if (bpf_map_update_elem(&thread_requests, &pid_tgid, &fresh, BPF_NOEXIST) < 0)
			return;
		s = bpf_map_lookup_elem(&thread_requests, &pid_tgid);
		if (!s)
			return;
	}
	/* The one it had may have ended unseen (its response not traced, its entry evicted):
	 * only the last is known, so only a count of one can be checked. */
	if (s->outstanding == 1 && !thread_request_open(s, (__u32)pid_tgid))
		s->outstanding = 0;
	if (s->outstanding)
		s->multiplexed = 1;
	if (s->outstanding < 0xffff)
		s->outstanding++;
	s->conn_key = conn_key;
	s->seq = conn->seq;
	__builtin_memcpy(s->trace_id, t->trace_id, 16);
	__builtin_memcpy(s->span_id, t->span_id, 8);
	s->keep = t->keep;
}

/* A client request sent: the server end of its connection may be read on this node. */
static __always_inline void note_client_request(struct ap_conn *conn, struct ap_trace_ctx *t,
						__u64 now)
{
	struct ap_flow key;
	if (!client_flow_key(&conn->flow, 0, &key))
		return;
	struct ap_client_request *entry = bpf_map_lookup_elem(&client_requests, &key);
	if (entry) {
		/* In place: an update of an LRU map's key allocates a new element and frees the old
		 * one, under the LRU lists' locks, which cost as much as the rest of the program in a
		 * perf profile of wrk. A server reading the entry meanwhile sees seq 0 or a changed
		 * seq, and does not join it (join_client). Stores stay in this order (x86, barriers). */
		*(volatile __u32 *)&entry->seq = 0;
		barrier();
		__builtin_memcpy(entry->trace_id, t->trace_id, 16);
		__builtin_memcpy(entry->span_id, t->span_id, 8);
		entry->ts = now;
		entry->netns = conn->netns;
		entry->keep = t->keep;
		barrier();
		*(volatile __u32 *)&entry->seq = conn->seq;
		return;
	}
	struct ap_client_request value = {};
	__builtin_memcpy(value.trace_id, t->trace_id, 16);
	__builtin_memcpy(value.span_id, t->span_id, 8);
	value.ts = now;
	value.seq = conn->seq;
	value.netns = conn->netns;
	value.keep = t->keep;
	bpf_map_update_elem(&client_requests, &key, &value, BPF_ANY);
}

/* The trace context of a request starting on `conn` (key `conn_key`; `len` bytes of it in
 * this send or read), in conn->req_trace; returns its sampling decision (1 keep): its
 * parent's, or by `threshold` for a root. */
static __always_inline __u32 trace_request(struct ap_conn *conn, __u64 conn_key, __u32 direction,
					   __u32 threshold, __s64 len)
{
	struct ap_trace_ctx *t = &conn->req_trace;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 now = bpf_ktime_get_ns();
	conn->seq++;
	t->link = LINK_ROOT;
	__builtin_memset(t->parent_span_id, 0, 8);
	int joined;
	if (direction == DIR_INGRESS) {
		joined = join_client(conn, t, now);
		/* No client of it traced here: its client's node may have sent its context. */
		if (!joined && t->link == LINK_ROOT)
			joined = join_remote(conn, t, len, now);
	} else {
		joined = join_thread(t, pid_tgid);
	}
	if (!joined) {
		random_bytes(t->trace_id, 4);
		t->keep = threshold == 0xffffffff || bpf_get_prandom_u32() < threshold;
	}
	random_bytes(t->span_id, 2);
	if (direction == DIR_INGRESS) {
		note_server_request(conn, conn_key, t, pid_tgid);
	} else {
		/* A client span's id carries the trace's sampling decision in its top bit, so that
		 * the option sent to a peer's node (propagate.h) has room for both ids. */
		t->span_id[0] = (t->span_id[0] & 0x7f) | (t->keep ? 0x80 : 0);
		note_client_request(conn, t, now);
		note_remote_request(conn, t, now);
	}
	return t->keep;
}

/* A response starts on `conn` (written when `direction` is DIR_EGRESS: a server's): the thread
 * that read the request has one fewer to answer. */
static __always_inline void trace_response(struct ap_conn *conn, __u32 direction)
{
	if (direction != DIR_EGRESS || !conn->reader_tid || !conn->in_flight)
		return;
	__u64 key = (bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | conn->reader_tid;
	struct ap_thread_request *s = bpf_map_lookup_elem(&thread_requests, &key);
	if (s && s->outstanding)
		s->outstanding--;
}

/* A connection closes: a server request on it that was never answered is not handled any
 * more. (Called from the closing process: its tgid is the reader's.) */
static __always_inline void trace_forget(struct ap_conn *conn)
{
	trace_response(conn, DIR_EGRESS);
}

#endif /* APIARY_TRACE_H */
