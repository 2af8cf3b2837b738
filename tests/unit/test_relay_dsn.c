/*
 * Unit tests for relay_dsn: the status code taken from a reason, and the
 * report built for ASCII and for UTF-8 addresses (RFC 3464, RFC 6533).
 */
#include "relay/relay_dsn.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static void
test_status(void **state)
{
	static const struct {
		const char *reason, *want;
	} cases[] = {
	    {"550 5.1.1 no such user", "5.1.1"},
	    {"556 5.1.10 null MX", "5.1.10"},
	    {"452 4.2.2 mailbox full", "4.2.2"},
	    {"4.4.3 DNS lookup failed", "4.4.3"},
	    {"4.4.7 delivery time expired: 450 4.2.0 busy", "4.4.7"},
	    {"550 no code at all", "5.0.0"},
	    {"450 no code at all", "4.0.0"},
	    {"554 5.7.1x glued", "5.0.0"},
	    {"552 5.3.4", "5.3.4"},
	    {"550 3.1.1 bad class", "5.0.0"},
	    /* only the code right after the reply code, and of its class (RFC 3463 2) */
	    {"550 Message rejected (see ref 2.1.0 at our site)", "5.0.0"},
	    {"550 4.1.1 mismatched class", "5.0.0"},
	    {"550 rejected 5.1.1 later in the text", "5.0.0"},
	    {"our finding, 5.1.1 in the text", "5.0.0"},
	    {"", "5.0.0"},
	};
	char got[16];

	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		relay_dsn_status(cases[i].reason, got, sizeof(got));
		if (strcmp(got, cases[i].want) != 0)
			fail_msg("'%s': got %s want %s", cases[i].reason, got, cases[i].want);
	}
}

/* Builds the DSN of one failed recipient; returns it NUL-terminated (static). */
static const char *
build_at(const char *rcpt, const char *reason, const char *relay, const char *headers)
{
	static char text[16384];
	struct relay_dsn_rcpt r = {.addr = rcpt, .reason = reason, .relay = relay};
	struct relay_dsn dsn = {.hostname = "mx.a.test",
				.queue_id = "Q1",
				.sender = "alice@a.test",
				.arrival = 1700000000,
				.now = 1700000100,
				.rcpts = &r,
				.rcpts_len = 1,
				.unique = 0x0123456789abcdefULL,
				.headers = headers,
				.headers_len = strlen(headers)};
	struct buf out;

	buf_init(&out, sizeof(text) - 1);
	assert_int_equal(relay_dsn_build(&dsn, &out), 0);
	memcpy(text, out.data, out.len);
	text[out.len] = '\0';
	buf_free(&out);
	return text;
}

static const char *
build(const char *rcpt, const char *reason, const char *headers)
{
	return build_at(rcpt, reason, "mx.b.test[127.0.0.2]:25", headers);
}

static void
test_ascii_report(void **state)
{
	const char *m =
	    build("bob@b.test", "550 5.1.1 <bob@b.test>: no\r\nsuch user", "Subject: hi\r\n");

	assert_non_null(strstr(m, "Content-Type: multipart/report; report-type=delivery-status;"));
	assert_non_null(strstr(m, "Content-Type: text/plain; charset=us-ascii\r\n"));
	assert_non_null(strstr(m, "Content-Type: message/delivery-status\r\n"));
	assert_non_null(strstr(m, "Content-Type: text/rfc822-headers\r\n"));
	assert_non_null(strstr(m, "\r\nFinal-Recipient: rfc822; bob@b.test\r\nAction: failed\r\n"
				  "Status: 5.1.1\r\nRemote-MTA: dns; mx.b.test\r\n"));
	/* a line end inside the remote's reply cannot start a field of its own */
	assert_non_null(
	    strstr(m, "Diagnostic-Code: smtp; 550 5.1.1 <bob@b.test>: no  such user\r\n"));
	assert_null(strstr(m, "global"));
	assert_null(strstr(m, "utf-8"));
	/* Message-ID and boundary carry the DSN's own random value */
	assert_non_null(strstr(m, "Message-ID: <Q1.0123456789abcdef.bounce@mx.a.test>\r\n"));
	assert_non_null(strstr(m, "\tboundary=\"Q1.0123456789abcdef/petrel-dsn\"\r\n"));
}

static void
test_who_said_it(void **state)
{
	const char *m;

	/* expired after a remote's 4xx: the remote's reply is the diagnostic */
	m = build("bob@b.test", "4.4.7 delivery time expired: 450 4.2.0 try later", "S: x\r\n");
	assert_non_null(strstr(m, "host mx.b.test[127.0.0.2]:25 said: 4.4.7 delivery time"));
	assert_non_null(strstr(m, "Status: 4.4.7\r\nRemote-MTA: dns; mx.b.test\r\n"
				  "Diagnostic-Code: smtp; 450 4.2.0 try later\r\n"));
	/* a host never reached (connection refused) said nothing */
	m = build("bob@b.test",
		  "4.4.7 delivery time expired: 4.4.1 mx.b.test[127.0.0.2]:25: connect: refused",
		  "S: x\r\n");
	assert_null(strstr(m, " said: "));
	assert_null(strstr(m, "Remote-MTA:"));
	assert_non_null(strstr(m, "Diagnostic-Code: X-Petrel; 4.4.7 delivery time expired: "));
	/* a local finding */
	m = build_at("bob@b.test", "5.1.2 Host or domain name not found", "none", "S: x\r\n");
	assert_non_null(strstr(m, "<bob@b.test>: 5.1.2 Host or domain name not found\r\n"));
	assert_non_null(strstr(m, "Status: 5.1.2\r\nDiagnostic-Code: X-Petrel; 5.1.2 Host"));
	/* octets above 0x7f in a remote's reply are not copied into a 7-bit report */
	m = build("bob@b.test", "550 5.7.1 Empf\xc3\xa4nger \xff\xfe raw", "S: x\r\n");
	assert_non_null(strstr(m, "Diagnostic-Code: smtp; 550 5.7.1 Empf??nger ?? raw\r\n"));
	assert_null(strstr(m, "global"));
}

/* 100,000 failed recipients: the DSN is still made (within its limit), the rest counted. */
static void
test_many_recipients(void **state)
{
	enum { N = 100000 };
	struct relay_dsn_rcpt *r = calloc(N, sizeof(*r));
	char reason[600];
	struct relay_dsn dsn = {.hostname = "mx.a.test",
				.queue_id = "Q1",
				.sender = "a@a.test",
				.rcpts = r,
				.rcpts_len = N,
				.headers = "S: x\r\n",
				.headers_len = 6};
	struct buf out;

	assert_non_null(r);
	memset(reason, 'x', sizeof(reason) - 1);
	memcpy(reason, "550 5.1.1 ", 10);
	reason[sizeof(reason) - 1] = '\0';
	for (size_t i = 0; i < N; i++)
		r[i] = (struct relay_dsn_rcpt){.addr = "someone-with-a-long-name@b.test",
					       .reason = reason,
					       .relay = "mx.b.test[127.0.0.2]:25"};
	buf_init(&out, 1024 * 1024);
	assert_int_equal(relay_dsn_build(&dsn, &out), 0);
	assert_true(out.len <= 1024 * 1024);
	static const char more[] = " more recipients (not listed: too many).";
	static const char end[] = "\r\n--Q1.0000000000000000/petrel-dsn--\r\n";

	assert_non_null(memmem(out.data, out.len, more, sizeof(more) - 1));
	assert_int_equal(memcmp(out.data + out.len - (sizeof(end) - 1), end, sizeof(end) - 1), 0);
	buf_free(&out);
	free(r);
}

static void
test_utf8_report(void **state)
{
	/* RFC 6533: the utf-8 address type; '+', '=' and '\' written as \x{HEX}. */
	const char *m = build("j\xc3\xb6rg+a=b\\c@b.test", "550 5.1.1 unknown", "Subject: hi\r\n");

	assert_non_null(strstr(m, "Content-Type: text/plain; charset=utf-8\r\n"));
	assert_non_null(strstr(m, "Content-Type: message/global-delivery-status\r\n"));
	assert_non_null(strstr(m, "Content-Type: message/global-headers\r\n"));
	assert_non_null(strstr(
	    m, "\r\nFinal-Recipient: utf-8; j\xc3\xb6rg\\x{2B}a\\x{3D}b\\x{5C}c@b.test\r\n"));
	/* the text for people keeps the address as it is */
	assert_non_null(strstr(m, "<j\xc3\xb6rg+a=b\\c@b.test>: host mx.b.test"));
}

static void
test_utf8_headers_only(void **state)
{
	/* An ASCII address, UTF-8 in the quoted headers: global types, rfc822 address. */
	const char *m = build("bob@b.test", "550 5.1.1 unknown",
			      "Subject: gr\xc3\xbc\xc3\x9f"
			      "e\r\n");

	assert_non_null(strstr(m, "Content-Type: message/global-delivery-status\r\n"));
	assert_non_null(strstr(m, "Content-Type: message/global-headers\r\n"));
	assert_non_null(strstr(m, "\r\nFinal-Recipient: rfc822; bob@b.test\r\n"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_status),	cmocka_unit_test(test_ascii_report),
	    cmocka_unit_test(test_utf8_report), cmocka_unit_test(test_utf8_headers_only),
	    cmocka_unit_test(test_who_said_it), cmocka_unit_test(test_many_recipients),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
