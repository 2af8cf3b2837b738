/*
 * Unit tests for queue_jrec, the record format of the spool journal.
 *
 * Records are built here by hand, octet by octet, with a CRC-32C computed
 * by a plain bitwise implementation of this file's own (itself checked
 * against published vectors), so the tests pin the format down rather than
 * compare queue_jrec with itself: magic, little-endian length, CRC, id and
 * payload at fixed places.  jrec_scan then runs over tables of named
 * segment images, over every cut of a torn tail and over every flipped bit
 * of a record.  Every image is scanned from a heap block of exactly its
 * size, so under ASan a read past the end is caught.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/queue_jrec.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_SEEN     4096

/* ---- a reference CRC-32C, one bit at a time ---- */

static uint32_t
crc_ref(const void *data, size_t len)
{
	const unsigned char *p = data;
	uint32_t c = 0xffffffffu;

	for (size_t i = 0; i < len; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
	}
	return ~c;
}

/* ---- segment images built by hand ---- */

struct image {
	char *buf;
	size_t len, cap;
	size_t ends[MAX_SEEN]; /* where each record ends */
	size_t nrec;
};

static void
image_reserve(struct image *im, size_t more)
{
	if (im->len + more <= im->cap)
		return;
	while (im->len + more > im->cap)
		im->cap = im->cap ? 2 * im->cap : 256;
	im->buf = realloc(im->buf, im->cap);
	assert_non_null(im->buf);
}

static void
image_raw(struct image *im, const void *data, size_t len)
{
	image_reserve(im, len);
	if (len > 0)
		memcpy(im->buf + im->len, data, len);
	im->len += len;
}

static void
put_le32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

/*
 * Appends one record: magic, the length field len_field (whatever the
 * payload really is), a CRC over magic, length, id and payload in that
 * order, the id, then the payload.
 */
static void
image_rec(struct image *im, const char *magic, uint32_t len_field, const char *id,
	  const void *payload, size_t plen)
{
	unsigned char *covered = malloc(24 + plen + 1);
	unsigned char head[JREC_HEAD_LEN];

	assert_non_null(covered);
	memcpy(head, magic, 4);
	put_le32(head + 4, len_field);
	memcpy(head + 12, id, UTIL_ID_LEN);
	memcpy(covered, head, 8);
	memcpy(covered + 8, id, UTIL_ID_LEN);
	if (plen > 0)
		memcpy(covered + 24, payload, plen);
	put_le32(head + 8, crc_ref(covered, 24 + plen));
	free(covered);
	image_raw(im, head, sizeof(head));
	image_raw(im, payload, plen);
	assert_true(im->nrec < MAX_SEEN);
	im->ends[im->nrec++] = im->len;
}

static void
image_msg(struct image *im, const char *id, const void *payload, size_t plen)
{
	image_rec(im, "PJM1", (uint32_t)plen, id, payload, plen);
}

static void
image_done(struct image *im, const char *id)
{
	image_rec(im, "PJD1", 0, id, NULL, 0);
}

static void
image_free(struct image *im)
{
	free(im->buf);
	memset(im, 0, sizeof(*im));
}

/* A heap copy of exactly len octets (one spare byte never counted for len 0). */
static char *
exact_copy(const char *src, size_t len)
{
	char *p = malloc(len > 0 ? len : 1);

	assert_non_null(p);
	if (len > 0)
		memcpy(p, src, len);
	return p;
}

/* ---- what jrec_scan reports ---- */

struct seen {
	enum jrec_type type;
	char id[UTIL_ID_LEN + 1];
	size_t payload_off; /* payload - buffer start */
	size_t len;
};

struct collect {
	const char *base;
	struct seen v[MAX_SEEN];
	size_t n;
	size_t stop_at; /* fn returns false on this call (1-based); 0: never */
};

static bool
collect_fn(void *arg, const struct jrec *r)
{
	struct collect *c = arg;

	assert_true(c->n < MAX_SEEN);
	assert_int_equal(r->id[UTIL_ID_LEN], '\0');
	assert_true(r->payload >= c->base);
	c->v[c->n].type = r->type;
	memcpy(c->v[c->n].id, r->id, UTIL_ID_LEN + 1);
	c->v[c->n].payload_off = (size_t)(r->payload - c->base);
	c->v[c->n].len = r->len;
	c->n++;
	return c->n != c->stop_at;
}

/* Scans buf[0..len) from an exact-size heap copy; fills c. */
static size_t
scan_copy(const char *buf, size_t len, struct collect *c)
{
	char *copy = exact_copy(buf, len);
	size_t got;

	c->base = copy;
	c->n = 0;
	got = jrec_scan(copy, len, collect_fn, c);
	free(copy);
	return got;
}

/* The records seen are the first n of the image, field for field. */
static void
check_seen(const struct image *im, const struct collect *c, size_t n)
{
	assert_int_equal(c->n, n);
	for (size_t i = 0; i < n; i++) {
		size_t start = i == 0 ? 0 : im->ends[i - 1];
		const char *h = im->buf + start;

		assert_int_equal(c->v[i].type, memcmp(h, "PJM1", 4) == 0 ? JREC_MSG : JREC_DONE);
		assert_memory_equal(c->v[i].id, h + 12, UTIL_ID_LEN);
		assert_int_equal(c->v[i].payload_off, start + JREC_HEAD_LEN);
		assert_int_equal(c->v[i].len, im->ends[i] - start - JREC_HEAD_LEN);
	}
}

/* ---- CRC-32C ---- */

struct crc_case {
	const char *name;
	const char *data;
	size_t len;
	uint32_t want;
};

static const char zeros32[32];
static const char ones32[32] = {'\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\xff',
				'\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\xff',
				'\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\xff',
				'\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\xff'};
static const char up32[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
			      16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
static const char down32[32] = {31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16,
				15, 14, 13, 12, 11, 10, 9,  8,	7,  6,	5,  4,	3,  2,	1,  0};

#define TEXT(s) .data = (s), .len = sizeof(s) - 1

/* The check value of the CRC catalogue, and the vectors of RFC 3720 B.4. */
static const struct crc_case crc_cases[] = {
    {"empty", TEXT(""), 0},
    {"check value 123456789", TEXT("123456789"), 0xE3069283u},
    {"one letter", TEXT("a"), 0xC1D04330u},
    {"quick brown fox", TEXT("The quick brown fox jumps over the lazy dog"), 0x22620404u},
    {"32 zeros (RFC 3720)", zeros32, 32, 0x8A9136AAu},
    {"32 ones (RFC 3720)", ones32, 32, 0x62A8AB43u},
    {"32 ascending (RFC 3720)", up32, 32, 0x46DD794Eu},
    {"32 descending (RFC 3720)", down32, 32, 0x113FDB5Cu},
};

static void
test_crc_vector(void **state)
{
	const struct crc_case *c = *state;

	assert_int_equal(crc_ref(c->data, c->len), c->want); /* the reference itself */
	assert_int_equal(jrec_crc32c(0, c->data, c->len), c->want);
	assert_int_equal(jrec_crc32c_sw(0, c->data, c->len), c->want);
	/* Fed in two calls at every split: the same as one call. */
	for (size_t cut = 0; cut <= c->len; cut++) {
		uint32_t crc = jrec_crc32c(0, c->data, cut);

		assert_int_equal(jrec_crc32c(crc, c->data + cut, c->len - cut), c->want);
	}
	/* Byte by byte. */
	{
		uint32_t crc = 0;

		for (size_t i = 0; i < c->len; i++)
			crc = jrec_crc32c(crc, c->data + i, 1);
		assert_int_equal(crc, c->want);
	}
}

/*
 * The instruction and the portable tables agree with the bit-at-a-time
 * reference on pseudo-random data of every length up to 300 octets, at
 * every alignment, fed whole and in two pieces; and on 64 KiB.
 */
static void
test_crc_paths_agree(void **state)
{
	size_t big = 64 * 1024 + 13;
	unsigned char *buf = malloc(big + 8);
	uint32_t x = 2463534242u;

	(void)state;
	assert_non_null(buf);
	for (size_t i = 0; i < big + 8; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (unsigned char)x;
	}
	for (size_t align = 0; align < 8; align++) {
		for (size_t len = 0; len <= 300; len++) {
			const unsigned char *p = buf + align;
			uint32_t want = crc_ref(p, len), cut = (uint32_t)(len / 3);

			assert_int_equal(jrec_crc32c(0, p, len), want);
			assert_int_equal(jrec_crc32c_sw(0, p, len), want);
			assert_int_equal(jrec_crc32c(jrec_crc32c_sw(0, p, cut), p + cut, len - cut),
					 want);
			assert_int_equal(jrec_crc32c_sw(jrec_crc32c(0, p, cut), p + cut, len - cut),
					 want);
		}
	}
	assert_int_equal(jrec_crc32c(0, buf + 3, big), crc_ref(buf + 3, big));
	assert_int_equal(jrec_crc32c_sw(0, buf + 3, big), crc_ref(buf + 3, big));
	free(buf);
}

/* Empty input leaves any running value as it is; a NULL pointer with no length is fine. */
static void
test_crc_empty_input(void **state)
{
	static const uint32_t values[] = {0, 1, 0xE3069283u, 0xffffffffu, 0x80000000u};

	assert_int_equal(jrec_crc32c(0, NULL, 0), 0);
	for (size_t i = 0; i < ARRAY_LEN(values); i++) {
		assert_int_equal(jrec_crc32c(values[i], "", 0), values[i]);
		assert_int_equal(jrec_crc32c(values[i], NULL, 0), values[i]);
	}
}

/* Pseudo-random data of every length up to 1 KiB, whole and in three calls. */
static void
test_crc_matches_reference(void **state)
{
	enum { N = 1024 };
	unsigned char data[N];
	uint32_t x = 12345;

	for (size_t i = 0; i < N; i++) {
		x = x * 1103515245u + 12345u;
		data[i] = (unsigned char)(x >> 16);
	}
	for (size_t len = 0; len <= N; len++) {
		uint32_t want = crc_ref(data, len);
		size_t a = len / 3, b = len - len / 5;

		assert_int_equal(jrec_crc32c(0, data, len), want);
		assert_int_equal(jrec_crc32c(jrec_crc32c(jrec_crc32c(0, data, a), data + a, b - a),
					     data + b, len - b),
				 want);
	}
}

/* ---- jrec_head ---- */

static const char ID1[] = "0123456789ABCDEF";
static const char ID2[] = "FEDCBA9876543210";
static const char ID3[] = "0000000000000001";
static const char ID_NUL[] = "01234567\0009ABCDEF"; /* 16 octets, the ninth a NUL */
_Static_assert(sizeof(ID_NUL) == UTIL_ID_LEN + 1, "an id's length");

/* jrec_head writes exactly the octets built by hand, at the documented places. */
static void
test_head_layout_message(void **state)
{
	static const char payload[] = "Received: x\r\n\r\nhello\r\n";
	const void *parts[1] = {payload};
	size_t lens[1] = {sizeof(payload) - 1};
	char head[JREC_HEAD_LEN + 1];
	struct image im = {0};

	memset(head, 0x5a, sizeof(head));
	jrec_head(head, JREC_MSG, ID1, parts, lens, 1);
	assert_int_equal((unsigned char)head[JREC_HEAD_LEN], 0x5a); /* nothing past the head */
	assert_memory_equal(head, "PJM1", 4);
	assert_int_equal((unsigned char)head[4], sizeof(payload) - 1);
	assert_int_equal(head[5], 0);
	assert_int_equal(head[6], 0);
	assert_int_equal(head[7], 0);
	assert_memory_equal(head + 12, ID1, UTIL_ID_LEN);
	assert_int_equal(JREC_HEAD_LEN, 28);

	image_msg(&im, ID1, payload, sizeof(payload) - 1);
	assert_memory_equal(head, im.buf, JREC_HEAD_LEN);
	image_free(&im);
}

/* The length is little-endian: 0x010203 is written 03 02 01 00. */
static void
test_head_length_little_endian(void **state)
{
	size_t len = 0x010203;
	char *payload = malloc(len);
	const void *parts[1];
	char head[JREC_HEAD_LEN];
	struct image im = {0};

	assert_non_null(payload);
	for (size_t i = 0; i < len; i++)
		payload[i] = (char)(i * 7);
	parts[0] = payload;
	jrec_head(head, JREC_MSG, ID2, parts, &len, 1);
	assert_int_equal((unsigned char)head[4], 0x03);
	assert_int_equal((unsigned char)head[5], 0x02);
	assert_int_equal((unsigned char)head[6], 0x01);
	assert_int_equal((unsigned char)head[7], 0x00);
	/* The whole head, its little-endian CRC field included, is the one built by hand. */
	image_msg(&im, ID2, payload, len);
	assert_memory_equal(head, im.buf, JREC_HEAD_LEN);
	image_free(&im);
	free(payload);
}

/* A "finished" mark: PJD1, length 0, the CRC of magic, length and id alone. */
static void
test_head_layout_done(void **state)
{
	char head[JREC_HEAD_LEN];
	unsigned char covered[24], crc[4];

	jrec_head(head, JREC_DONE, ID3, NULL, NULL, 0);
	assert_memory_equal(head, "PJD1", 4);
	assert_memory_equal(head + 4, "\0\0\0\0", 4);
	assert_memory_equal(head + 12, ID3, UTIL_ID_LEN);
	memcpy(covered, "PJD1\0\0\0\0", 8);
	memcpy(covered + 8, ID3, UTIL_ID_LEN);
	put_le32(crc, crc_ref(covered, sizeof(covered)));
	assert_memory_equal(head + 8, crc, 4);
}

/* A payload given in parts makes the same head as in one piece, wherever it is cut. */
static void
test_head_parts(void **state)
{
	static const char payload[] = "From: a@example.org\r\n\r\nbody\r\n";
	const size_t n = sizeof(payload) - 1;
	char whole[JREC_HEAD_LEN], head[JREC_HEAD_LEN];
	size_t lens1[1] = {n};
	const void *parts1[1] = {payload};

	jrec_head(whole, JREC_MSG, ID1, parts1, lens1, 1);
	for (size_t a = 0; a <= n; a++)
		for (size_t b = a; b <= n; b++) {
			const void *parts[4] = {payload, payload + a, "", payload + b};
			size_t lens[4] = {a, b - a, 0, n - b};

			jrec_head(head, JREC_MSG, ID1, parts, lens, 4);
			assert_memory_equal(head, whole, JREC_HEAD_LEN);
		}
	/* No parts at all: a message with an empty payload. */
	{
		struct image im = {0};

		jrec_head(head, JREC_MSG, ID1, NULL, NULL, 0);
		image_msg(&im, ID1, NULL, 0);
		assert_memory_equal(head, im.buf, JREC_HEAD_LEN);
		image_free(&im);
	}
}

/* What jrec_head writes, jrec_scan reads back. */
static void
test_head_then_scan(void **state)
{
	static const char *const payloads[] = {"", "x", "two\r\nlines\r\n", "\0\1\2\3"};
	static const size_t plens[] = {0, 1, 12, 4};
	struct image im = {0};
	struct collect *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	for (size_t i = 0; i < ARRAY_LEN(payloads); i++) {
		char head[JREC_HEAD_LEN];
		const void *parts[1] = {payloads[i]};

		jrec_head(head, JREC_MSG, ID2, parts, &plens[i], 1);
		image_raw(&im, head, sizeof(head));
		image_raw(&im, payloads[i], plens[i]);
		im.ends[im.nrec++] = im.len;
		jrec_head(head, JREC_DONE, ID2, NULL, NULL, 0);
		image_raw(&im, head, sizeof(head));
		im.ends[im.nrec++] = im.len;
	}
	assert_int_equal(scan_copy(im.buf, im.len, c), im.len);
	check_seen(&im, c, im.nrec);
	for (size_t i = 0; i < ARRAY_LEN(payloads); i++) {
		assert_int_equal(c->v[2 * i].type, JREC_MSG);
		assert_string_equal(c->v[2 * i].id, ID2);
		assert_int_equal(c->v[2 * i].len, plens[i]);
		assert_memory_equal(im.buf + c->v[2 * i].payload_off, payloads[i], plens[i]);
		assert_int_equal(c->v[2 * i + 1].type, JREC_DONE);
		assert_int_equal(c->v[2 * i + 1].len, 0);
	}
	free(c);
	image_free(&im);
}

/* ---- jrec_scan over named images ---- */

struct rec_spec {
	const char *magic; /* NULL ends the list */
	const char *id;
	const char *payload; /* NUL-terminated; NULL is empty */
	long len_field;	     /* the length written; -1: the payload's own */
};

struct scan_case {
	const char *name;
	struct rec_spec recs[5];
	bool flip; /* flip one bit after the CRC is computed ... */
	size_t flip_rec, flip_off;
	unsigned flip_bit; /* ... of record flip_rec, at flip_off from its start */
	const char *tail;  /* octets after the records */
	size_t tail_len;
	size_t want; /* records fn sees; the scan covers exactly those */
};

#define M(id, text)                                                                                \
	{                                                                                          \
		"PJM1", (id), (text), -1                                                           \
	}
#define D(id)                                                                                      \
	{                                                                                          \
		"PJD1", (id), NULL, -1                                                             \
	}
#define FLIP(r, o, b) .flip = true, .flip_rec = (r), .flip_off = (o), .flip_bit = (b)
#define TAIL(s)	      .tail = (s), .tail_len = sizeof(s) - 1

static const struct scan_case scan_cases[] = {
    {"empty image", {{0}}, .want = 0},
    {"one message", {M(ID1, "hello")}, .want = 1},
    {"one empty message", {M(ID1, "")}, .want = 1},
    {"a mark alone", {D(ID1)}, .want = 1},
    {"message then its mark", {M(ID1, "hello"), D(ID1)}, .want = 2},
    {"two messages and their marks", {M(ID1, "a"), M(ID2, "bb"), D(ID2), D(ID1)}, .want = 4},
    {"payload with NUL and CRLF", {M(ID3, "a\r\n.\r\n"), M(ID1, "z")}, .want = 2},

    /* One flipped bit stops the walk at that record. */
    {"flipped magic", {M(ID1, "a"), M(ID2, "b"), M(ID3, "c")}, FLIP(1, 0, 0), .want = 1},
    {"flipped magic version", {M(ID1, "a"), M(ID2, "b")}, FLIP(1, 3, 1), .want = 1},
    {"flipped length low bit", {M(ID1, "a"), M(ID2, "bcd"), M(ID3, "e")}, FLIP(1, 4, 0), .want = 1},
    {"flipped length high bit", {M(ID1, "a"), M(ID2, "b")}, FLIP(1, 7, 7), .want = 1},
    {"flipped length of a mark", {M(ID1, "a"), D(ID1), M(ID2, "b")}, FLIP(1, 4, 0), .want = 1},
    {"flipped crc", {M(ID1, "a"), M(ID2, "b")}, FLIP(1, 8, 0), .want = 1},
    {"flipped crc top bit", {M(ID1, "a"), M(ID2, "b")}, FLIP(1, 11, 7), .want = 1},
    /* '0' to '1': still an id, so only the CRC can tell. */
    {"flipped id, still hex", {M(ID1, "a"), M(ID3, "b")}, FLIP(1, 12, 0), .want = 1},
    {"flipped id of a mark", {M(ID1, "a"), D(ID3)}, FLIP(1, 12, 0), .want = 1},
    {"flipped id, not hex", {M(ID1, "a"), M(ID3, "b")}, FLIP(1, 12, 6), .want = 1},
    {"flipped payload first", {M(ID1, "a"), M(ID2, "payload")}, FLIP(1, 28, 0), .want = 1},
    {"flipped payload last", {M(ID1, "a"), M(ID2, "payload")}, FLIP(1, 34, 7), .want = 1},
    {"flipped first record", {M(ID1, "a"), M(ID2, "b")}, FLIP(0, 28, 3), .want = 0},
    {"flipped last record", {M(ID1, "a"), D(ID1), M(ID2, "b")}, FLIP(2, 28, 5), .want = 2},

    /* Records that check out by CRC but break a rule of the format. */
    {"mark with a length", {M(ID1, "a"), {"PJD1", ID1, "x", -1}, M(ID2, "b")}, .want = 1},
    {"mark with a length first", {{"PJD1", ID1, "xyz", -1}}, .want = 0},
    {"mark claiming a length it lacks", {{"PJD1", ID1, NULL, 1}, M(ID2, "b")}, .want = 0},
    {"lower-case id", {M(ID1, "a"), M("0123456789abcdef", "b")}, .want = 1},
    {"id with a G", {M("0123456789ABCDEG", "b")}, .want = 0},
    {"id with a space", {M(ID1, "a"), M("0123456789ABCDE ", "b")}, .want = 1},
    {"id with a NUL", {M(ID1, "a"), M(ID_NUL, "b")}, .want = 1},
    {"id of a mark not hex", {M(ID1, "a"), D("zzzzzzzzzzzzzzzz")}, .want = 1},
    {"unknown magic", {M(ID1, "a"), {"PJX1", ID2, "b", -1}}, .want = 1},
    {"lower-case magic", {{"pjm1", ID2, "b", -1}}, .want = 0},
    {"magic of a later version", {M(ID1, "a"), {"PJM2", ID2, "b", -1}}, .want = 1},
    {"length one short", {M(ID1, "a"), {"PJM1", ID2, "bcd", 2}, M(ID3, "e")}, .want = 1},
    {"length one long", {M(ID1, "a"), {"PJM1", ID2, "bcd", 4}, M(ID3, "e")}, .want = 1},
    {"length past the end", {M(ID1, "a"), {"PJM1", ID2, "bcd", 4}}, .want = 1},
    {"length all ones", {M(ID1, "a"), {"PJM1", ID2, "bcd", 0xffffffffL}}, .want = 1},

    /* What follows the last whole record. */
    {"zeros after",
     {M(ID1, "a"), D(ID1)},
     TAIL("\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
	  "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
     .want = 2},
    {"fewer zeros than a head", {M(ID1, "a")}, TAIL("\0\0\0\0\0\0\0\0\0\0"), .want = 1},
    {"zeros only",
     {{0}},
     TAIL("\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
     .want = 0},
    {"text after", {M(ID1, "a")}, TAIL("garbage after the last record, long enough"), .want = 1},
    {"a lone magic after", {M(ID1, "a")}, TAIL("PJM1"), .want = 1},
    {"a head without its payload",
     {M(ID1, "a")},
     TAIL("PJM1\x05\0\0\0\0\0\0\0"
	  "0123456789ABCDEF"
	  "abc"),
     .want = 1},
};

static void
build_case(const struct scan_case *sc, struct image *im)
{
	for (size_t i = 0; i < ARRAY_LEN(sc->recs) && sc->recs[i].magic != NULL; i++) {
		const struct rec_spec *r = &sc->recs[i];
		size_t plen = r->payload != NULL ? strlen(r->payload) : 0;
		uint32_t len_field = r->len_field < 0 ? (uint32_t)plen : (uint32_t)r->len_field;

		image_rec(im, r->magic, len_field, r->id, r->payload, plen);
	}
	if (sc->flip) {
		size_t start = sc->flip_rec == 0 ? 0 : im->ends[sc->flip_rec - 1];

		assert_true(sc->flip_rec < im->nrec);
		assert_true(start + sc->flip_off < im->ends[sc->flip_rec]);
		im->buf[start + sc->flip_off] ^= (char)(1u << sc->flip_bit);
	}
	image_raw(im, sc->tail, sc->tail_len);
}

static void
test_scan_case(void **state)
{
	const struct scan_case *sc = *state;
	struct image im = {0};
	struct collect *c = calloc(1, sizeof(*c));
	size_t got, want_len;

	assert_non_null(c);
	build_case(sc, &im);
	want_len = sc->want == 0 ? 0 : im.ends[sc->want - 1];
	got = scan_copy(im.buf, im.len, c);
	assert_int_equal(got, want_len);
	check_seen(&im, c, sc->want);

	/* The covered prefix alone scans the same. */
	assert_int_equal(scan_copy(im.buf, want_len, c), want_len);
	check_seen(&im, c, sc->want);
	free(c);
	image_free(&im);
}

/* Neither a NULL nor an empty buffer is read. */
static void
test_scan_empty(void **state)
{
	struct collect *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	assert_int_equal(jrec_scan(NULL, 0, collect_fn, c), 0);
	assert_int_equal(c->n, 0);
	assert_int_equal(scan_copy("", 0, c), 0);
	assert_int_equal(c->n, 0);
	free(c);
}

/* A varied image of many records: messages of many sizes, marks between them. */
static void
build_many(struct image *im, size_t n)
{
	uint32_t x = 99;
	char *payload = malloc(600);

	assert_non_null(payload);
	for (size_t i = 0; i < n; i++) {
		char id[UTIL_ID_LEN + 1];
		size_t plen;

		x = x * 1103515245u + 12345u;
		plen = (x >> 8) % 600;
		for (size_t k = 0; k < plen; k++)
			payload[k] = (char)(i + k);
		snprintf(id, sizeof(id), "%016zX", 0xC0FFEE00000000u + i / 2);
		if (i % 2 == 1 && x % 3 == 0)
			image_done(im, id);
		else
			image_msg(im, id, payload, plen);
	}
	free(payload);
}

static void
test_scan_many_records(void **state)
{
	struct image im = {0};
	struct collect *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	build_many(&im, 3000);
	assert_int_equal(scan_copy(im.buf, im.len, c), im.len);
	check_seen(&im, c, im.nrec);
	free(c);
	image_free(&im);
}

/*
 * A torn tail: the image cut at every length.  The scan covers exactly the
 * records that end at or before the cut and never reports the torn one.
 */
static void
test_scan_torn_tail(void **state)
{
	static const char big[] = "a longer payload, so that a cut lands inside it many times";
	struct image im = {0};
	struct collect *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	image_msg(&im, ID1, "", 0);
	image_msg(&im, ID2, "x", 1);
	image_done(&im, ID1);
	image_msg(&im, ID3, big, sizeof(big) - 1);
	image_done(&im, ID2);
	image_msg(&im, ID1, "tail", 4);
	for (size_t cut = 0; cut <= im.len; cut++) {
		size_t whole = 0;

		while (whole < im.nrec && im.ends[whole] <= cut)
			whole++;
		assert_int_equal(scan_copy(im.buf, cut, c), whole == 0 ? 0 : im.ends[whole - 1]);
		check_seen(&im, c, whole);
	}
	free(c);
	image_free(&im);
}

/* Every single bit of a record flipped in turn: the walk stops at it every time. */
static void
flip_every_bit(bool middle_is_mark)
{
	struct image im = {0};
	struct collect *c = calloc(1, sizeof(*c));
	size_t start, end;

	assert_non_null(c);
	image_msg(&im, ID1, "first", 5);
	if (middle_is_mark)
		image_done(&im, ID1);
	else
		image_msg(&im, ID2, "Subject: the middle one\r\n\r\nhi\r\n", 31);
	image_msg(&im, ID3, "last", 4);
	start = im.ends[0];
	end = im.ends[1];
	for (size_t off = start; off < end; off++)
		for (unsigned bit = 0; bit < 8; bit++) {
			im.buf[off] ^= (char)(1u << bit);
			if (scan_copy(im.buf, im.len, c) != im.ends[0] || c->n != 1)
				fail_msg(
				    "bit %u of octet %zu of the record: scan covered %zu records",
				    bit, off - start, c->n);
			im.buf[off] ^= (char)(1u << bit);
		}
	/* And put back, all three. */
	assert_int_equal(scan_copy(im.buf, im.len, c), im.len);
	check_seen(&im, c, 3);
	free(c);
	image_free(&im);
}

static void
test_scan_every_bit_of_a_message(void **state)
{
	flip_every_bit(false);
}

static void
test_scan_every_bit_of_a_mark(void **state)
{
	flip_every_bit(true);
}

/* The payload limit: JREC_PAYLOAD_MAX octets pass, one more does not. */
static void
test_scan_payload_max(void **state)
{
	char *payload = calloc(1, (size_t)JREC_PAYLOAD_MAX + 1);
	struct collect *c = calloc(1, sizeof(*c));

	assert_non_null(payload);
	assert_non_null(c);
	memset(payload, 'm', (size_t)JREC_PAYLOAD_MAX + 1);
	for (int over = 0; over <= 1; over++) {
		struct image im = {0};
		size_t plen = (size_t)JREC_PAYLOAD_MAX + (size_t)over;

		image_msg(&im, ID1, payload, plen);
		image_done(&im, ID1);
		if (over) {
			assert_int_equal(scan_copy(im.buf, im.len, c), 0);
			assert_int_equal(c->n, 0);
		} else {
			assert_int_equal(scan_copy(im.buf, im.len, c), im.len);
			check_seen(&im, c, 2);
		}
		image_free(&im);
	}
	free(c);
	free(payload);
}

/* fn returning false ends the walk: no more calls, and the scan ends after that record. */
static void
test_scan_fn_stops(void **state)
{
	struct image im = {0};
	struct collect *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	image_msg(&im, ID1, "one", 3);
	image_done(&im, ID1);
	image_msg(&im, ID2, "three", 5);
	image_msg(&im, ID3, "", 0);
	image_done(&im, ID3);
	for (size_t k = 1; k <= im.nrec; k++) {
		c->stop_at = k;
		assert_int_equal(scan_copy(im.buf, im.len, c), im.ends[k - 1]);
		check_seen(&im, c, k);
	}
	free(c);
	image_free(&im);
}

/* ---- main ---- */

static int
run_table(const char *group, CMUnitTestFunction fn, const void *rows, size_t row_size, size_t n,
	  const char *(*name_of)(const void *row))
{
	struct CMUnitTest *tests = calloc(n, sizeof(*tests));
	int failed;

	assert_non_null(tests);
	for (size_t i = 0; i < n; i++) {
		const void *row = (const char *)rows + i * row_size;

		tests[i].name = name_of(row);
		tests[i].test_func = fn;
		tests[i].initial_state = (void *)(uintptr_t)row;
	}
	failed = _cmocka_run_group_tests(group, tests, n, NULL, NULL);
	free(tests);
	return failed;
}

static const char *
crc_name(const void *row)
{
	return ((const struct crc_case *)row)->name;
}

static const char *
scan_name(const void *row)
{
	return ((const struct scan_case *)row)->name;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_crc_empty_input),
	    cmocka_unit_test(test_crc_paths_agree),
	    cmocka_unit_test(test_crc_matches_reference),
	    cmocka_unit_test(test_head_layout_message),
	    cmocka_unit_test(test_head_length_little_endian),
	    cmocka_unit_test(test_head_layout_done),
	    cmocka_unit_test(test_head_parts),
	    cmocka_unit_test(test_head_then_scan),
	    cmocka_unit_test(test_scan_empty),
	    cmocka_unit_test(test_scan_many_records),
	    cmocka_unit_test(test_scan_torn_tail),
	    cmocka_unit_test(test_scan_every_bit_of_a_message),
	    cmocka_unit_test(test_scan_every_bit_of_a_mark),
	    cmocka_unit_test(test_scan_payload_max),
	    cmocka_unit_test(test_scan_fn_stops),
	};
	int failed = 0;

	failed += run_table("jrec_crc32c vectors", test_crc_vector, crc_cases, sizeof(crc_cases[0]),
			    ARRAY_LEN(crc_cases), crc_name);
	failed += run_table("jrec_scan images", test_scan_case, scan_cases, sizeof(scan_cases[0]),
			    ARRAY_LEN(scan_cases), scan_name);
	failed += cmocka_run_group_tests_name("jrec", tests, NULL, NULL);
	return failed;
}
