/*
 * libFuzzer harness: a whole SMTP session (commands, AUTH decoding, DATA
 * and BDAT bodies) fed from hostile input, split where the first octet
 * says, with the glue's duties emulated.  Checks that the session never
 * consumes more than it was given, keeps its output bounded, that every
 * reply line starts with a 3-digit code, and that what a refusal lends the
 * glue for the log is a 4xx/5xx line and readable memory.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/smtp_session.h"

static enum smtp_rcpt_verdict
check_rcpt(void *ctx, const struct smtp_path *rcpt)
{
	(void)ctx;
	return (enum smtp_rcpt_verdict)(rcpt->local_len % 5);
}

static bool
sender_allowed(void *ctx, const struct smtp_path *sender, const char *user)
{
	(void)ctx;
	return sender->is_null || strcmp(sender->addr, user) == 0;
}

/* Reads every octet refused() is lent (ASan checks they are all there): a 4xx or 5xx line. */
static void
refused(void *ctx, const struct smtp_refusal *r)
{
	volatile unsigned sum = 0;

	(void)ctx;
	if (r->command == NULL || r->command[0] == '\0' || r->reply_len < 4 ||
	    (r->reply[0] != '4' && r->reply[0] != '5') ||
	    memchr(r->reply, '\n', r->reply_len) != NULL ||
	    memchr(r->reply, '\r', r->reply_len) != NULL ||
	    (r->kind != SMTP_REFUSAL_MAIL && r->kind != SMTP_REFUSAL_PROTOCOL))
		abort();
	for (size_t i = 0; i < r->sender_len; i++)
		sum += (unsigned char)r->sender[i];
	for (size_t i = 0; i < r->rcpt_len; i++)
		sum += (unsigned char)r->rcpt[i];
	for (size_t i = 0; i < r->helo_len; i++)
		sum += (unsigned char)r->helo[i];
	if ((r->sender == NULL && r->sender_len != 0) || (r->rcpt == NULL && r->rcpt_len != 0) ||
	    (r->helo == NULL && r->helo_len != 0))
		abort();
	(void)sum;
}

static void
check_output(struct smtp_session *s)
{
	struct buf *out = smtp_session_output(s);
	size_t i = 0;

	while (i < out->len) {
		const char *nl = memchr(out->data + i, '\n', out->len - i);
		if (nl == NULL || nl - (out->data + i) < 4)
			abort();
		for (int k = 0; k < 3; k++) {
			if (out->data[i + k] < '0' || out->data[i + k] > '9')
				abort();
		}
		i = (size_t)(nl - out->data) + 1;
	}
	buf_reset(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_session_conf cfg = {
	    .hostname = "mx.fuzz.test",
	    .max_message_size = 4096,
	    .max_recipients = 4,
	    .starttls_offered = true,
	    .auth_offered = true,
	    .auth_required = size > 0 && (data[0] & 0x80),
	    /* Both ways, without taking a bit of input: odd sizes refuse NUL (sendmail -bs). */
	    .refuse_nul = (size & 1) != 0,
	};
	struct smtp_policy policy = {
	    .check_rcpt = check_rcpt, .sender_allowed = sender_allowed, .refused = refused};
	struct smtp_session *s;
	size_t step, pos = 1;
	enum smtp_event last = SMTP_EVENT_NONE;
	bool starved = false; /* the last feed took nothing: give it all that is buffered */

	if (size == 0)
		return 0;
	step = (data[0] & 0x7f) + 1;
	s = smtp_session_new(&cfg, &policy);
	while (smtp_session_state(s) != SMTP_STATE_CLOSED &&
	       (pos < size || last != SMTP_EVENT_NONE)) {
		size_t n = starved || size - pos < step ? size - pos : step;
		enum smtp_event ev;
		size_t used = smtp_session_feed(s, (const char *)data + pos, n, &ev);
		const char *p;
		size_t len;

		if (used > n)
			abort();
		pos += used;
		check_output(s);
		switch (ev) {
		case SMTP_EVENT_NONE:
		case SMTP_EVENT_MESSAGE_BEGIN:
		case SMTP_EVENT_MESSAGE_ABORT:
		case SMTP_EVENT_CLOSE:
			break;
		case SMTP_EVENT_BODY:
			smtp_session_body_take(s, &p, &len);
			break;
		case SMTP_EVENT_MESSAGE_END:
			smtp_session_body_take(s, &p, &len);
			smtp_session_commit_done(s, (enum smtp_commit_result)(pos % 3), "FUZZID");
			break;
		case SMTP_EVENT_STARTTLS:
			pos = size; /* the glue drops everything sent before the handshake */
			smtp_session_tls_started(s);
			break;
		case SMTP_EVENT_AUTH: {
			const char *user, *password;
			smtp_session_auth_take(s, &user, &password);
			smtp_session_auth_done(s, strcmp(password, "secret") == 0);
			break;
		}
		}
		check_output(s);
		if (used == 0 && ev == SMTP_EVENT_NONE && n == size - pos)
			break; /* a partial line at the end of the input */
		starved = used == 0 && ev == SMTP_EVENT_NONE;
		last = ev;
	}
	smtp_session_free(s);
	return 0;
}
