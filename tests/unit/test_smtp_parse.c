/*
 * Unit tests for smtp_parse: tables of named cases (input, expected), one
 * runner per table.  A runner reports every mismatching case by name before
 * failing, so one run shows all regressions.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "smtp/smtp_parse.h"

/* An input that may hold NULs: its length is taken from the literal, not strlen. */
#define BIN(n, s) .name = (n), .arg = (s), .len = sizeof(s) - 1

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Table shorthands: a parse that must fail with st; one that must succeed giving addr ad. */
#define BAD(n, a, st)                                                                              \
	{                                                                                          \
		.name = (n), .arg = (a), .status = (st)                                            \
	}
#define GOOD(n, a, ad)                                                                             \
	{                                                                                          \
		.name = (n), .arg = (a), .status = SMTP_ARG_OK, .addr = (ad)                       \
	}
/* Success with addr, local, domain and flags checked (NULL: not checked). */
#define PARSED(n, a, ad, lo, dom, fl)                                                              \
	{                                                                                          \
		.name = (n), .arg = (a), .status = SMTP_ARG_OK, .addr = (ad), .local = (lo),       \
		.domain = (dom), .flags = (fl)                                                     \
	}
/* MAIL where the session offers AUTH (RFC 4954 5): status st, no other parameter. */
#define AUTHP(n, a, st)                                                                            \
	{                                                                                          \
		.name = (n), .arg = (a), .status = (st), .auth = true                              \
	}
/* Success with path flags and MAIL parameters checked. */
#define PARAMS(n, a, fl, hs, sz, b, u8)                                                            \
	{                                                                                          \
		.name = (n), .arg = (a), .status = SMTP_ARG_OK, .flags = (fl), .has_size = (hs),   \
		.size = (sz), .body = (b), .smtputf8 = (u8)                                        \
	}

enum path_flag {
	F_NULL = 1u << 0,
	F_PM = 1u << 1,
	F_UTF8 = 1u << 2,
	F_QUOTED = 1u << 3,
};

/* Each optional expectation is checked only when set (NULL strings are skipped). */
struct path_case {
	const char *name;
	const char *arg;
	size_t len; /* 0: strlen(arg) */
	enum smtp_arg_status status;
	const char *addr;
	const char *local;
	const char *domain;
	unsigned flags;
	/* MAIL parameters */
	bool has_size;
	uint64_t size;
	enum smtp_body_type body;
	bool smtputf8;
	bool auth; /* parsed as where AUTH is offered */
};

static const char *const status_names[] = {
    [SMTP_ARG_OK] = "OK",
    [SMTP_ARG_SYNTAX] = "SYNTAX",
    [SMTP_ARG_PATH_SYNTAX] = "PATH_SYNTAX",
    [SMTP_ARG_PATH_TOO_LONG] = "PATH_TOO_LONG",
    [SMTP_ARG_PARAM_UNKNOWN] = "PARAM_UNKNOWN",
    [SMTP_ARG_PARAM_INVALID] = "PARAM_INVALID",
};

static size_t
case_len(const char *arg, size_t len)
{
	return len != 0 ? len : strlen(arg);
}

static int
check_str(const char *name, const char *what, const char *got, const char *want)
{
	if (want == NULL || strcmp(got, want) == 0)
		return 0;
	print_error("case '%s': %s is \"%s\", expected \"%s\"\n", name, what, got, want);
	return 1;
}

static int
check_u64(const char *name, const char *what, uint64_t got, uint64_t want)
{
	if (got == want)
		return 0;
	print_error("case '%s': %s is %llu, expected %llu\n", name, what, (unsigned long long)got,
		    (unsigned long long)want);
	return 1;
}

static unsigned
path_flags(const struct smtp_path *p)
{
	return (p->is_null ? F_NULL : 0) | (p->is_postmaster ? F_PM : 0) |
	       (p->is_utf8 ? F_UTF8 : 0) | (p->quoted ? F_QUOTED : 0);
}

/* Checks the fields every successful parse must get right, whatever the case. */
static int
check_path(const struct path_case *c, const struct smtp_path *p)
{
	int bad = 0;

	bad += check_str(c->name, "addr", p->addr, c->addr);
	bad += check_str(c->name, "local", p->local, c->local);
	bad += check_str(c->name, "domain", p->domain, c->domain);
	bad += check_u64(c->name, "flags", path_flags(p), c->flags);
	bad += check_u64(c->name, "local_len", p->local_len, strlen(p->local));
	bad += check_u64(c->name, "domain_len", p->domain_len, strlen(p->domain));
	return bad;
}

/* The addr a parse produces must parse again to itself (a fixed point). */
static int
check_round_trip(const char *name, const struct smtp_path *p, bool is_rcpt)
{
	char line[SMTP_PATH_MAX + 16];
	struct smtp_path again;
	struct smtp_mail_params params;
	enum smtp_arg_status st;
	int n;

	n = snprintf(line, sizeof(line), "%s<%s>", is_rcpt ? "TO:" : "FROM:", p->addr);
	if (n < 0 || (size_t)n >= sizeof(line)) {
		print_error("case '%s': addr does not fit a line\n", name);
		return 1;
	}
	st = is_rcpt ? smtp_parse_rcpt_to(line, (size_t)n, &again)
		     : smtp_parse_mail_from(line, (size_t)n, false, &again, &params);
	if (st != SMTP_ARG_OK) {
		print_error("case '%s': re-parse of \"%s\" gives %s\n", name, line,
			    status_names[st]);
		return 1;
	}
	return check_str(name, "re-parsed addr", again.addr, p->addr) +
	       check_str(name, "re-parsed local", again.local, p->local) +
	       check_str(name, "re-parsed domain", again.domain, p->domain);
}

static int
check_failed_path(const struct path_case *c, const struct smtp_path *p)
{
	/* A failure must not leave anything that looks like an address. */
	if (p->addr[0] == '\0' && p->local_len == 0 && p->domain_len == 0 && !p->is_null &&
	    !p->is_postmaster)
		return 0;
	print_error("case '%s': failed parse left addr \"%s\"\n", c->name, p->addr);
	return 1;
}

static int
check_status(const char *name, enum smtp_arg_status got, enum smtp_arg_status want)
{
	if (got == want)
		return 0;
	print_error("case '%s': status %s, expected %s\n", name, status_names[got],
		    status_names[want]);
	return 1;
}

static int
run_mail_case(const struct path_case *c)
{
	struct smtp_path p;
	struct smtp_mail_params params;
	enum smtp_arg_status st;
	int bad;

	st = smtp_parse_mail_from(c->arg, case_len(c->arg, c->len), c->auth, &p, &params);
	bad = check_status(c->name, st, c->status);
	if (bad != 0)
		return bad;
	if (st != SMTP_ARG_OK)
		return check_failed_path(c, &p);
	bad += check_path(c, &p);
	bad += check_u64(c->name, "has_size", params.has_size, c->has_size);
	bad += check_u64(c->name, "size", params.size, c->size);
	bad += check_u64(c->name, "body", params.body, c->body);
	bad += check_u64(c->name, "smtputf8", params.smtputf8, c->smtputf8);
	if (!p.is_null)
		bad += check_round_trip(c->name, &p, false);
	return bad;
}

static int
run_rcpt_case(const struct path_case *c)
{
	struct smtp_path p;
	enum smtp_arg_status st;
	int bad;

	st = smtp_parse_rcpt_to(c->arg, case_len(c->arg, c->len), &p);
	bad = check_status(c->name, st, c->status);
	if (bad != 0)
		return bad;
	if (st != SMTP_ARG_OK)
		return check_failed_path(c, &p);
	return check_path(c, &p) + check_round_trip(c->name, &p, true);
}

static const struct path_case mail_cases[] = {
    /* Plain paths and the FROM: prefix */
    PARSED("plain", "FROM:<user@example.com>", "user@example.com", "user", "example.com", 0),
    PARSED("lowercase from", "from:<a@b.example>", "a@b.example", "a", "b.example", 0),
    GOOD("space after colon", "FROM: <a@b.example>", "a@b.example"),
    GOOD("spaces after colon", "FROM:   <a@b.example>", "a@b.example"),
    GOOD("trailing spaces", "FROM:<a@b.example>   ", "a@b.example"),
    GOOD("trailing tab", "FROM:<a@b.example>\t", "a@b.example"),
    PARSED("null path", "FROM:<>", "", "", "", F_NULL),
    {.name = "null path with size",
     .arg = "FROM:<> SIZE=100",
     .status = SMTP_ARG_OK,
     .addr = "",
     .local = "",
     .domain = "",
     .flags = F_NULL,
     .has_size = true,
     .size = 100},
    PARSED("dotted local", "FROM:<first.last@example.com>", "first.last@example.com", "first.last",
	   NULL, 0),
    GOOD("atext specials", "FROM:<!#$%&'*+-/=?^_`{|}~@x.example>", "!#$%&'*+-/=?^_`{|}~@x.example"),
    PARSED("case kept", "FROM:<John.Doe@Example.COM>", "John.Doe@Example.COM", "John.Doe",
	   "Example.COM", 0),
    BAD("postmaster not special for MAIL", "FROM:<Postmaster>", SMTP_ARG_PATH_SYNTAX),
    GOOD("postmaster with domain", "FROM:<postmaster@x.example>", "postmaster@x.example"),

    /* Argument syntax around the path */
    BAD("empty argument", "", SMTP_ARG_SYNTAX),
    BAD("FROM: only", "FROM:", SMTP_ARG_SYNTAX),
    BAD("no brackets", "FROM:a@b.example", SMTP_ARG_SYNTAX),
    BAD("no colon", "FROM <a@b.example>", SMTP_ARG_SYNTAX),
    BAD("TO: for MAIL", "TO:<a@b.example>", SMTP_ARG_SYNTAX),
    BAD("unterminated path", "FROM:<a@b.example", SMTP_ARG_SYNTAX),
    BAD("garbage after >", "FROM:<a@b.example>x", SMTP_ARG_SYNTAX),
    BAD("double >", "FROM:<a@b.example>>", SMTP_ARG_SYNTAX),
    BAD("params without space", "FROM:<a@b.example>SIZE=1", SMTP_ARG_SYNTAX),
    BAD("space inside <", "FROM:< a@b.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("space before >", "FROM:<a@b.example >", SMTP_ARG_PATH_SYNTAX),
    BAD("blank null path", "FROM:< >", SMTP_ARG_PATH_SYNTAX),
    BAD("nested brackets", "FROM:<<a@b.example>>", SMTP_ARG_PATH_SYNTAX),

    /* Local-part grammar */
    BAD("double dot local", "FROM:<a..b@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("leading dot local", "FROM:<.a@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("trailing dot local", "FROM:<a.@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("empty local", "FROM:<@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("no domain", "FROM:<a@>", SMTP_ARG_PATH_SYNTAX),
    BAD("no at", "FROM:<a>", SMTP_ARG_PATH_SYNTAX),
    BAD("two ats", "FROM:<a@b@c.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("double at", "FROM:<a@@c.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("space in local", "FROM:<a b@c.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("comment in local", "FROM:<(c)a@b.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("stray quote in local", "FROM:<a\"b\"@x.example>", SMTP_ARG_PATH_SYNTAX),

    /* Quoted local parts */
    PARSED("quoted space", "FROM:<\"a b\"@x.example>", "\"a b\"@x.example", "a b", "x.example",
	   F_QUOTED),
    PARSED("quoted at", "FROM:<\"a@b\"@x.example>", "\"a@b\"@x.example", "a@b", "x.example",
	   F_QUOTED),
    PARSED("quoted escaped quote", "FROM:<\"a\\\"b\"@x.example>", "\"a\\\"b\"@x.example", "a\"b",
	   "x.example", F_QUOTED),
    PARSED("quoted escaped backslash", "FROM:<\"a\\\\b\"@x.example>", "\"a\\\\b\"@x.example",
	   "a\\b", "x.example", F_QUOTED),
    PARSED("quoted needlessly", "FROM:<\"abc\"@x.example>", "abc@x.example", "abc", "x.example",
	   F_QUOTED),
    PARSED("needless escape", "FROM:<\"a\\bc\"@x.example>", "abc@x.example", "abc", "x.example",
	   F_QUOTED),
    PARSED("quoted dot-string", "FROM:<\"a.b\"@x.example>", "a.b@x.example", "a.b", "x.example",
	   F_QUOTED),
    PARSED("quoted double dot", "FROM:<\"a..b\"@x.example>", "\"a..b\"@x.example", "a..b",
	   "x.example", F_QUOTED),
    PARSED("quoted leading dot", "FROM:<\".a\"@x.example>", "\".a\"@x.example", ".a", "x.example",
	   F_QUOTED),
    PARSED("quoted empty", "FROM:<\"\"@x.example>", "\"\"@x.example", "", "x.example", F_QUOTED),
    PARSED("quoted >", "FROM:<\"a>b\"@x.example>", "\"a>b\"@x.example", "a>b", "x.example",
	   F_QUOTED),
    PARSED("quoted escaped space", "FROM:<\"a\\ b\"@x.example>", "\"a b\"@x.example", "a b",
	   "x.example", F_QUOTED),
    BAD("quoted then atom", "FROM:<\"a\"b@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("unterminated quote", "FROM:<\"abc@x.example>", SMTP_ARG_SYNTAX),
    BAD("quoted tab", "FROM:<\"a\tb\"@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("quoted DEL", "FROM:<\"a\x7f\"@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("quoted-pair of control", "FROM:<\"a\\\x01\"@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("quoted-pair of LF", "FROM:<\"a\\\nb\"@x.example>", SMTP_ARG_PATH_SYNTAX),
    {BIN("quoted NUL", "FROM:<\"a\0b\"@x.example>"), .status = SMTP_ARG_PATH_SYNTAX},

    /* CR / LF / NUL injection */
    {BIN("NUL in local", "FROM:<a\0b@x.example>"), .status = SMTP_ARG_PATH_SYNTAX},
    {BIN("NUL in domain", "FROM:<a@x.example\0>"), .status = SMTP_ARG_PATH_SYNTAX},
    {BIN("NUL after path", "FROM:<a@x.example>\0"), .status = SMTP_ARG_SYNTAX},
    BAD("CR after path", "FROM:<a@x.example>\r", SMTP_ARG_SYNTAX),
    BAD("CRLF inside path", "FROM:<a@x.example\r\nRCPT TO:<b@y.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("LF in local", "FROM:<a\n@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("CRLF in param", "FROM:<a@x.example> SIZE=1\r\nRCPT", SMTP_ARG_PARAM_INVALID),
    BAD("DEL in local", "FROM:<a\x7f@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("ESC in domain", "FROM:<a@x\x1b.example>", SMTP_ARG_PATH_SYNTAX),

    /* UTF-8 (RFC 6531) */
    PARSED("utf8 local", "FROM:<j\xc3\xb6rg@example.com>", "j\xc3\xb6rg@example.com", "j\xc3\xb6rg",
	   "example.com", F_UTF8),
    PARSED("utf8 domain",
	   "FROM:<a@b\xc3\xbc"
	   "cher.example>",
	   NULL, "a",
	   "b\xc3\xbc"
	   "cher.example",
	   F_UTF8),
    PARSED("utf8 cjk",
	   "FROM:<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\xb9\xbf\xe5\x91\x8a>",
	   NULL, NULL, NULL, F_UTF8),
    PARSED("utf8 4-byte", "FROM:<\xf0\x9f\x98\x80@x.example>", "\xf0\x9f\x98\x80@x.example", NULL,
	   NULL, F_UTF8),
    PARSED("utf8 quoted needlessly", "FROM:<\"j\xc3\xb6rg\"@x.example>", "j\xc3\xb6rg@x.example",
	   NULL, NULL, F_UTF8 | F_QUOTED),
    PARSED("utf8 quoted space", "FROM:<\"j\xc3\xb6 rg\"@x.example>", "\"j\xc3\xb6 rg\"@x.example",
	   "j\xc3\xb6 rg", NULL, F_UTF8 | F_QUOTED),
    BAD("utf8 truncated", "FROM:<a\xc3@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("utf8 overlong 2", "FROM:<\xc0\xaf@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("utf8 overlong 3", "FROM:<\xe0\x80\xaf@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("utf8 overlong 4", "FROM:<\xf0\x80\x80\xaf@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("utf8 surrogate", "FROM:<\xed\xa0\x80@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("utf8 past U+10FFFF", "FROM:<\xf4\x90\x80\x80@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("utf8 lone continuation", "FROM:<a\x80@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("utf8 0xff", "FROM:<a@x\xff.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("utf8 bad in quoted", "FROM:<\"a\xc3\"@x.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("utf8 escaped octet", "FROM:<\"\\\xc3\xa9\"@x.example>", SMTP_ARG_PATH_SYNTAX),

    /* Source routes (accepted, dropped) */
    PARSED("source route", "FROM:<@a.example,@b.example:user@c.example>", "user@c.example", "user",
	   "c.example", 0),
    GOOD("source route one hop", "FROM:<@a.example:user@c.example>", "user@c.example"),
    PARSED("source route quoted", "FROM:<@a.example:\"x y\"@c.example>", "\"x y\"@c.example", "x y",
	   "c.example", F_QUOTED),
    BAD("source route no colon", "FROM:<@a.example,user@c.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("source route space", "FROM:<@a.example user@c.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("source route empty hop", "FROM:<@:user@c.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("source route bad hop", "FROM:<@a..b:user@c.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("source route no mailbox", "FROM:<@a.example:>", SMTP_ARG_PATH_SYNTAX),
    BAD("source route literal hop", "FROM:<@[192.0.2.1]:user@c.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("source route trailing comma", "FROM:<@a.example,:user@c.example>", SMTP_ARG_PATH_SYNTAX),

    /* Domains */
    PARSED("single label", "FROM:<a@localhost>", "a@localhost", "a", "localhost", 0),
    GOOD("hyphen inside", "FROM:<a@my-host.example>", "a@my-host.example"),
    GOOD("a-label", "FROM:<a@xn--bcher-kva.example>", "a@xn--bcher-kva.example"),
    GOOD("numeric domain", "FROM:<a@1.2.3.4>", "a@1.2.3.4"),
    BAD("leading hyphen", "FROM:<a@-a.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("trailing hyphen", "FROM:<a@a-.example>", SMTP_ARG_PATH_SYNTAX),
    BAD("double dot domain", "FROM:<a@a..b>", SMTP_ARG_PATH_SYNTAX),
    BAD("leading dot domain", "FROM:<a@.a.b>", SMTP_ARG_PATH_SYNTAX),
    BAD("trailing dot domain", "FROM:<a@a.b.>", SMTP_ARG_PATH_SYNTAX),
    BAD("underscore domain", "FROM:<a@a_b.example>", SMTP_ARG_PATH_SYNTAX),

    /* Address literals */
    PARSED("ipv4 literal", "FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]", "a", "[192.0.2.1]", 0),
    GOOD("ipv4 max", "FROM:<a@[255.255.255.255]>", "a@[255.255.255.255]"),
    BAD("ipv4 256", "FROM:<a@[256.1.1.1]>", SMTP_ARG_PATH_SYNTAX),
    BAD("ipv4 three parts", "FROM:<a@[1.2.3]>", SMTP_ARG_PATH_SYNTAX),
    BAD("ipv4 five parts", "FROM:<a@[1.2.3.4.5]>", SMTP_ARG_PATH_SYNTAX),
    BAD("ipv4 four digits", "FROM:<a@[1.2.3.0004]>", SMTP_ARG_PATH_SYNTAX),
    PARSED("ipv6 loopback", "FROM:<a@[IPv6:::1]>", "a@[IPv6:::1]", "a", "[IPv6:::1]", 0),
    GOOD("ipv6 compressed", "FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"),
    GOOD("ipv6 full lowercase tag", "FROM:<a@[ipv6:2001:DB8:0:0:0:0:0:1]>",
	 "a@[ipv6:2001:DB8:0:0:0:0:0:1]"),
    BAD("ipv6 v4 compressed", "FROM:<a@[IPv6:::ffff:192.0.2.1]>", SMTP_ARG_OK),
    BAD("ipv6 v4 full", "FROM:<a@[IPv6:1:2:3:4:5:6:192.0.2.1]>", SMTP_ARG_OK),
    BAD("ipv6 trailing ::", "FROM:<a@[IPv6:fe80::]>", SMTP_ARG_OK),
    BAD("ipv6 seven groups", "FROM:<a@[IPv6:1:2:3:4:5:6:7]>", SMTP_ARG_PATH_SYNTAX),
    BAD("ipv6 nine groups", "FROM:<a@[IPv6:1:2:3:4:5:6:7:8:9]>", SMTP_ARG_PATH_SYNTAX),
    BAD("ipv6 two ::", "FROM:<a@[IPv6:1::2::3]>", SMTP_ARG_PATH_SYNTAX),
    BAD("ipv6 :: with seven", "FROM:<a@[IPv6:1:2:3:4:5:6:7::]>", SMTP_ARG_PATH_SYNTAX),
    BAD("ipv6 long group", "FROM:<a@[IPv6:12345::1]>", SMTP_ARG_PATH_SYNTAX),
    BAD("ipv6 non-hex", "FROM:<a@[IPv6:g::1]>", SMTP_ARG_PATH_SYNTAX),
    BAD("ipv6 trailing colon", "FROM:<a@[IPv6:1:2:3:4:5:6:7:8:]>", SMTP_ARG_PATH_SYNTAX),
    BAD("ipv6 empty", "FROM:<a@[IPv6:]>", SMTP_ARG_PATH_SYNTAX),
    BAD("ipv6 v4 not last", "FROM:<a@[IPv6:::1.2.3.4:1]>", SMTP_ARG_PATH_SYNTAX),
    PARSED("general literal with >", "FROM:<a@[x-tag:some>thing]>", "a@[x-tag:some>thing]", "a",
	   "[x-tag:some>thing]", 0),
    BAD("general literal empty", "FROM:<a@[tag:]>", SMTP_ARG_PATH_SYNTAX),
    BAD("general literal no tag", "FROM:<a@[:foo]>", SMTP_ARG_PATH_SYNTAX),
    BAD("general literal bad tag", "FROM:<a@[tag-:foo]>", SMTP_ARG_PATH_SYNTAX),
    BAD("general literal tag underscore", "FROM:<a@[t_g:foo]>", SMTP_ARG_PATH_SYNTAX),
    BAD("general literal space", "FROM:<a@[tag:a b]>", SMTP_ARG_PATH_SYNTAX),
    BAD("empty literal", "FROM:<a@[]>", SMTP_ARG_PATH_SYNTAX),
    BAD("literal then text", "FROM:<a@[192.0.2.1]x>", SMTP_ARG_PATH_SYNTAX),
    BAD("unclosed literal", "FROM:<a@[192.0.2.1>", SMTP_ARG_SYNTAX),

    /* MAIL parameters */
    PARAMS("size", "FROM:<a@b.example> SIZE=12345", 0, true, 12345, SMTP_BODY_7BIT, false),
    PARAMS("size zero", "FROM:<a@b.example> SIZE=0", 0, true, 0, SMTP_BODY_7BIT, false),
    PARAMS("size max", "FROM:<a@b.example> SIZE=18446744073709551615", 0, true, UINT64_MAX,
	   SMTP_BODY_7BIT, false),
    PARAMS("size leading zeros", "FROM:<a@b.example> SIZE=0000000000000000000000042", 0, true, 42,
	   SMTP_BODY_7BIT, false),
    /* A valid value past UINT64_MAX (20 digits may be) is too big, held as UINT64_MAX. */
    PARAMS("size overflow", "FROM:<a@b.example> SIZE=18446744073709551616", 0, true, UINT64_MAX,
	   SMTP_BODY_7BIT, false),
    PARAMS("size huge", "FROM:<a@b.example> SIZE=99999999999999999999999", 0, true, UINT64_MAX,
	   SMTP_BODY_7BIT, false),
    PARAMS("size huge then body", "FROM:<a@b.example> SIZE=99999999999999999999 BODY=8BITMIME", 0,
	   true, UINT64_MAX, SMTP_BODY_8BITMIME, false),
    BAD("size huge not digits", "FROM:<a@b.example> SIZE=99999999999999999999x",
	SMTP_ARG_PARAM_INVALID),
    BAD("size empty", "FROM:<a@b.example> SIZE=", SMTP_ARG_PARAM_INVALID),
    BAD("size no value", "FROM:<a@b.example> SIZE", SMTP_ARG_PARAM_INVALID),
    BAD("size not digits", "FROM:<a@b.example> SIZE=12a", SMTP_ARG_PARAM_INVALID),
    BAD("size negative", "FROM:<a@b.example> SIZE=-1", SMTP_ARG_PARAM_INVALID),
    PARAMS("body 7bit", "FROM:<a@b.example> BODY=7BIT", 0, false, 0, SMTP_BODY_7BIT, false),
    PARAMS("body 8bitmime", "FROM:<a@b.example> BODY=8BITMIME", 0, false, 0, SMTP_BODY_8BITMIME,
	   false),
    BAD("body binarymime", "FROM:<a@b.example> BODY=BINARYMIME", SMTP_ARG_PARAM_INVALID),
    BAD("body unknown", "FROM:<a@b.example> BODY=9BIT", SMTP_ARG_PARAM_INVALID),
    BAD("body no value", "FROM:<a@b.example> BODY", SMTP_ARG_PARAM_INVALID),
    PARAMS("smtputf8", "FROM:<j\xc3\xb6rg@b.example> SMTPUTF8", F_UTF8, false, 0, SMTP_BODY_7BIT,
	   true),
    BAD("smtputf8 with value", "FROM:<a@b.example> SMTPUTF8=yes", SMTP_ARG_PARAM_INVALID),
    PARAMS("lowercase keywords", "FROM:<a@b.example> size=1 body=8bitmime smtputf8", 0, true, 1,
	   SMTP_BODY_8BITMIME, true),
    PARAMS("all params", "FROM:<a@b.example> SMTPUTF8 BODY=8BITMIME SIZE=7", 0, true, 7,
	   SMTP_BODY_8BITMIME, true),
    PARAMS("double space between params", "FROM:<a@b.example>  SIZE=1   BODY=7BIT", 0, true, 1,
	   SMTP_BODY_7BIT, false),
    BAD("repeated size", "FROM:<a@b.example> SIZE=1 SIZE=2", SMTP_ARG_PARAM_INVALID),
    BAD("repeated size other case", "FROM:<a@b.example> size=1 SIZE=1", SMTP_ARG_PARAM_INVALID),
    BAD("repeated body", "FROM:<a@b.example> BODY=7BIT BODY=7BIT", SMTP_ARG_PARAM_INVALID),
    BAD("repeated smtputf8", "FROM:<a@b.example> SMTPUTF8 smtputf8", SMTP_ARG_PARAM_INVALID),
    BAD("unknown keyword", "FROM:<a@b.example> XFOO", SMTP_ARG_PARAM_UNKNOWN),
    BAD("unknown with value", "FROM:<a@b.example> RET=HDRS", SMTP_ARG_PARAM_UNKNOWN),
    BAD("auth param unknown", "FROM:<a@b.example> AUTH=<>", SMTP_ARG_PARAM_UNKNOWN),
    BAD("auth param unknown, bad xtext", "FROM:<a@b.example> AUTH=a+4", SMTP_ARG_PARAM_UNKNOWN),
    BAD("unknown utf8 value", "FROM:<a@b.example> X-FOO=\xc3\xa9", SMTP_ARG_PARAM_UNKNOWN),
    BAD("bad utf8 value", "FROM:<a@b.example> X-FOO=\xc3", SMTP_ARG_PARAM_INVALID),
    BAD("equals in value", "FROM:<a@b.example> FOO=a=b", SMTP_ARG_PARAM_INVALID),
    BAD("keyword leading hyphen", "FROM:<a@b.example> -FOO", SMTP_ARG_PARAM_INVALID),
    BAD("empty keyword", "FROM:<a@b.example> =1", SMTP_ARG_PARAM_INVALID),
    BAD("keyword underscore", "FROM:<a@b.example> X_FOO", SMTP_ARG_PARAM_INVALID),
    BAD("tab between params", "FROM:<a@b.example> SIZE=1\tBODY=7BIT", SMTP_ARG_PARAM_INVALID),
    BAD("control in value", "FROM:<a@b.example> SIZE=1\x01", SMTP_ARG_PARAM_INVALID),
    {BIN("NUL in param value", "FROM:<a@b.example> X=\0"), .status = SMTP_ARG_PARAM_INVALID},
    BAD("unknown before invalid", "FROM:<a@b.example> XFOO SIZE=x", SMTP_ARG_PARAM_UNKNOWN),
    BAD("invalid before unknown", "FROM:<a@b.example> SIZE=x XFOO", SMTP_ARG_PARAM_INVALID),
    BAD("path error before params", "FROM:<a..b@x.example> XFOO", SMTP_ARG_PATH_SYNTAX),

    /* AUTH=<> / AUTH=xtext (RFC 4954 5, RFC 3461 4) where AUTH is offered: checked, dropped */
    AUTHP("auth null", "FROM:<a@b.example> AUTH=<>", SMTP_ARG_OK),
    AUTHP("auth xtext", "FROM:<a@b.example> AUTH=user+40localhost", SMTP_ARG_OK),
    AUTHP("auth lowercase", "FROM:<a@b.example> auth=a+2bb", SMTP_ARG_OK),
    AUTHP("auth xchar range", "FROM:<a@b.example> AUTH=!\"#<>~{}", SMTP_ARG_OK),
    AUTHP("auth hex at end", "FROM:<a@b.example> AUTH=a+3D", SMTP_ARG_OK),
    {.name = "auth among params",
     .arg = "FROM:<> SIZE=5 AUTH=<> BODY=8BITMIME",
     .status = SMTP_ARG_OK,
     .addr = "",
     .flags = F_NULL,
     .has_size = true,
     .size = 5,
     .body = SMTP_BODY_8BITMIME,
     .auth = true},
    AUTHP("auth no value", "FROM:<a@b.example> AUTH", SMTP_ARG_PARAM_INVALID),
    AUTHP("auth empty", "FROM:<a@b.example> AUTH=", SMTP_ARG_PARAM_INVALID),
    AUTHP("auth lone plus", "FROM:<a@b.example> AUTH=+", SMTP_ARG_PARAM_INVALID),
    AUTHP("auth plus one digit", "FROM:<a@b.example> AUTH=a+4", SMTP_ARG_PARAM_INVALID),
    AUTHP("auth plus non-hex", "FROM:<a@b.example> AUTH=a+G0", SMTP_ARG_PARAM_INVALID),
    AUTHP("auth plus plus", "FROM:<a@b.example> AUTH=a++40", SMTP_ARG_PARAM_INVALID),
    AUTHP("auth equals", "FROM:<a@b.example> AUTH=a=b", SMTP_ARG_PARAM_INVALID),
    AUTHP("auth utf8", "FROM:<a@b.example> AUTH=\xc3\xa9", SMTP_ARG_PARAM_INVALID),
    AUTHP("auth DEL", "FROM:<a@b.example> AUTH=a\x7f", SMTP_ARG_PARAM_INVALID),
    AUTHP("auth repeated", "FROM:<a@b.example> AUTH=<> auth=a", SMTP_ARG_PARAM_INVALID),
    AUTHP("auth unknown still unknown", "FROM:<a@b.example> AUTH=<> XFOO", SMTP_ARG_PARAM_UNKNOWN),
    AUTHP("auth path error first", "FROM:<a..b@x.example> AUTH=<>", SMTP_ARG_PATH_SYNTAX),
};

static const struct path_case rcpt_cases[] = {
    PARSED("plain", "TO:<a@b.example>", "a@b.example", "a", "b.example", 0),
    GOOD("lowercase to", "to:<a@b.example>", "a@b.example"),
    GOOD("space after colon", "TO: <a@b.example>", "a@b.example"),
    BAD("null path", "TO:<>", SMTP_ARG_PATH_SYNTAX),
    PARSED("postmaster", "TO:<Postmaster>", "Postmaster", "Postmaster", "", F_PM),
    PARSED("postmaster lowercase", "TO:<postmaster>", "Postmaster", NULL, "", F_PM),
    PARSED("postmaster uppercase", "TO:<POSTMASTER>", "Postmaster", NULL, "", F_PM),
    PARSED("postmaster with domain", "TO:<postmaster@x.example>", "postmaster@x.example",
	   "postmaster", "x.example", 0),
    BAD("postmaster quoted", "TO:<\"Postmaster\">", SMTP_ARG_PATH_SYNTAX),
    BAD("postmaster routed", "TO:<@a.example:Postmaster>", SMTP_ARG_PATH_SYNTAX),
    BAD("postmaster prefix", "TO:<Postmasters>", SMTP_ARG_PATH_SYNTAX),
    BAD("postmaster with param", "TO:<Postmaster> NOTIFY=NEVER", SMTP_ARG_PARAM_UNKNOWN),
    BAD("local only", "TO:<a>", SMTP_ARG_PATH_SYNTAX),
    GOOD("source route", "TO:<@a.example,@b.example:u@c.example>", "u@c.example"),
    PARSED("quoted at", "TO:<\"a@b\"@x.example>", "\"a@b\"@x.example", "a@b", NULL, F_QUOTED),
    PARSED("utf8", "TO:<\xc3\xa9@\xc3\xa9.example>", NULL, NULL, NULL, F_UTF8),
    BAD("notify unknown", "TO:<a@b.example> NOTIFY=SUCCESS,FAILURE", SMTP_ARG_PARAM_UNKNOWN),
    BAD("size unknown on rcpt", "TO:<a@b.example> SIZE=1", SMTP_ARG_PARAM_UNKNOWN),
    BAD("control param", "TO:<a@b.example> \x01", SMTP_ARG_PARAM_INVALID),
    GOOD("trailing spaces", "TO:<a@b.example>  ", "a@b.example"),
    BAD("FROM: for RCPT", "FROM:<a@b.example>", SMTP_ARG_SYNTAX),
    BAD("no brackets", "TO:a@b.example", SMTP_ARG_SYNTAX),
    BAD("CRLF injection", "TO:<a@b.example>\r\nDATA", SMTP_ARG_SYNTAX),
    {BIN("NUL in domain", "TO:<a@b.example\0>"), .status = SMTP_ARG_PATH_SYNTAX},
};

static void
test_mail_from(void **state)
{
	int bad = 0;

	for (size_t i = 0; i < ARRAY_LEN(mail_cases); i++)
		bad += run_mail_case(&mail_cases[i]);
	assert_int_equal(bad, 0);
}

static void
test_rcpt_to(void **state)
{
	int bad = 0;

	for (size_t i = 0; i < ARRAY_LEN(rcpt_cases); i++)
		bad += run_rcpt_case(&rcpt_cases[i]);
	assert_int_equal(bad, 0);
}

/* Limits: cases built from lengths, since the inputs are too long to write out. */
struct limit_case {
	const char *name;
	size_t local_len;  /* octets of local part on the wire (quotes included) */
	bool quoted;	   /* local part written as "aaa" */
	size_t domain_len; /* octets of domain */
	size_t route_len;  /* octets of "@r...r:" source route, 0 for none */
	enum smtp_arg_status status;
};

static const struct limit_case limit_cases[] = {
    {"local at limit", 64, false, 10, 0, SMTP_ARG_OK},
    {"local over limit", 65, false, 10, 0, SMTP_ARG_PATH_TOO_LONG},
    {"quoted local at limit", 64, true, 10, 0, SMTP_ARG_OK},
    {"quoted local over limit", 65, true, 10, 0, SMTP_ARG_PATH_TOO_LONG},
    {"path at limit", 64, false, 191, 0, SMTP_ARG_OK},
    {"path over limit", 64, false, 192, 0, SMTP_ARG_PATH_TOO_LONG},
    {"long domain at path limit", 1, false, 254, 0, SMTP_ARG_OK},
    {"long domain over path limit", 1, false, 255, 0, SMTP_ARG_PATH_TOO_LONG},
    {"route within limit", 10, false, 10, 200, SMTP_ARG_OK},
    {"route over limit", 10, false, 10, 300, SMTP_ARG_PATH_TOO_LONG},
    {"huge domain", 1, false, 900, 0, SMTP_ARG_PATH_TOO_LONG},
};

/* Fills n octets of label text "aaa.aaa..." that is a valid domain (no dot at either end). */
static size_t
fill_domain(char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (i % 10 == 9 && i + 1 < n) ? '.' : 'd';
	return n;
}

static int
run_limit_case(const struct limit_case *c)
{
	char line[1200];
	struct smtp_path p;
	struct smtp_mail_params params;
	enum smtp_arg_status st;
	size_t n = 0;

	memcpy(line, "FROM:<", 6);
	n = 6;
	if (c->route_len > 0) {
		line[n++] = '@';
		n += fill_domain(line + n, c->route_len - 2);
		line[n++] = ':';
	}
	for (size_t i = 0; i < c->local_len; i++)
		line[n++] = (c->quoted && (i == 0 || i + 1 == c->local_len)) ? '"' : 'l';
	line[n++] = '@';
	n += fill_domain(line + n, c->domain_len);
	line[n++] = '>';
	st = smtp_parse_mail_from(line, n, false, &p, &params);
	if (st == SMTP_ARG_OK && p.local_len != (c->quoted ? c->local_len - 2 : c->local_len)) {
		print_error("case '%s': local_len %zu\n", c->name, p.local_len);
		return 1;
	}
	return check_status(c->name, st, c->status);
}

static void
test_limits(void **state)
{
	int bad = 0;

	for (size_t i = 0; i < ARRAY_LEN(limit_cases); i++)
		bad += run_limit_case(&limit_cases[i]);
	assert_int_equal(bad, 0);
}

/* AUTH= takes at most SMTP_AUTH_PARAM_MAX octets of value. */
static void
test_auth_param_limit(void **state)
{
	static const char pre[] = "FROM:<a@b.example> AUTH=";
	char line[sizeof(pre) + SMTP_AUTH_PARAM_MAX + 1];
	struct smtp_path p;
	struct smtp_mail_params params;
	size_t n = sizeof(pre) - 1;

	memcpy(line, pre, n);
	memset(line + n, 'a', SMTP_AUTH_PARAM_MAX + 1);
	assert_int_equal(smtp_parse_mail_from(line, n + SMTP_AUTH_PARAM_MAX, true, &p, &params),
			 SMTP_ARG_OK);
	assert_string_equal(p.addr, "a@b.example");
	assert_int_equal(smtp_parse_mail_from(line, n + SMTP_AUTH_PARAM_MAX + 1, true, &p, &params),
			 SMTP_ARG_PARAM_INVALID);
	assert_int_equal(
	    smtp_parse_mail_from(line, n + SMTP_AUTH_PARAM_MAX + 1, false, &p, &params),
	    SMTP_ARG_PARAM_UNKNOWN);
}

struct command_case {
	const char *name;
	const char *arg; /* the line */
	size_t len;
	enum smtp_verb verb;
	const char *want_arg;
};

#define CMD(n, line, v, a)                                                                         \
	{                                                                                          \
		.name = (n), .arg = (line), .verb = (v), .want_arg = (a)                           \
	}

static const struct command_case command_cases[] = {
    CMD("mail", "MAIL FROM:<a@b.example>", SMTP_VERB_MAIL, "FROM:<a@b.example>"),
    CMD("mail lowercase", "mail from:<a@b.example>", SMTP_VERB_MAIL, "from:<a@b.example>"),
    CMD("mail extra spaces", "MAIL  FROM:<a@b.example>  ", SMTP_VERB_MAIL, "FROM:<a@b.example>"),
    CMD("mail alone", "MAIL", SMTP_VERB_MAIL, ""),
    CMD("mailx", "MAILX FROM:<a@b.example>", SMTP_VERB_UNKNOWN, "FROM:<a@b.example>"),
    CMD("mai", "MAI", SMTP_VERB_UNKNOWN, ""),
    CMD("mail tab", "MAIL\tFROM:<a@b.example>", SMTP_VERB_UNKNOWN, ""),
    CMD("leading space", " MAIL FROM:<a@b.example>", SMTP_VERB_UNKNOWN, "MAIL FROM:<a@b.example>"),
    {BIN("NUL after verb", "MAIL\0FROM:<a@b.example>"), .verb = SMTP_VERB_UNKNOWN, .want_arg = ""},
    CMD("rcpt", "RCPT TO:<a@b.example>", SMTP_VERB_RCPT, "TO:<a@b.example>"),
    CMD("helo", "HELO client.example", SMTP_VERB_HELO, "client.example"),
    CMD("helo alone", "HELO", SMTP_VERB_HELO, ""),
    CMD("ehlo", "ehlo client.example", SMTP_VERB_EHLO, "client.example"),
    CMD("data", "DATA", SMTP_VERB_DATA, ""),
    CMD("data extra", "DATA extra", SMTP_VERB_DATA, "extra"),
    CMD("bdat", "BDAT 100 LAST", SMTP_VERB_BDAT, "100 LAST"),
    CMD("rset", "RSET", SMTP_VERB_RSET, ""),
    CMD("noop arg", "NOOP hello there", SMTP_VERB_NOOP, "hello there"),
    CMD("vrfy", "VRFY user", SMTP_VERB_VRFY, "user"),
    CMD("expn", "EXPN list", SMTP_VERB_EXPN, "list"),
    CMD("help", "HELP", SMTP_VERB_HELP, ""),
    CMD("quit", "QUIT", SMTP_VERB_QUIT, ""),
    CMD("quit trailing spaces", "quit   ", SMTP_VERB_QUIT, ""),
    CMD("quit trailing tab", "QUIT\t", SMTP_VERB_QUIT, ""),
    CMD("starttls", "STARTTLS", SMTP_VERB_STARTTLS, ""),
    CMD("starttls mixed case", "StartTls", SMTP_VERB_STARTTLS, ""),
    CMD("start", "START", SMTP_VERB_UNKNOWN, ""),
    CMD("auth", "AUTH PLAIN dGVzdA==", SMTP_VERB_AUTH, "PLAIN dGVzdA=="),
    CMD("empty line", "", SMTP_VERB_UNKNOWN, ""),
    CMD("spaces only", "   ", SMTP_VERB_UNKNOWN, ""),
    CMD("unknown verb", "XYZZY foo", SMTP_VERB_UNKNOWN, "foo"),
    CMD("cr kept", "MAIL FROM:<a@b.example>\r", SMTP_VERB_MAIL, "FROM:<a@b.example>\r"),
};

static void
test_command(void **state)
{
	int bad = 0;

	for (size_t i = 0; i < ARRAY_LEN(command_cases); i++) {
		const struct command_case *c = &command_cases[i];
		size_t len = case_len(c->arg, c->len);
		struct smtp_command cmd;
		char arg[SMTP_LINE_MAX];

		smtp_parse_command(c->arg, len, &cmd);
		bad += check_u64(c->name, "verb", cmd.verb, c->verb);
		if (cmd.arg_len >= sizeof(arg) ||
		    (cmd.arg_len > 0 &&
		     (cmd.arg < c->arg || cmd.arg + cmd.arg_len > c->arg + len))) {
			print_error("case '%s': arg outside the line\n", c->name);
			bad++;
			continue;
		}
		if (c->verb == SMTP_VERB_UNKNOWN && c->len != 0)
			continue; /* arg of an unknown binary line: only bounds matter */
		memcpy(arg, cmd.arg, cmd.arg_len);
		arg[cmd.arg_len] = '\0';
		bad += check_str(c->name, "arg", arg, c->want_arg);
	}
	assert_int_equal(bad, 0);
}

struct bdat_case {
	const char *name;
	const char *arg;
	size_t len;
	int ret;
	uint64_t size;
	bool last;
};

#define BDAT_OK(n, a, sz, l)                                                                       \
	{                                                                                          \
		.name = (n), .arg = (a), .ret = 0, .size = (sz), .last = (l)                       \
	}
#define BDAT_BAD(n, a)                                                                             \
	{                                                                                          \
		.name = (n), .arg = (a), .ret = -1                                                 \
	}

static const struct bdat_case bdat_cases[] = {
    BDAT_OK("size", "100", 100, false),
    BDAT_OK("zero last", "0 LAST", 0, true),
    BDAT_OK("last lowercase", "100 last", 100, true),
    BDAT_OK("two spaces", "100  LAST", 100, true),
    BDAT_OK("trailing spaces", "100 LAST  ", 100, true),
    BDAT_OK("max", "18446744073709551615", UINT64_MAX, false),
    BDAT_BAD("overflow", "18446744073709551616"),
    BDAT_BAD("huge", "99999999999999999999999999 LAST"),
    BDAT_BAD("empty", ""),
    BDAT_BAD("last only", "LAST"),
    BDAT_BAD("lastx", "100 LASTX"),
    BDAT_BAD("extra word", "100 LAST x"),
    BDAT_BAD("negative", "-1"),
    BDAT_BAD("plus", "+1"),
    BDAT_BAD("suffix", "1x"),
    BDAT_BAD("leading space", " 1"),
    BDAT_BAD("tab", "100\tLAST"),
    BDAT_BAD("hex", "0x10"),
    {BIN("NUL after size", "100\0"), .ret = -1},
};

static void
test_bdat(void **state)
{
	int bad = 0;

	for (size_t i = 0; i < ARRAY_LEN(bdat_cases); i++) {
		const struct bdat_case *c = &bdat_cases[i];
		uint64_t size = 7;
		bool last = true;
		int ret = smtp_parse_bdat(c->arg, case_len(c->arg, c->len), &size, &last);

		bad += check_u64(c->name, "ret", (uint64_t)(ret + 1), (uint64_t)(c->ret + 1));
		bad += check_u64(c->name, "size", size, c->size);
		bad += check_u64(c->name, "last", last, c->last);
	}
	assert_int_equal(bad, 0);
}

struct bool_case {
	const char *name;
	const char *arg;
	size_t len;
	bool want;
};

static const struct bool_case helo_cases[] = {
    {.name = "domain", .arg = "client.example", .want = true},
    {.name = "single label", .arg = "localhost", .want = true},
    {.name = "ipv4 literal", .arg = "[192.0.2.1]", .want = true},
    {.name = "ipv6 literal", .arg = "[IPv6:2001:db8::1]", .want = true},
    {.name = "utf8",
     .arg = "b\xc3\xbc"
	    "cher.example",
     .want = true},
    {.name = "odd printable", .arg = "_not!a-domain", .want = true},
    {.name = "empty", .arg = "", .want = false},
    {.name = "two words", .arg = "a b", .want = false},
    {.name = "tab", .arg = "a\tb", .want = false},
    {BIN("NUL", "a\0b"), .want = false},
    {.name = "DEL", .arg = "a\x7f", .want = false},
    {.name = "CR", .arg = "a\r", .want = false},
    {.name = "bad utf8", .arg = "a\xc3", .want = false},
    {.name = "overlong utf8", .arg = "\xc0\xae", .want = false},
};

static const struct bool_case utf8_cases[] = {
    {.name = "empty", .arg = "", .want = true},
    {.name = "ascii", .arg = "abc", .want = true},
    {BIN("NUL", "\0"), .want = true},
    {.name = "2-byte", .arg = "\xc3\xa9", .want = true},
    {.name = "3-byte", .arg = "\xe2\x82\xac", .want = true},
    {.name = "4-byte", .arg = "\xf0\x9f\x98\x80", .want = true},
    {.name = "U+10FFFF", .arg = "\xf4\x8f\xbf\xbf", .want = true},
    {.name = "U+FFFF", .arg = "\xef\xbf\xbf", .want = true},
    {.name = "U+D7FF", .arg = "\xed\x9f\xbf", .want = true},
    {.name = "U+E000", .arg = "\xee\x80\x80", .want = true},
    {.name = "overlong NUL", .arg = "\xc0\x80", .want = false},
    {.name = "overlong C1", .arg = "\xc1\xbf", .want = false},
    {.name = "overlong 3", .arg = "\xe0\x9f\xbf", .want = false},
    {.name = "overlong 4", .arg = "\xf0\x8f\xbf\xbf", .want = false},
    {.name = "surrogate low", .arg = "\xed\xa0\x80", .want = false},
    {.name = "surrogate high", .arg = "\xed\xbf\xbf", .want = false},
    {.name = "past U+10FFFF", .arg = "\xf4\x90\x80\x80", .want = false},
    {.name = "F5 lead", .arg = "\xf5\x80\x80\x80", .want = false},
    {.name = "FF", .arg = "\xff", .want = false},
    {.name = "lone continuation", .arg = "\x80", .want = false},
    {.name = "truncated 2", .arg = "\xc3", .want = false},
    {.name = "truncated 3", .arg = "\xe2\x82", .want = false},
    {.name = "truncated 4", .arg = "\xf0\x9f\x98", .want = false},
    {.name = "bad continuation", .arg = "\xc3\x28", .want = false},
    {.name = "bad third octet", .arg = "\xe2\x82\x28", .want = false},
    {.name = "bad fourth octet", .arg = "\xf0\x9f\x98\x28", .want = false},
    {.name = "ascii then bad", .arg = "abc\xe2\x28\xa1", .want = false},
};

static int
run_bool_cases(const struct bool_case *cases, size_t n, bool (*fn)(const char *, size_t))
{
	int bad = 0;

	for (size_t i = 0; i < n; i++) {
		const struct bool_case *c = &cases[i];
		bool got = fn(c->arg, case_len(c->arg, c->len));
		if (got != c->want) {
			print_error("case '%s': got %d, expected %d\n", c->name, got, c->want);
			bad++;
		}
	}
	return bad;
}

static void
test_helo(void **state)
{
	char name[SMTP_DOMAIN_MAX + 2];
	int bad = run_bool_cases(helo_cases, ARRAY_LEN(helo_cases), smtp_helo_arg_valid);

	memset(name, 'h', sizeof(name));
	if (!smtp_helo_arg_valid(name, SMTP_DOMAIN_MAX)) {
		print_error("case 'helo at limit': refused\n");
		bad++;
	}
	if (smtp_helo_arg_valid(name, SMTP_DOMAIN_MAX + 1)) {
		print_error("case 'helo over limit': accepted\n");
		bad++;
	}
	assert_int_equal(bad, 0);
}

static void
test_utf8(void **state)
{
	assert_int_equal(run_bool_cases(utf8_cases, ARRAY_LEN(utf8_cases), smtp_utf8_valid), 0);
}

static void
test_case_count(void **state)
{
	size_t total = ARRAY_LEN(mail_cases) + ARRAY_LEN(rcpt_cases) + ARRAY_LEN(limit_cases) +
		       ARRAY_LEN(command_cases) + ARRAY_LEN(bdat_cases) + ARRAY_LEN(helo_cases) +
		       ARRAY_LEN(utf8_cases);

	print_message("smtp_parse: %zu table cases\n", total);
	assert_true(total >= 80);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_command),
	    cmocka_unit_test(test_mail_from),
	    cmocka_unit_test(test_rcpt_to),
	    cmocka_unit_test(test_limits),
	    cmocka_unit_test(test_auth_param_limit),
	    cmocka_unit_test(test_bdat),
	    cmocka_unit_test(test_helo),
	    cmocka_unit_test(test_utf8),
	    cmocka_unit_test(test_case_count),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
