#include "smtp/smtp_session.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp/smtp_body.h"
#include "util/util_base64.h"
#include "util/util_log.h"
#include "util/util_mem.h"

#define OUTPUT_MAX	      (256 * 1024) /* replies not yet written; the glue stops reading first */
#define BODY_CHUNK	      (64 * 1024) /* decoded body octets handed to the glue at a time */
#define DEFAULT_ERRORS	      20
#define DEFAULT_AUTH_FAILURES 3
#define AUTH_FIELD_MAX	      256	  /* user name and password octets */
#define OUTPUT_PAUSE	      (32 * 1024) /* stop reading commands until the glue drains replies */

struct smtp_session {
	struct smtp_session_conf cfg;
	struct smtp_policy policy;
	enum smtp_state state;
	struct buf out;
	size_t errors;
	bool esmtp;	/* EHLO (not HELO) */
	bool tls;	/* under TLS */
	bool skip_line; /* dropping the rest of an overlong command line */
	char *helo;	/* owned */

	/* What the replies being queued answer, for policy.refused (answering, report_refusal). */
	const char *cmd; /* the command's name; NULL: no command (the glue's own 421) */
	enum smtp_verb cmd_verb;
	enum smtp_refusal_kind cmd_kind;
	const char *cmd_arg; /* borrowed: its argument, only while it is dispatched */
	size_t cmd_arg_len;
	const struct smtp_path *cmd_path; /* borrowed: MAIL's or RCPT's parsed address, likewise */

	/* AUTH (RFC 4954): the exchange in progress, and its outcome. */
	enum { AUTH_PLAIN, AUTH_LOGIN_USER, AUTH_LOGIN_PASS } auth_step;
	char auth_user[AUTH_FIELD_MAX]; /* wiped after the check */
	char auth_pass[AUTH_FIELD_MAX]; /* wiped after the check */
	char *authenticated;		/* owned: the user, once AUTH succeeded */
	size_t auth_failures;

	/* The transaction: MAIL .. end of message. */
	char *sender; /* owned, NULL outside a transaction */
	struct smtp_mail_params params;
	char **rcpts; /* owned */
	size_t rcpts_len;
	size_t rcpts_cap;
	bool in_message; /* MESSAGE_BEGIN was sent and not yet ended */

	/* Body reading (DATA and BDAT). */
	struct smtp_body body;
	char *body_buf; /* owned, BODY_CHUNK octets while a message is read */
	size_t body_len;
	uint64_t chunk_left;		/* BDAT: octets of the current chunk still to read */
	uint64_t bdat_octets;		/* BDAT: octets of the message's chunks so far */
	bool chunk_last;		/* BDAT: the current chunk is LAST */
	bool has_nul;			/* cfg.refuse_nul: a NUL was seen in the message */
	enum smtp_state discard_return; /* DISCARD: the state to go back to */
	char discard_reply[128];
};

static const char *const state_names[SMTP_STATE_COUNT] = {
    [SMTP_STATE_INIT] = "init",		  [SMTP_STATE_READY] = "ready",
    [SMTP_STATE_MAIL] = "mail",		  [SMTP_STATE_RCPT] = "rcpt",
    [SMTP_STATE_DATA] = "data",		  [SMTP_STATE_BDAT] = "bdat",
    [SMTP_STATE_BDAT_NEXT] = "bdat-next", [SMTP_STATE_DISCARD] = "discard",
    [SMTP_STATE_COMMIT] = "commit",	  [SMTP_STATE_TLS] = "tls",
    [SMTP_STATE_AUTH] = "auth",		  [SMTP_STATE_AUTH_WAIT] = "auth-wait",
    [SMTP_STATE_CLOSED] = "closed",
};

const char *
smtp_state_name(enum smtp_state st)
{
	return state_names[st];
}

static void
enter_state(struct smtp_session *s, enum smtp_state st)
{
	log_debug("smtp state %s -> %s", state_names[s->state], state_names[st]);
	s->state = st;
}

/* The replies queued from now on answer this command (see struct smtp_refusal). */
static void
answering(struct smtp_session *s, enum smtp_verb verb, const char *name,
	  enum smtp_refusal_kind kind)
{
	s->cmd = name;
	s->cmd_verb = verb;
	s->cmd_kind = kind;
	s->cmd_arg = NULL;
	s->cmd_arg_len = 0;
	s->cmd_path = NULL;
}

/*
 * The address in a MAIL or RCPT argument the parser did not take, as
 * written, for the log: after "FROM:" or "TO:", inside <...> when it opens
 * with "<", else up to a space.  False when there is none.
 */
static bool
raw_path(const char *arg, size_t len, const char **path, size_t *path_len)
{
	const char *end;
	bool bracket;

	if (len >= 5 && strncasecmp(arg, "FROM:", 5) == 0) {
		arg += 5;
		len -= 5;
	} else if (len >= 3 && strncasecmp(arg, "TO:", 3) == 0) {
		arg += 3;
		len -= 3;
	}
	while (len > 0 && *arg == ' ') {
		arg++;
		len--;
	}
	bracket = len > 0 && *arg == '<';
	if (bracket) {
		arg++;
		len--;
	}
	end = memchr(arg, bracket ? '>' : ' ', len);
	*path = arg;
	*path_len = end != NULL ? (size_t)(end - arg) : len;
	return bracket || *path_len > 0;
}

/* Tells policy.refused of the reply line just queued (no CRLF) and what it answers. */
static void
report_refusal(struct smtp_session *s, const char *line, size_t len)
{
	struct smtp_refusal r = {
	    .kind = s->cmd_kind, .command = s->cmd, .reply = line, .reply_len = len};
	const struct smtp_path *path = s->cmd_path;

	if (s->sender != NULL) {
		r.sender = s->sender;
		r.sender_len = strlen(s->sender);
	}
	if (s->helo != NULL) {
		r.helo = s->helo;
		r.helo_len = strlen(s->helo);
	}
	switch (s->cmd_verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
		if (s->cmd_arg != NULL) {
			r.helo = s->cmd_arg;
			r.helo_len = s->cmd_arg_len;
		}
		break;
	case SMTP_VERB_MAIL:
		if (path != NULL) {
			r.sender = path->addr;
			r.sender_len = strlen(path->addr);
		} else if (s->cmd_arg != NULL &&
			   !raw_path(s->cmd_arg, s->cmd_arg_len, &r.sender, &r.sender_len)) {
			r.sender = NULL;
		}
		break;
	case SMTP_VERB_RCPT:
		if (path != NULL) {
			r.rcpt = path->addr;
			r.rcpt_len = strlen(path->addr);
		} else if (s->cmd_arg != NULL &&
			   !raw_path(s->cmd_arg, s->cmd_arg_len, &r.rcpt, &r.rcpt_len)) {
			r.rcpt = NULL;
		}
		break;
	case SMTP_VERB_DATA:
	case SMTP_VERB_BDAT:
		r.nrcpt = s->rcpts_len;
		if (s->rcpts_len > 0) {
			r.rcpt = s->rcpts[0];
			r.rcpt_len = strlen(s->rcpts[0]);
		}
		break;
	case SMTP_VERB_UNKNOWN:
	case SMTP_VERB_RSET:
	case SMTP_VERB_NOOP:
	case SMTP_VERB_VRFY:
	case SMTP_VERB_EXPN:
	case SMTP_VERB_HELP:
	case SMTP_VERB_QUIT:
	case SMTP_VERB_STARTTLS:
	case SMTP_VERB_AUTH: /* never its argument: it may hold the password */
		break;
	}
	s->policy.refused(s->policy.ctx, &r);
}

static void __attribute__((format(printf, 2, 3)))
reply(struct smtp_session *s, const char *fmt, ...)
{
	va_list ap;
	size_t start = s->out.len;

	/*
	 * A client that pipelines without reading fills this; the glue stops
	 * feeding long before OUTPUT_MAX, so running out here is a bug.
	 */
	va_start(ap, fmt);
	if (buf_vprintf(&s->out, fmt, ap) != 0 || buf_append(&s->out, "\r\n", 2) != 0) {
		log_err("smtp output buffer full; reply dropped");
		va_end(ap);
		return;
	}
	va_end(ap);
	/* Only a refusal costs more than this test. */
	if ((s->out.data[start] == '4' || s->out.data[start] == '5') && s->cmd != NULL &&
	    s->policy.refused != NULL)
		report_refusal(s, s->out.data + start, s->out.len - start - 2);
}

/* A refused command: counts towards the error limit (slows down scanners and fuzzers). */
static enum smtp_event
error_reply(struct smtp_session *s, const char *text)
{
	reply(s, "%s", text);
	if (++s->errors >= s->cfg.max_errors) {
		reply(s, "421 4.7.0 %s Error: too many errors", s->cfg.hostname);
		enter_state(s, SMTP_STATE_CLOSED);
		return SMTP_EVENT_CLOSE;
	}
	return SMTP_EVENT_NONE;
}

static void
txn_reset(struct smtp_session *s)
{
	free(s->sender);
	s->sender = NULL;
	for (size_t i = 0; i < s->rcpts_len; i++)
		free(s->rcpts[i]);
	s->rcpts_len = 0;
	memset(&s->params, 0, sizeof(s->params));
	free(s->body_buf);
	s->body_buf = NULL;
	s->body_len = 0;
	s->chunk_left = 0;
	s->chunk_last = false;
}

struct smtp_session *
smtp_session_new(const struct smtp_session_conf *cfg, const struct smtp_policy *policy)
{
	struct smtp_session *s = xcalloc(1, sizeof(*s));

	s->cfg = *cfg;
	if (s->cfg.max_errors == 0)
		s->cfg.max_errors = DEFAULT_ERRORS;
	if (s->cfg.max_auth_failures == 0)
		s->cfg.max_auth_failures = DEFAULT_AUTH_FAILURES;
	s->policy = *policy;
	buf_init(&s->out, OUTPUT_MAX);
	s->state = SMTP_STATE_INIT;
	reply(s, "220 %s ESMTP petrel", s->cfg.hostname);
	return s;
}

void
smtp_session_free(struct smtp_session *s)
{
	if (s == NULL)
		return;
	txn_reset(s);
	free(s->rcpts);
	free(s->helo);
	free(s->authenticated);
	util_wipe(s->auth_user, sizeof(s->auth_user));
	util_wipe(s->auth_pass, sizeof(s->auth_pass));
	buf_free(&s->out);
	free(s);
}

struct buf *
smtp_session_output(struct smtp_session *s)
{
	return &s->out;
}

/* AUTH (and MAIL's AUTH= parameter) is offered under TLS only (RFC 4954 4). */
static bool
auth_available(const struct smtp_session *s)
{
	return s->cfg.auth_offered && s->tls;
}

/* ---- command handlers ------------------------------------------------ */

typedef enum smtp_event (*handler_fn)(struct smtp_session *s, const char *arg, size_t len);

static enum smtp_event
do_helo(struct smtp_session *s, const char *arg, size_t len, bool esmtp)
{
	if (!smtp_helo_arg_valid(arg, len))
		return error_reply(s, esmtp ? "501 5.5.4 Syntax: EHLO hostname"
					    : "501 5.5.4 Syntax: HELO hostname");
	txn_reset(s);
	free(s->helo);
	s->helo = xstrndup(arg, len);
	s->esmtp = esmtp;
	enter_state(s, SMTP_STATE_READY);
	if (!esmtp) {
		reply(s, "250 %s", s->cfg.hostname);
		return SMTP_EVENT_NONE;
	}
	reply(s, "250-%s", s->cfg.hostname);
	reply(s, "250-PIPELINING");
	reply(s, "250-SIZE %" PRIu64, s->cfg.max_message_size);
	if (s->cfg.starttls_offered && !s->tls)
		reply(s, "250-STARTTLS");
	if (auth_available(s))
		reply(s, "250-AUTH PLAIN LOGIN");
	reply(s, "250-ENHANCEDSTATUSCODES");
	reply(s, "250-8BITMIME");
	reply(s, "250-SMTPUTF8");
	reply(s, "250 CHUNKING");
	return SMTP_EVENT_NONE;
}

static enum smtp_event
cmd_helo(struct smtp_session *s, const char *arg, size_t len)
{
	return do_helo(s, arg, len, false);
}

static enum smtp_event
cmd_ehlo(struct smtp_session *s, const char *arg, size_t len)
{
	return do_helo(s, arg, len, true);
}

/* Replies to MAIL and RCPT arguments the parser refused (RFC 5321 4.1.1, RFC 3463 3). */
static const char *const mail_arg_replies[] = {
    [SMTP_ARG_OK] = NULL,
    [SMTP_ARG_SYNTAX] = "501 5.5.2 Syntax: MAIL FROM:<address>",
    [SMTP_ARG_PATH_SYNTAX] = "501 5.1.7 Bad sender address syntax",
    [SMTP_ARG_PATH_TOO_LONG] = "501 5.1.7 Sender address too long",
    [SMTP_ARG_PARAM_UNKNOWN] = "555 5.5.4 Unsupported MAIL parameter",
    [SMTP_ARG_PARAM_INVALID] = "501 5.5.4 Bad MAIL parameter value",
};

static const char *const rcpt_arg_replies[] = {
    [SMTP_ARG_OK] = NULL,
    [SMTP_ARG_SYNTAX] = "501 5.5.2 Syntax: RCPT TO:<address>",
    [SMTP_ARG_PATH_SYNTAX] = "501 5.1.3 Bad recipient address syntax",
    [SMTP_ARG_PATH_TOO_LONG] = "501 5.1.3 Recipient address too long",
    [SMTP_ARG_PARAM_UNKNOWN] = "555 5.5.4 Unsupported RCPT parameter",
    [SMTP_ARG_PARAM_INVALID] = "501 5.5.4 Bad RCPT parameter value",
};

static const char *const rcpt_verdict_replies[] = {
    [SMTP_RCPT_ACCEPT] = "250 2.1.5 Ok",
    [SMTP_RCPT_UNKNOWN_USER] = "550 5.1.1 Recipient address rejected: User unknown",
    [SMTP_RCPT_BAD_MAILBOX] = "553 5.1.3 Recipient address rejected: invalid mailbox name",
    [SMTP_RCPT_RELAY_DENIED] = "550 5.7.1 Relay access denied",
    [SMTP_RCPT_TEMPFAIL] = "451 4.3.0 Recipient address rejected: temporary local problem",
};

/*
 * MAIL and RCPT once their address parsed: the path is borrowed into
 * s->cmd_path, for a refusal to name it, until dispatch() returns.
 */
static enum smtp_event
mail_parsed(struct smtp_session *s, const struct smtp_path *path,
	    const struct smtp_mail_params *params)
{
	s->cmd_path = path;
	if (path->is_utf8 && !params->smtputf8)
		return error_reply(s, "553 5.6.7 Non-ASCII sender address requires SMTPUTF8");
	if (params->has_size && params->size > s->cfg.max_message_size)
		return error_reply(s, "552 5.3.4 Message size exceeds fixed maximum message size");
	if (s->authenticated != NULL && s->policy.sender_allowed != NULL &&
	    !s->policy.sender_allowed(s->policy.ctx, path, s->authenticated))
		return error_reply(s, "553 5.7.1 Sender address rejected: not owned by user");
	s->sender = xstrdup(path->addr);
	s->params = *params;
	enter_state(s, SMTP_STATE_MAIL);
	reply(s, "250 2.1.0 Ok");
	return SMTP_EVENT_NONE;
}

static enum smtp_event
cmd_mail(struct smtp_session *s, const char *arg, size_t len)
{
	struct smtp_path path;
	struct smtp_mail_params params;
	enum smtp_arg_status st;

	if (s->cfg.auth_required && s->authenticated == NULL)
		return error_reply(s, s->tls ? "530 5.7.0 Authentication required"
					     : "530 5.7.0 Must issue a STARTTLS command first");
	st = smtp_parse_mail_from(arg, len, auth_available(s), &path, &params);
	if (st != SMTP_ARG_OK)
		return error_reply(s, mail_arg_replies[st]);
	return mail_parsed(s, &path, &params);
}

static enum smtp_event
rcpt_parsed(struct smtp_session *s, const struct smtp_path *path)
{
	enum smtp_rcpt_verdict verdict;

	s->cmd_path = path;
	if (path->is_utf8 && !s->params.smtputf8)
		return error_reply(s, "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8");
	if (s->rcpts_len >= s->cfg.max_recipients) {
		/* RFC 5321 4.5.3.1.10: a temporary reply; the client sends the rest later. */
		reply(s, "452 4.5.3 Error: too many recipients");
		return SMTP_EVENT_NONE;
	}
	verdict = s->policy.check_rcpt(s->policy.ctx, path);
	if (verdict == SMTP_RCPT_TEMPFAIL) {
		/* Not the client's fault: not counted as an error. */
		reply(s, "%s", rcpt_verdict_replies[verdict]);
		return SMTP_EVENT_NONE;
	}
	if (verdict != SMTP_RCPT_ACCEPT)
		return error_reply(s, rcpt_verdict_replies[verdict]);
	if (s->rcpts_len == s->rcpts_cap) {
		s->rcpts_cap = s->rcpts_cap ? s->rcpts_cap * 2 : 4;
		s->rcpts = xrealloc(s->rcpts, s->rcpts_cap * sizeof(*s->rcpts));
	}
	s->rcpts[s->rcpts_len++] = xstrdup(path->addr);
	enter_state(s, SMTP_STATE_RCPT);
	reply(s, "%s", rcpt_verdict_replies[SMTP_RCPT_ACCEPT]);
	return SMTP_EVENT_NONE;
}

static enum smtp_event
cmd_rcpt(struct smtp_session *s, const char *arg, size_t len)
{
	struct smtp_path path;
	enum smtp_arg_status st = smtp_parse_rcpt_to(arg, len, &path);

	if (st != SMTP_ARG_OK)
		return error_reply(s, rcpt_arg_replies[st]);
	return rcpt_parsed(s, &path);
}

static void
message_start(struct smtp_session *s)
{
	smtp_body_begin(&s->body, s->cfg.max_message_size);
	s->bdat_octets = 0;
	if (s->body_buf == NULL)
		s->body_buf = xmalloc(BODY_CHUNK);
	s->body_len = 0;
	s->has_nul = false;
	s->in_message = true;
}

/* Looks for a NUL in the body octets decoded since from (only when refuse_nul asks). */
static void
note_nul(struct smtp_session *s, size_t from)
{
	if (s->cfg.refuse_nul && !s->has_nul && from < s->body_len &&
	    memchr(s->body_buf + from, '\0', s->body_len - from) != NULL)
		s->has_nul = true;
}

static enum smtp_event
cmd_data(struct smtp_session *s, const char *arg, size_t len)
{
	if (len != 0)
		return error_reply(s, "501 5.5.4 Syntax: DATA");
	if (s->state == SMTP_STATE_MAIL)
		return error_reply(s, "554 5.5.1 Error: no valid recipients");
	message_start(s);
	enter_state(s, SMTP_STATE_DATA);
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
	return SMTP_EVENT_MESSAGE_BEGIN;
}

/*
 * BDAT data must be read even when the command is refused (RFC 3030 2):
 * the chunk is dropped in SMTP_STATE_DISCARD and the reply comes after it.
 */
static enum smtp_event
bdat_refuse(struct smtp_session *s, uint64_t size, const char *text)
{
	if (size == 0)
		return error_reply(s, text);
	snprintf(s->discard_reply, sizeof(s->discard_reply), "%s", text);
	s->chunk_left = size;
	s->discard_return = s->state;
	enter_state(s, SMTP_STATE_DISCARD);
	return SMTP_EVENT_NONE;
}

static enum smtp_event
cmd_bdat(struct smtp_session *s, const char *arg, size_t len)
{
	uint64_t size;
	bool last;
	enum smtp_event ev = SMTP_EVENT_NONE;

	if (smtp_parse_bdat(arg, len, &size, &last) != 0) {
		/* The chunk's extent is unknown: its octets would be read as commands. */
		reply(s, "501 5.5.4 Syntax: BDAT size [LAST]");
		enter_state(s, SMTP_STATE_CLOSED);
		return SMTP_EVENT_CLOSE;
	}
	switch (s->state) {
	case SMTP_STATE_INIT:
		return bdat_refuse(s, size, "503 5.5.1 Error: send HELO/EHLO first");
	case SMTP_STATE_READY:
		return bdat_refuse(s, size, "503 5.5.1 Error: need MAIL command");
	case SMTP_STATE_MAIL:
		return bdat_refuse(s, size, "554 5.5.1 Error: no valid recipients");
	case SMTP_STATE_RCPT:
		message_start(s);
		ev = SMTP_EVENT_MESSAGE_BEGIN;
		break;
	case SMTP_STATE_BDAT_NEXT:
		break;
	case SMTP_STATE_DATA:
	case SMTP_STATE_BDAT:
	case SMTP_STATE_DISCARD:
	case SMTP_STATE_COMMIT:
	case SMTP_STATE_TLS:
	case SMTP_STATE_AUTH:
	case SMTP_STATE_AUTH_WAIT:
	case SMTP_STATE_CLOSED:
		/* Not reachable: the dispatcher does not read commands in these states. */
		abort();
	}
	s->chunk_left = size;
	s->chunk_last = last;
	enter_state(s, SMTP_STATE_BDAT);
	return ev;
}

static enum smtp_event
cmd_rset(struct smtp_session *s, const char *arg, size_t len)
{
	if (len != 0)
		return error_reply(s, "501 5.5.4 Syntax: RSET");
	txn_reset(s);
	if (s->state != SMTP_STATE_INIT)
		enter_state(s, SMTP_STATE_READY);
	reply(s, "250 2.0.0 Ok");
	if (s->in_message) {
		/* RSET between BDAT chunks drops the half-received message. */
		s->in_message = false;
		return SMTP_EVENT_MESSAGE_ABORT;
	}
	return SMTP_EVENT_NONE;
}

static enum smtp_event
cmd_noop(struct smtp_session *s, const char *arg, size_t len)
{
	reply(s, "250 2.0.0 Ok");
	return SMTP_EVENT_NONE;
}

static enum smtp_event
cmd_vrfy(struct smtp_session *s, const char *arg, size_t len)
{
	if (len == 0)
		return error_reply(s, "501 5.5.4 Syntax: VRFY address");
	/* RFC 5321 3.5.3: 252 neither confirms nor denies; no user enumeration. */
	reply(s, "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery");
	return SMTP_EVENT_NONE;
}

static enum smtp_event
cmd_expn(struct smtp_session *s, const char *arg, size_t len)
{
	return error_reply(s, "502 5.5.1 Error: EXPN not available");
}

static enum smtp_event
cmd_help(struct smtp_session *s, const char *arg, size_t len)
{
	reply(s, "214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT%s",
	      s->cfg.starttls_offered && !s->tls ? " STARTTLS" : "");
	reply(s, "214 2.0.0 See RFC 5321");
	return SMTP_EVENT_NONE;
}

static enum smtp_event
cmd_quit(struct smtp_session *s, const char *arg, size_t len)
{
	reply(s, "221 2.0.0 Bye");
	enter_state(s, SMTP_STATE_CLOSED);
	return SMTP_EVENT_CLOSE;
}

static enum smtp_event
cmd_starttls(struct smtp_session *s, const char *arg, size_t len)
{
	if (!s->cfg.starttls_offered || s->tls)
		return error_reply(s, "502 5.5.1 Error: command not implemented");
	if (len != 0)
		return error_reply(s, "501 5.5.4 Syntax: STARTTLS");
	txn_reset(s);
	reply(s, "220 2.0.0 Ready to start TLS");
	enter_state(s, SMTP_STATE_TLS);
	return SMTP_EVENT_STARTTLS;
}

/* Splits PLAIN's "authzid NUL authcid NUL passwd" (RFC 4616 2). */
static bool
auth_plain_split(struct smtp_session *s, const unsigned char *p, size_t len)
{
	const unsigned char *nul1 = memchr(p, '\0', len), *nul2;
	size_t authz_len, user_len, pass_len;

	if (nul1 == NULL)
		return false;
	nul2 = memchr(nul1 + 1, '\0', len - (size_t)(nul1 + 1 - p));
	if (nul2 == NULL)
		return false;
	authz_len = (size_t)(nul1 - p);
	user_len = (size_t)(nul2 - nul1 - 1);
	pass_len = len - (size_t)(nul2 + 1 - p);
	if (user_len == 0 || user_len >= AUTH_FIELD_MAX || pass_len >= AUTH_FIELD_MAX ||
	    memchr(nul2 + 1, '\0', pass_len) != NULL)
		return false;
	/* Acting for someone else is not offered. */
	if (authz_len > 0 && (authz_len != user_len || memcmp(p, nul1 + 1, user_len) != 0))
		return false;
	memcpy(s->auth_user, nul1 + 1, user_len);
	s->auth_user[user_len] = '\0';
	memcpy(s->auth_pass, nul2 + 1, pass_len);
	s->auth_pass[pass_len] = '\0';
	return true;
}

/* Ends an AUTH exchange without a check (RFC 4954 4): no credentials are kept. */
static enum smtp_event
auth_abort(struct smtp_session *s, const char *text)
{
	util_wipe(s->auth_user, sizeof(s->auth_user));
	util_wipe(s->auth_pass, sizeof(s->auth_pass));
	enter_state(s, SMTP_STATE_READY);
	return error_reply(s, text);
}

/* A base64 SASL response (initial or after a 334); returns the event. */
static enum smtp_event
auth_response(struct smtp_session *s, const char *b64, size_t len)
{
	unsigned char dec[2 * AUTH_FIELD_MAX + 4];
	long n;

	if (len == 1 && b64[0] == '*')
		return auth_abort(s, "501 5.0.0 Authentication cancelled");
	/* "=" is an empty initial response (RFC 4954 4). */
	n = (len == 1 && b64[0] == '=') ? 0 : util_base64_decode(b64, len, dec, sizeof(dec));
	if (n < 0)
		return auth_abort(s, "501 5.5.2 Cannot decode response");
	switch (s->auth_step) {
	case AUTH_PLAIN:
		if (!auth_plain_split(s, dec, (size_t)n)) {
			util_wipe(dec, sizeof(dec));
			return auth_abort(s, "501 5.5.2 Malformed PLAIN response");
		}
		break;
	case AUTH_LOGIN_USER:
	case AUTH_LOGIN_PASS: {
		char *dst = s->auth_step == AUTH_LOGIN_USER ? s->auth_user : s->auth_pass;
		if ((size_t)n >= AUTH_FIELD_MAX || memchr(dec, '\0', (size_t)n) != NULL ||
		    (s->auth_step == AUTH_LOGIN_USER && n == 0)) {
			util_wipe(dec, sizeof(dec));
			return auth_abort(s, "501 5.5.2 Malformed LOGIN response");
		}
		memcpy(dst, dec, (size_t)n);
		dst[n] = '\0';
		if (s->auth_step == AUTH_LOGIN_USER) {
			s->auth_step = AUTH_LOGIN_PASS;
			util_wipe(dec, sizeof(dec));
			reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
			return SMTP_EVENT_NONE;
		}
		break;
	}
	}
	util_wipe(dec, sizeof(dec));
	enter_state(s, SMTP_STATE_AUTH_WAIT);
	return SMTP_EVENT_AUTH;
}

static enum smtp_event
cmd_auth(struct smtp_session *s, const char *arg, size_t len)
{
	const char *sp = memchr(arg, ' ', len);
	size_t mech_len = sp ? (size_t)(sp - arg) : len;
	const char *initial = sp ? sp + 1 : NULL;
	size_t initial_len = sp ? len - mech_len - 1 : 0;

	if (!s->cfg.auth_offered)
		return error_reply(s, "502 5.5.1 Error: authentication not enabled");
	if (s->state != SMTP_STATE_READY)
		return error_reply(s, s->state == SMTP_STATE_INIT
					  ? "503 5.5.1 Error: send HELO/EHLO first"
					  : "503 5.5.1 Error: MAIL transaction in progress");
	if (!s->tls)
		return error_reply(s, "538 5.7.11 Encryption required for requested authentication "
				      "mechanism");
	if (s->authenticated != NULL)
		return error_reply(s, "503 5.5.1 Error: already authenticated");
	if (mech_len == 5 && strncasecmp(arg, "PLAIN", 5) == 0) {
		s->auth_step = AUTH_PLAIN;
	} else if (mech_len == 5 && strncasecmp(arg, "LOGIN", 5) == 0) {
		s->auth_step = AUTH_LOGIN_USER;
	} else {
		return error_reply(s, "504 5.5.4 Unrecognized authentication type");
	}
	enter_state(s, SMTP_STATE_AUTH);
	if (initial != NULL)
		return auth_response(s, initial, initial_len);
	reply(s, s->auth_step == AUTH_PLAIN ? "334 " : "334 VXNlcm5hbWU6"); /* "Username:" */
	return SMTP_EVENT_NONE;
}

static enum smtp_event
cmd_unknown(struct smtp_session *s, const char *arg, size_t len)
{
	return error_reply(s, "500 5.5.2 Error: command not recognized");
}

/* Where a verb may be used: one bit per state. */
#define ST(x)	(1u << SMTP_STATE_##x)
#define ANY_CMD (ST(INIT) | ST(READY) | ST(MAIL) | ST(RCPT) | ST(BDAT_NEXT))

static const struct command {
	const char *name; /* in the log (struct smtp_refusal) */
	handler_fn fn;
	unsigned states;		   /* where the verb is allowed; elsewhere 503 */
	const char *refusal;		   /* the 503 text */
	enum smtp_refusal_kind refused_as; /* what its refusals are, for the log */
} commands[SMTP_VERB_COUNT] = {
    [SMTP_VERB_UNKNOWN] = {"UNKNOWN", cmd_unknown, ANY_CMD, NULL, SMTP_REFUSAL_PROTOCOL},
    [SMTP_VERB_HELO] = {"HELO", cmd_helo, ANY_CMD & ~ST(BDAT_NEXT),
			"503 5.5.1 Error: BDAT transaction in progress", SMTP_REFUSAL_PROTOCOL},
    [SMTP_VERB_EHLO] = {"EHLO", cmd_ehlo, ANY_CMD & ~ST(BDAT_NEXT),
			"503 5.5.1 Error: BDAT transaction in progress", SMTP_REFUSAL_PROTOCOL},
    [SMTP_VERB_MAIL] = {"MAIL", cmd_mail, ST(READY), NULL, SMTP_REFUSAL_MAIL},
    [SMTP_VERB_RCPT] = {"RCPT", cmd_rcpt, ST(MAIL) | ST(RCPT), NULL, SMTP_REFUSAL_MAIL},
    [SMTP_VERB_DATA] = {"DATA", cmd_data, ST(MAIL) | ST(RCPT), NULL, SMTP_REFUSAL_MAIL},
    [SMTP_VERB_BDAT] = {"BDAT", cmd_bdat, ANY_CMD, NULL, SMTP_REFUSAL_MAIL},
    [SMTP_VERB_RSET] = {"RSET", cmd_rset, ANY_CMD, NULL, SMTP_REFUSAL_PROTOCOL},
    [SMTP_VERB_NOOP] = {"NOOP", cmd_noop, ANY_CMD, NULL, SMTP_REFUSAL_PROTOCOL},
    [SMTP_VERB_VRFY] = {"VRFY", cmd_vrfy, ANY_CMD, NULL, SMTP_REFUSAL_PROTOCOL},
    [SMTP_VERB_EXPN] = {"EXPN", cmd_expn, ANY_CMD & ~ST(BDAT_NEXT), NULL, SMTP_REFUSAL_PROTOCOL},
    [SMTP_VERB_HELP] = {"HELP", cmd_help, ANY_CMD, NULL, SMTP_REFUSAL_PROTOCOL},
    [SMTP_VERB_QUIT] = {"QUIT", cmd_quit, ANY_CMD, NULL, SMTP_REFUSAL_PROTOCOL},
    [SMTP_VERB_STARTTLS] = {"STARTTLS", cmd_starttls, ST(INIT) | ST(READY),
			    "503 5.5.1 Error: STARTTLS not allowed in a mail transaction",
			    SMTP_REFUSAL_PROTOCOL},
    [SMTP_VERB_AUTH] = {"AUTH", cmd_auth, ANY_CMD & ~ST(BDAT_NEXT), NULL, SMTP_REFUSAL_PROTOCOL},
};

/* The 503 for a verb used out of order (RFC 5321 4.1.4). */
static const char *
sequence_error(const struct smtp_session *s, enum smtp_verb verb)
{
	if (commands[verb].refusal != NULL)
		return commands[verb].refusal;
	switch (s->state) {
	case SMTP_STATE_INIT:
		return "503 5.5.1 Error: send HELO/EHLO first";
	case SMTP_STATE_READY:
		return "503 5.5.1 Error: need MAIL command";
	case SMTP_STATE_MAIL:
	case SMTP_STATE_RCPT:
		return "503 5.5.1 Error: nested MAIL command";
	case SMTP_STATE_BDAT_NEXT:
		return "503 5.5.1 Error: BDAT transaction in progress";
	case SMTP_STATE_DATA:
	case SMTP_STATE_BDAT:
	case SMTP_STATE_DISCARD:
	case SMTP_STATE_COMMIT:
	case SMTP_STATE_TLS:
	case SMTP_STATE_AUTH:
	case SMTP_STATE_AUTH_WAIT:
	case SMTP_STATE_CLOSED:
		break;
	}
	return "503 5.5.1 Error: bad sequence of commands";
}

static bool
has_control_octets(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];
		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return true;
	}
	return false;
}

static enum smtp_event
dispatch(struct smtp_session *s, const char *line, size_t len)
{
	struct smtp_command cmd;
	enum smtp_event ev;

	smtp_parse_command(line, len, &cmd);
	answering(s, cmd.verb, commands[cmd.verb].name, commands[cmd.verb].refused_as);
	s->cmd_arg = cmd.arg;
	s->cmd_arg_len = cmd.arg_len;
	/* NUL, bare CR and other control octets never reach a handler. */
	if (has_control_octets(line, len))
		ev = error_reply(s, "500 5.5.2 Error: invalid characters in command");
	else if (!(commands[cmd.verb].states & (1u << s->state)))
		ev = error_reply(s, sequence_error(s, cmd.verb));
	else
		ev = commands[cmd.verb].fn(s, cmd.arg, cmd.arg_len);
	/* Borrowed from the line and the handler: gone once it returns. */
	s->cmd_arg = NULL;
	s->cmd_path = NULL;
	return ev;
}

/* ---- input ------------------------------------------------------------ */

/* The message ended (DATA terminator or last BDAT chunk): accept or refuse it. */
static enum smtp_event
message_end(struct smtp_session *s)
{
	unsigned flags = s->body.flags;
	const char *text = NULL;

	answering(s, s->state == SMTP_STATE_BDAT ? SMTP_VERB_BDAT : SMTP_VERB_DATA,
		  "END-OF-MESSAGE", SMTP_REFUSAL_MAIL);
	if (flags & SMTP_BODY_TOO_BIG)
		text = "552 5.3.4 Error: message size exceeds fixed limit";
	else if (flags & SMTP_BODY_BARE_EOL)
		text = "550 5.6.0 Error: bare CR or LF in message; use CRLF line ends";
	else if (flags & SMTP_BODY_LONG_LINE)
		text = "550 5.6.0 Error: message has a line over 1000 octets (RFC 5321 4.5.3.1.6)";
	else if (s->has_nul)
		text = "550 5.6.0 Error: NUL octet in message";
	if (text != NULL) {
		reply(s, "%s", text);
		s->in_message = false;
		txn_reset(s);
		enter_state(s, SMTP_STATE_READY);
		return SMTP_EVENT_MESSAGE_ABORT;
	}
	enter_state(s, SMTP_STATE_COMMIT);
	return SMTP_EVENT_MESSAGE_END;
}

static size_t
feed_data(struct smtp_session *s, const char *in, size_t len, enum smtp_event *ev)
{
	size_t used = 0, from = s->body_len;
	enum smtp_body_status st;

	st = smtp_body_data(&s->body, in, len, &used, s->body_buf, BODY_CHUNK, &s->body_len);
	note_nul(s, from);
	if (st == SMTP_BODY_END) {
		*ev = message_end(s);
		return used;
	}
	if (BODY_CHUNK - s->body_len < 2)
		*ev = SMTP_EVENT_BODY;
	return used;
}

static size_t
feed_bdat(struct smtp_session *s, const char *in, size_t len, enum smtp_event *ev)
{
	size_t want = len < s->chunk_left ? len : (size_t)s->chunk_left;
	size_t used = 0, from = s->body_len;

	smtp_body_bdat(&s->body, in, want, &used, s->body_buf, BODY_CHUNK, &s->body_len);
	note_nul(s, from);
	s->chunk_left -= used;
	s->bdat_octets += used;
	if (s->chunk_left > 0) {
		if (BODY_CHUNK - s->body_len < 2)
			*ev = SMTP_EVENT_BODY;
		return used;
	}
	if (s->chunk_last) {
		smtp_body_bdat_end(&s->body);
		*ev = message_end(s);
		return used;
	}
	reply(s, "250 2.0.0 %" PRIu64 " octets received", s->bdat_octets);
	enter_state(s, SMTP_STATE_BDAT_NEXT);
	return used;
}

static size_t
feed_discard(struct smtp_session *s, size_t len, enum smtp_event *ev)
{
	size_t used = len < s->chunk_left ? len : (size_t)s->chunk_left;

	s->chunk_left -= used;
	if (s->chunk_left == 0) {
		enter_state(s, s->discard_return);
		answering(s, SMTP_VERB_BDAT, "BDAT", SMTP_REFUSAL_MAIL);
		*ev = error_reply(s, s->discard_reply);
	}
	return used;
}

/* One command line, or the bytes of an overlong line being skipped. */
static size_t
feed_command(struct smtp_session *s, const char *in, size_t len, enum smtp_event *ev)
{
	const char *lf = memchr(in, '\n', len < SMTP_LINE_MAX ? len : SMTP_LINE_MAX);
	size_t line_len;

	if (lf == NULL) {
		if (len < SMTP_LINE_MAX && !s->skip_line)
			return 0; /* a partial line: wait for the rest */
		/* Over the limit (RFC 5321 4.5.3.1.4): drop up to the next LF, then reply. */
		s->skip_line = true;
		return len < SMTP_LINE_MAX ? len : SMTP_LINE_MAX;
	}
	line_len = (size_t)(lf - in);
	if (s->skip_line) {
		s->skip_line = false;
		/*
		 * A SASL response has the command line's limit: every PLAIN or
		 * LOGIN response auth_response can decode is shorter (under 700
		 * octets of base64).  One over it ends the exchange (RFC 4954
		 * 4), or the next command would be taken for a response.
		 */
		if (s->state == SMTP_STATE_AUTH) {
			answering(s, SMTP_VERB_AUTH, "AUTH", SMTP_REFUSAL_PROTOCOL);
			*ev = auth_abort(s, "501 5.5.2 Error: authentication response too long");
		} else {
			answering(s, SMTP_VERB_UNKNOWN, "UNKNOWN", SMTP_REFUSAL_PROTOCOL);
			*ev = error_reply(s, "500 5.5.2 Error: command line too long");
		}
		return line_len + 1;
	}
	if (line_len > 0 && in[line_len - 1] == '\r')
		line_len--;
	if (s->state == SMTP_STATE_AUTH) {
		answering(s, SMTP_VERB_AUTH, "AUTH", SMTP_REFUSAL_PROTOCOL);
		*ev = auth_response(s, in, line_len);
	} else {
		*ev = dispatch(s, in, line_len);
	}
	return (size_t)(lf - in) + 1;
}

size_t
smtp_session_feed(struct smtp_session *s, const char *in, size_t len, enum smtp_event *ev)
{
	size_t used = 0;

	*ev = SMTP_EVENT_NONE;
	/* A client that pipelines without reading our replies is not read further. */
	while (used < len && *ev == SMTP_EVENT_NONE && s->out.len < OUTPUT_PAUSE) {
		size_t n = 0;

		switch (s->state) {
		case SMTP_STATE_INIT:
		case SMTP_STATE_READY:
		case SMTP_STATE_MAIL:
		case SMTP_STATE_RCPT:
		case SMTP_STATE_BDAT_NEXT:
		case SMTP_STATE_AUTH:
			n = feed_command(s, in + used, len - used, ev);
			if (n == 0)
				return used;
			break;
		case SMTP_STATE_DATA:
			n = feed_data(s, in + used, len - used, ev);
			break;
		case SMTP_STATE_BDAT:
			n = feed_bdat(s, in + used, len - used, ev);
			break;
		case SMTP_STATE_DISCARD:
			n = feed_discard(s, len - used, ev);
			break;
		case SMTP_STATE_COMMIT:
		case SMTP_STATE_TLS:
		case SMTP_STATE_AUTH_WAIT:
		case SMTP_STATE_CLOSED:
			return used;
		}
		used += n;
	}
	/* A zero-length BDAT chunk ends without needing input. */
	if (*ev == SMTP_EVENT_NONE && s->state == SMTP_STATE_BDAT && s->chunk_left == 0)
		used += feed_bdat(s, in + used, 0, ev);
	return used;
}

void
smtp_session_body_take(struct smtp_session *s, const char **data, size_t *len)
{
	*data = s->body_buf;
	*len = s->body_len;
	s->body_len = 0;
}

void
smtp_session_commit_done(struct smtp_session *s, enum smtp_commit_result r, const char *id)
{
	if (s->state != SMTP_STATE_COMMIT)
		return;
	answering(s, SMTP_VERB_DATA, "END-OF-MESSAGE", SMTP_REFUSAL_MAIL);
	switch (r) {
	case SMTP_COMMIT_OK:
		reply(s, "250 2.0.0 Ok: queued as %s", id);
		break;
	case SMTP_COMMIT_NO_SPACE:
		reply(s, "452 4.3.1 Error: insufficient system storage");
		break;
	case SMTP_COMMIT_ERROR:
		reply(s, "451 4.3.0 Error: local error in processing");
		break;
	}
	s->in_message = false;
	txn_reset(s);
	enter_state(s, SMTP_STATE_READY);
}

void
smtp_session_auth_take(const struct smtp_session *s, const char **user, const char **password)
{
	*user = s->auth_user;
	*password = s->auth_pass;
}

void
smtp_session_auth_done(struct smtp_session *s, bool ok)
{
	if (s->state != SMTP_STATE_AUTH_WAIT)
		return;
	enter_state(s, SMTP_STATE_READY);
	/* The 535 is not told: the glue logged the failure as it learnt of it. */
	s->cmd = NULL;
	if (ok) {
		s->authenticated = xstrdup(s->auth_user);
		reply(s, "235 2.7.0 Authentication successful");
	} else if (++s->auth_failures >= s->cfg.max_auth_failures) {
		reply(s, "535 5.7.8 Authentication credentials invalid");
		answering(s, SMTP_VERB_AUTH, "AUTH", SMTP_REFUSAL_PROTOCOL);
		reply(s, "421 4.7.0 %s Error: too many failed authentications", s->cfg.hostname);
		enter_state(s, SMTP_STATE_CLOSED);
	} else {
		reply(s, "535 5.7.8 Authentication credentials invalid");
	}
	util_wipe(s->auth_user, sizeof(s->auth_user));
	util_wipe(s->auth_pass, sizeof(s->auth_pass));
}

const char *
smtp_session_auth_user(const struct smtp_session *s)
{
	return s->authenticated;
}

const char *
smtp_session_auth_mechanism(const struct smtp_session *s)
{
	return s->auth_step == AUTH_PLAIN ? "PLAIN" : "LOGIN";
}

void
smtp_session_tls_started(struct smtp_session *s)
{
	s->tls = true;
	s->esmtp = false;
	free(s->helo);
	s->helo = NULL;
	txn_reset(s);
	enter_state(s, SMTP_STATE_INIT);
}

void
smtp_session_timeout(struct smtp_session *s)
{
	smtp_session_close_421(s, "4.4.2", "Error: timeout exceeded");
}

static void
close_421(struct smtp_session *s, const char *enhanced, const char *text)
{
	if (s->state == SMTP_STATE_CLOSED)
		return;
	reply(s, "421 %s %s %s", enhanced, s->cfg.hostname, text);
	enter_state(s, SMTP_STATE_CLOSED);
}

void
smtp_session_close_421(struct smtp_session *s, const char *enhanced, const char *text)
{
	s->cmd = NULL; /* the glue's decision, logged by the glue */
	close_421(s, enhanced, text);
}

void
smtp_session_refuse(struct smtp_session *s, const char *enhanced, const char *text)
{
	buf_reset(&s->out); /* the 421 replaces the greeting */
	answering(s, SMTP_VERB_UNKNOWN, "CONNECT", SMTP_REFUSAL_MAIL);
	close_421(s, enhanced, text);
}

enum smtp_state
smtp_session_state(const struct smtp_session *s)
{
	return s->state;
}

const char *
smtp_session_sender(const struct smtp_session *s)
{
	return s->sender ? s->sender : "";
}

size_t
smtp_session_rcpt_count(const struct smtp_session *s)
{
	return s->rcpts_len;
}

const char *
smtp_session_rcpt(const struct smtp_session *s, size_t i)
{
	return s->rcpts[i];
}

const struct smtp_mail_params *
smtp_session_mail_params(const struct smtp_session *s)
{
	return &s->params;
}

uint64_t
smtp_session_message_size(const struct smtp_session *s)
{
	return s->body.size;
}

const char *
smtp_session_helo(const struct smtp_session *s)
{
	return s->helo ? s->helo : "";
}

const char *
smtp_session_protocol(const struct smtp_session *s)
{
	if (!s->esmtp)
		return "SMTP";
	if (s->authenticated != NULL)
		return s->tls ? "ESMTPSA" : "ESMTPA";
	return s->tls ? "ESMTPS" : "ESMTP";
}

void
smtp_session_set_tls(struct smtp_session *s, bool on)
{
	s->tls = on;
}
