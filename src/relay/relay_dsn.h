/*
 * relay_dsn — delivery status notifications (bounces), RFC 3464: a
 * multipart/report with a human-readable part, a message/delivery-status
 * part and the original message's headers (text/rfc822-headers).
 *
 * relay_dsn_build() is pure (bytes in, message out).  relay_dsn_bounce() is
 * the queue's bounce hook: it reads the original headers from the queue file
 * (blocking: worker threads only) and builds the DSN.
 */
#ifndef PETREL_RELAY_DSN_H
#define PETREL_RELAY_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "queue/queue.h"
#include "util/util_buf.h"

struct relay_dsn_rcpt {
	const char *addr;   /* the recipient as given in RCPT TO */
	const char *reason; /* "550 5.1.1 text" (a reply) or "5.1.1 text" (a local finding) */
	const char *relay;  /* "mx.example.org[192.0.2.1]:25", "local" or "" */
};

struct relay_dsn {
	const char *hostname; /* the reporting MTA */
	const char *queue_id;
	const char *sender; /* the original sender (the DSN's recipient) */
	time_t arrival;
	time_t now;
	uint64_t unique; /* random: the DSN's Message-ID and MIME boundary (one a DSN) */
	const struct relay_dsn_rcpt *rcpts;
	size_t rcpts_len;
	const char *headers; /* the original message's header section (CRLF lines) */
	size_t headers_len;
};

/*
 * Appends the whole DSN message (header and body, CRLF lines, at most 998
 * octets a line) to out.  Returns 0, or -1 when out's limit was reached.
 */
int relay_dsn_build(const struct relay_dsn *dsn, struct buf *out);

/*
 * The status code of a reason: the first "d.d.d" whose class is 2, 4 or 5
 * ("550 5.1.1 x" → "5.1.1"); else "5.0.0".  Writes into dst (>= 16 octets).
 */
void relay_dsn_status(const char *reason, char *dst, size_t cap);

/* queue_bounce_fn: ctx is the reporting hostname (a const char *, alive during the call). */
char *relay_dsn_bounce(void *ctx, const struct queue_item *item,
		       const struct queue_rcpt_result *results, const bool *failed_now,
		       size_t *len);

#endif
