/* PostgreSQL (frontend/backend protocol 3): which first bytes start a connection's first
 * message. Included by db.h. A connection is found from the untyped packet a client writes and
 * a server reads before anything else: an SSLRequest or GSSENCRequest (8 bytes: length 8 and a
 * magic code), or a StartupMessage (length, then protocol version 3.x). Every later message is
 * typed (a byte, then a length) and cannot be told from other bytes by itself; those are known
 * by their connection alone. A connection that began before the node started shows no startup
 * and is not found (nothing is guessed about it). Everything after detection is parsed in
 * userspace (probes/src/protocol/postgres/). */
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

#endif /* APIARY_PROTOCOL_POSTGRES_H */
