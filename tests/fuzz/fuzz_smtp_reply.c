/*
 * libFuzzer harness for smtp_reply.  The first input byte chooses a split
 * point; the rest is a server's byte stream.  It is parsed three ways: at
 * once, in two pieces cut at the split point, and byte by byte.  Beyond "no
 * crash, no out-of-bounds read", the harness aborts when the three disagree
 * (replies, end status, octets consumed) or when a reply breaks a promise of
 * smtp_reply.h: code 200..599, a matching enhanced code, text NUL-terminated
 * and within SMTP_REPLY_TEXT_MAX, 1..SMTP_REPLY_LINES_MAX lines, and a
 * reply that ends right after an LF.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "smtp/smtp_reply.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What a way of feeding produced: a digest of the replies, not the replies (there may be many). */
struct outcome {
	uint64_t digest;
	size_t replies;
	size_t consumed;
	bool error;
};

static uint64_t
mix(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull; /* FNV-1a */
	return h;
}

static void
check_reply(const struct smtp_reply *r)
{
	size_t len, newlines = 0;

	CHECK(r->code >= 200 && r->code <= 599);
	CHECK(memchr(r->enhanced, '\0', sizeof(r->enhanced)) != NULL);
	CHECK(memchr(r->text, '\0', sizeof(r->text)) != NULL);
	CHECK(r->lines >= 1 && r->lines <= SMTP_REPLY_LINES_MAX);
	if (r->enhanced[0] != '\0') {
		CHECK(r->enhanced[0] == '0' + r->code / 100 && r->enhanced[1] == '.');
		CHECK(strlen(r->enhanced) >= 5 && strlen(r->enhanced) <= 9);
		CHECK(strchr(r->enhanced, ' ') == NULL);
	}
	len = strlen(r->text);
	CHECK(len < SMTP_REPLY_TEXT_MAX);
	for (size_t i = 0; i < len; i++)
		newlines += r->text[i] == '\n';
	/* Lines are joined with '\n' and hold none themselves; a cut text may lose some. */
	CHECK(newlines <= r->lines - 1);
	if (len < SMTP_REPLY_TEXT_MAX - 1)
		CHECK(newlines == r->lines - 1);
}

static void
feed(struct smtp_reply_parser *p, const char *in, size_t len, const char *whole, struct outcome *o)
{
	size_t off = 0;

	while (!o->error && off < len) {
		struct smtp_reply r;
		size_t used = 0;
		enum smtp_reply_status st = smtp_reply_parse(p, in + off, len - off, &used, &r);

		CHECK(used <= len - off);
		off += used;
		o->consumed += used;
		switch (st) {
		case SMTP_REPLY_DONE:
			CHECK(used > 0);
			CHECK(whole[o->consumed - 1] == '\n');
			check_reply(&r);
			o->replies++;
			o->digest = mix(o->digest, &r.code, sizeof(r.code));
			o->digest = mix(o->digest, &r.lines, sizeof(r.lines));
			o->digest = mix(o->digest, r.enhanced, strlen(r.enhanced) + 1);
			o->digest = mix(o->digest, r.text, strlen(r.text) + 1);
			break;
		case SMTP_REPLY_ERROR:
			CHECK(used > 0);
			o->error = true;
			break;
		case SMTP_REPLY_MORE:
			CHECK(off == len);
			break;
		}
	}
}

static void
run(const char *in, size_t len, size_t piece, struct outcome *o)
{
	struct smtp_reply_parser p;

	memset(o, 0, sizeof(*o));
	o->digest = 0xcbf29ce484222325ull;
	smtp_reply_parser_init(&p);
	for (size_t off = 0; off < len; off += piece) {
		size_t n = len - off < piece ? len - off : piece;
		feed(&p, in + off, n, in, o);
	}
	if (o->error) {
		size_t used = 1;
		struct smtp_reply r;
		CHECK(smtp_reply_parse(&p, "250 ok\r\n", 8, &used, &r) == SMTP_REPLY_ERROR);
		CHECK(used == 0);
	}
}

static void
same(const struct outcome *a, const struct outcome *b)
{
	CHECK(a->replies == b->replies);
	CHECK(a->digest == b->digest);
	CHECK(a->consumed == b->consumed);
	CHECK(a->error == b->error);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct outcome whole, two, bytes;
	const char *in;
	size_t len, cut;
	struct smtp_reply_parser p;

	if (size < 1)
		return 0;
	in = (const char *)data + 1;
	len = size - 1;
	run(in, len, len > 0 ? len : 1, &whole);
	if (!whole.error)
		CHECK(whole.consumed == len);

	/* Two pieces: the first byte picks where, scaled over the input. */
	cut = len > 0 ? (size_t)data[0] * len / 255 : 0;
	memset(&two, 0, sizeof(two));
	two.digest = 0xcbf29ce484222325ull;
	smtp_reply_parser_init(&p);
	feed(&p, in, cut, in, &two);
	feed(&p, in + cut, len - cut, in, &two);
	same(&whole, &two);

	run(in, len, 1, &bytes);
	same(&whole, &bytes);
	return 0;
}
