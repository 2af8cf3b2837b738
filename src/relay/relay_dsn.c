#include "relay/relay_dsn.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "util/util_mem.h"
#include "util/util_time.h"

#define DSN_MAX	    (1024 * 1024)
#define HEADERS_MAX (64 * 1024) /* original headers quoted in the DSN */
/* Recipients are listed until the DSN holds this much; the rest are counted (a bounce of
 * 100,000 failed recipients must still fit DSN_MAX, headers quoted included). */
#define DSN_LIST_MAX (DSN_MAX - HEADERS_MAX - 64 * 1024)

/* Length of a "c.sss.ddd" status code at p whose class c is one of classes, else 0. */
static size_t
status_len(const char *p, const char *classes)
{
	size_t i = 2, a = 0, b = 0;

	if (*p == '\0' || strchr(classes, *p) == NULL || p[1] != '.')
		return 0;
	while (a < 3 && isdigit((unsigned char)p[i + a]))
		a++;
	if (a == 0 || p[i + a] != '.')
		return 0;
	i += a + 1;
	while (b < 3 && isdigit((unsigned char)p[i + b]))
		b++;
	if (b == 0 || (p[i + b] != '\0' && !isspace((unsigned char)p[i + b])))
		return 0;
	return i + b;
}

/* A reason that starts with a 3-digit reply code came from an SMTP server. */
static bool
is_smtp_reply(const char *reason)
{
	return isdigit((unsigned char)reason[0]) && isdigit((unsigned char)reason[1]) &&
	       isdigit((unsigned char)reason[2]) && (reason[3] == ' ' || reason[3] == '\0');
}

/* The SMTP reply a reason quotes: itself, or the last reply before an expiry; else NULL. */
static const char *
smtp_reply_of(const char *reason)
{
	size_t n = strlen(QUEUE_EXPIRED_PREFIX);

	if (is_smtp_reply(reason))
		return reason;
	if (strncmp(reason, QUEUE_EXPIRED_PREFIX, n) == 0 && is_smtp_reply(reason + n))
		return reason + n;
	return NULL;
}

void
relay_dsn_status(const char *reason, char *dst, size_t cap)
{
	size_t len;

	if (is_smtp_reply(reason)) {
		/* The code right after the reply code, of the reply's class (RFC 3463 2). */
		char cls[2] = {reason[0], '\0'};

		len = reason[3] == ' ' ? status_len(reason + 4, cls) : 0;
		if (len > 0)
			snprintf(dst, cap, "%.*s", (int)len, reason + 4);
		else
			snprintf(dst, cap, "%c.0.0", reason[0] == '4' ? '4' : '5');
		return;
	}
	/* A finding of our own ("5.1.2 Host or domain name not found", "4.4.7 ..."). */
	len = status_len(reason, "245");
	if (len > 0)
		snprintf(dst, cap, "%.*s", (int)len, reason);
	else
		snprintf(dst, cap, "5.0.0");
}

/*
 * Appends s with line ends and control characters made safe for a header or
 * text line; octets above 0x7f too unless utf8 (a remote's reply may hold
 * any octets, and the report is 7-bit unless it carries UTF-8 addresses).
 */
static int
append_clean(struct buf *out, const char *s, size_t max, bool utf8)
{
	int rc = 0;

	for (size_t i = 0; i < max && s[i] != '\0'; i++) {
		char c = s[i];
		if (c == '\r' || c == '\n' || c == '\t')
			c = ' ';
		else if ((unsigned char)c < 0x20 || c == 0x7f || ((unsigned char)c > 0x7f && !utf8))
			c = '?';
		rc |= buf_append(out, &c, 1);
	}
	return rc;
}

/*
 * An address in a report field: "rfc822; addr", or for an address with
 * UTF-8 in it "utf-8; addr" (RFC 6533 3), where '\\', '+' and '=' and any
 * control character are written as \\x{HEX} (utf-8-addr-unitext).
 */
static int
append_addr_field(struct buf *out, const char *addr)
{
	size_t len = strnlen(addr, 300);
	int rc = 0;

	if (!util_has_8bit(addr, len)) {
		rc |= buf_append_str(out, "rfc822; ");
		return rc | append_clean(out, addr, len, false);
	}
	rc |= buf_append_str(out, "utf-8; ");
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)addr[i];

		if (c <= 0x20 || c == 0x7f || c == '\\' || c == '+' || c == '=')
			rc |= buf_printf(out, "\\x{%02X}", c);
		else
			rc |= buf_append(out, addr + i, 1);
	}
	return rc;
}

/* True when an address of the report or the quoted headers hold UTF-8: RFC 6533's types. */
static bool
needs_global(const struct relay_dsn *dsn)
{
	if (util_has_8bit(dsn->headers, dsn->headers_len))
		return true;
	for (size_t i = 0; i < dsn->rcpts_len; i++)
		if (util_has_8bit(dsn->rcpts[i].addr, strlen(dsn->rcpts[i].addr)))
			return true;
	return false;
}

/*
 * The server that gave the reply a reason quotes, when one did: a relay of
 * "host[addr]:port" (not "local", nor "none" or a host never reached).
 */
static const char *
replying_host(const struct relay_dsn_rcpt *r)
{
	if (r->relay == NULL || r->relay[0] == '\0' || strcmp(r->relay, "local") == 0 ||
	    strcmp(r->relay, "none") == 0 || smtp_reply_of(r->reason) == NULL)
		return NULL;
	return r->relay;
}

/* The text for people: one paragraph a recipient. */
static int
append_text(const struct relay_dsn *dsn, struct buf *out, bool global, size_t *listed)
{
	int rc = 0;

	for (*listed = 0; *listed < dsn->rcpts_len && out->len < DSN_LIST_MAX / 2; (*listed)++) {
		const struct relay_dsn_rcpt *r = &dsn->rcpts[*listed];
		const char *host = replying_host(r);

		rc |= buf_append_str(out, "<");
		rc |= append_clean(out, r->addr, 300, global);
		rc |= buf_append_str(out, ">: ");
		if (host != NULL) {
			rc |= buf_append_str(out, "host ");
			rc |= append_clean(out, host, 200, false);
			rc |= buf_append_str(out, " said: ");
		}
		rc |= append_clean(out, r->reason, 600, false);
		rc |= buf_append_str(out, "\r\n\r\n");
	}
	return rc;
}

/* The report for programs (RFC 3464 2.2, 2.3): the per-recipient fields. */
static int
append_fields(const struct relay_dsn *dsn, struct buf *out, size_t *listed)
{
	char status[16];
	int rc = 0;

	for (*listed = 0; *listed < dsn->rcpts_len && out->len < DSN_LIST_MAX; (*listed)++) {
		const struct relay_dsn_rcpt *r = &dsn->rcpts[*listed];
		const char *host = replying_host(r), *reply = smtp_reply_of(r->reason);

		relay_dsn_status(r->reason, status, sizeof(status));
		rc |= buf_append_str(out, "\r\nFinal-Recipient: ");
		rc |= append_addr_field(out, r->addr);
		rc |= buf_printf(out, "\r\nAction: failed\r\nStatus: %s\r\n", status);
		if (host != NULL)
			rc |= buf_printf(out, "Remote-MTA: dns; %.*s\r\n", (int)strcspn(host, "[:"),
					 host);
		if (reply != NULL) {
			rc |= buf_append_str(out, "Diagnostic-Code: smtp; ");
			rc |= append_clean(out, reply, 600, false);
		} else {
			rc |= buf_append_str(out, "Diagnostic-Code: X-Petrel; ");
			rc |= append_clean(out, r->reason, 600, false);
		}
		rc |= buf_append_str(out, "\r\n");
	}
	return rc;
}

int
relay_dsn_build(const struct relay_dsn *dsn, struct buf *out)
{
	char date[64], arrival[64], boundary[128];
	bool global = needs_global(dsn);
	size_t listed;
	int rc = 0;

	util_rfc5322_date(dsn->now, date, sizeof(date));
	util_rfc5322_date(dsn->arrival, arrival, sizeof(arrival));
	/* At most 70 characters (RFC 2046 5.1.1), no host name, not guessable. */
	snprintf(boundary, sizeof(boundary), "%s.%016llx/petrel-dsn", dsn->queue_id,
		 (unsigned long long)dsn->unique);

	rc |= buf_printf(out, "From: MAILER-DAEMON@%s (Mail Delivery System)\r\n", dsn->hostname);
	rc |= buf_printf(out, "To: <%s>\r\n", dsn->sender);
	rc |= buf_printf(out, "Subject: Undelivered Mail Returned to Sender\r\n");
	rc |= buf_printf(out, "Date: %s\r\n", date);
	rc |= buf_printf(out, "Message-ID: <%s.%016llx.bounce@%s>\r\n", dsn->queue_id,
			 (unsigned long long)dsn->unique, dsn->hostname);
	rc |= buf_printf(out, "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
	rc |= buf_printf(out,
			 "Content-Type: multipart/report; report-type=delivery-status;\r\n"
			 "\tboundary=\"%s\"\r\n\r\n",
			 boundary);
	rc |= buf_printf(out, "This is a MIME-encapsulated message.\r\n\r\n");

	/* 1. For people. */
	rc |= buf_printf(out,
			 "--%s\r\nContent-Description: Notification\r\n"
			 "Content-Type: text/plain; charset=%s\r\n\r\n",
			 boundary, global ? "utf-8" : "us-ascii");
	rc |= buf_printf(out, "This is the mail system at host %s.\r\n\r\n", dsn->hostname);
	rc |= buf_printf(out, "I'm sorry to have to inform you that your message could not\r\n"
			      "be delivered to one or more recipients.\r\n\r\n");
	rc |= append_text(dsn, out, global, &listed);
	if (listed < dsn->rcpts_len)
		rc |= buf_printf(out, "... and %zu more recipients (not listed: too many).\r\n\r\n",
				 dsn->rcpts_len - listed);

	/* 2. For programs (RFC 3464 2.2, 2.3). */
	rc |= buf_printf(out,
			 "--%s\r\nContent-Description: Delivery report\r\n"
			 "Content-Type: message/%sdelivery-status\r\n\r\n",
			 boundary, global ? "global-" : "");
	rc |= buf_printf(out, "Reporting-MTA: dns; %s\r\nX-Petrel-Queue-ID: %s\r\n", dsn->hostname,
			 dsn->queue_id);
	rc |= buf_printf(out, "Arrival-Date: %s\r\n", arrival);
	rc |= append_fields(dsn, out, &listed);
	rc |= buf_append_str(out, "\r\n");

	/* 3. What was sent: the header section only. */
	rc |= buf_printf(out,
			 "--%s\r\nContent-Description: Undelivered Message Headers\r\n"
			 "Content-Type: %s\r\n\r\n",
			 boundary, global ? "message/global-headers" : "text/rfc822-headers");
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

/* 64 random bits; a counter mixed with the time if the kernel has none to give. */
static uint64_t
unique_value(void)
{
	static _Atomic uint64_t counter;
	uint64_t v;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) == (ssize_t)sizeof(v))
		return v;
	return ((uint64_t)time(NULL) << 24) ^ (uint64_t)getpid() << 40 ^ ++counter;
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
	dsn.unique = unique_value();
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
