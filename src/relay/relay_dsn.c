#include "relay/relay_dsn.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/util_mem.h"
#include "util/util_time.h"

#define DSN_MAX	    (1024 * 1024)
#define HEADERS_MAX (64 * 1024) /* original headers quoted in the DSN */

void
relay_dsn_status(const char *reason, char *dst, size_t cap)
{
	for (const char *p = reason; *p != '\0'; p++) {
		size_t a = 0, b = 0, c = 0;
		const char *q;

		if ((p != reason && !isspace((unsigned char)p[-1])) ||
		    (*p != '2' && *p != '4' && *p != '5') || p[1] != '.')
			continue;
		q = p + 2;
		while (a < 3 && isdigit((unsigned char)q[a]))
			a++;
		if (a == 0 || q[a] != '.')
			continue;
		q += a + 1;
		while (b < 3 && isdigit((unsigned char)q[b]))
			b++;
		c = (size_t)(q - p) + b;
		if (b == 0 || (q[b] != '\0' && !isspace((unsigned char)q[b])))
			continue;
		snprintf(dst, cap, "%.*s", (int)c, p);
		return;
	}
	snprintf(dst, cap, "5.0.0");
}

/* A reason that starts with a 3-digit reply code came from an SMTP server. */
static bool
is_smtp_reply(const char *reason)
{
	return isdigit((unsigned char)reason[0]) && isdigit((unsigned char)reason[1]) &&
	       isdigit((unsigned char)reason[2]) && (reason[3] == ' ' || reason[3] == '\0');
}

/* Appends s with line ends and control characters made safe for a header or text line. */
static int
append_clean(struct buf *out, const char *s, size_t max)
{
	int rc = 0;

	for (size_t i = 0; i < max && s[i] != '\0'; i++) {
		char c = s[i];
		if (c == '\r' || c == '\n' || c == '\t')
			c = ' ';
		else if ((unsigned char)c < 0x20 || c == 0x7f)
			c = '?';
		rc |= buf_append(out, &c, 1);
	}
	return rc;
}

/* A server was contacted: "host[addr]:port", not "local" nor "none" (never reached). */
static bool
remote_relay(const char *relay)
{
	return relay != NULL && relay[0] != '\0' && strcmp(relay, "local") != 0 &&
	       strcmp(relay, "none") != 0;
}

int
relay_dsn_build(const struct relay_dsn *dsn, struct buf *out)
{
	char date[64], arrival[64], boundary[128], status[16];
	int rc = 0;

	util_rfc5322_date(dsn->now, date, sizeof(date));
	util_rfc5322_date(dsn->arrival, arrival, sizeof(arrival));
	/* At most 70 characters (RFC 2046 5.1.1): no host name in it. */
	snprintf(boundary, sizeof(boundary), "%s.%lld/petrel-dsn", dsn->queue_id,
		 (long long)dsn->now);

	rc |= buf_printf(out, "From: MAILER-DAEMON@%s (Mail Delivery System)\r\n", dsn->hostname);
	rc |= buf_printf(out, "To: <%s>\r\n", dsn->sender);
	rc |= buf_printf(out, "Subject: Undelivered Mail Returned to Sender\r\n");
	rc |= buf_printf(out, "Date: %s\r\n", date);
	rc |= buf_printf(out, "Message-ID: <%s.%lld.bounce@%s>\r\n", dsn->queue_id,
			 (long long)dsn->now, dsn->hostname);
	rc |= buf_printf(out, "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
	rc |= buf_printf(out,
			 "Content-Type: multipart/report; report-type=delivery-status;\r\n"
			 "\tboundary=\"%s\"\r\n\r\n",
			 boundary);
	rc |= buf_printf(out, "This is a MIME-encapsulated message.\r\n\r\n");

	/* 1. For people. */
	rc |= buf_printf(out,
			 "--%s\r\nContent-Description: Notification\r\n"
			 "Content-Type: text/plain; charset=us-ascii\r\n\r\n",
			 boundary);
	rc |= buf_printf(out, "This is the mail system at host %s.\r\n\r\n", dsn->hostname);
	rc |= buf_printf(out, "I'm sorry to have to inform you that your message could not\r\n"
			      "be delivered to one or more recipients.\r\n\r\n");
	for (size_t i = 0; i < dsn->rcpts_len; i++) {
		const struct relay_dsn_rcpt *r = &dsn->rcpts[i];
		rc |= buf_append_str(out, "<");
		rc |= append_clean(out, r->addr, 300);
		rc |= buf_append_str(out, ">: ");
		if (remote_relay(r->relay)) {
			rc |= buf_append_str(out, "host ");
			rc |= append_clean(out, r->relay, 200);
			rc |= buf_append_str(out, " said: ");
		}
		rc |= append_clean(out, r->reason, 600);
		rc |= buf_append_str(out, "\r\n\r\n");
	}

	/* 2. For programs (RFC 3464 2.2, 2.3). */
	rc |= buf_printf(out,
			 "--%s\r\nContent-Description: Delivery report\r\n"
			 "Content-Type: message/delivery-status\r\n\r\n",
			 boundary);
	rc |= buf_printf(out, "Reporting-MTA: dns; %s\r\nX-Petrel-Queue-ID: %s\r\n", dsn->hostname,
			 dsn->queue_id);
	rc |= buf_printf(out, "Arrival-Date: %s\r\n", arrival);
	for (size_t i = 0; i < dsn->rcpts_len; i++) {
		const struct relay_dsn_rcpt *r = &dsn->rcpts[i];
		relay_dsn_status(r->reason, status, sizeof(status));
		rc |= buf_append_str(out, "\r\nFinal-Recipient: rfc822; ");
		rc |= append_clean(out, r->addr, 300);
		rc |= buf_printf(out, "\r\nAction: failed\r\nStatus: %s\r\n", status);
		if (remote_relay(r->relay)) {
			size_t host_len = strcspn(r->relay, "[:");
			rc |= buf_printf(out, "Remote-MTA: dns; %.*s\r\n", (int)host_len, r->relay);
		}
		if (is_smtp_reply(r->reason)) {
			rc |= buf_append_str(out, "Diagnostic-Code: smtp; ");
			rc |= append_clean(out, r->reason, 600);
			rc |= buf_append_str(out, "\r\n");
		} else {
			rc |= buf_append_str(out, "Diagnostic-Code: X-Petrel; ");
			rc |= append_clean(out, r->reason, 600);
			rc |= buf_append_str(out, "\r\n");
		}
	}
	rc |= buf_append_str(out, "\r\n");

	/* 3. What was sent: the header section only. */
	rc |= buf_printf(out,
			 "--%s\r\nContent-Description: Undelivered Message Headers\r\n"
			 "Content-Type: text/rfc822-headers\r\n\r\n",
			 boundary);
	rc |= buf_append(out, dsn->headers, dsn->headers_len);
	if (dsn->headers_len < 2 || memcmp(dsn->headers + dsn->headers_len - 2, "\r\n", 2) != 0)
		rc |= buf_append_str(out, "\r\n");
	rc |= buf_printf(out, "\r\n--%s--\r\n", boundary);
	return rc ? -1 : 0;
}

/* Reads the header section (up to the first empty line) of the queued message. */
static size_t
read_headers(const struct queue_item *item, char *dst, size_t cap)
{
	size_t len = 0;
	const char *end;

	while (len < cap && (uint64_t)len < item->body_len) {
		ssize_t n = queue_item_read(item, dst + len, cap - len, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	if (len > item->body_len)
		len = (size_t)item->body_len;
	if (len >= 2 && memcmp(dst, "\r\n", 2) == 0)
		return 0; /* no header section at all */
	end = memmem(dst, len, "\r\n\r\n", 4);
	if (end != NULL)
		return (size_t)(end - dst) + 2;
	/* Cut long header sections at a line end. */
	while (len > 0 && dst[len - 1] != '\n')
		len--;
	return len;
}

char *
relay_dsn_bounce(void *ctx, const struct queue_item *item, const struct queue_rcpt_result *results,
		 const bool *failed_now, size_t *len)
{
	struct relay_dsn dsn;
	struct relay_dsn_rcpt *rcpts = xcalloc(item->rcpts_len, sizeof(*rcpts));
	char *headers = xmalloc(HEADERS_MAX);
	struct buf out;
	char *msg = NULL;

	memset(&dsn, 0, sizeof(dsn));
	dsn.hostname = ctx;
	dsn.queue_id = item->id;
	dsn.sender = item->sender;
	dsn.arrival = item->arrival;
	dsn.now = time(NULL);
	for (size_t i = 0; i < item->rcpts_len; i++) {
		if (!failed_now[i])
			continue;
		rcpts[dsn.rcpts_len].addr = item->rcpts[i];
		rcpts[dsn.rcpts_len].reason = results[i].reason;
		rcpts[dsn.rcpts_len].relay = results[i].relay;
		dsn.rcpts_len++;
	}
	dsn.rcpts = rcpts;
	dsn.headers = headers;
	dsn.headers_len = read_headers(item, headers, HEADERS_MAX);
	buf_init(&out, DSN_MAX);
	if (relay_dsn_build(&dsn, &out) == 0) {
		msg = out.data;
		*len = out.len;
	} else {
		buf_free(&out);
	}
	free(headers);
	free(rcpts);
	return msg;
}
