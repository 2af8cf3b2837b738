/*
 * relay_dns — the relay's asynchronous MX resolver (RFC 5321 5.1), over
 * libunbound.  The only file that includes unbound.h is relay_dns.c.
 *
 * relay_dns_lookup_mx() turns a mail domain into an ordered list of targets
 * (MX host, preference, A then AAAA addresses): MX preference ascending,
 * equal preferences shuffled; no MX records → the domain itself (implicit
 * MX); a null MX (RFC 7505) → RELAY_DNS_NULL_MX; an address literal
 * ("[127.0.0.1]", "[IPv6:::1]") → that address, without DNS.  The MX query
 * runs first, then the A and AAAA queries of every MX host at once; the
 * callback runs once all of them have returned.  At most RELAY_DNS_HOSTS_MAX
 * MX hosts are used.  Ports are not its business (the caller uses smtp_port).
 * relay_dns_lookup_host() skips the MX stage: the A and AAAA records of a
 * host name (a bracketed relayhost), nothing else.
 *
 * It does not touch libevent: the glue watches relay_dns_fd() for
 * readability and calls relay_dns_process(), which runs the callbacks.
 * Everything happens on the caller's thread (libunbound keeps a worker
 * thread of its own, started by the first lookup).  Callbacks never run
 * inside relay_dns_lookup_mx(), even for results known without DNS.
 *
 * Ownership: the library owns struct relay_dns, every struct relay_dns_query
 * and the result handed to a callback (valid during the callback only).
 */
#ifndef PETREL_RELAY_DNS_H
#define PETREL_RELAY_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define RELAY_DNS_HOSTS_MAX 10 /* MX hosts used per domain, best first */
#define RELAY_DNS_ADDRS_MAX 16 /* addresses kept per host and address family */

struct relay_dns;
struct relay_dns_query;

enum relay_dns_status {
	RELAY_DNS_OK,	      /* targets_len >= 1, every target has an address */
	RELAY_DNS_NXDOMAIN,   /* permanent: no such domain, a bare IP address, a malformed
				 name or literal, or (implicit MX) neither MX nor A/AAAA */
	RELAY_DNS_NULL_MX,    /* permanent: MX "0 ." (RFC 7505): bounce 556 5.1.10 */
	RELAY_DNS_NO_ADDRESS, /* permanent: MX hosts exist, none has an address (every
				 lookup answered; RFC 5321 5.1 "MUST be reported as an error") */
	RELAY_DNS_TEMPFAIL,   /* temporary: SERVFAIL, timeout, REFUSED, any other error */
};

struct relay_dns_target {
	char *hostname;			/* MX host (no trailing dot); the domain for an implicit MX;
					   the address text for a literal */
	unsigned preference;		/* MX preference; 0 for implicit MX and literals */
	struct sockaddr_storage *addrs; /* A addresses first, then AAAA; port 0 */
	size_t addrs_len;
};

struct relay_dns_result {
	enum relay_dns_status status;
	const char *domain; /* as passed to relay_dns_lookup_mx() or _host() */
	const char *error;  /* "" when OK; else text for logs and DSNs (may hold the
			       domain: escape it before logging) */
	const struct relay_dns_target *targets; /* OK only: best first */
	size_t targets_len;
};

/* Called once per lookup (unless cancelled), from relay_dns_process(). */
typedef void (*relay_dns_cb)(const struct relay_dns_result *res, void *arg);

/*
 * Creates a resolver that forwards every query to `resolver` ("addr",
 * "addr:port", "[v6]" or "[v6]:port", as dns_resolver in the config), or to
 * the name servers of /etc/resolv.conf when it is NULL.  On failure returns
 * NULL with a message in err.  No thread starts before the first lookup.
 */
struct relay_dns *relay_dns_new(const char *resolver, char *err, size_t cap);
/*
 * Cancels every outstanding lookup (their callbacks do not run) and frees
 * dns.  NULL is fine.  Not from inside a callback.
 */
void relay_dns_free(struct relay_dns *dns);
/* The descriptor to watch for reading; it never changes. */
int relay_dns_fd(const struct relay_dns *dns);
/* Runs the callbacks of finished lookups.  Spurious calls are harmless. */
void relay_dns_process(struct relay_dns *dns);

/*
 * Starts the lookup of a mail domain (copied; a trailing dot is fine).  cb
 * runs later from relay_dns_process() with arg.  Returns the query, owned by
 * dns and valid until its callback returns or it is cancelled.  Never fails:
 * a resolver error becomes a RELAY_DNS_TEMPFAIL result.
 */
struct relay_dns_query *relay_dns_lookup_mx(struct relay_dns *dns, const char *domain,
					    relay_dns_cb cb, void *arg);
/*
 * Starts an address-only lookup of a host name (copied; a trailing dot is
 * fine): its A and AAAA records, never its MX records (relayhost = [name]).
 * The result has one target, the name itself, with preference 0.  A name
 * without addresses (NXDOMAIN or no A/AAAA) is RELAY_DNS_NXDOMAIN; a failed
 * A or AAAA query with no address from the other is RELAY_DNS_TEMPFAIL.
 * Address literals and malformed names are treated as by
 * relay_dns_lookup_mx().  Same ownership and callback rules.
 */
struct relay_dns_query *relay_dns_lookup_host(struct relay_dns *dns, const char *name,
					      relay_dns_cb cb, void *arg);
/*
 * Stops a lookup before its callback ran; the callback never runs and q is
 * freed.  Calling it for q from q's own callback does nothing.
 */
void relay_dns_cancel(struct relay_dns_query *q);

/* "OK", "NXDOMAIN", "NULL_MX", "NO_ADDRESS", "TEMPFAIL". */
const char *relay_dns_status_name(enum relay_dns_status st);
/* True for the statuses that bounce (NXDOMAIN, NULL_MX). */
bool relay_dns_status_is_permanent(enum relay_dns_status st);

/* ---- pure helpers, exported for unit tests ---------------------------- */

enum relay_dns_literal {
	RELAY_DNS_LITERAL_NONE, /* not a literal: a name to look up */
	RELAY_DNS_LITERAL_ADDR, /* an address literal, stored in *out (port 0) */
	RELAY_DNS_LITERAL_BAD,	/* a malformed literal, or a bare IP address
				   (RFC 5321 4.1.3: literals are bracketed) */
};

/*
 * Classifies a domain: "[192.0.2.1]" and "[IPv6:2001:db8::1]" (tag in any
 * case) are address literals; "192.0.2.1" and "[foo]" are bad; anything
 * else is NONE (check it with relay_dns_name_is_valid()).
 */
enum relay_dns_literal relay_dns_parse_literal(const char *domain, struct sockaddr_storage *out);
/*
 * True when name can be sent to DNS: 1..253 octets (plus an optional
 * trailing dot), labels of 1..63 octets, no control bytes, spaces or '\'.
 */
bool relay_dns_name_is_valid(const char *name);
/*
 * Turns a dns_resolver value ("addr", "addr:port", "[v6]", "[v6]:port", or a
 * bare IPv6 address) into libunbound's forwarder syntax "addr@port".  0, or
 * -1 when the value is malformed.
 */
int relay_dns_forwarder(const char *resolver, char *out, size_t cap);

/* Returns a uniform random number in [0, upper), upper >= 1. */
typedef uint32_t (*relay_dns_random_fn)(uint32_t upper, void *ctx);
/*
 * Sorts targets by preference, ascending, and shuffles each run of equal
 * preferences (RFC 5321 5.1) with rnd (NULL: arc4random_uniform).  Ties are
 * ordered by hostname before the shuffle, so a given rnd gives one result.
 */
void relay_dns_sort_targets(struct relay_dns_target *t, size_t len, relay_dns_random_fn rnd,
			    void *rnd_ctx);

#endif
