/*
 * relay_internal — what relay.c (scheduling, DNS, on the event loop) and
 * relay_session.c (the SMTP conversation, on a relay thread) share.
 */
#ifndef PETREL_RELAY_INTERNAL_H
#define PETREL_RELAY_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "queue/queue.h"
#include "relay/relay.h"
#include "util/util_pool.h"

struct relay_dns;
struct tls_ctx;
struct relay_conn;

/* One address to try, in order. */
struct relay_target {
	char host[256]; /* MX host name (for logs, SNI and DSNs) */
	struct sockaddr_storage addr;
	socklen_t addr_len;
	uint16_t port;
};

struct relay_dest; /* per-destination bookkeeping (relay.c) */

/* One session: some recipients of one message to one destination. */
struct relay_job {
	struct util_pool_job job; /* first */
	struct relay *relay;
	struct relay_dest *dest;
	struct relay_job *next_waiting;
	/* input, fixed before the job runs */
	char hostname[256];	       /* ours, for EHLO and Received */
	struct sockaddr_storage *self; /* owned: our own listen_smtp addresses (port set) */
	size_t self_len;
	uint16_t loopback_port; /* a wildcard listener's port: all of 127/8 is ours there */
	const struct queue_item *item;
	size_t *rcpts; /* owned: indexes into item->rcpts */
	size_t n;
	char *delivered_to; /* owned: NULL, or the alias the recipients were forwarded for */
	struct queue_rcpt_result *results; /* borrowed: indexed like item->rcpts */
	struct relay_target *targets;	   /* owned */
	size_t targets_len;
	unsigned timeout_s;
	void (*done)(void *arg);
	void *arg;
};

struct relay_cache_entry {
	struct relay_cache_entry *next;
	struct relay_conn *conn;
	time_t idle_since;
};

struct lookup;

struct relay {
	struct relay_limits limits;
	struct lookup *lookups; /* DNS lookups in flight */
	struct relay_dns *dns;
	struct util_pool *pool;
	struct tls_ctx *tls;
	struct relay_dest *dests; /* list: few destinations at a time */
	/* idle connections, shared by the session threads */
	pthread_mutex_t cache_lock;
	struct relay_cache_entry *cache;
	size_t cache_len;
	/*
	 * Open connections (in sessions and cached).  The watchdog thread shuts
	 * down one whose deadline passed; relay_free() shuts them all down.
	 */
	pthread_mutex_t active_lock;
	struct relay_conn **active;
	size_t active_len, active_cap;
	bool stopping;
	pthread_t watchdog;
	pthread_cond_t watchdog_wake;
	bool watchdog_stop;
	/* The machine's addresses, for listeners on 0.0.0.0 / [::] (event loop only). */
	struct sockaddr_storage *ifaddrs;
	size_t ifaddrs_len;
	time_t ifaddrs_at;
};

/* relay_session.c: the pool job's run function (relay thread). */
void relay_session_run(struct util_pool_job *job);
/* Closes every cached connection (at relay_free). */
void relay_session_cache_clear(struct relay *r);
/* Makes running sessions end now: shuts their sockets down (any thread). */
void relay_session_stop_all(struct relay *r);
/* Starts and stops the thread that ends conversations past their deadline. */
void relay_watchdog_start(struct relay *r);
void relay_watchdog_stop(struct relay *r);

#endif
