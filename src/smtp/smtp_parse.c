/*
 * smtp_parse — SMTP command and address grammar (see smtp_parse.h).
 *
 * Every function reads only s[0..len): the input is not assumed to be
 * NUL-terminated and may contain NULs.  Character classes are ASCII-only
 * helpers rather than <ctype.h>, so the locale cannot change what is an
 * address.
 */
#include "smtp/smtp_parse.h"

#include <string.h>

#include "util/util_mem.h"

/* A bounded writer into a fixed array: an overflow is remembered, never silently cut. */
struct out {
	char *buf;
	size_t cap; /* includes the final NUL */
	size_t len;
	bool overflow;
};

static void
out_init(struct out *o, char *buf, size_t cap)
{
	o->buf = buf;
	o->cap = cap;
	o->len = 0;
	o->overflow = false;
}

static void
out_putc(struct out *o, char c)
{
	if (o->len + 1 >= o->cap) {
		o->overflow = true;
		return;
	}
	o->buf[o->len++] = c;
}

static void
out_put(struct out *o, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out_putc(o, s[i]);
}

/* NUL-terminates; false when something did not fit. */
static bool
out_end(struct out *o)
{
	o->buf[o->len] = '\0';
	return !o->overflow;
}

static bool
is_alpha(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool
is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool
is_alnum(unsigned char c)
{
	return is_alpha(c) || is_digit(c);
}

static bool
is_hex(unsigned char c)
{
	return is_digit(c) || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
}

static bool
is_wsp(unsigned char c)
{
	return c == ' ' || c == '\t';
}

/* atext (RFC 5321 4.1.2 via RFC 5322 3.2.3), plus UTF8-non-ascii (RFC 6531 3.3). */
static bool
is_atext(unsigned char c)
{
	return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL) || c >= 0x80;
}

/* Let-dig / Ldh-str octets of a sub-domain; non-ASCII octets form U-labels (RFC 6531 3.3). */
static bool
is_ldh(unsigned char c)
{
	return is_alnum(c) || c == '-' || c >= 0x80;
}

static unsigned char
ascii_lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

/* True when s[0..n) starts with lit, ignoring ASCII case. */
static bool
ci_prefix(const char *s, size_t n, const char *lit)
{
	size_t k = strlen(lit);

	if (n < k)
		return false;
	for (size_t i = 0; i < k; i++)
		if (ascii_lower((unsigned char)s[i]) != ascii_lower((unsigned char)lit[i]))
			return false;
	return true;
}

static bool
ci_equal(const char *s, size_t n, const char *lit)
{
	return n == strlen(lit) && ci_prefix(s, n, lit);
}

static size_t
trim_wsp(const char *s, size_t n)
{
	while (n > 0 && is_wsp((unsigned char)s[n - 1]))
		n--;
	return n;
}

/*
 * Decimal digits at s[*pos]: at least one.  A value past UINT64_MAX is
 * *value = UINT64_MAX with *overflow set; the digits are consumed all the same.
 */
static bool
scan_digits(const char *s, size_t n, size_t *pos, uint64_t *value, bool *overflow)
{
	size_t i = *pos;
	uint64_t v = 0;

	*overflow = false;
	if (i >= n || !is_digit((unsigned char)s[i]))
		return false;
	for (; i < n && is_digit((unsigned char)s[i]); i++) {
		unsigned d = (unsigned)(s[i] - '0');
		if (*overflow || v > (UINT64_MAX - d) / 10) {
			*overflow = true;
			v = UINT64_MAX;
		} else {
			v = v * 10 + d;
		}
	}
	*pos = i;
	*value = v;
	return true;
}

/* Decimal digits at s[*pos]: at least one, value must fit uint64_t. */
static bool
scan_u64(const char *s, size_t n, size_t *pos, uint64_t *value)
{
	bool overflow;

	return scan_digits(s, n, pos, value, &overflow) && !overflow;
}

bool
smtp_utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;

	while (i < len) {
		unsigned char c = p[i], lo = 0x80, hi = 0xbf;
		size_t need;

		if (c < 0x80) {
			i++;
			continue;
		}
		/* Unicode 3.9 table 3-7: the second-octet ranges exclude overlongs (E0, F0),
		 * surrogates (ED) and code points past U+10FFFF (F4). */
		if (c >= 0xc2 && c <= 0xdf) {
			need = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			need = 2;
			lo = c == 0xe0 ? 0xa0 : 0x80;
			hi = c == 0xed ? 0x9f : 0xbf;
		} else if (c >= 0xf0 && c <= 0xf4) {
			need = 3;
			lo = c == 0xf0 ? 0x90 : 0x80;
			hi = c == 0xf4 ? 0x8f : 0xbf;
		} else {
			return false;
		}
		if (len - i - 1 < need || p[i + 1] < lo || p[i + 1] > hi)
			return false;
		for (size_t k = 2; k <= need; k++)
			if (p[i + k] < 0x80 || p[i + k] > 0xbf)
				return false;
		i += need + 1;
	}
	return true;
}

/*
 * Domain = sub-domain *("." sub-domain), consumed from s[*pos] up to the first
 * octet that cannot continue it.  A label is not empty and neither starts nor
 * ends with '-', so "a..b", "-a.b" and a trailing dot are refused.
 */
static bool
scan_domain(const char *s, size_t n, size_t *pos)
{
	size_t i = *pos;

	for (;;) {
		size_t start = i;
		while (i < n && is_ldh((unsigned char)s[i]))
			i++;
		if (i == start || s[start] == '-' || s[i - 1] == '-')
			return false;
		if (i < n && s[i] == '.') {
			i++;
			continue;
		}
		break;
	}
	*pos = i;
	return true;
}

/* IPv4-address-literal = Snum 3("." Snum), Snum = 1*3DIGIT of value 0-255. */
static bool
ipv4_valid(const char *s, size_t n)
{
	size_t i = 0;

	for (int part = 0; part < 4; part++) {
		size_t start = i;
		unsigned v = 0;

		if (part > 0) {
			if (i >= n || s[i] != '.')
				return false;
			start = ++i;
		}
		while (i < n && is_digit((unsigned char)s[i]) && i - start < 3)
			v = v * 10 + (unsigned)(s[i++] - '0');
		if (i == start || v > 255)
			return false;
	}
	return i == n;
}

/*
 * IPv6-addr of RFC 5321 4.1.3: eight groups, or at most six around one "::"
 * (which stands for at least two), an embedded IPv4 counting as two.
 */
static bool
ipv6_valid(const char *s, size_t n)
{
	size_t i = 0, groups = 0;
	bool compressed = false;

	if (n >= 2 && s[0] == ':' && s[1] == ':') {
		compressed = true;
		i = 2;
	}
	while (i < n) {
		size_t start = i, end = i;

		while (end < n && s[end] != ':')
			end++;
		if (memchr(s + start, '.', end - start) != NULL) {
			/* An IPv4 tail must be the last thing. */
			if (end != n || !ipv4_valid(s + start, end - start))
				return false;
			groups += 2;
			break;
		}
		if (end == start || end - start > 4)
			return false;
		for (; i < end; i++)
			if (!is_hex((unsigned char)s[i]))
				return false;
		groups++;
		if (i == n)
			break;
		i++; /* ':' */
		if (i < n && s[i] == ':') {
			if (compressed)
				return false;
			compressed = true;
			i++;
		} else if (i == n) {
			return false;
		}
	}
	return compressed ? groups <= 6 : groups == 8;
}

/*
 * address-literal = "[" (IPv4 / "IPv6:" IPv6 / Standardized-tag ":" 1*dcontent) "]"
 * over the whole of s[0..n), brackets included.
 */
static bool
literal_valid(const char *s, size_t n)
{
	const char *c = s + 1, *colon;
	size_t cn;

	if (n < 3 || s[0] != '[' || s[n - 1] != ']')
		return false;
	cn = n - 2;
	if (ipv4_valid(c, cn))
		return true;
	colon = memchr(c, ':', cn);
	if (colon == NULL || colon == c || !is_alnum((unsigned char)colon[-1]))
		return false;
	for (const char *t = c; t < colon; t++)
		if (!is_alnum((unsigned char)*t) && *t != '-')
			return false;
	if (ci_equal(c, (size_t)(colon - c), "IPv6"))
		return ipv6_valid(colon + 1, cn - (size_t)(colon - c) - 1);
	if (colon + 1 == c + cn)
		return false;
	for (const char *t = colon + 1; t < c + cn; t++) {
		unsigned char d = (unsigned char)*t;
		/* dcontent = %d33-90 / %d94-126 */
		if (d < 33 || d > 126 || d == '[' || d == '\\' || d == ']')
			return false;
	}
	return true;
}

/* Dot-string = Atom *("." Atom): decides whether a local part may go out unquoted. */
static bool
dot_string_valid(const char *s, size_t n)
{
	bool need_atext = true;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '.' && !need_atext) {
			need_atext = true;
		} else if (is_atext((unsigned char)s[i])) {
			need_atext = false;
		} else {
			return false;
		}
	}
	return !need_atext;
}

/*
 * Local-part = Dot-string / Quoted-string at s[*pos]; the decoded form goes to
 * path->local.  Control octets and quoted-pairs outside %d32-126 are refused
 * (RFC 5321 4.1.2 qtextSMTP, quoted-pairSMTP).
 */
static enum smtp_arg_status
parse_local(const char *s, size_t n, size_t *pos, struct smtp_path *path)
{
	struct out o;
	size_t i = *pos, start = *pos;

	out_init(&o, path->local, sizeof(path->local));
	if (i < n && s[i] == '"') {
		path->quoted = true;
		for (i++;; i++) {
			unsigned char c;
			if (i >= n)
				return SMTP_ARG_PATH_SYNTAX;
			c = (unsigned char)s[i];
			if (c == '"')
				break;
			if (c == '\\') {
				if (++i >= n)
					return SMTP_ARG_PATH_SYNTAX;
				c = (unsigned char)s[i];
				if (c < 32 || c > 126)
					return SMTP_ARG_PATH_SYNTAX;
			} else if (c < 32 || c == 127) {
				return SMTP_ARG_PATH_SYNTAX;
			}
			out_putc(&o, (char)c);
		}
		i++;
	} else {
		while (i < n && (is_atext((unsigned char)s[i]) || s[i] == '.'))
			i++;
		if (!dot_string_valid(s + start, i - start))
			return SMTP_ARG_PATH_SYNTAX;
		out_put(&o, s + start, i - start);
	}
	/* The limit applies to the local part as written on the wire. */
	if (i - start > SMTP_LOCAL_MAX || !out_end(&o))
		return SMTP_ARG_PATH_TOO_LONG;
	path->local_len = o.len;
	*pos = i;
	return SMTP_ARG_OK;
}

/* Writes path->addr: the local part re-quoted only if it is not a Dot-string. */
static enum smtp_arg_status
build_addr(struct smtp_path *path)
{
	struct out o;

	out_init(&o, path->addr, sizeof(path->addr));
	if (dot_string_valid(path->local, path->local_len)) {
		out_put(&o, path->local, path->local_len);
	} else {
		out_putc(&o, '"');
		for (size_t i = 0; i < path->local_len; i++) {
			if (path->local[i] == '"' || path->local[i] == '\\')
				out_putc(&o, '\\');
			out_putc(&o, path->local[i]);
		}
		out_putc(&o, '"');
	}
	out_putc(&o, '@');
	out_put(&o, path->domain, path->domain_len);
	return out_end(&o) ? SMTP_ARG_OK : SMTP_ARG_PATH_TOO_LONG;
}

/* Mailbox = Local-part "@" ( Domain / address-literal ), exactly s[0..n). */
static enum smtp_arg_status
parse_mailbox(const char *s, size_t n, struct smtp_path *path)
{
	enum smtp_arg_status st;
	size_t i = 0, dstart, dlen;

	st = parse_local(s, n, &i, path);
	if (st != SMTP_ARG_OK)
		return st;
	if (i >= n || s[i] != '@')
		return SMTP_ARG_PATH_SYNTAX;
	dstart = ++i;
	dlen = n - dstart;
	if (dlen > SMTP_DOMAIN_MAX)
		return SMTP_ARG_PATH_TOO_LONG;
	if (i < n && s[i] == '[') {
		if (!literal_valid(s + dstart, dlen))
			return SMTP_ARG_PATH_SYNTAX;
	} else if (!scan_domain(s, n, &i) || i != n) {
		return SMTP_ARG_PATH_SYNTAX;
	}
	memcpy(path->domain, s + dstart, dlen);
	path->domain[dlen] = '\0';
	path->domain_len = dlen;
	path->is_utf8 =
	    util_has_8bit(path->local, path->local_len) || util_has_8bit(s + dstart, dlen);
	return build_addr(path);
}

static void
set_postmaster(struct smtp_path *path)
{
	static const char pm[] = "Postmaster";

	memcpy(path->addr, pm, sizeof(pm));
	memcpy(path->local, pm, sizeof(pm));
	path->local_len = sizeof(pm) - 1;
	path->is_postmaster = true;
}

/*
 * The text between '<' and '>': empty (null path), "Postmaster" (RCPT only),
 * or [A-d-l ":"] Mailbox where A-d-l = At-domain *("," At-domain) is checked
 * and dropped (RFC 5321 4.1.2, Appendix C).
 */
static enum smtp_arg_status
parse_path(const char *s, size_t n, bool is_rcpt, struct smtp_path *path)
{
	size_t i = 0;

	if (n == 0) {
		if (is_rcpt)
			return SMTP_ARG_PATH_SYNTAX;
		path->is_null = true;
		return SMTP_ARG_OK;
	}
	if (n > SMTP_PATH_MAX)
		return SMTP_ARG_PATH_TOO_LONG;
	if (!smtp_utf8_valid(s, n))
		return SMTP_ARG_PATH_SYNTAX;
	if (is_rcpt && ci_equal(s, n, "Postmaster")) {
		set_postmaster(path);
		return SMTP_ARG_OK;
	}
	if (s[0] == '@') {
		for (;;) {
			if (i >= n || s[i] != '@')
				return SMTP_ARG_PATH_SYNTAX;
			i++;
			if (!scan_domain(s, n, &i) || i >= n)
				return SMTP_ARG_PATH_SYNTAX;
			if (s[i++] == ':')
				break;
			if (s[i - 1] != ',')
				return SMTP_ARG_PATH_SYNTAX;
		}
	}
	return parse_mailbox(s + i, n - i, path);
}

/*
 * Offset of the '>' that closes a path whose text starts at s[0], or n if
 * there is none.  A '>' inside a quoted local part or an address literal does
 * not close the path; a quote opens a string only where a local part can
 * start, a bracket only right after '@'.
 */
static size_t
path_end(const char *s, size_t n)
{
	bool in_quote = false, in_literal = false;

	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (in_quote) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_quote = false;
		} else if (in_literal) {
			if (c == ']')
				in_literal = false;
		} else if (c == '"' && (i == 0 || s[i - 1] == ':')) {
			in_quote = true;
		} else if (c == '[' && i > 0 && s[i - 1] == '@') {
			in_literal = true;
		} else if (c == '>') {
			return i;
		}
	}
	return n;
}

/*
 * Common part of MAIL and RCPT: prefix ("FROM:"/"TO:"), optional spaces, a
 * <path>; then *rest is what follows the spaces after '>' (the parameters).
 */
static enum smtp_arg_status
parse_arg(const char *arg, size_t len, const char *prefix, bool is_rcpt, struct smtp_path *path,
	  const char **rest, size_t *rest_len)
{
	enum smtp_arg_status st;
	size_t i, end;

	len = trim_wsp(arg, len);
	if (!ci_prefix(arg, len, prefix))
		return SMTP_ARG_SYNTAX;
	i = strlen(prefix);
	while (i < len && arg[i] == ' ')
		i++;
	if (i >= len || arg[i] != '<')
		return SMTP_ARG_SYNTAX;
	i++;
	end = i + path_end(arg + i, len - i);
	if (end >= len)
		return SMTP_ARG_SYNTAX;
	st = parse_path(arg + i, end - i, is_rcpt, path);
	if (st != SMTP_ARG_OK)
		return st;
	i = end + 1;
	if (i < len && arg[i] != ' ')
		return SMTP_ARG_SYNTAX;
	while (i < len && arg[i] == ' ')
		i++;
	*rest = arg + i;
	*rest_len = len - i;
	return SMTP_ARG_OK;
}

/*
 * size-value = 1*20DIGIT (RFC 1870 6), and 20 digits reach past UINT64_MAX:
 * such a value is valid, only large: it is kept as UINT64_MAX, too big for any
 * smaller limit.  More digits are taken alike, as leading zeros are.
 */
static enum smtp_arg_status
apply_size(const char *v, size_t n, bool has_value, struct smtp_mail_params *p)
{
	size_t i = 0;
	bool overflow;

	if (!has_value || !scan_digits(v, n, &i, &p->size, &overflow) || i != n)
		return SMTP_ARG_PARAM_INVALID;
	p->has_size = true;
	return SMTP_ARG_OK;
}

static enum smtp_arg_status
apply_body(const char *v, size_t n, bool has_value, struct smtp_mail_params *p)
{
	/* BINARYMIME needs CHUNKING-only bodies we do not advertise (RFC 3030 3). */
	if (has_value && ci_equal(v, n, "7BIT"))
		p->body = SMTP_BODY_7BIT;
	else if (has_value && ci_equal(v, n, "8BITMIME"))
		p->body = SMTP_BODY_8BITMIME;
	else
		return SMTP_ARG_PARAM_INVALID;
	return SMTP_ARG_OK;
}

static enum smtp_arg_status
apply_smtputf8(const char *v, size_t n, bool has_value, struct smtp_mail_params *p)
{
	if (has_value)
		return SMTP_ARG_PARAM_INVALID;
	p->smtputf8 = true;
	return SMTP_ARG_OK;
}

/* xtext = *( xchar / "+" 2HEXDIG ), xchar = %d33-126 but "+" and "=" (RFC 3461 4) */
static bool
xtext_valid(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '+') {
			/* RFC 3461 asks for upper case digits; lower case harms nothing here. */
			if (n - i < 3 || !is_hex((unsigned char)s[i + 1]) ||
			    !is_hex((unsigned char)s[i + 2]))
				return false;
			i += 2;
		} else if (c < 33 || c > 126 || c == '=') {
			return false;
		}
	}
	return true;
}

/*
 * AUTH=<> or AUTH=xtext (RFC 4954 5): the mailbox the client says submitted
 * the message.  Checked, then dropped: petrel trusts no client's word for it
 * and goes on as for AUTH=<>, as RFC 4954 5 lets a server do.
 */
static enum smtp_arg_status
apply_auth(const char *v, size_t n, bool has_value, struct smtp_mail_params *p)
{
	if (!has_value || n > SMTP_AUTH_PARAM_MAX)
		return SMTP_ARG_PARAM_INVALID;
	if (n == 2 && v[0] == '<' && v[1] == '>')
		return SMTP_ARG_OK;
	return n > 0 && xtext_valid(v, n) ? SMTP_ARG_OK : SMTP_ARG_PARAM_INVALID;
}

struct param_def {
	const char *keyword;
	enum smtp_arg_status (*apply)(const char *value, size_t len, bool has_value,
				      struct smtp_mail_params *p);
	bool auth_only; /* known only where AUTH is offered */
};

static const struct param_def mail_params[] = {
    {.keyword = "SIZE", .apply = apply_size},
    {.keyword = "BODY", .apply = apply_body},
    {.keyword = "SMTPUTF8", .apply = apply_smtputf8},
    {.keyword = "AUTH", .apply = apply_auth, .auth_only = true},
};
#define MAIL_PARAM_COUNT (sizeof(mail_params) / sizeof(mail_params[0]))

/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
static bool
keyword_valid(const char *s, size_t n)
{
	if (n == 0 || !is_alnum((unsigned char)s[0]))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!is_alnum((unsigned char)s[i]) && s[i] != '-')
			return false;
	return true;
}

/* esmtp-value = 1*(%d33-60 / %d62-126), plus UTF8-non-ascii (RFC 6531 3.3) */
static bool
value_valid(const char *s, size_t n)
{
	if (n == 0 || !smtp_utf8_valid(s, n))
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 33 || c == '=' || c == 127)
			return false;
	}
	return true;
}

/*
 * Space-separated esmtp-params, checked left to right against defs (which
 * may be empty; an auth_only def counts only when auth_offered).  seen has
 * one flag per def, for refusing repeats.
 */
static enum smtp_arg_status
parse_params(const char *s, size_t n, const struct param_def *defs, size_t ndefs, bool auth_offered,
	     struct smtp_mail_params *p)
{
	bool seen[MAIL_PARAM_COUNT] = {false};
	size_t i = 0;

	while (i < n) {
		size_t start = i, klen, vlen, d;
		enum smtp_arg_status st;
		const char *eq;

		if (s[i] == ' ') {
			i++;
			continue;
		}
		while (i < n && s[i] != ' ')
			i++;
		eq = memchr(s + start, '=', i - start);
		klen = eq != NULL ? (size_t)(eq - (s + start)) : i - start;
		vlen = eq != NULL ? i - start - klen - 1 : 0;
		if (!keyword_valid(s + start, klen) || (eq != NULL && !value_valid(eq + 1, vlen)))
			return SMTP_ARG_PARAM_INVALID;
		for (d = 0; d < ndefs; d++)
			if (ci_equal(s + start, klen, defs[d].keyword) &&
			    (auth_offered || !defs[d].auth_only))
				break;
		if (d == ndefs)
			return SMTP_ARG_PARAM_UNKNOWN;
		if (seen[d])
			return SMTP_ARG_PARAM_INVALID;
		seen[d] = true;
		st = defs[d].apply(eq != NULL ? eq + 1 : "", vlen, eq != NULL, p);
		if (st != SMTP_ARG_OK)
			return st;
	}
	return SMTP_ARG_OK;
}

enum smtp_arg_status
smtp_parse_mail_from(const char *arg, size_t len, bool auth_offered, struct smtp_path *path,
		     struct smtp_mail_params *params)
{
	enum smtp_arg_status st;
	const char *rest = "";
	size_t rest_len = 0;

	memset(path, 0, sizeof(*path));
	memset(params, 0, sizeof(*params));
	params->body = SMTP_BODY_7BIT;
	st = parse_arg(arg, len, "FROM:", false, path, &rest, &rest_len);
	if (st == SMTP_ARG_OK)
		st = parse_params(rest, rest_len, mail_params, MAIL_PARAM_COUNT, auth_offered,
				  params);
	if (st != SMTP_ARG_OK) {
		/* A failed parse leaves nothing that could pass for an address. */
		memset(path, 0, sizeof(*path));
		memset(params, 0, sizeof(*params));
		params->body = SMTP_BODY_7BIT;
	}
	return st;
}

enum smtp_arg_status
smtp_parse_rcpt_to(const char *arg, size_t len, struct smtp_path *path)
{
	enum smtp_arg_status st;
	const char *rest = "";
	size_t rest_len = 0;

	memset(path, 0, sizeof(*path));
	st = parse_arg(arg, len, "TO:", true, path, &rest, &rest_len);
	if (st == SMTP_ARG_OK)
		st = parse_params(rest, rest_len, NULL, 0, false, NULL);
	if (st != SMTP_ARG_OK)
		memset(path, 0, sizeof(*path));
	return st;
}

int
smtp_parse_bdat(const char *arg, size_t len, uint64_t *size, bool *last)
{
	uint64_t v;
	size_t i = 0;

	*size = 0;
	*last = false;
	len = trim_wsp(arg, len);
	if (!scan_u64(arg, len, &i, &v))
		return -1;
	if (i < len) {
		if (arg[i] != ' ')
			return -1;
		while (i < len && arg[i] == ' ')
			i++;
		if (!ci_equal(arg + i, len - i, "LAST"))
			return -1;
		*last = true;
	}
	*size = v;
	return 0;
}

bool
smtp_helo_arg_valid(const char *arg, size_t len)
{
	if (len == 0 || len > SMTP_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)arg[i];
		if (c <= ' ' || c == 127)
			return false;
	}
	return smtp_utf8_valid(arg, len);
}

static const char *const verb_names[SMTP_VERB_COUNT] = {
    [SMTP_VERB_UNKNOWN] = NULL, [SMTP_VERB_HELO] = "HELO",	   [SMTP_VERB_EHLO] = "EHLO",
    [SMTP_VERB_MAIL] = "MAIL",	[SMTP_VERB_RCPT] = "RCPT",	   [SMTP_VERB_DATA] = "DATA",
    [SMTP_VERB_BDAT] = "BDAT",	[SMTP_VERB_RSET] = "RSET",	   [SMTP_VERB_NOOP] = "NOOP",
    [SMTP_VERB_VRFY] = "VRFY",	[SMTP_VERB_EXPN] = "EXPN",	   [SMTP_VERB_HELP] = "HELP",
    [SMTP_VERB_QUIT] = "QUIT",	[SMTP_VERB_STARTTLS] = "STARTTLS", [SMTP_VERB_AUTH] = "AUTH",
};

void
smtp_parse_command(const char *line, size_t len, struct smtp_command *out)
{
	size_t word = 0, i;

	len = line == NULL ? 0 : trim_wsp(line, len);
	while (word < len && line[word] != ' ')
		word++;
	out->verb = SMTP_VERB_UNKNOWN;
	for (int v = SMTP_VERB_UNKNOWN + 1; v < SMTP_VERB_COUNT; v++) {
		if (ci_equal(line, word, verb_names[v])) {
			out->verb = (enum smtp_verb)v;
			break;
		}
	}
	i = word;
	while (i < len && line[i] == ' ')
		i++;
	out->arg = i < len ? line + i : "";
	out->arg_len = len - i;
}
