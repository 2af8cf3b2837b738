/*
 * Unit tests for smtp_trace: a table of named header sections (input, the
 * Received: count, the Delivered-To: addresses found in order, addresses
 * that must not match), and the hop limit at its edge.
 */
#include "smtp/smtp_trace.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define VALUES_MAX   4

struct trace_case {
	const char *name;
	const char *in;
	size_t in_len;
	size_t received;
	const char *delivered_to[VALUES_MAX]; /* in order; NULL ends the list */
	const char *not_delivered_to;	      /* NULL, or an address that must not match */
};

#define IN(s) .in = (s), .in_len = sizeof(s) - 1

static const struct trace_case cases[] = {
    {"nothing", IN(""), 0, {NULL}, "x@a.test"},
    {"no header section",
     IN("\r\nReceived: x\r\nDelivered-To: x@a.test\r\n"),
     0,
     {NULL},
     "x@a.test"},
    {"one received", IN("Received: from a by b; date\r\n\r\nbody\r\n"), 1, {NULL}, NULL},
    {"folded received counts once",
     IN("Received: from a\r\n\tby b\r\n\tfor <x@a.test>; date\r\nSubject: s\r\n\r\n"),
     1,
     {NULL},
     "x@a.test"},
    {"received in any case",
     IN("RECEIVED: a\r\nreceived: b\r\nReCeIvEd: c\r\n\r\n"),
     3,
     {NULL},
     NULL},
    {"space before the colon", IN("Received : a\r\nReceived\t: b\r\n\r\n"), 2, {NULL}, NULL},
    {"not a received field",
     IN("X-Received: a\r\nReceived-SPF: pass\r\nReceived\r\nReceivedx: a\r\n\r\n"),
     0,
     {NULL},
     NULL},
    {"continuation is no field",
     IN("Subject: a\r\n Received: b\r\n\tReceived: c\r\n\r\n"),
     0,
     {NULL},
     NULL},
    {"body not read",
     IN("Received: a\r\n\r\nReceived: b\r\nDelivered-To: x@a.test\r\n"),
     1,
     {NULL},
     "x@a.test"},
    {"LF line ends",
     IN("Received: a\nDelivered-To: x@a.test\n\nReceived: b\n"),
     1,
     {"x@a.test", NULL},
     NULL},
    {"delivered-to",
     IN("Delivered-To: x@a.test\r\nSubject: s\r\n\r\nbody\r\n"),
     0,
     {"x@a.test", NULL},
     "y@a.test"},
    {"delivered-to in any case", IN("DELIVERED-TO: X@A.Test\r\n\r\n"), 0, {"X@A.Test", NULL}, NULL},
    {"delivered-to with brackets and spaces",
     IN("Delivered-To:   <x@a.test> \t\r\n\r\n"),
     0,
     {"x@a.test", NULL},
     NULL},
    {"space inside the brackets",
     IN("Delivered-To: < x@a.test\t>\r\n\r\n"),
     0,
     {"x@a.test", NULL},
     NULL},
    {"a NUL in a value", IN("Delivered-To: x@a.test\0evil\r\n\r\n"), 0, {NULL}, "x@a.test"},
    {"delivered-to without space",
     IN("Delivered-To:x@a.test\r\n\r\n"),
     0,
     {"x@a.test", NULL},
     NULL},
    {"delivered-to folded",
     IN("Delivered-To:\r\n\tx@a.test\r\nSubject: s\r\n\r\n"),
     0,
     {"x@a.test", NULL},
     NULL},
    {"delivered-to folded twice",
     IN("Delivered-To: \r\n \r\n x@a.test\r\n\r\n"),
     0,
     {"x@a.test", NULL},
     NULL},
    {"delivered-to space before colon",
     IN("Delivered-To : x@a.test\r\n\r\n"),
     0,
     {"x@a.test", NULL},
     NULL},
    {"several",
     IN("Delivered-To: y@b.test\r\nReceived: a\r\nDelivered-To: x@a.test\r\n\r\n"),
     1,
     {"y@b.test", "x@a.test", NULL},
     "z@a.test"},
    {"empty value",
     IN("Delivered-To:\r\nDelivered-To:  \r\nDelivered-To: <>\r\n\r\n"),
     0,
     {NULL},
     ""},
    {"a longer address is another",
     IN("Delivered-To: x@a.test.example\r\n\r\n"),
     0,
     {"x@a.test.example", NULL},
     "x@a.test"},
    {"a shorter one too", IN("Delivered-To: x@a.tes\r\n\r\n"), 0, {"x@a.tes", NULL}, "x@a.test"},
    {"another field's value",
     IN("X-Delivered-To: x@a.test\r\nTo: x@a.test\r\n\r\n"),
     0,
     {NULL},
     "x@a.test"},
    {"cut in the last line",
     IN("Received: a\r\nDelivered-To: x@a.te"),
     1,
     {"x@a.te", NULL},
     "x@a.test"},
    {"cut in a fold", IN("Delivered-To:\r\n x@a"), 0, {"x@a", NULL}, NULL},
    {"inner CR kept", IN("Delivered-To: x\r@a.test\r\n\r\n"), 0, {"x\r@a.test", NULL}, "x@a.test"},
};

static void
check_case(const struct trace_case *c)
{
	struct smtp_trace t;
	size_t off = 0, k;

	smtp_trace_scan(&t, c->in, c->in_len);
	if (t.received != c->received)
		fail_msg("%s: %zu Received: fields, want %zu", c->name, t.received, c->received);
	for (k = 0; k < VALUES_MAX && c->delivered_to[k] != NULL; k++) {
		if (off >= t.delivered_to.len ||
		    strcmp(t.delivered_to.data + off, c->delivered_to[k]) != 0)
			fail_msg("%s: Delivered-To %zu is not \"%s\"", c->name, k,
				 c->delivered_to[k]);
		if (!smtp_trace_delivered_to(&t, c->delivered_to[k]))
			fail_msg("%s: \"%s\" does not match", c->name, c->delivered_to[k]);
		off += strlen(c->delivered_to[k]) + 1;
	}
	if (off != t.delivered_to.len)
		fail_msg("%s: more Delivered-To values than the %zu wanted", c->name, k);
	if (c->not_delivered_to != NULL && smtp_trace_delivered_to(&t, c->not_delivered_to))
		fail_msg("%s: \"%s\" matches", c->name, c->not_delivered_to);
	assert_false(smtp_trace_too_many_hops(&t));
	smtp_trace_free(&t);
}

static void
test_cases(void **state)
{
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		check_case(&cases[i]);
}

/* An address is matched case-insensitively, in any of the fields. */
static void
test_match_case(void **state)
{
	static const char in[] = "Delivered-To: Y@B.test\r\nDelivered-To: x@a.TEST\r\n\r\n";
	struct smtp_trace t;

	smtp_trace_scan(&t, in, sizeof(in) - 1);
	assert_true(smtp_trace_delivered_to(&t, "x@a.test"));
	assert_true(smtp_trace_delivered_to(&t, "X@A.test"));
	assert_true(smtp_trace_delivered_to(&t, "y@b.TEST"));
	assert_false(smtp_trace_delivered_to(&t, "x@b.test"));
	smtp_trace_free(&t);
}

/* 50 Received: fields pass, 51 are a loop; those after the header section do not count. */
static void
test_hop_limit(void **state)
{
	static const char field[] = "Received: from a.test by b.test; date\r\n";
	size_t cap = (SMTP_TRACE_HOPS_MAX + 2) * (sizeof(field) - 1) * 2 + 16;
	char *in = malloc(cap);
	struct smtp_trace t;
	size_t len = 0;

	assert_non_null(in);
	for (int i = 0; i < SMTP_TRACE_HOPS_MAX; i++, len += sizeof(field) - 1)
		memcpy(in + len, field, sizeof(field) - 1);
	smtp_trace_scan(&t, in, len);
	assert_int_equal(t.received, SMTP_TRACE_HOPS_MAX);
	assert_false(smtp_trace_too_many_hops(&t));
	smtp_trace_free(&t);

	memcpy(in + len, "\r\n", 2); /* the body begins: one more there is no hop */
	memcpy(in + len + 2, field, sizeof(field) - 1);
	smtp_trace_scan(&t, in, len + 2 + sizeof(field) - 1);
	assert_false(smtp_trace_too_many_hops(&t));
	smtp_trace_free(&t);

	memcpy(in + len, field, sizeof(field) - 1);
	len += sizeof(field) - 1;
	smtp_trace_scan(&t, in, len);
	assert_int_equal(t.received, SMTP_TRACE_HOPS_MAX + 1);
	assert_true(smtp_trace_too_many_hops(&t));
	smtp_trace_free(&t);
	free(in);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_cases),
	    cmocka_unit_test(test_match_case),
	    cmocka_unit_test(test_hop_limit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
