/* Writing events to the ring buffer: when to wake the reader, and the header every event
 * starts with. */
#ifndef APIARY_EVENTS_H
#define APIARY_EVENTS_H

#include "maps.h"

/* Waking the reader for every event made each traced syscall pay for a wakeup and a context
 * switch. Events are written without a wakeup; the reader drains on a timer, and is woken at
 * once when this much data waits (an eighth of the ring), so a burst cannot fill it.
 *
 * Above the mark each CPU asks for a wakeup at most once per WAKEUP_GAP_NS. A reader that stays
 * behind (busy, or niced below a workload that saturates the machine) was otherwise asked to
 * wake by every write: each traced syscall paid a forced wakeup, and the kernel time per request
 * went from 1.3 to 4.4 us in the overhead bench, just when the machine had no time to spare.
 * (Waking only the writes that cross the mark would be free, but several CPUs writing at once
 * can jump over any window, and the reader would then wait for its timer.) */
#define WAKEUP_BYTES (1024 * 1024)
#define WAKEUP_GAP_NS 1000000
/* The backlog is queried once per this many bytes a CPU wrote, not per record: the query reads
 * the ring's producer and consumer positions, cache lines the other CPU and the reader write,
 * and cost more than the program's own work in a perf profile of nginx under wrk (every record
 * paid a cache miss). A backlog may then pass the mark by up to this much per CPU before the
 * reader is woken, which the ring (4 MiB by default) has room for. */
#define WAKEUP_CHECK_BYTES (64 * 1024)

/* The flags for writing a record of `size` bytes. */
static __always_inline __u64 wakeup_flags(__u64 size)
{
	__u32 zero = 0;
	struct ap_wakeup *w = bpf_map_lookup_elem(&last_wakeup, &zero);
	if (!w)
		return BPF_RB_NO_WAKEUP;
	w->bytes += size;
	if (w->bytes < WAKEUP_CHECK_BYTES)
		return BPF_RB_NO_WAKEUP;
	w->bytes = 0;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) < WAKEUP_BYTES)
		return BPF_RB_NO_WAKEUP;
	__u64 now = bpf_ktime_get_ns();
	if (now - w->last_ns < WAKEUP_GAP_NS)
		return BPF_RB_NO_WAKEUP;
	w->last_ns = now;
	return BPF_RB_FORCE_WAKEUP;
}

/* Everything of a header but the cgroup and comm, which callers fill from helpers or a cache. */
static __always_inline void fill_header_ids(struct ap_event_header *h, __u8 kind, __u8 probe,
					    __u32 netns)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	h->kind = kind;
	h->probe = probe;
	h->proto = PROTO_HTTP1; /* the only protocol yet (apiary.h); 0 in other records too */
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->netns = netns;
	h->ts_ns = bpf_ktime_get_ns();
}

static __always_inline void fill_header(struct ap_event_header *h, __u8 kind, __u8 probe, __u32 netns)
{
	fill_header_ids(h, kind, probe, netns);
	h->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

#endif /* APIARY_EVENTS_H */
