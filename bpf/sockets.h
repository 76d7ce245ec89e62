/* The http probe: the buffers of sends and reads on sockets, from the syscall tracepoints
 * (apiary.bpf.c); the probes of protocols found per connection (db.h) ride on them. */
#ifndef APIARY_SOCKETS_H
#define APIARY_SOCKETS_H

#include "message.h"
#include "db.h"

/* Whether the socket tracepoints have anything to do: the http probe, or a protocol found per
 * connection (db.h). With http on, this is the one lookup it always was. */
static __always_inline int socket_probes_enabled(void)
{
	return probe_enabled(PROBE_HTTP) || db_probes_enabled();
}

/* One buffer sent or read on a socket: an HTTP/1 message start goes the HTTP/1 way
 * (message.h), unless its connection is one db.h recognised (then it is that protocol's
 * bytes); anything else may be a database protocol's (db.h). `len` bytes are at `buf`; the
 * syscall moved `extent` (db.h: the bytes of the iovecs after the first). */
static __always_inline void socket_buffer(__u32 fd, const void *buf, __s64 len,
					  struct db_extent extent, __u32 direction)
{
	struct ap_data_event *ev = scratch_event();
	__u32 got = 0;
	if (!ev)
		return;
	int kind = read_message_start(ev, buf, len, &got);
	if (kind == PREFIX_NONE) {
		emit_db_buffer(ev, got, fd, STREAM_SOCKET, buf, len, extent, direction);
		return;
	}
	if (!probe_enabled(PROBE_HTTP)) {
		emit_db_buffer(ev, got, fd, STREAM_SOCKET, buf, len, extent, direction);
		return;
	}
	struct ap_conn *conn = conn_of_fd(FD_CONN_KEY(fd), fd, kind);
	if (!conn)
		return;
	if (conn->db_proto) {
		emit_db_buffer(ev, got, fd, STREAM_SOCKET, buf, len, extent, direction);
		return;
	}
	emit_data(PROBE_HTTP, conn, ev, got, fd, kind, buf, len, direction);
}

/* A send of `len` bytes at `buf`, or of an iovec array (`iov`, `iovcnt`) whose first entry
 * they are. */
static __always_inline void socket_send(__u32 fd, const void *buf, __s64 len,
					const struct iovec *iov, __u32 iovcnt)
{
	if (len <= 0 || !socket_probes_enabled())
		return;
	struct db_extent extent = { .total = len, .iov = iov, .iovcnt = iovcnt };
	socket_buffer(fd, buf, len, extent, DIR_EGRESS);
}

/* Which read it was, so how its second argument points at its bytes and where its flags are. */
#define READ_BUFFER 0	/* read: the buffer */
#define READ_IOVEC 1	/* readv: an iovec array */
#define READ_MSGHDR 2	/* recvmsg: a msghdr holding an iovec array; flags the 3rd argument */
#define READ_RECVFROM 3 /* recvfrom: the buffer; flags the 4th argument */

/* linux/socket.h's, which vmlinux.h (enums and types only) does not carry. */
#define AP_MSG_PEEK 2

/* A read on a socket returned `ret` bytes. Its fd and buffer are the syscall's own arguments,
 * still in the registers the task saved on entry (the kernel does not change them): no program
 * on the syscall's entry, and nothing kept per thread between entry and exit. */
static __always_inline void finish_read(__s64 ret, __u32 how)
{
	if (ret <= 0 || !socket_probes_enabled())
		return;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs)
		return;
	/* A peek leaves its bytes to be read again: seen twice, a stream would go on with a
	 * duplicate (a Redis reply paired with the next command, an HPACK block applied twice). */
	if ((how == READ_RECVFROM && (regs->r10 & AP_MSG_PEEK)) ||
	    (how == READ_MSGHDR && (regs->dx & AP_MSG_PEEK)))
		return;
	__u32 fd = regs->di;
	__u64 buf = regs->si;
	struct db_extent extent = { .total = ret };
	if (how == READ_MSGHDR) {
		struct ap_msghdr msg = {};
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)buf) < 0 || !msg.msg_iov)
			return;
		buf = (__u64)msg.msg_iov;
	}
	if (how == READ_IOVEC || how == READ_MSGHDR) {
		struct iovec first = {};
		if (bpf_probe_read_user(&first, sizeof(first), (void *)buf) < 0)
			return;
		buf = (__u64)first.iov_base;
		if ((__s64)first.iov_len < ret)
			ret = first.iov_len;
	}
	socket_buffer(fd, (void *)buf, ret, extent, DIR_INGRESS);
}

#endif /* APIARY_SOCKETS_H */
