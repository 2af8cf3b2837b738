/*
 * relay — the event loop side: where mail for a domain goes (relayhost or
 * MX), how many sessions run to one destination, and the results.
 */
#include "relay/relay_internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conf/conf.h"
#include "relay/relay_dns.h"
#include "tls/tls.h"
#include "util/util_log.h"
#include "util/util_mem.h"

struct relay_dest {
	struct relay_dest *next;
	char name[256];
	unsigned active;
	struct relay_job *wait_head, *wait_tail;
};

/* A lookup in flight: the job waits for its targets. */
struct lookup {
	struct lookup *prev, *next; /* relay->lookups */
	struct relay_dns_query *query;
	struct relay_job *job;
	uint16_t port;
	bool relayhost; /* the name is conf->relayhost, not the recipients' domain */
};

static struct relay_dest *
dest_get(struct relay *r, const char *name)
{
	struct relay_dest *d;

	for (d = r->dests; d != NULL; d = d->next) {
		if (strcasecmp(d->name, name) == 0)
			return d;
	}
	d = xcalloc(1, sizeof(*d));
	util_strlcpy(d->name, name, sizeof(d->name));
	d->next = r->dests;
	r->dests = d;
	return d;
}

static void
dest_put(struct relay *r, struct relay_dest *d)
{
	struct relay_dest **pp;

	if (d->active > 0 || d->wait_head != NULL)
		return;
	for (pp = &r->dests; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == d) {
			*pp = d->next;
			free(d);
			return;
		}
	}
}

static void
job_free(struct relay_job *j)
{
	free(j->self);
	free(j->rcpts);
	free(j->delivered_to);
	free(j->targets);
	free(j);
}

/* Every recipient of the job gets the same verdict (DNS failures, loops). */
static void
job_fail_all(struct relay_job *j, enum queue_rcpt_status st, const char *reason)
{
	for (size_t i = 0; i < j->n; i++) {
		struct queue_rcpt_result *res = &j->results[j->rcpts[i]];
		res->status = st;
		util_strlcpy(res->reason, reason, sizeof(res->reason));
		util_strlcpy(res->relay, "none", sizeof(res->relay));
		log_info("%s: to=<%s>, relay=none, delay=%.0f, status=%s (%s)", j->item->id,
			 j->item->rcpts[j->rcpts[i]], difftime(time(NULL), j->item->arrival),
			 st == QUEUE_RCPT_FAIL ? "bounced" : "deferred", reason);
	}
}

static void
job_finish(struct relay_job *j)
{
	void (*done)(void *) = j->done;
	void *arg = j->arg;

	job_free(j);
	done(arg);
}

/* Starts waiting jobs of d while it has room. */
static void
dest_run(struct relay *r, struct relay_dest *d)
{
	while (d->wait_head != NULL && d->active < r->limits.per_destination) {
		struct relay_job *j = d->wait_head;
		d->wait_head = j->next_waiting;
		if (d->wait_head == NULL)
			d->wait_tail = NULL;
		d->active++;
		util_pool_submit(r->pool, &j->job);
	}
}

static void
session_done(struct util_pool_job *job)
{
	struct relay_job *j = (struct relay_job *)job;
	struct relay *r = j->relay;
	struct relay_dest *d = j->dest;

	d->active--;
	job_finish(j);
	dest_run(r, d);
	dest_put(r, d);
}

static void
enqueue(struct relay *r, struct relay_job *j, const char *dest_name)
{
	struct relay_dest *d = dest_get(r, dest_name);

	j->dest = d;
	j->job.run = relay_session_run;
	j->job.done = session_done;
	j->next_waiting = NULL;
	if (d->wait_tail != NULL)
		d->wait_tail->next_waiting = j;
	else
		d->wait_head = j;
	d->wait_tail = j;
	dest_run(r, d);
}

/*
 * Addresses tried for one delivery attempt, best first.  Each may take
 * smtp_timeout to connect and again to greet: a domain of many MX hosts
 * with many addresses each (hostile or broken) would otherwise hold a relay
 * thread for hours.
 */
#define TARGETS_MAX 5

static void
add_target(struct relay_job *j, const char *host, const struct sockaddr_storage *ss, uint16_t port)
{
	struct relay_target *t;

	j->targets = xrealloc(j->targets, (j->targets_len + 1) * sizeof(*j->targets));
	t = &j->targets[j->targets_len++];
	memset(t, 0, sizeof(*t));
	util_strlcpy(t->host, host, sizeof(t->host));
	t->addr = *ss;
	t->port = port;
	if (ss->ss_family == AF_INET6) {
		((struct sockaddr_in6 *)&t->addr)->sin6_port = htons(port);
		t->addr_len = sizeof(struct sockaddr_in6);
	} else {
		((struct sockaddr_in *)&t->addr)->sin_port = htons(port);
		t->addr_len = sizeof(struct sockaddr_in);
	}
}

static void
lookup_unlink(struct relay *r, struct lookup *lk)
{
	if (lk->prev != NULL)
		lk->prev->next = lk->next;
	else
		r->lookups = lk->next;
	if (lk->next != NULL)
		lk->next->prev = lk->prev;
}

/* ::ffff:a.b.c.d is a.b.c.d: written as such it is compared and connected to as IPv4. */
static struct sockaddr_storage
unmapped(const struct sockaddr_storage *ss)
{
	struct sockaddr_storage out = *ss;
	const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;

	if (ss->ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr)) {
		struct sockaddr_in *a4 = (struct sockaddr_in *)&out;

		memset(&out, 0, sizeof(out));
		a4->sin_family = AF_INET;
		a4->sin_port = a6->sin6_port;
		memcpy(&a4->sin_addr, &a6->sin6_addr.s6_addr[12], 4);
	}
	return out;
}

/*
 * 0.0.0.0/8 and :: are no destination (RFC 1122 3.2.1.3, RFC 4291 2.5.2);
 * Linux connects them to this machine, so they count as ourselves.
 */
static bool
is_unspecified(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 0;
	return ss->ss_family == AF_INET6 &&
	       IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

/* True when addr:port is where one of our MX listeners (j->self, wildcards expanded) listens. */
static bool
is_self(const struct relay_job *j, const struct sockaddr_storage *given, uint16_t port)
{
	struct sockaddr_storage plain = unmapped(given);
	const struct sockaddr_storage *addr = &plain;

	if (is_unspecified(addr))
		return true;
	for (size_t i = 0; i < j->self_len; i++) {
		const struct sockaddr_storage *me = &j->self[i];

		if (me->ss_family != addr->ss_family)
			continue;
		if (me->ss_family == AF_INET) {
			const struct sockaddr_in *m = (const struct sockaddr_in *)me;
			const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
			if (ntohs(m->sin_port) == port && m->sin_addr.s_addr == a->sin_addr.s_addr)
				return true;
		} else if (me->ss_family == AF_INET6) {
			const struct sockaddr_in6 *m = (const struct sockaddr_in6 *)me;
			const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
			if (ntohs(m->sin6_port) == port &&
			    memcmp(&m->sin6_addr, &a->sin6_addr, sizeof(a->sin6_addr)) == 0)
				return true;
		}
	}
	/* Every 127/8 address is this machine's: a 0.0.0.0 listener answers on all of them. */
	if (addr->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
		if ((ntohl(a->sin_addr.s_addr) >> 24) == 127 && j->loopback_port == port &&
		    j->loopback_port != 0)
			return true;
	}
	return false;
}

#define IFADDRS_TTL_S 30 /* how long the machine's address list is trusted */

/* The machine's own addresses (getifaddrs), read again at most every IFADDRS_TTL_S. */
static void
machine_addrs(struct relay *r, const struct sockaddr_storage **out, size_t *n)
{
	time_t now = time(NULL);
	struct ifaddrs *ifa;

	if ((r->ifaddrs == NULL || now - r->ifaddrs_at >= IFADDRS_TTL_S) && getifaddrs(&ifa) == 0) {
		size_t len = 0;

		for (struct ifaddrs *p = ifa; p != NULL; p = p->ifa_next)
			len++;
		free(r->ifaddrs);
		r->ifaddrs = xcalloc(len + 1, sizeof(*r->ifaddrs));
		r->ifaddrs_len = 0;
		for (struct ifaddrs *p = ifa; p != NULL; p = p->ifa_next) {
			if (p->ifa_addr == NULL)
				continue;
			if (p->ifa_addr->sa_family == AF_INET)
				memcpy(&r->ifaddrs[r->ifaddrs_len++], p->ifa_addr,
				       sizeof(struct sockaddr_in));
			else if (p->ifa_addr->sa_family == AF_INET6)
				memcpy(&r->ifaddrs[r->ifaddrs_len++], p->ifa_addr,
				       sizeof(struct sockaddr_in6));
		}
		freeifaddrs(ifa);
		r->ifaddrs_at = now;
	}
	*out = r->ifaddrs;
	*n = r->ifaddrs_len;
}

static void
self_add(struct relay_job *j, const struct sockaddr_storage *ss, uint16_t port)
{
	struct sockaddr_storage *me;

	j->self = xrealloc(j->self, (j->self_len + 1) * sizeof(*j->self));
	me = &j->self[j->self_len++];
	*me = *ss;
	if (me->ss_family == AF_INET)
		((struct sockaddr_in *)me)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)me)->sin6_port = htons(port);
}

/*
 * Our MX listeners as socket addresses (numeric hosts only; names cannot be
 * compared).  A listener on 0.0.0.0 listens on every IPv4 address of the
 * machine (all of 127/8 too), one on [::] on every IPv6 one (it is
 * IPV6_V6ONLY): each stands for those addresses.
 */
static void
collect_self(struct relay *r, struct relay_job *j, const struct conf *conf)
{
	for (size_t i = 0; i < conf->listen_smtp_len; i++) {
		struct sockaddr_storage ss;
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		uint16_t port = conf->listen_smtp[i].port;
		bool any4 = false, any6 = false;

		memset(&ss, 0, sizeof(ss));
		if (inet_pton(AF_INET, conf->listen_smtp[i].host, &s4->sin_addr) == 1) {
			s4->sin_family = AF_INET;
			any4 = s4->sin_addr.s_addr == htonl(INADDR_ANY);
		} else if (inet_pton(AF_INET6, conf->listen_smtp[i].host, &s6->sin6_addr) == 1) {
			s6->sin6_family = AF_INET6;
			any6 = IN6_IS_ADDR_UNSPECIFIED(&s6->sin6_addr);
		} else {
			continue;
		}
		if (!any4 && !any6) {
			self_add(j, &ss, port);
			continue;
		}
		{
			const struct sockaddr_storage *m;
			size_t n;

			/* [::] is IPv6-only (server_main.c): each wildcard, its family. */
			machine_addrs(r, &m, &n);
			for (size_t k = 0; k < n; k++)
				if (m[k].ss_family == (any4 ? AF_INET : AF_INET6))
					self_add(j, &m[k], port);
			if (any4)
				j->loopback_port = port;
		}
	}
}

static void
dns_done(const struct relay_dns_result *res, void *arg)
{
	struct lookup *lk = arg;
	struct relay_job *j = lk->job;
	struct relay *r = j->relay;
	uint16_t port = lk->port;
	bool relayhost = lk->relayhost, self_found = false;
	unsigned self_pref = 0;
	char reason[256];

	lookup_unlink(r, lk);
	free(lk);
	switch (res->status) {
	case RELAY_DNS_OK:
		break;
	case RELAY_DNS_NULL_MX:
		if (relayhost) {
			/* As NXDOMAIN below: our configuration is wrong, keep the mail. */
			snprintf(
			    reason, sizeof(reason),
			    "4.3.5 relayhost %.200s accepts no mail (null MX; check relayhost)",
			    res->domain);
			log_warn("%s: %s", j->item->id, reason);
			job_fail_all(j, QUEUE_RCPT_DEFER, reason);
			job_finish(j);
			return;
		}
		/* RFC 7505 3: the domain accepts no mail. */
		snprintf(reason, sizeof(reason),
			 "556 5.1.10 Recipient address rejected: domain %.200s accepts no mail "
			 "(null MX)",
			 res->domain);
		job_fail_all(j, QUEUE_RCPT_FAIL, reason);
		job_finish(j);
		return;
	case RELAY_DNS_NXDOMAIN:
		if (relayhost) {
			/* Our own configuration is wrong, not the recipients: keep the mail. */
			snprintf(reason, sizeof(reason),
				 "4.4.3 relayhost not found: %.200s (check relayhost)", res->error);
			log_warn("%s: %s", j->item->id, reason);
			job_fail_all(j, QUEUE_RCPT_DEFER, reason);
			job_finish(j);
			return;
		}
		snprintf(reason, sizeof(reason), "5.1.2 Host or domain name not found: %.200s",
			 res->error);
		job_fail_all(j, QUEUE_RCPT_FAIL, reason);
		job_finish(j);
		return;
	case RELAY_DNS_NO_ADDRESS:
		/* RFC 5321 5.1: MX hosts of which none is usable are an error (Postfix: 5.4.4). */
		snprintf(reason, sizeof(reason), "%s: %.200s",
			 relayhost ? "4.3.5 relayhost unusable (check relayhost)"
				   : "5.4.4 No usable mail server",
			 res->error);
		if (relayhost)
			log_warn("%s: %s", j->item->id, reason);
		job_fail_all(j, relayhost ? QUEUE_RCPT_DEFER : QUEUE_RCPT_FAIL, reason);
		job_finish(j);
		return;
	case RELAY_DNS_TEMPFAIL:
		snprintf(reason, sizeof(reason), "4.4.3 DNS lookup failed: %.200s", res->error);
		job_fail_all(j, QUEUE_RCPT_DEFER, reason);
		job_finish(j);
		return;
	}
	/*
	 * RFC 5321 5.1: finding itself in the MX list, a client drops that entry
	 * and every one of equal or higher preference number.  A backup MX then
	 * hands mail only to better ones, and two backups never pass it back
	 * and forth.
	 */
	for (size_t t = 0; t < res->targets_len; t++) {
		for (size_t a = 0; a < res->targets[t].addrs_len; a++) {
			if (is_self(j, &res->targets[t].addrs[a], port) &&
			    (!self_found || res->targets[t].preference < self_pref)) {
				self_found = true;
				self_pref = res->targets[t].preference;
			}
		}
	}
	for (size_t t = 0; t < res->targets_len; t++) {
		if (self_found && res->targets[t].preference >= self_pref)
			continue;
		/* The best TARGETS_MAX addresses, as Postfix's smtp_mx_address_limit. */
		for (size_t a = 0; a < res->targets[t].addrs_len && j->targets_len < TARGETS_MAX;
		     a++) {
			struct sockaddr_storage plain = unmapped(&res->targets[t].addrs[a]);

			add_target(j, res->targets[t].hostname, &plain, port);
		}
	}
	if (j->targets_len == 0) {
		/*
		 * This server is the best MX left for the domain: a configuration
		 * error (the domain belongs in local_domains, or smtp_port is wrong),
		 * not a loop.  Deferred, so the mail survives until the configuration
		 * is fixed.
		 */
		snprintf(reason, sizeof(reason),
			 "4.4.6 mail for %.200s loops back to myself (its best MX is this server; "
			 "is it missing from local_domains?)",
			 res->domain);
		log_warn("%s: %s", j->item->id, reason);
		job_fail_all(j, QUEUE_RCPT_DEFER, reason);
		job_finish(j);
		return;
	}
	enqueue(r, j, res->domain);
}

/*
 * "host", "host:port", "[host]", "[host]:port" → lookup name and port.
 * *use_mx is false for a bracketed name: "[name]" means that host, its
 * addresses only, never its MX records (as in Postfix).
 */
static void
split_relayhost(const char *relayhost, uint16_t def_port, char *host, size_t cap, uint16_t *port,
		bool *use_mx)
{
	const char *colon;

	*port = def_port;
	*use_mx = relayhost[0] != '[';
	if (relayhost[0] == '[') {
		const char *end = strchr(relayhost, ']');
		size_t n = end ? (size_t)(end - relayhost - 1) : strlen(relayhost + 1);
		char inner[256];
		struct in6_addr a6;
		struct in_addr a4;

		snprintf(inner, sizeof(inner), "%.*s", (int)n, relayhost + 1);
		/* Keep literals bracketed for the resolver; names go without brackets. */
		if (inet_pton(AF_INET, inner, &a4) == 1)
			snprintf(host, cap, "[%s]", inner);
		else if (inet_pton(AF_INET6, inner, &a6) == 1)
			snprintf(host, cap, "[IPv6:%s]", inner);
		else
			snprintf(host, cap, "%s", inner);
		colon = end ? strchr(end, ':') : NULL;
	} else {
		colon = strrchr(relayhost, ':');
		snprintf(host, cap, "%.*s",
			 (int)(colon ? (size_t)(colon - relayhost) : strlen(relayhost)), relayhost);
	}
	if (colon != NULL)
		*port = (uint16_t)atoi(colon + 1);
}

void
relay_deliver(struct relay *r, const struct conf *conf, const char *domain,
	      const struct queue_item *item, const size_t *rcpts, size_t n,
	      const char *delivered_to, struct queue_rcpt_result *results, void (*done)(void *arg),
	      void *arg)
{
	struct relay_job *j = xcalloc(1, sizeof(*j));
	struct lookup *lk = xcalloc(1, sizeof(*lk));
	char name[300];
	bool use_mx = true;

	j->relay = r;
	util_strlcpy(j->hostname, conf->hostname, sizeof(j->hostname));
	j->item = item;
	j->rcpts = xcalloc(n, sizeof(*j->rcpts));
	memcpy(j->rcpts, rcpts, n * sizeof(*rcpts));
	j->n = n;
	j->delivered_to = delivered_to != NULL ? xstrdup(delivered_to) : NULL;
	j->results = results;
	j->timeout_s = r->limits.timeout_s;
	j->done = done;
	j->arg = arg;
	collect_self(r, j, conf);
	lk->job = j;
	if (conf->relayhost != NULL) {
		split_relayhost(conf->relayhost, 25, name, sizeof(name), &lk->port, &use_mx);
		lk->relayhost = true;
	} else {
		util_strlcpy(name, domain, sizeof(name));
		lk->port = conf->smtp_port;
	}
	lk->next = r->lookups;
	if (r->lookups != NULL)
		r->lookups->prev = lk;
	r->lookups = lk;
	lk->query = use_mx ? relay_dns_lookup_mx(r->dns, name, dns_done, lk)
			   : relay_dns_lookup_host(r->dns, name, dns_done, lk);
}

struct relay *
relay_new(const char *dns_resolver, const struct relay_limits *limits, char *err, size_t err_cap)
{
	struct relay *r = xcalloc(1, sizeof(*r));

	r->limits = *limits;
	if (r->limits.threads == 0)
		r->limits.threads = 32;
	if (r->limits.per_destination == 0)
		r->limits.per_destination = 10;
	if (r->limits.timeout_s == 0)
		r->limits.timeout_s = 300;
	if (r->limits.conn_idle_s == 0)
		r->limits.conn_idle_s = 5;
	r->dns = relay_dns_new(dns_resolver, err, err_cap);
	if (r->dns == NULL) {
		free(r);
		return NULL;
	}
	r->tls = tls_client_ctx_new(err, err_cap);
	if (r->tls == NULL) {
		relay_dns_free(r->dns);
		free(r);
		return NULL;
	}
	pthread_mutex_init(&r->cache_lock, NULL);
	pthread_mutex_init(&r->active_lock, NULL);
	r->pool = util_pool_new(r->limits.threads, 0);
	relay_watchdog_start(r);
	return r;
}

void
relay_free(struct relay *r)
{
	if (r == NULL)
		return;
	/* Lookups in flight: their recipients are retried after the restart. */
	while (r->lookups != NULL) {
		struct lookup *lk = r->lookups;
		relay_dns_cancel(lk->query);
		lookup_unlink(r, lk);
		job_fail_all(lk->job, QUEUE_RCPT_DEFER, "4.3.2 petrel is stopping");
		job_finish(lk->job);
		free(lk);
	}
	relay_dns_free(r->dns);
	/* Sessions in flight end at once (their sockets are shut down) and report. */
	relay_session_stop_all(r);
	util_pool_stop(r->pool);
	util_pool_dispatch(r->pool);
	util_pool_free(r->pool);
	relay_session_cache_clear(r);
	relay_watchdog_stop(r);
	pthread_mutex_destroy(&r->cache_lock);
	pthread_mutex_destroy(&r->active_lock);
	free(r->active);
	free(r->ifaddrs);
	tls_ctx_free(r->tls);
	while (r->dests != NULL) {
		struct relay_dest *d = r->dests;
		r->dests = d->next;
		while (d->wait_head != NULL) {
			struct relay_job *j = d->wait_head;
			d->wait_head = j->next_waiting;
			job_fail_all(j, QUEUE_RCPT_DEFER, "4.3.2 petrel is stopping");
			job_finish(j);
		}
		free(d);
	}
	free(r);
}

void
relay_set_timeout(struct relay *r, unsigned timeout_s)
{
	if (timeout_s > 0)
		r->limits.timeout_s = timeout_s;
}

int
relay_fd_dns(const struct relay *r)
{
	return relay_dns_fd(r->dns);
}

int
relay_fd_done(const struct relay *r)
{
	return util_pool_notify_fd(r->pool);
}

void
relay_process(struct relay *r)
{
	relay_dns_process(r->dns);
	util_pool_dispatch(r->pool);
}
