/*
 * server_reject — the log lines of refused commands, in Postfix's form,
 * which administrators grep and fail2ban reads:
 *   NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 550 5.1.1 Recipient
 *   address rejected: User unknown; from=<a@b.test> to=<bob@example.org>
 *   proto=ESMTP helo=<client.test>
 * A client sending garbage must not make the log grow without bound: the
 * lines of one session are capped, and what the caps left out is counted
 * in one line at the disconnect.
 */
#include "server/server_internal.h"

#include <stdio.h>
#include <string.h>

#include "smtp/smtp_session.h"
#include "util/util_log.h"

/*
 * Refusals of the connection, MAIL, RCPT, DATA, BDAT and a message's end:
 * each is logged, up to this many a session (an unread flood of RCPTs past
 * max_recipients, each a 452, is not counted as an error and never closes).
 */
#define REJECT_MAIL_MAX 100
/* Protocol errors (unknown commands, bad syntax, out of order): the first few. */
#define REJECT_PROTOCOL_MAX 5
/* An escaped field: a 256-octet path or HELO name, cut with "..." if escapes lengthen it. */
#define FIELD_MAX 320

/* " key=<value>" escaped into dst, or "" when there is no value. */
static const char *
field(char *dst, size_t cap, const char *key, const char *val, size_t len)
{
	char esc[FIELD_MAX];

	dst[0] = '\0';
	if (val != NULL)
		snprintf(dst, cap, " %s=<%s>", key, util_log_escape(esc, sizeof(esc), val, len));
	return dst;
}

void
server_reject_log(struct server_reject_count *n, const char *id, const char *client,
		  const char *proto, const struct smtp_refusal *r)
{
	/* A 421 ends the session: said once at most, and always worth its line. */
	bool closes = r->reply_len >= 3 && memcmp(r->reply, "421", 3) == 0;
	size_t *logged = r->kind == SMTP_REFUSAL_MAIL ? &n->mail : &n->protocol;
	size_t max = r->kind == SMTP_REFUSAL_MAIL ? REJECT_MAIL_MAX : REJECT_PROTOCOL_MAX;
	char reply[FIELD_MAX], from[FIELD_MAX + 16], to[FIELD_MAX + 16], helo[FIELD_MAX + 16];
	char nrcpt[32] = "";

	if (!closes && *logged >= max) {
		n->unlogged++;
		return;
	}
	(*logged)++;
	if (r->nrcpt > 0)
		snprintf(nrcpt, sizeof(nrcpt), " nrcpt=%zu", r->nrcpt);
	/* The reply is ours, but it names the configured host name. */
	util_log_escape(reply, sizeof(reply), r->reply, r->reply_len);
	log_info("%s: reject: %s from unknown[%s]: %s;%s%s%s proto=%s%s", id ? id : "NOQUEUE",
		 r->command, client, reply,
		 field(from, sizeof(from), "from", r->sender, r->sender_len),
		 field(to, sizeof(to), "to", r->rcpt, r->rcpt_len), nrcpt, proto,
		 field(helo, sizeof(helo), "helo", r->helo, r->helo_len));
}

void
server_reject_log_end(const struct server_reject_count *n, const char *client)
{
	if (n->unlogged > 0)
		log_info("unknown[%s]: %zu more refused commands not logged", client, n->unlogged);
}
