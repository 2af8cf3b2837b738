/*
 * Unit tests for the pure part of relay_dns: address literals, name checks,
 * the dns_resolver → forwarder conversion and the MX ordering (preference,
 * then a shuffle of equal preferences driven by an injected random
 * function).  Tables of named cases; a runner reports every mismatching case
 * before failing.  No DNS, no sockets: the resolver itself is covered by
 * tests/integration/test_dns.py against a real dnsmasq.  The one exception,
 * test_lookup_host_without_dns, builds a resolver (forwarding to a closed
 * port) only for the relay_dns_lookup_host() results known without a query.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/relay_dns.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- address literals ------------------------------------------------- */

struct literal_case {
	const char *name;
	const char *domain;
	enum relay_dns_literal want;
	const char *addr; /* ADDR only: the address, as inet_ntop writes it */
};

static const char *const literal_names[] = {
    [RELAY_DNS_LITERAL_NONE] = "NONE",
    [RELAY_DNS_LITERAL_ADDR] = "ADDR",
    [RELAY_DNS_LITERAL_BAD] = "BAD",
};

#define LIT(n, d, a)                                                                               \
	{                                                                                          \
		.name = (n), .domain = (d), .want = RELAY_DNS_LITERAL_ADDR, .addr = (a)            \
	}
#define NOLIT(n, d, w)                                                                             \
	{                                                                                          \
		.name = (n), .domain = (d), .want = (w)                                            \
	}

static const struct literal_case literal_cases[] = {
    LIT("ipv4 literal", "[127.0.0.1]", "127.0.0.1"),
    LIT("ipv4 literal other", "[192.0.2.25]", "192.0.2.25"),
    LIT("ipv6 literal", "[IPv6:::1]", "::1"),
    LIT("ipv6 literal full", "[IPv6:2001:db8:0:0:0:0:0:1]", "2001:db8::1"),
    LIT("ipv6 tag lower case", "[ipv6:2001:db8::25]", "2001:db8::25"),
    LIT("ipv6 v4-mapped", "[IPv6:::ffff:192.0.2.1]", "::ffff:192.0.2.1"),
    NOLIT("plain name", "example.com", RELAY_DNS_LITERAL_NONE),
    NOLIT("name with trailing dot", "b.test.", RELAY_DNS_LITERAL_NONE),
    NOLIT("empty", "", RELAY_DNS_LITERAL_NONE),
    NOLIT("three numbers is a name", "1.2.3", RELAY_DNS_LITERAL_NONE),
    NOLIT("digits-only label name", "123.example", RELAY_DNS_LITERAL_NONE),
    NOLIT("bare ipv4", "127.0.0.1", RELAY_DNS_LITERAL_BAD),
    NOLIT("bare ipv6", "::1", RELAY_DNS_LITERAL_BAD),
    NOLIT("bare ipv6 full", "2001:db8::1", RELAY_DNS_LITERAL_BAD),
    NOLIT("empty brackets", "[]", RELAY_DNS_LITERAL_BAD),
    NOLIT("lone bracket", "[", RELAY_DNS_LITERAL_BAD),
    NOLIT("name in brackets", "[example.com]", RELAY_DNS_LITERAL_BAD),
    NOLIT("unclosed", "[127.0.0.1", RELAY_DNS_LITERAL_BAD),
    NOLIT("text after bracket", "[127.0.0.1]x", RELAY_DNS_LITERAL_BAD),
    NOLIT("octet too big", "[256.0.0.1]", RELAY_DNS_LITERAL_BAD),
    NOLIT("short ipv4", "[127.1]", RELAY_DNS_LITERAL_BAD),
    NOLIT("ipv6 without tag", "[::1]", RELAY_DNS_LITERAL_BAD),
    NOLIT("ipv6 tag with ipv4", "[IPv6:127.0.0.1]", RELAY_DNS_LITERAL_BAD),
    NOLIT("ipv6 tag empty", "[IPv6:]", RELAY_DNS_LITERAL_BAD),
    NOLIT("other tag", "[IPv7:::1]", RELAY_DNS_LITERAL_BAD),
    NOLIT("space inside", "[ 127.0.0.1]", RELAY_DNS_LITERAL_BAD),
    NOLIT("too long", "[IPv6:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000]",
	  RELAY_DNS_LITERAL_BAD),
};

static int
run_literal_case(const struct literal_case *c)
{
	struct sockaddr_storage ss;
	enum relay_dns_literal got;
	char text[INET6_ADDRSTRLEN] = "";
	const void *a;

	memset(&ss, 0xa5, sizeof(ss));
	got = relay_dns_parse_literal(c->domain, &ss);
	if (got != c->want) {
		print_error("case '%s': %s, expected %s\n", c->name, literal_names[got],
			    literal_names[c->want]);
		return 1;
	}
	if (got != RELAY_DNS_LITERAL_ADDR)
		return 0;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;

		a = &sin->sin_addr;
		if (sin->sin_port != 0) {
			print_error("case '%s': port %u, expected 0\n", c->name, sin->sin_port);
			return 1;
		}
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;

		a = &sin6->sin6_addr;
		if (sin6->sin6_port != 0 || sin6->sin6_scope_id != 0) {
			print_error("case '%s': port or scope not 0\n", c->name);
			return 1;
		}
	}
	if (inet_ntop(ss.ss_family, a, text, sizeof(text)) == NULL || strcmp(text, c->addr) != 0) {
		print_error("case '%s': address \"%s\", expected \"%s\"\n", c->name, text, c->addr);
		return 1;
	}
	return 0;
}

static void
test_parse_literal(void **state)
{
	int bad = 0;

	for (size_t i = 0; i < ARRAY_LEN(literal_cases); i++)
		bad += run_literal_case(&literal_cases[i]);
	assert_int_equal(bad, 0);
}

/* ---- domain names ----------------------------------------------------- */

struct name_case {
	const char *name;
	const char *domain;
	bool want;
};

#define L10 "aaaaaaaaaa"
#define L63 L10 L10 L10 L10 L10 L10 "aaa"
/* 4 labels of 63 plus 3 dots = 255; the 253-octet name drops two characters. */
#define N253 L63 "." L63 "." L63 "." L10 L10 L10 L10 L10 L10 "a"

static const struct name_case name_cases[] = {
    {"simple", "b.test", true},
    {"trailing dot", "b.test.", true},
    {"single label", "localhost", true},
    {"a-label", "xn--bcher-kva.example", true},
    {"underscore", "under_score.test", true},
    {"digits", "123.example", true},
    {"label of 63", L63 ".test", true},
    {"label of 64", L63 "a.test", false},
    {"253 octets", N253, true},
    {"253 octets and a dot", N253 ".", true},
    {"254 octets", N253 "a", false},
    {"empty", "", false},
    {"root only", ".", false},
    {"empty label", "a..b", false},
    {"leading dot", ".a.test", false},
    {"two trailing dots", "a.test..", false},
    {"space", "a b.test", false},
    {"tab", "a\tb.test", false},
    {"newline", "a.test\n", false},
    {"backslash escape", "a\\046b.test", false},
    {"DEL", "a\x7f.test", false},
};

static void
test_name_is_valid(void **state)
{
	int bad = 0;

	for (size_t i = 0; i < ARRAY_LEN(name_cases); i++) {
		const struct name_case *c = &name_cases[i];
		bool got = relay_dns_name_is_valid(c->domain);

		if (got != c->want) {
			print_error("case '%s': %s, expected %s\n", c->name,
				    got ? "valid" : "invalid", c->want ? "valid" : "invalid");
			bad++;
		}
	}
	assert_int_equal(bad, 0);
}

/* ---- dns_resolver → forwarder ----------------------------------------- */

struct fwd_case {
	const char *name;
	const char *resolver;
	const char *want; /* NULL: must fail */
};

static const struct fwd_case fwd_cases[] = {
    {"ipv4 with port", "127.0.0.1:5353", "127.0.0.1@5353"},
    {"ipv4 default port", "192.0.2.53", "192.0.2.53@53"},
    {"ipv4 port 53", "127.0.0.1:53", "127.0.0.1@53"},
    {"ipv4 port max", "127.0.0.1:65535", "127.0.0.1@65535"},
    {"ipv6 bracketed with port", "[::1]:5353", "::1@5353"},
    {"ipv6 bracketed", "[2001:db8::53]", "2001:db8::53@53"},
    {"ipv6 bare", "::1", "::1@53"},
    {"ipv6 bare full", "2001:db8::53", "2001:db8::53@53"},
    {"name", "localhost:53", NULL},
    {"empty", "", NULL},
    {"empty port", "127.0.0.1:", NULL},
    {"port 0", "127.0.0.1:0", NULL},
    {"port too big", "127.0.0.1:65536", NULL},
    {"port with letters", "127.0.0.1:53x", NULL},
    {"port with sign", "127.0.0.1:+53", NULL},
    {"ipv4 in brackets", "[127.0.0.1]:53", NULL},
    {"ipv6 unclosed", "[::1", NULL},
    {"ipv6 port without colon", "[::1]5353", NULL},
    {"ipv6 empty brackets", "[]:53", NULL},
    {"bad ipv4", "127.0.0.256", NULL},
    {"already unbound syntax", "127.0.0.1@53", NULL},
};

static void
test_forwarder(void **state)
{
	char out[64];
	int bad = 0;

	for (size_t i = 0; i < ARRAY_LEN(fwd_cases); i++) {
		const struct fwd_case *c = &fwd_cases[i];
		int r = relay_dns_forwarder(c->resolver, out, sizeof(out));

		if (c->want == NULL && r != -1) {
			print_error("case '%s': accepted as \"%s\"\n", c->name, out);
			bad++;
		} else if (c->want != NULL && (r != 0 || strcmp(out, c->want) != 0)) {
			print_error("case '%s': r=%d \"%s\", expected \"%s\"\n", c->name, r,
				    r == 0 ? out : "", c->want);
			bad++;
		}
	}
	/* An output buffer too small fails instead of truncating. */
	if (relay_dns_forwarder("127.0.0.1:5353", out, 14) != -1) {
		print_error("case 'small buffer': accepted\n");
		bad++;
	}
	assert_int_equal(relay_dns_forwarder("127.0.0.1:5353", out, 15), 0);
	assert_int_equal(bad, 0);
}

/* ---- ordering --------------------------------------------------------- */

/* Random functions to inject: each is deterministic. */
static uint32_t
rnd_zero(uint32_t upper, void *ctx)
{
	return 0;
}

static uint32_t
rnd_top(uint32_t upper, void *ctx)
{
	return upper - 1;
}

/* Plays a script of values (each taken modulo upper), then 0s; checks bounds. */
struct script {
	const uint32_t *v;
	size_t len, pos;
	int bad_calls;
};

static uint32_t
rnd_script(uint32_t upper, void *ctx)
{
	struct script *s = ctx;

	if (upper < 2)
		s->bad_calls++; /* a run of one needs no draw */
	if (s->pos >= s->len)
		return 0;
	return s->v[s->pos++] % upper;
}

struct sort_case {
	const char *name;
	const char *input; /* "pref host pref host ..." */
	relay_dns_random_fn rnd;
	const uint32_t *script; /* with rnd_script */
	size_t script_len;
	const char *want; /* hosts in order, space-separated */
};

static const uint32_t script_swap_last[] = {1, 1};
static const uint32_t script_mix[] = {0, 1};

static const struct sort_case sort_cases[] = {
    {"empty", "", rnd_zero, NULL, 0, ""},
    {"one", "10 a", rnd_zero, NULL, 0, "a"},
    {"distinct ascending", "10 a 20 b 30 c", rnd_zero, NULL, 0, "a b c"},
    {"distinct descending", "30 c 20 b 10 a", rnd_zero, NULL, 0, "a b c"},
    {"preference is numeric", "100 x 9 y 10 z", rnd_zero, NULL, 0, "y z x"},
    {"zero and max", "65535 last 0 first", rnd_zero, NULL, 0, "first last"},
    {"equal, no swaps", "10 c 10 a 10 b", rnd_top, NULL, 0, "a b c"},
    /* Fisher-Yates with j = 0: swap(2,0) → c b a, swap(1,0) → b c a. */
    {"equal, always first", "10 c 10 a 10 b", rnd_zero, NULL, 0, "b c a"},
    {"equal, ties by name ignoring case", "10 B 10 a", rnd_top, NULL, 0, "a B"},
    {"equal pair swapped", "10 a 10 b", rnd_zero, NULL, 0, "b a"},
    {"shuffle stays inside a run", "20 mx3 10 mx1 20 mx2 5 mx0 10 mx4", rnd_zero, NULL, 0,
     "mx0 mx4 mx1 mx3 mx2"},
    {"runs keep their order", "20 mx3 10 mx1 20 mx2 5 mx0 10 mx4", rnd_top, NULL, 0,
     "mx0 mx1 mx4 mx2 mx3"},
    /* Draws for {a,b,c}: i=2 → 1 (swap c,b: a c b), i=1 → 1 (no swap). */
    {"scripted", "10 a 10 b 10 c", rnd_script, script_swap_last, 2, "a c b"},
    /* The script runs out: later draws are 0 (i=1 → swap a,c: c a b). */
    {"scripted then zeros", "10 a 10 b 10 c", rnd_script, script_swap_last, 1, "c a b"},
    /* One draw per run: {a,b} → 0 (swap), {x,y} → 1 (keep). */
    {"scripted two runs", "10 a 10 b 20 x 20 y", rnd_script, script_mix, 2, "b a x y"},
};

/* Parses "pref host ..." into t (hostnames point into buf); returns the count. */
static size_t
parse_targets(const char *input, char *buf, size_t cap, struct relay_dns_target *t, size_t max)
{
	size_t n = 0;
	char *save = NULL;

	snprintf(buf, cap, "%s", input);
	for (char *tok = strtok_r(buf, " ", &save); tok != NULL && n < max;
	     tok = strtok_r(NULL, " ", &save)) {
		t[n].preference = (unsigned)strtoul(tok, NULL, 10);
		t[n].hostname = strtok_r(NULL, " ", &save);
		t[n].addrs = NULL;
		t[n].addrs_len = 0;
		n++;
	}
	return n;
}

static void
render_hosts(const struct relay_dns_target *t, size_t n, char *out, size_t cap)
{
	out[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(out);

		snprintf(out + len, cap - len, "%s%s", i ? " " : "", t[i].hostname);
	}
}

static int
run_sort_case(const struct sort_case *c)
{
	struct relay_dns_target t[16];
	char buf[256], got[256];
	struct script s = {.v = c->script, .len = c->script_len};
	size_t n = parse_targets(c->input, buf, sizeof(buf), t, ARRAY_LEN(t));

	relay_dns_sort_targets(t, n, c->rnd, &s);
	render_hosts(t, n, got, sizeof(got));
	if (strcmp(got, c->want) != 0) {
		print_error("case '%s': \"%s\", expected \"%s\"\n", c->name, got, c->want);
		return 1;
	}
	if (s.bad_calls != 0) {
		print_error("case '%s': random function called with upper < 2\n", c->name);
		return 1;
	}
	return 0;
}

static void
test_sort_targets(void **state)
{
	int bad = 0;

	for (size_t i = 0; i < ARRAY_LEN(sort_cases); i++)
		bad += run_sort_case(&sort_cases[i]);
	assert_int_equal(bad, 0);
}

/*
 * The default random source (NULL): over many sorts of three equal MX hosts
 * behind a better one, the best stays first and each of the six orders of
 * the rest shows up.  Expected 1000 of each; 700 is > 10 standard deviations
 * away, so the test does not flake.
 */
static void
test_sort_default_random(void **state)
{
	static const char *const orders[] = {"a b c", "a c b", "b a c", "b c a", "c a b", "c b a"};
	size_t counts[ARRAY_LEN(orders)] = {0};
	int bad = 0;

	for (int run = 0; run < 6000; run++) {
		struct relay_dns_target t[4];
		char buf[64], got[64];
		size_t n = parse_targets("20 c 10 best 20 a 20 b", buf, sizeof(buf), t, 4);

		relay_dns_sort_targets(t, n, NULL, NULL);
		assert_string_equal(t[0].hostname, "best");
		render_hosts(t + 1, n - 1, got, sizeof(got));
		for (size_t k = 0; k < ARRAY_LEN(orders); k++)
			if (strcmp(got, orders[k]) == 0)
				counts[k]++;
	}
	for (size_t k = 0; k < ARRAY_LEN(orders); k++) {
		if (counts[k] < 700) {
			print_error("order '%s' seen %zu times of 6000\n", orders[k], counts[k]);
			bad++;
		}
	}
	assert_int_equal(bad, 0);
}

/* ---- statuses --------------------------------------------------------- */

static void
test_status(void **state)
{
	static const struct {
		enum relay_dns_status st;
		const char *name;
		bool is_permanent;
	} cases[] = {
	    {RELAY_DNS_OK, "OK", false},
	    {RELAY_DNS_NXDOMAIN, "NXDOMAIN", true},
	    {RELAY_DNS_NULL_MX, "NULL_MX", true},
	    {RELAY_DNS_NO_ADDRESS, "NO_ADDRESS", true},
	    {RELAY_DNS_TEMPFAIL, "TEMPFAIL", false},
	};

	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		assert_string_equal(relay_dns_status_name(cases[i].st), cases[i].name);
		assert_int_equal(relay_dns_status_is_permanent(cases[i].st), cases[i].is_permanent);
	}
}

/* ---- relay_dns_lookup_host() without DNS ------------------------------- */

struct host_seen {
	int calls;
	enum relay_dns_status status;
	char hostname[64];
	size_t targets_len;
	size_t addrs_len;
	int family;
	unsigned preference;
};

static void
host_cb(const struct relay_dns_result *res, void *arg)
{
	struct host_seen *seen = arg;

	seen->calls++;
	seen->status = res->status;
	seen->targets_len = res->targets_len;
	if (res->targets_len > 0) {
		snprintf(seen->hostname, sizeof(seen->hostname), "%s", res->targets[0].hostname);
		seen->addrs_len = res->targets[0].addrs_len;
		seen->family = res->targets[0].addrs[0].ss_family;
		seen->preference = res->targets[0].preference;
	}
}

static void
test_lookup_host_without_dns(void **state)
{
	static const struct {
		const char *name;
		enum relay_dns_status want;
		const char *hostname; /* OK only */
		int family;
	} cases[] = {
	    {"[192.0.2.1]", RELAY_DNS_OK, "192.0.2.1", AF_INET},
	    {"[IPv6:2001:db8::1]", RELAY_DNS_OK, "2001:db8::1", AF_INET6},
	    {"192.0.2.1", RELAY_DNS_NXDOMAIN, NULL, 0},
	    {"[smart.test]", RELAY_DNS_NXDOMAIN, NULL, 0},
	    {"bad name.test", RELAY_DNS_NXDOMAIN, NULL, 0},
	    {"a..test", RELAY_DNS_NXDOMAIN, NULL, 0},
	};
	struct host_seen seen[ARRAY_LEN(cases)];
	char err[256] = "";
	struct relay_dns *dns = relay_dns_new("127.0.0.1:1", err, sizeof(err));

	assert_non_null(dns);
	memset(seen, 0, sizeof(seen));
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		assert_non_null(relay_dns_lookup_host(dns, cases[i].name, host_cb, &seen[i]));
		assert_int_equal(seen[i].calls, 0); /* never from inside the lookup */
	}
	relay_dns_process(dns);
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		print_message("lookup_host %s -> %s\n", cases[i].name,
			      relay_dns_status_name(seen[i].status));
		assert_int_equal(seen[i].calls, 1);
		assert_int_equal(seen[i].status, cases[i].want);
		if (cases[i].want != RELAY_DNS_OK) {
			assert_int_equal(seen[i].targets_len, 0);
			continue;
		}
		assert_int_equal(seen[i].targets_len, 1);
		assert_string_equal(seen[i].hostname, cases[i].hostname);
		assert_int_equal(seen[i].addrs_len, 1);
		assert_int_equal(seen[i].family, cases[i].family);
		assert_int_equal(seen[i].preference, 0);
	}
	relay_dns_free(dns);
}

static void
test_lookup_host_cancel(void **state)
{
	struct host_seen seen = {0};
	char err[256] = "";
	struct relay_dns *dns = relay_dns_new("127.0.0.1:1", err, sizeof(err));
	struct relay_dns_query *q;

	assert_non_null(dns);
	q = relay_dns_lookup_host(dns, "[192.0.2.1]", host_cb, &seen);
	relay_dns_cancel(q);
	relay_dns_process(dns);
	assert_int_equal(seen.calls, 0);
	/* A pending lookup left behind is dropped by relay_dns_free(), callback unrun. */
	(void)relay_dns_lookup_host(dns, "[IPv6:::1]", host_cb, &seen);
	relay_dns_free(dns);
	assert_int_equal(seen.calls, 0);
}

static void
test_case_count(void **state)
{
	size_t total = ARRAY_LEN(literal_cases) + ARRAY_LEN(name_cases) + ARRAY_LEN(fwd_cases) +
		       ARRAY_LEN(sort_cases);

	print_message("relay_dns: %zu table cases\n", total);
	assert_true(total >= 70);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_literal),
	    cmocka_unit_test(test_name_is_valid),
	    cmocka_unit_test(test_forwarder),
	    cmocka_unit_test(test_sort_targets),
	    cmocka_unit_test(test_sort_default_random),
	    cmocka_unit_test(test_status),
	    cmocka_unit_test(test_lookup_host_without_dns),
	    cmocka_unit_test(test_lookup_host_cancel),
	    cmocka_unit_test(test_case_count),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
