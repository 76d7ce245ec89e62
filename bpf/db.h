/* Protocols found once per connection (Redis, PostgreSQL, MySQL/MariaDB), on the http probe's
 * socket tracepoints. The HTTP/1 path (message.h) classifies every buffer by its first bytes;
 * only a buffer it does not take comes here, and only while one of these probes is enabled.
 *
 * A connection is recognised from a request's first bytes (protocol_<name>.h; MySQL's from the
 * server's greeting, which goes the other way), and the result kept in its `conns` entry
 * (db_proto, db_request_dir): later buffers cost one lookup and are never classified again.
 * Unlike HTTP/1, EVERY buffer of a recognised connection is sent, in both directions, as an
 * EV_DATA record of the protocol's own probe (PROBE_REDIS, ...) with DATA_REQUEST_SIDE on the
 * requests' side: userspace follows the byte stream (pipelined commands, replies split over
 * reads, a value too large to capture whose length is known), and a buffer left out would
 * desynchronise it. Nothing is paired in the kernel. Sampling marks a
 * request-side buffer DATA_SAMPLED_OUT (its commands count in RED, no span leaves) but never
 * drops a buffer, for the same reason; so a low rate saves export, not kernel time. */
#ifndef APIARY_DB_H
#define APIARY_DB_H

#include "message.h"
#include "protocol_redis.h"
#include "protocol_postgres.h"
#include "protocol_mysql.h"

/* How many bytes a syscall moved beyond the `len` at its first buffer: `total` (a readv's
 * return), or, for a writev, the sum of its iovecs, read only for a connection of this file's
 * (HTTP pays nothing for it). The stream userspace follows needs every byte counted: a writev
 * seen as its first iovec alone would shift every message after it. */
struct db_extent {
	__s64 total;
	const struct iovec *iov;
	__u32 iovcnt;
};

/* iovecs summed; a writev with more is counted as a gap userspace cannot cross. */
#define DB_MAX_IOVECS 16
#define DB_UNKNOWN_EXTENT (1LL << 40)

static __always_inline __s64 db_total(struct db_extent extent)
{
	if (!extent.iov || extent.iovcnt <= 1)
		return extent.total;
	__s64 total = 0;
	for (int i = 0; i < DB_MAX_IOVECS; i++) {
		if (i >= extent.iovcnt)
			return total;
		struct iovec one = {};
		if (bpf_probe_read_user(&one, sizeof(one), &extent.iov[i]) < 0)
			return total + DB_UNKNOWN_EXTENT;
		total += one.iov_len;
	}
	return total + DB_UNKNOWN_EXTENT;
}

/* Whether any probe of this file is on: the socket tracepoints then run for it too. */
static __always_inline int db_probes_enabled(void)
{
	return probe_enabled(PROBE_REDIS) || probe_enabled(PROBE_POSTGRES) ||
	       probe_enabled(PROBE_MYSQL);
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
	return 0;
}

static __always_inline __u32 probe_of_db_protocol(__u8 proto)
{
	if (proto == PROTO_POSTGRES)
		return PROBE_POSTGRES;
	return proto == PROTO_MYSQL ? PROBE_MYSQL : PROBE_REDIS;
}

/* One socket buffer that starts no HTTP/1 message (`got` bytes of it already in `ev`, 0 when
 * none were read). */
static __always_inline void emit_db_buffer(struct ap_data_event *ev, __u32 got, __u32 fd,
					   const void *buf, __s64 len, struct db_extent extent,
					   __u32 direction)
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
	__u64 key = FD_CONN_KEY(fd);
	struct ap_conn *conn = bpf_map_lookup_elem(&conns, &key);
	__u8 proto = conn ? conn->db_proto : 0;
	if (!proto) {
		proto = detect_db_protocol((const char *)ev->data, got, len);
		if (!proto)
			return;
		/* A request: checks the fd still holds the cached file, else starts a fresh entry. */
		conn = conn_of_fd(key, fd, PREFIX_REQUEST);
		if (!conn)
			return;
		conn->db_proto = proto;
		/* MySQL's server speaks first: its greeting goes the other way from requests. */
		conn->db_request_dir = proto == PROTO_MYSQL ? !direction : direction;
	}
	__u32 probe = probe_of_db_protocol(proto);
	struct ap_probe_config *config = bpf_map_lookup_elem(&probe_config, &probe);
	struct ap_probe_stats *stats = stats_of(probe);
	if (!config || !stats || !config->enabled)
		return;
	if (!in_scope(conn->netns))
		return;
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!passes_filters(probe, config, pid, conn->flow.local_port, conn->flow.remote_port)) {
		stats->filtered++;
		return;
	}
	__u32 threshold = config->sample_threshold;
	__u32 flags = 0;
	if (direction == conn->db_request_dir) {
		flags = DATA_REQUEST_SIDE;
		stats->offered++;
		if (!(threshold == 0xffffffff || bpf_get_prandom_u32() < threshold)) {
			stats->sampled_out++;
			flags |= DATA_SAMPLED_OUT;
		}
	}
	__u32 captured = config->capture_bytes;
	if ((__s64)captured > len)
		captured = len;
	if (captured > MAX_CAPTURE)
		captured = MAX_CAPTURE;
	if (captured > got) {
		asm volatile("%0 &= %1" : "+r"(captured) : "i"(CAPTURE_MASK));
		if (bpf_probe_read_user(ev->data, captured, buf) < 0)
			captured = got;
	}
	fill_data_event(ev, probe, conn, fd, db_total(extent), direction, threshold, flags);
	/* The scratch event may hold an HTTP request's context from this CPU: DB records carry none. */
	__builtin_memset(&ev->trace, 0, sizeof(ev->trace));
	ev->h.proto = proto;
	ev->captured = captured;
	asm volatile("%0 &= %1" : "+r"(captured) : "i"(CAPTURE_MASK));
	__u64 size = offsetof(struct ap_data_event, data) + captured;
	if (bpf_ringbuf_output(&events, ev, size, wakeup_flags(size)) < 0)
		stats->lost++;
	else
		stats->emitted++;
}

#endif /* APIARY_DB_H */
