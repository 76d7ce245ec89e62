/* Protocols found once per connection (Redis, PostgreSQL, MySQL/MariaDB, HTTP/2), on the http probe's
 * socket tracepoints and on the tls probe's OpenSSL uprobes (HTTP/2 over TLS: the plaintext of
 * SSL_write and SSL_read, the connection an SSL object). The HTTP/1 path (message.h) classifies every buffer by its first bytes;
 * only a buffer it does not take comes here, and only while one of these probes is enabled.
 *
 * A connection is recognised from a request's first bytes (protocol_<name>.h; MySQL's from the
 * server's greeting, which goes the other way), and the result kept in its `conns` entry
 * (db_proto, db_request_dir): later buffers cost one lookup and are never classified again.
 * Unlike HTTP/1, EVERY buffer of a recognised connection is sent, in both directions, as an
 * EV_DATA record of the protocol's own probe (PROBE_REDIS, ...) with DATA_REQUEST_SIDE on the
 * requests' side: userspace follows the byte stream (pipelined commands, replies split over
 * reads, a value too large to capture whose length is known), and a buffer left out would
 * desynchronise it: one that could not be sent (the ring full) or was not (the probe off, a
 * filter) marks the connection, and its next record says so (DATA_STREAM_GAP) so that userspace
 * stops following it. Nothing is paired in the kernel. Sampling marks a request-side buffer
 * DATA_SAMPLED_OUT (its commands count in RED, no span leaves) but never drops a buffer, for the
 * same reason; so a low rate saves export, not kernel time. */
#ifndef APIARY_DB_H
#define APIARY_DB_H

#include "message.h"
#include "protocol_redis.h"
#include "protocol_postgres.h"
#include "protocol_mysql.h"
#include "protocol_http2.h"

/* How many bytes a syscall moved beyond the `len` at its first buffer: `total` (a readv's
 * return), or, for a writev, its iovecs, read only for a connection of this file's (HTTP pays
 * nothing for it). The stream userspace follows needs every byte counted: a writev seen as its
 * first iovec alone would shift every message after it. A writev's iovecs are each sent as a
 * record of their own (emit_iovecs): servers write a frame's header and its body from two
 * iovecs (nginx's HTTP/2 does for every frame), and a capture of the first alone would miss
 * every body. */
struct db_extent {
	__s64 total;
	const struct iovec *iov;
	__u32 iovcnt;
};

/* iovecs sent one record each; a writev with more is followed by a gap userspace cannot
 * cross. gRPC's C core sends a connection's first request with each header field a slice of
 * its own (25 iovecs for a call with default metadata; it allows up to 260 a sendmsg). */
#define DB_MAX_IOVECS 256
#define DB_UNKNOWN_EXTENT (1LL << 40)

/* Whether any probe of this file is on: the socket tracepoints then run for it too. */
static __always_inline int db_probes_enabled(void)
{
	return probe_enabled(PROBE_REDIS) || probe_enabled(PROBE_POSTGRES) ||
	       probe_enabled(PROBE_MYSQL) || probe_enabled(PROBE_HTTP2);
}

/* The protocol a connection's first request starts (PROTO_*), or 0, from its first `n` bytes
 * (of `len` the syscall moved). Cheapest first. */
static __always_inline __u8 detect_db_protocol(const char *p, __u32 n, __s64 len)
{
	if (is_redis_command(p, n) && probe_enabled(PROBE_REDIS))
		return PROTO_REDIS;
	if ((is_postgres_startup(p, n, len) || is_postgres_query(p, n, len)) &&
	    probe_enabled(PROBE_POSTGRES))
		return PROTO_POSTGRES;
	if (is_mysql_greeting(p, n, len) && probe_enabled(PROBE_MYSQL))
		return PROTO_MYSQL;
	if (is_http2_preface(p, n) && probe_enabled(PROBE_HTTP2))
		return PROTO_HTTP2;
	return 0;
}

static __always_inline __u32 probe_of_db_protocol(__u8 proto)
{
	if (proto == PROTO_POSTGRES)
		return PROBE_POSTGRES;
	if (proto == PROTO_HTTP2)
		return PROBE_HTTP2;
	return proto == PROTO_MYSQL ? PROBE_MYSQL : PROBE_REDIS;
}

/* One record: `len` bytes readable at `buf`, of which the first `captured` are read into
 * ev->data (`got` of them already are), standing for `total` bytes of the stream (more than
 * `len` when a read filled iovecs past its first). */
static __always_inline int emit_stream_record(struct ap_data_event *ev, __u32 got,
					      const void *buf, __s64 len, __s64 total,
					      __u32 captured, struct ap_probe_stats *stats)
{
	if ((__s64)captured > len)
		captured = len;
	if (captured > MAX_CAPTURE)
		captured = MAX_CAPTURE;
	if (captured > got) {
		asm volatile("%0 &= %1" : "+r"(captured) : "i"(CAPTURE_MASK));
		if (bpf_probe_read_user(ev->data, captured, buf) < 0)
			captured = got;
	}
	ev->total_len = total;
	ev->captured = captured;
	asm volatile("%0 &= %1" : "+r"(captured) : "i"(CAPTURE_MASK));
	__u64 size = offsetof(struct ap_data_event, data) + captured;
	if (bpf_ringbuf_output(&events, ev, size, wakeup_flags(size)) < 0) {
		stats->lost++;
		return 0;
	}
	stats->emitted++;
	return 1;
}

/* emit_stream_record for a buffer of `conn`: says if an earlier record of it was not sent, and
 * remembers if this one is not. */
static __always_inline void emit_followed(struct ap_conn *conn, struct ap_data_event *ev,
					  __u32 got, const void *buf, __s64 len, __s64 total,
					  __u32 captured, struct ap_probe_stats *stats)
{
	if (conn->db_gap)
		ev->flags |= DATA_STREAM_GAP;
	else
		ev->flags &= ~DATA_STREAM_GAP;
	conn->db_gap = !emit_stream_record(ev, got, buf, len, total, captured, stats);
}

/* What emit_one_iovec needs, on the stack of the program that loops (bpf_loop). */
struct iovec_walk {
	struct ap_conn *conn;
	struct ap_data_event *ev;
	const struct iovec *iov;
	struct ap_probe_stats *stats;
	__u32 iovcnt;
	__u32 capture;
};

/* The i-th iovec of a writev (i >= 1) as its own record; 1 stops the loop. */
static long emit_one_iovec(__u32 i, void *ctx)
{
	struct iovec_walk *walk = ctx;
	if (i == 0)
		return 0;
	if (i >= walk->iovcnt)
		return 1;
	struct iovec one = {};
	if (bpf_probe_read_user(&one, sizeof(one), &walk->iov[i]) < 0)
		return 1;
	if ((__s64)one.iov_len > 0)
		emit_followed(walk->conn, walk->ev, 0, one.iov_base, one.iov_len, one.iov_len,
			      walk->capture, walk->stats);
	return 0;
}

/* The iovecs of a writev after the first, each its own record (see db_extent). bpf_loop: the
 * verifier checks the body once, where an unrolled loop made it check every path of every
 * program that sends 16 times over (40 s to load). */
static __always_inline void emit_iovecs(struct ap_conn *conn, struct ap_data_event *ev,
					struct db_extent extent, __u32 capture,
					struct ap_probe_stats *stats)
{
	struct iovec_walk walk = {
		.conn = conn,
		.ev = ev,
		.iov = extent.iov,
		.stats = stats,
		.iovcnt = extent.iovcnt,
		.capture = capture,
	};
	bpf_loop(DB_MAX_IOVECS, emit_one_iovec, &walk, 0);
	if (extent.iovcnt <= DB_MAX_IOVECS)
		return;
	/* More iovecs than are followed: a gap of unknown length. */
	emit_followed(conn, ev, 0, 0, DB_UNKNOWN_EXTENT, DB_UNKNOWN_EXTENT, 0, stats);
}

/* Where a stream's buffers come from: a socket fd of the current process (the http probe's
 * tracepoints), or an OpenSSL SSL object of it (the tls probe's uprobes). */
#define STREAM_SOCKET 0
#define STREAM_TLS 1

/* One buffer that starts no HTTP/1 message (`got` bytes of it already in `ev`, 0 when none were
 * read), on `conn_id`: an fd or an SSL pointer, as `source` says. */
static __always_inline void emit_db_buffer(struct ap_data_event *ev, __u32 got, __u64 conn_id,
					   int source, const void *buf, __s64 len,
					   struct db_extent extent, __u32 direction)
{
	if (len <= 0 || !buf || !db_probes_enabled())
		return;
	if (got == 0) {
		__u32 n = len < BRIEF_CAPTURE ? len : BRIEF_CAPTURE;
		asm volatile("%0 &= %1" : "+r"(n) : "i"(CAPTURE_MASK));
		if (n == 0 || bpf_probe_read_user(ev->data, n, buf) < 0)
			return;
		got = n;
	}
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u64 key = source == STREAM_TLS ? TLS_CONN_KEY(conn_id, pid) : FD_CONN_KEY(conn_id);
	struct ap_conn *conn = bpf_map_lookup_elem(&conns, &key);
	__u8 proto = conn ? conn->db_proto : 0;
	__u32 flags = 0;
	if (!proto) {
		proto = detect_db_protocol((const char *)ev->data, got, len);
		if (!proto)
			return;
		/* A request: an fd is checked to still hold the cached file, else (and for an SSL
		 * object whose entry SSL_free dropped) the connection starts a fresh entry. */
		conn = source == STREAM_TLS ? conn_of_ssl(conn_id)
					    : conn_of_fd(key, conn_id, PREFIX_REQUEST);
		if (!conn)
			return;
		flags = DATA_STREAM_START;
		conn->db_proto = proto;
		/* MySQL's server speaks first: its greeting goes the other way from requests (an
		 * HTTP/2 preface goes the requests' way). */
		conn->db_request_dir = proto == PROTO_MYSQL ? !direction : direction;
	}
	__u32 probe = probe_of_db_protocol(proto);
	struct ap_probe_config *config = bpf_map_lookup_elem(&probe_config, &probe);
	struct ap_probe_stats *stats = stats_of(probe);
	if (!config || !stats || !config->enabled || !in_scope(conn->netns)) {
		conn->db_gap = 1;
		return;
	}
	if (!passes_filters(probe, config, pid, conn->flow.local_port, conn->flow.remote_port)) {
		stats->filtered++;
		conn->db_gap = 1;
		return;
	}
	__u32 threshold = config->sample_threshold;
	if (direction == conn->db_request_dir) {
		flags |= DATA_REQUEST_SIDE;
		stats->offered++;
		if (!(threshold == 0xffffffff || bpf_get_prandom_u32() < threshold)) {
			stats->sampled_out++;
			flags |= DATA_SAMPLED_OUT;
		}
	}
	__u32 capture = config->capture_bytes;
	int iovecs = extent.iov && extent.iovcnt > 1;
	/* A read's bytes past its first buffer (a readv's other iovecs) are counted, not read. */
	__s64 first_len = iovecs ? len : (extent.total > len ? extent.total : len);
	fill_data_event(ev, probe, conn, conn_id, first_len, direction, threshold, flags);
	/* The scratch event may hold an HTTP request's context from this CPU: DB records carry none. */
	__builtin_memset(&ev->trace, 0, sizeof(ev->trace));
	ev->h.proto = proto;
	emit_followed(conn, ev, got, buf, len, first_len, capture, stats);
	if (iovecs) {
		ev->flags &= ~DATA_STREAM_START;
		emit_iovecs(conn, ev, extent, capture, stats);
	}
}

#endif /* APIARY_DB_H */
