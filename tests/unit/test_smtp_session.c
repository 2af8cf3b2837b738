/*
 * Unit tests for smtp_session: the state machine without sockets.
 *
 * A small driver plays the glue (server/): it feeds client bytes, keeps what
 * the session did not consume, collects the replies, takes the body on
 * BODY / MESSAGE_END, commits at once on MESSAGE_END, calls tls_started on
 * STARTTLS and stops at CLOSE.  Like server_conn.c it calls the session only
 * while unread input is pending.
 *
 * A case is a list of steps: the client sends some bytes, then waits for
 * exactly the replies expected.  Every case runs three ways, each step's
 * bytes given all at once, line by line and byte by byte: a pipelining client
 * and a slow one must see the same replies, events and messages.  In each,
 * every 4xx and 5xx reply but AUTH's 535 must have been told to the policy's
 * refused(), once and in order.
 */
#include "smtp/smtp_session.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/util_mem.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- text ------------------------------------------------------------- */

struct text {
	char *p; /* owned, NUL-terminated */
	size_t len;
	size_t cap;
};

static void
text_add(struct text *t, const char *p, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		t->cap = (t->len + n + 1) * 2;
		t->p = xrealloc(t->p, t->cap);
	}
	memcpy(t->p + t->len, p, n);
	t->len += n;
	t->p[t->len] = '\0';
}

static void __attribute__((format(printf, 2, 3))) text_printf(struct text *t, const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	assert_true(n >= 0 && (size_t)n < sizeof(line));
	text_add(t, line, (size_t)n);
}

static const char *
text_str(const struct text *t)
{
	return t->p != NULL ? t->p : "";
}

static void
text_free(struct text *t)
{
	free(t->p);
	*t = (struct text){0};
}

/* ---- the fake policy -------------------------------------------------- */

struct fake_policy {
	size_t calls;		 /* of check_rcpt */
	struct text refusals;	 /* what refused() was told, a line each (note_refusal) */
	struct text refused_rep; /* the reply lines it was told, each ended by "\n" */
};

static const struct {
	const char *addr;
	enum smtp_rcpt_verdict verdict;
} policy_table[] = {
    {"unknown@local.test", SMTP_RCPT_UNKNOWN_USER},
    {"bad@local.test", SMTP_RCPT_BAD_MAILBOX},
    {"relay@remote.test", SMTP_RCPT_RELAY_DENIED},
    {"temp@local.test", SMTP_RCPT_TEMPFAIL},
};

/* Addresses not in the table are accepted. */
static enum smtp_rcpt_verdict
check_rcpt(void *ctx, const struct smtp_path *rcpt)
{
	struct fake_policy *fp = ctx;

	fp->calls++;
	for (size_t i = 0; i < ARRAY_LEN(policy_table); i++)
		if (strcasecmp(rcpt->addr, policy_table[i].addr) == 0)
			return policy_table[i].verdict;
	return SMTP_RCPT_ACCEPT;
}

/* " key=<value>" when there is a value: as the glue logs it, but unescaped. */
static void
note_field(struct text *t, const char *key, const char *val, size_t len)
{
	if (val != NULL)
		text_printf(t, " %s=<%.*s>", key, (int)len, val);
}

/*
 * Records a refusal as "CMD/kind reply; from=<..> to=<..> nrcpt=N
 * helo=<..>", the fields there only when set (nrcpt when not 0).
 */
static void
note_refusal(void *ctx, const struct smtp_refusal *r)
{
	struct fake_policy *fp = ctx;

	assert_non_null(r->command);
	assert_true(r->reply_len >= 4);
	assert_true(r->reply[0] == '4' || r->reply[0] == '5');
	assert_null(memchr(r->reply, '\n', r->reply_len));
	assert_null(memchr(r->reply, '\r', r->reply_len));
	text_add(&fp->refused_rep, r->reply, r->reply_len);
	text_add(&fp->refused_rep, "\n", 1);
	text_printf(&fp->refusals, "%s/%s %.*s;", r->command,
		    r->kind == SMTP_REFUSAL_MAIL ? "mail" : "protocol", (int)r->reply_len,
		    r->reply);
	note_field(&fp->refusals, "from", r->sender, r->sender_len);
	note_field(&fp->refusals, "to", r->rcpt, r->rcpt_len);
	if (r->nrcpt > 0)
		text_printf(&fp->refusals, " nrcpt=%zu", r->nrcpt);
	note_field(&fp->refusals, "helo", r->helo, r->helo_len);
	text_add(&fp->refusals, "\n", 1);
}

static void
fake_policy_free(struct fake_policy *fp)
{
	text_free(&fp->refusals);
	text_free(&fp->refused_rep);
}

/* ---- the driver ------------------------------------------------------- */

#define MSGS_MAX 4

struct opts {
	uint64_t max_size; /* 0: 1000000 */
	size_t max_rcpts;  /* 0: 100 */
	bool starttls;
	bool auth;	   /* AUTH offered (under TLS) */
	bool submission;   /* MAIL needs AUTH */
	size_t max_errors; /* 0: the session's default */
	bool refuse_nul;
	enum smtp_commit_result commit;
};

struct glue {
	const char *name; /* borrowed: case and mode, for failures */
	struct smtp_session *s;
	enum smtp_commit_result commit;
	struct fake_policy policy;
	struct text refused_want; /* the 4xx and 5xx replies refused() must have been told */
	struct text pending;	  /* client bytes not consumed yet, from pending_off */
	size_t pending_off;
	struct text replies; /* reply lines, each ended by "\n" instead of CRLF */
	struct text events;  /* event names, space-separated */
	struct text msg;     /* the message being received */
	bool in_message;
	struct text msgs[MSGS_MAX]; /* messages that reached MESSAGE_END */
	size_t msgs_len;
	bool closed;
};

static const char *const event_names[] = {
    [SMTP_EVENT_NONE] = "NONE",		  [SMTP_EVENT_MESSAGE_BEGIN] = "BEGIN",
    [SMTP_EVENT_BODY] = "BODY",		  [SMTP_EVENT_MESSAGE_END] = "END",
    [SMTP_EVENT_MESSAGE_ABORT] = "ABORT", [SMTP_EVENT_STARTTLS] = "STARTTLS",
    [SMTP_EVENT_AUTH] = "AUTH",		  [SMTP_EVENT_CLOSE] = "CLOSE",
};

/* A session for the options, with fp as its policy's state. */
static struct smtp_session *
session_new(const struct opts *o, struct fake_policy *fp)
{
	struct smtp_session_conf cfg = {
	    .hostname = "mx.test",
	    .max_message_size = o->max_size ? o->max_size : 1000000,
	    .max_recipients = o->max_rcpts ? o->max_rcpts : 100,
	    .starttls_offered = o->starttls,
	    .auth_offered = o->auth,
	    .auth_required = o->submission,
	    .max_errors = o->max_errors,
	    .refuse_nul = o->refuse_nul,
	};
	struct smtp_policy policy = {.ctx = fp, .check_rcpt = check_rcpt, .refused = note_refusal};
	struct smtp_session *s = smtp_session_new(&cfg, &policy);

	assert_non_null(s);
	return s;
}

static void
glue_init(struct glue *g, const char *name, const struct opts *o)
{
	*g = (struct glue){.name = name, .commit = o->commit};
	g->s = session_new(o, &g->policy);
}

static void
glue_free(struct glue *g)
{
	smtp_session_free(g->s);
	fake_policy_free(&g->policy);
	text_free(&g->refused_want);
	text_free(&g->pending);
	text_free(&g->replies);
	text_free(&g->events);
	text_free(&g->msg);
	for (size_t i = 0; i < g->msgs_len; i++)
		text_free(&g->msgs[i]);
}

/* Moves the session's replies to g->replies; each must be one CRLF-ended line. */
static void
collect_output(struct glue *g)
{
	struct buf *out = smtp_session_output(g->s);
	size_t i = 0;

	while (i < out->len) {
		const char *p = out->data + i;
		const char *crlf = memmem(p, out->len - i, "\r\n", 2);
		size_t n;

		if (crlf == NULL)
			fail_msg("%s: reply without CRLF: %.*s", g->name, (int)(out->len - i), p);
		n = (size_t)(crlf - p);
		if (memchr(p, '\n', n) != NULL || memchr(p, '\r', n) != NULL)
			fail_msg("%s: bare CR or LF in reply: %.*s", g->name, (int)n, p);
		text_add(&g->replies, p, n);
		text_add(&g->replies, "\n", 1);
		if ((p[0] == '4' || p[0] == '5') && strncmp(p, "535 ", 4) != 0) {
			text_add(&g->refused_want, p, n);
			text_add(&g->refused_want, "\n", 1);
		}
		i += n + 2;
	}
	buf_reset(out);
}

static void
note_event(struct glue *g, enum smtp_event ev)
{
	if (g->events.len > 0)
		text_add(&g->events, " ", 1);
	text_add(&g->events, event_names[ev], strlen(event_names[ev]));
}

static void
take_body(struct glue *g)
{
	const char *data;
	size_t len;

	smtp_session_body_take(g->s, &data, &len);
	text_add(&g->msg, data, len);
}

static void
drop_pending(struct glue *g)
{
	g->pending.len = 0;
	g->pending_off = 0;
}

static void
handle_event(struct glue *g, enum smtp_event ev)
{
	if (ev != SMTP_EVENT_NONE)
		note_event(g, ev);
	switch (ev) {
	case SMTP_EVENT_NONE:
		break;
	case SMTP_EVENT_MESSAGE_BEGIN:
		if (g->in_message)
			fail_msg("%s: MESSAGE_BEGIN inside a message", g->name);
		g->in_message = true;
		g->msg.len = 0;
		break;
	case SMTP_EVENT_BODY:
		if (!g->in_message)
			fail_msg("%s: BODY outside a message", g->name);
		take_body(g);
		break;
	case SMTP_EVENT_MESSAGE_END:
		if (!g->in_message)
			fail_msg("%s: MESSAGE_END outside a message", g->name);
		take_body(g);
		assert_true(g->msgs_len < MSGS_MAX);
		g->msgs[g->msgs_len++] = g->msg;
		g->msg = (struct text){0};
		g->in_message = false;
		assert_int_equal(smtp_session_state(g->s), SMTP_STATE_COMMIT);
		smtp_session_commit_done(g->s, g->commit, "ID");
		break;
	case SMTP_EVENT_MESSAGE_ABORT:
		if (!g->in_message)
			fail_msg("%s: MESSAGE_ABORT outside a message", g->name);
		g->in_message = false;
		g->msg.len = 0;
		break;
	case SMTP_EVENT_STARTTLS:
		/* The glue drops all unread input: it was sent before the handshake. */
		drop_pending(g);
		smtp_session_tls_started(g->s);
		break;
	case SMTP_EVENT_AUTH: {
		/* The glue checks the password; here one user and password exist. */
		const char *user, *password;
		smtp_session_auth_take(g->s, &user, &password);
		smtp_session_auth_done(g->s, strcmp(user, "alice@example.test") == 0 &&
						 strcmp(password, "secret") == 0);
		break;
	}
	case SMTP_EVENT_CLOSE:
		g->closed = true;
		drop_pending(g);
		break;
	}
	collect_output(g);
}

/* The glue's read loop: feed while input is pending, act on each event. */
static void
glue_input(struct glue *g, const char *p, size_t n)
{
	if (g->closed)
		return;
	if (g->pending_off > 0) {
		memmove(g->pending.p, g->pending.p + g->pending_off,
			g->pending.len - g->pending_off);
		g->pending.len -= g->pending_off;
		g->pending_off = 0;
	}
	text_add(&g->pending, p, n);
	/* As the session asks: after an event, feed again even with no input left. */
	for (enum smtp_event last = SMTP_EVENT_NONE;
	     !g->closed && (g->pending_off < g->pending.len || last != SMTP_EVENT_NONE);) {
		size_t left = g->pending.len - g->pending_off;
		enum smtp_event ev = (enum smtp_event) - 1;
		size_t used = smtp_session_feed(g->s, g->pending.p + g->pending_off, left, &ev);

		if (used > left || ev < SMTP_EVENT_NONE || ev > SMTP_EVENT_CLOSE)
			fail_msg("%s: feed used %zu of %zu, event %d", g->name, used, left,
				 (int)ev);
		g->pending_off += used;
		collect_output(g);
		handle_event(g, ev);
		last = ev;
		if (used == 0 && ev == SMTP_EVENT_NONE)
			break; /* a partial line: wait for more */
	}
}

enum feed_mode { FEED_ALL, FEED_LINES, FEED_BYTES };

static const char *const mode_names[] = {
    [FEED_ALL] = "all at once",
    [FEED_LINES] = "line by line",
    [FEED_BYTES] = "byte by byte",
};

static void
glue_send(struct glue *g, const char *p, size_t n, enum feed_mode mode)
{
	size_t i = 0;

	switch (mode) {
	case FEED_ALL:
		glue_input(g, p, n);
		break;
	case FEED_LINES:
		while (i < n) {
			const char *lf = memchr(p + i, '\n', n - i);
			size_t k = lf != NULL ? (size_t)(lf - (p + i)) + 1 : n - i;

			glue_input(g, p + i, k);
			i += k;
		}
		break;
	case FEED_BYTES:
		for (i = 0; i < n; i++)
			glue_input(g, p + i, 1);
		break;
	}
}

/* Takes the replies collected so far and compares them with want ("\n"-separated lines). */
static void
expect_replies(struct glue *g, const char *want, const char *where)
{
	const char *got = g->replies.p != NULL ? g->replies.p : "";

	if (strcmp(got, want) != 0)
		fail_msg("%s, %s: replies differ\n--- got:\n%s--- want:\n%s---", g->name, where,
			 got, want);
	g->replies.len = 0;
	if (g->replies.p != NULL)
		g->replies.p[0] = '\0';
}

/* ---- the case table --------------------------------------------------- */

#define STEPS_MAX 28

struct step {
	const char *send; /* borrowed; may hold NULs */
	size_t send_len;
	const char *expect; /* reply lines, each ended by "\n" */
};

struct msg {
	const char *p;
	size_t len;
};

struct session_case {
	const char *name;
	struct opts opt;
	struct step steps[STEPS_MAX]; /* ended by send == NULL */
	const char *events;	      /* expected event trace */
	const char *refusals;	      /* NULL, or what refused() must be told (note_refusal) */
	struct msg msgs[MSGS_MAX];    /* messages expected at MESSAGE_END, ended by p == NULL */
	enum smtp_state state;	      /* expected at the end */
};

#define STEP(s, e)                                                                                 \
	{                                                                                          \
		.send = (s), .send_len = sizeof(s) - 1, .expect = (e)                              \
	}
#define MSG(s)                                                                                     \
	{                                                                                          \
		.p = (s), .len = sizeof(s) - 1                                                     \
	}

#define GREETING  "220 mx.test ESMTP petrel\n"
#define EHLO_HEAD "250-mx.test\n250-PIPELINING\n250-SIZE 1000000\n"
#define EHLO_TAIL "250-ENHANCEDSTATUSCODES\n250-8BITMIME\n250-SMTPUTF8\n250 CHUNKING\n"
#define EHLO_OK	  EHLO_HEAD EHLO_TAIL
#define EHLO_TLS  EHLO_HEAD "250-STARTTLS\n" EHLO_TAIL
#define MAIL_OK	  "250 2.1.0 Ok\n"
#define RCPT_OK	  "250 2.1.5 Ok\n"
#define DATA_GO	  "354 End data with <CR><LF>.<CR><LF>\n"
#define QUEUED	  "250 2.0.0 Ok: queued as ID\n"
#define OK	  "250 2.0.0 Ok\n"
#define BYE	  "221 2.0.0 Bye\n"

#define NO_HELO	      "503 5.5.1 Error: send HELO/EHLO first\n"
#define NEED_MAIL     "503 5.5.1 Error: need MAIL command\n"
#define NESTED	      "503 5.5.1 Error: nested MAIL command\n"
#define IN_BDAT	      "503 5.5.1 Error: BDAT transaction in progress\n"
#define NO_RCPTS      "554 5.5.1 Error: no valid recipients\n"
#define TLS_IN_TXN    "503 5.5.1 Error: STARTTLS not allowed in a mail transaction\n"
#define NOT_IMPL      "502 5.5.1 Error: command not implemented\n"
#define UNKNOWN_CMD   "500 5.5.2 Error: command not recognized\n"
#define BAD_CHARS     "500 5.5.2 Error: invalid characters in command\n"
#define TOO_LONG      "500 5.5.2 Error: command line too long\n"
#define AUTH_TOO_LONG "501 5.5.2 Error: authentication response too long\n"
#define BARE_EOL      "550 5.6.0 Error: bare CR or LF in message; use CRLF line ends\n"
#define LONG_LINE     "550 5.6.0 Error: message has a line over 1000 octets (RFC 5321 4.5.3.1.6)\n"
#define TOO_BIG	      "552 5.3.4 Error: message size exceeds fixed limit\n"
#define NUL_IN_MSG    "550 5.6.0 Error: NUL octet in message\n"
#define BDAT_SYNTAX   "501 5.5.4 Syntax: BDAT size [LAST]\n"
#define HELP_TEXT                                                                                  \
	"214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT\n"             \
	"214 2.0.0 See RFC 5321\n"

#define EHLO_STEP STEP("EHLO client.test\r\n", EHLO_OK)
#define QUIT_STEP STEP("QUIT\r\n", BYE)
#define MAIL_STEP STEP("MAIL FROM:<a@b.test>\r\n", MAIL_OK)
#define RCPT_STEP STEP("RCPT TO:<c@d.test>\r\n", RCPT_OK)

#define CLOSED SMTP_STATE_CLOSED
/* A local part one octet over RFC 5321 4.5.3.1.1. */
#define LOCAL_65 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

static const struct session_case cases[] = {
    {"greeting and QUIT", .steps = {QUIT_STEP}, .events = "CLOSE", .state = CLOSED},
    {"QUIT stops reading",
     .steps = {EHLO_STEP, STEP("QUIT\r\nNOOP\r\nMAIL FROM:<a@b.test>\r\n", BYE)}, .events = "CLOSE",
     .state = CLOSED},
    {"EHLO", .steps = {EHLO_STEP, STEP("ehlo other.test\r\n", EHLO_OK), QUIT_STEP},
     .events = "CLOSE", .state = CLOSED},
    {"HELO",
     .steps = {STEP("HELO client.test\r\n", "250 mx.test\n"), MAIL_STEP, RCPT_STEP,
	       STEP("DATA\r\n", DATA_GO), STEP("hi\r\n.\r\n", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("hi\r\n")}, .state = CLOSED},
    {"HELO and EHLO syntax",
     .steps = {STEP("HELO\r\n", "501 5.5.4 Syntax: HELO hostname\n"),
	       STEP("EHLO\r\n", "501 5.5.4 Syntax: EHLO hostname\n"),
	       STEP("EHLO two words\r\n", "501 5.5.4 Syntax: EHLO hostname\n"),
	       STEP("MAIL FROM:<a@b.test>\r\n", NO_HELO), EHLO_STEP, QUIT_STEP},
     .events = "CLOSE", .state = CLOSED},

    /* RFC 5321 4.1.4: commands out of order get a 503 and change nothing. */
    {"sequence errors before HELO",
     .steps = {STEP("MAIL FROM:<a@b.test>\r\n", NO_HELO), STEP("RCPT TO:<c@d.test>\r\n", NO_HELO),
	       STEP("DATA\r\n", NO_HELO), STEP("BDAT 0 LAST\r\n", NO_HELO), STEP("RSET\r\n", OK),
	       STEP("NOOP\r\n", OK), EHLO_STEP, MAIL_STEP, QUIT_STEP},
     .events = "CLOSE", .state = CLOSED},
    {"sequence errors in a transaction",
     .steps = {EHLO_STEP, STEP("RCPT TO:<c@d.test>\r\n", NEED_MAIL), STEP("DATA\r\n", NEED_MAIL),
	       STEP("BDAT 3\r\nabc", NEED_MAIL), MAIL_STEP,
	       STEP("MAIL FROM:<x@b.test>\r\n", NESTED), STEP("DATA\r\n", NO_RCPTS),
	       STEP("BDAT 3 LAST\r\nabc", NO_RCPTS), RCPT_STEP,
	       STEP("MAIL FROM:<x@b.test>\r\n", NESTED), STEP("STARTTLS\r\n", TLS_IN_TXN),
	       STEP("DATA\r\n", DATA_GO), STEP("ok\r\n.\r\n", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("ok\r\n")}, .state = CLOSED},
    {"sequence errors between BDAT chunks",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 2\r\nab", "250 2.0.0 2 octets received\n"),
	       STEP("MAIL FROM:<x@b.test>\r\n", IN_BDAT), STEP("RCPT TO:<e@d.test>\r\n", IN_BDAT),
	       STEP("DATA\r\n", IN_BDAT), STEP("HELO client.test\r\n", IN_BDAT),
	       STEP("EHLO client.test\r\n", IN_BDAT), STEP("EXPN list\r\n", IN_BDAT),
	       STEP("AUTH PLAIN\r\n", IN_BDAT), STEP("STARTTLS\r\n", TLS_IN_TXN),
	       STEP("NOOP\r\n", OK), STEP("BDAT 1 LAST\r\nc", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("abc")}, .state = CLOSED},

    /* MAIL and RCPT arguments. */
    {"MAIL and RCPT parameters",
     .steps = {EHLO_STEP,
	       STEP("MAIL FROM:<a@b.test> FOO=bar\r\n", "555 5.5.4 Unsupported MAIL parameter\n"),
	       STEP("MAIL FROM:<a@b.test> AUTH=<>\r\n", "555 5.5.4 Unsupported MAIL parameter\n"),
	       STEP("MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n",
		    "501 5.5.4 Bad MAIL parameter value\n"),
	       STEP("MAIL FROM:<a@b.test> SIZE=1000001\r\n",
		    "552 5.3.4 Message size exceeds fixed maximum message size\n"),
	       STEP("MAIL FROM:a@b.test\r\n", "501 5.5.2 Syntax: MAIL FROM:<address>\n"),
	       STEP("MAIL FROM:<a@@b.test>\r\n", "501 5.1.7 Bad sender address syntax\n"),
	       STEP("MAIL FROM:<" LOCAL_65 "@b.test>\r\n", "501 5.1.7 Sender address too long\n"),
	       STEP("MAIL FROM:<\xc3\xa4@b.test>\r\n",
		    "553 5.6.7 Non-ASCII sender address requires SMTPUTF8\n"),
	       STEP("MAIL FROM:<a@b.test> SIZE=1000000 BODY=8BITMIME\r\n", MAIL_OK),
	       STEP("RCPT TO:<c@d.test> NOTIFY=NEVER\r\n",
		    "555 5.5.4 Unsupported RCPT parameter\n"),
	       STEP("RCPT TO:c@d.test\r\n", "501 5.5.2 Syntax: RCPT TO:<address>\n"),
	       STEP("RCPT TO:<>\r\n", "501 5.1.3 Bad recipient address syntax\n"),
	       STEP("RCPT TO:<\xc3\xbc@d.test>\r\n",
		    "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8\n"),
	       RCPT_STEP,
	       STEP("RSET\r\n", OK),
	       STEP("MAIL FROM:<\xc3\xa4@b.test> SMTPUTF8\r\n", MAIL_OK),
	       STEP("RCPT TO:<\xc3\xbc@d.test>\r\n", RCPT_OK),
	       STEP("RSET\r\n", OK),
	       STEP("MAIL FROM:<>\r\n", MAIL_OK),
	       QUIT_STEP},
     .events = "CLOSE", .state = CLOSED},
    {"max_recipients", .opt = {.max_rcpts = 2},
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("RCPT TO:<e@d.test>\r\n", RCPT_OK),
	       STEP("RCPT TO:<f@d.test>\r\n", "452 4.5.3 Error: too many recipients\n"),
	       STEP("RCPT TO:<unknown@local.test>\r\n", "452 4.5.3 Error: too many recipients\n"),
	       STEP("DATA\r\n", DATA_GO), STEP("x\r\n.\r\n", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("x\r\n")}, .state = CLOSED},
    {"policy verdicts",
     .steps = {EHLO_STEP, MAIL_STEP,
	       STEP("RCPT TO:<unknown@local.test>\r\n",
		    "550 5.1.1 Recipient address rejected: User unknown\n"),
	       STEP("RCPT TO:<bad@local.test>\r\n",
		    "553 5.1.3 Recipient address rejected: invalid mailbox name\n"),
	       STEP("RCPT TO:<relay@remote.test>\r\n", "550 5.7.1 Relay access denied\n"),
	       STEP("RCPT TO:<temp@local.test>\r\n",
		    "451 4.3.0 Recipient address rejected: temporary local problem\n"),
	       STEP("DATA\r\n", NO_RCPTS), STEP("RCPT TO:<ok@local.test>\r\n", RCPT_OK),
	       STEP("DATA\r\n", DATA_GO), STEP("x\r\n.\r\n", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("x\r\n")}, .state = CLOSED},

    /* DATA. */
    {"DATA with dot-stuffing",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("DATA\r\n", DATA_GO),
	       STEP("Subject: dots\r\n\r\n..one\r\n...\r\n. \r\nend.\r\n.\r\n", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("Subject: dots\r\n\r\n.one\r\n..\r\n \r\nend.\r\n")},
     .state = CLOSED},
    {"empty message and DATA syntax",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("DATA now\r\n", "501 5.5.4 Syntax: DATA\n"),
	       STEP("DATA\r\n", DATA_GO), STEP(".\r\n", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("")}, .state = CLOSED},
    {"commit fails: no space", .opt = {.commit = SMTP_COMMIT_NO_SPACE},
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("DATA\r\n", DATA_GO),
	       STEP("x\r\n.\r\n", "452 4.3.1 Error: insufficient system storage\n"),
	       STEP("RCPT TO:<c@d.test>\r\n", NEED_MAIL), MAIL_STEP, QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("x\r\n")}, .state = CLOSED},
    {"commit fails: local error", .opt = {.commit = SMTP_COMMIT_ERROR},
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 3 LAST\r\nx\r\n", "451 4.3.0 Error: local error in processing\n"),
	       MAIL_STEP, QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("x\r\n")}, .state = CLOSED},
    {"DATA over max size", .opt = {.max_size = 20},
     .steps = {STEP("HELO client.test\r\n", "250 mx.test\n"), MAIL_STEP, RCPT_STEP,
	       STEP("DATA\r\n", DATA_GO), STEP("0123456789\r\n0123456789\r\n.\r\n", TOO_BIG),
	       STEP("RCPT TO:<c@d.test>\r\n", NEED_MAIL), MAIL_STEP, RCPT_STEP,
	       STEP("DATA\r\n", DATA_GO), STEP("0123456789\r\n012345\r\n.\r\n", QUEUED), QUIT_STEP},
     .events = "BEGIN ABORT BEGIN END CLOSE", .msgs = {MSG("0123456789\r\n012345\r\n")},
     .state = CLOSED},
    {"bare LF and bare CR in DATA",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("DATA\r\n", DATA_GO),
	       STEP("a\nb\r\n.\r\n", BARE_EOL), MAIL_STEP, RCPT_STEP, STEP("DATA\r\n", DATA_GO),
	       STEP("a\rb\r\n.\r\n", BARE_EOL), QUIT_STEP},
     .events = "BEGIN ABORT BEGIN ABORT CLOSE", .state = CLOSED},
    /* refuse_nul (sendmail -bs): a NUL anywhere refuses the message after its end. */
    {"NUL in DATA and BDAT refused", .opt = {.refuse_nul = true},
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("DATA\r\n", DATA_GO),
	       STEP("a\0b\r\n.\r\n", NUL_IN_MSG), MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 3\r\nab\0", "250 2.0.0 3 octets received\n"),
	       STEP("BDAT 2 LAST\r\n\r\n", NUL_IN_MSG), MAIL_STEP, RCPT_STEP,
	       STEP("DATA\r\n", DATA_GO), STEP("ok\r\n.\r\n", QUEUED), QUIT_STEP},
     .events = "BEGIN ABORT BEGIN ABORT BEGIN END CLOSE", .msgs = {MSG("ok\r\n")}, .state = CLOSED},
    {"NUL in DATA is content by default",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("DATA\r\n", DATA_GO),
	       STEP("a\0b\r\n.\r\n", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("a\0b\r\n")}, .state = CLOSED},
    /* SMTP smuggling: nothing but CRLF.CRLF ends the data, so no second transaction starts. */
    {"smuggling attempts",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("DATA\r\n", DATA_GO),
	       STEP("Subject: s\r\n\r\nx\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<c@d.test>\r\n"
		    "DATA\r\nsmuggled\r\n.\r\n",
		    BARE_EOL),
	       MAIL_STEP, RCPT_STEP, STEP("DATA\r\n", DATA_GO),
	       STEP("x\r\n.\nMAIL FROM:<evil@x.test>\r\n\n.\nRSET\r\n.\r\n", BARE_EOL), MAIL_STEP,
	       RCPT_STEP, STEP("DATA\r\n", DATA_GO), STEP("x\r.\r\nQUIT\r\n.\r\n", BARE_EOL),
	       MAIL_STEP, RCPT_STEP, STEP("DATA\r\n", DATA_GO), STEP("clean\r\n.\r\n", QUEUED),
	       QUIT_STEP},
     .events = "BEGIN ABORT BEGIN ABORT BEGIN ABORT BEGIN END CLOSE", .msgs = {MSG("clean\r\n")},
     .state = CLOSED},

    /* BDAT (RFC 3030). */
    {"BDAT chunks",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 7\r\nHello\r\n", "250 2.0.0 7 octets received\n"),
	       STEP("bdat 8\r\nWorld!\r\n", "250 2.0.0 15 octets received\n"),
	       STEP("BDAT 0 LAST\r\n", QUEUED), MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 9 LAST\r\n.\r\nQUIT\r\n", QUEUED), MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 1\r\no", "250 2.0.0 1 octets received\n"),
	       STEP("BDAT 0\r\n", "250 2.0.0 1 octets received\n"),
	       STEP("BDAT 1 last\r\nk", QUEUED), QUIT_STEP},
     .events = "BEGIN END BEGIN END BEGIN END CLOSE",
     .msgs = {MSG("Hello\r\nWorld!\r\n"), MSG(".\r\nQUIT\r\n"), MSG("ok")}, .state = CLOSED},
    /* The client waits for the reply: nothing more arrives to finish the empty chunk. */
    {"BDAT 0 LAST as the only chunk",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("BDAT 0 LAST\r\n", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("")}, .state = CLOSED},
    {"BDAT 0 as the first chunk",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("BDAT 0\r\n", "250 2.0.0 0 octets received\n"),
	       STEP("BDAT 2 LAST\r\nok", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("ok")}, .state = CLOSED},
    /* A chunk may end between CR and LF; the count is of octets received. */
    {"BDAT CRLF across chunks",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 6\r\nHello\r", "250 2.0.0 6 octets received\n"),
	       STEP("BDAT 1 LAST\r\n\n", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("Hello\r\n")}, .state = CLOSED},
    /* RFC 3030 2: a refused BDAT's chunk is still read, so the session stays in sync. */
    {"refused BDAT chunks are consumed",
     .steps = {STEP("BDAT 6 LAST\r\nQUIT\r\n", NO_HELO), STEP("NOOP\r\n", OK), EHLO_STEP,
	       STEP("BDAT 6\r\nNOOP\r\nNOOP\r\n", NEED_MAIL OK), MAIL_STEP,
	       STEP("BDAT 20 LAST\r\nRCPT TO:<c@d.test>\r\n", NO_RCPTS),
	       STEP("BDAT 0 LAST\r\n", NO_RCPTS), RCPT_STEP, STEP("BDAT 2 LAST\r\nok", QUEUED),
	       QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("ok")}, .state = CLOSED},
    {"BDAT without size closes",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("BDAT\r\nNOOP\r\n", BDAT_SYNTAX)},
     .events = "CLOSE", .state = CLOSED},
    {"BDAT with bad size closes",
     .steps = {EHLO_STEP, STEP("BDAT 12x LAST\r\nNOOP\r\n", BDAT_SYNTAX)}, .events = "CLOSE",
     .state = CLOSED},
    {"BDAT with junk after LAST closes",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 2\r\nab", "250 2.0.0 2 octets received\n"),
	       STEP("BDAT 2 LAST junk\r\ncd", BDAT_SYNTAX)},
     .events = "BEGIN CLOSE", .state = CLOSED},
    {"BDAT bare LF",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("BDAT 4 LAST\r\na\nb\n", BARE_EOL), MAIL_STEP,
	       RCPT_STEP, STEP("BDAT 4 LAST\r\nab\r\r", BARE_EOL), QUIT_STEP},
     .events = "BEGIN ABORT BEGIN ABORT CLOSE", .state = CLOSED},
    {"BDAT over max size", .opt = {.max_size = 10},
     .steps = {STEP("HELO client.test\r\n", "250 mx.test\n"), MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 8\r\n12345678", "250 2.0.0 8 octets received\n"),
	       STEP("BDAT 8 LAST\r\n12345678", TOO_BIG), STEP("BDAT 1 LAST\r\nx", NEED_MAIL),
	       MAIL_STEP, RCPT_STEP, STEP("BDAT 10 LAST\r\n1234567890", QUEUED), QUIT_STEP},
     .events = "BEGIN ABORT BEGIN END CLOSE", .msgs = {MSG("1234567890")}, .state = CLOSED},
    {"RSET between BDAT chunks",
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 3\r\nabc", "250 2.0.0 3 octets received\n"), STEP("RSET\r\n", OK),
	       STEP("BDAT 3 LAST\r\nabc", NEED_MAIL), MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 3 LAST\r\nxyz", QUEUED), QUIT_STEP},
     .events = "BEGIN ABORT BEGIN END CLOSE", .msgs = {MSG("xyz")}, .state = CLOSED},

    /* RFC 2920: a whole pipelined session in one send. */
    {"pipelined session",
     .steps = {STEP("EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
		    "RCPT TO:<unknown@local.test>\r\nDATA\r\nSubject: p\r\n\r\nbody\r\n.\r\n"
		    "MAIL FROM:<>\r\nRCPT TO:<e@d.test>\r\nBDAT 4 LAST\r\nbodyRSET\r\n"
		    "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n.\r\nQUIT\r\n",
		    EHLO_OK MAIL_OK RCPT_OK
		    "550 5.1.1 Recipient address rejected: User unknown\n" DATA_GO QUEUED MAIL_OK
			RCPT_OK QUEUED OK MAIL_OK RCPT_OK DATA_GO QUEUED BYE)},
     .events = "BEGIN END BEGIN END BEGIN END CLOSE",
     .msgs = {MSG("Subject: p\r\n\r\nbody\r\n"), MSG("body"), MSG("")}, .state = CLOSED},

    /* Bad command lines. */
    {"control octets in commands",
     .steps = {STEP("NOOP\0\r\n", BAD_CHARS), EHLO_STEP,
	       STEP("MAIL FROM:<a\0@b.test>\r\n", BAD_CHARS), STEP("NO\rOP\r\n", BAD_CHARS),
	       STEP("NOOP\x7f\r\n", BAD_CHARS), STEP("NOOP\r\r\n", BAD_CHARS), MAIL_STEP,
	       QUIT_STEP},
     .events = "CLOSE", .state = CLOSED},
    {"error limit", .opt = {.max_errors = 3},
     .steps = {STEP("FOO\r\n", UNKNOWN_CMD), STEP("NOOP\r\n", OK),
	       STEP("EXPN list\r\n", "502 5.5.1 Error: EXPN not available\n"),
	       STEP("MAIL FROM:<a@b.test>\r\nNOOP\r\n",
		    NO_HELO "421 4.7.0 mx.test Error: too many errors\n")},
     .events = "CLOSE", .state = CLOSED},
    {"VRFY, EXPN, HELP, NOOP, AUTH, unknown",
     .steps = {STEP("VRFY\r\n", "501 5.5.4 Syntax: VRFY address\n"),
	       STEP("VRFY postmaster\r\n", "252 2.5.2 Cannot VRFY user, but will accept message "
					   "and attempt delivery\n"),
	       STEP("EXPN list\r\n", "502 5.5.1 Error: EXPN not available\n"),
	       STEP("HELP\r\n", HELP_TEXT), STEP("help mail\r\n", HELP_TEXT),
	       STEP("NOOP anything\r\n", OK), STEP("noop\r\n", OK),
	       STEP("AUTH PLAIN\r\n", "502 5.5.1 Error: authentication not enabled\n"),
	       STEP("XYZZY\r\n", UNKNOWN_CMD), STEP("\r\n", UNKNOWN_CMD),
	       STEP("MAILX FROM:<a@b.test>\r\n", UNKNOWN_CMD), QUIT_STEP},
     .events = "CLOSE", .state = CLOSED},
    {"RSET",
     .steps = {STEP("RSET\r\n", OK), STEP("MAIL FROM:<a@b.test>\r\n", NO_HELO),
	       STEP("RSET x\r\n", "501 5.5.4 Syntax: RSET\n"), EHLO_STEP, MAIL_STEP, RCPT_STEP,
	       STEP("RSET\r\n", OK), STEP("RCPT TO:<c@d.test>\r\n", NEED_MAIL), MAIL_STEP,
	       RCPT_STEP, EHLO_STEP, STEP("RCPT TO:<c@d.test>\r\n", NEED_MAIL), QUIT_STEP},
     .events = "CLOSE", .state = CLOSED},
    {"postmaster",
     .steps = {EHLO_STEP, STEP("MAIL FROM:<>\r\n", MAIL_OK),
	       STEP("RCPT TO:<Postmaster>\r\n", RCPT_OK), STEP("DATA\r\n", DATA_GO),
	       STEP("bounce\r\n.\r\n", QUEUED), QUIT_STEP},
     .events = "BEGIN END CLOSE", .msgs = {MSG("bounce\r\n")}, .state = CLOSED},

    /* STARTTLS (RFC 3207). */
    {"STARTTLS not offered",
     .steps = {EHLO_STEP, STEP("STARTTLS\r\n", NOT_IMPL), MAIL_STEP, QUIT_STEP}, .events = "CLOSE",
     .state = CLOSED},
    {"STARTTLS", .opt = {.starttls = true},
     .steps = {STEP("EHLO client.test\r\n", EHLO_TLS),
	       STEP("STARTTLS now\r\n", "501 5.5.4 Syntax: STARTTLS\n"),
	       STEP("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\n"),
	       STEP("MAIL FROM:<a@b.test>\r\n", NO_HELO), EHLO_STEP, STEP("STARTTLS\r\n", NOT_IMPL),
	       MAIL_STEP, RCPT_STEP, STEP("DATA\r\n", DATA_GO), STEP("x\r\n.\r\n", QUEUED),
	       QUIT_STEP},
     .events = "STARTTLS BEGIN END CLOSE", .msgs = {MSG("x\r\n")}, .state = CLOSED},
    {"STARTTLS before EHLO", .opt = {.starttls = true},
     .steps = {STEP("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\n"), EHLO_STEP, QUIT_STEP},
     .events = "STARTTLS CLOSE", .state = CLOSED},
    /* Under TLS STARTTLS is refused, so HELP must not list it either. */
    {"HELP under TLS", .opt = {.starttls = true},
     .steps = {STEP("HELP\r\n", "214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP "
				"VRFY HELP QUIT STARTTLS\n214 2.0.0 See RFC 5321\n"),
	       STEP("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\n"), STEP("HELP\r\n", HELP_TEXT),
	       QUIT_STEP},
     .events = "STARTTLS CLOSE", .state = CLOSED},
    /* AUTH (RFC 4954, RFC 4616). alice@example.test / secret is the one account. */
    {"AUTH needs TLS", .opt = {.starttls = true, .auth = true},
     .steps = {STEP("EHLO client.test\r\n", EHLO_TLS),
	       STEP("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n",
		    "538 5.7.11 Encryption required for requested authentication mechanism\n"),
	       QUIT_STEP},
     .events = "CLOSE", .state = CLOSED},
    {"AUTH not offered",
     .steps = {EHLO_STEP, STEP("AUTH PLAIN\r\n", "502 5.5.1 Error: authentication not enabled\n"),
	       QUIT_STEP},
     .events = "CLOSE", .state = CLOSED},
    {"AUTH PLAIN with initial response, then relay-free submission",
     .opt = {.starttls = true, .auth = true, .submission = true},
     .steps = {STEP("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\n"),
	       STEP("EHLO client.test\r\n", EHLO_HEAD "250-AUTH PLAIN LOGIN\n" EHLO_TAIL),
	       STEP("MAIL FROM:<alice@example.test>\r\n", "530 5.7.0 Authentication required\n"),
	       STEP("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n",
		    "235 2.7.0 Authentication successful\n"),
	       STEP("AUTH PLAIN\r\n", "503 5.5.1 Error: already authenticated\n"),
	       STEP("MAIL FROM:<alice@example.test>\r\n", MAIL_OK), QUIT_STEP},
     .events = "STARTTLS AUTH CLOSE", .state = CLOSED},
    {"AUTH LOGIN, wrong password, cancel, bad base64, unknown mechanism",
     .opt = {.starttls = true, .auth = true},
     .steps = {STEP("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\n"),
	       STEP("EHLO client.test\r\n", EHLO_HEAD "250-AUTH PLAIN LOGIN\n" EHLO_TAIL),
	       STEP("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\n"),
	       STEP("YWxpY2VAZXhhbXBsZS50ZXN0\r\n", "334 UGFzc3dvcmQ6\n"),
	       STEP("d3Jvbmc=\r\n", "535 5.7.8 Authentication credentials invalid\n"),
	       STEP("AUTH PLAIN\r\n", "334 \n"),
	       STEP("*\r\n", "501 5.0.0 Authentication cancelled\n"),
	       STEP("AUTH PLAIN !!!!\r\n", "501 5.5.2 Cannot decode response\n"),
	       STEP("AUTH CRAM-MD5\r\n", "504 5.5.4 Unrecognized authentication type\n"),
	       STEP("AUTH LOGIN YWxpY2VAZXhhbXBsZS50ZXN0\r\n", "334 UGFzc3dvcmQ6\n"),
	       STEP("c2VjcmV0\r\n", "235 2.7.0 Authentication successful\n"), QUIT_STEP},
     .events = "STARTTLS AUTH AUTH CLOSE", .state = CLOSED},
    {"AUTH: three failures close the session", .opt = {.starttls = true, .auth = true},
     .steps = {STEP("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\n"),
	       STEP("EHLO client.test\r\n", EHLO_HEAD "250-AUTH PLAIN LOGIN\n" EHLO_TAIL),
	       STEP("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB4\r\n",
		    "535 5.7.8 Authentication credentials invalid\n"),
	       STEP("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB4\r\n",
		    "535 5.7.8 Authentication credentials invalid\n"),
	       STEP("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB4\r\n",
		    "535 5.7.8 Authentication credentials invalid\n421 4.7.0 mx.test Error: too "
		    "many failed authentications\n")},
     .events = "STARTTLS AUTH AUTH AUTH", .state = CLOSED},
    /* RFC 4954 5: AUTH=<> or AUTH=xtext on MAIL where AUTH is offered; checked, then dropped. */
    {"MAIL AUTH= parameter", .opt = {.starttls = true, .auth = true},
     .steps =
	 {STEP("EHLO client.test\r\n", EHLO_TLS),
	  /* Not offered before TLS: unknown there. */
	  STEP("MAIL FROM:<a@b.test> AUTH=<>\r\n", "555 5.5.4 Unsupported MAIL parameter\n"),
	  STEP("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\n"),
	  STEP("EHLO client.test\r\n", EHLO_HEAD "250-AUTH PLAIN LOGIN\n" EHLO_TAIL),
	  /* Not authenticated: taken and dropped all the same (as if AUTH=<>). */
	  STEP("MAIL FROM:<a@b.test> AUTH=<>\r\n", MAIL_OK), STEP("RSET\r\n", OK),
	  STEP("MAIL FROM:<a@b.test> SIZE=10 auth=user+40localhost BODY=8BITMIME\r\n", MAIL_OK),
	  STEP("RSET\r\n", OK),
	  STEP("MAIL FROM:<a@b.test> AUTH=a+4\r\n", "501 5.5.4 Bad MAIL parameter value\n"),
	  STEP("MAIL FROM:<a@b.test> AUTH=a+GG\r\n", "501 5.5.4 Bad MAIL parameter value\n"),
	  STEP("MAIL FROM:<a@b.test> AUTH=a+b@c\r\n", "501 5.5.4 Bad MAIL parameter value\n"),
	  STEP("MAIL FROM:<a@b.test> AUTH=\xc3\xa9\r\n", "501 5.5.4 Bad MAIL parameter value\n"),
	  STEP("MAIL FROM:<a@b.test> AUTH=\r\n", "501 5.5.4 Bad MAIL parameter value\n"),
	  STEP("MAIL FROM:<a@b.test> AUTH\r\n", "501 5.5.4 Bad MAIL parameter value\n"),
	  STEP("MAIL FROM:<a@b.test> AUTH=<> AUTH=<>\r\n", "501 5.5.4 Bad MAIL parameter value\n"),
	  STEP("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n",
	       "235 2.7.0 Authentication successful\n"),
	  STEP("MAIL FROM:<alice@example.test> AUTH=alice+40example.test\r\n", MAIL_OK), RCPT_STEP,
	  STEP("DATA\r\n", DATA_GO), STEP("x\r\n.\r\n", QUEUED), QUIT_STEP},
     .events = "STARTTLS AUTH BEGIN END CLOSE", .msgs = {MSG("x\r\n")}, .state = CLOSED},
    {"no QUIT: the session waits",
     .steps = {EHLO_STEP, MAIL_STEP, STEP("RCPT TO:<c@d.test>\r\nNOO", RCPT_OK)}, .events = "",
     .state = SMTP_STATE_RCPT},
    /*
     * What refused() is told, for the log: the address of a refused MAIL or
     * RCPT as parsed, or as written when it did not parse (control octets
     * included: the glue escapes them); never an AUTH argument.
     */
    {"refusals of MAIL",
     .steps = {EHLO_STEP,
	       STEP("MAIL FROM:<a@b.test> SIZE=2000000\r\n",
		    "552 5.3.4 Message size exceeds fixed maximum message size\n"),
	       STEP("MAIL FROM:<a b@c.test>\r\n", "501 5.1.7 Bad sender address syntax\n"),
	       STEP("MAIL\r\n", "501 5.5.2 Syntax: MAIL FROM:<address>\n"),
	       STEP("MAIL FROM:<x\x01y@b.test>\r\n", BAD_CHARS),
	       STEP("MAIL FROM:<n\xc3\xa9@b.test>\r\n",
		    "553 5.6.7 Non-ASCII sender address requires SMTPUTF8\n"),
	       MAIL_STEP, STEP("MAIL FROM:<>\r\n", NESTED), QUIT_STEP},
     .events = "CLOSE",
     .refusals = "MAIL/mail 552 5.3.4 Message size exceeds fixed maximum message size; "
		 "from=<a@b.test> helo=<client.test>\n"
		 "MAIL/mail 501 5.1.7 Bad sender address syntax; from=<a b@c.test> "
		 "helo=<client.test>\n"
		 "MAIL/mail 501 5.5.2 Syntax: MAIL FROM:<address>; helo=<client.test>\n"
		 "MAIL/mail 500 5.5.2 Error: invalid characters in command; from=<x\x01y@b.test> "
		 "helo=<client.test>\n"
		 "MAIL/mail 553 5.6.7 Non-ASCII sender address requires SMTPUTF8; "
		 "from=<n\xc3\xa9@b.test> helo=<client.test>\n"
		 "MAIL/mail 503 5.5.1 Error: nested MAIL command; from=<> helo=<client.test>\n",
     .state = CLOSED},
    {"refusals of RCPT", .opt = {.max_rcpts = 1},
     .steps = {EHLO_STEP, STEP("RCPT TO:<c@d.test>\r\n", NEED_MAIL), MAIL_STEP,
	       STEP("RCPT TO:<unknown@local.test>\r\nRCPT TO:<bad@local.test>\r\n"
		    "RCPT TO:<relay@remote.test>\r\nRCPT TO:<temp@local.test>\r\n",
		    "550 5.1.1 Recipient address rejected: User unknown\n"
		    "553 5.1.3 Recipient address rejected: invalid mailbox name\n"
		    "550 5.7.1 Relay access denied\n"
		    "451 4.3.0 Recipient address rejected: temporary local problem\n"),
	       STEP("RCPT TO:<a\rb@d.test>\r\n", BAD_CHARS),
	       STEP("RCPT TO:<n\xc3\xa9@d.test>\r\n",
		    "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8\n"),
	       STEP("RCPT TO:<Postmaster> FOO=BAR\r\n", "555 5.5.4 Unsupported RCPT parameter\n"),
	       STEP("RCPT TO:\r\n", "501 5.5.2 Syntax: RCPT TO:<address>\n"), RCPT_STEP,
	       STEP("RCPT TO:<e@d.test>\r\n", "452 4.5.3 Error: too many recipients\n"), QUIT_STEP},
     .events = "CLOSE",
     .refusals =
	 "RCPT/mail 503 5.5.1 Error: need MAIL command; to=<c@d.test> helo=<client.test>\n"
	 "RCPT/mail 550 5.1.1 Recipient address rejected: User unknown; from=<a@b.test> "
	 "to=<unknown@local.test> helo=<client.test>\n"
	 "RCPT/mail 553 5.1.3 Recipient address rejected: invalid mailbox name; from=<a@b.test> "
	 "to=<bad@local.test> helo=<client.test>\n"
	 "RCPT/mail 550 5.7.1 Relay access denied; from=<a@b.test> to=<relay@remote.test> "
	 "helo=<client.test>\n"
	 "RCPT/mail 451 4.3.0 Recipient address rejected: temporary local problem; "
	 "from=<a@b.test> to=<temp@local.test> helo=<client.test>\n"
	 "RCPT/mail 500 5.5.2 Error: invalid characters in command; from=<a@b.test> "
	 "to=<a\rb@d.test> helo=<client.test>\n"
	 "RCPT/mail 553 5.6.7 Non-ASCII recipient address requires SMTPUTF8; from=<a@b.test> "
	 "to=<n\xc3\xa9@d.test> helo=<client.test>\n"
	 "RCPT/mail 555 5.5.4 Unsupported RCPT parameter; from=<a@b.test> to=<Postmaster> "
	 "helo=<client.test>\n"
	 "RCPT/mail 501 5.5.2 Syntax: RCPT TO:<address>; from=<a@b.test> helo=<client.test>\n"
	 "RCPT/mail 452 4.5.3 Error: too many recipients; from=<a@b.test> to=<e@d.test> "
	 "helo=<client.test>\n",
     .state = CLOSED},
    {"refusals of DATA, BDAT and messages", .opt = {.max_size = 10},
     .steps = {STEP("HELO client.test\r\n", "250 mx.test\n"), MAIL_STEP, STEP("DATA\r\n", NO_RCPTS),
	       RCPT_STEP, STEP("RCPT TO:<e@d.test>\r\n", RCPT_OK), STEP("DATA\r\n", DATA_GO),
	       STEP("bare\nLF\r\n.\r\n", BARE_EOL), MAIL_STEP, RCPT_STEP,
	       STEP("BDAT 12 LAST\r\n0123456789ab", TOO_BIG), STEP("BDAT 3\r\nabc", NEED_MAIL),
	       QUIT_STEP},
     .events = "BEGIN ABORT BEGIN ABORT CLOSE",
     .refusals = "DATA/mail 554 5.5.1 Error: no valid recipients; from=<a@b.test> "
		 "helo=<client.test>\n"
		 "END-OF-MESSAGE/mail 550 5.6.0 Error: bare CR or LF in message; use CRLF line "
		 "ends; from=<a@b.test> to=<c@d.test> nrcpt=2 helo=<client.test>\n"
		 "END-OF-MESSAGE/mail 552 5.3.4 Error: message size exceeds fixed limit; "
		 "from=<a@b.test> to=<c@d.test> nrcpt=1 helo=<client.test>\n"
		 "BDAT/mail 503 5.5.1 Error: need MAIL command; helo=<client.test>\n",
     .state = CLOSED},
    {"a refusal at the commit", .opt = {.commit = SMTP_COMMIT_NO_SPACE},
     .steps = {EHLO_STEP, MAIL_STEP, RCPT_STEP, STEP("DATA\r\n", DATA_GO),
	       STEP("x\r\n.\r\n", "452 4.3.1 Error: insufficient system storage\n"), QUIT_STEP},
     .events = "BEGIN END CLOSE",
     .refusals = "END-OF-MESSAGE/mail 452 4.3.1 Error: insufficient system storage; "
		 "from=<a@b.test> to=<c@d.test> nrcpt=1 helo=<client.test>\n",
     .msgs = {MSG("x\r\n")}, .state = CLOSED},
    {"protocol errors and the 421 they end with", .opt = {.max_errors = 4},
     .steps = {STEP("HELO\r\n", "501 5.5.4 Syntax: HELO hostname\n"),
	       STEP("EHLO a\x7f"
		    "b\r\n",
		    BAD_CHARS),
	       EHLO_STEP, STEP("FOO bar\r\n", UNKNOWN_CMD),
	       STEP("VRFY\r\n",
		    "501 5.5.4 Syntax: VRFY address\n421 4.7.0 mx.test Error: too many errors\n")},
     .events = "CLOSE",
     .refusals = "HELO/protocol 501 5.5.4 Syntax: HELO hostname; helo=<>\n"
		 "EHLO/protocol 500 5.5.2 Error: invalid characters in command; helo=<a\x7f"
		 "b>\n"
		 "UNKNOWN/protocol 500 5.5.2 Error: command not recognized; helo=<client.test>\n"
		 "VRFY/protocol 501 5.5.4 Syntax: VRFY address; helo=<client.test>\n"
		 "VRFY/protocol 421 4.7.0 mx.test Error: too many errors; helo=<client.test>\n",
     .state = CLOSED},
    {"refusals of AUTH: never its data, and no 535", .opt = {.starttls = true, .auth = true},
     .steps = {STEP("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\n"),
	       STEP("EHLO client.test\r\n", EHLO_HEAD "250-AUTH PLAIN LOGIN\n" EHLO_TAIL),
	       STEP("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZw==\r\n",
		    "535 5.7.8 Authentication credentials invalid\n"),
	       STEP("AUTH CRAM-MD5 c2VjcmV0\r\n", "504 5.5.4 Unrecognized authentication type\n"),
	       STEP("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\n"),
	       STEP("c2VjcmV0!\r\n", "501 5.5.2 Cannot decode response\n"),
	       STEP("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZzI=\r\n",
		    "535 5.7.8 Authentication credentials invalid\n"),
	       STEP("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZzM=\r\n",
		    "535 5.7.8 Authentication credentials invalid\n"
		    "421 4.7.0 mx.test Error: too many failed authentications\n")},
     .events = "STARTTLS AUTH AUTH AUTH",
     .refusals = "AUTH/protocol 504 5.5.4 Unrecognized authentication type; helo=<client.test>\n"
		 "AUTH/protocol 501 5.5.2 Cannot decode response; helo=<client.test>\n"
		 "AUTH/protocol 421 4.7.0 mx.test Error: too many failed authentications; "
		 "helo=<client.test>\n",
     .state = CLOSED},
};

/* ---- generated cases (long inputs) ------------------------------------ */

#define GEN_MAX 8

struct gen_case {
	struct session_case c;
	char *owned[STEPS_MAX + MSGS_MAX];
	size_t owned_len;
};

static struct gen_case gen_cases[GEN_MAX];
static size_t gen_count;

/* pre, then n copies of fill, then post: a new string owned by gc. */
static const char *
gen(struct gen_case *gc, const char *pre, char fill, size_t n, const char *post, size_t *len)
{
	size_t a = strlen(pre), z = strlen(post);
	char *p = xmalloc(a + n + z + 1);

	memcpy(p, pre, a);
	memset(p + a, fill, n);
	memcpy(p + a + n, post, z + 1);
	assert_true(gc->owned_len < ARRAY_LEN(gc->owned));
	gc->owned[gc->owned_len++] = p;
	*len = a + n + z;
	return p;
}

static struct gen_case *
gen_new(const char *name, const char *events, enum smtp_state state)
{
	struct gen_case *gc = &gen_cases[gen_count++];

	assert_true(gen_count <= GEN_MAX);
	gc->c.name = name;
	gc->c.events = events;
	gc->c.state = state;
	return gc;
}

static void
gen_step(struct gen_case *gc, size_t i, const char *send, size_t len, const char *expect)
{
	gc->c.steps[i] = (struct step){.send = send, .send_len = len, .expect = expect};
}

/* A step with a literal send. */
#define GSTEP(gc, i, s, e) gen_step((gc), (i), (s), sizeof(s) - 1, (e))

static void
build_gen_cases(void)
{
	struct gen_case *gc;
	const char *p, *body;
	size_t n;

	/* RFC 5321 4.5.3.1.4: 1000 octets with the CRLF is the longest command line. */
	gc = gen_new("command line of 1000 and 1001 octets", "CLOSE", CLOSED);
	p = gen(gc, "NOOP ", 'x', 1000 - 7, "\r\n", &n);
	gen_step(gc, 0, p, n, OK);
	p = gen(gc, "NOOP ", 'x', 1001 - 7, "\r\n", &n);
	gen_step(gc, 1, p, n, TOO_LONG);
	GSTEP(gc, 2, "NOOP\r\n", OK);
	p = gen(gc, "MAIL FROM:<", 'x', 2000, ">\r\nNOOP\r\n", &n);
	gen_step(gc, 3, p, n, TOO_LONG OK);
	GSTEP(gc, 4, "QUIT\r\n", BYE);

	gc = gen_new("1 MiB without LF", "CLOSE", CLOSED);
	GSTEP(gc, 0, "EHLO client.test\r\n", EHLO_OK);
	p = gen(gc, "", 'A', 1024 * 1024, "", &n);
	gen_step(gc, 1, p, n, "");
	GSTEP(gc, 2, "\r\nNOOP\r\n", TOO_LONG OK);
	GSTEP(gc, 3, "MAIL FROM:<a@b.test>\r\n", MAIL_OK);
	GSTEP(gc, 4, "QUIT\r\n", BYE);

	/*
	 * RFC 4954 4: a SASL response over the line limit ends the exchange
	 * with a 501; what follows is a command again, not a response.
	 */
	gc = gen_new("overlong SASL responses", "STARTTLS AUTH CLOSE", CLOSED);
	gc->c.opt = (struct opts){.starttls = true, .auth = true};
	GSTEP(gc, 0, "STARTTLS\r\n", "220 2.0.0 Ready to start TLS\n");
	GSTEP(gc, 1, "EHLO client.test\r\n", EHLO_HEAD "250-AUTH PLAIN LOGIN\n" EHLO_TAIL);
	GSTEP(gc, 2, "AUTH PLAIN\r\n", "334 \n");
	p = gen(gc, "", 'A', 1200, "\r\nNOOP\r\n", &n);
	gen_step(gc, 3, p, n, AUTH_TOO_LONG OK);
	GSTEP(gc, 4, "AUTH LOGIN YWxpY2VAZXhhbXBsZS50ZXN0\r\n", "334 UGFzc3dvcmQ6\n");
	p = gen(gc, "", 'B', 64 * 1024, "\r\n", &n);
	gen_step(gc, 5, p, n, AUTH_TOO_LONG);
	GSTEP(gc, 6, "MAIL FROM:<a@b.test>\r\n", MAIL_OK);
	GSTEP(gc, 7, "RSET\r\n", OK);
	/* The limit of a response is the command line's: 1000 octets with the CRLF. */
	GSTEP(gc, 8, "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\n");
	p = gen(gc, "", 'C', 998, "\r\n", &n);
	gen_step(gc, 9, p, n, "501 5.5.2 Cannot decode response\n");
	GSTEP(gc, 10, "AUTH PLAIN\r\n", "334 \n");
	p = gen(gc, "", 'C', 999, "\r\n", &n);
	gen_step(gc, 11, p, n, AUTH_TOO_LONG);
	GSTEP(gc, 12, "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n",
	      "235 2.7.0 Authentication successful\n");
	GSTEP(gc, 13, "QUIT\r\n", BYE);

	/* RFC 5321 4.5.3.1.6: a text line is 1000 octets with its CRLF. */
	gc = gen_new("DATA line of 1000 and 1001 octets", "BEGIN END BEGIN ABORT CLOSE", CLOSED);
	GSTEP(gc, 0, "EHLO client.test\r\n", EHLO_OK);
	GSTEP(gc, 1, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
	      MAIL_OK RCPT_OK DATA_GO);
	p = gen(gc, "", 'x', 998, "\r\n.\r\n", &n);
	gen_step(gc, 2, p, n, QUEUED);
	gc->c.msgs[0] = (struct msg){.p = p, .len = n - 3};
	GSTEP(gc, 3, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
	      MAIL_OK RCPT_OK DATA_GO);
	p = gen(gc, "", 'x', 999, "\r\n.\r\n", &n);
	gen_step(gc, 4, p, n, LONG_LINE);
	GSTEP(gc, 5, "QUIT\r\n", BYE);

	/* Over BODY_CHUNK (64 KiB): the glue takes the body in pieces. */
	gc = gen_new("200 KiB message by DATA", "BEGIN BODY BODY BODY END CLOSE", CLOSED);
	GSTEP(gc, 0, "EHLO client.test\r\n", EHLO_OK);
	GSTEP(gc, 1, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
	      MAIL_OK RCPT_OK DATA_GO);
	{
		char *data = xmalloc(200 * 1024 + 8);
		size_t len = 0;

		/* 100-octet lines (98 + CRLF), 2048 of them: 204800 octets. */
		for (size_t i = 0; i < 2048; i++) {
			memset(data + len, 'a' + (char)(i % 26), 98);
			memcpy(data + len + 98, "\r\n", 2);
			len += 100;
		}
		memcpy(data + len, ".\r\n", 4);
		gc->owned[gc->owned_len++] = data;
		gen_step(gc, 2, data, len + 3, QUEUED);
		gc->c.msgs[0] = (struct msg){.p = data, .len = len};
	}
	GSTEP(gc, 3, "QUIT\r\n", BYE);

	/* The same message in one BDAT chunk. */
	body = gc->c.msgs[0].p;
	gc = gen_new("200 KiB message by BDAT", "BEGIN BODY BODY BODY END CLOSE", CLOSED);
	GSTEP(gc, 0, "EHLO client.test\r\n", EHLO_OK);
	GSTEP(gc, 1, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n", MAIL_OK RCPT_OK);
	p = gen(gc, "BDAT 204800 LAST\r\n", 'b', 204800, "", &n);
	memcpy((char *)p + 18, body, 204800);
	gen_step(gc, 2, p, n, QUEUED);
	gc->c.msgs[0] = (struct msg){.p = p + 18, .len = 204800};
	GSTEP(gc, 3, "QUIT\r\n", BYE);
}

static void
free_gen_cases(void)
{
	for (size_t i = 0; i < gen_count; i++)
		for (size_t k = 0; k < gen_cases[i].owned_len; k++)
			free(gen_cases[i].owned[k]);
}

/* ---- running a case ---------------------------------------------------- */

static void
run_case(const struct session_case *c, enum feed_mode mode)
{
	struct glue g;
	char name[256];
	char where[32];
	size_t nmsgs = 0;

	snprintf(name, sizeof(name), "%s (%s)", c->name, mode_names[mode]);
	glue_init(&g, name, &c->opt);
	collect_output(&g);
	expect_replies(&g, GREETING, "greeting");
	for (size_t i = 0; i < STEPS_MAX && c->steps[i].send != NULL; i++) {
		glue_send(&g, c->steps[i].send, c->steps[i].send_len, mode);
		snprintf(where, sizeof(where), "step %zu", i + 1);
		expect_replies(&g, c->steps[i].expect, where);
	}
	if (strcmp(g.events.p != NULL ? g.events.p : "", c->events) != 0)
		fail_msg("%s: events \"%s\", want \"%s\"", name, g.events.p ? g.events.p : "",
			 c->events);
	while (nmsgs < MSGS_MAX && c->msgs[nmsgs].p != NULL)
		nmsgs++;
	if (g.msgs_len != nmsgs)
		fail_msg("%s: %zu messages, want %zu", name, g.msgs_len, nmsgs);
	for (size_t i = 0; i < nmsgs; i++) {
		const struct text *got = &g.msgs[i];

		if (got->len != c->msgs[i].len || memcmp(got->p, c->msgs[i].p, got->len) != 0)
			fail_msg("%s: message %zu differs (%zu octets, want %zu): \"%.*s\"", name,
				 i + 1, got->len, c->msgs[i].len,
				 (int)(got->len < 80 ? got->len : 80), got->p);
	}
	if (strcmp(text_str(&g.policy.refused_rep), text_str(&g.refused_want)) != 0)
		fail_msg("%s: refused() was told\n%s--- of the replies\n%s---", name,
			 text_str(&g.policy.refused_rep), text_str(&g.refused_want));
	if (c->refusals != NULL && strcmp(text_str(&g.policy.refusals), c->refusals) != 0)
		fail_msg("%s: refusals differ\n--- got:\n%s--- want:\n%s---", name,
			 text_str(&g.policy.refusals), c->refusals);
	if (smtp_session_state(g.s) != c->state)
		fail_msg("%s: state %s, want %s", name, smtp_state_name(smtp_session_state(g.s)),
			 smtp_state_name(c->state));
	glue_free(&g);
}

static void
test_case(void **state)
{
	const struct session_case *c = *state;

	run_case(c, FEED_ALL);
	run_case(c, FEED_LINES);
	run_case(c, FEED_BYTES);
}

/* ---- single scenarios -------------------------------------------------- */

/* The replies queued so far as "\n"-separated lines; the output is emptied. */
static void
assert_output(struct smtp_session *s, const char *want)
{
	struct glue g = {.name = "direct", .s = s};

	collect_output(&g);
	expect_replies(&g, want, "output");
	text_free(&g.replies);
	text_free(&g.refused_want);
}

/* Feeds str (a literal or array) once; checks what was consumed and the event. */
#define FEED(s, str, want_used, want_ev)                                                           \
	do {                                                                                       \
		enum smtp_event ev_;                                                               \
		size_t used_ = smtp_session_feed((s), (str), sizeof(str) - 1, &ev_);               \
		assert_int_equal(used_, (want_used));                                              \
		assert_int_equal(ev_, (want_ev));                                                  \
	} while (0)
/* Feeds str and expects all of it consumed. */
#define FEED_ALL(s, str, want_ev) FEED((s), (str), sizeof(str) - 1, (want_ev))

/* While the glue commits, pipelined commands are left unread (not read ahead). */
static void
test_commit_wait(void **state)
{
	static const char in[] = "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
				 "x\r\n.\r\nMAIL FROM:<e@b.test>\r\nQUIT\r\n";
	const char *rest = strstr(in, "x\r\n");
	const char *after = strstr(in, "MAIL FROM:<e@");
	struct fake_policy fp = {0};
	struct smtp_session *s = session_new(&(struct opts){0}, &fp);
	enum smtp_event ev;
	const char *data;
	size_t len;

	FEED_ALL(s, "EHLO client.test\r\n", SMTP_EVENT_NONE);
	assert_output(s, GREETING EHLO_OK);
	FEED(s, in, (size_t)(rest - in), SMTP_EVENT_MESSAGE_BEGIN);
	assert_output(s, MAIL_OK RCPT_OK DATA_GO);
	assert_int_equal(smtp_session_feed(s, rest, strlen(rest), &ev), (size_t)(after - rest));
	assert_int_equal(ev, SMTP_EVENT_MESSAGE_END);
	assert_int_equal(smtp_session_state(s), SMTP_STATE_COMMIT);
	smtp_session_body_take(s, &data, &len);
	assert_int_equal(len, 3);
	assert_memory_equal(data, "x\r\n", 3);
	assert_output(s, "");
	/* Still committing: nothing is consumed, nothing is said. */
	for (int i = 0; i < 2; i++) {
		ev = SMTP_EVENT_CLOSE;
		assert_int_equal(smtp_session_feed(s, after, strlen(after), &ev), 0);
		assert_int_equal(ev, SMTP_EVENT_NONE);
		assert_output(s, "");
	}
	smtp_session_commit_done(s, SMTP_COMMIT_OK, "Q1");
	assert_output(s, "250 2.0.0 Ok: queued as Q1\n");
	assert_int_equal(smtp_session_state(s), SMTP_STATE_READY);
	/* A second commit_done is ignored. */
	smtp_session_commit_done(s, SMTP_COMMIT_OK, "Q2");
	assert_output(s, "");
	FEED_ALL(s, "MAIL FROM:<e@b.test>\r\nQUIT\r\n", SMTP_EVENT_CLOSE);
	assert_output(s, MAIL_OK BYE);
	FEED(s, "NOOP\r\n", 0, SMTP_EVENT_NONE);
	assert_int_equal(fp.calls, 1);
	smtp_session_free(s);
	fake_policy_free(&fp);
}

/* RFC 3207 5 / CVE-2011-0411: commands sent with STARTTLS must not run after the handshake. */
static void
test_starttls_injection(void **state)
{
	struct fake_policy fp = {0};
	struct smtp_session *s = session_new(&(struct opts){.starttls = true}, &fp);

	FEED_ALL(s, "EHLO client.test\r\n", SMTP_EVENT_NONE);
	assert_output(s, GREETING EHLO_TLS);
	assert_string_equal(smtp_session_protocol(s), "ESMTP");
	FEED(s, "STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n", 10, SMTP_EVENT_STARTTLS);
	assert_output(s, "220 2.0.0 Ready to start TLS\n");
	assert_int_equal(smtp_session_state(s), SMTP_STATE_TLS);
	FEED(s, "MAIL FROM:<evil@x.test>\r\n", 0, SMTP_EVENT_NONE);
	assert_output(s, "");
	smtp_session_tls_started(s);
	assert_int_equal(smtp_session_state(s), SMTP_STATE_INIT);
	assert_string_equal(smtp_session_helo(s), "");
	assert_string_equal(smtp_session_protocol(s), "SMTP");
	FEED_ALL(s, "MAIL FROM:<a@b.test>\r\n", SMTP_EVENT_NONE);
	assert_output(s, NO_HELO);
	FEED_ALL(s, "EHLO again.test\r\n", SMTP_EVENT_NONE);
	assert_output(s, EHLO_OK);
	assert_string_equal(smtp_session_helo(s), "again.test");
	assert_string_equal(smtp_session_protocol(s), "ESMTPS");
	smtp_session_free(s);
	fake_policy_free(&fp);
}

/* An AUTH exchange ended by an overlong response leaves no credentials behind. */
static void
test_auth_overlong_wipes(void **state)
{
	static char line[1201]; /* 1200 octets and a NUL */
	struct fake_policy fp = {0};
	struct smtp_session *s = session_new(&(struct opts){.auth = true}, &fp);
	const char *user, *password;

	smtp_session_set_tls(s, true);
	FEED_ALL(s, "EHLO client.test\r\nAUTH LOGIN YWxpY2VAZXhhbXBsZS50ZXN0\r\n", SMTP_EVENT_NONE);
	assert_output(s,
		      GREETING EHLO_HEAD "250-AUTH PLAIN LOGIN\n" EHLO_TAIL "334 UGFzc3dvcmQ6\n");
	smtp_session_auth_take(s, &user, &password);
	assert_string_equal(user, "alice@example.test");
	memset(line, 'A', 1198);
	memcpy(line + 1198, "\r\n", 2);
	FEED_ALL(s, line, SMTP_EVENT_NONE);
	assert_output(s, AUTH_TOO_LONG);
	assert_int_equal(smtp_session_state(s), SMTP_STATE_READY);
	smtp_session_auth_take(s, &user, &password);
	assert_string_equal(user, "");
	assert_string_equal(password, "");
	assert_null(smtp_session_auth_user(s));
	smtp_session_free(s);
	fake_policy_free(&fp);
}

/*
 * 421 replies from outside the input.  RFC 2034 puts the enhanced code right
 * after the reply code, as the session's own "too many errors" 421 does.
 */
static void
test_timeout(void **state)
{
	struct fake_policy fp = {0};
	struct smtp_session *s = session_new(&(struct opts){0}, &fp);

	FEED_ALL(s, "EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n", SMTP_EVENT_NONE);
	assert_output(s, GREETING EHLO_OK MAIL_OK);
	smtp_session_timeout(s);
	assert_output(s, "421 4.4.2 mx.test Error: timeout exceeded\n");
	assert_int_equal(smtp_session_state(s), SMTP_STATE_CLOSED);
	FEED(s, "NOOP\r\n", 0, SMTP_EVENT_NONE);
	smtp_session_timeout(s); /* closed: nothing more */
	assert_output(s, "");
	/* The glue's own 421: it logs it itself. */
	assert_string_equal(text_str(&fp.refusals), "");
	smtp_session_free(s);
	fake_policy_free(&fp);
}

static void
test_close_421(void **state)
{
	struct fake_policy fp = {0};
	struct smtp_session *s = session_new(&(struct opts){0}, &fp);

	FEED_ALL(s, "EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
		 SMTP_EVENT_MESSAGE_BEGIN);
	assert_output(s, GREETING EHLO_OK MAIL_OK RCPT_OK DATA_GO);
	FEED_ALL(s, "half a body\r\n", SMTP_EVENT_NONE);
	smtp_session_close_421(s, "4.3.2", "Service shutting down");
	assert_output(s, "421 4.3.2 mx.test Service shutting down\n");
	assert_int_equal(smtp_session_state(s), SMTP_STATE_CLOSED);
	FEED(s, ".\r\n", 0, SMTP_EVENT_NONE);
	smtp_session_close_421(s, "4.3.2", "Service shutting down");
	assert_output(s, "");
	assert_string_equal(text_str(&fp.refusals), "");
	smtp_session_free(s);
	fake_policy_free(&fp);
}

/* What the glue reads to open a queue entry, and what it logs at the commit. */
static void
test_envelope(void **state)
{
	struct fake_policy fp = {0};
	struct smtp_session *s = session_new(&(struct opts){0}, &fp);
	const struct smtp_mail_params *p;

	assert_string_equal(smtp_session_sender(s), "");
	assert_int_equal(smtp_session_rcpt_count(s), 0);
	FEED_ALL(s, "EHLO client.test\r\n", SMTP_EVENT_NONE);
	assert_string_equal(smtp_session_helo(s), "client.test");
	FEED_ALL(
	    s,
	    "MAIL FROM:<a@b.test> SIZE=300 BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<c@d.test>\r\n"
	    "RCPT TO:<unknown@local.test>\r\nRCPT TO:<\"x y\"@d.test>\r\nRCPT TO:<Postmaster>\r\n"
	    "DATA\r\n",
	    SMTP_EVENT_MESSAGE_BEGIN);
	assert_output(
	    s, GREETING EHLO_OK MAIL_OK RCPT_OK
	    "550 5.1.1 Recipient address rejected: User unknown\n" RCPT_OK RCPT_OK DATA_GO);
	assert_int_equal(fp.calls, 4);
	assert_string_equal(smtp_session_sender(s), "a@b.test");
	assert_int_equal(smtp_session_rcpt_count(s), 3);
	assert_string_equal(smtp_session_rcpt(s, 0), "c@d.test");
	assert_string_equal(smtp_session_rcpt(s, 1), "\"x y\"@d.test");
	assert_string_equal(smtp_session_rcpt(s, 2), "Postmaster");
	p = smtp_session_mail_params(s);
	assert_true(p->has_size);
	assert_int_equal(p->size, 300);
	assert_int_equal(p->body, SMTP_BODY_8BITMIME);
	assert_true(p->smtputf8);
	assert_string_equal(smtp_session_protocol(s), "ESMTP");
	FEED_ALL(s, "12345\r\n..\r\n.\r\n", SMTP_EVENT_MESSAGE_END);
	/* Octets of the message: dot-stuffing undone, CRLFs counted. */
	assert_int_equal(smtp_session_message_size(s), 10);
	assert_string_equal(smtp_session_sender(s), "a@b.test");
	assert_int_equal(smtp_session_rcpt_count(s), 3);
	smtp_session_commit_done(s, SMTP_COMMIT_OK, "Q");
	assert_string_equal(smtp_session_sender(s), "");
	assert_int_equal(smtp_session_rcpt_count(s), 0);
	assert_false(smtp_session_mail_params(s)->has_size);
	/* The null reverse-path. */
	FEED_ALL(s, "MAIL FROM:<>\r\n", SMTP_EVENT_NONE);
	assert_string_equal(smtp_session_sender(s), "");
	assert_int_equal(smtp_session_state(s), SMTP_STATE_MAIL);
	smtp_session_free(s);
	fake_policy_free(&fp);
}

/* The Received header's "with" (RFC 3848). */
static void
test_protocol(void **state)
{
	struct fake_policy fp = {0};
	struct smtp_session *s = session_new(&(struct opts){0}, &fp);

	assert_string_equal(smtp_session_protocol(s), "SMTP");
	FEED_ALL(s, "HELO client.test\r\n", SMTP_EVENT_NONE);
	assert_string_equal(smtp_session_protocol(s), "SMTP");
	FEED_ALL(s, "EHLO client.test\r\n", SMTP_EVENT_NONE);
	assert_string_equal(smtp_session_protocol(s), "ESMTP");
	smtp_session_free(s);

	/* Implicit TLS: the glue says so before the greeting is answered. */
	s = session_new(&(struct opts){.starttls = true}, &fp);
	smtp_session_set_tls(s, true);
	FEED_ALL(s, "EHLO client.test\r\n", SMTP_EVENT_NONE);
	assert_output(s, GREETING EHLO_OK);
	assert_string_equal(smtp_session_protocol(s), "ESMTPS");
	FEED_ALL(s, "STARTTLS\r\n", SMTP_EVENT_NONE);
	assert_output(s, NOT_IMPL);
	smtp_session_free(s);
	fake_policy_free(&fp);
}

/* A connection refused at its start: the 421 instead of the greeting, told as CONNECT's. */
static void
test_refuse(void **state)
{
	struct fake_policy fp = {0};
	struct smtp_session *s = session_new(&(struct opts){0}, &fp);

	smtp_session_refuse(s, "4.7.0", "Error: too many connections from your address");
	assert_output(s, "421 4.7.0 mx.test Error: too many connections from your address\n");
	assert_int_equal(smtp_session_state(s), SMTP_STATE_CLOSED);
	assert_string_equal(text_str(&fp.refusals), "CONNECT/mail 421 4.7.0 mx.test Error: too "
						    "many connections from your address;\n");
	FEED(s, "EHLO client.test\r\n", 0, SMTP_EVENT_NONE);
	assert_output(s, "");
	smtp_session_free(s);
	fake_policy_free(&fp);
}

/* The mechanism the glue names when it logs a failed check. */
static void
test_auth_mechanism(void **state)
{
	struct fake_policy fp = {0};
	struct smtp_session *s = session_new(&(struct opts){.auth = true}, &fp);

	smtp_session_set_tls(s, true);
	FEED_ALL(s, "EHLO client.test\r\nAUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZw==\r\n",
		 SMTP_EVENT_AUTH);
	assert_string_equal(smtp_session_auth_mechanism(s), "PLAIN");
	smtp_session_auth_done(s, false);
	FEED_ALL(s, "AUTH LOGIN YWxpY2VAZXhhbXBsZS50ZXN0\r\nd3Jvbmc=\r\n", SMTP_EVENT_AUTH);
	assert_string_equal(smtp_session_auth_mechanism(s), "LOGIN");
	smtp_session_auth_done(s, false);
	/* Two 535s, neither told: the glue logs a failed check itself. */
	assert_string_equal(text_str(&fp.refusals), "");
	smtp_session_free(s);
	fake_policy_free(&fp);
}

static void
test_state_names(void **state)
{
	for (int i = 0; i < SMTP_STATE_COUNT; i++) {
		const char *name = smtp_state_name((enum smtp_state)i);

		assert_non_null(name);
		assert_true(name[0] != '\0');
		for (int k = 0; k < i; k++)
			assert_string_not_equal(name, smtp_state_name((enum smtp_state)k));
	}
	smtp_session_free(NULL);
}

/*
 * A client that pipelines many commands with long replies in one read (the
 * glue hands over up to 64 KiB at a time) must get every reply: the session
 * has to stop reading before its output buffer fills, not drop replies.
 */
static void
test_output_flood(void **state)
{
	enum { N = 64 * 1024 / 6 };
	char *in = xmalloc(N * 6);
	struct glue g;
	int saved;
	size_t lines = 0;

	for (size_t i = 0; i < N; i++)
		memcpy(in + 6 * i, "HELP\r\n", 6);
	glue_init(&g, "output flood", &(struct opts){0});
	/* Dropped replies are logged once each: keep thousands of lines off the test log. */
	fflush(stderr);
	saved = dup(2);
	assert_true(saved >= 0);
	assert_non_null(freopen("/dev/null", "w", stderr));
	glue_input(&g, in, N * 6);
	fflush(stderr);
	assert_int_equal(dup2(saved, 2), 2);
	close(saved);
	for (size_t i = 0; i < g.replies.len; i++)
		lines += g.replies.p[i] == '\n';
	if (lines != 1 + 2 * (size_t)N)
		fail_msg("%zu reply lines for %d pipelined HELP, want %zu", lines, N,
			 1 + 2 * (size_t)N);
	free(in);
	glue_free(&g);
}

int
main(void)
{
	static const struct CMUnitTest fixed[] = {
	    cmocka_unit_test(test_commit_wait),
	    cmocka_unit_test(test_starttls_injection),
	    cmocka_unit_test(test_auth_overlong_wipes),
	    cmocka_unit_test(test_timeout),
	    cmocka_unit_test(test_close_421),
	    cmocka_unit_test(test_envelope),
	    cmocka_unit_test(test_protocol),
	    cmocka_unit_test(test_refuse),
	    cmocka_unit_test(test_auth_mechanism),
	    cmocka_unit_test(test_state_names),
	    cmocka_unit_test(test_output_flood),
	};
	size_t nfixed = ARRAY_LEN(fixed);
	size_t ncases = ARRAY_LEN(cases);
	struct CMUnitTest *tests;
	size_t n = 0;
	int rc;

	build_gen_cases();
	tests = xcalloc(nfixed + ncases + gen_count, sizeof(*tests));
	for (size_t i = 0; i < nfixed; i++)
		tests[n++] = fixed[i];
	for (size_t i = 0; i < ncases + gen_count; i++) {
		const struct session_case *c = i < ncases ? &cases[i] : &gen_cases[i - ncases].c;

		tests[n++] = (struct CMUnitTest){
		    .name = c->name, .test_func = test_case, .initial_state = (void *)c};
	}
	rc = _cmocka_run_group_tests("smtp_session", tests, n, NULL, NULL);
	free(tests);
	free_gen_cases();
	return rc;
}
