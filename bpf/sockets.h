/* The http probe: the buffers of sends and reads on sockets, from the syscall tracepoints
 * (apiary.bpf.c). */
#ifndef APIARY_SOCKETS_H
#define APIARY_SOCKETS_H

#include "message.h"

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

#endif /* APIARY_SOCKETS_H */
