/* PostgreSQL (frontend/backend protocol 3): which first bytes start a connection's first
 * message. Included by db.h. A connection is found from the untyped packet a client writes and
 * a server reads before anything else: an SSLRequest or GSSENCRequest (8 bytes: length 8 and a
 * magic code), or a StartupMessage (length, then protocol version 3.x). Every later message is
 * typed (a byte, then a length) and cannot be told from other bytes by itself; those are known
 * by their connection alone, with one exception for connections that began before the node
 * started (no startup to see): a simple Query read or written whole by one syscall, which
 * userspace may resync on (a server's) or counts as unparsed (a client's). Everything after
 * detection is parsed in userspace (probes/src/protocol/postgres/). */
#ifndef APIARY_PROTOCOL_POSTGRES_H
#define APIARY_PROTOCOL_POSTGRES_H

/* The server's limit on a startup packet (MAX_STARTUP_PACKET_LENGTH). */
#define PG_MAX_STARTUP 10000

/* The packet is read whole by one recv and written by one send (libpq, pgx, JDBC, asyncpg
 * all do), so its length must equal the syscall's: that rules out the middle of other
 * binary streams that happen to hold these 8 bytes. */
static __always_inline int is_postgres_startup(const char *p, __u32 n, __s64 len)
{
	if (n < 8 || p[0] != 0 || p[1] != 0)
		return 0;
	__u32 length = ((__u32)(__u8)p[2] << 8) | (__u8)p[3];
	if (length != len)
		return 0;
	/* SSLRequest 80877103, GSSENCRequest 80877104: 0x04d2162f, 0x04d21630. */
	if (length == 8)
		return (__u8)p[4] == 0x04 && (__u8)p[5] == 0xd2 && (__u8)p[6] == 0x16 &&
		       ((__u8)p[7] == 0x2f || (__u8)p[7] == 0x30);
	/* StartupMessage: version 3.0 (3.2 from PostgreSQL 18), then name/value pairs. */
	return length > 8 && length <= PG_MAX_STARTUP && p[4] == 0 && p[5] == 3 && p[6] == 0;
}

/* A Query ('Q', a length, SQL text, NUL) that is the whole of a buffer no longer than the
 * brief capture (n bytes of it at hand, all of it): its length field gives the syscall's length
 * and its last byte is the text's NUL. Short statements, the common case in pools of
 * connections older than the node, are found on their next query. */
static __always_inline int is_postgres_query(const char *p, __u32 n, __s64 len)
{
	if (n < 7 || len != n || p[0] != 'Q' || p[1] != 0 || p[2] != 0)
		return 0;
	__u32 length = ((__u32)(__u8)p[3] << 8) | (__u8)p[4];
	if (length + 1 != len)
		return 0;
	__u32 last = n - 1;
	asm volatile("%0 &= %1" : "+r"(last) : "i"(CAPTURE_MASK));
	if (p[last] != 0)
		return 0;
	char c = p[5];
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '(';
}

#endif /* APIARY_PROTOCOL_POSTGRES_H */
