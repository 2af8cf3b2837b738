/*
 * Fuzz target for smtp_body.
 *
 * Input: 4 control octets, then the body.
 *   [0] output capacity: bit 7 set = large, else 2 + (low 4 bits)
 *   [1] bit 7 set = no size limit, else max_size = (low 7 bits) << 8 | [2]
 *   [3] seed of the piece lengths
 * The body goes through DATA and BDAT three ways: one-shot with a large
 * output buffer (the reference), in pseudo-random pieces through the chosen
 * output capacity, and through a naive whole-buffer model written from the
 * RFC rules; all three must agree on status, consumed, output, flags, size.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "smtp/smtp_body.h"
#include "smtp/smtp_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct outcome {
	char *out; /* owned */
	size_t out_len;
	bool end;
	size_t consumed;
	unsigned flags;
	uint64_t size;
};

struct pieces {
	uint32_t rng;
	size_t max_piece; /* 0: whole rest */
};

static size_t
next_piece(struct pieces *p, size_t left)
{
	size_t n;

	if (p->max_piece == 0)
		return left;
	p->rng ^= p->rng << 13; /* xorshift32 */
	p->rng ^= p->rng >> 17;
	p->rng ^= p->rng << 5;
	n = p->rng % (p->max_piece + 1); /* 0 too: empty feeds are legal */
	return n < left ? n : left;
}

/* Runs the parser over in[0..len) fed as pieces says, through out_cap octets of output. */
static void
run_parser(bool is_bdat, const char *in, size_t len, uint64_t max_size, struct pieces pc,
	   size_t out_cap, struct outcome *r)
{
	struct smtp_body b;
	char *out = malloc(out_cap);
	size_t olen = 0, pos = 0;

	CHECK(out != NULL);
	memset(r, 0, sizeof(*r));
	r->out = malloc(2 * len + 1);
	CHECK(r->out != NULL);
	smtp_body_begin(&b, max_size);
	while (!r->end) {
		size_t stop = pos + next_piece(&pc, len - pos);

		do {
			size_t used = 0, before = olen;

			if (is_bdat)
				smtp_body_bdat(&b, in + pos, stop - pos, &used, out, out_cap,
					       &olen);
			else
				r->end = smtp_body_data(&b, in + pos, stop - pos, &used, out,
							out_cap, &olen) == SMTP_BODY_END;
			CHECK(used <= stop - pos && olen >= before && olen <= out_cap);
			pos += used;
			if (r->end)
				break;
			if (out_cap - olen < 2) {
				memcpy(r->out + r->out_len, out, olen);
				r->out_len += olen;
				olen = 0;
			} else {
				/* Room and input left: the call must have done something. */
				CHECK(pos == stop || used > 0 || olen > before);
			}
		} while (pos < stop);
		if (pos == len)
			break;
	}
	memcpy(r->out + r->out_len, out, olen);
	r->out_len += olen;
	/* Output is exactly the first max_size message octets. */
	CHECK(r->out_len == (b.size < max_size ? b.size : max_size));
	if (is_bdat)
		smtp_body_bdat_end(&b);
	r->consumed = pos;
	r->flags = b.flags;
	r->size = b.size;
	free(out);
}

/* The naive model's output: counts every octet, keeps the first max_size. */
static void
emit(struct outcome *m, uint64_t max_size, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (m->size < max_size)
			m->out[m->out_len++] = p[i];
		else
			m->flags |= SMTP_BODY_TOO_BIG;
		m->size++;
	}
}

static bool
has_eol(const char *p, size_t n)
{
	return memchr(p, '\r', n) != NULL || memchr(p, '\n', n) != NULL;
}

static const char *
find_crlf(const char *p, const char *end)
{
	for (; end - p >= 2; p++)
		if (p[0] == '\r' && p[1] == '\n')
			return p;
	return NULL;
}

/*
 * DATA as RFC 5321 4.5.2 reads: lines end at CR LF only; the line "." ends
 * the data; a leading '.' is deleted; CR or LF inside a line is a bare EOL.
 * The unfinished last line keeps back what the parser cannot decide yet.
 */
static void
model_data(const char *in, size_t len, uint64_t max_size, struct outcome *m)
{
	const char *p = in, *end = in + len;

	memset(m, 0, sizeof(*m));
	m->out = malloc(2 * len + 1);
	CHECK(m->out != NULL);
	for (;;) {
		const char *e = find_crlf(p, end);
		size_t n = (size_t)((e != NULL ? e : end) - p);
		size_t wire = e != NULL ? n + 2 : n;
		const char *c = p;

		/* The stuffing dot is not counted (RFC 5321 4.5.3.1.6). */
		if (n > 0 && p[0] == '.')
			wire--;
		if (wire > SMTP_LINE_MAX)
			m->flags |= SMTP_BODY_LONG_LINE;
		if (e == NULL) {
			m->consumed = len;
			if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '\r'))
				return; /* a possible end, still pending */
			if (n > 0 && c[0] == '.')
				c++, n--;
			if (n > 0 && c[n - 1] == '\r')
				n--; /* pending CR */
			if (has_eol(c, n))
				m->flags |= SMTP_BODY_BARE_EOL;
			emit(m, max_size, c, n);
			return;
		}
		if (n == 1 && p[0] == '.') {
			m->end = true;
			m->consumed = (size_t)(e + 2 - in);
			return;
		}
		if (n > 0 && c[0] == '.')
			c++, n--;
		if (has_eol(c, n))
			m->flags |= SMTP_BODY_BARE_EOL;
		emit(m, max_size, c, n);
		emit(m, max_size, "\r\n", 2);
		p = e + 2;
	}
}

/* BDAT: the octets as they are; a final CR counts but is not written. */
static void
model_bdat(const char *in, size_t len, uint64_t max_size, struct outcome *m)
{
	size_t line = 0;

	memset(m, 0, sizeof(*m));
	m->out = malloc(len + 1);
	CHECK(m->out != NULL);
	for (size_t i = 0; i < len; i++) {
		bool crlf_cr = in[i] == '\r' && i + 1 < len && in[i + 1] == '\n';
		bool crlf_lf = in[i] == '\n' && i > 0 && in[i - 1] == '\r';

		if ((in[i] == '\r' && !crlf_cr) || (in[i] == '\n' && !crlf_lf))
			m->flags |= SMTP_BODY_BARE_EOL;
		if (++line > SMTP_LINE_MAX)
			m->flags |= SMTP_BODY_LONG_LINE;
		if (crlf_lf)
			line = 0;
	}
	emit(m, max_size, in, len > 0 && in[len - 1] == '\r' ? len - 1 : len);
	if (len > 0 && in[len - 1] == '\r') {
		if (m->size >= max_size)
			m->flags |= SMTP_BODY_TOO_BIG;
		m->size++;
	}
	m->consumed = len;
}

static void
same(const struct outcome *a, const struct outcome *b)
{
	CHECK(a->end == b->end);
	CHECK(a->consumed == b->consumed);
	CHECK(a->flags == b->flags);
	CHECK(a->size == b->size);
	CHECK(a->out_len == b->out_len);
	CHECK(memcmp(a->out, b->out, a->out_len) == 0);
}

static void
check_mode(bool is_bdat, const char *in, size_t len, uint64_t max_size, struct pieces pc,
	   size_t out_cap)
{
	static const struct pieces whole = {1, 0};
	struct outcome ref, split, model;

	run_parser(is_bdat, in, len, max_size, whole, 2 * len + 2, &ref);
	run_parser(is_bdat, in, len, max_size, pc, out_cap, &split);
	if (is_bdat)
		model_bdat(in, len, max_size, &model);
	else
		model_data(in, len, max_size, &model);
	same(&ref, &split);
	same(&ref, &model);
	if (ref.end) {
		/* Nothing but CR LF . CR LF ends the data. */
		CHECK(ref.consumed >= 3);
		CHECK(memcmp(in + ref.consumed - 3, ".\r\n", 3) == 0);
		CHECK(ref.consumed == 3 ||
		      (ref.consumed >= 5 && memcmp(in + ref.consumed - 5, "\r\n", 2) == 0));
	} else {
		CHECK(ref.consumed == len);
	}
	free(ref.out);
	free(split.out);
	free(model.out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t piece_max[] = {0, 1, 2, 3, 5, 8, 64, 1000};
	struct pieces pc;
	uint64_t max_size;
	size_t out_cap, len;
	const char *in;

	if (size < 4)
		return 0;
	in = (const char *)data + 4;
	len = size - 4;
	out_cap = data[0] & 0x80 ? 2 * len + 2 : 2 + (size_t)(data[0] & 0x0f);
	max_size = data[1] & 0x80 ? UINT64_MAX : (uint64_t)(data[1] & 0x7f) << 8 | data[2];
	pc.rng = 0x9e3779b9u ^ data[3];
	pc.max_piece = piece_max[data[3] % (sizeof(piece_max) / sizeof(piece_max[0]))];

	check_mode(false, in, len, max_size, pc, out_cap);
	check_mode(true, in, len, max_size, pc, out_cap);
	return 0;
}
