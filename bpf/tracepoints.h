/* The contexts of the tracepoints the programs attach to (apiary.bpf.c), laid out as in
 * /sys/kernel/tracing/events/.../format. Declared here (not taken from vmlinux.h) so they carry
 * no CO-RE relocations. */
#ifndef APIARY_TRACEPOINTS_H
#define APIARY_TRACEPOINTS_H

#include "common.h"

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

/* The head of a sendmsg/recvmsg's `struct msghdr` as user space lays it out (x86_64): the
 * iovecs are all the probes read of it. */
struct ap_msghdr {
	void *msg_name;
	__u64 msg_namelen;
	struct iovec *msg_iov;
	__u64 msg_iovlen;
};

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

#endif /* APIARY_TRACEPOINTS_H */
