/*
 * Unit tests for cli_mail, the pure half of `petrel sendmail`: tables of
 * named cases for the stdin line converter (fed whole, byte by byte and
 * split at every position), the header-section split (fed line by line to
 * exercise the resumable scan), address lists, address checks and From:.
 */
#include "cli/cli_mail.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define IN(s)	     .in = (s), .in_len = sizeof(s) - 1

/* ---- lines ----------------------------------------------------------------------------- */

struct lines_case {
	const char *name;
	bool dot_ends;
	const char *in;
	size_t in_len;
	const char *out;
	enum cli_mail_lines_status status; /* of the last push (END/NUL) or MORE */
};

static const struct lines_case lines_cases[] = {
    {"empty", true, IN(""), "", CLI_MAIL_LINES_MORE},
    {"LF to CRLF", true, IN("a\nb\n"), "a\r\nb\r\n", CLI_MAIL_LINES_MORE},
    {"CRLF kept", true, IN("a\r\nb\r\n"), "a\r\nb\r\n", CLI_MAIL_LINES_MORE},
    {"mixed ends", true, IN("a\r\nb\nc\r\n"), "a\r\nb\r\nc\r\n", CLI_MAIL_LINES_MORE},
    {"last line without end", true, IN("a\nb"), "a\r\nb\r\n", CLI_MAIL_LINES_MORE},
    {"bare CR ends the line", true, IN("a\rb\n"), "a\r\nb\r\n", CLI_MAIL_LINES_MORE},
    {"CR CR LF", true, IN("a\r\r\n"), "a\r\n\r\n", CLI_MAIL_LINES_MORE},
    {"bare CR dot line ends", true, IN("a\r.\r\nMAIL\n"), "a\r\n", CLI_MAIL_LINES_END},
    {"bare CR dot line with -i", false, IN("a\r.\r\nb\n"), "a\r\n.\r\nb\r\n", CLI_MAIL_LINES_MORE},
    {"bare CR then LF line", true, IN("a\r\rb"), "a\r\n\r\nb\r\n", CLI_MAIL_LINES_MORE},
    {"CR at the end", true, IN("a\r"), "a\r\n", CLI_MAIL_LINES_MORE},
    {"CR ending an empty last line", true, IN("a\n\r"), "a\r\n\r\n", CLI_MAIL_LINES_MORE},
    {"empty lines", true, IN("\n\n"), "\r\n\r\n", CLI_MAIL_LINES_MORE},
    {"dot LF ends", true, IN("a\n.\nb\n"), "a\r\n", CLI_MAIL_LINES_END},
    {"dot CRLF ends", true, IN("a\r\n.\r\nb\r\n"), "a\r\n", CLI_MAIL_LINES_END},
    {"dot first ends", true, IN(".\nb\n"), "", CLI_MAIL_LINES_END},
    {"dot at EOF ends", true, IN("a\n."), "a\r\n", CLI_MAIL_LINES_MORE},
    {"dot kept with -i", false, IN("a\n.\nb\n"), "a\r\n.\r\nb\r\n", CLI_MAIL_LINES_MORE},
    {"dot at EOF with -i", false, IN("a\n."), "a\r\n.\r\n", CLI_MAIL_LINES_MORE},
    {"two dots kept", true, IN("..\n"), "..\r\n", CLI_MAIL_LINES_MORE},
    {"dot word kept", true, IN(".a\n.\n"), ".a\r\n", CLI_MAIL_LINES_END},
    {"dot space kept", true, IN(". \n"), ". \r\n", CLI_MAIL_LINES_MORE},
    {"dot CR CR", true, IN(".\r\r\n"), "", CLI_MAIL_LINES_END},
    {"dot CR x", true, IN(".\rx\n"), "", CLI_MAIL_LINES_END},
    {"dot CR x with -i", false, IN(".\rx\n"), ".\r\nx\r\n", CLI_MAIL_LINES_MORE},
    {"dot mid line", true, IN("a.\n"), "a.\r\n", CLI_MAIL_LINES_MORE},
    {"NUL refused", true, IN("a\nb\0c\n"), "a\r\nb", CLI_MAIL_LINES_NUL},
    {"NUL after dot line", true, IN(".\n\0"), "", CLI_MAIL_LINES_END},
};

/* Feeds in as the pieces cut at cuts[] (sorted, ending with len); checks output and status. */
static void
run_lines(const struct lines_case *c, const size_t *cuts, size_t ncuts)
{
	struct cli_mail_lines l;
	char *out = malloc(CLI_MAIL_LINES_OUT_MAX(c->in_len) * 2 + 16);
	size_t out_len = 0, from = 0;
	enum cli_mail_lines_status st = CLI_MAIL_LINES_MORE;

	cli_mail_lines_init(&l, c->dot_ends);
	for (size_t k = 0; k < ncuts && st == CLI_MAIL_LINES_MORE; k++) {
		size_t used;
		st = cli_mail_lines_push(&l, c->in + from, cuts[k] - from, &used, out, &out_len);
		if (st == CLI_MAIL_LINES_MORE)
			assert_int_equal(used, cuts[k] - from);
		from = cuts[k];
	}
	if (st == CLI_MAIL_LINES_MORE)
		cli_mail_lines_finish(&l, out, &out_len);
	if (st != c->status || out_len != strlen(c->out) || memcmp(out, c->out, out_len) != 0)
		fail_msg("%s: status %d, output \"%.*s\"", c->name, st, (int)out_len, out);
	free(out);
}

static void
test_lines(void **state)
{
	for (size_t i = 0; i < ARRAY_LEN(lines_cases); i++) {
		const struct lines_case *c = &lines_cases[i];
		size_t *cuts = malloc((c->in_len + 2) * sizeof(size_t));

		/* whole */
		cuts[0] = c->in_len;
		run_lines(c, cuts, 1);
		/* byte by byte */
		for (size_t k = 0; k < c->in_len; k++)
			cuts[k] = k + 1;
		if (c->in_len > 0)
			run_lines(c, cuts, c->in_len);
		/* in two at every position */
		for (size_t k = 0; k <= c->in_len; k++) {
			cuts[0] = k;
			cuts[1] = c->in_len;
			run_lines(c, cuts, 2);
		}
		free(cuts);
	}
}

/* Lines over 998 octets are folded with CRLF SP, each piece at most 998 octets. */
static void
test_lines_long_folded(void **state)
{
	static const size_t lens[] = {997, 998, 999, 1995, 1996, 2500};

	for (size_t n = 0; n < ARRAY_LEN(lens); n++) {
		size_t len = lens[n], out_len = 0, used, pieces = 0, plain = 0;
		char *in = malloc(len + 1), *out = malloc(CLI_MAIL_LINES_OUT_MAX(len + 1) + 4);
		struct cli_mail_lines l;

		memset(in, 'x', len);
		in[len] = '\n';
		cli_mail_lines_init(&l, true);
		assert_int_equal(cli_mail_lines_push(&l, in, len + 1, &used, out, &out_len),
				 CLI_MAIL_LINES_MORE);
		cli_mail_lines_finish(&l, out, &out_len);
		/* Walk the output: pieces separated by CRLF, continuations starting with SP. */
		for (size_t i = 0, start = 0; i < out_len; i++) {
			if (out[i] != '\r')
				continue;
			assert_true(i + 1 < out_len && out[i + 1] == '\n');
			assert_true(i - start <= CLI_MAIL_LINE_MAX);
			if (pieces > 0)
				assert_int_equal(out[start], ' ');
			plain += i - start - (pieces > 0);
			pieces++;
			start = i + 2;
			i++;
		}
		assert_int_equal(plain, len);
		assert_int_equal(pieces, len <= 998 ? 1 : 1 + (len - 998 + 996) / 997);
		assert_int_equal(out_len, len + 2 + 3 * (pieces - 1));
		free(in);
		free(out);
	}
	(void)state;
}

/* ---- header section ------------------------------------------------------------------ */

struct split_case {
	const char *name;
	const char *in;
	size_t in_len;
	bool found;
	size_t header_off, header_len, body_off;
	bool has_blank;
};

static const struct split_case split_cases[] = {
    {"fields and body", IN("A: 1\r\nB: 2\r\n\r\nbody\r\n"), true, 0, 12, 14, true},
    {"folded field", IN("A: 1\r\n 2\r\n\r\nx\r\n"), true, 0, 10, 12, true},
    {"tab folding", IN("A: 1\r\n\t2\r\n\r\n"), true, 0, 10, 12, true},
    {"blank line first", IN("\r\nbody\r\n"), true, 0, 0, 2, true},
    {"no fields", IN("hello world\r\n"), true, 0, 0, 0, false},
    {"continuation first", IN(" x: y\r\n"), true, 0, 0, 0, false},
    {"non-field ends", IN("A: 1\r\nhello\r\n"), true, 0, 6, 6, false},
    {"colon after space is no field", IN("A: 1\r\nno field: x\r\n"), true, 0, 6, 6, false},
    {"white space before colon", IN("Subject : x\r\n\r\n"), true, 0, 13, 15, true},
    {"empty name", IN(": x\r\n"), true, 0, 0, 0, false},
    {"only fields", IN("A: 1\r\nB: 2\r\n"), false, 0, 12, 12, false},
    {"mbox From line", IN("From a@b Sat Nov 28\r\nA: 1\r\n\r\nx\r\n"), true, 21, 6, 29, true},
    {"mbox From line only", IN("From a@b\r\n"), false, 10, 0, 10, false},
    {"From field is no mbox line", IN("From: a@b\r\n\r\n"), true, 0, 11, 13, true},
};

static void
test_split(void **state)
{
	for (size_t i = 0; i < ARRAY_LEN(split_cases); i++) {
		const struct split_case *c = &split_cases[i];
		struct cli_mail_split s;
		size_t scanned = 0;
		bool found = false;

		memset(&s, 0, sizeof(s));
		/* Feed a line at a time (and a partial line) to exercise the resumable scan. */
		for (size_t len = 0; len <= c->in_len && !found; len++)
			found = cli_mail_header_end(c->in, len, &scanned, &s);
		if (!found)
			cli_mail_header_all(c->in, c->in_len, &s);
		if (found != c->found || s.header_off != c->header_off ||
		    s.header_len != c->header_len || s.body_off != c->body_off ||
		    s.has_blank != c->has_blank)
			fail_msg("%s: found %d off %zu len %zu body %zu blank %d", c->name, found,
				 s.header_off, s.header_len, s.body_off, s.has_blank);
	}
}

static void
test_fields(void **state)
{
	static const char h[] = "To: a@b,\r\n c@d\r\nBcc: x@y\r\nsubject:hi\r\n";
	struct cli_mail_field f;
	size_t pos = 0;

	assert_true(cli_mail_header_next(h, sizeof(h) - 1, &pos, &f));
	assert_true(cli_mail_field_is(&f, "to"));
	assert_int_equal(f.value_len, strlen(" a@b,\r\n c@d"));
	assert_memory_equal(f.value, " a@b,\r\n c@d", f.value_len);
	assert_int_equal(f.start, 0);
	assert_int_equal(f.end, 16);
	assert_true(cli_mail_header_next(h, sizeof(h) - 1, &pos, &f));
	assert_true(cli_mail_field_is(&f, "BCC"));
	assert_false(cli_mail_field_is(&f, "Bc"));
	assert_int_equal(f.end - f.start, strlen("Bcc: x@y\r\n"));
	assert_true(cli_mail_header_next(h, sizeof(h) - 1, &pos, &f));
	assert_true(cli_mail_field_is(&f, "Subject"));
	assert_memory_equal(f.value, "hi", 2);
	assert_int_equal(f.value_len, 2);
	assert_false(cli_mail_header_next(h, sizeof(h) - 1, &pos, &f));
}

/* ---- address lists ------------------------------------------------------------------ */

struct list_case {
	const char *name;
	const char *in;
	const char *want; /* addresses joined by '|' */
	int rc;
};

static const struct list_case list_cases[] = {
    {"one", "a@b", "a@b", 0},
    {"two", "a@b, c@d", "a@b|c@d", 0},
    {"spaces", "  a@b  ,c@d  ", "a@b|c@d", 0},
    {"display name", "Alice <a@b>", "a@b", 0},
    {"quoted name with comma", "\"Doe, J\" <j@d>, k@e", "j@d|k@e", 0},
    {"quoted name with angle", "\"x <y@z>\" <j@d>", "j@d", 0},
    {"comment", "a@b (Alice, A.)", "a@b", 0},
    {"nested comment", "a@b (x (y, z) w), c@d", "a@b|c@d", 0},
    {"group", "team: a@b, c@d;, e@f", "a@b|c@d|e@f", 0},
    {"empty group", "undisclosed-recipients:;", "", 0},
    {"folded", "a@b,\r\n c@d,\r\n\tE <e@f>", "a@b|c@d|e@f", 0},
    {"empty elements", "a@b,, ,c@d,", "a@b|c@d", 0},
    {"quoted local part", "\"x y\"@d", "\"x y\"@d", 0},
    {"quoted local part with comma", "\"x,y\"@d, e@f", "\"x,y\"@d|e@f", 0},
    {"source route", "<@r1,@r2:a@b>", "@r1,@r2:a@b", 0},
    {"bare local part", "root", "root", 0},
    {"empty", "", "", 0},
    {"unterminated angle", "<a@b", "", -1},
    {"stray closing angle", "a@b>", "", -1},
    {"unterminated quote", "\"a@b", "", -1},
    {"unterminated comment", "a@b (x", "", -1},
};

struct collect {
	char got[1024];
};

static int
collect(void *ctx, const char *addr)
{
	struct collect *c = ctx;
	size_t len = strlen(c->got);

	snprintf(c->got + len, sizeof(c->got) - len, "%s%s", len ? "|" : "", addr);
	return 0;
}

static int
stop_at_second(void *ctx, const char *addr)
{
	int *n = ctx;
	return ++*n == 2 ? 7 : 0;
}

static void
test_addr_list(void **state)
{
	char long_list[CLI_MAIL_ADDR_MAX + 16];
	struct collect c;
	int n = 0;

	for (size_t i = 0; i < ARRAY_LEN(list_cases); i++) {
		const struct list_case *lc = &list_cases[i];
		int rc;

		memset(&c, 0, sizeof(c));
		rc = cli_mail_addr_list(lc->in, strlen(lc->in), collect, &c);
		if (rc != lc->rc || (rc == 0 && strcmp(c.got, lc->want) != 0))
			fail_msg("%s: rc %d, got \"%s\"", lc->name, rc, c.got);
	}
	/* fn's result stops the walk and is returned. */
	assert_int_equal(cli_mail_addr_list("a@b, c@d, e@f", 13, stop_at_second, &n), 7);
	assert_int_equal(n, 2);
	/* An element longer than CLI_MAIL_ADDR_MAX is refused, not cut. */
	memset(long_list, 'a', sizeof(long_list) - 1);
	long_list[sizeof(long_list) - 1] = '\0';
	memset(&c, 0, sizeof(c));
	assert_int_equal(cli_mail_addr_list(long_list, strlen(long_list), collect, &c), -1);
}

/* ---- address checks ------------------------------------------------------------------- */

struct check_case {
	const char *name;
	const char *in;
	bool allow_null;
	const char *want; /* normalized, NULL: refused */
	bool is_null, is_utf8;
};

static const struct check_case check_cases[] = {
    {"plain", "a@example.org", false, "a@example.org", .is_null = false},
    {"angle brackets", "<a@example.org>", false, "a@example.org", .is_null = false},
    {"bare local part", "root", false, "root@localhost", .is_null = false},
    {"bare in brackets", "<root>", false, "root@localhost", .is_null = false},
    {"null sender", "<>", true, "", .is_null = true},
    {"empty sender", "", true, "", .is_null = true},
    {"null recipient", "<>", false, NULL, .is_null = false},
    {"empty recipient", "", false, NULL, .is_null = false},
    {"CRLF injection", "a@b\r\nRCPT TO:<x@y>", false, NULL, .is_null = false},
    {"LF", "a@b\n", false, NULL, .is_null = false},
    {"control octet", "a\x01@b", false, NULL, .is_null = false},
    {"DEL", "a\x7f@b", false, NULL, .is_null = false},
    {"space", "a b@c", false, NULL, .is_null = false},
    {"quoted space", "\"a b\"@c", false, "\"a b\"@c", .is_null = false},
    {"quoted at without domain", "\"a@b\"", false, "\"a@b\"@localhost", .is_null = false},
    {"needless quotes dropped", "\"ab\"@c", false, "ab@c", .is_null = false},
    {"trailing text", "a@b>x", false, NULL, .is_null = false},
    {"parameter smuggled", "a@b> NOTIFY=NEVER", false, NULL, .is_null = false},
    {"two ats", "a@b@c", false, NULL, .is_null = false},
    {"empty domain", "a@", false, NULL, .is_null = false},
    {"empty local part", "@b", false, NULL, .is_null = false},
    {"double dot", "a..b@c", false, NULL, .is_null = false},
    {"source route", "@r:a@b", false, "a@b", .is_null = false},
    {"address literal", "a@[192.0.2.1]", false, "a@[192.0.2.1]", .is_null = false},
    {"UTF-8", "j\xc3\xb6rg@d.example", false, "j\xc3\xb6rg@d.example", .is_utf8 = true},
    {"bad UTF-8", "j\xc3@d.example", false, NULL, .is_null = false},
    {"local part too long", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@b",
     false, NULL, .is_null = false},
};

static void
test_addr_check(void **state)
{
	for (size_t i = 0; i < ARRAY_LEN(check_cases); i++) {
		const struct check_case *c = &check_cases[i];
		struct smtp_path p;
		int rc = cli_mail_addr_check(c->in, "localhost", c->allow_null, &p);

		if (c->want == NULL) {
			if (rc != -1)
				fail_msg("%s: accepted as \"%s\"", c->name, p.addr);
			continue;
		}
		if (rc != 0 || strcmp(p.addr, c->want) != 0 || p.is_null != c->is_null ||
		    p.is_utf8 != c->is_utf8)
			fail_msg("%s: rc %d addr \"%s\" null %d utf8 %d", c->name, rc, p.addr,
				 p.is_null, p.is_utf8);
	}
	/* No domain to add: a bare local part cannot be used. */
	{
		struct smtp_path p;
		assert_int_equal(cli_mail_addr_check("root", NULL, false, &p), -1);
		assert_int_equal(cli_mail_addr_check("root", "", false, &p), -1);
	}
}

/* ---- From: --------------------------------------------------------------------------- */

struct from_case {
	const char *name;
	const char *full_name;
	const char *want;
};

static const struct from_case from_cases[] = {
    {"no name", NULL, "From: a@b\r\n"},
    {"empty name", "", "From: a@b\r\n"},
    {"blank name", "   ", "From: a@b\r\n"},
    {"ASCII name", "Joe User", "From: \"Joe User\" <a@b>\r\n"},
    {"quotes and backslash", "J \"x\" \\", "From: \"J \\\"x\\\" \\\\\" <a@b>\r\n"},
    {"CRLF in name", "a\r\nBcc: x@y", "From: \"a  Bcc: x@y\" <a@b>\r\n"},
    {"UTF-8 name", "J\xc3\xb6rg", "From: =?UTF-8?B?SsO2cmc=?= <a@b>\r\n"},
    {"bad UTF-8 becomes ?", "J\xc3rg", "From: \"J?rg\" <a@b>\r\n"},
    {"long UTF-8 name in words",
     "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
     "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
     "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9",
     "From: =?UTF-8?B?w6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6k=?= "
     "=?UTF-8?B?w6nDqQ==?= <a@b>\r\n"},
};

static void
test_from(void **state)
{
	for (size_t i = 0; i < ARRAY_LEN(from_cases); i++) {
		const struct from_case *c = &from_cases[i];
		struct buf b;

		buf_init(&b, 4096);
		assert_int_equal(cli_mail_from_field(&b, c->full_name, "a@b"), 0);
		if (strcmp(buf_cstr(&b), c->want) != 0)
			fail_msg("%s: got \"%s\"", c->name, buf_cstr(&b));
		buf_free(&b);
	}
	/* A name over CLI_MAIL_NAME_MAX is cut. */
	{
		char name[CLI_MAIL_NAME_MAX * 2];
		struct buf b;

		memset(name, 'n', sizeof(name) - 1);
		name[sizeof(name) - 1] = '\0';
		buf_init(&b, 4096);
		assert_int_equal(cli_mail_from_field(&b, name, "a@b"), 0);
		assert_int_equal(b.len, strlen("From: \"\" <a@b>\r\n") + CLI_MAIL_NAME_MAX);
		buf_free(&b);
		/* A full buffer is an error. */
		buf_init(&b, 8);
		assert_int_equal(cli_mail_from_field(&b, "Joe", "a@b"), -1);
		buf_free(&b);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lines),     cmocka_unit_test(test_lines_long_folded),
	    cmocka_unit_test(test_split),     cmocka_unit_test(test_fields),
	    cmocka_unit_test(test_addr_list), cmocka_unit_test(test_addr_check),
	    cmocka_unit_test(test_from),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
