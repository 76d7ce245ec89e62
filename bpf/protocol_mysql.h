/* MySQL and MariaDB (client/server protocol 10): which first bytes start a connection. Included
 * by db.h. The server speaks first: its greeting (Initial Handshake, sequence 0, protocol
 * version 10, then the server's version as text) is what a server writes and a client reads
 * before anything else, so the connection is found on the greeting and its requests are the
 * other direction's. Every later packet (a 3-byte length and a sequence number, then binary
 * or text) cannot be told from other bytes by itself; those are known by their connection
 * alone. A connection that began before the node started is not found (its greeting is past):
 * the server reads a command's 4-byte header and its body in two reads, and neither alone is
 * enough to tell MySQL from other bytes. Everything after detection is parsed in userspace
 * (probes/src/protocol/mysql/). */
#ifndef APIARY_PROTOCOL_MYSQL_H
#define APIARY_PROTOCOL_MYSQL_H

/* A greeting is about 80 to 130 bytes (version text, salt, plugin name). */
#define MYSQL_MIN_GREETING 32
#define MYSQL_MAX_GREETING 1024

/* The greeting is written whole by one send and read by one read (the server waits for the
 * client's answer), so its length field plus the 4-byte header is the syscall's length: that
 * and the version's first digit rule out the middle of other binary streams. */
static __always_inline int is_mysql_greeting(const char *p, __u32 n, __s64 len)
{
	if (n < 8 || p[3] != 0 || p[4] != 10 || p[5] < '1' || p[5] > '9')
		return 0;
	__u32 length = (__u8)p[0] | ((__u32)(__u8)p[1] << 8) | ((__u32)(__u8)p[2] << 16);
	return length + 4 == len && length >= MYSQL_MIN_GREETING && length <= MYSQL_MAX_GREETING;
}

#endif /* APIARY_PROTOCOL_MYSQL_H */
