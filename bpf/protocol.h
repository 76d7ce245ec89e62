/* The seam between the message path (message.h) and the protocols it recognises. The kernel
 * only tells whether a buffer starts a request or a response of a protocol it knows; the
 * message path then does the rest for every protocol alike (connection, filters, sampling,
 * request/response pairing, the record), and userspace parses the bytes.
 *
 * A protocol is one header, protocol_<name>.h, with
 *
 *	static __always_inline int is_<name>_start(const char *p, __u32 n);
 *
 * which returns PREFIX_REQUEST, PREFIX_RESPONSE or PREFIX_NONE for the first n bytes of a
 * buffer, BUF_CLASSIFY_MIN <= n <= BRIEF_CAPTURE. They are already read from user memory into
 * the CPU's scratch event (a map value of MAX_CAPTURE + 1 bytes), so the check is plain loads:
 * constant offsets below BUF_CLASSIFY_MIN need no test; beyond it, test against n (the bytes
 * after n are an earlier event's), bound a variable index for the verifier (& CAPTURE_MASK),
 * and give loops a constant bound. The protocol is added below with one #include and one line
 * in classify_protocol(); bpf/README.md has the whole checklist. */
#ifndef APIARY_PROTOCOL_H
#define APIARY_PROTOCOL_H

#include "common.h"

/* What a buffer starts. */
#define PREFIX_NONE 0
#define PREFIX_REQUEST 1
#define PREFIX_RESPONSE 2

/* Shorter buffers are never classified (nor read). */
#define BUF_CLASSIFY_MIN 8

#include "protocol_http1.h"

/* What the first n bytes of a buffer start, for the first protocol that recognises them.
 * Cheapest and most common first: each check costs every traced read and write that is no
 * one's message start. */
static __always_inline int classify_protocol(const char *p, __u32 n)
{
	int kind;
	if ((kind = is_http1_start(p, n)) != PREFIX_NONE)
		return kind;
	return PREFIX_NONE;
}

#endif /* APIARY_PROTOCOL_H */
