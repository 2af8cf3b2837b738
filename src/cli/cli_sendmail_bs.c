/*
 * cli_sendmail_bs — `sendmail -bs`: an SMTP session on stdin and stdout, the
 * way Laravel's and Symfony Mailer's sendmail transports talk to the local
 * MTA (Postfix runs `smtpd -S` for it).
 *
 * The network server's state machine (smtp_session) with the policy of a
 * local client: no TLS and no AUTH (nobody to hide from or to prove who one
 * is to: the submitter is the local user), any recipient (a local user may
 * send anywhere, as with plain sendmail; whether a local one exists is
 * decided when the server picks the message up, as for plain sendmail),
 * max_recipients and max_message_size as configured.  Each accepted
 * message is one drop file in spool/incoming/, flushed before its 250.
 *
 * Blocking I/O on both descriptors, no stdio buffer: every reply is written
 * before more input is read, so a pipelining client reads its replies while
 * it writes.  Nothing but replies goes to stdout.
 */
#include "cli/cli_sendmail.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include "cli/cli.h"
#include "conf/conf.h"
#include "queue/queue.h"
#include "smtp/smtp_session.h"
#include "util/util_buf.h"
#include "util/util_id.h"
#include "util/util_mem.h"

#define READ_CHUNK (64 * 1024)

struct bs {
	const struct conf *conf; /* borrowed */
	struct smtp_session *sess;
	struct queue_drop *drop; /* owned: the message being received, or NULL */
	int drop_err;		 /* errno that lost the message being received; 0: none */
	bool in_message;	 /* between MESSAGE_BEGIN and its end or abort */
	bool closed;		 /* the session ended (QUIT, too many errors, timeout) */
	bool out_gone;		 /* stdout cannot be written: the client is gone */
	/* Input not yet taken by the session (a partial command line at most). */
	char in[2 * READ_CHUNK];
	size_t in_len, in_off;
};

enum input_result {
	INPUT_DATA,
	INPUT_EOF,
	INPUT_TIMEOUT,
	INPUT_INTERRUPTED,
	INPUT_ERROR,
};

/* Every recipient the parser took: see the top of the file. */
static enum smtp_rcpt_verdict
accept_rcpt(void *ctx, const struct smtp_path *rcpt)
{
	return SMTP_RCPT_ACCEPT;
}

/* ---- the drop file of one message --------------------------------------------------- */

static void
begin_message(struct bs *b)
{
	const struct smtp_mail_params *p = smtp_session_mail_params(b->sess);
	size_t n = smtp_session_rcpt_count(b->sess);
	const char **rcpts = xcalloc(n, sizeof(*rcpts));
	struct queue_envelope env;
	char err[512];

	for (size_t i = 0; i < n; i++)
		rcpts[i] = smtp_session_rcpt(b->sess, i);
	/* Where it came from is the pickup's to say (a local drop), not the HELO's. */
	env = (struct queue_envelope){
	    .sender = smtp_session_sender(b->sess),
	    .rcpts = rcpts,
	    .rcpts_len = n,
	    .helo = "",
	    .client_addr = "127.0.0.1",
	    .client_name = "localhost",
	    .protocol = "local",
	    .body_8bit = p->body == SMTP_BODY_8BITMIME,
	    .smtputf8 = p->smtputf8,
	};
	b->in_message = true;
	b->drop_err = 0;
	/* A spool that fails now fails the message at its end, as the server's does. */
	if (cli_sendmail_drop_open(b->conf, &env, &b->drop, err, sizeof(err)) != EX_OK) {
		b->drop_err = errno;
		fprintf(stderr, "sendmail: %s\n", err);
	}
	free(rcpts);
}

static void
take_body(struct bs *b)
{
	const char *data;
	size_t len;

	smtp_session_body_take(b->sess, &data, &len);
	if (len == 0 || b->drop == NULL || b->drop_err != 0)
		return;
	if (queue_drop_write(b->drop, data, len) != 0) {
		b->drop_err = errno;
		fprintf(stderr, "sendmail: writing to the spool: %s\n", strerror(errno));
	}
}

static void
drop_message(struct bs *b)
{
	queue_drop_abort(b->drop);
	b->drop = NULL;
	b->in_message = false;
}

/* The end of data: the drop file is made durable, then the session says 250. */
static void
end_message(struct bs *b)
{
	enum smtp_commit_result r = SMTP_COMMIT_OK;
	char id[UTIL_ID_LEN + 1] = "", err[512];

	take_body(b);
	if (b->drop_err == 0 && queue_drop_commit(b->drop, id, err, sizeof(err)) != 0) {
		b->drop_err = errno;
		fprintf(stderr, "sendmail: %s\n", err);
	} else if (b->drop_err == 0) {
		b->drop = NULL; /* freed by the commit */
		/* No server running: it picks the message up when it starts. */
		(void)cli_server_wake(b->conf->spool_dir, err, sizeof(err));
	}
	if (b->drop_err != 0)
		r = b->drop_err == ENOSPC || b->drop_err == EDQUOT ? SMTP_COMMIT_NO_SPACE
								   : SMTP_COMMIT_ERROR;
	drop_message(b);
	smtp_session_commit_done(b->sess, r, id);
}

static void
handle_event(struct bs *b, enum smtp_event ev)
{
	switch (ev) {
	case SMTP_EVENT_NONE:
		break;
	case SMTP_EVENT_MESSAGE_BEGIN:
		begin_message(b);
		break;
	case SMTP_EVENT_BODY:
		take_body(b);
		break;
	case SMTP_EVENT_MESSAGE_END:
		end_message(b);
		break;
	case SMTP_EVENT_MESSAGE_ABORT:
		drop_message(b);
		break;
	case SMTP_EVENT_CLOSE:
		b->closed = true;
		break;
	case SMTP_EVENT_STARTTLS:
	case SMTP_EVENT_AUTH:
		/* Neither is offered: the session refuses both before they get here. */
		abort();
	}
}

/* ---- stdio ------------------------------------------------------------------------------ */

/* Writes the replies the session queued, all of them, now. */
static void
write_replies(struct bs *b)
{
	struct buf *out = smtp_session_output(b->sess);
	size_t off = 0;

	while (off < out->len && !b->out_gone) {
		ssize_t n = write(STDOUT_FILENO, out->data + off, out->len - off);

		if (n > 0)
			off += (size_t)n;
		else if (n < 0 && errno == EINTR && !cli_sendmail_interrupted())
			continue;
		else
			b->out_gone = true; /* EPIPE: nobody reads; or a signal that ends us */
	}
	buf_reset(out);
}

/*
 * Feeds the buffered input until the session needs more (a partial command
 * line stays buffered), acting on each event and writing the replies of
 * each step.  False once the session is over.
 */
static bool
run_session(struct bs *b)
{
	for (;;) {
		enum smtp_event ev;
		size_t used =
		    smtp_session_feed(b->sess, b->in + b->in_off, b->in_len - b->in_off, &ev);

		b->in_off += used;
		handle_event(b, ev);
		write_replies(b);
		if (b->closed || b->out_gone)
			return false;
		/* After an event the session may have more to do even without input. */
		if (ev == SMTP_EVENT_NONE && (used == 0 || b->in_off == b->in_len))
			break;
	}
	memmove(b->in, b->in + b->in_off, b->in_len - b->in_off);
	b->in_len -= b->in_off;
	b->in_off = 0;
	return true;
}

/* Waits up to smtp_timeout for input and appends it to b->in. */
static enum input_result
read_input(struct bs *b)
{
	struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
	unsigned timeout_s = b->conf->smtp_timeout_s;
	int timeout_ms = timeout_s < INT_MAX / 1000 ? (int)(timeout_s * 1000) : INT_MAX;
	size_t room = sizeof(b->in) - b->in_len;
	ssize_t n;
	int ready;

	/* The session takes all but a partial command line (under SMTP_LINE_MAX octets). */
	if (room < READ_CHUNK)
		abort();
	do {
		ready = poll(&pfd, 1, timeout_ms);
	} while (ready < 0 && errno == EINTR && !cli_sendmail_interrupted());
	if (cli_sendmail_interrupted())
		return INPUT_INTERRUPTED;
	if (ready < 0)
		return INPUT_ERROR;
	if (ready == 0)
		return INPUT_TIMEOUT;
	do {
		n = read(STDIN_FILENO, b->in + b->in_len, READ_CHUNK);
	} while (n < 0 && errno == EINTR && !cli_sendmail_interrupted());
	if (cli_sendmail_interrupted())
		return INPUT_INTERRUPTED;
	if (n < 0)
		return INPUT_ERROR;
	if (n == 0)
		return INPUT_EOF;
	b->in_len += (size_t)n;
	return INPUT_DATA;
}

/* ---- the session ------------------------------------------------------------------------ */

/* The session ends without QUIT: a message not yet ended is discarded (and said so). */
static void
end_unfinished(struct bs *b, const char *why)
{
	if (!b->in_message)
		return;
	fprintf(stderr, "sendmail: %s in state %s; the unfinished message is discarded\n", why,
		smtp_state_name(smtp_session_state(b->sess)));
	drop_message(b);
}

/* The input ended (r is not INPUT_DATA); returns the exit status. */
static int
end_input(struct bs *b, enum input_result r)
{
	int e = errno;

	switch (r) {
	case INPUT_DATA:
		break;
	case INPUT_EOF:
		/* As Postfix's smtpd -S: a lost client is no error of ours, exit 0. */
		end_unfinished(b, "end of input");
		break;
	case INPUT_TIMEOUT:
		end_unfinished(b, "timeout");
		smtp_session_timeout(b->sess); /* 421 4.4.2 */
		write_replies(b);
		break;
	case INPUT_INTERRUPTED:
		end_unfinished(b, "interrupted");
		return EX_TEMPFAIL;
	case INPUT_ERROR:
		fprintf(stderr, "sendmail: reading the input: %s\n", strerror(e));
		end_unfinished(b, "input error");
		return EX_IOERR;
	}
	return EX_OK;
}

int
cli_sendmail_bs(const struct conf *c)
{
	struct bs *b = xcalloc(1, sizeof(*b));
	struct smtp_session_conf scfg = {
	    .hostname = c->hostname,
	    .max_message_size = c->max_message_size,
	    .max_recipients = c->max_recipients,
	    /* A drop file carries no NUL (the pickup refuses one): refused at the end of data. */
	    .refuse_nul = true,
	};
	struct smtp_policy policy = {.ctx = b, .check_rcpt = accept_rcpt};
	struct sigaction sa;
	int rc = EX_OK;

	/* A client that closes its end gets EPIPE from write, not a death mid-message. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	cli_sendmail_catch_signals();
	b->conf = c;
	b->sess = smtp_session_new(&scfg, &policy);
	write_replies(b); /* the greeting */
	while (!b->out_gone && run_session(b)) {
		enum input_result r = read_input(b);

		if (r != INPUT_DATA) {
			rc = end_input(b, r);
			break;
		}
	}
	/* Left in a message: the client stopped reading, or a signal stopped a write. */
	if (cli_sendmail_interrupted()) {
		end_unfinished(b, "interrupted");
		rc = EX_TEMPFAIL;
	}
	end_unfinished(b, "replies cannot be written");
	smtp_session_free(b->sess);
	free(b);
	return rc;
}
