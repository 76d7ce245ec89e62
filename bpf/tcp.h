/* The tcp probe: TCP state changes and retransmits, with the socket's byte counters. */
#ifndef APIARY_TCP_H
#define APIARY_TCP_H

#include "events.h"
#include "filters.h"

static __always_inline int tcp_gate(struct sock *sk, __u32 *netns, struct ap_probe_stats **stats,
				    struct ap_probe_config **config)
{
	__u32 probe = PROBE_TCP;
	*config = bpf_map_lookup_elem(&probe_config, &probe);
	*stats = stats_of(probe);
	if (!*config || !*stats || !(*config)->enabled)
		return 0;
	*netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	/* State changes often run in softirq context: scope by the socket's netns only. */
	__u32 zero = 0;
	struct ap_scope_config *scope = bpf_map_lookup_elem(&scope_config, &zero);
	if (scope && scope->by_netns && !bpf_map_lookup_elem(&scope_netns, netns))
		return 0;
	return 1;
}

static __always_inline void flow_from_fields(struct ap_flow *flow, __u16 family, __u16 sport, __u16 dport,
					     const __u8 *saddr, const __u8 *daddr, const __u8 *saddr6,
					     const __u8 *daddr6)
{
	flow->family = family;
	flow->local_port = sport;
	flow->remote_port = dport;
	flow->pad = 0;
	__builtin_memset(flow->local_addr, 0, 16);
	__builtin_memset(flow->remote_addr, 0, 16);
	if (family == AF_INET) {
		__builtin_memcpy(flow->local_addr, saddr, 4);
		__builtin_memcpy(flow->remote_addr, daddr, 4);
	} else {
		__builtin_memcpy(flow->local_addr, saddr6, 16);
		__builtin_memcpy(flow->remote_addr, daddr6, 16);
	}
}

/* `flow` comes from the tracepoint: by the time a socket closes, its own address fields may
 * already be cleared. */
static __always_inline void emit_tcp(struct sock *sk, struct ap_flow *flow, __u8 kind, int old_state,
				     int new_state)
{
	__u32 netns;
	struct ap_probe_stats *stats;
	struct ap_probe_config *config;
	if (!tcp_gate(sk, &netns, &stats, &config))
		return;
	struct ap_port_filter_key key = { .probe = PROBE_TCP, .port = flow->local_port };
	__u8 *rule_a = bpf_map_lookup_elem(&port_filter, &key);
	key.port = flow->remote_port;
	__u8 *rule_b = bpf_map_lookup_elem(&port_filter, &key);
	if ((rule_a && *rule_a == FILTER_EXCLUDE) || (rule_b && *rule_b == FILTER_EXCLUDE) ||
	    ((config->filter_flags & HAS_PORT_INCLUDE) &&
	     !((rule_a && *rule_a == FILTER_INCLUDE) || (rule_b && *rule_b == FILTER_INCLUDE)))) {
		stats->filtered++;
		return;
	}
	stats->offered++;
	struct ap_tcp_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		stats->lost++;
		return;
	}
	fill_header(&ev->h, kind, PROBE_TCP, netns);
	ev->flow = *flow;
	ev->sock = (__u64)sk;
	ev->old_state = old_state;
	ev->new_state = new_state;
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	ev->bytes_sent = BPF_CORE_READ(tp, bytes_sent);
	ev->bytes_received = BPF_CORE_READ(tp, bytes_received);
	ev->bytes_acked = BPF_CORE_READ(tp, bytes_acked);
	ev->retransmits = BPF_CORE_READ(tp, total_retrans);
	ev->pad = 0;
	bpf_ringbuf_submit(ev, wakeup_flags(sizeof(*ev)));
	stats->emitted++;
}

#endif /* APIARY_TCP_H */
