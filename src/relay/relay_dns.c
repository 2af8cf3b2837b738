#include "relay/relay_dns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <unbound.h>

#include "util/util_idna.h"
#include "util/util_log.h"
#include "util/util_mem.h"

#define RR_A	       1
#define RR_MX	       15
#define RR_AAAA	       28
#define CLASS_IN       1
#define RCODE_NXDOMAIN 3
#define NAME_MAX_LEN   253 /* text form, without the trailing dot */
#define ERROR_CAP      256

/*
 * One ub_resolve_async() in flight.  mydata of the libunbound callback; it
 * lives inside its query, so cancelling the query must cancel it first.
 */
struct lookup {
	struct relay_dns_query *q; /* borrowed: the owner */
	size_t host;		   /* index in q->hosts (A and AAAA) */
	int rrtype;
	int async_id;
	bool in_flight;
};

/* One MX host and its address lookups. */
struct host {
	char *name; /* owned */
	unsigned preference;
	struct lookup a, aaaa;
	struct sockaddr_storage *addrs; /* owned: 2 * RELAY_DNS_ADDRS_MAX, A then AAAA */
	size_t v4_len, v6_len;
};

struct relay_dns_query {
	struct relay_dns *dns;		     /* borrowed */
	struct relay_dns_query *prev, *next; /* dns->queries: every live query */
	struct relay_dns_query *ready_next;  /* dns->ready, when is_ready */
	bool is_ready;			     /* answered without DNS, awaiting delivery */
	bool is_delivering;		     /* its callback is running */
	bool is_implicit;		     /* no MX records: the domain itself */
	bool is_host_only;		     /* relay_dns_lookup_host(): A/AAAA, no MX */
	bool has_tempfail;		     /* an address lookup failed temporarily */
	char *domain;			     /* owned */
	relay_dns_cb cb;
	void *arg;
	struct lookup mx;
	struct host hosts[RELAY_DNS_HOSTS_MAX];
	size_t hosts_len;
	size_t pending; /* lookups in flight */
	enum relay_dns_status status;
	bool has_status; /* status and error are final (no address stage) */
	char error[ERROR_CAP];
	struct sockaddr_storage literal; /* RELAY_DNS_LITERAL_ADDR */
	bool is_literal;
};

struct relay_dns {
	struct ub_ctx *ub;
	int epfd;   /* relay_dns_fd(): readable when ub_fd or wakefd is */
	int wakefd; /* eventfd, signalled while the ready list is not empty */
	struct relay_dns_query *queries;
	struct relay_dns_query *ready, **ready_tail;
	bool is_broken; /* libunbound's worker is gone: every lookup fails */
};

static const char *const status_names[] = {
    [RELAY_DNS_OK] = "OK",
    [RELAY_DNS_NXDOMAIN] = "NXDOMAIN",
    [RELAY_DNS_NULL_MX] = "NULL_MX",
    [RELAY_DNS_NO_ADDRESS] = "NO_ADDRESS",
    [RELAY_DNS_TEMPFAIL] = "TEMPFAIL",
};

const char *
relay_dns_status_name(enum relay_dns_status st)
{
	return status_names[st];
}

bool
relay_dns_status_is_permanent(enum relay_dns_status st)
{
	switch (st) {
	case RELAY_DNS_NXDOMAIN:
	case RELAY_DNS_NULL_MX:
	case RELAY_DNS_NO_ADDRESS:
		return true;
	case RELAY_DNS_OK:
	case RELAY_DNS_TEMPFAIL:
		return false;
	}
	return false;
}

/* ---- pure helpers ------------------------------------------------------ */

enum relay_dns_literal
relay_dns_parse_literal(const char *domain, struct sockaddr_storage *out)
{
	char text[INET6_ADDRSTRLEN + 8];
	size_t len = strlen(domain);
	struct in_addr a4;
	struct in6_addr a6;

	memset(out, 0, sizeof(*out));
	if (len == 0 || domain[0] != '[') {
		/* A bare address is not a domain (RFC 5321 4.1.3 wants brackets). */
		if (inet_pton(AF_INET, domain, &a4) == 1 || inet_pton(AF_INET6, domain, &a6) == 1)
			return RELAY_DNS_LITERAL_BAD;
		return RELAY_DNS_LITERAL_NONE;
	}
	if (len < 3 || domain[len - 1] != ']' || len - 2 >= sizeof(text))
		return RELAY_DNS_LITERAL_BAD;
	memcpy(text, domain + 1, len - 2);
	text[len - 2] = '\0';
	if (strncasecmp(text, "IPv6:", 5) == 0) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;

		if (inet_pton(AF_INET6, text + 5, &sin6->sin6_addr) != 1)
			return RELAY_DNS_LITERAL_BAD;
		sin6->sin6_family = AF_INET6;
		return RELAY_DNS_LITERAL_ADDR;
	}
	struct sockaddr_in *sin = (struct sockaddr_in *)out;

	if (inet_pton(AF_INET, text, &sin->sin_addr) != 1)
		return RELAY_DNS_LITERAL_BAD;
	sin->sin_family = AF_INET;
	return RELAY_DNS_LITERAL_ADDR;
}

bool
relay_dns_name_is_valid(const char *name)
{
	size_t len = strlen(name);
	size_t label = 0;

	if (len > 0 && name[len - 1] == '.')
		len--;
	if (len == 0 || len > NAME_MAX_LEN)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		/* '\' would start a libunbound text escape; controls and spaces are never sane. */
		if (c <= ' ' || c == 0x7f || c == '\\')
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0; /* "a.." leaves "a." after the trailing dot: an empty label */
}

/* Copies "addr" into out, checking it is an address of family af. */
static int
copy_addr(const char *s, size_t len, int af, char *out, size_t cap)
{
	unsigned char buf[sizeof(struct in6_addr)];

	if (len == 0 || len >= cap)
		return -1;
	memcpy(out, s, len);
	out[len] = '\0';
	return inet_pton(af, out, buf) == 1 ? 0 : -1;
}

static int
parse_port(const char *s, unsigned *port)
{
	unsigned long v = 0;

	if (*s == '\0')
		return -1;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (unsigned long)(*s - '0');
		if (v > 65535)
			return -1;
	}
	if (v == 0)
		return -1;
	*port = (unsigned)v;
	return 0;
}

int
relay_dns_forwarder(const char *resolver, char *out, size_t cap)
{
	char addr[INET6_ADDRSTRLEN];
	unsigned port = 53;
	const char *colon = strchr(resolver, ':');
	int n;

	if (resolver[0] == '[') {
		const char *end = strchr(resolver, ']');

		if (end == NULL || copy_addr(resolver + 1, (size_t)(end - resolver - 1), AF_INET6,
					     addr, sizeof(addr)) < 0)
			return -1;
		if (end[1] != '\0' && (end[1] != ':' || parse_port(end + 2, &port) < 0))
			return -1;
	} else if (colon != NULL && strchr(colon + 1, ':') != NULL) {
		/* Two colons or more: a bare IPv6 address, port 53. */
		if (copy_addr(resolver, strlen(resolver), AF_INET6, addr, sizeof(addr)) < 0)
			return -1;
	} else {
		size_t len = colon != NULL ? (size_t)(colon - resolver) : strlen(resolver);

		if (copy_addr(resolver, len, AF_INET, addr, sizeof(addr)) < 0)
			return -1;
		if (colon != NULL && parse_port(colon + 1, &port) < 0)
			return -1;
	}
	n = snprintf(out, cap, "%s@%u", addr, port);
	return n < 0 || (size_t)n >= cap ? -1 : 0;
}

static uint32_t
default_random(uint32_t upper, void *ctx)
{
	return arc4random_uniform(upper);
}

static int
cmp_target(const void *pa, const void *pb)
{
	const struct relay_dns_target *a = pa, *b = pb;

	if (a->preference != b->preference)
		return a->preference < b->preference ? -1 : 1;
	return strcasecmp(a->hostname, b->hostname);
}

void
relay_dns_sort_targets(struct relay_dns_target *t, size_t len, relay_dns_random_fn rnd,
		       void *rnd_ctx)
{
	if (len < 2)
		return;
	if (rnd == NULL)
		rnd = default_random;
	qsort(t, len, sizeof(*t), cmp_target);
	for (size_t start = 0, end; start < len; start = end) {
		for (end = start + 1; end < len && t[end].preference == t[start].preference; end++)
			;
		/* Fisher-Yates over t[start, end). */
		for (size_t i = end - start - 1; i > 0; i--) {
			size_t j = rnd((uint32_t)(i + 1), rnd_ctx);
			struct relay_dns_target tmp = t[start + i];

			t[start + i] = t[start + j];
			t[start + j] = tmp;
		}
	}
}

/* ---- the resolver ------------------------------------------------------ */

static void on_result(void *mydata, int err, struct ub_result *res);

static void set_error(struct relay_dns_query *q, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Records the first error of the query; later ones add nothing. */
static void
set_error(struct relay_dns_query *q, const char *fmt, ...)
{
	va_list ap;

	if (q->error[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(q->error, sizeof(q->error), fmt, ap);
	va_end(ap);
}

static const char *
rrtype_name(int rrtype)
{
	return rrtype == RR_MX ? "MX" : rrtype == RR_A ? "A" : "AAAA";
}

static const char *
rcode_name(int rcode)
{
	static const char *const names[] = {"NOERROR",	"FORMERR", "SERVFAIL",
					    "NXDOMAIN", "NOTIMP",  "REFUSED"};

	return rcode >= 0 && (size_t)rcode < sizeof(names) / sizeof(names[0]) ? names[rcode]
									      : "error";
}

/* Configures a fresh libunbound context; 0, or -1 with a message in err. */
static int
configure(struct ub_ctx *ub, const char *fwd, char *err, size_t cap)
{
	/*
	 * Forwarders on 127.0.0.0/8 and ::1 (a local cache, the test dnsmasq)
	 * are refused unless do-not-query-localhost is off.  A server that
	 * does not answer makes libunbound back off 376 ms, 752 ms, 1.5 s...
	 * until the retry timeout passes infra-cache-max-rtt: 2 s bounds a
	 * dead resolver to about 5 s (the default 120 s gives 17 s).  After
	 * that the server counts as down and every lookup fails at once for
	 * infra-host-ttl (default 900 s): 5 s lets a restarted resolver be
	 * used again quickly.
	 */
	static const char *const opts[][2] = {
	    {"do-not-query-localhost:", "no"},
	    {"infra-cache-max-rtt:", "2000"},
	    {"infra-host-ttl:", "5"},
	};
	int r;

	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		r = ub_ctx_set_option(ub, opts[i][0], opts[i][1]);
		if (r != 0) {
			snprintf(err, cap, "libunbound: option %s %s: %s", opts[i][0], opts[i][1],
				 ub_strerror(r));
			return -1;
		}
	}
	/*
	 * libunbound's own lines would break petrel's log format; results
	 * carry the errors.  A worker thread, not the default forked process:
	 * a child would inherit every listening socket and spool descriptor.
	 */
	if ((r = ub_ctx_debugout(ub, NULL)) != 0 || (r = ub_ctx_async(ub, 1)) != 0) {
		snprintf(err, cap, "libunbound: %s", ub_strerror(r));
		return -1;
	}
	r = fwd != NULL ? ub_ctx_set_fwd(ub, fwd) : ub_ctx_resolvconf(ub, NULL);
	if (r != 0) {
		snprintf(err, cap, "%s: %s", fwd != NULL ? "dns_resolver" : "/etc/resolv.conf",
			 ub_strerror(r));
		return -1;
	}
	/*
	 * libunbound answers NXDOMAIN for "test." itself (an RFC 6761 default
	 * zone); petrel's tests serve *.test from a dnsmasq, so ask the
	 * resolver as for any other name.  This finalizes the context: no
	 * ub_ctx_set_* after it.
	 */
	if ((r = ub_ctx_zone_remove(ub, "test.")) != 0) {
		snprintf(err, cap, "libunbound: %s", ub_strerror(r));
		return -1;
	}
	return 0;
}

/* Sets up relay_dns_fd(): an epoll set of libunbound's pipe and our eventfd. */
static int
setup_fds(struct relay_dns *dns, char *err, size_t cap)
{
	struct epoll_event ev = {.events = EPOLLIN};
	int fds[2];

	dns->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	dns->epfd = epoll_create1(EPOLL_CLOEXEC);
	fds[0] = ub_fd(dns->ub);
	fds[1] = dns->wakefd;
	if (dns->wakefd < 0 || dns->epfd < 0 || fds[0] < 0) {
		snprintf(err, cap, "relay_dns: %s", strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < 2; i++) {
		ev.data.fd = fds[i];
		if (epoll_ctl(dns->epfd, EPOLL_CTL_ADD, fds[i], &ev) < 0) {
			snprintf(err, cap, "relay_dns: epoll_ctl: %s", strerror(errno));
			return -1;
		}
	}
	return 0;
}

static void
ignore_result(void *mydata, int err, struct ub_result *res)
{
	if (res != NULL)
		ub_resolve_free(res);
}

/*
 * libunbound starts its worker thread, with an event base of its own (an
 * epoll descriptor, a socketpair), at the first query.  Started later, when
 * the process is out of descriptors, libevent's setup in that thread calls
 * exit(): the server would stop at its first relayed message.  So it starts
 * now, by a query cancelled at once.
 */
static int
start_worker(struct relay_dns *dns, char *err, size_t cap)
{
	int id, r = ub_resolve_async(dns->ub, "localhost.", RR_A, 1, NULL, ignore_result, &id);

	if (r != 0) {
		snprintf(err, cap, "libunbound: cannot start: %s", ub_strerror(r));
		return -1;
	}
	ub_cancel(dns->ub, id);
	return 0;
}

struct relay_dns *
relay_dns_new(const char *resolver, char *err, size_t cap)
{
	struct relay_dns *dns = xcalloc(1, sizeof(*dns));
	char fwd[INET6_ADDRSTRLEN + 8];

	dns->epfd = dns->wakefd = -1;
	dns->ready_tail = &dns->ready;
	if (resolver != NULL && relay_dns_forwarder(resolver, fwd, sizeof(fwd)) < 0) {
		snprintf(err, cap, "dns_resolver: not addr[:port] or [v6addr][:port]");
		goto fail;
	}
	dns->ub = ub_ctx_create();
	if (dns->ub == NULL) {
		snprintf(err, cap, "libunbound: cannot create a context");
		goto fail;
	}
	if (configure(dns->ub, resolver != NULL ? fwd : NULL, err, cap) < 0 ||
	    setup_fds(dns, err, cap) < 0 || start_worker(dns, err, cap) < 0)
		goto fail;
	return dns;
fail:
	relay_dns_free(dns);
	return NULL;
}

int
relay_dns_fd(const struct relay_dns *dns)
{
	return dns->epfd;
}

static void
cancel_lookup(struct relay_dns *dns, struct lookup *l)
{
	if (!l->in_flight)
		return;
	/* Fails only when the answer is already delivered, which in_flight rules out. */
	(void)ub_cancel(dns->ub, l->async_id);
	l->in_flight = false;
}

/* Unlinks q from every list and frees it; its lookups must be finished or cancelled. */
static void
query_free(struct relay_dns_query *q)
{
	struct relay_dns *dns = q->dns;

	if (q->is_ready) {
		struct relay_dns_query **pp = &dns->ready;

		while (*pp != q)
			pp = &(*pp)->ready_next;
		*pp = q->ready_next;
		if (dns->ready_tail == &q->ready_next)
			dns->ready_tail = pp;
	}
	if (q->prev != NULL)
		q->prev->next = q->next;
	else
		dns->queries = q->next;
	if (q->next != NULL)
		q->next->prev = q->prev;
	for (size_t i = 0; i < q->hosts_len; i++) {
		free(q->hosts[i].name);
		free(q->hosts[i].addrs);
	}
	free(q->domain);
	free(q);
}

static void
query_cancel_all(struct relay_dns_query *q)
{
	cancel_lookup(q->dns, &q->mx);
	for (size_t i = 0; i < q->hosts_len; i++) {
		cancel_lookup(q->dns, &q->hosts[i].a);
		cancel_lookup(q->dns, &q->hosts[i].aaaa);
	}
}

void
relay_dns_cancel(struct relay_dns_query *q)
{
	if (q == NULL || q->is_delivering)
		return;
	query_cancel_all(q);
	query_free(q);
}

void
relay_dns_free(struct relay_dns *dns)
{
	if (dns == NULL)
		return;
	while (dns->queries != NULL) {
		struct relay_dns_query *q = dns->queries;

		/* ub_ctx_delete() drops libunbound's side; no need to cancel one by one. */
		q->mx.in_flight = false;
		for (size_t i = 0; i < q->hosts_len; i++)
			q->hosts[i].a.in_flight = q->hosts[i].aaaa.in_flight = false;
		query_free(q);
	}
	if (dns->ub != NULL)
		ub_ctx_delete(dns->ub);
	if (dns->epfd >= 0)
		close(dns->epfd);
	if (dns->wakefd >= 0)
		close(dns->wakefd);
	free(dns);
}

/* Starts one lookup of q; on failure records a temporary error and returns -1. */
static int
start_lookup(struct relay_dns_query *q, struct lookup *l, const char *name, int rrtype, size_t host)
{
	int r;

	l->q = q;
	l->host = host;
	l->rrtype = rrtype;
	r = ub_resolve_async(q->dns->ub, name, rrtype, CLASS_IN, l, on_result, &l->async_id);
	if (r != 0) {
		set_error(q, "%s lookup for %s: %s", rrtype_name(rrtype), name, ub_strerror(r));
		return -1;
	}
	l->in_flight = true;
	q->pending++;
	return 0;
}

/* Queues q for delivery by the next relay_dns_process(); the eventfd wakes the loop. */
static void
make_ready(struct relay_dns_query *q, enum relay_dns_status st)
{
	struct relay_dns *dns = q->dns;
	uint64_t one = 1;

	q->status = st;
	q->has_status = true;
	q->is_ready = true;
	q->ready_next = NULL;
	*dns->ready_tail = q;
	dns->ready_tail = &q->ready_next;
	/* Fails only when the counter would overflow, and then the fd is readable anyway. */
	if (write(dns->wakefd, &one, sizeof(one)) != (ssize_t)sizeof(one))
		log_debug("relay_dns: eventfd write: %s", strerror(errno));
}

/* Starts the A and AAAA lookups of q->domain itself, without an MX stage. */
static void
start_host_lookups(struct relay_dns_query *q)
{
	size_t len = strlen(q->domain);
	struct host *h = &q->hosts[0];

	if (q->domain[len - 1] == '.')
		len--;
	h->name = xstrndup(q->domain, len);
	q->hosts_len = 1;
	if (start_lookup(q, &h->a, h->name, RR_A, 0) < 0 ||
	    start_lookup(q, &h->aaaa, h->name, RR_AAAA, 0) < 0)
		q->has_tempfail = true;
	if (q->pending == 0)
		make_ready(q, RELAY_DNS_TEMPFAIL);
}

static struct relay_dns_query *
lookup_start(struct relay_dns *dns, const char *domain, bool host_only, relay_dns_cb cb, void *arg)
{
	struct relay_dns_query *q = xcalloc(1, sizeof(*q));

	q->dns = dns;
	q->domain = xstrdup(domain);
	q->cb = cb;
	q->arg = arg;
	q->next = dns->queries;
	if (q->next != NULL)
		q->next->prev = q;
	dns->queries = q;
	switch (relay_dns_parse_literal(domain, &q->literal)) {
	case RELAY_DNS_LITERAL_ADDR:
		q->is_literal = true;
		make_ready(q, RELAY_DNS_OK);
		return q;
	case RELAY_DNS_LITERAL_BAD:
		set_error(q, "not a domain: malformed address literal or bare IP address");
		make_ready(q, RELAY_DNS_NXDOMAIN);
		return q;
	case RELAY_DNS_LITERAL_NONE:
		break;
	}
	if (util_idna_needed(domain, strlen(domain))) {
		char ascii[UTIL_IDNA_MAX + 1];
		const char *why;

		if (util_idna_to_ascii(domain, strlen(domain), ascii, sizeof(ascii), &why) < 0) {
			set_error(q, "not a domain: invalid international name (%s)", why);
			make_ready(q, RELAY_DNS_NXDOMAIN);
			return q;
		}
		free(q->domain);
		q->domain = xstrdup(ascii); /* DNS knows the A-label form only */
		domain = q->domain;
	}
	if (!relay_dns_name_is_valid(domain)) {
		set_error(q, "not a domain: invalid name");
		make_ready(q, RELAY_DNS_NXDOMAIN);
		return q;
	}
	if (dns->is_broken) {
		set_error(q, "%s lookup for %s: resolver failed", host_only ? "A" : "MX", domain);
		make_ready(q, RELAY_DNS_TEMPFAIL);
		return q;
	}
	if (host_only) {
		q->is_host_only = true;
		start_host_lookups(q);
	} else if (start_lookup(q, &q->mx, domain, RR_MX, 0) < 0) {
		make_ready(q, RELAY_DNS_TEMPFAIL);
	}
	return q;
}

struct relay_dns_query *
relay_dns_lookup_mx(struct relay_dns *dns, const char *domain, relay_dns_cb cb, void *arg)
{
	return lookup_start(dns, domain, false, cb, arg);
}

struct relay_dns_query *
relay_dns_lookup_host(struct relay_dns *dns, const char *name, relay_dns_cb cb, void *arg)
{
	return lookup_start(dns, name, true, cb, arg);
}

enum answer {
	ANSWER_DATA,
	ANSWER_NODATA,	 /* the name exists, not with this type */
	ANSWER_NXDOMAIN, /* the name does not exist */
	ANSWER_FAIL,	 /* SERVFAIL, timeout, REFUSED...: *why says which */
};

static enum answer
classify(int err, const struct ub_result *res, const char **why)
{
	if (err != 0 || res == NULL) {
		*why = ub_strerror(err);
		return ANSWER_FAIL;
	}
	if (res->bogus) {
		*why = "DNSSEC validation failed";
		return ANSWER_FAIL;
	}
	if (res->nxdomain || res->rcode == RCODE_NXDOMAIN)
		return ANSWER_NXDOMAIN;
	if (res->rcode != 0) {
		/* libunbound reports a dead or silent server as SERVFAIL too. */
		*why = rcode_name(res->rcode);
		return ANSWER_FAIL;
	}
	return res->havedata ? ANSWER_DATA : ANSWER_NODATA;
}

/*
 * Converts an uncompressed wire-format name (libunbound hands out rdata
 * decompressed) into text without the trailing dot; the root is "".  -1 for
 * a malformed name or one with bytes that cannot be a host name.
 */
static int
wire_name(const unsigned char *p, size_t len, char *out, size_t cap)
{
	size_t i = 0, o = 0;

	for (;;) {
		size_t lab;

		if (i >= len)
			return -1;
		lab = p[i++];
		if (lab == 0)
			break;
		/* > 63 also catches compression pointers (0xC0). */
		if (lab > 63 || lab > len - i || o + lab + 1 >= cap)
			return -1;
		if (o > 0)
			out[o++] = '.';
		for (size_t k = 0; k < lab; k++) {
			unsigned char c = p[i + k];

			if (c <= ' ' || c >= 0x7f || c == '.' || c == '\\')
				return -1;
			out[o++] = (char)c;
		}
		i += lab;
	}
	out[o] = '\0';
	return o <= NAME_MAX_LEN ? 0 : -1;
}

static bool
has_host(const struct relay_dns_query *q, const char *name)
{
	for (size_t i = 0; i < q->hosts_len; i++)
		if (strcasecmp(q->hosts[i].name, name) == 0)
			return true;
	return false;
}

/*
 * Fills q->hosts from an MX answer: the best RELAY_DNS_HOSTS_MAX distinct
 * hosts, in delivery order.  Returns -1 (status set) when there is nothing
 * to look up.
 */
static int
use_mx_records(struct relay_dns_query *q, const struct ub_result *res)
{
	size_t count = 0, n = 0, roots = 0;
	struct relay_dns_target *t;

	while (res->data[count] != NULL)
		count++;
	t = xcalloc(count, sizeof(*t));
	for (size_t i = 0; i < count; i++) {
		const unsigned char *d = (const unsigned char *)res->data[i];
		char name[NAME_MAX_LEN + 2];

		if (res->len[i] < 3 ||
		    wire_name(d + 2, (size_t)res->len[i] - 2, name, sizeof(name)) < 0)
			continue;
		if (name[0] == '\0') {
			roots++;
			continue;
		}
		t[n].hostname = xstrdup(name);
		t[n].preference = (unsigned)d[0] << 8 | d[1];
		n++;
	}
	relay_dns_sort_targets(t, n, NULL, NULL);
	for (size_t i = 0; i < n; i++) {
		if (q->hosts_len < RELAY_DNS_HOSTS_MAX && !has_host(q, t[i].hostname)) {
			q->hosts[q->hosts_len].name = t[i].hostname;
			q->hosts[q->hosts_len].preference = t[i].preference;
			q->hosts_len++;
		} else {
			free(t[i].hostname);
		}
	}
	free(t);
	if (n > 0)
		return 0;
	if (roots > 0) {
		/* RFC 7505 3: "0 ." says the domain takes no mail.  Mixed with
		 * real MX records it is a misconfiguration; the root is skipped. */
		set_error(q, "%s does not accept mail (null MX, RFC 7505)", q->domain);
		q->status = RELAY_DNS_NULL_MX;
	} else {
		set_error(q, "MX records of %s are malformed", q->domain);
		q->status = RELAY_DNS_NO_ADDRESS;
	}
	q->has_status = true;
	return -1;
}

static void
on_mx(struct relay_dns_query *q, int err, const struct ub_result *res)
{
	const char *why = "";
	size_t len;

	switch (classify(err, res, &why)) {
	case ANSWER_FAIL:
		set_error(q, "MX lookup for %s: %s", q->domain, why);
		q->status = RELAY_DNS_TEMPFAIL;
		q->has_status = true;
		return;
	case ANSWER_NXDOMAIN:
		set_error(q, "%s: no such domain (NXDOMAIN)", q->domain);
		q->status = RELAY_DNS_NXDOMAIN;
		q->has_status = true;
		return;
	case ANSWER_NODATA:
		/* RFC 5321 5.1: without MX records the domain is its own implicit MX. */
		q->is_implicit = true;
		len = strlen(q->domain);
		if (q->domain[len - 1] == '.')
			len--;
		q->hosts[0].name = xstrndup(q->domain, len);
		q->hosts_len = 1;
		break;
	case ANSWER_DATA:
		if (use_mx_records(q, res) < 0)
			return;
		break;
	}
	for (size_t i = 0; i < q->hosts_len; i++) {
		struct host *h = &q->hosts[i];

		if (start_lookup(q, &h->a, h->name, RR_A, i) < 0 ||
		    start_lookup(q, &h->aaaa, h->name, RR_AAAA, i) < 0)
			q->has_tempfail = true;
	}
}

static void
on_address(struct relay_dns_query *q, const struct lookup *l, int err, const struct ub_result *res)
{
	struct host *h = &q->hosts[l->host];
	bool is_v4 = l->rrtype == RR_A;
	size_t alen = is_v4 ? sizeof(struct in_addr) : sizeof(struct in6_addr);
	const char *why = "";
	struct sockaddr_storage *ss;
	size_t n = 0;

	switch (classify(err, res, &why)) {
	case ANSWER_FAIL:
		q->has_tempfail = true;
		set_error(q, "%s lookup for %s: %s", rrtype_name(l->rrtype), h->name, why);
		return;
	case ANSWER_NXDOMAIN:
	case ANSWER_NODATA:
		return; /* no address of this family: the host may still have the other */
	case ANSWER_DATA:
		break;
	}
	/* A addresses in [0, MAX), AAAA in [MAX, 2 MAX); deliver() closes the gap. */
	if (h->addrs == NULL)
		h->addrs = xcalloc(2 * RELAY_DNS_ADDRS_MAX, sizeof(*h->addrs));
	ss = h->addrs + (is_v4 ? 0 : RELAY_DNS_ADDRS_MAX);
	for (size_t i = 0; res->data[i] != NULL && n < RELAY_DNS_ADDRS_MAX; i++) {
		if ((size_t)res->len[i] != alen)
			continue;
		if (is_v4) {
			struct sockaddr_in *sin = (struct sockaddr_in *)&ss[n];

			sin->sin_family = AF_INET;
			memcpy(&sin->sin_addr, res->data[i], alen);
		} else {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss[n];

			sin6->sin6_family = AF_INET6;
			memcpy(&sin6->sin6_addr, res->data[i], alen);
		}
		n++;
	}
	if (is_v4)
		h->v4_len = n;
	else
		h->v6_len = n;
}

/* Runs q's callback with its result, then frees q. */
static void
deliver(struct relay_dns_query *q)
{
	struct relay_dns_target targets[RELAY_DNS_HOSTS_MAX];
	struct relay_dns_result res = {.domain = q->domain, .error = q->error, .targets = targets};
	char text[INET6_ADDRSTRLEN];

	if (q->is_literal) {
		const struct sockaddr_storage *ss = &q->literal;
		const void *a = ss->ss_family == AF_INET
				    ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
				    : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;

		inet_ntop(ss->ss_family, a, text, sizeof(text));
		targets[0] = (struct relay_dns_target){
		    .hostname = text, .addrs = &q->literal, .addrs_len = 1};
		res.targets_len = 1;
	} else if (!q->has_status) {
		for (size_t i = 0; i < q->hosts_len; i++) {
			struct host *h = &q->hosts[i];

			if (h->v4_len + h->v6_len == 0)
				continue; /* RFC 5321 5.1: hosts without addresses are skipped */
			memmove(h->addrs + h->v4_len, h->addrs + RELAY_DNS_ADDRS_MAX,
				h->v6_len * sizeof(*h->addrs));
			targets[res.targets_len++] = (struct relay_dns_target){
			    .hostname = h->name,
			    .preference = h->preference,
			    .addrs = h->addrs,
			    .addrs_len = h->v4_len + h->v6_len,
			};
		}
		if (res.targets_len > 0) {
			q->status = RELAY_DNS_OK;
		} else if (q->has_tempfail) {
			q->status = RELAY_DNS_TEMPFAIL;
		} else if (q->is_host_only) {
			set_error(q, "%s: no such host (no A/AAAA records)", q->domain);
			q->status = RELAY_DNS_NXDOMAIN;
		} else if (q->is_implicit) {
			set_error(q, "%s has no MX and no A/AAAA records", q->domain);
			q->status = RELAY_DNS_NXDOMAIN;
		} else {
			set_error(q, "no MX host of %s has an address", q->domain);
			q->status = RELAY_DNS_NO_ADDRESS;
		}
	}
	res.status = q->status;
	if (res.status == RELAY_DNS_OK)
		res.error = ""; /* an A or AAAA failure of a skipped host is no error */
	else
		res.targets_len = 0;
	q->is_delivering = true;
	q->cb(&res, q->arg);
	query_free(q);
}

/* libunbound's callback, run from ub_process() inside relay_dns_process(). */
static void
on_result(void *mydata, int err, struct ub_result *res)
{
	struct lookup *l = mydata;
	struct relay_dns_query *q = l->q;

	l->in_flight = false;
	q->pending--;
	if (l->rrtype == RR_MX)
		on_mx(q, err, res);
	else
		on_address(q, l, err, res);
	ub_resolve_free(res);
	if (q->pending == 0)
		deliver(q);
}

/*
 * ub_process() failed: libunbound's worker is gone and its pipe stays
 * readable (EOF) for ever.  Stop watching it and fail every lookup, now and
 * later, as temporary: mail is deferred and the error is in the log.
 */
static void
break_down(struct relay_dns *dns, int err)
{
	log_err("relay_dns: libunbound: %s; DNS lookups fail from now on", ub_strerror(err));
	dns->is_broken = true;
	(void)epoll_ctl(dns->epfd, EPOLL_CTL_DEL, ub_fd(dns->ub), NULL);
	for (struct relay_dns_query *q = dns->queries; q != NULL; q = q->next) {
		if (q->is_ready)
			continue;
		query_cancel_all(q);
		set_error(q, "lookup for %s: resolver failed", q->domain);
		make_ready(q, RELAY_DNS_TEMPFAIL);
	}
}

void
relay_dns_process(struct relay_dns *dns)
{
	uint64_t count;
	int r;

	/* Reset the eventfd first: a callback below that queues a result signals it again. */
	if (read(dns->wakefd, &count, sizeof(count)) < 0 && errno != EAGAIN)
		log_warn("relay_dns: eventfd read: %s", strerror(errno));
	while (dns->ready != NULL) {
		struct relay_dns_query *q = dns->ready;

		dns->ready = q->ready_next;
		if (dns->ready == NULL)
			dns->ready_tail = &dns->ready;
		q->is_ready = false;
		deliver(q);
	}
	if (dns->is_broken)
		return;
	r = ub_process(dns->ub);
	if (r != 0)
		break_down(dns, r);
}
