/* RED in the kernel: a request that sampling dropped leaves no ring record when the kernel can
 * count it exactly as userspace would. Its route key (a seeded hash of the request line's method
 * and path, up to `?`, `#` or the space before the version) is taken when the request starts;
 * when its response starts, the exchange is counted in red_counts (per CPU, keyed by route key,
 * process, status, direction and trace link, with the duration histogram) instead of sent, if:
 * - userspace already knows the key's route (red_routes): the first sampled-out request of a
 *   route goes to userspace as a record carrying the key, and userspace, which templates routes,
 *   writes the key into red_routes (a key is a method and an exact path, so it names one route);
 * - the request line and status line are ones userspace parses (else it is sent, and userspace
 *   decides as before);
 * - no keep rule may want it (budget.always_keep: a 5xx, a slow response): those are sent.
 * Userspace reads red_counts' deltas and adds them to the RED series (probes/src/observer.rs). */
#ifndef APIARY_RED_H
#define APIARY_RED_H

#include "maps.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static __always_inline struct ap_red_config *red_settings(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&red_config, &zero);
}

/* The route key of the request line at the start of `p` (`n` bytes), or 0 when the line is not
 * one userspace would take as it is (request_line in probes/src/protocol/http1/parse.rs):
 * an upper-case method, a space, a target of printable ASCII, a space, "HTTP/1.". Stricter than
 * userspace is fine: such a request is sent as before. */
static __always_inline __u64 red_route_key(const __u8 *p, __u32 n, __u64 seed)
{
	__u64 h = FNV_OFFSET ^ seed;
	__u32 part = 0; /* 0: the method; 1: the path; 2: the rest of the target (query, fragment) */
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < RED_SCAN; i++) {
		if (i >= n)
			return 0;
		__u8 c = p[i];
		if (part == 0) {
			if (c == ' ') {
				if (i == 0)
					return 0;
				part = 1;
			} else if (c < 'A' || c > 'Z') {
				return 0;
			}
		} else if (c == ' ') {
			if (i + 8 > n || p[i + 1] != 'H' || p[i + 2] != 'T' || p[i + 3] != 'T' ||
			    p[i + 4] != 'P' || p[i + 5] != '/' || p[i + 6] != '1' || p[i + 7] != '.')
				return 0;
			return h ? h : 1;
		} else if (c < 0x21 || c > 0x7e) {
			return 0;
		} else if (c == '?' || c == '#') {
			part = 2;
		}
		if (part <= 1)
			h = (h ^ c) * FNV_PRIME;
	}
	return 0;
}

/* The status code of a status line as userspace reads it (parse_status), or 0. */
static __always_inline __u16 red_status(const __u8 *p, __u32 n)
{
	if (n < 12 || p[5] != '1' || p[6] != '.' || p[7] < '0' || p[7] > '9' || p[8] != ' ')
		return 0;
	if (p[9] < '1' || p[9] > '9' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
		return 0;
	if (n > 12 && p[12] != ' ' && p[12] != '\r')
		return 0;
	return (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
}

static __always_inline __u32 red_bucket(__u64 ns)
{
	if (ns <= RED_BOUND_0) return 0;
	if (ns <= RED_BOUND_1) return 1;
	if (ns <= RED_BOUND_2) return 2;
	if (ns <= RED_BOUND_3) return 3;
	if (ns <= RED_BOUND_4) return 4;
	if (ns <= RED_BOUND_5) return 5;
	if (ns <= RED_BOUND_6) return 6;
	if (ns <= RED_BOUND_7) return 7;
	if (ns <= RED_BOUND_8) return 8;
	if (ns <= RED_BOUND_9) return 9;
	if (ns <= RED_BOUND_10) return 10;
	if (ns <= RED_BOUND_11) return 11;
	if (ns <= RED_BOUND_12) return 12;
	if (ns <= RED_BOUND_13) return 13;
	if (ns <= RED_BOUND_14) return 14;
	if (ns <= RED_BOUND_15) return 15;
	if (ns <= RED_BOUND_16) return 16;
	if (ns <= RED_BOUND_17) return 17;
	if (ns <= RED_BOUND_18) return 18;
	return 19;
}

/* The route key of a sampled-out request starting in `ev` (`got` bytes), 0 when none. */
static __always_inline __u64 red_request_route(struct ap_data_event *ev, __u32 got)
{
	struct ap_red_config *config = red_settings();
	if (!config || !config->enabled)
		return 0;
	return red_route_key(ev->data, got, config->seed);
}

/* Counts the sampled-out exchange waiting on `conn`, whose response starts in `ev` (`got`
 * bytes): true when counted (nothing is to be sent), false when it must go to userspace. */
static __always_inline int red_count(struct ap_conn *conn, struct ap_data_event *ev, __u32 got)
{
	if (!conn->req_route)
		return 0;
	struct ap_red_config *config = red_settings();
	if (!config || !config->enabled || !bpf_map_lookup_elem(&red_routes, &conn->req_route))
		return 0;
	__u16 status = red_status(ev->data, got);
	if (!status || (config->keep_errors && status >= 500))
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 ns = now > conn->req_ts ? now - conn->req_ts : 0;
	if (config->slower_than_ns && ns > config->slower_than_ns)
		return 0;
	struct ap_red_key key = {
		.route = conn->req_route,
		.pid = bpf_get_current_pid_tgid() >> 32,
		.status = status,
		.direction = conn->req_direction,
		.link = conn->req_trace.link,
	};
	struct ap_red_value *value = bpf_map_lookup_elem(&red_counts, &key);
	if (!value) {
		__u32 zero = 0;
		struct ap_red_value *fresh = bpf_map_lookup_elem(&red_scratch, &zero);
		if (!fresh)
			return 0;
		__builtin_memcpy(fresh->comm, conn->comm, sizeof(fresh->comm));
		/* Another CPU may have created it meanwhile (EEXIST): this CPU's value is there too. */
		bpf_map_update_elem(&red_counts, &key, fresh, BPF_NOEXIST);
		value = bpf_map_lookup_elem(&red_counts, &key);
		if (!value)
			return 0; /* the map is full: userspace counts it from the record */
	}
	__u32 bucket = red_bucket(ns);
	value->count++;
	value->sum_ns += ns;
	value->buckets[bucket]++;
	return 1;
}

#endif /* APIARY_RED_H */
