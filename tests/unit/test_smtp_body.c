/*
 * Unit tests for smtp_body: a table of named cases, each run one-shot, split
 * at every point, byte by byte, and through 2- and 3-octet output buffers;
 * every way of feeding must give the same output, status, consumed count
 * and flags.
 */
#include "smtp/smtp_body.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/smtp_parse.h"

struct body_case {
	const char *name;
	bool is_bdat;
	const char *in;
	size_t in_len;
	const char *out; /* expected message octets */
	size_t out_len;
	bool end;	   /* DATA: SMTP_BODY_END expected */
	unsigned flags;	   /* expected flags (BDAT: after smtp_body_bdat_end) */
	size_t tail;	   /* octets left unconsumed (the next command) */
	uint64_t max_size; /* 0 here: no limit */
	uint64_t size;	   /* expected size; 0 here: out_len */
};

#define IN(s)  .in = (s), .in_len = sizeof(s) - 1
#define OUT(s) .out = (s), .out_len = sizeof(s) - 1

#define TOO_BIG	  SMTP_BODY_TOO_BIG
#define LONG_LINE SMTP_BODY_LONG_LINE
#define BARE_EOL  SMTP_BODY_BARE_EOL

static const struct body_case fixed_cases[] = {
    /* The end of data, and what follows it. */
    {"empty message", IN(".\r\n"), OUT(""), .end = true},
    {"empty message then QUIT", IN(".\r\nQUIT\r\n"), OUT(""), .end = true, .tail = 6},
    {"simple", IN("Subject: hi\r\n\r\nbody\r\n.\r\n"), OUT("Subject: hi\r\n\r\nbody\r\n"),
     .end = true},
    {"pipelined MAIL after end", IN("a\r\n.\r\nMAIL FROM:<x@y>\r\n"), OUT("a\r\n"), .end = true,
     .tail = 17},
    {"second terminator is the next command's", IN("a\r\n.\r\n.\r\n"), OUT("a\r\n"), .end = true,
     .tail = 3},
    {"empty lines", IN("\r\n\r\n.\r\n"), OUT("\r\n\r\n"), .end = true},
    {"no end yet", IN("hello\r\n"), OUT("hello\r\n")},
    {"no input", IN(""), OUT("")},
    {"pending dot", IN("hello\r\n."), OUT("hello\r\n")},
    {"pending dot CR", IN("hello\r\n.\r"), OUT("hello\r\n")},
    {"pending CR", IN("hello\r"), OUT("hello")},
    {"pending CR at start", IN("\r"), OUT("")},

    /* Dot-stuffing, RFC 5321 4.5.2. */
    {"stuffed dot", IN("..x\r\n.\r\n"), OUT(".x\r\n"), .end = true},
    {"lone stuffing dot", IN(".x\r\n.\r\n"), OUT("x\r\n"), .end = true},
    {"stuffed dot line", IN("a\r\n..\r\n.\r\n"), OUT("a\r\n.\r\n"), .end = true},
    {"stuffed two dots", IN("a\r\n...\r\n.\r\n"), OUT("a\r\n..\r\n"), .end = true},
    {"dot space", IN(". \r\n.\r\n"), OUT(" \r\n"), .end = true},
    {"dot inside line", IN("a.b\r\nc.\r\n.\r\n"), OUT("a.b\r\nc.\r\n"), .end = true},
    {"space dot is content", IN("a\r\n .\r\nb"), OUT("a\r\n .\r\nb")},
    {"stuffed dot lines", IN("..\r\n..\r\n.\r\n"), OUT(".\r\n.\r\n"), .end = true},

    /* SMTP smuggling: none of these is the end of data. */
    {"LF.LF", IN("a\n.\nMAIL FROM:<x>\r\n"), OUT("a\n.\nMAIL FROM:<x>\r\n"), .flags = BARE_EOL},
    {"LF.CRLF", IN("a\n.\r\nMAIL FROM:<x>\r\n"), OUT("a\n.\r\nMAIL FROM:<x>\r\n"),
     .flags = BARE_EOL},
    {"CR.CR", IN("a\r.\rMAIL\r\n"), OUT("a\r.\rMAIL\r\n"), .flags = BARE_EOL},
    {"CR.CRLF", IN("a\r.\r\nMAIL\r\n"), OUT("a\r.\r\nMAIL\r\n"), .flags = BARE_EOL},
    {"CRLF.LF", IN("a\r\n.\nMAIL\r\n"), OUT("a\r\n\nMAIL\r\n"), .flags = BARE_EOL},
    {"CRLF.CR then more", IN("a\r\n.\rMAIL\r\n"), OUT("a\r\n\rMAIL\r\n"), .flags = BARE_EOL},
    {"CRLF.CR CRLF", IN("a\r\n.\r\r\nX"), OUT("a\r\n\r\r\nX"), .flags = BARE_EOL},
    {"CRLF.CR.CRLF", IN("a\r\n.\r.\r\nX"), OUT("a\r\n\r.\r\nX"), .flags = BARE_EOL},
    {"LF.LF at start", IN("\n.\nX"), OUT("\n.\nX"), .flags = BARE_EOL},
    {"LF.CRLF at start", IN("\n.\r\nX"), OUT("\n.\r\nX"), .flags = BARE_EOL},
    {"CR.CRLF at start", IN("\r.\r\nX"), OUT("\r.\r\nX"), .flags = BARE_EOL},
    {".LF at start", IN(".\nX"), OUT("\nX"), .flags = BARE_EOL},
    {".CR at start", IN(".\rX"), OUT("\rX"), .flags = BARE_EOL},
    {"CRCRLF.CRLF", IN("a\r\r\n.\r\nX"), OUT("a\r\r\n"), .end = true, .flags = BARE_EOL, .tail = 1},
    {"LFCRLF.CRLF", IN("a\n\r\n.\r\nX"), OUT("a\n\r\n"), .end = true, .flags = BARE_EOL, .tail = 1},
    {"LF.LF then real end", IN("a\n.\nb\r\n.\r\nX"), OUT("a\n.\nb\r\n"), .end = true,
     .flags = BARE_EOL, .tail = 1},
    {"bare LF message", IN("line1\nline2\n.\n"), OUT("line1\nline2\n.\n"), .flags = BARE_EOL},
    {"NUL bytes", IN("a\0\r\n.\0\r\n\0.\r\n"), OUT("a\0\r\n\0\r\n\0.\r\n")},
    {"NUL in terminator", IN("a\r\n.\0\r\n.\r\n"), OUT("a\r\n\0\r\n"), .end = true},
    {"NUL between CR and LF", IN("a\r\0\n.\r\n"), OUT("a\r\0\n.\r\n"), .flags = BARE_EOL},
    {"NUL then end", IN("\0\r\n.\r\n"), OUT("\0\r\n"), .end = true},
    {"high octets", IN("\xff\xfe\r\n.\xff\r\n.\r\n"), OUT("\xff\xfe\r\n\xff\r\n"), .end = true},

    /* max_size counts message octets after unstuffing. */
    {"exactly max", IN("abc\r\n.\r\n"), OUT("abc\r\n"), .end = true, .max_size = 5},
    {"max + 1", IN("abc\r\n.\r\n"), OUT("abc\r"), .end = true, .flags = TOO_BIG, .max_size = 4,
     .size = 5},
    {"max mid-line", IN("abc\r\nde\r\n..x\r\n.\r\nNEXT"), OUT("ab"), .end = true, .flags = TOO_BIG,
     .tail = 4, .max_size = 2, .size = 13},
    {"max 1", IN("ab\r\n.\r\n"), OUT("a"), .end = true, .flags = TOO_BIG, .max_size = 1, .size = 4},
    {"stuffed dot not counted", IN("..\r\n.\r\n"), OUT(".\r\n"), .end = true, .max_size = 3},
    {"too big still sees smuggling", IN("abcdef\n.\nX\r\n.\r\n"), OUT("ab"), .end = true,
     .flags = TOO_BIG | BARE_EOL, .max_size = 2, .size = 12},

    /* BDAT: no dots, no end; CR LF may straddle chunks (see the split runs). */
    {"BDAT simple", .is_bdat = true, IN("abc\r\ndef\r\n"), OUT("abc\r\ndef\r\n")},
    {"BDAT empty", .is_bdat = true, IN(""), OUT("")},
    {"BDAT dots are content", .is_bdat = true, IN(".\r\n..x\r\n.\r\n"), OUT(".\r\n..x\r\n.\r\n")},
    {"BDAT trailing bare CR", .is_bdat = true, IN("abc\r"), OUT("abc"), .flags = BARE_EOL,
     .size = 4},
    {"BDAT only CR", .is_bdat = true, IN("\r"), OUT(""), .flags = BARE_EOL, .size = 1},
    {"BDAT bare LF", .is_bdat = true, IN("a\nb"), OUT("a\nb"), .flags = BARE_EOL},
    {"BDAT bare CR", .is_bdat = true, IN("a\rb\r\n"), OUT("a\rb\r\n"), .flags = BARE_EOL},
    {"BDAT CR CR LF", .is_bdat = true, IN("a\r\r\n"), OUT("a\r\r\n"), .flags = BARE_EOL},
    {"BDAT NUL", .is_bdat = true, IN("\0\r\n\0"), OUT("\0\r\n\0")},
    {"BDAT exactly max", .is_bdat = true, IN("abc\r\n"), OUT("abc\r\n"), .max_size = 5},
    {"BDAT max + 1", .is_bdat = true, IN("abc\r\n"), OUT("abc\r"), .flags = TOO_BIG, .max_size = 4,
     .size = 5},
    {"BDAT trailing CR past max", .is_bdat = true, IN("abc\r"), OUT("abc"),
     .flags = TOO_BIG | BARE_EOL, .max_size = 3, .size = 4},
};

/* Cases with long inputs, built at start-up; pointers owned by this array. */
#define GEN_MAX 16
static struct body_case gen_cases[GEN_MAX];
static size_t gen_count;

struct driver_result {
	char *out; /* owned */
	size_t out_len;
	bool end;
	size_t consumed;
	unsigned flags;
	uint64_t size;
};

static uint64_t
case_max(const struct body_case *c)
{
	return c->max_size != 0 ? c->max_size : UINT64_MAX;
}

/*
 * Feeds c->in in the pieces cut at cuts[0..ncuts) (ascending), through an
 * output buffer of out_cap octets that is drained only when it has less
 * than 2 free (so calls also append to a partly full buffer).
 */
static void
feed(const struct body_case *c, const size_t *cuts, size_t ncuts, size_t out_cap,
     struct driver_result *r)
{
	struct smtp_body b;
	char *out = malloc(out_cap);
	size_t olen = 0;
	size_t pos = 0;

	assert_non_null(out);
	memset(r, 0, sizeof(*r));
	r->out = malloc(2 * c->in_len + 1);
	assert_non_null(r->out);
	smtp_body_begin(&b, case_max(c));
	for (size_t i = 0; i <= ncuts && !r->end; i++) {
		size_t stop = i < ncuts ? cuts[i] : c->in_len;

		do {
			size_t used = 99, before = olen;
			enum smtp_body_status st = SMTP_BODY_MORE;

			if (c->is_bdat)
				smtp_body_bdat(&b, c->in + pos, stop - pos, &used, out, out_cap,
					       &olen);
			else
				st = smtp_body_data(&b, c->in + pos, stop - pos, &used, out,
						    out_cap, &olen);
			assert_true(used <= stop - pos);
			assert_true(olen >= before && olen <= out_cap);
			pos += used;
			if (st == SMTP_BODY_END) {
				r->end = true;
				break;
			}
			if (out_cap - olen < 2) {
				memcpy(r->out + r->out_len, out, olen);
				r->out_len += olen;
				olen = 0;
			} else if (used == 0 && olen == before && pos < stop) {
				fail_msg("%s: no progress at %zu (out_cap %zu)", c->name, pos,
					 out_cap);
			}
		} while (pos < stop);
	}
	memcpy(r->out + r->out_len, out, olen);
	r->out_len += olen;
	if (c->is_bdat)
		smtp_body_bdat_end(&b);
	r->consumed = pos;
	r->flags = b.flags;
	r->size = b.size;
	free(out);
}

static void
expect(const struct body_case *c, const struct driver_result *r, const char *how)
{
	size_t want_consumed = c->in_len - c->tail;
	uint64_t want_size = c->size != 0 ? c->size : c->out_len;

	if (r->end != c->end)
		fail_msg("%s (%s): end %d, want %d", c->name, how, r->end, c->end);
	if (r->consumed != want_consumed)
		fail_msg("%s (%s): consumed %zu, want %zu", c->name, how, r->consumed,
			 want_consumed);
	if (r->flags != c->flags)
		fail_msg("%s (%s): flags %#x, want %#x", c->name, how, r->flags, c->flags);
	if (r->size != want_size)
		fail_msg("%s (%s): size %llu, want %llu", c->name, how, (unsigned long long)r->size,
			 (unsigned long long)want_size);
	if (r->out_len != c->out_len || memcmp(r->out, c->out, c->out_len) != 0)
		fail_msg("%s (%s): output differs (%zu octets, want %zu)", c->name, how, r->out_len,
			 c->out_len);
}

static void
run(const struct body_case *c, const size_t *cuts, size_t ncuts, size_t out_cap, const char *how)
{
	struct driver_result r;

	feed(c, cuts, ncuts, out_cap, &r);
	expect(c, &r, how);
	free(r.out);
}

static void
test_case(void **state)
{
	const struct body_case *c = *state;
	size_t big = 2 * c->in_len + 2;
	size_t *cuts = malloc((c->in_len + 1) * sizeof(*cuts));
	static const size_t tiny[] = {2, 3};

	assert_non_null(cuts);
	for (size_t i = 0; i < c->in_len; i++)
		cuts[i] = i + 1; /* byte by byte: cuts 1..in_len-1 */

	run(c, NULL, 0, big, "one-shot");
	run(c, cuts, c->in_len > 0 ? c->in_len - 1 : 0, big, "byte by byte");
	for (size_t t = 0; t < sizeof(tiny) / sizeof(tiny[0]); t++) {
		run(c, NULL, 0, tiny[t], "one-shot, tiny out");
		run(c, cuts, c->in_len > 0 ? c->in_len - 1 : 0, tiny[t], "byte by byte, tiny out");
	}
	for (size_t k = 0; k <= c->in_len; k++) {
		size_t cut = k;

		run(c, &cut, 1, big, "split");
		run(c, &cut, 1, 2, "split, out_cap 2");
	}
	free(cuts);
}

/* A DATA call after the end consumes nothing and still says END. */
static void
test_after_end(void **state)
{
	struct smtp_body b;
	char out[16];
	size_t used, olen = 0;

	smtp_body_begin(&b, UINT64_MAX);
	assert_int_equal(
	    smtp_body_data(&b, "x\r\n.\r\nQUIT\r\n", 12, &used, out, sizeof(out), &olen),
	    SMTP_BODY_END);
	assert_int_equal(used, 6);
	assert_int_equal(olen, 3);
	assert_int_equal(smtp_body_data(&b, "QUIT\r\n", 6, &used, out, sizeof(out), &olen),
			 SMTP_BODY_END);
	assert_int_equal(used, 0);
	assert_int_equal(olen, 3);
	assert_int_equal(smtp_body_data(&b, "", 0, &used, out, sizeof(out), &olen), SMTP_BODY_END);
	assert_int_equal(used, 0);
}

/* Less than 2 free octets: nothing consumed, nothing written. */
static void
test_out_full(void **state)
{
	struct smtp_body b;
	char out[4] = "zzzz";
	size_t used = 99, olen = 3;

	smtp_body_begin(&b, UINT64_MAX);
	assert_int_equal(smtp_body_data(&b, ".\r\n", 3, &used, out, sizeof(out), &olen),
			 SMTP_BODY_MORE);
	assert_int_equal(used, 0);
	assert_int_equal(olen, 3);
	olen = 9; /* out_len past out_cap is treated as full */
	assert_int_equal(smtp_body_data(&b, "ab", 2, &used, out, sizeof(out), &olen),
			 SMTP_BODY_MORE);
	assert_int_equal(used, 0);
	assert_memory_equal(out, "zzzz", 4);
	olen = 0;
	smtp_body_bdat(&b, "ab", 2, &used, out, 1, &olen);
	assert_int_equal(used, 0);
	assert_int_equal(olen, 0);
}

/* max_size 0 is a limit of zero octets, not "no limit". */
static void
test_max_zero(void **state)
{
	struct smtp_body b;
	char out[16];
	size_t used, olen = 0;

	smtp_body_begin(&b, 0);
	assert_int_equal(smtp_body_data(&b, ".\r\n", 3, &used, out, sizeof(out), &olen),
			 SMTP_BODY_END);
	assert_int_equal(b.flags, 0);
	smtp_body_begin(&b, 0);
	assert_int_equal(smtp_body_data(&b, "a\r\n.\r\n", 6, &used, out, sizeof(out), &olen),
			 SMTP_BODY_END);
	assert_int_equal(olen, 0);
	assert_int_equal(b.flags, SMTP_BODY_TOO_BIG);
	assert_int_equal(b.size, 3);
}

/* begin() resets everything a previous message left behind. */
static void
test_begin_resets(void **state)
{
	struct smtp_body b;
	char out[16];
	size_t used, olen = 0;

	smtp_body_begin(&b, 1);
	smtp_body_bdat(&b, "ab\nc\r", 5, &used, out, sizeof(out), &olen);
	assert_int_not_equal(b.flags, 0);
	smtp_body_begin(&b, UINT64_MAX);
	olen = 0;
	assert_int_equal(smtp_body_data(&b, ".\r\n", 3, &used, out, sizeof(out), &olen),
			 SMTP_BODY_END);
	assert_int_equal(b.flags, 0);
	assert_int_equal(b.size, 0);
	assert_int_equal(olen, 0);
}

struct gen_buf {
	char *p;
	size_t len;
};

/* pre, then n copies of fill, then post; owned by the caller. */
static struct gen_buf
gen(const char *pre, char fill, size_t n, const char *post)
{
	size_t a = strlen(pre), z = strlen(post);
	struct gen_buf g = {malloc(a + n + z + 1), a + n + z};

	assert_non_null(g.p);
	memcpy(g.p, pre, a);
	memset(g.p + a, fill, n);
	memcpy(g.p + a + n, post, z + 1);
	return g;
}

static void
add_gen(const char *name, struct gen_buf in, struct gen_buf out, bool end, unsigned flags,
	uint64_t max_size, uint64_t size)
{
	struct body_case *c = &gen_cases[gen_count++];

	assert_true(gen_count <= GEN_MAX);
	*c = (struct body_case){.name = name,
				.in = in.p,
				.in_len = in.len,
				.out = out.p,
				.out_len = out.len,
				.end = end,
				.flags = flags,
				.max_size = max_size,
				.size = size};
}

static void
build_gen_cases(void)
{
	const size_t x = SMTP_LINE_MAX - 2; /* content octets of a full-length line */

	add_gen("line of 1000 octets", gen("", 'x', x, "\r\n.\r\n"), gen("", 'x', x, "\r\n"), true,
		0, 0, 0);
	add_gen("line of 1001 octets", gen("", 'x', x + 1, "\r\n.\r\n"),
		gen("", 'x', x + 1, "\r\n"), true, LONG_LINE, 0, 0);
	add_gen("1000-octet lines twice", gen("a\r\n", 'x', x, "\r\nb\r\n.\r\n"),
		gen("a\r\n", 'x', x, "\r\nb\r\n"), true, 0, 0, 0);
	/* RFC 5321 4.5.3.1.6: the stuffing dot does not count towards the 1000 octets. */
	add_gen("stuffed line of 1000 octets plus its dot", gen(".", 'x', x, "\r\n.\r\n"),
		gen("", 'x', x, "\r\n"), true, 0, 0, 0);
	add_gen("stuffed line of 1001 octets plus its dot", gen(".", 'x', x + 1, "\r\n.\r\n"),
		gen("", 'x', x + 1, "\r\n"), true, LONG_LINE, 0, 0);
	/* A bare LF does not end a line, so it does not reset the count. */
	add_gen("bare LF inside a long line", gen("\n", 'x', x, "\r\n.\r\n"),
		gen("\n", 'x', x, "\r\n"), true, LONG_LINE | BARE_EOL, 0, 0);
	add_gen("unterminated 1001 octets", gen("", 'x', SMTP_LINE_MAX + 1, ""),
		gen("", 'x', SMTP_LINE_MAX + 1, ""), false, LONG_LINE, 0, 0);
	add_gen("big message exactly max", gen("", 'y', 3000, "\r\n.\r\n"),
		gen("", 'y', 3000, "\r\n"), true, LONG_LINE, 3002, 0);
	add_gen("big message max + 1", gen("", 'y', 3000, "\r\n.\r\n"), gen("", 'y', 3000, "\r"),
		true, LONG_LINE | TOO_BIG, 3001, 3002);
	add_gen("BDAT line of 1000 octets", gen("", 'x', x, "\r\n"), gen("", 'x', x, "\r\n"), false,
		0, 0, 0);
	gen_cases[gen_count - 1].is_bdat = true;
	add_gen("BDAT line of 1001 octets", gen("", 'x', x + 1, "\r\n"),
		gen("", 'x', x + 1, "\r\n"), false, LONG_LINE, 0, 0);
	gen_cases[gen_count - 1].is_bdat = true;
}

static void
free_gen_cases(void)
{
	for (size_t i = 0; i < gen_count; i++) {
		free((char *)gen_cases[i].in);
		free((char *)gen_cases[i].out);
	}
}

int
main(void)
{
	static const struct CMUnitTest fixed[] = {
	    cmocka_unit_test(test_after_end),
	    cmocka_unit_test(test_out_full),
	    cmocka_unit_test(test_max_zero),
	    cmocka_unit_test(test_begin_resets),
	};
	size_t nfixed = sizeof(fixed) / sizeof(fixed[0]);
	size_t ncases = sizeof(fixed_cases) / sizeof(fixed_cases[0]);
	struct CMUnitTest *tests;
	size_t n = 0;
	int rc;

	build_gen_cases();
	tests = calloc(nfixed + ncases + gen_count, sizeof(*tests));
	assert_non_null(tests);
	for (size_t i = 0; i < nfixed; i++)
		tests[n++] = fixed[i];
	for (size_t i = 0; i < ncases + gen_count; i++) {
		const struct body_case *c = i < ncases ? &fixed_cases[i] : &gen_cases[i - ncases];

		tests[n++] = (struct CMUnitTest){
		    .name = c->name, .test_func = test_case, .initial_state = (void *)c};
	}
	rc = _cmocka_run_group_tests("smtp_body", tests, n, NULL, NULL);
	free(tests);
	free_gen_cases();
	return rc;
}
