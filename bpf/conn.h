/* Connection tracking for the http and tls probes: the entry in `conns` (maps.h) a message
 * start is counted against, found from an fd of the current process (its socket, flow and
 * netns read once) or from an OpenSSL SSL pointer, and dropped on close() or SSL_free(). */
#ifndef APIARY_CONN_H
#define APIARY_CONN_H

#include "maps.h"
#include "protocol.h"
#include "trace.h"

/* The keys of `conns` (see the map): an fd of the current process, or an SSL object of it. */
#define FD_CONN_KEY(fd) ((bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | (__u32)(fd))
#define TLS_CONN_KEY(ssl, pid)                                                              \
	((__u64)(ssl) | ((__u64)((pid) & 0xffff) << 47) | (1ULL << 63))

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

/* A new connection entry, built in per-CPU scratch (it is too large for the BPF stack). Its
 * request fields are unset: nothing waits. */
static __always_inline struct ap_conn *fresh_conn(__u64 file, __u32 netns)
{
	__u32 zero = 0;
	struct ap_conn *fresh = bpf_map_lookup_elem(&conn_scratch, &zero);
	if (!fresh)
		return 0;
	fresh->file = file;
	fresh->sock = 0;
	fresh->netns = netns;
	fresh->keep = KEEP_UNDECIDED;
	fresh->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&fresh->comm, sizeof(fresh->comm));
	fresh->in_flight = 0;
	fresh->waiting = 0;
	fresh->seq = 0;
	fresh->reader_tid = 0;
	fresh->db_proto = 0;
	fresh->db_gap = 0;
	fresh->req_route = 0;
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
	if (BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP)
		fresh->sock = (__u64)sk;
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

/* Drops a connection's entry. Most closed fds and freed SSL objects never had one: a lookup takes no lock, a delete does. */
static __always_inline void forget_conn(__u64 key)
{
	struct ap_conn *conn = bpf_map_lookup_elem(&conns, &key);
	if (conn) {
		trace_forget(conn);
		bpf_map_delete_elem(&conns, &key);
	}
}

#endif /* APIARY_CONN_H */
