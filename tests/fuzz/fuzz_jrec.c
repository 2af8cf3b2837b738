/*
 * libFuzzer harness for queue_jrec, the record format of the spool journal.
 *
 * The input is used twice.  First it is a segment image, as a crash may
 * leave one: jrec_scan walks it, and the harness aborts when a reported
 * record breaks a promise of queue_jrec.h (it lies inside the buffer, right
 * after the one before; its magic, length, id and CRC check out, the CRC
 * recomputed here bit by bit), when the scan covers more than the input or
 * other than its whole records, when the covered prefix alone scans
 * differently, when octets appended after the covered prefix take records
 * away, or when fn's "stop" is not obeyed.
 *
 * Then the input is a recipe: records (messages in up to four parts, and
 * "finished" marks) are made from pieces of it with jrec_head, and the scan
 * of their concatenation must hand each back exactly, and a cut of it only
 * the whole ones before the cut.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "queue/queue_jrec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RECIPE_MAX 16

/* CRC-32C one bit at a time: a second opinion on jrec_crc32c. */
static uint32_t
crc_ref(uint32_t crc, const void *data, size_t len)
{
	const unsigned char *p = data;
	uint32_t c = ~crc;

	for (size_t i = 0; i < len; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
	}
	return ~c;
}

static uint32_t
get_le32(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;

	return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

static uint64_t
mix(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull; /* FNV-1a */
	return h;
}

static char *
exact_copy(const void *src, size_t len)
{
	char *p = calloc(1, len > 0 ? len : 1); /* exact size: ASan catches a read past it */

	CHECK(p != NULL);
	if (len > 0)
		memcpy(p, src, len);
	return p;
}

/* ---- the input as a segment image ---- */

struct walk {
	const char *buf;
	size_t len;
	size_t off;	 /* where the next record must start */
	size_t n;	 /* records seen */
	size_t dones;	 /* of them "finished" marks */
	size_t stop_at;	 /* fn returns false on this record (1-based); 0: never */
	uint64_t digest; /* of every record seen, offsets included */
	size_t *ends;	 /* where each record ends, when not NULL (room for all) */
};

static bool
walk_fn(void *arg, const struct jrec *r)
{
	struct walk *w = arg;
	const char *h = w->buf + w->off;
	uint32_t crc;

	/* Inside the buffer, right after the record before. */
	CHECK(w->off + JREC_HEAD_LEN <= w->len);
	CHECK(r->payload == h + JREC_HEAD_LEN);
	CHECK(r->len <= w->len - w->off - JREC_HEAD_LEN);
	CHECK(r->len <= JREC_PAYLOAD_MAX);
	/* What the head says. */
	CHECK(r->len == get_le32(h + 4));
	if (r->type == JREC_MSG) {
		CHECK(memcmp(h, "PJM1", 4) == 0);
	} else {
		CHECK(r->type == JREC_DONE);
		CHECK(memcmp(h, "PJD1", 4) == 0);
		CHECK(r->len == 0);
		w->dones++;
	}
	CHECK(r->id[UTIL_ID_LEN] == '\0');
	CHECK(memcmp(r->id, h + 12, UTIL_ID_LEN) == 0);
	for (size_t i = 0; i < UTIL_ID_LEN; i++)
		CHECK((r->id[i] >= '0' && r->id[i] <= '9') || (r->id[i] >= 'A' && r->id[i] <= 'F'));
	crc = crc_ref(0, h, 8);
	crc = crc_ref(crc, h + 12, UTIL_ID_LEN);
	crc = crc_ref(crc, r->payload, r->len);
	CHECK(crc == get_le32(h + 8));

	w->off += JREC_HEAD_LEN + r->len;
	if (w->ends != NULL)
		w->ends[w->n] = w->off;
	w->n++;
	w->digest = mix(w->digest, &w->off, sizeof(w->off));
	w->digest = mix(w->digest, &r->type, sizeof(r->type));
	w->digest = mix(w->digest, r->id, UTIL_ID_LEN);
	w->digest = mix(w->digest, r->payload, r->len);
	return w->n != w->stop_at;
}

/* Scans an exact-size copy of buf[0..len): returns the covered length, fills w. */
static size_t
walk(const void *buf, size_t len, size_t stop_at, struct walk *w, size_t *ends)
{
	char *copy = exact_copy(buf, len);
	size_t got;

	memset(w, 0, sizeof(*w));
	w->ends = ends;
	w->buf = copy;
	w->len = len;
	w->stop_at = stop_at;
	w->digest = 0xcbf29ce484222325ull;
	got = jrec_scan(copy, len, walk_fn, w);
	free(copy);
	return got;
}

static void
check_image(const uint8_t *data, size_t size)
{
	struct walk all, again, more;
	size_t got, got2, cut, whole;
	size_t *ends = malloc((size / JREC_HEAD_LEN + 1) * sizeof(*ends));
	char *buf;

	CHECK(ends != NULL);
	got = walk(data, size, 0, &all, ends);
	CHECK(got <= size);
	CHECK(got == all.off); /* exactly the whole records reported */
	CHECK(all.n <= size / JREC_HEAD_LEN);

	/* jrec_collect_done: the id of every mark, in order, and nothing else. */
	{
		struct jrec_ids ids = {0};
		char *copy = exact_copy(data, size);

		CHECK(jrec_scan(copy, size, jrec_collect_done, &ids) == got);
		CHECK(ids.len == all.dones);
		for (size_t i = 0, k = 0; i < all.n; i++) {
			const char *h = copy + (i == 0 ? 0 : ends[i - 1]);

			if (memcmp(h, "PJD1", 4) == 0) {
				CHECK(memcmp(ids.v[k], h + 12, UTIL_ID_LEN) == 0);
				CHECK(ids.v[k][UTIL_ID_LEN] == '\0');
				k++;
			}
		}
		free(ids.v);
		free(copy);
	}

	/* The covered prefix alone: the same records, the same length. */
	got2 = walk(data, got, 0, &again, NULL);
	CHECK(got2 == got);
	CHECK(again.n == all.n && again.digest == all.digest);

	/* Octets after the covered prefix never take a record away, nor change one. */
	buf = malloc(2 * size + 1);
	CHECK(buf != NULL);
	memcpy(buf, data, got);
	memcpy(buf + got, data, size); /* the input again after its whole records */
	got2 = walk(buf, got + size, 0, &more, NULL);
	CHECK(got2 >= got && got2 <= got + size && more.n >= all.n);
	if (all.n > 0) {
		got2 = walk(buf, got + size, all.n, &more, NULL);
		CHECK(got2 == got && more.n == all.n && more.digest == all.digest);
	}
	/* The prefix twice: every record twice. */
	memcpy(buf + got, data, got);
	got2 = walk(buf, 2 * got, 0, &more, NULL);
	CHECK(got2 == 2 * got && more.n == 2 * all.n);
	free(buf);

	/* Cut inside the covered prefix: exactly the records that end before the cut. */
	cut = (size_t)data[size - 1] * got / 255;
	for (whole = 0; whole < all.n && ends[whole] <= cut; whole++)
		;
	got2 = walk(data, cut, 0, &more, NULL);
	CHECK(more.n == whole);
	CHECK(got2 == (whole == 0 ? 0 : ends[whole - 1]));

	/* fn's false stops the walk right after that record. */
	if (all.n > 0) {
		size_t k = (size_t)data[0] % all.n + 1;

		got2 = walk(data, size, k, &more, NULL);
		CHECK(more.n == k);
		CHECK(got2 == ends[k - 1]);
	}
	free(ends);
}

/* ---- the input as a recipe of records ---- */

struct made {
	enum jrec_type type;
	char id[UTIL_ID_LEN + 1];
	const uint8_t *parts[4];
	size_t lens[4];
	size_t nparts, len;
	size_t end; /* in the image */
};

struct reread {
	const struct made *want;
	const char *buf;
	size_t n, nwant;
};

static bool
reread_fn(void *arg, const struct jrec *r)
{
	struct reread *rr = arg;
	const struct made *m;
	const char *p;

	CHECK(rr->n < rr->nwant);
	m = &rr->want[rr->n++];
	CHECK(r->type == m->type);
	CHECK(strcmp(r->id, m->id) == 0);
	CHECK(r->len == m->len);
	CHECK(r->payload == rr->buf + m->end - m->len);
	p = r->payload;
	for (size_t i = 0; i < m->nparts; i++) {
		CHECK(m->lens[i] == 0 || memcmp(p, m->parts[i], m->lens[i]) == 0);
		p += m->lens[i];
	}
	return true;
}

static void
check_recipe(const uint8_t *data, size_t size)
{
	static const char hex[] = "0123456789ABCDEF";
	struct made m[RECIPE_MAX];
	size_t n = 0, pos = 0, total = 0, got, cut;
	struct reread rr;
	char *img, *p;

	while (pos < size && n < RECIPE_MAX) {
		struct made *r = &m[n];
		uint8_t b = data[pos++];

		r->type = (b & 1) ? JREC_DONE : JREC_MSG;
		r->nparts = r->type == JREC_MSG ? (size_t)(b >> 1) % 5 : 0;
		for (size_t i = 0; i < UTIL_ID_LEN; i++)
			r->id[i] = hex[(pos < size ? data[pos++] : i) & 15];
		r->id[UTIL_ID_LEN] = '\0';
		r->len = 0;
		for (size_t i = 0; i < r->nparts; i++) {
			size_t want = pos < size ? data[pos++] : 0;

			if (want > size - pos)
				want = size - pos;
			r->parts[i] = data + pos;
			r->lens[i] = want;
			r->len += want;
			pos += want;
		}
		total += JREC_HEAD_LEN + r->len;
		r->end = total;
		n++;
	}

	img = malloc(total > 0 ? total : 1);
	CHECK(img != NULL);
	p = img;
	for (size_t k = 0; k < n; k++) {
		const void *parts[4] = {NULL};
		uint32_t crc;

		for (size_t i = 0; i < m[k].nparts; i++)
			parts[i] = m[k].parts[i];
		jrec_head(p, m[k].type, m[k].id, parts, m[k].lens, m[k].nparts);
		/* The head's CRC field is the CRC-32C of magic, length, id and payload. */
		crc = crc_ref(0, p, 8);
		crc = crc_ref(crc, m[k].id, UTIL_ID_LEN);
		for (size_t i = 0; i < m[k].nparts; i++)
			crc = crc_ref(crc, m[k].parts[i], m[k].lens[i]);
		CHECK(crc == get_le32(p + 8));
		CHECK(get_le32(p + 4) == m[k].len);
		p += JREC_HEAD_LEN;
		for (size_t i = 0; i < m[k].nparts; i++) {
			if (m[k].lens[i] > 0)
				memcpy(p, m[k].parts[i], m[k].lens[i]);
			p += m[k].lens[i];
		}
	}
	CHECK((size_t)(p - img) == total);

	memset(&rr, 0, sizeof(rr));
	rr.want = m;
	rr.nwant = n;
	rr.buf = img;
	got = jrec_scan(img, total, reread_fn, &rr);
	CHECK(got == total);
	CHECK(rr.n == n);

	/* Cut somewhere: the whole records before the cut, no more. */
	cut = size > 0 ? (size_t)data[size / 2] * total / 255 : 0;
	{
		char *torn = exact_copy(img, cut);
		size_t whole = 0;

		while (whole < n && m[whole].end <= cut)
			whole++;
		memset(&rr, 0, sizeof(rr));
		rr.want = m;
		rr.nwant = n;
		rr.buf = torn;
		got = jrec_scan(torn, cut, reread_fn, &rr);
		CHECK(rr.n == whole);
		CHECK(got == (whole == 0 ? 0 : m[whole - 1].end));
		free(torn);
	}
	free(img);

	/* The CRC in two calls is the CRC in one. */
	cut = size > 0 ? (size_t)data[0] * size / 255 : 0;
	CHECK(jrec_crc32c(jrec_crc32c(0, data, cut), data + cut, size - cut) ==
	      jrec_crc32c(0, data, size));
	CHECK(jrec_crc32c(0, data, size) == crc_ref(0, data, size));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0) {
		struct walk w;

		CHECK(walk(data, 0, 0, &w, NULL) == 0 && w.n == 0);
		return 0;
	}
	check_image(data, size);
	check_recipe(data, size);
	return 0;
}
