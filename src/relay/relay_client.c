#include "relay/relay_client.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/util_log.h"
#include "util/util_mem.h"

/*
 * Limits that bound the output: one pipelined group (MAIL, RCPTS_MAX RCPTs,
 * DATA) of addresses no longer than ADDR_MAX always fits in OUTPUT_MAX.
 * Recipients past RCPTS_MAX get a synthesized 452 and wait for the next
 * attempt, as a server's "too many recipients" would make them
 * (RFC 5321 4.5.3.1.10).
 */
#define ADDR_MAX   256 /* RFC 5321 4.5.3.1.3: a path, punctuation included */
#define HELO_MAX   255 /* RFC 5321 4.5.3.1.2: a domain */
#define RCPTS_MAX  1000
#define CMD_MAX	   (ADDR_MAX + 64) /* the longest command we build, CRLF included */
#define OUTPUT_MAX ((RCPTS_MAX + 2) * CMD_MAX)

enum relay_state {
	RELAY_ST_GREETING,  /* waiting for 220 */
	RELAY_ST_EHLO,	    /* EHLO sent */
	RELAY_ST_HELO,	    /* HELO sent (EHLO was refused) */
	RELAY_ST_STARTTLS,  /* STARTTLS sent */
	RELAY_ST_TLS,	    /* the glue does the handshake */
	RELAY_ST_IDLE,	    /* ready for MAIL */
	RELAY_ST_MAIL,	    /* MAIL sent (and with PIPELINING, the RCPTs and DATA) */
	RELAY_ST_RCPT,	    /* waiting for RCPT replies */
	RELAY_ST_DATA,	    /* waiting for the DATA reply */
	RELAY_ST_BODY,	    /* the glue writes the message */
	RELAY_ST_DOT,	    /* waiting for the reply to the end of data */
	RELAY_ST_EMPTY_DOT, /* an unwanted 354 got an empty message; its reply is ignored */
	RELAY_ST_RSET,	    /* RSET sent after a failed transaction */
	RELAY_ST_CLOSED,
	RELAY_ST_COUNT
};

struct relay_ext {
	bool pipelining;
	bool size;
	uint64_t size_max; /* 0: SIZE without a limit */
	bool eightbitmime;
	bool smtputf8;
	bool starttls;
	bool chunking; /* recorded for the logs; BDAT is not used */
};

struct relay_client {
	struct relay_client_conf cfg; /* helo_name borrowed */
	enum relay_state state;
	struct smtp_reply_parser parser;
	struct buf out;
	struct relay_ext ext;
	bool tls; /* under TLS */

	/* The transaction (relay_client_start .. RELAY_ACT_IDLE). */
	struct relay_client_msg msg;	   /* strings borrowed */
	struct relay_rcpt_result *results; /* owned, msg.rcpts_len entries */
	size_t rcpts_used;		   /* recipients taken in this transaction (<= RCPTS_MAX) */
	size_t rcpt_next;		   /* the recipient whose RCPT reply comes next */
	size_t accepted;		   /* RCPTs answered 2xx */
	bool pipelined;			   /* MAIL, RCPTs and DATA went in one group */
	bool mail_failed;    /* MAIL refused: the pipelined replies are only drained */
	bool undecided;	     /* some recipients may still be decided by the server */
	bool has_host_error; /* first host failure wins */
	bool host_permanent;
	struct smtp_reply host_reply;
};

typedef enum relay_client_action (*reply_fn)(struct relay_client *c, const struct smtp_reply *r);

/* Per state: its name in the logs, what a reply means there, and whether it is connection setup. */
struct state_info {
	const char *name;
	reply_fn on_reply;
	bool is_setup; /* a failure here is a host failure even without a transaction */
};

static const struct state_info states[RELAY_ST_COUNT]; /* defined after the handlers */

static void
enter_state(struct relay_client *c, enum relay_state st)
{
	log_debug("relay state %s -> %s", states[c->state].name, states[st].name);
	c->state = st;
}

/*
 * Appends one command.  The limits above make every group fit in an
 * emptied buffer, so a full one means the glue did not write the output:
 * our bug, and a half-written group would send commands out of order.
 */
static void __attribute__((format(printf, 2, 3)))
send_cmd(struct relay_client *c, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = buf_vprintf(&c->out, fmt, ap);
	va_end(ap);
	if (rc != 0 || buf_append(&c->out, "\r\n", 2) != 0) {
		log_err("relay output buffer full (the glue does not write it)");
		abort();
	}
}

static void __attribute__((format(printf, 4, 0)))
vmake_reply(struct smtp_reply *r, int code, const char *enhanced, const char *fmt, va_list ap)
{
	memset(r, 0, sizeof(*r));
	r->code = code;
	r->lines = 1;
	util_strlcpy(r->enhanced, enhanced, sizeof(r->enhanced));
	vsnprintf(r->text, sizeof(r->text), fmt, ap); /* cutting a synthesized text is harmless */
}

/* A reply of our own, for failures the server did not describe. */
static void __attribute__((format(printf, 4, 5)))
make_reply(struct smtp_reply *r, int code, const char *enhanced, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmake_reply(r, code, enhanced, fmt, ap);
	va_end(ap);
}

static bool
is_permanent(const struct smtp_reply *r)
{
	return smtp_reply_class(r) == 5;
}

/* The host failure of this connection or transaction; the first one is the cause. */
static void
host_fail(struct relay_client *c, const struct smtp_reply *r)
{
	char esc[256];

	if (c->has_host_error)
		return;
	c->has_host_error = true;
	c->host_permanent = is_permanent(r);
	c->host_reply = *r;
	log_debug("relay host failure state=%s reply=%d %s", states[c->state].name, r->code,
		  util_log_escape(esc, sizeof(esc), r->text, strlen(r->text)));
}

/* Recipients accepted by RCPT are only tentatively OK until the end of data. */
static void
revert_accepted(struct relay_client *c)
{
	for (size_t i = 0; i < c->msg.rcpts_len; i++)
		if (c->results[i].status == RELAY_RCPT_OK) {
			c->results[i].status = RELAY_RCPT_PENDING;
			memset(&c->results[i].reply, 0, sizeof(c->results[i].reply));
		}
	c->accepted = 0;
}

/*
 * The connection is unusable (dropped, timed out, a broken reply): what the
 * server has not decided stays PENDING, and if that leaves a transaction or
 * the connection setup unfinished, it is a host failure.  Nothing more is
 * written.
 */
static enum relay_client_action
lose_connection(struct relay_client *c, const struct smtp_reply *why)
{
	if (c->state == RELAY_ST_CLOSED)
		return RELAY_ACT_CLOSE;
	if (c->undecided) {
		revert_accepted(c);
		c->undecided = false;
		host_fail(c, why);
	} else if (states[c->state].is_setup) {
		host_fail(c, why);
	}
	buf_reset(&c->out);
	enter_state(c, RELAY_ST_CLOSED);
	return RELAY_ACT_CLOSE;
}

/* The server refused the connection setup: say goodbye (RFC 5321 3.1 after a 554). */
static enum relay_client_action
refuse_host(struct relay_client *c, const struct smtp_reply *r)
{
	host_fail(c, r);
	send_cmd(c, "QUIT");
	enter_state(c, RELAY_ST_CLOSED);
	return RELAY_ACT_CLOSE;
}

static enum relay_client_action
finish(struct relay_client *c)
{
	c->undecided = false;
	enter_state(c, RELAY_ST_IDLE);
	return RELAY_ACT_IDLE;
}

/* Ends a transaction the server still holds open (RFC 5321 4.1.1.5). */
static enum relay_client_action
send_rset(struct relay_client *c)
{
	c->undecided = false;
	send_cmd(c, "RSET");
	enter_state(c, RELAY_ST_RSET);
	return RELAY_ACT_SEND;
}

/* ---- connection setup ------------------------------------------------ */

static bool
keyword_is(const char *line, size_t kw_len, const char *kw)
{
	return kw_len == strlen(kw) && strncasecmp(line, kw, kw_len) == 0;
}

static uint64_t
parse_size(const char *p, const char *end)
{
	uint64_t n = 0;

	while (p < end && *p == ' ')
		p++;
	for (; p < end && *p >= '0' && *p <= '9'; p++) {
		if (n > (UINT64_MAX - 9) / 10)
			return 0; /* beyond any message: as good as no limit */
		n = n * 10 + (uint64_t)(*p - '0');
	}
	return n;
}

/* RFC 5321 4.1.1.1: the first line names the server, each further line is "keyword params". */
static void
parse_ehlo(struct relay_client *c, const struct smtp_reply *r)
{
	const char *p = strchr(r->text, '\n');
	const char *text_end = r->text + strlen(r->text);

	memset(&c->ext, 0, sizeof(c->ext));
	/* A text cut at the limit may end in half a keyword or a SIZE value: drop that line. */
	if ((size_t)(text_end - r->text) >= sizeof(r->text) - 1) {
		const char *last = strrchr(r->text, '\n');
		text_end = last != NULL ? last : r->text;
	}
	while (p != NULL && p < text_end) {
		const char *line = p + 1;
		const char *end = memchr(line, '\n', (size_t)(text_end - line));
		size_t kw_len;

		if (end == NULL)
			end = text_end;
		for (kw_len = 0; line + kw_len < end && line[kw_len] != ' '; kw_len++)
			;
		if (keyword_is(line, kw_len, "PIPELINING")) {
			c->ext.pipelining = true;
		} else if (keyword_is(line, kw_len, "SIZE")) {
			c->ext.size = true;
			c->ext.size_max = parse_size(line + kw_len, end);
		} else if (keyword_is(line, kw_len, "8BITMIME")) {
			c->ext.eightbitmime = true;
		} else if (keyword_is(line, kw_len, "SMTPUTF8")) {
			c->ext.smtputf8 = true;
		} else if (keyword_is(line, kw_len, "STARTTLS")) {
			c->ext.starttls = true;
		} else if (keyword_is(line, kw_len, "CHUNKING")) {
			c->ext.chunking = true;
		}
		p = end < text_end ? end : NULL;
	}
	log_debug("relay ehlo pipelining=%d size=%d size_max=%" PRIu64
		  " 8bitmime=%d smtputf8=%d starttls=%d chunking=%d",
		  c->ext.pipelining, c->ext.size, c->ext.size_max, c->ext.eightbitmime,
		  c->ext.smtputf8, c->ext.starttls, c->ext.chunking);
}

static enum relay_client_action
send_ehlo(struct relay_client *c)
{
	send_cmd(c, "EHLO %s", c->cfg.helo_name);
	enter_state(c, RELAY_ST_EHLO);
	return RELAY_ACT_SEND;
}

static enum relay_client_action
on_greeting(struct relay_client *c, const struct smtp_reply *r)
{
	enum relay_client_action act;

	if (smtp_reply_class(r) == 2)
		return send_ehlo(c);
	/*
	 * A 5xx greeting (RFC 5321 3.1: 554, "no SMTP service here") refuses
	 * this host, not the recipients: the next MX is tried, and when every
	 * one refuses the message waits for a retry (as Postfix's default,
	 * smtp_skip_5xx_greeting).
	 */
	act = refuse_host(c, r);
	c->host_permanent = false;
	return act;
}

static enum relay_client_action
on_ehlo(struct relay_client *c, const struct smtp_reply *r)
{
	switch (smtp_reply_class(r)) {
	case 2:
		break;
	case 5:
		/* RFC 5321 3.2: a server that does not know EHLO may still take HELO. */
		memset(&c->ext, 0, sizeof(c->ext));
		send_cmd(c, "HELO %s", c->cfg.helo_name);
		enter_state(c, RELAY_ST_HELO);
		return RELAY_ACT_SEND;
	default:
		return refuse_host(c, r);
	}
	parse_ehlo(c, r);
	if (c->ext.starttls && c->cfg.tls_wanted && !c->tls) {
		send_cmd(c, "STARTTLS");
		enter_state(c, RELAY_ST_STARTTLS);
		return RELAY_ACT_SEND;
	}
	enter_state(c, RELAY_ST_IDLE);
	return RELAY_ACT_IDLE;
}

static enum relay_client_action
on_helo(struct relay_client *c, const struct smtp_reply *r)
{
	if (smtp_reply_class(r) != 2)
		return refuse_host(c, r);
	enter_state(c, RELAY_ST_IDLE);
	return RELAY_ACT_IDLE;
}

static enum relay_client_action
on_starttls(struct relay_client *c, const struct smtp_reply *r)
{
	if (smtp_reply_class(r) == 2) {
		enter_state(c, RELAY_ST_TLS);
		return RELAY_ACT_STARTTLS;
	}
	/* 421: the server is closing the connection (RFC 5321 3.8). */
	if (r->code == 421)
		return refuse_host(c, r);
	/*
	 * TLS is opportunistic: a refused STARTTLS leaves the session as the
	 * EHLO reply described it, so the mail goes in plaintext.
	 */
	enter_state(c, RELAY_ST_IDLE);
	return RELAY_ACT_IDLE;
}

/*
 * A reply nobody asked for: while idle it is usually a 421 before the
 * server hangs up.  The connection cannot be trusted to stay in step.
 * (Input during the TLS handshake never gets here: relay_client_feed
 * refuses it first.)
 */
static enum relay_client_action
on_unexpected(struct relay_client *c, const struct smtp_reply *r)
{
	struct smtp_reply why;
	char esc[128];

	log_debug("relay unexpected reply state=%s code=%d text=%s", states[c->state].name, r->code,
		  util_log_escape(esc, sizeof(esc), r->text, strlen(r->text)));
	make_reply(&why, 421, "4.4.2", "unexpected reply from server (%d)", r->code);
	return lose_connection(c, &why);
}

/* ---- the transaction ------------------------------------------------- */

/*
 * Addresses come from our queue, already validated; still, a CR or LF in
 * one would let it add a command of its own.  ('<' and '>' are legal in a
 * quoted local part.)
 */
static bool
addr_ok(const char *a, bool may_be_empty)
{
	size_t len = strlen(a);

	if (len == 0)
		return may_be_empty;
	if (len > ADDR_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)a[i];
		if (ch < 0x20 || ch == 0x7f)
			return false;
	}
	return true;
}

/* The next recipient from i on that goes to the server, or rcpts_used. */
static size_t
next_rcpt(const struct relay_client *c, size_t i)
{
	while (i < c->rcpts_used && !addr_ok(c->msg.rcpts[i], false))
		i++;
	return i;
}

static void
send_rcpt(struct relay_client *c, size_t i)
{
	send_cmd(c, "RCPT TO:<%s>", c->msg.rcpts[i]);
}

static void
send_mail(struct relay_client *c)
{
	char size[32] = "";

	if (c->ext.size)
		snprintf(size, sizeof(size), " SIZE=%" PRIu64, c->msg.size);
	send_cmd(c, "MAIL FROM:<%s>%s%s%s", c->msg.sender, size,
		 c->msg.body_8bit && c->ext.eightbitmime ? " BODY=8BITMIME" : "",
		 c->msg.smtputf8 ? " SMTPUTF8" : "");
}

/* Gives every recipient from `from` on the same synthesized verdict. */
static void __attribute__((format(printf, 6, 7)))
decide_rest(struct relay_client *c, size_t from, enum relay_rcpt_status st, int code,
	    const char *enhanced, const char *fmt, ...)
{
	struct smtp_reply r;
	va_list ap;

	va_start(ap, fmt);
	vmake_reply(&r, code, enhanced, fmt, ap);
	va_end(ap);
	for (size_t i = from; i < c->msg.rcpts_len; i++) {
		c->results[i].status = st;
		c->results[i].reply = r;
	}
}

/* Refusals decided here, before anything is sent; false when nothing is left to send. */
static bool
precheck(struct relay_client *c)
{
	const struct relay_client_msg *m = &c->msg;
	size_t sendable = 0;

	if (!addr_ok(m->sender, true)) {
		decide_rest(c, 0, RELAY_RCPT_PERM, 501, "5.1.7", "bad sender address syntax");
		return false;
	}
	if (m->smtputf8 && !c->ext.smtputf8) {
		/* RFC 6531 3.2: without the extension the message cannot be relayed as it is. */
		decide_rest(c, 0, RELAY_RCPT_PERM, 550, "5.6.7",
			    "remote server does not support SMTPUTF8");
		return false;
	}
	if (c->ext.size && c->ext.size_max > 0 && m->size > c->ext.size_max) {
		decide_rest(c, 0, RELAY_RCPT_PERM, 552, "5.3.4",
			    "message too big for the remote server (%" PRIu64 " > %" PRIu64 ")",
			    m->size, c->ext.size_max);
		return false;
	}
	c->rcpts_used = m->rcpts_len < RCPTS_MAX ? m->rcpts_len : RCPTS_MAX;
	decide_rest(c, c->rcpts_used, RELAY_RCPT_TEMP, 452, "4.5.3",
		    "too many recipients for one transaction");
	for (size_t i = 0; i < c->rcpts_used; i++) {
		if (addr_ok(m->rcpts[i], false)) {
			sendable++;
			continue;
		}
		make_reply(&c->results[i].reply, 501, "5.1.3", "bad recipient address syntax");
		c->results[i].status = RELAY_RCPT_PERM;
	}
	return sendable > 0;
}

enum relay_client_action
relay_client_start(struct relay_client *c, const struct relay_client_msg *m)
{
	if (c->state != RELAY_ST_IDLE && c->state != RELAY_ST_CLOSED) {
		log_err("relay_client_start in state %s", states[c->state].name);
		abort();
	}
	free(c->results);
	c->msg = *m;
	c->results = xcalloc(m->rcpts_len ? m->rcpts_len : 1, sizeof(*c->results));
	c->rcpts_used = 0;
	c->accepted = 0;
	c->mail_failed = false;
	c->has_host_error = false;
	c->host_permanent = false;
	memset(&c->host_reply, 0, sizeof(c->host_reply));
	if (c->state == RELAY_ST_CLOSED) {
		/* The connection died between transactions: a host failure, nothing decided. */
		c->has_host_error = true;
		make_reply(&c->host_reply, 421, "4.4.2", "connection already closed");
		return RELAY_ACT_CLOSE;
	}
	if (!precheck(c))
		return RELAY_ACT_IDLE;
	c->undecided = true;
	c->pipelined = c->ext.pipelining;
	c->rcpt_next = next_rcpt(c, 0);
	send_mail(c);
	if (c->pipelined) {
		/* RFC 2920 3.1: MAIL, RCPT and DATA may all go in one group; DATA ends it. */
		for (size_t i = c->rcpt_next; i < c->rcpts_used; i = next_rcpt(c, i + 1))
			send_rcpt(c, i);
		send_cmd(c, "DATA");
	}
	enter_state(c, RELAY_ST_MAIL);
	return RELAY_ACT_SEND;
}

static enum relay_client_action
on_mail(struct relay_client *c, const struct smtp_reply *r)
{
	if (smtp_reply_class(r) != 2) {
		/* Nothing was decided for the recipients: they stay PENDING for the next MX. */
		host_fail(c, r);
		c->undecided = false;
		c->mail_failed = true;
		if (!c->pipelined)
			return send_rset(c);
		/* The RCPT and DATA replies are on their way (RFC 2920 3.2): read them first. */
	} else if (!c->pipelined) {
		send_rcpt(c, c->rcpt_next);
		enter_state(c, RELAY_ST_RCPT);
		return RELAY_ACT_SEND;
	}
	enter_state(c, RELAY_ST_RCPT);
	return RELAY_ACT_NONE;
}

static enum relay_client_action
on_rcpt(struct relay_client *c, const struct smtp_reply *r)
{
	struct relay_rcpt_result *res = &c->results[c->rcpt_next];

	/* After a refused MAIL, a RCPT reply says nothing about the recipient (likely a 503). */
	if (!c->mail_failed) {
		res->reply = *r;
		switch (smtp_reply_class(r)) {
		case 2:
			res->status = RELAY_RCPT_OK; /* tentative: the end of data decides */
			c->accepted++;
			break;
		case 5:
			res->status = RELAY_RCPT_PERM;
			break;
		default:
			res->status = RELAY_RCPT_TEMP;
			break;
		}
	}
	c->rcpt_next = next_rcpt(c, c->rcpt_next + 1);
	if (c->rcpt_next < c->rcpts_used) {
		if (c->pipelined)
			return RELAY_ACT_NONE;
		send_rcpt(c, c->rcpt_next);
		return RELAY_ACT_SEND;
	}
	if (c->accepted == 0)
		c->undecided = false; /* every recipient has its verdict */
	if (c->pipelined) {
		enter_state(c, RELAY_ST_DATA);
		return RELAY_ACT_NONE;
	}
	if (c->accepted == 0)
		return send_rset(c);
	send_cmd(c, "DATA");
	enter_state(c, RELAY_ST_DATA);
	return RELAY_ACT_SEND;
}

/* Gives every tentatively accepted recipient the server's verdict on the message. */
static void
decide_accepted(struct relay_client *c, const struct smtp_reply *r)
{
	enum relay_rcpt_status st;

	switch (smtp_reply_class(r)) {
	case 2:
		st = RELAY_RCPT_OK;
		break;
	case 5:
		st = RELAY_RCPT_PERM;
		break;
	default:
		st = RELAY_RCPT_TEMP;
		break;
	}
	for (size_t i = 0; i < c->msg.rcpts_len; i++)
		if (c->results[i].status == RELAY_RCPT_OK) {
			c->results[i].status = st;
			c->results[i].reply = *r;
		}
	c->undecided = false;
}

/*
 * A reply that makes no sense where it came (250 to DATA, 354 after the
 * body): whatever the server thinks happened, it did not take the message.
 */
static enum relay_client_action
protocol_error(struct relay_client *c, const struct smtp_reply *r)
{
	struct smtp_reply why;

	make_reply(&why, 451, "4.5.0", "unexpected reply %d in state %s", r->code,
		   states[c->state].name);
	return lose_connection(c, &why);
}

static enum relay_client_action
on_data(struct relay_client *c, const struct smtp_reply *r)
{
	switch (r->code / 100) {
	case 3:
		break;
	case 4:
	case 5:
		if (c->accepted > 0)
			decide_accepted(c, r);
		return send_rset(c);
	default:
		return protocol_error(c, r);
	}
	if (c->accepted > 0) {
		enter_state(c, RELAY_ST_BODY);
		return RELAY_ACT_BODY;
	}
	/*
	 * Pipelined DATA after no accepted recipient, and the server said 354
	 * anyway: the only way out of the data state is an empty message,
	 * which it should refuse (RFC 2920 3.1).
	 */
	send_cmd(c, ".");
	enter_state(c, RELAY_ST_EMPTY_DOT);
	return RELAY_ACT_SEND;
}

void
relay_client_body_sent(struct relay_client *c)
{
	if (c->state == RELAY_ST_CLOSED)
		return;
	if (c->state != RELAY_ST_BODY) {
		log_err("relay_client_body_sent in state %s", states[c->state].name);
		abort();
	}
	enter_state(c, RELAY_ST_DOT);
}

static enum relay_client_action
on_dot(struct relay_client *c, const struct smtp_reply *r)
{
	if (smtp_reply_class(r) == 0)
		return protocol_error(c, r);
	decide_accepted(c, r);
	return finish(c);
}

static enum relay_client_action
on_empty_dot(struct relay_client *c, const struct smtp_reply *r)
{
	return finish(c);
}

static enum relay_client_action
on_rset(struct relay_client *c, const struct smtp_reply *r)
{
	if (smtp_reply_class(r) == 2)
		return finish(c);
	/* The server is in a state we do not know: do not reuse the connection. */
	send_cmd(c, "QUIT");
	enter_state(c, RELAY_ST_CLOSED);
	return RELAY_ACT_CLOSE;
}

static const struct state_info states[RELAY_ST_COUNT] = {
    [RELAY_ST_GREETING] = {"greeting", on_greeting, true},
    [RELAY_ST_EHLO] = {"ehlo", on_ehlo, true},
    [RELAY_ST_HELO] = {"helo", on_helo, true},
    [RELAY_ST_STARTTLS] = {"starttls", on_starttls, true},
    [RELAY_ST_TLS] = {"tls", on_unexpected, true},
    [RELAY_ST_IDLE] = {"idle", on_unexpected, false},
    [RELAY_ST_MAIL] = {"mail", on_mail, false},
    [RELAY_ST_RCPT] = {"rcpt", on_rcpt, false},
    [RELAY_ST_DATA] = {"data", on_data, false},
    [RELAY_ST_BODY] = {"body", on_unexpected, false},
    [RELAY_ST_DOT] = {"dot", on_dot, false},
    [RELAY_ST_EMPTY_DOT] = {"empty-dot", on_empty_dot, false},
    [RELAY_ST_RSET] = {"rset", on_rset, false},
    [RELAY_ST_CLOSED] = {"closed", on_unexpected, false},
};

/* ---- the interface ----------------------------------------------------- */

struct relay_client *
relay_client_new(const struct relay_client_conf *cfg)
{
	struct relay_client *c;

	/* The name comes from the validated configuration; a bad one is our bug. */
	if (cfg->helo_name == NULL || !addr_ok(cfg->helo_name, false) ||
	    strlen(cfg->helo_name) > HELO_MAX || strchr(cfg->helo_name, ' ') != NULL) {
		log_err("relay_client_new: invalid helo_name");
		abort();
	}
	c = xcalloc(1, sizeof(*c));
	c->cfg = *cfg;
	c->state = RELAY_ST_GREETING;
	smtp_reply_parser_init(&c->parser);
	buf_init(&c->out, OUTPUT_MAX);
	return c;
}

void
relay_client_free(struct relay_client *c)
{
	if (c == NULL)
		return;
	buf_free(&c->out);
	free(c->results);
	free(c);
}

struct buf *
relay_client_output(struct relay_client *c)
{
	return &c->out;
}

size_t
relay_client_feed(struct relay_client *c, const char *in, size_t len, enum relay_client_action *act)
{
	size_t used = 0;

	*act = RELAY_ACT_NONE;
	if (c->state == RELAY_ST_CLOSED) {
		*act = RELAY_ACT_CLOSE;
		return len; /* nothing the server says matters any more */
	}
	/* A reply during the body (an early rejection) is read after it: RFC 5321 4.1.1.4. */
	if (c->state == RELAY_ST_BODY)
		return 0;
	if (c->state == RELAY_ST_TLS && len > 0) {
		/*
		 * Octets after "220" and before the handshake would be read as
		 * replies under TLS: a man in the middle's injection (the
		 * client-side twin of CVE-2011-0411).  Refuse, do not guess.
		 */
		struct smtp_reply why;

		make_reply(&why, 421, "4.7.0", "plaintext data after STARTTLS");
		*act = lose_connection(c, &why);
		return len;
	}
	while (used < len && *act == RELAY_ACT_NONE) {
		struct smtp_reply r;
		size_t n = 0;

		switch (smtp_reply_parse(&c->parser, in + used, len - used, &n, &r)) {
		case SMTP_REPLY_MORE:
			used += n; /* all of it: the loop ends */
			break;
		case SMTP_REPLY_ERROR: {
			struct smtp_reply why;

			used += n;
			make_reply(&why, 451, "4.4.2", "bad reply from server");
			*act = lose_connection(c, &why);
			break;
		}
		case SMTP_REPLY_DONE:
			used += n;
			*act = states[c->state].on_reply(c, &r);
			break;
		}
	}
	if (*act == RELAY_ACT_NONE && c->state == RELAY_ST_CLOSED)
		*act = RELAY_ACT_CLOSE;
	return used;
}

enum relay_client_action
relay_client_tls_done(struct relay_client *c, bool ok)
{
	struct smtp_reply why;

	if (c->state == RELAY_ST_CLOSED)
		return RELAY_ACT_CLOSE;
	if (c->state != RELAY_ST_TLS) {
		log_err("relay_client_tls_done in state %s", states[c->state].name);
		abort();
	}
	if (!ok) {
		make_reply(&why, 421, "4.7.0", "TLS handshake failed");
		return lose_connection(c, &why);
	}
	/* RFC 3207 4.2: forget everything learned before TLS, and ask again. */
	c->tls = true;
	memset(&c->ext, 0, sizeof(c->ext));
	smtp_reply_parser_init(&c->parser);
	return send_ehlo(c);
}

enum relay_client_action
relay_client_quit(struct relay_client *c)
{
	struct smtp_reply why;
	bool can_send = c->state != RELAY_ST_BODY && c->state != RELAY_ST_TLS;

	if (c->state == RELAY_ST_CLOSED)
		return RELAY_ACT_CLOSE;
	make_reply(&why, 421, "4.4.2", "connection closed by the client");
	lose_connection(c, &why);
	if (can_send)
		send_cmd(c, "QUIT");
	return RELAY_ACT_CLOSE;
}

void
relay_client_abort(struct relay_client *c, const char *why)
{
	struct smtp_reply r;

	make_reply(&r, 421, "4.4.2", "connection lost: %s", why);
	lose_connection(c, &r);
}

const struct relay_rcpt_result *
relay_client_results(const struct relay_client *c)
{
	return c->results;
}

bool
relay_client_host_error(const struct relay_client *c, bool *permanent,
			const struct smtp_reply **reply)
{
	*permanent = c->has_host_error && c->host_permanent;
	*reply = c->has_host_error ? &c->host_reply : NULL;
	return c->has_host_error;
}

bool
relay_client_has_tls(const struct relay_client *c)
{
	return c->ext.starttls || c->tls; /* the EHLO after TLS no longer lists it */
}

bool
relay_client_tls_active(const struct relay_client *c)
{
	return c->tls;
}
