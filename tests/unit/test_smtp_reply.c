/*
 * Unit tests for smtp_reply: a table of named cases (input, expected
 * replies, expected end), each run one-shot, byte by byte, and split in two
 * at every position; every way of feeding must give the same replies, the
 * same end status and the same consumed count.  Generated inputs (line and
 * line-count limits) go through the same runner.
 */
#include "smtp/smtp_reply.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define REPLIES_MAX  4

struct want_reply {
	int code;
	const char *enhanced;
	const char *text;
	size_t lines;
};

struct reply_case {
	const char *name;
	const char *in;
	size_t in_len;
	struct want_reply replies[REPLIES_MAX]; /* code 0 ends the list */
	bool error;				/* the input ends in SMTP_REPLY_ERROR */
	size_t err_at;				/* error: total consumed (0: not checked) */
};

#define IN(s) .in = (s), .in_len = sizeof(s) - 1

static const struct reply_case cases[] = {
    /* One line. */
    {"single", IN("250 Ok\r\n"), {{250, "", "Ok", 1}}},
    {"bare code", IN("250\r\n"), {{250, "", "", 1}}},
    {"code and space", IN("250 \r\n"), {{250, "", "", 1}}},
    {"bare LF", IN("250 Ok\n"), {{250, "", "Ok", 1}}},
    {"lowest code", IN("200 x\r\n"), {{200, "", "x", 1}}},
    {"highest code", IN("599 x\r\n"), {{599, "", "x", 1}}},
    {"354",
     IN("354 End data with <CR><LF>.<CR><LF>\r\n"),
     {{354, "", "End data with <CR><LF>.<CR><LF>", 1}}},
    {"inner CR kept", IN("250 a\rb\r\n"), {{250, "", "a\rb", 1}}},
    {"one CR stripped", IN("250 a\r\r\n"), {{250, "", "a\r", 1}}},
    {"spaces kept", IN("250  two  spaces \r\n"), {{250, "", " two  spaces ", 1}}},
    {"high octets", IN("250 \xc3\xa9t\xc3\xa9\r\n"), {{250, "", "\xc3\xa9t\xc3\xa9", 1}}},

    /* Enhanced status codes (RFC 3463), recognized on the first line when the class matches. */
    {"enhanced", IN("250 2.1.0 Ok\r\n"), {{250, "2.1.0", "Ok", 1}}},
    {"enhanced 5xx",
     IN("550 5.1.1 <x@y>: User unknown\r\n"),
     {{550, "5.1.1", "<x@y>: User unknown", 1}}},
    {"enhanced 4xx", IN("451 4.3.0 try later\r\n"), {{451, "4.3.0", "try later", 1}}},
    {"enhanced widest", IN("452 4.123.456 x\r\n"), {{452, "4.123.456", "x", 1}}},
    {"enhanced alone", IN("250 2.0.0\r\n"), {{250, "2.0.0", "", 1}}},
    {"enhanced then spaces", IN("250 2.0.0   Ok\r\n"), {{250, "2.0.0", "Ok", 1}}},
    {"enhanced class mismatch", IN("250 4.1.0 Ok\r\n"), {{250, "", "4.1.0 Ok", 1}}},
    {"enhanced class 3 in 354", IN("354 3.0.0 go\r\n"), {{354, "3.0.0", "go", 1}}},
    {"enhanced subject too long", IN("250 2.1000.0 x\r\n"), {{250, "", "2.1000.0 x", 1}}},
    {"enhanced detail too long", IN("250 2.1.0000 x\r\n"), {{250, "", "2.1.0000 x", 1}}},
    {"enhanced missing detail", IN("250 2.0. Ok\r\n"), {{250, "", "2.0. Ok", 1}}},
    {"enhanced missing subject", IN("250 2..0 Ok\r\n"), {{250, "", "2..0 Ok", 1}}},
    {"enhanced stuck to text", IN("250 2.0.0Ok\r\n"), {{250, "", "2.0.0Ok", 1}}},
    {"enhanced with tab", IN("250 2.0.0\tOk\r\n"), {{250, "", "2.0.0\tOk", 1}}},
    {"enhanced short", IN("250 2.0\r\n"), {{250, "", "2.0", 1}}},
    {"enhanced only on the first line",
     IN("250-2.0.0 a\r\n250 2.0.0 b\r\n"),
     {{250, "2.0.0", "a\n2.0.0 b", 2}}},

    /* Multi-line replies (RFC 5321 4.2.1). */
    {"multi-line",
     IN("250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"),
     {{250, "", "mx.test\nPIPELINING\nSIZE 1000", 3}}},
    {"multi-line bare LF", IN("250-a\n250 b\n"), {{250, "", "a\nb", 2}}},
    {"multi-line mixed ends", IN("250-a\r\n250-b\n250 c\r\n"), {{250, "", "a\nb\nc", 3}}},
    {"multi-line empty first", IN("250-\r\n250 x\r\n"), {{250, "", "\nx", 2}}},
    {"multi-line ends with bare code", IN("250-a\r\n250\r\n"), {{250, "", "a\n", 2}}},
    {"multi-line enhanced",
     IN("550-5.1.1 first\r\n550 5.1.1 second\r\n"),
     {{550, "5.1.1", "first\n5.1.1 second", 2}}},

    /* Several replies in one input (pipelining), and partial input. */
    {"two replies", IN("250 a\r\n354 go\r\n"), {{250, "", "a", 1}, {354, "", "go", 1}}},
    {"pipelined group",
     IN("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 unknown\r\n354 go ahead\r\n"),
     {{250, "2.1.0", "Ok", 1},
      {250, "2.1.5", "Ok", 1},
      {550, "5.1.1", "unknown", 1},
      {354, "", "go ahead", 1}}},
    {"reply then partial", IN("250 a\r\n250-b\r\n25"), {{250, "", "a", 1}}},
    {"empty input", IN("")},
    {"no LF yet", IN("250 Ok\r")},
    {"continuation only", IN("250-a\r\n250-b\r\n")},

    /* Errors. */
    {"garbage", IN("hello\r\n"), .error = true, .err_at = 7},
    {"empty line", IN("\r\n"), .error = true, .err_at = 2},
    {"too short", IN("25\r\n"), .error = true, .err_at = 4},
    {"1xx", IN("150 x\r\n"), .error = true},
    {"0xx", IN("050 x\r\n"), .error = true},
    {"6xx", IN("600 x\r\n"), .error = true},
    {"letter in code", IN("2a0 x\r\n"), .error = true},
    {"bad separator", IN("250_x\r\n"), .error = true},
    {"no separator", IN("250x\r\n"), .error = true},
    {"four digits", IN("2500 x\r\n"), .error = true},
    {"leading space", IN(" 250 x\r\n"), .error = true},
    {"mismatched codes", IN("250-a\r\n251 b\r\n"), .error = true, .err_at = 14},
    {"mismatched class", IN("250-a\r\n550 b\r\n"), .error = true},
    {"NUL in text", IN("250 a\0b\r\n"), .error = true, .err_at = 9},
    {"garbage continuation", IN("250-a\r\nxyz\r\n"), .error = true, .err_at = 12},
    {"error after a good reply",
     IN("250 ok\r\n550-a\r\n551 b\r\n"),
     {{250, "", "ok", 1}},
     .error = true,
     .err_at = 22},
    {"binary", IN("\x01\x02\x03\xff\n"), .error = true, .err_at = 5},
};

/* ---- the runner ---------------------------------------------------------- */

struct outcome {
	struct smtp_reply replies[REPLIES_MAX + 1];
	size_t n;
	bool error;
	size_t consumed;
};

/* Feeds one piece of the input, as a caller does: parse until it is all consumed. */
static void
feed(struct smtp_reply_parser *p, const char *in, size_t len, struct outcome *o)
{
	size_t off = 0;

	while (!o->error && off < len) {
		size_t used = 0;
		struct smtp_reply r;
		enum smtp_reply_status st = smtp_reply_parse(p, in + off, len - off, &used, &r);

		assert_true(used <= len - off);
		off += used;
		o->consumed += used;
		switch (st) {
		case SMTP_REPLY_DONE:
			assert_true(used > 0);
			assert_true(o->n <= REPLIES_MAX);
			o->replies[o->n++] = r;
			break;
		case SMTP_REPLY_ERROR:
			o->error = true;
			break;
		case SMTP_REPLY_MORE:
			assert_int_equal(off, len);
			break;
		}
	}
}

/* Runs the input split at the given points (sorted, within 0..len). */
static void
run_split(const char *in, size_t len, const size_t *cuts, size_t ncuts, struct outcome *o)
{
	struct smtp_reply_parser p;
	size_t from = 0;

	memset(o, 0, sizeof(*o));
	smtp_reply_parser_init(&p);
	for (size_t i = 0; i <= ncuts; i++) {
		size_t to = i < ncuts ? cuts[i] : len;
		feed(&p, in + from, to - from, o);
		from = to;
	}
	if (o->error) {
		/* A failed parser stays failed. */
		size_t used = 1;
		struct smtp_reply r;
		assert_int_equal(smtp_reply_parse(&p, "250 ok\r\n", 8, &used, &r),
				 SMTP_REPLY_ERROR);
		assert_int_equal(used, 0);
	}
}

static bool
same_outcome(const struct outcome *a, const struct outcome *b)
{
	if (a->n != b->n || a->error != b->error || a->consumed != b->consumed)
		return false;
	for (size_t i = 0; i < a->n; i++) {
		const struct smtp_reply *x = &a->replies[i], *y = &b->replies[i];
		if (x->code != y->code || x->lines != y->lines ||
		    strcmp(x->enhanced, y->enhanced) != 0 || strcmp(x->text, y->text) != 0)
			return false;
	}
	return true;
}

/* One-shot, then byte by byte, then split in two at every point: all must agree. */
static bool
check_splits(const char *name, const char *in, size_t len, struct outcome *whole)
{
	struct outcome o;
	size_t *cuts = malloc((len + 1) * sizeof(*cuts));
	bool ok = true;

	assert_non_null(cuts);
	run_split(in, len, NULL, 0, whole);
	for (size_t i = 0; i < len; i++)
		cuts[i] = i + 1;
	run_split(in, len, cuts, len > 0 ? len - 1 : 0, &o);
	if (!same_outcome(whole, &o)) {
		print_error("case \"%s\": byte-by-byte feeding differs\n", name);
		ok = false;
	}
	for (size_t k = 0; k <= len; k++) {
		run_split(in, len, &k, 1, &o);
		if (!same_outcome(whole, &o)) {
			print_error("case \"%s\": split at %zu differs\n", name, k);
			ok = false;
			break;
		}
	}
	free(cuts);
	return ok;
}

static bool
check_case(const struct reply_case *c)
{
	struct outcome o;
	size_t want_n = 0;
	bool ok = check_splits(c->name, c->in, c->in_len, &o);

	while (want_n < REPLIES_MAX && c->replies[want_n].code != 0)
		want_n++;
	if (o.n != want_n || o.error != c->error) {
		print_error("case \"%s\": %zu replies, error=%d; want %zu, error=%d\n", c->name,
			    o.n, o.error, want_n, c->error);
		return false;
	}
	for (size_t i = 0; i < want_n; i++) {
		const struct want_reply *w = &c->replies[i];
		const struct smtp_reply *r = &o.replies[i];
		if (r->code != w->code || r->lines != w->lines ||
		    strcmp(r->enhanced, w->enhanced) != 0 || strcmp(r->text, w->text) != 0) {
			print_error("case \"%s\" reply %zu: %d [%s] \"%s\" %zu lines; want %d [%s] "
				    "\"%s\" %zu\n",
				    c->name, i, r->code, r->enhanced, r->text, r->lines, w->code,
				    w->enhanced, w->text, w->lines);
			ok = false;
		}
	}
	if (c->error && c->err_at != 0 && o.consumed != c->err_at) {
		print_error("case \"%s\": error after %zu octets, want %zu\n", c->name, o.consumed,
			    c->err_at);
		ok = false;
	}
	if (!c->error && o.consumed != c->in_len) {
		print_error("case \"%s\": consumed %zu of %zu\n", c->name, o.consumed, c->in_len);
		ok = false;
	}
	return ok;
}

static void
test_cases(void **state)
{
	size_t failed = 0;

	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		if (!check_case(&cases[i]))
			failed++;
	assert_int_equal(failed, 0);
}

/* ---- generated inputs: limits ---------------------------------------------- */

/* "250 " + filler up to a line of `len` octets (CRLF or LF not counted). */
static size_t
make_line(char *dst, size_t len, const char *eol)
{
	memcpy(dst, "250 ", 4);
	memset(dst + 4, 'x', len - 4);
	memcpy(dst + len, eol, strlen(eol));
	return len + strlen(eol);
}

static void
test_line_limit(void **state)
{
	static const struct {
		const char *name;
		size_t len;
		const char *eol;
		bool error;
		size_t err_at; /* 0: not checked */
	} lines[] = {
	    {"max with CRLF", SMTP_REPLY_LINE_MAX, "\r\n", false, 0},
	    {"max with LF", SMTP_REPLY_LINE_MAX, "\n", false, 0},
	    {"max + 1 with CRLF", SMTP_REPLY_LINE_MAX + 1, "\r\n", true, SMTP_REPLY_LINE_MAX + 2},
	    {"max + 1 with LF", SMTP_REPLY_LINE_MAX + 1, "\n", true, SMTP_REPLY_LINE_MAX + 2},
	    /* Without an LF, the error comes at the first octet that cannot be a line's. */
	    {"max + 2, no end", SMTP_REPLY_LINE_MAX + 2, "", true, SMTP_REPLY_LINE_MAX + 2},
	    {"far over, no end", SMTP_REPLY_LINE_MAX + 500, "", true, SMTP_REPLY_LINE_MAX + 2},
	    {"max + 1, no end yet", SMTP_REPLY_LINE_MAX + 1, "", false, 0},
	};
	char *buf = malloc(SMTP_REPLY_LINE_MAX + 600);
	size_t failed = 0;

	assert_non_null(buf);
	for (size_t i = 0; i < ARRAY_LEN(lines); i++) {
		struct outcome o;
		size_t n = make_line(buf, lines[i].len, lines[i].eol);

		if (!check_splits(lines[i].name, buf, n, &o) || o.error != lines[i].error ||
		    (lines[i].err_at != 0 && o.consumed != lines[i].err_at)) {
			print_error("case \"%s\": error=%d consumed=%zu\n", lines[i].name, o.error,
				    o.consumed);
			failed++;
			continue;
		}
		if (!o.error && *lines[i].eol != '\0' &&
		    (o.n != 1 || strlen(o.replies[0].text) != lines[i].len - 4)) {
			print_error("case \"%s\": the reply is wrong\n", lines[i].name);
			failed++;
		}
	}
	free(buf);
	assert_int_equal(failed, 0);
}

/* A reply of `lines` lines, each "250-" + `width` octets (the last "250 "). */
static size_t
make_reply_lines(char *dst, size_t lines, size_t width)
{
	size_t n = 0;

	for (size_t i = 0; i < lines; i++) {
		memcpy(dst + n, i + 1 < lines ? "250-" : "250 ", 4);
		n += 4;
		for (size_t j = 0; j < width; j++)
			dst[n++] = (char)('a' + (i + j) % 26);
		dst[n++] = '\r';
		dst[n++] = '\n';
	}
	return n;
}

static void
test_lines_limit(void **state)
{
	static const struct {
		const char *name;
		size_t lines, width;
		bool error;
		size_t text_len; /* expected strlen(text) */
	} replies[] = {
	    {"max lines", SMTP_REPLY_LINES_MAX, 3, false, SMTP_REPLY_LINES_MAX * 4 - 1},
	    {"max lines + 1", SMTP_REPLY_LINES_MAX + 1, 3, true, 0},
	    {"text cut at the limit", 40, 200, false, SMTP_REPLY_TEXT_MAX - 1},
	    {"text just fits", 4, SMTP_REPLY_TEXT_MAX / 4 - 1, false, SMTP_REPLY_TEXT_MAX - 1},
	    {"text one short", 4, SMTP_REPLY_TEXT_MAX / 4 - 2, false, SMTP_REPLY_TEXT_MAX - 5},
	};
	size_t failed = 0;

	for (size_t i = 0; i < ARRAY_LEN(replies); i++) {
		char *buf = malloc(replies[i].lines * (replies[i].width + 6) + 1);
		struct outcome o;
		size_t n;

		assert_non_null(buf);
		n = make_reply_lines(buf, replies[i].lines, replies[i].width);
		if (!check_splits(replies[i].name, buf, n, &o) || o.error != replies[i].error) {
			print_error("case \"%s\": error=%d\n", replies[i].name, o.error);
			failed++;
		} else if (!o.error && (o.n != 1 || o.replies[0].lines != replies[i].lines ||
					strlen(o.replies[0].text) != replies[i].text_len)) {
			print_error("case \"%s\": %zu lines, text %zu\n", replies[i].name,
				    o.replies[0].lines, strlen(o.replies[0].text));
			failed++;
		}
		free(buf);
	}
	assert_int_equal(failed, 0);
}

static void
test_class(void **state)
{
	static const struct {
		int code;
		int class;
	} classes[] = {{200, 2}, {250, 2}, {299, 2}, {354, 0}, {421, 4},
		       {452, 4}, {550, 5}, {599, 5}, {150, 0}, {0, 0}};

	for (size_t i = 0; i < ARRAY_LEN(classes); i++) {
		struct smtp_reply r = {.code = classes[i].code};
		assert_int_equal(smtp_reply_class(&r), classes[i].class);
	}
}

/* The parser can be reused after init, even after an error. */
static void
test_reinit(void **state)
{
	struct smtp_reply_parser p;
	struct smtp_reply r;
	size_t used;

	smtp_reply_parser_init(&p);
	assert_int_equal(smtp_reply_parse(&p, "250-a\r\nxx\r\n", 11, &used, &r), SMTP_REPLY_ERROR);
	smtp_reply_parser_init(&p);
	assert_int_equal(smtp_reply_parse(&p, "220 hi\r\n", 8, &used, &r), SMTP_REPLY_DONE);
	assert_int_equal(used, 8);
	assert_int_equal(r.code, 220);
	assert_string_equal(r.text, "hi");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_cases),	cmocka_unit_test(test_line_limit),
	    cmocka_unit_test(test_lines_limit), cmocka_unit_test(test_class),
	    cmocka_unit_test(test_reinit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
