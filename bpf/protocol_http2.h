/* HTTP/2 in cleartext (h2c with prior knowledge, as gRPC and h2load speak it): which first
 * bytes start a connection. Included by db.h. A client opens an HTTP/2 connection with the
 * 24-byte preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", written by the client and read by the
 * server before anything else, so the connection is found on the preface and its requests
 * are that direction's. Frames after it are binary and could not be told from other bytes by
 * themselves: a connection that began before the node started is not found. Everything after
 * detection (frames, HPACK, streams) is parsed in userspace (probes/src/protocol/http2/). */
#ifndef APIARY_PROTOCOL_HTTP2_H
#define APIARY_PROTOCOL_HTTP2_H

/* The preface's first 16 bytes: "PRI * HTTP/2.0\r\n" (no HTTP/1 method starts "PRI "). */
static __always_inline int is_http2_preface(const char *p, __u32 n)
{
	if (n < 16)
		return 0;
	return p[0] == 'P' && p[1] == 'R' && p[2] == 'I' && p[3] == ' ' && p[4] == '*' &&
	       p[5] == ' ' && p[6] == 'H' && p[7] == 'T' && p[8] == 'T' && p[9] == 'P' &&
	       p[10] == '/' && p[11] == '2' && p[12] == '.' && p[13] == '0' && p[14] == '\r' &&
	       p[15] == '\n';
}

#endif /* APIARY_PROTOCOL_HTTP2_H */
