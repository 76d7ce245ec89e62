// SPDX-License-Identifier: GPL-2.0
/* Apiary's eBPF programs (CO-RE): the entry points, one per attach point (probes/src/loader.rs
 * finds them by name). What they do is in the headers (see bpf/README.md). Every knob is read
 * from a map at run time, so a config change is a map write, never a reload. Only tracepoints
 * and uprobes are used (and sock_ops, for trace context across nodes): this kernel has no
 * kprobes and refuses fentry/fexit. */
#include "common.h"
#include "tracepoints.h"
#include "sockets.h"
#include "tls.h"
#include "tcp.h"
#include "process.h"

char LICENSE[] SEC("license") = "GPL";

/* --- http: sends and reads on sockets (sockets.h) ---------------------------------------- */

SEC("tracepoint/syscalls/sys_enter_write")
int http_enter_write(struct ap_sys_enter_ctx *ctx)
{
	socket_send(ctx->args[0], (void *)ctx->args[1], ctx->args[2], 0, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int http_enter_sendto(struct ap_sys_enter_ctx *ctx)
{
	socket_send(ctx->args[0], (void *)ctx->args[1], ctx->args[2], 0, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_writev")
int http_enter_writev(struct ap_sys_enter_ctx *ctx)
{
	if (!socket_probes_enabled())
		return 0;
	struct iovec first = {};
	if (bpf_probe_read_user(&first, sizeof(first), (void *)ctx->args[1]) < 0)
		return 0;
	socket_send(ctx->args[0], first.iov_base, first.iov_len, (void *)ctx->args[1], ctx->args[2]);
	return 0;
}

/* sendmsg(fd, msg, flags): its iovecs, as writev's (gRPC's C core and Go send this way). */
SEC("tracepoint/syscalls/sys_enter_sendmsg")
int http_enter_sendmsg(struct ap_sys_enter_ctx *ctx)
{
	if (!socket_probes_enabled())
		return 0;
	struct ap_msghdr msg = {};
	if (bpf_probe_read_user(&msg, sizeof(msg), (void *)ctx->args[1]) < 0 || !msg.msg_iov ||
	    msg.msg_iovlen == 0)
		return 0;
	struct iovec first = {};
	if (bpf_probe_read_user(&first, sizeof(first), msg.msg_iov) < 0)
		return 0;
	socket_send(ctx->args[0], first.iov_base, first.iov_len, msg.msg_iov, msg.msg_iovlen);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int http_exit_read(struct ap_sys_exit_ctx *ctx)
{
	finish_read(ctx->ret, READ_BUFFER);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int http_exit_recvfrom(struct ap_sys_exit_ctx *ctx)
{
	finish_read(ctx->ret, READ_RECVFROM);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_readv")
int http_exit_readv(struct ap_sys_exit_ctx *ctx)
{
	finish_read(ctx->ret, READ_IOVEC);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int http_exit_recvmsg(struct ap_sys_exit_ctx *ctx)
{
	finish_read(ctx->ret, READ_MSGHDR);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int http_enter_close(struct ap_sys_enter_ctx *ctx)
{
	forget_conn(FD_CONN_KEY(ctx->args[0]));
	return 0;
}

/* --- tls: OpenSSL 3 plaintext (tls.h) ----------------------------------------------------- */

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

/* --- tcp: connection lifecycle and bytes (tcp.h) ------------------------------------------ */

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

/* --- trace context across nodes: TCP header options (propagate.h) ------------------------ */

SEC("sockops")
int trace_sock_ops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		ask_option_callbacks(skops, 1);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		ask_option_callbacks(skops, 0);
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		reserve_context_option(skops);
		break;
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		write_context_option(skops);
		break;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		read_context_option(skops);
		break;
	}
	return 1;
}

/* --- process: exec and exit (process.h) ---------------------------------------------------- */

SEC("tracepoint/sched/sched_process_exec")
int process_exec(struct ap_exec_ctx *ctx)
{
	struct ap_proc_event *ev = process_event(EV_EXEC);
	if (!ev)
		return 0;
	bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename),
				  (void *)ctx + (ctx->filename_loc & 0xffff));
	bpf_ringbuf_submit(ev, wakeup_flags(sizeof(*ev)));
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
	bpf_ringbuf_submit(ev, wakeup_flags(sizeof(*ev)));
	return 0;
}
