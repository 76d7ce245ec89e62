/* Whether an event is wanted at all: the probe's switch and counters (probe_config,
 * probe_stats), the node's scope (scope_config: cgroups, network namespaces), and the probe's
 * pid/port/cgroup filters. Sampling is per request and lives with the requests (message.h). */
#ifndef APIARY_FILTERS_H
#define APIARY_FILTERS_H

#include "maps.h"

#define MAX_CGROUP_DEPTH 16

static __always_inline struct ap_probe_stats *stats_of(__u32 probe)
{
	return bpf_map_lookup_elem(&probe_stats, &probe);
}

static __always_inline int probe_enabled(__u32 probe)
{
	struct ap_probe_config *config = bpf_map_lookup_elem(&probe_config, &probe);
	return config && config->enabled;
}

static __always_inline int in_scope(__u32 netns)
{
	__u32 zero = 0;
	struct ap_scope_config *scope = bpf_map_lookup_elem(&scope_config, &zero);
	if (!scope || (!scope->by_cgroup && !scope->by_netns))
		return 1;
	if (scope->by_netns && bpf_map_lookup_elem(&scope_netns, &netns))
		return 1;
	if (scope->by_cgroup) {
		for (int level = 0; level < MAX_CGROUP_DEPTH; level++) {
			__u64 id = bpf_get_current_ancestor_cgroup_id(level);
			if (id == 0)
				break;
			if (bpf_map_lookup_elem(&scope_cgroups, &id))
				return 1;
		}
	}
	return 0;
}

/* Filters of one probe: exclusions first, then include lists where they exist. A kind of
 * filter with no rules costs nothing: its map lookups (and the cgroup ancestry walk, up to
 * MAX_CGROUP_DEPTH helper calls and lookups) run only when the config holds such rules. */
static __always_inline int passes_filters(__u32 probe, struct ap_probe_config *config, __u32 pid,
					  __u16 port_a, __u16 port_b)
{
	__u32 flags = config->filter_flags;
	if (flags & HAS_PID_RULES) {
		struct ap_pid_filter_key pid_key = { .probe = probe, .pid = pid };
		__u8 *pid_rule = bpf_map_lookup_elem(&pid_filter, &pid_key);
		if (pid_rule && *pid_rule == FILTER_EXCLUDE)
			return 0;
		if ((flags & HAS_PID_INCLUDE) && !(pid_rule && *pid_rule == FILTER_INCLUDE))
			return 0;
	}

	if (flags & HAS_PORT_RULES) {
		struct ap_port_filter_key port_key = { .probe = probe, .port = port_a };
		__u8 *rule_a = bpf_map_lookup_elem(&port_filter, &port_key);
		port_key.port = port_b;
		__u8 *rule_b = bpf_map_lookup_elem(&port_filter, &port_key);
		if ((rule_a && *rule_a == FILTER_EXCLUDE) || (rule_b && *rule_b == FILTER_EXCLUDE))
			return 0;
		if ((flags & HAS_PORT_INCLUDE) &&
		    !((rule_a && *rule_a == FILTER_INCLUDE) || (rule_b && *rule_b == FILTER_INCLUDE)))
			return 0;
	}

	if (flags & HAS_CGROUP_RULES) {
		int included = 0;
		for (int level = 0; level < MAX_CGROUP_DEPTH; level++) {
			struct ap_cgroup_filter_key key = { .probe = probe };
			key.cgroup_id = bpf_get_current_ancestor_cgroup_id(level);
			if (key.cgroup_id == 0)
				break;
			__u8 *rule = bpf_map_lookup_elem(&cgroup_filter, &key);
			if (rule && *rule == FILTER_EXCLUDE)
				return 0;
			if (rule && *rule == FILTER_INCLUDE)
				included = 1;
		}
		if ((flags & HAS_CGROUP_INCLUDE) && !included)
			return 0;
	}
	return 1;
}

#endif /* APIARY_FILTERS_H */
