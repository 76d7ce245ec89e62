/* Flows as keys of the maps that meet two ends of one connection (trace.h, propagate.h): the
 * addresses and ports in one order, IPv4-mapped IPv6 written as IPv4. */
#ifndef APIARY_FLOW_H
#define APIARY_FLOW_H

#include "common.h"

static __always_inline int is_v4_mapped(const __u8 *addr)
{
	__u64 head;
	__u16 ff;
	__builtin_memcpy(&head, addr, 8);
	__builtin_memcpy(&ff, addr + 10, 2);
	return head == 0 && addr[8] == 0 && addr[9] == 0 && ff == 0xffff;
}

/* The flow as the client sees it (`reverse`: `flow` is the server's), with IPv4-mapped IPv6
 * addresses written as IPv4, so that a dual-stack server meets an IPv4 client. False when the
 * flow has no addresses (TLS entries). */
static __always_inline int client_flow_key(const struct ap_flow *flow, int reverse,
					   struct ap_flow *key)
{
	if (!flow->family)
		return 0;
	const __u8 *local = reverse ? flow->remote_addr : flow->local_addr;
	const __u8 *remote = reverse ? flow->local_addr : flow->remote_addr;
	__builtin_memset(key, 0, sizeof(*key));
	key->local_port = reverse ? flow->remote_port : flow->local_port;
	key->remote_port = reverse ? flow->local_port : flow->remote_port;
	if (flow->family == AF_INET6 && is_v4_mapped(local) && is_v4_mapped(remote)) {
		key->family = AF_INET;
		__builtin_memcpy(key->local_addr, local + 12, 4);
		__builtin_memcpy(key->remote_addr, remote + 12, 4);
	} else {
		key->family = flow->family;
		__builtin_memcpy(key->local_addr, local, 16);
		__builtin_memcpy(key->remote_addr, remote, 16);
	}
	return 1;
}

/* Loopback addresses exist once per network namespace: a client and a server on 127.0.0.1
 * are one connection only in the same namespace. (Other addresses are unique on a host.) */
static __always_inline int is_loopback(const struct ap_flow *key)
{
	if (key->family == AF_INET)
		return key->local_addr[0] == 127;
	__u64 head, tail;
	__builtin_memcpy(&head, key->local_addr, 8);
	__builtin_memcpy(&tail, key->local_addr + 8, 8);
	return head == 0 && tail == 0x0100000000000000ULL;
}

#endif /* APIARY_FLOW_H */
