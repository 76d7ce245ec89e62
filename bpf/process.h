/* The process probe: exec and exit. */
#ifndef APIARY_PROCESS_H
#define APIARY_PROCESS_H

#include "events.h"
#include "filters.h"

static __always_inline struct ap_proc_event *process_event(__u8 kind)
{
	__u32 probe = PROBE_PROCESS;
	struct ap_probe_config *config = bpf_map_lookup_elem(&probe_config, &probe);
	struct ap_probe_stats *stats = stats_of(probe);
	if (!config || !stats || !config->enabled)
		return 0;
	__u32 netns = task_netns();
	if (!in_scope(netns))
		return 0;
	stats->offered++;
	struct ap_proc_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		stats->lost++;
		return 0;
	}
	stats->emitted++;
	fill_header(&ev->h, kind, PROBE_PROCESS, netns);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->exit_code = 0;
	ev->filename[0] = 0;
	return ev;
}

#endif /* APIARY_PROCESS_H */
