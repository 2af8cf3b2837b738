#include "conf/conf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/util_idna.h"
#include "util/util_log.h"
#include "util/util_mem.h"

/* A config file is small; anything bigger is a mistake (or an attack on check-config). */
#define CONF_FILE_MAX (1024 * 1024)
#define CONF_LINE_MAX 4096
/* Room for an escaped, capped excerpt of a key or value in an error message. */
#define CONF_ESC_MAX	    96
#define CONF_WHY_MAX	    256
#define CONF_DELIMS	    "+-_=."
#define CONF_DNS_PORT	    53
#define CONF_USER_MAX	    32
#define CONF_RECIPIENTS_MAX 100000

enum conf_key_id {
	KEY_HOSTNAME,
	KEY_LISTEN_SMTP,
	KEY_LISTEN_SUBMISSION,
	KEY_LISTEN_SUBMISSIONS,
	KEY_LOCAL_DOMAINS,
	KEY_MAIL_ROOT,
	KEY_SPOOL_DIR,
	KEY_USERS_FILE,
	KEY_ALIASES_FILE,
	KEY_RECIPIENT_DELIMITER,
	KEY_RELAY_NETWORKS,
	KEY_DNS_RESOLVER,
	KEY_SMTP_PORT,
	KEY_RELAYHOST,
	KEY_TLS_CERT,
	KEY_TLS_KEY,
	KEY_MAX_MESSAGE_SIZE,
	KEY_MAX_RECIPIENTS,
	KEY_MAX_CONNECTIONS,
	KEY_MAX_CONNECTIONS_PER_IP,
	KEY_SMTP_TIMEOUT,
	KEY_QUEUE_LIFETIME,
	KEY_RETRY_MIN,
	KEY_RETRY_MAX,
	KEY_USER,
	KEY_COUNT
};

struct conf_key;
/* Stores val (trimmed, NUL-terminated, writable) into c; on error writes the reason to why. */
typedef int (*conf_setter)(struct conf *c, const struct conf_key *k, char *val, char *why,
			   size_t why_cap);

struct conf_key {
	const char *name;
	conf_setter set;
	size_t off;	/* offsetof() the field in struct conf */
	size_t len_off; /* offsetof() the length field, lists only */
	uint64_t min;	/* numbers, sizes, durations: inclusive bounds */
	uint64_t max;
	bool empty_ok;	 /* "" (and "none" for lists) means an empty list or string */
	const char *def; /* default as config text; NULL: unset (hostname is computed) */
};

struct conf_parser {
	const char *name; /* borrowed: file name used in messages */
	char *err;	  /* borrowed: caller's error buffer */
	size_t err_cap;
	unsigned line_of[KEY_COUNT]; /* line that set each key, 0 = not set */
};

/* Pointer to the field of c that key k describes. */
#define CONF_FIELD(c, k, type) ((type *)(void *)((char *)(c) + (k)->off))
#define CONF_LEN_FIELD(c, k)   ((size_t *)(void *)((char *)(c) + (k)->len_off))

/* ---- small helpers ---------------------------------------------------- */

static bool
is_digit(char ch)
{
	return ch >= '0' && ch <= '9';
}

static bool
is_alnum(char ch)
{
	return is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

static char
lower(char ch)
{
	return (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
}

static bool
is_space(char ch)
{
	return ch == ' ' || ch == '\t';
}

/* Trims blanks at both ends of s in place; returns the new start. */
static char *
trim(char *s)
{
	size_t n;

	while (is_space(*s))
		s++;
	n = strlen(s);
	while (n > 0 && is_space(s[n - 1]))
		s[--n] = '\0';
	return s;
}

/* Escaped, length-capped copy of s for an error message. */
static const char *
esc(char dst[CONF_ESC_MAX], const char *s)
{
	return util_log_escape(dst, CONF_ESC_MAX, s, strlen(s));
}

static int
bad(char *why, size_t why_cap, const char *what, const char *val)
{
	char e[CONF_ESC_MAX];

	snprintf(why, why_cap, "bad %s '%s'", what, esc(e, val));
	return -1;
}

/*
 * Digits only (no sign, no blanks: strtoull would accept both), with an
 * overflow check.  *end points past the digits.
 */
static int
parse_u64(const char *s, uint64_t *out, const char **end)
{
	uint64_t n = 0;

	if (!is_digit(*s))
		return -1;
	for (; is_digit(*s); s++) {
		unsigned d = (unsigned)(*s - '0');
		if (n > (UINT64_MAX - d) / 10)
			return -1;
		n = n * 10 + d;
	}
	*out = n;
	*end = s;
	return 0;
}

static int
parse_port(const char *s, uint16_t *out)
{
	uint64_t n;
	const char *end;

	if (parse_u64(s, &n, &end) != 0 || *end != '\0' || n < 1 || n > 65535)
		return -1;
	*out = (uint16_t)n;
	return 0;
}

/*
 * A DNS name of letters, digits and hyphens (RFC 1123 2.1), without a
 * trailing dot.  An all-numeric last label is refused (RFC 3696 2) so that a
 * mistyped address such as "10.0.0" is not taken for a name.
 */
static bool
is_dns_name(const char *s, size_t len)
{
	size_t label = 0;
	bool numeric = true;

	if (len == 0 || len > 253)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
			numeric = true;
			continue;
		}
		if (!is_alnum(s[i]) && s[i] != '-')
			return false;
		if (s[i] == '-' && label == 0)
			return false;
		if (!is_digit(s[i]))
			numeric = false;
		if (++label > 63)
			return false;
	}
	return label > 0 && s[len - 1] != '-' && !numeric;
}

/* Length of s without one trailing dot ("example.org." names the same domain). */
static size_t
len_without_dot(const char *s, size_t len)
{
	return (len > 0 && s[len - 1] == '.') ? len - 1 : len;
}

static bool
is_ipv4(const char *s)
{
	struct in_addr a;

	return inet_pton(AF_INET, s, &a) == 1;
}

static bool
is_ipv6(const char *s)
{
	struct in6_addr a;

	return inet_pton(AF_INET6, s, &a) == 1;
}

/*
 * Splits "host", "host:port" or "[host]" / "[host]:port" into host (copied
 * into host_buf) and port (NULL when absent, else borrowed from s).  An
 * unbracketed text with several colons is returned whole as the host with
 * *multi_colon set: an IPv6 address whose port cannot be told apart.
 */
static int
split_host_port(const char *s, char *host_buf, size_t host_cap, const char **port, bool *bracketed,
		bool *multi_colon)
{
	const char *host = s, *colon;
	size_t host_len;

	*port = NULL;
	*bracketed = *multi_colon = false;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (close == NULL || (close[1] != '\0' && close[1] != ':'))
			return -1;
		host = s + 1;
		host_len = (size_t)(close - host);
		if (close[1] == ':')
			*port = close + 2;
		*bracketed = true;
	} else if ((colon = strchr(s, ':')) != NULL && strchr(colon + 1, ':') == NULL) {
		host_len = (size_t)(colon - s);
		*port = colon + 1;
	} else {
		host_len = strlen(s);
		*multi_colon = colon != NULL;
	}
	if (host_len == 0 || host_len >= host_cap)
		return -1;
	memcpy(host_buf, host, host_len);
	host_buf[host_len] = '\0';
	return 0;
}

/* ---- exported value parsers ------------------------------------------- */

static int
parse_scaled(const char *s, const char *units, const uint64_t *mult, uint64_t *out)
{
	uint64_t n, m = 1;
	const char *end, *u;

	if (parse_u64(s, &n, &end) != 0)
		return -1;
	if (*end != '\0') {
		u = strchr(units, lower(*end));
		if (u == NULL || end[1] != '\0')
			return -1;
		m = mult[u - units];
	}
	if (n > UINT64_MAX / m)
		return -1;
	*out = n * m;
	return 0;
}

int
conf_parse_size(const char *s, uint64_t *out)
{
	static const uint64_t mult[] = {1024, 1024 * 1024, 1024 * 1024 * 1024};

	return parse_scaled(s, "kmg", mult, out);
}

int
conf_parse_duration(const char *s, unsigned *out_s)
{
	static const uint64_t mult[] = {1, 60, 3600, 86400};
	uint64_t n;

	if (parse_scaled(s, "smhd", mult, &n) != 0 || n > UINT_MAX)
		return -1;
	*out_s = (unsigned)n;
	return 0;
}

enum cidr_result { CIDR_OK, CIDR_BAD, CIDR_HOST_BITS };

static enum cidr_result
parse_cidr(const char *s, struct conf_cidr *out)
{
	char addr[INET6_ADDRSTRLEN + 2];
	const char *slash = strchr(s, '/');
	size_t addr_len = slash != NULL ? (size_t)(slash - s) : strlen(s);
	struct conf_cidr r = {0};
	unsigned bits;

	if (addr_len == 0 || addr_len >= sizeof(addr))
		return CIDR_BAD;
	memcpy(addr, s, addr_len);
	addr[addr_len] = '\0';
	/* Postfix writes IPv6 networks as [2001:db8::]/32; accept that too. */
	if (addr[0] == '[') {
		if (addr_len < 3 || addr[addr_len - 1] != ']')
			return CIDR_BAD;
		addr[addr_len - 1] = '\0';
		if (inet_pton(AF_INET6, addr + 1, r.addr) != 1)
			return CIDR_BAD;
		r.family = AF_INET6;
	} else if (inet_pton(AF_INET, addr, r.addr) == 1) {
		r.family = AF_INET;
	} else if (inet_pton(AF_INET6, addr, r.addr) == 1) {
		r.family = AF_INET6;
	} else {
		return CIDR_BAD;
	}
	bits = r.family == AF_INET ? 32 : 128;
	r.prefix = bits;
	if (slash != NULL) {
		uint64_t n;
		const char *end;
		if (parse_u64(slash + 1, &n, &end) != 0 || *end != '\0' || n > bits)
			return CIDR_BAD;
		r.prefix = (unsigned)n;
	}
	for (unsigned i = r.prefix; i < bits; i++)
		if (r.addr[i / 8] & (0x80u >> (i % 8)))
			return CIDR_HOST_BITS;
	*out = r;
	return CIDR_OK;
}

int
conf_parse_cidr(const char *s, struct conf_cidr *out)
{
	return parse_cidr(s, out) == CIDR_OK ? 0 : -1;
}

int
conf_parse_listen(const char *s, struct conf_listen *out)
{
	char host[256];
	const char *port;
	bool bracketed, multi_colon;
	uint16_t p;

	if (split_host_port(s, host, sizeof(host), &port, &bracketed, &multi_colon) != 0 ||
	    multi_colon || port == NULL || parse_port(port, &p) != 0)
		return -1;
	if (bracketed ? !is_ipv6(host) : !is_ipv4(host) && !is_dns_name(host, strlen(host)))
		return -1;
	out->host = xstrdup(host);
	out->port = p;
	return 0;
}

/* ---- setters, one per kind of value ----------------------------------- */

static int
set_string(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	*CONF_FIELD(c, k, char *) = xstrdup(val);
	return 0;
}

static int
set_hostname(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	size_t len = len_without_dot(val, strlen(val));

	if (!is_dns_name(val, len))
		return bad(why, why_cap, "host name", val);
	*CONF_FIELD(c, k, char *) = xstrndup(val, len);
	return 0;
}

static int
set_delimiter(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	if (val[strspn(val, CONF_DELIMS)] != '\0') {
		char e[CONF_ESC_MAX];
		snprintf(why, why_cap, "bad delimiter '%s' (allowed characters: %s)", esc(e, val),
			 CONF_DELIMS);
		return -1;
	}
	*CONF_FIELD(c, k, char *) = xstrdup(val);
	return 0;
}

/* POSIX portable user names (IEEE 1003.1 3.437), as useradd accepts them. */
static int
set_user(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	size_t len = strlen(val);

	if (len > CONF_USER_MAX || val[0] == '-')
		return bad(why, why_cap, "user name", val);
	for (size_t i = 0; i < len; i++)
		if (!is_alnum(val[i]) && strchr("._-", val[i]) == NULL)
			return bad(why, why_cap, "user name", val);
	*CONF_FIELD(c, k, char *) = xstrdup(val);
	return 0;
}

/*
 * Returns the next trimmed item of the comma list at *cursor (cut in place),
 * or NULL when the list is done.  An empty item comes back as "".
 */
static char *
list_next(char **cursor)
{
	char *item = *cursor, *comma;

	if (item == NULL)
		return NULL;
	comma = strchr(item, ',');
	if (comma != NULL) {
		*comma = '\0';
		*cursor = comma + 1;
	} else {
		*cursor = NULL;
	}
	return trim(item);
}

/*
 * Common start of every list setter: counts the items and says whether the
 * list is empty ("" or "none" where the key allows it).
 */
static size_t
list_count(const struct conf_key *k, const char *val)
{
	size_t n = 1;

	if (k->empty_ok && (val[0] == '\0' || strcasecmp(val, "none") == 0))
		return 0;
	for (const char *p = val; (p = strchr(p, ',')) != NULL; p++)
		n++;
	return n;
}

static int
empty_item(char *why, size_t why_cap)
{
	snprintf(why, why_cap, "empty list item");
	return -1;
}

/*
 * The list setters attach the array to c before filling it and bump the
 * length per item, so conf_free() releases a half-built list after an error.
 */
static int
set_listen(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	size_t n = list_count(k, val), *len = CONF_LEN_FIELD(c, k);
	struct conf_listen *list;
	char *item, *cursor = val;

	if (n == 0)
		return 0;
	list = xcalloc(n, sizeof(*list));
	*CONF_FIELD(c, k, struct conf_listen *) = list;
	while ((item = list_next(&cursor)) != NULL) {
		if (item[0] == '\0')
			return empty_item(why, why_cap);
		if (conf_parse_listen(item, &list[*len]) != 0) {
			char e[CONF_ESC_MAX];
			snprintf(why, why_cap,
				 "bad listen address '%s' (want addr:port or [addr]:port)",
				 esc(e, item));
			return -1;
		}
		(*len)++;
	}
	return 0;
}

static int
set_domains(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	size_t n = list_count(k, val), *len = CONF_LEN_FIELD(c, k);
	char **list, *item, *cursor = val;

	/* "none" is a valid label, but whoever writes it means "no domains": say so. */
	if (strcasecmp(val, "none") == 0) {
		snprintf(why, why_cap, "at least one domain is required");
		return -1;
	}
	list = xcalloc(n, sizeof(*list));
	*CONF_FIELD(c, k, char **) = list;
	while ((item = list_next(&cursor)) != NULL) {
		size_t item_len = len_without_dot(item, strlen(item));
		char ascii[UTIL_IDNA_MAX + 1];
		long ascii_len;

		if (item[0] == '\0')
			return empty_item(why, why_cap);
		/* A Unicode name is kept in its A-label form, as DNS and the queue know it. */
		ascii_len = util_idna_to_ascii(item, item_len, ascii, sizeof(ascii), NULL);
		if (ascii_len < 0 || !is_dns_name(ascii, (size_t)ascii_len))
			return bad(why, why_cap, "domain name", item);
		list[*len] = xstrndup(ascii, (size_t)ascii_len);
		for (char *p = list[*len]; *p != '\0'; p++)
			*p = lower(*p);
		(*len)++;
	}
	return 0;
}

static int
set_cidrs(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	size_t n = list_count(k, val), *len = CONF_LEN_FIELD(c, k);
	struct conf_cidr *list;
	char *item, *cursor = val;

	if (n == 0)
		return 0;
	list = xcalloc(n, sizeof(*list));
	*CONF_FIELD(c, k, struct conf_cidr *) = list;
	while ((item = list_next(&cursor)) != NULL) {
		char e[CONF_ESC_MAX];
		if (item[0] == '\0')
			return empty_item(why, why_cap);
		switch (parse_cidr(item, &list[*len])) {
		case CIDR_OK:
			break;
		case CIDR_BAD:
			return bad(why, why_cap, "network", item);
		case CIDR_HOST_BITS:
			snprintf(why, why_cap, "network '%s' has host bits set", esc(e, item));
			return -1;
		}
		(*len)++;
	}
	return 0;
}

/* Numeric address only: the resolver must not need a resolver to be found. */
static int
set_resolver(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	char host[INET6_ADDRSTRLEN + 1], *out;
	const char *port;
	bool bracketed, ok, multi_colon;
	uint16_t p = CONF_DNS_PORT;
	size_t cap;

	if (split_host_port(val, host, sizeof(host), &port, &bracketed, &multi_colon) != 0)
		return bad(why, why_cap, "resolver address", val);
	ok = (bracketed || multi_colon) ? is_ipv6(host) : is_ipv4(host);
	if (!ok || (port != NULL && parse_port(port, &p) != 0))
		return bad(why, why_cap, "resolver address", val);
	cap = strlen(host) + sizeof("[]:65535");
	out = xmalloc(cap);
	if (bracketed || multi_colon)
		snprintf(out, cap, "[%s]:%u", host, (unsigned)p);
	else
		snprintf(out, cap, "%s:%u", host, (unsigned)p);
	*CONF_FIELD(c, k, char *) = out;
	return 0;
}

/* Postfix syntax: "[host]" means no MX lookup, so brackets may hold a name too. */
static int
set_relayhost(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	char host[256];
	const char *port;
	bool bracketed, multi_colon, ok;
	uint16_t p;

	if (split_host_port(val, host, sizeof(host), &port, &bracketed, &multi_colon) != 0 ||
	    multi_colon || (port != NULL && parse_port(port, &p) != 0))
		return bad(why, why_cap, "relay host", val);
	ok = is_ipv4(host) || is_dns_name(host, len_without_dot(host, strlen(host))) ||
	     (bracketed && is_ipv6(host));
	if (!ok)
		return bad(why, why_cap, "relay host", val);
	*CONF_FIELD(c, k, char *) = xstrdup(val);
	return 0;
}

static int
set_port(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	if (parse_port(val, CONF_FIELD(c, k, uint16_t)) != 0)
		return bad(why, why_cap, "port", val);
	return 0;
}

/* type_max: the largest value the field holds; a key bounded only by it names just its minimum. */
static int
out_of_range(char *why, size_t why_cap, const struct conf_key *k, const char *val, const char *unit,
	     uint64_t type_max)
{
	char e[CONF_ESC_MAX];

	if (k->max == type_max)
		snprintf(why, why_cap, "'%s' is below the minimum %llu%s", esc(e, val),
			 (unsigned long long)k->min, unit);
	else
		snprintf(why, why_cap, "'%s' is out of range %llu%s..%llu%s", esc(e, val),
			 (unsigned long long)k->min, unit, (unsigned long long)k->max, unit);
	return -1;
}

static int
set_size(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	uint64_t n;

	if (conf_parse_size(val, &n) != 0)
		return bad(why, why_cap, "size", val);
	if (n < k->min || n > k->max)
		return out_of_range(why, why_cap, k, val, " bytes", UINT64_MAX);
	*CONF_FIELD(c, k, uint64_t) = n;
	return 0;
}

static int
set_count(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	uint64_t n;
	const char *end;

	if (parse_u64(val, &n, &end) != 0 || *end != '\0')
		return bad(why, why_cap, "number", val);
	if (n < k->min || n > k->max || n > SIZE_MAX)
		return out_of_range(why, why_cap, k, val, "", UINT64_MAX);
	*CONF_FIELD(c, k, size_t) = (size_t)n;
	return 0;
}

static int
set_duration(struct conf *c, const struct conf_key *k, char *val, char *why, size_t why_cap)
{
	unsigned n;

	if (conf_parse_duration(val, &n) != 0)
		return bad(why, why_cap, "duration", val);
	if (n < k->min || n > k->max)
		return out_of_range(why, why_cap, k, val, "s", UINT_MAX);
	*CONF_FIELD(c, k, unsigned) = n;
	return 0;
}

/* ---- the key table: the one place that knows key names ---------------- */

#define AT(field) .off = offsetof(struct conf, field)
#define LIST(field)                                                                                \
	.off = offsetof(struct conf, field), .len_off = offsetof(struct conf, field##_len)
#define RANGE(lo, hi) .min = (lo), .max = (hi)

static const struct conf_key conf_keys[KEY_COUNT] = {
    [KEY_HOSTNAME] = {"hostname", set_hostname, AT(hostname)},
    [KEY_LISTEN_SMTP] = {"listen_smtp", set_listen, LIST(listen_smtp), .def = "127.0.0.1:2525"},
    [KEY_LISTEN_SUBMISSION] = {"listen_submission", set_listen, LIST(listen_submission),
			       .empty_ok = true},
    [KEY_LISTEN_SUBMISSIONS] = {"listen_submissions", set_listen, LIST(listen_submissions),
				.empty_ok = true},
    [KEY_LOCAL_DOMAINS] = {"local_domains", set_domains, LIST(local_domains), .def = "localhost"},
    [KEY_MAIL_ROOT] = {"mail_root", set_string, AT(mail_root), .def = "./var/mail"},
    [KEY_SPOOL_DIR] = {"spool_dir", set_string, AT(spool_dir), .def = "./var/spool"},
    [KEY_USERS_FILE] = {"users_file", set_string, AT(users_file)},
    [KEY_ALIASES_FILE] = {"aliases_file", set_string, AT(aliases_file)},
    [KEY_RECIPIENT_DELIMITER] = {"recipient_delimiter", set_delimiter, AT(recipient_delimiter),
				 .empty_ok = true, .def = "+"},
    [KEY_RELAY_NETWORKS] = {"relay_networks", set_cidrs, LIST(relay_networks), .empty_ok = true,
			    .def = "127.0.0.0/8"},
    [KEY_DNS_RESOLVER] = {"dns_resolver", set_resolver, AT(dns_resolver)},
    [KEY_SMTP_PORT] = {"smtp_port", set_port, AT(smtp_port), .def = "25"},
    [KEY_RELAYHOST] = {"relayhost", set_relayhost, AT(relayhost)},
    [KEY_TLS_CERT] = {"tls_cert", set_string, AT(tls_cert)},
    [KEY_TLS_KEY] = {"tls_key", set_string, AT(tls_key)},
    [KEY_MAX_MESSAGE_SIZE] = {"max_message_size", set_size, AT(max_message_size),
			      RANGE(1024, UINT64_MAX), .def = "25M"},
    [KEY_MAX_RECIPIENTS] = {"max_recipients", set_count, AT(max_recipients),
			    RANGE(1, CONF_RECIPIENTS_MAX), .def = "100"},
    [KEY_MAX_CONNECTIONS] = {"max_connections", set_count, AT(max_connections),
			     RANGE(1, UINT64_MAX), .def = "10000"},
    [KEY_MAX_CONNECTIONS_PER_IP] = {"max_connections_per_ip", set_count, AT(max_connections_per_ip),
				    RANGE(1, UINT64_MAX), .def = "50"},
    [KEY_SMTP_TIMEOUT] = {"smtp_timeout", set_duration, AT(smtp_timeout_s), RANGE(1, UINT_MAX),
			  .def = "300s"},
    /* 0 is allowed: bounce at the first failure, as Postfix's maximal_queue_lifetime = 0. */
    [KEY_QUEUE_LIFETIME] = {"queue_lifetime", set_duration, AT(queue_lifetime_s),
			    RANGE(0, UINT_MAX), .def = "5d"},
    [KEY_RETRY_MIN] = {"retry_min", set_duration, AT(retry_min_s), RANGE(1, UINT_MAX),
		       .def = "60s"},
    [KEY_RETRY_MAX] = {"retry_max", set_duration, AT(retry_max_s), RANGE(1, UINT_MAX), .def = "1h"},
    [KEY_USER] = {"user", set_user, AT(user)},
};

/* ---- the file format ---------------------------------------------------- */

static void fail(struct conf_parser *p, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes "NAME:LINE: message" (or "NAME: message" for line 0) into the caller's buffer. */
static void
fail(struct conf_parser *p, unsigned line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (p->err == NULL || p->err_cap == 0)
		return;
	if (line > 0)
		n = snprintf(p->err, p->err_cap, "%s:%u: ", p->name, line);
	else
		n = snprintf(p->err, p->err_cap, "%s: ", p->name);
	/* A message cut short by a small buffer still starts with where the error is. */
	if (n < 0 || (size_t)n >= p->err_cap)
		return;
	va_start(ap, fmt);
	vsnprintf(p->err + n, p->err_cap - (size_t)n, fmt, ap);
	va_end(ap);
}

static const struct conf_key *
find_key(const char *name)
{
	for (size_t i = 0; i < KEY_COUNT; i++)
		if (strcmp(conf_keys[i].name, name) == 0)
			return &conf_keys[i];
	return NULL;
}

/* One line, NUL-terminated and without its line end, known to hold no control bytes. */
static int
parse_line(struct conf_parser *p, struct conf *c, unsigned line, char *text)
{
	char *hash = strchr(text, '#'), *eq, *key, *val, why[CONF_WHY_MAX];
	char e[CONF_ESC_MAX];
	const struct conf_key *k;
	size_t id;

	if (hash != NULL)
		*hash = '\0';
	text = trim(text);
	if (text[0] == '\0')
		return 0;
	eq = strchr(text, '=');
	if (eq == NULL) {
		fail(p, line, "missing '=' in '%s' (want key = value)", esc(e, text));
		return -1;
	}
	*eq = '\0';
	key = trim(text);
	val = trim(eq + 1);
	if (key[0] == '\0') {
		fail(p, line, "missing key before '='");
		return -1;
	}
	k = find_key(key);
	if (k == NULL) {
		fail(p, line, "unknown key '%s'", esc(e, key));
		return -1;
	}
	id = (size_t)(k - conf_keys);
	if (p->line_of[id] != 0) {
		fail(p, line, "duplicate key '%s' (first set on line %u)", k->name, p->line_of[id]);
		return -1;
	}
	p->line_of[id] = line;
	if (val[0] == '\0' && !k->empty_ok) {
		fail(p, line, "%s: empty value", k->name);
		return -1;
	}
	if (k->set(c, k, val, why, sizeof(why)) != 0) {
		fail(p, line, "%s: %s", k->name, why);
		return -1;
	}
	return 0;
}

/*
 * Splits text into lines and checks the bytes before the values are seen:
 * NUL would silently cut a value short, other control bytes are not text.
 */
static int
parse_text(struct conf_parser *p, struct conf *c, const char *text, size_t len)
{
	char buf[CONF_LINE_MAX + 1];
	size_t pos = 0;

	for (unsigned line = 1; pos < len; line++) {
		const char *start = text + pos, *nl = memchr(start, '\n', len - pos);
		size_t n = nl != NULL ? (size_t)(nl - start) : len - pos;

		pos += n + (nl != NULL);
		if (n > 0 && start[n - 1] == '\r')
			n--;
		if (n > CONF_LINE_MAX) {
			fail(p, line, "line too long (more than %d characters)", CONF_LINE_MAX);
			return -1;
		}
		for (size_t i = 0; i < n; i++) {
			unsigned char ch = (unsigned char)start[i];
			if (ch == '\0' || ((ch < 0x20 || ch == 0x7f) && ch != '\t')) {
				if (ch == '\0')
					fail(p, line, "NUL byte in line");
				else
					fail(p, line, "control character 0x%02x in line", ch);
				return -1;
			}
		}
		memcpy(buf, start, n);
		buf[n] = '\0';
		if (parse_line(p, c, line, buf) != 0)
			return -1;
	}
	return 0;
}

static void
set_default_hostname(struct conf *c)
{
	char name[256];

	if (gethostname(name, sizeof(name)) != 0 || name[0] == '\0')
		snprintf(name, sizeof(name), "localhost");
	name[sizeof(name) - 1] = '\0';
	c->hostname = xstrdup(name);
}

/* Gives every key the file did not set its default, through the same setters. */
static void
fill_defaults(const struct conf_parser *p, struct conf *c)
{
	for (size_t i = 0; i < KEY_COUNT; i++) {
		const struct conf_key *k = &conf_keys[i];
		char val[64], why[CONF_WHY_MAX];

		if (p->line_of[i] != 0 || k->def == NULL)
			continue;
		snprintf(val, sizeof(val), "%s", k->def);
		/* The defaults are constants of this file: failing here is our bug. */
		if (k->set(c, k, val, why, sizeof(why)) != 0)
			abort();
	}
	if (c->hostname == NULL)
		set_default_hostname(c);
}

/* Rules that span keys, checked once all keys (and defaults) are in. */
static int
check_cross(struct conf_parser *p, const struct conf *c)
{
	const unsigned *at = p->line_of;
	char e[CONF_ESC_MAX];

	if ((c->tls_cert == NULL) != (c->tls_key == NULL)) {
		bool has_cert = c->tls_cert != NULL;
		fail(p, at[has_cert ? KEY_TLS_CERT : KEY_TLS_KEY], "%s '%s' is set but %s is not",
		     has_cert ? "tls_cert" : "tls_key", esc(e, has_cert ? c->tls_cert : c->tls_key),
		     has_cert ? "tls_key" : "tls_cert");
		return -1;
	}
	/*
	 * Submission is AUTH before MAIL, and AUTH only under TLS: without a
	 * certificate its listeners could take no mail (and implicit TLS none at
	 * all).  Checked here, so that a reload that drops the certificate is
	 * refused like a start would be.
	 */
	if (c->tls_cert == NULL &&
	    (c->listen_submission_len > 0 || c->listen_submissions_len > 0)) {
		bool implicit = c->listen_submissions_len > 0;
		fail(p, at[implicit ? KEY_LISTEN_SUBMISSIONS : KEY_LISTEN_SUBMISSION],
		     "%s needs tls_cert and tls_key",
		     implicit ? "listen_submissions" : "listen_submission");
		return -1;
	}
	/* Nor could they without users to authenticate: MAIL would get 530 for ever. */
	if (c->users_file == NULL &&
	    (c->listen_submission_len > 0 || c->listen_submissions_len > 0)) {
		bool implicit = c->listen_submissions_len > 0;
		fail(p, at[implicit ? KEY_LISTEN_SUBMISSIONS : KEY_LISTEN_SUBMISSION],
		     "%s needs users_file (AUTH comes before MAIL there)",
		     implicit ? "listen_submissions" : "listen_submission");
		return -1;
	}
	if (c->retry_min_s > c->retry_max_s) {
		unsigned line =
		    at[KEY_RETRY_MIN] > at[KEY_RETRY_MAX] ? at[KEY_RETRY_MIN] : at[KEY_RETRY_MAX];
		fail(p, line, "retry_min (%us) is greater than retry_max (%us)", c->retry_min_s,
		     c->retry_max_s);
		return -1;
	}
	return 0;
}

struct conf *
conf_parse(const char *name, const char *text, size_t len, char *err, size_t err_cap)
{
	struct conf_parser p = {.name = name, .err = err, .err_cap = err_cap};
	struct conf *c;

	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	if (len > CONF_FILE_MAX) {
		fail(&p, 0, "file too large (more than %d bytes)", CONF_FILE_MAX);
		return NULL;
	}
	c = xcalloc(1, sizeof(*c));
	if (parse_text(&p, c, text, len) != 0) {
		conf_free(c);
		return NULL;
	}
	fill_defaults(&p, c);
	if (check_cross(&p, c) != 0) {
		conf_free(c);
		return NULL;
	}
	return c;
}

struct conf *
conf_default(void)
{
	return conf_parse("(default)", "", 0, NULL, 0);
}

/* Reads at most CONF_FILE_MAX + 1 bytes, so an oversized file is seen as such. */
static char *
read_file(struct conf_parser *p, const char *path, size_t *len)
{
	char *data;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

	if (fd < 0) {
		fail(p, 0, "cannot open: %s", strerror(errno));
		return NULL;
	}
	data = xmalloc(CONF_FILE_MAX + 1);
	*len = 0;
	while (*len <= CONF_FILE_MAX) {
		ssize_t n = read(fd, data + *len, CONF_FILE_MAX + 1 - *len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fail(p, 0, "cannot read: %s", strerror(errno));
			free(data);
			close(fd);
			return NULL;
		}
		if (n == 0)
			break;
		*len += (size_t)n;
	}
	close(fd);
	if (*len > CONF_FILE_MAX) {
		fail(p, 0, "file too large (more than %d bytes)", CONF_FILE_MAX);
		free(data);
		return NULL;
	}
	return data;
}

struct conf *
conf_load(const char *path, char *err, size_t err_cap)
{
	struct conf_parser p = {.name = path, .err = err, .err_cap = err_cap};
	struct conf *c;
	size_t len;
	char *data;

	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	data = read_file(&p, path, &len);
	if (data == NULL)
		return NULL;
	c = conf_parse(path, data, len, err, err_cap);
	free(data);
	if (c != NULL)
		c->path = xstrdup(path);
	return c;
}

static void
free_listen(struct conf_listen *list, size_t len)
{
	for (size_t i = 0; i < len; i++)
		free(list[i].host);
	free(list);
}

void
conf_free(struct conf *c)
{
	if (c == NULL)
		return;
	free(c->hostname);
	free_listen(c->listen_smtp, c->listen_smtp_len);
	free_listen(c->listen_submission, c->listen_submission_len);
	free_listen(c->listen_submissions, c->listen_submissions_len);
	for (size_t i = 0; i < c->local_domains_len; i++)
		free(c->local_domains[i]);
	free(c->local_domains);
	free(c->mail_root);
	free(c->spool_dir);
	free(c->users_file);
	free(c->aliases_file);
	free(c->recipient_delimiter);
	free(c->relay_networks);
	free(c->dns_resolver);
	free(c->relayhost);
	free(c->tls_cert);
	free(c->tls_key);
	free(c->user);
	free(c->path);
	free(c);
}

/* ---- lookups ------------------------------------------------------------ */

bool
conf_is_local_domain(const struct conf *c, const char *domain, size_t len)
{
	char ascii[UTIL_IDNA_MAX + 1];

	if (c == NULL || domain == NULL || !util_idna_ascii(&domain, &len, ascii))
		return false;
	len = len_without_dot(domain, len);
	if (len == 0)
		return false;
	for (size_t i = 0; i < c->local_domains_len; i++) {
		const char *d = c->local_domains[i];
		size_t j = 0;
		/* Entries are lower-case ASCII with no NUL before their end. */
		while (j < len && d[j] != '\0' && lower(domain[j]) == d[j])
			j++;
		if (j == len && d[j] == '\0')
			return true;
	}
	return false;
}

static bool
cidr_match(const struct conf_cidr *n, int family, const uint8_t *addr)
{
	unsigned full = n->prefix / 8, rest = n->prefix % 8;

	if (n->family != family || memcmp(n->addr, addr, full) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((n->addr[full] ^ addr[full]) & (uint8_t)(0xff00u >> rest)) == 0;
}

bool
conf_in_relay_networks(const struct conf *c, const struct sockaddr *sa)
{
	const uint8_t *v4 = NULL, *v6 = NULL;

	if (c == NULL || sa == NULL)
		return false;
	if (sa->sa_family == AF_INET) {
		v4 = (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a =
		    &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
		v6 = a->s6_addr;
		/* A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d (RFC 4291 2.5.5.2). */
		if (IN6_IS_ADDR_V4MAPPED(a))
			v4 = a->s6_addr + 12;
	} else {
		return false;
	}
	for (size_t i = 0; i < c->relay_networks_len; i++) {
		const struct conf_cidr *n = &c->relay_networks[i];
		if ((v4 != NULL && cidr_match(n, AF_INET, v4)) ||
		    (v6 != NULL && cidr_match(n, AF_INET6, v6)))
			return true;
	}
	return false;
}
