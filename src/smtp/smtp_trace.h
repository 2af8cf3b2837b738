/*
 * smtp_trace — what a message's header section says about the way it came,
 * for loop detection: how many Received: fields it carries (RFC 5321 6.3:
 * past a limit, the message is taken to be looping) and the addresses of
 * its Delivered-To: fields (one for each mailbox it was delivered to, and
 * for each alias it was forwarded for, as Postfix's local(8) writes them).
 *
 * Pure: bytes in, a summary out; no I/O.  Only the header section is read:
 * up to its first empty line, or to the end of the octets given (callers
 * hand it at most the first SMTP_TRACE_PEEK octets of a message).  Lines
 * end in CRLF or LF.  A field's name is matched case-insensitively at the
 * start of a line, white space allowed before its colon (RFC 5322 4.5.3); a
 * value goes on over folded lines (RFC 5322 2.2.3).
 */
#ifndef PETREL_SMTP_TRACE_H
#define PETREL_SMTP_TRACE_H

#include <stdbool.h>
#include <stddef.h>

#include "util/util_buf.h"

/* More Received: fields than this: a mail forwarding loop (Postfix's hopcount_limit). */
#define SMTP_TRACE_HOPS_MAX 50
/* The octets of a message worth scanning: headers beyond them are not looked at. */
#define SMTP_TRACE_PEEK (64 * 1024)

struct smtp_trace {
	size_t received; /* Received: fields */
	/*
	 * owned: the address of each Delivered-To: field (unfolded, white space
	 * and one pair of angle brackets around it removed), each ended by a NUL;
	 * an empty one, or one holding a NUL, is left out.
	 */
	struct buf delivered_to;
};

/*
 * Summarizes the header section of msg[0..len) into t (no set-up needed;
 * whatever t held is overwritten, not freed).  Free with smtp_trace_free().
 */
void smtp_trace_scan(struct smtp_trace *t, const char *msg, size_t len);
/* Whether a Delivered-To: field names addr (ASCII case-insensitively). */
bool smtp_trace_delivered_to(const struct smtp_trace *t, const char *addr);
/* Whether the message went through more than SMTP_TRACE_HOPS_MAX hops. */
bool smtp_trace_too_many_hops(const struct smtp_trace *t);
/* Releases what smtp_trace_scan() allocated; t may be scanned again after. */
void smtp_trace_free(struct smtp_trace *t);

#endif
