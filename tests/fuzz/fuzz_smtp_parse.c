/*
 * libFuzzer harness for smtp_parse: the input is one command line (CRLF
 * removed).  It is split with smtp_parse_command, and both the argument and
 * the whole input go through every argument parser.  Beyond "no crash, no
 * out-of-bounds read" (the input buffer is exactly sized, so ASan sees any
 * overread), it checks the promises of smtp_parse.h and aborts on a broken one:
 * results are NUL-terminated, lengths agree, limits hold, a failure leaves no
 * address behind, an accepted address parses again to itself, and
 * smtp_utf8_valid agrees with an independent decoder.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "smtp/smtp_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A straightforward decode-then-range-check UTF-8 validator, written differently on purpose. */
static bool
ref_utf8_valid(const unsigned char *s, size_t n)
{
	static const uint32_t min_cp[] = {0, 0x80, 0x800, 0x10000};
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		uint32_t cp;
		size_t k;

		if (c < 0x80) {
			i++;
			continue;
		}
		if ((c & 0xe0) == 0xc0) {
			k = 1;
			cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			k = 2;
			cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			k = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (n - i - 1 < k)
			return false;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + j] & 0x3f);
		}
		if (cp < min_cp[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += k + 1;
	}
	return true;
}

static bool
has_high_bit(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return true;
	return false;
}

static bool
terminated(const char *buf, size_t cap)
{
	return memchr(buf, '\0', cap) != NULL;
}

/* What every successful parse must satisfy. */
static void
check_ok_path(const struct smtp_path *p, bool is_rcpt)
{
	size_t alen;

	CHECK(terminated(p->addr, sizeof(p->addr)));
	CHECK(terminated(p->local, sizeof(p->local)));
	CHECK(terminated(p->domain, sizeof(p->domain)));
	alen = strlen(p->addr);
	CHECK(alen <= SMTP_PATH_MAX);
	CHECK(strlen(p->local) == p->local_len);
	CHECK(strlen(p->domain) == p->domain_len);
	CHECK(p->local_len <= SMTP_LOCAL_MAX);
	CHECK(p->domain_len <= SMTP_DOMAIN_MAX);
	for (size_t i = 0; i < alen; i++) {
		unsigned char c = (unsigned char)p->addr[i];
		CHECK(c >= 0x20 && c != 0x7f);
	}
	CHECK(smtp_utf8_valid(p->addr, alen));
	if (p->is_null) {
		CHECK(!is_rcpt && alen == 0 && p->local_len == 0 && p->domain_len == 0);
		CHECK(!p->is_postmaster && !p->is_utf8 && !p->quoted);
		return;
	}
	if (p->is_postmaster) {
		CHECK(is_rcpt && strcmp(p->addr, "Postmaster") == 0 && p->domain_len == 0);
		return;
	}
	CHECK(p->domain_len > 0 && alen > p->domain_len);
	CHECK(p->addr[alen - p->domain_len - 1] == '@');
	CHECK(memcmp(p->addr + alen - p->domain_len, p->domain, p->domain_len) == 0);
	CHECK(p->is_utf8 ==
	      (has_high_bit(p->local, p->local_len) || has_high_bit(p->domain, p->domain_len)));
}

static void
check_failed_path(const struct smtp_path *p)
{
	CHECK(p->addr[0] == '\0' && p->local_len == 0 && p->domain_len == 0);
	CHECK(!p->is_null && !p->is_postmaster);
}

/* The addr written back must parse to the same address: a fixed point. */
static void
check_round_trip(const struct smtp_path *p, bool is_rcpt)
{
	char line[SMTP_PATH_MAX + 16];
	struct smtp_path again;
	struct smtp_mail_params params;
	enum smtp_arg_status st;
	int n;

	if (p->is_null)
		return;
	n = snprintf(line, sizeof(line), "%s<%s>", is_rcpt ? "TO:" : "FROM:", p->addr);
	CHECK(n > 0 && (size_t)n < sizeof(line));
	st = is_rcpt ? smtp_parse_rcpt_to(line, (size_t)n, &again)
		     : smtp_parse_mail_from(line, (size_t)n, false, &again, &params);
	CHECK(st == SMTP_ARG_OK);
	CHECK(strcmp(again.addr, p->addr) == 0);
	CHECK(again.local_len == p->local_len && memcmp(again.local, p->local, p->local_len) == 0);
	CHECK(strcmp(again.domain, p->domain) == 0);
	CHECK(again.is_utf8 == p->is_utf8 && again.is_postmaster == p->is_postmaster);
}

static enum smtp_arg_status
fuzz_mail_once(const char *s, size_t n, bool auth_offered, struct smtp_path *p,
	       struct smtp_mail_params *params)
{
	enum smtp_arg_status st = smtp_parse_mail_from(s, n, auth_offered, p, params);

	CHECK(st <= SMTP_ARG_PARAM_INVALID);
	CHECK(params->body != SMTP_BODY_BINARYMIME);
	CHECK(params->has_size || params->size == 0);
	if (st != SMTP_ARG_OK) {
		check_failed_path(p);
		CHECK(!params->has_size && !params->smtputf8 && params->body == SMTP_BODY_7BIT);
		return st;
	}
	check_ok_path(p, false);
	check_round_trip(p, false);
	return st;
}

/*
 * Offering AUTH only adds the AUTH= parameter: what parses without it parses
 * the same with it, and a parse that fails with it fails without it too.
 */
static void
fuzz_mail(const char *s, size_t n)
{
	struct smtp_path p, pa;
	struct smtp_mail_params params, pra;
	enum smtp_arg_status st = fuzz_mail_once(s, n, false, &p, &params);
	enum smtp_arg_status sta = fuzz_mail_once(s, n, true, &pa, &pra);

	if (st == SMTP_ARG_OK) {
		CHECK(sta == SMTP_ARG_OK);
		CHECK(strcmp(p.addr, pa.addr) == 0 && p.is_null == pa.is_null);
		CHECK(params.has_size == pra.has_size && params.size == pra.size);
		CHECK(params.body == pra.body && params.smtputf8 == pra.smtputf8);
	}
	if (sta != SMTP_ARG_OK)
		CHECK(st != SMTP_ARG_OK);
}

static void
fuzz_rcpt(const char *s, size_t n)
{
	struct smtp_path p;
	enum smtp_arg_status st = smtp_parse_rcpt_to(s, n, &p);

	CHECK(st <= SMTP_ARG_PARAM_INVALID);
	if (st != SMTP_ARG_OK) {
		check_failed_path(&p);
		return;
	}
	CHECK(!p.is_null);
	check_ok_path(&p, true);
	check_round_trip(&p, true);
}

static void
fuzz_bdat(const char *s, size_t n)
{
	char line[64];
	uint64_t size, size2;
	bool last, last2;
	int len;

	if (smtp_parse_bdat(s, n, &size, &last) != 0) {
		CHECK(size == 0 && !last);
		return;
	}
	len = snprintf(line, sizeof(line), "%llu%s", (unsigned long long)size, last ? " LAST" : "");
	CHECK(len > 0 && (size_t)len < sizeof(line));
	CHECK(smtp_parse_bdat(line, (size_t)len, &size2, &last2) == 0);
	CHECK(size2 == size && last2 == last);
}

static void
fuzz_helo(const char *s, size_t n)
{
	if (!smtp_helo_arg_valid(s, n))
		return;
	CHECK(n > 0 && n <= SMTP_DOMAIN_MAX);
	CHECK(smtp_utf8_valid(s, n));
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		CHECK(c > ' ' && c != 0x7f);
	}
}

static void
fuzz_args(const char *s, size_t n)
{
	fuzz_mail(s, n);
	fuzz_rcpt(s, n);
	fuzz_bdat(s, n);
	fuzz_helo(s, n);
	CHECK(smtp_utf8_valid(s, n) == ref_utf8_valid((const unsigned char *)s, n));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *line = (const char *)data;
	struct smtp_command cmd;

	smtp_parse_command(line, size, &cmd);
	CHECK(cmd.verb < SMTP_VERB_COUNT);
	CHECK(cmd.arg != NULL && cmd.arg_len <= size);
	if (cmd.arg_len > 0) {
		CHECK(cmd.arg >= line && cmd.arg + cmd.arg_len <= line + size);
		CHECK(cmd.arg[0] != ' ');
		CHECK(cmd.arg[cmd.arg_len - 1] != ' ' && cmd.arg[cmd.arg_len - 1] != '\t');
	}
	fuzz_args(cmd.arg, cmd.arg_len);
	fuzz_args(line, size);
	return 0;
}
