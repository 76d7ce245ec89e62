/* Redis (RESP2 and RESP3): which first bytes start a connection's first command. Included by
 * db.h. Redis is found once per connection (bpf/db.h), from a command a client writes or a
 * server reads: a RESP array of bulk strings, `*<count>\r\n$`. Replies cannot be told from
 * other bytes by themselves (`+OK`, `:1`), so they are known by their connection alone.
 * Everything else (commands, replies, pipelining, RESP3 pushes) is parsed in userspace
 * (probes/src/protocol/redis/). */
#ifndef APIARY_PROTOCOL_REDIS_H
#define APIARY_PROTOCOL_REDIS_H

/* `*` and a count of one or two digits, then CRLF and a bulk string's `$`: no command has more
 * than 99 arguments in its first buffer's head that matters here (a larger count is a valid
 * command too, but then its connection is found at its next command). */
static __always_inline int is_redis_command(const char *p, __u32 n)
{
	if (n < 6 || p[0] != '*' || p[1] < '1' || p[1] > '9')
		return 0;
	if (p[2] == '\r')
		return p[3] == '\n' && p[4] == '$';
	return p[2] >= '0' && p[2] <= '9' && p[3] == '\r' && p[4] == '\n' && p[5] == '$';
}

#endif /* APIARY_PROTOCOL_REDIS_H */
