#include "queue/queue_jrec.h"

#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "util/util_mem.h"

static const char MAGIC_MSG[4] = {'P', 'J', 'M', '1'};
static const char MAGIC_DONE[4] = {'P', 'J', 'D', '1'};

/*
 * CRC-32C (Castagnoli, reflected polynomial 0x82f63b78): the SSE4.2 crc32
 * instruction where the CPU has it (eight octets at a time), else eight
 * table lookups per eight octets ("slicing by 8").  A 64 KiB message is
 * checksummed before its 250, so the octet-at-a-time loop showed.
 */
static uint32_t table[8][256];
static bool have_sse42;
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void
table_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		table[0][i] = c;
	}
	for (int t = 1; t < 8; t++)
		for (uint32_t i = 0; i < 256; i++)
			table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
#if defined(__x86_64__)
	have_sse42 = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t
le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint32_t
jrec_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
	const unsigned char *p = data;

	pthread_once(&table_once, table_init);
	crc = ~crc;
	for (; len >= 8; p += 8, len -= 8) {
		uint32_t lo = crc ^ le32(p), hi = le32(p + 4);

		crc = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^
		      table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^ table[3][hi & 0xff] ^
		      table[2][(hi >> 8) & 0xff] ^ table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
	}
	while (len-- > 0)
		crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t
crc32c_sse42(uint32_t crc, const unsigned char *p, size_t len)
{
	uint64_t c = ~crc;

	for (; len >= 8; p += 8, len -= 8) {
		uint64_t v;

		memcpy(&v, p, sizeof(v)); /* x86 is little-endian, as the CRC wants */
		c = __builtin_ia32_crc32di(c, v);
	}
	while (len-- > 0)
		c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
	return ~(uint32_t)c;
}
#endif

uint32_t
jrec_crc32c(uint32_t crc, const void *data, size_t len)
{
	pthread_once(&table_once, table_init);
#if defined(__x86_64__)
	if (have_sse42)
		return crc32c_sse42(crc, data, len);
#endif
	return jrec_crc32c_sw(crc, data, len);
}

static void
put32(char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (char)(v >> (8 * i));
}

static uint32_t
get32(const char *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = (v << 8) | (unsigned char)p[i];
	return v;
}

/* The CRC covers everything but the crc field itself. */
static uint32_t
head_crc(const char *head)
{
	uint32_t crc = jrec_crc32c(0, head, 8);

	return jrec_crc32c(crc, head + 12, UTIL_ID_LEN);
}

void
jrec_head(char head[JREC_HEAD_LEN], enum jrec_type type, const char *id, const void *const *parts,
	  const size_t *lens, size_t nparts)
{
	size_t total = 0;
	uint32_t crc;

	for (size_t i = 0; i < nparts; i++)
		total += lens[i];
	memcpy(head, type == JREC_MSG ? MAGIC_MSG : MAGIC_DONE, 4);
	put32(head + 4, (uint32_t)total);
	memcpy(head + 12, id, UTIL_ID_LEN);
	crc = head_crc(head);
	for (size_t i = 0; i < nparts; i++)
		crc = jrec_crc32c(crc, parts[i], lens[i]);
	put32(head + 8, crc);
}

size_t
jrec_scan(const char *buf, size_t len, bool (*fn)(void *arg, const struct jrec *r), void *arg)
{
	size_t off = 0;

	while (len - off >= JREC_HEAD_LEN) {
		const char *h = buf + off;
		struct jrec r;
		uint32_t plen = get32(h + 4);

		if (memcmp(h, MAGIC_MSG, 4) == 0)
			r.type = JREC_MSG;
		else if (memcmp(h, MAGIC_DONE, 4) == 0 && plen == 0)
			r.type = JREC_DONE;
		else
			break;
		if (plen > JREC_PAYLOAD_MAX || plen > len - off - JREC_HEAD_LEN)
			break;
		memcpy(r.id, h + 12, UTIL_ID_LEN);
		r.id[UTIL_ID_LEN] = '\0';
		if (!util_id_valid(r.id))
			break;
		r.payload = h + JREC_HEAD_LEN;
		r.len = plen;
		if (jrec_crc32c(head_crc(h), r.payload, r.len) != get32(h + 8))
			break;
		off += JREC_HEAD_LEN + plen;
		if (!fn(arg, &r))
			break;
	}
	return off;
}

bool
jrec_collect_done(void *arg, const struct jrec *r)
{
	struct jrec_ids *l = arg;

	if (r->type != JREC_DONE)
		return true;
	if (l->len == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 64;
		l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
	}
	memcpy(l->v[l->len++], r->id, UTIL_ID_LEN + 1);
	return true;
}
