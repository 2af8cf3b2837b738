/*
 * libFuzzer harness for relay_client: the input is a server.  The first
 * bytes pick the configuration, the message, how the glue answers
 * (TLS handshake result, when the connection breaks) and the size of the
 * pieces the server's bytes arrive in; the rest is what the server says.
 * The harness plays the glue: it writes the output, starts up to three
 * transactions on the connection, completes TLS and bodies, and quits.
 *
 * Beyond "no crash", it aborts when the client breaks a promise: every
 * command it writes is one line ending in CRLF with no other CR or LF in
 * it (the recipients include one with CRLF inside), the output stays
 * bounded, the client never stalls with input it could read, and the
 * results are coherent (no tentative OK survives a broken transaction;
 * without a host failure an idle client has decided every recipient).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "relay/relay_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define OUTPUT_BOUND 4096 /* far above what these small messages need */
#define STEPS_MAX    10000

static const char *const rcpts[] = {"a@b.test", "c@b.test", "evil@b.test\r\nRSET", "d@b.test",
				    "\xc3\xa9@b.test"};

static const struct relay_client_msg msgs[] = {
    {"s@a.test", rcpts, 2, 100, false, false},	     {"", rcpts, 1, 5000, true, false},
    {"s@a.test", rcpts, 4, 100, false, false},	     {"s@a.test", rcpts, 5, 100, true, true},
    {"s@a.test\r\nDATA", rcpts, 1, 1, false, false}, {"s@a.test", rcpts, 0, 1, false, false},
};

static void
check_output(struct buf *out)
{
	size_t start = 0;

	CHECK(out->len <= OUTPUT_BOUND);
	for (size_t i = 0; i < out->len; i++) {
		if (out->data[i] == '\n') {
			/* A line ends in CRLF, and only there. */
			CHECK(i > start && out->data[i - 1] == '\r');
			start = i + 1;
		} else if (out->data[i] == '\r') {
			CHECK(i + 1 < out->len && out->data[i + 1] == '\n');
		}
	}
	CHECK(start == out->len); /* whole commands only */
	buf_reset(out);		  /* written */
}

static void
check_results(const struct relay_client *c, const struct relay_client_msg *m, bool idle,
	      bool broken)
{
	const struct relay_rcpt_result *res = relay_client_results(c);
	const struct smtp_reply *hr = NULL;
	bool perm = false;
	bool host = relay_client_host_error(c, &perm, &hr);

	CHECK(host == (hr != NULL));
	if (host)
		CHECK(hr->code >= 200 && hr->code <= 599 && (!perm || hr->code / 100 == 5));
	if (m == NULL)
		return;
	for (size_t i = 0; i < m->rcpts_len; i++) {
		enum relay_rcpt_status st = res[i].status;

		CHECK(st == RELAY_RCPT_PENDING || st == RELAY_RCPT_OK || st == RELAY_RCPT_TEMP ||
		      st == RELAY_RCPT_PERM);
		if (st == RELAY_RCPT_PENDING)
			CHECK(res[i].reply.code == 0);
		else
			CHECK(res[i].reply.code >= 200 && res[i].reply.code <= 599);
		if (st == RELAY_RCPT_OK)
			CHECK(res[i].reply.code / 100 == 2);
		/* A recipient with CR LF never reaches the server: refused here (501, or earlier
		 * 55x). */
		if (strchr(m->rcpts[i], '\n') != NULL || strchr(m->sender, '\n') != NULL)
			CHECK(st == RELAY_RCPT_PERM && res[i].reply.code / 100 == 5);
		if (idle && !host)
			CHECK(st != RELAY_RCPT_PENDING);
		if ((idle && host) || broken)
			CHECK(st != RELAY_RCPT_OK);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct relay_client_conf cfg = {.helo_name = "client.test"};
	struct relay_client *c;
	const struct relay_client_msg *m = NULL;
	const char *in;
	size_t len, off = 0, pending = 0, piece, abort_at, starts = 0;
	bool tls_ok, in_txn = false;
	enum relay_client_action act = RELAY_ACT_NONE;

	if (size < 4)
		return 0;
	cfg.tls_wanted = data[0] & 1;
	tls_ok = (data[0] & 2) != 0;
	piece = 1 + data[1] % 64;
	abort_at = data[2] & 0x80 ? (size_t)(data[2] & 0x7f) * 4 : SIZE_MAX;
	in = (const char *)data + 4;
	len = size - 4;
	c = relay_client_new(&cfg);

	for (size_t step = 0; step < STEPS_MAX; step++) {
		size_t used;

		check_output(relay_client_output(c));
		if (act == RELAY_ACT_CLOSE)
			break;
		if (act == RELAY_ACT_IDLE)
			in_txn =
			    false; /* the transaction is over, even if the connection breaks now */
		if (off >= abort_at) {
			relay_client_abort(c, "fuzz");
			check_output(relay_client_output(c));
			check_results(c, m, false, in_txn);
			break;
		}
		switch (act) {
		case RELAY_ACT_STARTTLS:
			/* The glue drops plaintext read before the handshake. */
			off += pending;
			pending = 0;
			act = relay_client_tls_done(c, tls_ok);
			continue;
		case RELAY_ACT_BODY:
			relay_client_body_sent(c);
			act = RELAY_ACT_NONE;
			continue;
		case RELAY_ACT_IDLE:
			check_results(c, m, true, false);
			if (starts == 3) {
				act = relay_client_quit(c);
				continue;
			}
			m = &msgs[(data[3] + starts) % (sizeof(msgs) / sizeof(msgs[0]))];
			starts++;
			in_txn = true;
			act = relay_client_start(c, m);
			continue;
		case RELAY_ACT_NONE:
		case RELAY_ACT_SEND:
		case RELAY_ACT_CLOSE:
			break;
		}
		/*
		 * Read.  After NONE the client consumed all it had and needs
		 * more; after SEND it may still hold unread replies.
		 */
		if (act == RELAY_ACT_NONE || pending == 0) {
			size_t more = len - off - pending < piece ? len - off - pending : piece;

			if (more == 0 && pending == 0) {
				relay_client_abort(c, "eof");
				check_output(relay_client_output(c));
				check_results(c, m, false, in_txn);
				break;
			}
			if (more == 0 && act == RELAY_ACT_NONE)
				break; /* unreachable: NONE leaves nothing unconsumed (checked
					  below) */
			pending += more;
		}
		used = relay_client_feed(c, in + off, pending, &act);
		CHECK(used <= pending);
		/* "never RELAY_ACT_NONE while unconsumed input remains" (no body is being written)
		 */
		CHECK(act != RELAY_ACT_NONE || used == pending);
		off += used;
		pending -= used;
		if (act == RELAY_ACT_CLOSE)
			check_results(c, m, false, in_txn);
	}
	check_output(relay_client_output(c));
	relay_client_free(c);
	return 0;
}
