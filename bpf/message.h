/* The message path the http and tls probes share: a buffer's first bytes are classified
 * (protocol.h); a message start is counted against its connection (conn.h), filtered
 * (filters.h), sampled per request, and sent as a record (apiary.h).
 *
 * Pairing is the same for every request/response protocol, so it is done here: a request
 * waits in its connection's entry and leaves with the start of its response as one
 * EV_EXCHANGE record, when it is the one request outstanding and the response goes the other
 * way. Otherwise (pipelined requests, a response with no request seen, captures above
 * BRIEF_CAPTURE) each message goes out as an EV_DATA record and userspace pairs them. A
 * protocol whose responses do not answer requests in order (multiplexed streams) would need
 * its own. */
#ifndef APIARY_MESSAGE_H
#define APIARY_MESSAGE_H

#include "events.h"
#include "filters.h"
#include "conn.h"
#include "protocol.h"
#include "red.h"

static __always_inline struct ap_data_event *scratch_event(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&data_scratch, &zero);
}

/* Reads the start of a buffer into the CPU's scratch event and says what message it starts, if
 * any (protocol.h). One read of user memory serves both the check and a capture of the default
 * size: a read cost about 140 ns here for 8 as for 70 bytes (the call, not the copy). `got` is
 * how many bytes were read. */
static __always_inline int read_message_start(struct ap_data_event *ev, const void *buf, __s64 len,
					      __u32 *got)
{
	if (len < BUF_CLASSIFY_MIN || !buf)
		return PREFIX_NONE;
	__u32 n = len < BRIEF_CAPTURE ? len : BRIEF_CAPTURE;
	asm volatile("%0 &= %1" : "+r"(n) : "i"(CAPTURE_MASK));
	if (bpf_probe_read_user(ev->data, n, buf) < 0)
		return PREFIX_NONE;
	*got = n;
	return classify_protocol((const char *)ev->data, n);
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
	x->trace = conn->req_trace;
	x->route = conn->req_route;
	x->request_captured = request;
	x->response_captured = response;
	__u64 size = offsetof(struct ap_exchange_event, data) + request + response;
	if (bpf_ringbuf_output(&events, x, size, wakeup_flags(size)) < 0)
		stats->lost++;
	else
		stats->emitted++;
}

/* Emits one message start seen in a socket buffer (`probe` http) or in TLS plaintext
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
		__u32 was_waiting = conn->waiting;
		if (was_waiting) {
			/* Pipelined: pairing here would give the new request the old one's response.
			 * Sent before the new request's trace context replaces the old one's. */
			emit_exchange(probe, stats, conn, conn_id, 0, 0, 0);
		}
		/* Sampling is per trace: a request joined to a parent follows its decision. */
		__u64 key = probe == PROBE_HTTP ? FD_CONN_KEY(conn_id) : TLS_CONN_KEY(conn_id, pid);
		__u32 keep = trace_request(conn, key, direction, threshold, len);
		conn->keep = keep;
		if (!keep) {
			stats->sampled_out++;
			flags = DATA_SAMPLED_OUT;
		}
		conn->req_route = 0;
		if (!was_waiting && conn->in_flight == 0 && capture <= BRIEF_CAPTURE) {
			/* Sampled out: may be counted in the kernel when its response comes (red.h). */
			if (flags)
				conn->req_route = red_request_route(ev, got);
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
		trace_response(conn, direction);
		if (conn->waiting && conn->in_flight == 1 && conn->req_direction != direction) {
			__u32 limit = conn->req_flags & DATA_SAMPLED_OUT ? STATUS_CAPTURE : capture;
			if ((conn->req_flags & DATA_SAMPLED_OUT) && red_count(conn, ev, got)) {
				conn->waiting = 0;
				stats->counted++;
			} else {
				emit_exchange(probe, stats, conn, conn_id, ev, got < limit ? got : limit,
					      len);
			}
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
	if (kind == PREFIX_REQUEST)
		ev->trace = conn->req_trace;
	else
		__builtin_memset(&ev->trace, 0, sizeof(ev->trace));
	ev->captured = captured;
	/* The verifier needs the bound in the register itself; clang would drop a plain mask. */
	asm volatile("%0 &= %1" : "+r"(captured) : "i"(CAPTURE_MASK));
	__u64 size = offsetof(struct ap_data_event, data) + captured;
	if (bpf_ringbuf_output(&events, ev, size, wakeup_flags(size)) < 0)
		stats->lost++;
	else
		stats->emitted++;
}

#endif /* APIARY_MESSAGE_H */
