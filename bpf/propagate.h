/* Trace context across nodes: a client request's trace id, span id and sampling decision go to
 * the peer's node in a TCP header option, written by sock_ops on the segment that starts the
 * request and read by the peer node's sock_ops into a map by socket, with the segment's
 * sequence number, where its server's read of that request finds it
 * (docs/architecture.md#connected-traces).
 *
 * - The client's send (a syscall tracepoint, trace.h) notes the request's context with the
 *   sequence number of its first byte (the socket's write_seq then) in outgoing_contexts,
 *   keyed by the socket.
 * - sock_ops on the client's socket (callbacks asked for when it connected) reserves the
 *   option's room on every segment until that byte is acknowledged, and writes the option on
 *   the segment that starts at it (so also on a retransmit of it).
 * - sock_ops on the server's socket reads the option into incoming_contexts (by socket) with
 *   the segment's sequence number; a server read joins it only if the request it read starts at that
 *   number (the socket's copied_seq less the bytes read). Anything else is a root: a context
 *   that does not fit is never guessed onto another request.
 *
 * Only between Apiary nodes, only on connections made while the sock_ops program is attached,
 * and not through middleboxes that strip unknown options (the peer then sees a root). TLS
 * connections are followed through OpenSSL objects without their socket, so they carry no
 * context. Loopback connections are joined on their node (trace.h) and carry none either. */
#ifndef APIARY_PROPAGATE_H
#define APIARY_PROPAGATE_H

#include "maps.h"
#include "flow.h"

/* A context older than this is taken as a reused flow's, not the request's. */
#define REMOTE_CONTEXT_MAX_AGE_NS (10ULL * 1000000000ULL)

/* The node's settings when propagation is on, else NULL. */
static __always_inline struct ap_trace_config *propagation(void)
{
	__u32 zero = 0;
	struct ap_trace_config *config = bpf_map_lookup_elem(&trace_config, &zero);
	return config && config->propagate ? config : 0;
}

static __always_inline int propagation_on(void)
{
	return propagation() != 0;
}

/* A sequence number of a struct tcp_sock, at an offset from the kernel's BTF (apiary.h). */
static __always_inline __u32 tcp_seq_at(__u64 sock, __u32 offset)
{
	__u32 value = 0;
	bpf_probe_read_kernel(&value, sizeof(value), (void *)(sock + offset));
	return value;
}

/* Rewrites an entry in place when there is one (an LRU map update allocates and frees under
 * the LRU's locks, see note_client_request); a reader sees seq 0 or a changed seq meanwhile,
 * and takes nothing (load_context). */
static __always_inline void store_context(void *map, __u64 *key, __u32 seq,
					  const __u8 *trace_id, const __u8 *span_id, __u64 now)
{
	struct ap_flow_context *entry = bpf_map_lookup_elem(map, key);
	if (entry) {
		*(volatile __u32 *)&entry->seq = 0;
		barrier();
		__builtin_memcpy(entry->trace_id, trace_id, 16);
		__builtin_memcpy(entry->span_id, span_id, 8);
		entry->ts = now;
		barrier();
		*(volatile __u32 *)&entry->seq = seq;
		return;
	}
	struct ap_flow_context value = { .seq = seq, .ts = now };
	__builtin_memcpy(value.trace_id, trace_id, 16);
	__builtin_memcpy(value.span_id, span_id, 8);
	bpf_map_update_elem(map, key, &value, BPF_ANY);
}

/* The ids of an entry when it is the context of the bytes starting at `seq`, read whole. */
static __always_inline int load_context(struct ap_flow_context *entry, __u32 seq,
					struct ap_flow_context *out)
{
	__u32 at = *(volatile __u32 *)&entry->seq;
	barrier();
	if (at == 0 || at != seq)
		return 0;
	__builtin_memcpy(out->trace_id, entry->trace_id, 16);
	__builtin_memcpy(out->span_id, entry->span_id, 8);
	out->ts = entry->ts;
	barrier();
	return *(volatile __u32 *)&entry->seq == at;
}

/* A client request starts on `conn` (tracepoint, before the bytes reach TCP): its context is
 * sent with the segment that starts at the socket's next sequence number. */
static __always_inline void note_remote_request(struct ap_conn *conn, struct ap_trace_ctx *t,
						__u64 now)
{
	struct ap_flow flow;
	struct ap_trace_config *config;
	if (!conn->sock || !(config = propagation()) || !client_flow_key(&conn->flow, 0, &flow) ||
	    is_loopback(&flow))
		return;
	__u64 key = conn->sock;
	__u32 start = tcp_seq_at(conn->sock, config->write_seq_offset);
	store_context(&outgoing_contexts, &key, start, t->trace_id, t->span_id, now);
}

/* A server request of `len` bytes was read on `conn` (at the read's exit): the context its
 * client's node sent with its first byte, if any. */
static __always_inline int join_remote(struct ap_conn *conn, struct ap_trace_ctx *t, __s64 len,
				       __u64 now)
{
	struct ap_trace_config *config;
	if (!conn->sock || !(config = propagation()))
		return 0;
	__u64 key = conn->sock;
	struct ap_flow_context *entry = bpf_map_lookup_elem(&incoming_contexts, &key);
	if (!entry)
		return 0;
	/* copied_seq is past the bytes this read took; a peek (not past them) or a read that
	 * did not start at the request does not match, and the request stays a root. */
	__u32 start = tcp_seq_at(conn->sock, config->copied_seq_offset) - (__u32)len;
	struct ap_flow_context ctx;
	if (!load_context(entry, start, &ctx) || now < ctx.ts ||
	    now - ctx.ts > REMOTE_CONTEXT_MAX_AGE_NS) {
		t->link = LINK_ROOT_REMOTE_ORDER;
		return 0;
	}
	__builtin_memcpy(t->trace_id, ctx.trace_id, 16);
	__builtin_memcpy(t->parent_span_id, ctx.span_id, 8);
	t->keep = ctx.span_id[0] >> 7;
	t->link = LINK_REMOTE;
	return 1;
}

/* --- sock_ops ----------------------------------------------------------------------------- */

/* A sock_ops socket as the contexts' maps key it (see maps.h); 0 without a full socket. The
 * address is only a key, never dereferenced (root may turn a pointer into a number). */
static __always_inline __u64 sock_key(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	return (__u64)sk;
}

/* A connection is made: a client's sends get the header option callbacks, a server's
 * segments with unknown options the parse callback. (A socket connected before the program
 * was attached gets neither, and carries no context.) */
static __always_inline void ask_option_callbacks(struct bpf_sock_ops *skops, int client)
{
	if (!propagation_on())
		return;
	/* A context left by the socket that had this address before is not this one's. */
	__u64 key = sock_key(skops);
	if (key)
		bpf_map_delete_elem(client ? (void *)&outgoing_contexts : (void *)&incoming_contexts,
				    &key);
	__u32 flags = client ? BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG
			     : BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | flags);
}

/* The room for the option, on every segment of a client socket while its request's first
 * byte is not acknowledged (the kernel also asks without a segment, to size them). */
static __always_inline void reserve_context_option(struct bpf_sock_ops *skops)
{
	__u64 key = sock_key(skops);
	if (!key)
		return;
	struct ap_flow_context *entry = bpf_map_lookup_elem(&outgoing_contexts, &key);
	if (!entry || (__s32)(skops->snd_una - entry->seq) > 0)
		return;
	bpf_reserve_hdr_opt(skops, TRACE_OPTION_BYTES, 0);
}

/* The option itself, on the segment that starts the request (room left unused is filled with
 * no-op options by the kernel). */
static __always_inline void write_context_option(struct bpf_sock_ops *skops)
{
	struct tcphdr *th = (void *)(long)skops->skb_data;
	if ((void *)(th + 1) > (void *)(long)skops->skb_data_end)
		return;
	__u32 seq = bpf_ntohl(th->seq);
	__u32 header = th->doff * 4;
	if (skops->skb_len <= header)
		return; /* no payload: an ACK, not the request */
	__u64 key = sock_key(skops);
	if (!key)
		return;
	struct ap_flow_context *entry = bpf_map_lookup_elem(&outgoing_contexts, &key);
	struct ap_flow_context ctx;
	if (!entry || !load_context(entry, seq, &ctx))
		return;
	__u8 option[TRACE_OPTION_BYTES] = { TRACE_OPTION_KIND, TRACE_OPTION_BYTES,
					    TRACE_OPTION_EXID_HI, TRACE_OPTION_EXID_LO };
	__builtin_memcpy(option + 4, ctx.trace_id, 16);
	__builtin_memcpy(option + 20, ctx.span_id, 8);
	bpf_store_hdr_opt(skops, option, TRACE_OPTION_BYTES, 0);
}

/* A server socket got a segment with an unknown option: ours, if it is, for the read. */
static __always_inline void read_context_option(struct bpf_sock_ops *skops)
{
	struct tcphdr *th = (void *)(long)skops->skb_data;
	if ((void *)(th + 1) > (void *)(long)skops->skb_data_end)
		return;
	__u32 seq = bpf_ntohl(th->seq);
	/* Searched by kind, length 4 and the experiment id (bpf_load_hdr_opt's rule for 253). */
	__u8 option[TRACE_OPTION_BYTES] = { TRACE_OPTION_KIND, 4, TRACE_OPTION_EXID_HI,
					    TRACE_OPTION_EXID_LO };
	if (bpf_load_hdr_opt(skops, option, TRACE_OPTION_BYTES, 0) != TRACE_OPTION_BYTES)
		return;
	__u64 key = sock_key(skops);
	if (!key)
		return;
	/* The request's first segment again (a retransmit), or the later segments of one large
	 * send (the kernel copies the header to each): the first one seen is the start. */
	struct ap_flow_context *entry = bpf_map_lookup_elem(&incoming_contexts, &key);
	if (entry) {
		__u64 have, got;
		__builtin_memcpy(&have, entry->span_id, 8);
		__builtin_memcpy(&got, option + 20, 8);
		if (have == got)
			return;
	}
	store_context(&incoming_contexts, &key, seq, option + 4, option + 20, bpf_ktime_get_ns());
}

#endif /* APIARY_PROPAGATE_H */
