/*
 * relay — delivery to other domains' mail servers.
 *
 * relay_deliver() takes the recipients of one queued message that share a
 * destination domain; it finds the servers (MX records, or relayhost) with
 * the asynchronous resolver on the event loop, then runs the SMTP
 * conversation on the relay's own threads with blocking sockets (one
 * session a thread, like Postfix's smtp processes), reusing an idle
 * connection to the same server when one is cached.  Results come back on
 * the event loop thread: every recipient sent, deferred (4xx, no server
 * reachable) or failed (5xx, null MX, no such domain).
 *
 * The glue watches relay_fd_dns() and relay_fd_done() for reading and calls
 * relay_process() when either is readable.
 */
#ifndef PETREL_RELAY_H
#define PETREL_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/queue.h"

struct conf;
struct relay;

struct relay_limits {
	unsigned threads;	  /* sessions at once in all (0: 32) */
	unsigned per_destination; /* sessions at once to one domain (0: 10) */
	unsigned timeout_s;	  /* connect, each reply, each write of the message (0: 300) */
	unsigned conn_idle_s;	  /* an idle cached connection lives this long (0: 5) */
};

/* dns_resolver: NULL for /etc/resolv.conf.  NULL (err filled) on failure. */
struct relay *relay_new(const char *dns_resolver, const struct relay_limits *limits, char *err,
			size_t err_cap);
/* Waits for running sessions, closes cached connections.  Pending work is dropped. */
void relay_free(struct relay *r);
/* A new smtp_timeout (SIGHUP), for the conversations that start from now on.  Loop thread. */
void relay_set_timeout(struct relay *r, unsigned timeout_s);
int relay_fd_dns(const struct relay *r);
int relay_fd_done(const struct relay *r);
/* Runs DNS callbacks and finished sessions' completions (event loop thread). */
void relay_process(struct relay *r);

/*
 * Relays item's recipients rcpts[0..n) (indexes into item->rcpts, all of
 * domain `domain`), filling results[idx] for each; then done(arg) runs on
 * the event loop thread.  conf and delivered_to are read during the call
 * only (hostname, smtp_port, relayhost).  item and results must stay valid
 * until done.  delivered_to: NULL, or the alias (a printable address) that
 * forwarded the message to these recipients: the copy then carries a
 * Delivered-To: field naming it, and a message that has one already fails
 * as a mail forwarding loop (5.4.6), as one with too many Received: fields.
 */
void relay_deliver(struct relay *r, const struct conf *conf, const char *domain,
		   const struct queue_item *item, const size_t *rcpts, size_t n,
		   const char *delivered_to, struct queue_rcpt_result *results,
		   void (*done)(void *arg), void *arg);

#endif
