/* HTTP/1: which buffers start a request or a response. Included by protocol.h, after the
 * message kinds; everything else about HTTP/1 (parsing, routes, pairing pipelined messages)
 * is done in userspace (probes/src/protocol/http1/). */
#ifndef APIARY_PROTOCOL_HTTP1_H
#define APIARY_PROTOCOL_HTTP1_H

/* A request line's method or a status line's "HTTP/": only the first 5 bytes are looked at. */
static __always_inline int is_http1_start(const char *p, __u32 n)
{
	if (p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P' && p[4] == '/')
		return PREFIX_RESPONSE;
	if ((p[0] == 'G' && p[1] == 'E' && p[2] == 'T' && p[3] == ' ') ||
	    (p[0] == 'P' && p[1] == 'O' && p[2] == 'S' && p[3] == 'T' && p[4] == ' ') ||
	    (p[0] == 'P' && p[1] == 'U' && p[2] == 'T' && p[3] == ' ') ||
	    (p[0] == 'H' && p[1] == 'E' && p[2] == 'A' && p[3] == 'D' && p[4] == ' ') ||
	    (p[0] == 'P' && p[1] == 'A' && p[2] == 'T' && p[3] == 'C' && p[4] == 'H') ||
	    (p[0] == 'D' && p[1] == 'E' && p[2] == 'L' && p[3] == 'E' && p[4] == 'T') ||
	    (p[0] == 'O' && p[1] == 'P' && p[2] == 'T' && p[3] == 'I' && p[4] == 'O'))
		return PREFIX_REQUEST;
	return PREFIX_NONE;
}

#endif /* APIARY_PROTOCOL_HTTP1_H */
