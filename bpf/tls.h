/* The tls probe: OpenSSL 3's plaintext, from uprobes on SSL_write(_ex) and SSL_read(_ex) and
 * uretprobes on the reads (apiary.bpf.c). HTTP/1 takes the message path; the protocols found
 * per connection (db.h; HTTP/2 over TLS is the one that matters) follow the SSL object's
 * stream, with both the tls probe and theirs enabled. */
#ifndef APIARY_TLS_H
#define APIARY_TLS_H

#include "message.h"
#include "db.h"

static __always_inline struct ap_reads_in_flight *thread_reads(int create)
{
	return bpf_task_storage_get(&reads_in_flight, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* One buffer of plaintext: an HTTP/1 message start goes the HTTP/1 way (message.h) unless its
 * connection is one db.h recognised (HTTP/2 over TLS); anything else may start such a
 * connection (db.h). */
static __always_inline void tls_emit(__u64 ssl, const void *buf, __s64 len, __u32 direction)
{
	if (!probe_enabled(PROBE_TLS))
		return;
	struct ap_data_event *ev = scratch_event();
	__u32 got = 0;
	if (!ev)
		return;
	struct db_extent whole = { .total = len };
	int kind = read_message_start(ev, buf, len, &got);
	if (kind == PREFIX_NONE) {
		emit_db_buffer(ev, got, ssl, STREAM_TLS, buf, len, whole, direction);
		return;
	}
	struct ap_conn *conn = conn_of_ssl(ssl);
	if (!conn)
		return;
	if (conn->db_proto) {
		emit_db_buffer(ev, got, ssl, STREAM_TLS, buf, len, whole, direction);
		return;
	}
	emit_data(PROBE_TLS, conn, ev, got, ssl, kind, buf, len, direction);
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

#endif /* APIARY_TLS_H */
