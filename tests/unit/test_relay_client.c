/*
 * Unit tests for relay_client: dialogue scripts against a scripted server.
 * A case is a list of steps (server bytes, glue calls, checks of the
 * per-recipient results); after each step the client's action and its exact
 * output are compared, and the output is taken as a glue would write it.
 *
 * Every script runs with the server's bytes delivered whole, byte by byte,
 * and split in two at every position: each must give the same dialogue
 * (pipelined groups of replies arriving at once or in pieces).
 */
#include "relay/relay_client.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define STEPS_MAX    24
#define RCPTS_MAX    4

enum step_kind {
	END,	   /* the end of the script */
	SERVER,	   /* the server sends data */
	START,	   /* relay_client_start(msg) */
	BODY_SENT, /* the glue wrote the message; buffered input is fed again */
	TLS_OK,	   /* relay_client_tls_done(true) */
	TLS_FAIL,  /* relay_client_tls_done(false) */
	QUIT,	   /* relay_client_quit() */
	ABORT,	   /* relay_client_abort(data) */
	DROP,	   /* the glue drops buffered input (plaintext before a handshake) */
	CHECK,	   /* results and host error */
};

struct step {
	enum step_kind kind;
	const char *data; /* SERVER: what it sends; ABORT: why */
	const struct relay_client_msg *msg;
	enum relay_client_action act; /* the action after the step */
	const char *out;	      /* the client's output after the step (NULL: nothing) */
	size_t left;		      /* SERVER: octets the client leaves unconsumed */
	/* CHECK */
	const char *status; /* one letter per recipient: O(k) T(emp) P(erm) -(pending) */
	int codes[RCPTS_MAX];
	char host; /* '-' none, 'T' temporary, 'P' permanent */
	int host_code;
	const char *host_text; /* a substring of the host error's text (NULL: not checked) */
};

struct client_case {
	const char *name;
	bool tls_wanted;
	struct step steps[STEPS_MAX];
};

#define S(d, a, o)                                                                                 \
	{                                                                                          \
		.kind = SERVER, .data = (d), .act = (a), .out = (o)                                \
	}
#define BEGIN(m, a, o)                                                                             \
	{                                                                                          \
		.kind = START, .msg = (m), .act = (a), .out = (o)                                  \
	}
#define SENT(a, o)                                                                                 \
	{                                                                                          \
		.kind = BODY_SENT, .act = (a), .out = (o)                                          \
	}
#define TLS(ok, a, o)                                                                              \
	{                                                                                          \
		.kind = (ok) ? TLS_OK : TLS_FAIL, .act = (a), .out = (o)                           \
	}
#define BYE()                                                                                      \
	{                                                                                          \
		.kind = QUIT, .act = RELAY_ACT_CLOSE, .out = "QUIT\r\n"                            \
	}
#define LOST(why)                                                                                  \
	{                                                                                          \
		.kind = ABORT, .data = (why), .act = RELAY_ACT_CLOSE                               \
	}
#define RESULTS(st, ...)                                                                           \
	{                                                                                          \
		.kind = CHECK, .status = (st), .codes = {__VA_ARGS__}, .host = '-'                 \
	}
#define HOSTFAIL(st, h, hc, ht, ...)                                                               \
	{                                                                                          \
		.kind = CHECK, .status = (st), .codes = {__VA_ARGS__}, .host = (h),                \
		.host_code = (hc), .host_text = (ht)                                               \
	}

#define NONE  RELAY_ACT_NONE
#define SEND  RELAY_ACT_SEND
#define STLS  RELAY_ACT_STARTTLS
#define BODY  RELAY_ACT_BODY
#define IDLE  RELAY_ACT_IDLE
#define CLOSE RELAY_ACT_CLOSE

/* ---- the dialogue pieces ---------------------------------------------- */

#define GREET	  "220 mx.test ESMTP\r\n"
#define EHLO	  "EHLO client.test\r\n"
#define HELO	  "HELO client.test\r\n"
#define EHLO_PIPE "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250 8BITMIME\r\n"
#define EHLO_FULL                                                                                  \
	"250-mx.test Hello\r\n250-pipelining\r\n250-SIZE 10000\r\n250-8bitmime\r\n"                \
	"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
#define EHLO_PLAIN "250-mx.test\r\n250 8BITMIME\r\n"
#define EHLO_TLS   "250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"

#define MAIL1	"MAIL FROM:<s@a.test> SIZE=100\r\n"
#define RCPT_A	"RCPT TO:<a@b.test>\r\n"
#define RCPT_C	"RCPT TO:<c@b.test>\r\n"
#define RCPT_D	"RCPT TO:<d@b.test>\r\n"
#define OK_MAIL "250 2.1.0 Ok\r\n"
#define OK_RCPT "250 2.1.5 Ok\r\n"
#define GO	"354 End data with <CR><LF>.<CR><LF>\r\n"
#define QUEUED	"250 2.0.0 Ok: queued as 4F2A1C\r\n"

/* A connection ready for mail: greeting, EHLO, IDLE. */
#define READY(ehlo_reply) S(GREET, SEND, EHLO), S(ehlo_reply, IDLE, NULL)

static const char *const rcpts_one[] = {"a@b.test"};
static const char *const rcpts_three[] = {"a@b.test", "c@b.test", "d@b.test"};
static const char *const rcpts_bad[] = {"a@b.test", "x@b.test\r\nDATA", "c@b.test"};
static const char *const rcpts_all_bad[] = {"x\n@b.test"};

static const struct relay_client_msg msg_one = {"s@a.test", rcpts_one, 1, 100, false, false};
static const struct relay_client_msg msg_three = {"s@a.test", rcpts_three, 3, 100, false, false};
static const struct relay_client_msg msg_null = {"", rcpts_one, 1, 100, true, false};
static const struct relay_client_msg msg_big = {"s@a.test", rcpts_three, 3, 10001, false, false};
static const struct relay_client_msg msg_max = {"s@a.test", rcpts_one, 1, 10000, false, false};
static const struct relay_client_msg msg_utf8 = {"s@a.test", rcpts_three, 3, 100, true, true};
static const struct relay_client_msg msg_bad = {"s@a.test", rcpts_bad, 3, 100, false, false};
static const struct relay_client_msg msg_all_bad = {"s@a.test", rcpts_all_bad, 1,
						    100,	false,	       false};
static const struct relay_client_msg msg_bad_sender = {
    "s@a.test\r\nRSET", rcpts_one, 1, 100, false, false};
static const struct relay_client_msg msg_none = {"s@a.test", rcpts_one, 0, 100, false, false};

static const struct client_case cases[] = {
    /* ---- the happy paths ---- */
    {"pipelined, one recipient",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT GO, BODY, NULL), SENT(NONE, NULL), S(QUEUED, IDLE, NULL),
	       RESULTS("O", 250), BYE()}},
    {"pipelined, three recipients, one refused, one deferred",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_three, SEND, MAIL1 RCPT_A RCPT_C RCPT_D "DATA\r\n"),
	       S(OK_MAIL OK_RCPT "550 5.1.1 <c@b.test>: User unknown\r\n"
				 "451 4.3.0 try later\r\n" GO,
		 BODY, NULL),
	       SENT(NONE, NULL), S(QUEUED, IDLE, NULL), RESULTS("OPT", 250, 550, 451)}},
    {"pipelined, multi-line replies",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S("250-2.1.0 sender\r\n250 2.1.0 ok\r\n250-2.1.5 a\r\n250-2.1.5 b\r\n250 2.1.5 c\r\n"
		 "354-go\r\n354 ahead\r\n",
		 BODY, NULL),
	       SENT(NONE, NULL), S("250-2.0.0 queued\r\n250 2.0.0 as X\r\n", IDLE, NULL),
	       RESULTS("O", 250)}},
    {"every extension, mixed case",
     .steps = {READY(EHLO_FULL),
	       BEGIN(&msg_utf8, SEND,
		     "MAIL FROM:<s@a.test> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n" RCPT_A RCPT_C RCPT_D
		     "DATA\r\n"),
	       S(OK_MAIL OK_RCPT OK_RCPT OK_RCPT GO, BODY, NULL), SENT(NONE, NULL),
	       S(QUEUED, IDLE, NULL), RESULTS("OOO", 250, 250, 250)}},
    {"null sender, 8bit body",
     .steps = {READY(EHLO_PIPE),
	       BEGIN(&msg_null, SEND, "MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n" RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT GO, BODY, NULL), SENT(NONE, NULL), S(QUEUED, IDLE, NULL),
	       RESULTS("O", 250)}},
    {"no PIPELINING: lockstep, no SIZE",
     .steps = {READY(EHLO_PLAIN), BEGIN(&msg_three, SEND, "MAIL FROM:<s@a.test>\r\n"),
	       S(OK_MAIL, SEND, RCPT_A), S(OK_RCPT, SEND, RCPT_C),
	       S("550 5.1.1 no\r\n", SEND, RCPT_D), S(OK_RCPT, SEND, "DATA\r\n"), S(GO, BODY, NULL),
	       SENT(NONE, NULL), S(QUEUED, IDLE, NULL), RESULTS("OPO", 250, 550, 250)}},
    {"8bit body without 8BITMIME is sent without BODY=",
     .steps = {READY("250 mx.test\r\n"), BEGIN(&msg_null, SEND, "MAIL FROM:<>\r\n"),
	       S(OK_MAIL, SEND, RCPT_A), S(OK_RCPT, SEND, "DATA\r\n"), S(GO, BODY, NULL),
	       SENT(NONE, NULL), S(QUEUED, IDLE, NULL), RESULTS("O", 250)}},
    {"connection reuse: two transactions",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT GO, BODY, NULL), SENT(NONE, NULL), S(QUEUED, IDLE, NULL),
	       RESULTS("O", 250), BEGIN(&msg_three, SEND, MAIL1 RCPT_A RCPT_C RCPT_D "DATA\r\n"),
	       S(OK_MAIL "452 4.5.3 too many\r\n" OK_RCPT OK_RCPT GO, BODY, NULL), SENT(NONE, NULL),
	       S("554 5.7.1 spam\r\n", IDLE, NULL), RESULTS("TPP", 452, 554, 554),
	       BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"), S(OK_MAIL OK_RCPT GO, BODY, NULL),
	       SENT(NONE, NULL), S(QUEUED, IDLE, NULL), RESULTS("O", 250), BYE()}},
    {"no recipients: nothing sent",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_none, IDLE, NULL), RESULTS(""), BYE()}},

    /* ---- EHLO, HELO, STARTTLS ---- */
    {"EHLO refused: HELO fallback, no extensions",
     .steps = {S(GREET, SEND, EHLO), S("502 5.5.1 command not implemented\r\n", SEND, HELO),
	       S("250 mx.test\r\n", IDLE, NULL), BEGIN(&msg_null, SEND, "MAIL FROM:<>\r\n"),
	       S(OK_MAIL, SEND, RCPT_A), S(OK_RCPT, SEND, "DATA\r\n"), S(GO, BODY, NULL),
	       SENT(NONE, NULL), S(QUEUED, IDLE, NULL), RESULTS("O", 250)}},
    {"HELO refused too",
     .steps = {S(GREET, SEND, EHLO), S("500 what\r\n", SEND, HELO),
	       S("550 go away\r\n", CLOSE, "QUIT\r\n"), HOSTFAIL("", 'P', 550, "go away")}},
    {"HELO deferred",
     .steps = {S(GREET, SEND, EHLO), S("500 what\r\n", SEND, HELO),
	       S("421 busy\r\n", CLOSE, "QUIT\r\n"), HOSTFAIL("", 'T', 421, NULL)}},
    {"EHLO deferred",
     .steps = {S(GREET, SEND, EHLO), S("421 4.3.2 shutting down\r\n", CLOSE, "QUIT\r\n"),
	       HOSTFAIL("", 'T', 421, "shutting down")}},
    {"EHLO single line: no extensions",
     .steps = {READY("250 mx.test PIPELINING\r\n"),
	       BEGIN(&msg_one, SEND, "MAIL FROM:<s@a.test>\r\n")}},
    {"EHLO bare 250",
     .steps = {READY("250\r\n"), BEGIN(&msg_one, SEND, "MAIL FROM:<s@a.test>\r\n")}},
    {"EHLO keywords must match whole",
     .steps = {READY("250-mx.test\r\n250-PIPELININGX\r\n250-SIZES 10\r\n250 XSIZE 10\r\n"),
	       BEGIN(&msg_big, SEND, "MAIL FROM:<s@a.test>\r\n")}},
    {"EHLO SIZE without a limit",
     .steps = {READY("250-mx.test\r\n250 SIZE\r\n"),
	       BEGIN(&msg_big, SEND, "MAIL FROM:<s@a.test> SIZE=10001\r\n")}},
    {"EHLO SIZE 0 is no limit",
     .steps = {READY("250-mx.test\r\n250 SIZE 0\r\n"),
	       BEGIN(&msg_big, SEND, "MAIL FROM:<s@a.test> SIZE=10001\r\n")}},
    {"EHLO huge SIZE", .steps = {READY("250-mx.test\r\n250 SIZE 99999999999999999999999\r\n"),
				 BEGIN(&msg_big, SEND, "MAIL FROM:<s@a.test> SIZE=10001\r\n")}},
    {"STARTTLS", .tls_wanted = true,
     .steps = {S(GREET, SEND, EHLO), S(EHLO_TLS, SEND, "STARTTLS\r\n"),
	       S("220 2.0.0 Ready to start TLS\r\n", STLS, NULL), TLS(true, SEND, EHLO),
	       S(EHLO_PIPE, IDLE, NULL), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT GO, BODY, NULL), SENT(NONE, NULL), S(QUEUED, IDLE, NULL),
	       RESULTS("O", 250)}},
    {"STARTTLS: the second EHLO decides the extensions", .tls_wanted = true,
     .steps = {S(GREET, SEND, EHLO),
	       S("250-mx.test\r\n250-PIPELINING\r\n250-SIZE 5\r\n250 STARTTLS\r\n", SEND,
		 "STARTTLS\r\n"),
	       S("220 go\r\n", STLS, NULL), TLS(true, SEND, EHLO),
	       S("250-mx.test\r\n250 STARTTLS\r\n", IDLE, NULL),
	       BEGIN(&msg_one, SEND, "MAIL FROM:<s@a.test>\r\n")}},
    {"STARTTLS handshake fails", .tls_wanted = true,
     .steps = {S(GREET, SEND, EHLO), S(EHLO_TLS, SEND, "STARTTLS\r\n"), S("220 go\r\n", STLS, NULL),
	       TLS(false, CLOSE, NULL), HOSTFAIL("", 'T', 421, "TLS")}},
    {"STARTTLS refused: plaintext", .tls_wanted = true,
     .steps = {S(GREET, SEND, EHLO), S(EHLO_TLS, SEND, "STARTTLS\r\n"),
	       S("454 4.7.0 TLS not available\r\n", IDLE, NULL),
	       BEGIN(&msg_one, SEND, "MAIL FROM:<s@a.test>\r\n" RCPT_A "DATA\r\n")}},
    {"STARTTLS answered 421", .tls_wanted = true,
     .steps = {S(GREET, SEND, EHLO), S(EHLO_TLS, SEND, "STARTTLS\r\n"),
	       S("421 4.3.2 bye\r\n", CLOSE, "QUIT\r\n"), HOSTFAIL("", 'T', 421, NULL)}},
    {"STARTTLS not wanted",
     .steps = {READY(EHLO_TLS),
	       BEGIN(&msg_one, SEND, "MAIL FROM:<s@a.test>\r\n" RCPT_A "DATA\r\n")}},
    {"plaintext injected after 220 is dropped by the glue", .tls_wanted = true,
     .steps = {S(GREET, SEND, EHLO),
	       S(EHLO_TLS, SEND, "STARTTLS\r\n"),
	       {.kind = SERVER, .data = "220 go\r\n250-injected\r\n", .act = STLS, .left = 14},
	       {.kind = DROP},
	       TLS(true, SEND, EHLO),
	       S(EHLO_PIPE, IDLE, NULL)}},
    {"input during the handshake closes", .tls_wanted = true,
     .steps = {S(GREET, SEND, EHLO), S(EHLO_TLS, SEND, "STARTTLS\r\n"), S("220 go\r\n", STLS, NULL),
	       S("250 injected\r\n", CLOSE, NULL), HOSTFAIL("", 'T', 421, "STARTTLS"),
	       TLS(true, CLOSE, NULL)}},

    /* ---- failures at each stage ---- */
    /* A 5xx greeting refuses the host, not the recipients: the next MX, or later. */
    {"greeting 554", .steps = {S("554 5.7.1 no mail here\r\n", CLOSE, "QUIT\r\n"),
			       HOSTFAIL("", 'T', 554, "no mail here")}},
    {"greeting 421",
     .steps = {S("421 4.3.2 busy\r\n", CLOSE, "QUIT\r\n"), HOSTFAIL("", 'T', 421, "busy")}},
    {"greeting multi-line 554", .steps = {S("554-mx.test\r\n554 go away\r\n", CLOSE, "QUIT\r\n"),
					  HOSTFAIL("", 'T', 554, "mx.test\ngo away")}},
    {"MAIL 4xx, pipelined: the other replies are drained",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_three, SEND, MAIL1 RCPT_A RCPT_C RCPT_D "DATA\r\n"),
	       S("451 4.3.0 local problem\r\n503 need MAIL\r\n503 need MAIL\r\n503 need MAIL\r\n"
		 "503 need MAIL\r\n",
		 SEND, "RSET\r\n"),
	       S("250 ok\r\n", IDLE, NULL), HOSTFAIL("---", 'T', 451, "local problem", 0, 0, 0)}},
    {"MAIL 5xx, pipelined",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S("553 5.1.8 bad sender\r\n", NONE, NULL),
	       S("503 5.5.1 need MAIL\r\n554 5.5.1 no valid recipients\r\n", SEND, "RSET\r\n"),
	       S("250 ok\r\n", IDLE, NULL), HOSTFAIL("-", 'P', 553, "bad sender", 0)}},
    {"MAIL 5xx, pipelined, server answers DATA with 354 anyway",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S("553 5.1.8 bad sender\r\n250 ok\r\n" GO, SEND, ".\r\n"),
	       S("554 5.5.1 no valid recipients\r\n", IDLE, NULL),
	       HOSTFAIL("-", 'P', 553, NULL, 0)}},
    {"MAIL 4xx, lockstep",
     .steps = {READY(EHLO_PLAIN), BEGIN(&msg_one, SEND, "MAIL FROM:<s@a.test>\r\n"),
	       S("452 4.3.1 insufficient storage\r\n", SEND, "RSET\r\n"),
	       S("250 ok\r\n", IDLE, NULL), HOSTFAIL("-", 'T', 452, "storage", 0),
	       BEGIN(&msg_one, SEND, "MAIL FROM:<s@a.test>\r\n"), S(OK_MAIL, SEND, RCPT_A),
	       S(OK_RCPT, SEND, "DATA\r\n"), S(GO, BODY, NULL), SENT(NONE, NULL),
	       S(QUEUED, IDLE, NULL), RESULTS("O", 250)}},
    {"all RCPTs refused, pipelined: DATA refused as expected",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_three, SEND, MAIL1 RCPT_A RCPT_C RCPT_D "DATA\r\n"),
	       S(OK_MAIL "550 5.1.1 no\r\n450 4.2.0 later\r\n553 5.1.3 bad\r\n"
			 "554 5.5.1 no valid recipients\r\n",
		 SEND, "RSET\r\n"),
	       S("250 2.0.0 ok\r\n", IDLE, NULL), RESULTS("PTP", 550, 450, 553)}},
    {"all RCPTs refused, pipelined, DATA answered 354: empty message",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL "550 5.1.1 no\r\n" GO, SEND, ".\r\n"),
	       S("554 5.5.1 no valid recipients\r\n", IDLE, NULL), RESULTS("P", 550),
	       BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n")}},
    {"all RCPTs refused, lockstep: no DATA",
     .steps = {READY(EHLO_PLAIN), BEGIN(&msg_three, SEND, "MAIL FROM:<s@a.test>\r\n"),
	       S(OK_MAIL, SEND, RCPT_A), S("550 5.1.1 no\r\n", SEND, RCPT_C),
	       S("421-4.4.5 too busy\r\n421 4.4.5 try later\r\n", SEND, RCPT_D),
	       S("551 5.1.6 moved\r\n", SEND, "RSET\r\n"), S("250 ok\r\n", IDLE, NULL),
	       RESULTS("PTP", 550, 421, 551)}},
    {"DATA refused with 4xx, some recipients accepted",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_three, SEND, MAIL1 RCPT_A RCPT_C RCPT_D "DATA\r\n"),
	       S(OK_MAIL OK_RCPT "550 5.1.1 no\r\n" OK_RCPT "451 4.3.0 not now\r\n", SEND,
		 "RSET\r\n"),
	       S("250 ok\r\n", IDLE, NULL), RESULTS("TPT", 451, 550, 451)}},
    {"DATA refused with 5xx, lockstep",
     .steps = {READY(EHLO_PLAIN), BEGIN(&msg_one, SEND, "MAIL FROM:<s@a.test>\r\n"),
	       S(OK_MAIL, SEND, RCPT_A), S(OK_RCPT, SEND, "DATA\r\n"),
	       S("554 5.5.0 no\r\n", SEND, "RSET\r\n"), S("250 ok\r\n", IDLE, NULL),
	       RESULTS("P", 554)}},
    {"end of data 4xx",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_three, SEND, MAIL1 RCPT_A RCPT_C RCPT_D "DATA\r\n"),
	       S(OK_MAIL OK_RCPT "550 5.1.1 no\r\n" OK_RCPT GO, BODY, NULL), SENT(NONE, NULL),
	       S("451 4.3.0 queue file write error\r\n", IDLE, NULL),
	       RESULTS("TPT", 451, 550, 451)}},
    {"end of data 5xx, multi-line",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT GO, BODY, NULL), SENT(NONE, NULL),
	       S("550-5.7.1 message rejected\r\n550 5.7.1 see policy\r\n", IDLE, NULL),
	       RESULTS("P", 550)}},
    {"RSET refused: the connection is not reused",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL "550 5.1.1 no\r\n554 no valid recipients\r\n", SEND, "RSET\r\n"),
	       S("500 what\r\n", CLOSE, "QUIT\r\n"), RESULTS("P", 550)}},

    /* ---- refused before anything is sent ---- */
    {"SIZE too big",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_big, IDLE, NULL), RESULTS("PPP", 552, 552, 552),
	       BEGIN(&msg_max, SEND, "MAIL FROM:<s@a.test> SIZE=10000\r\n" RCPT_A "DATA\r\n")}},
    {"SMTPUTF8 missing",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_utf8, IDLE, NULL), RESULTS("PPP", 550, 550, 550)}},
    {"SMTPUTF8 missing after HELO",
     .steps = {S(GREET, SEND, EHLO), S("500 no\r\n", SEND, HELO), S("250 mx.test\r\n", IDLE, NULL),
	       BEGIN(&msg_utf8, IDLE, NULL), RESULTS("PPP", 550, 550, 550)}},
    {"CR LF in a recipient: refused, the others go",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_bad, SEND, MAIL1 RCPT_A RCPT_C "DATA\r\n"),
	       S(OK_MAIL OK_RCPT "550 5.1.1 no\r\n" GO, BODY, NULL), SENT(NONE, NULL),
	       S(QUEUED, IDLE, NULL), RESULTS("OPP", 250, 501, 550)}},
    {"CR LF in a recipient, lockstep",
     .steps = {READY(EHLO_PLAIN), BEGIN(&msg_bad, SEND, "MAIL FROM:<s@a.test>\r\n"),
	       S(OK_MAIL, SEND, RCPT_A), S(OK_RCPT, SEND, RCPT_C), S(OK_RCPT, SEND, "DATA\r\n"),
	       S(GO, BODY, NULL), SENT(NONE, NULL), S(QUEUED, IDLE, NULL),
	       RESULTS("OPO", 250, 501, 250)}},
    {"LF in the only recipient: nothing sent",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_all_bad, IDLE, NULL), RESULTS("P", 501)}},
    {"CR LF in the sender: nothing sent",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_bad_sender, IDLE, NULL), RESULTS("P", 501)}},

    /* ---- broken connections and replies ---- */
    {"abort mid-transaction: accepted recipients become pending",
     .steps = {READY(EHLO_PIPE),
	       BEGIN(&msg_three, SEND, MAIL1 RCPT_A RCPT_C RCPT_D "DATA\r\n"),
	       S(OK_MAIL OK_RCPT "550 5.1.1 no\r\n", NONE, NULL),
	       LOST("read timeout"),
	       HOSTFAIL("-P-", 'T', 421, "connection lost: read timeout", 0, 550, 0),
	       S("250 late\r\n", CLOSE, NULL),
	       {.kind = QUIT, .act = CLOSE}}},
    {"abort during the body",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT GO, BODY, NULL), LOST("write error"),
	       HOSTFAIL("-", 'T', 421, "write error", 0)}},
    {"abort waiting for the end-of-data reply",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT GO, BODY, NULL), SENT(NONE, NULL), S("250 2.0.0 q", NONE, NULL),
	       LOST("EOF"), HOSTFAIL("-", 'T', 421, "EOF", 0)}},
    {"abort before the greeting",
     .steps = {LOST("connect timeout"), HOSTFAIL("", 'T', 421, "connect timeout")}},
    {"abort while idle: the last results stand",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT GO, BODY, NULL), SENT(NONE, NULL), S(QUEUED, IDLE, NULL),
	       LOST("idle timeout"), RESULTS("O", 250), BEGIN(&msg_one, CLOSE, NULL),
	       HOSTFAIL("-", 'T', 421, "closed", 0)}},
    {"server 421 while idle",
     .steps = {READY(EHLO_PIPE), S("421 4.4.2 idle too long\r\n", CLOSE, NULL), RESULTS("")}},
    {"quit mid-transaction",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT, NONE, NULL), BYE(), HOSTFAIL("-", 'T', 421, NULL, 0)}},
    {"garbage greeting",
     .steps = {S("hello there\r\n", CLOSE, NULL), HOSTFAIL("", 'T', 451, "bad reply")}},
    {"garbage RCPT reply",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_three, SEND, MAIL1 RCPT_A RCPT_C RCPT_D "DATA\r\n"),
	       S(OK_MAIL OK_RCPT "550 5.1.1 no\r\n2x0 what\r\n", CLOSE, NULL),
	       HOSTFAIL("-P-", 'T', 451, "bad reply", 0, 550, 0)}},
    {"mismatched multi-line codes",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S("250-2.1.0 a\r\n251 2.1.0 b\r\n", CLOSE, NULL), HOSTFAIL("-", 'T', 451, NULL, 0)}},
    {"garbage after the end of data",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT GO, BODY, NULL), SENT(NONE, NULL), S("\x01\x02\r\n", CLOSE, NULL),
	       HOSTFAIL("-", 'T', 451, NULL, 0)}},
    {"an early reply during the body is read after it",
     .steps = {READY(EHLO_PIPE),
	       BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT GO, BODY, NULL),
	       {.kind = SERVER, .data = "554 5.6.0 stop\r\n", .act = NONE, .left = 16},
	       SENT(IDLE, NULL),
	       RESULTS("P", 554)}},
    {"250 to DATA: the message was not taken",
     .steps = {READY(EHLO_PLAIN), BEGIN(&msg_three, SEND, "MAIL FROM:<s@a.test>\r\n"),
	       S(OK_MAIL, SEND, RCPT_A), S(OK_RCPT, SEND, RCPT_C),
	       S("550 5.1.1 no\r\n", SEND, RCPT_D), S(OK_RCPT, SEND, "DATA\r\n"),
	       S("250 2.0.0 queued\r\n", CLOSE, NULL),
	       HOSTFAIL("-P-", 'T', 451, "unexpected reply 250", 0, 550, 0)}},
    {"250 to pipelined DATA",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT "250 ok\r\n", CLOSE, NULL), HOSTFAIL("-", 'T', 451, NULL, 0)}},
    {"354 after the end of data",
     .steps = {READY(EHLO_PIPE), BEGIN(&msg_one, SEND, MAIL1 RCPT_A "DATA\r\n"),
	       S(OK_MAIL OK_RCPT GO, BODY, NULL), SENT(NONE, NULL), S(GO, CLOSE, NULL),
	       HOSTFAIL("-", 'T', 451, "unexpected reply 354", 0)}},
    {"a 3xx greeting is a temporary failure",
     .steps = {S("354 what\r\n", CLOSE, "QUIT\r\n"), HOSTFAIL("", 'T', 354, NULL)}},
};

/* ---- the runner ---------------------------------------------------------- */

#define SPLIT_WHOLE   0
#define SPLIT_BYTES   ((size_t)-1)
#define GLUE_BUF_SIZE 8192

struct glue {
	char in[GLUE_BUF_SIZE]; /* read but not yet consumed by the client */
	size_t in_len;
};

static const char *const act_names[] = {
    [RELAY_ACT_NONE] = "NONE", [RELAY_ACT_SEND] = "SEND", [RELAY_ACT_STARTTLS] = "STARTTLS",
    [RELAY_ACT_BODY] = "BODY", [RELAY_ACT_IDLE] = "IDLE", [RELAY_ACT_CLOSE] = "CLOSE",
};

/* Feeds what the glue holds; returns the action. */
static enum relay_client_action
glue_feed(struct relay_client *c, struct glue *g)
{
	enum relay_client_action act = RELAY_ACT_NONE;
	size_t used = relay_client_feed(c, g->in, g->in_len, &act);

	assert_true(used <= g->in_len);
	memmove(g->in, g->in + used, g->in_len - used);
	g->in_len -= used;
	return act;
}

/*
 * The server's bytes arrive in pieces (split: SPLIT_WHOLE, SPLIT_BYTES, or
 * the size of the first piece) and the glue feeds each; once the client
 * asks for an action, the glue stops feeding and keeps the rest, as a real
 * one does until the action is carried out (after CLOSE it reads nothing).
 */
static enum relay_client_action
server_says(struct relay_client *c, struct glue *g, const char *data, size_t split)
{
	enum relay_client_action act = RELAY_ACT_NONE;
	size_t len = strlen(data), off = 0;

	while (off < len) {
		size_t piece = len - off;

		if (split == SPLIT_BYTES)
			piece = 1;
		else if (split != SPLIT_WHOLE && off == 0 && split < len)
			piece = split;
		if (act == RELAY_ACT_CLOSE) {
			off += piece; /* the glue has closed: the rest is never read */
			continue;
		}
		assert_true(g->in_len + piece <= sizeof(g->in));
		memcpy(g->in + g->in_len, data + off, piece);
		g->in_len += piece;
		off += piece;
		if (act == RELAY_ACT_NONE)
			act = glue_feed(c, g);
		if (act == RELAY_ACT_CLOSE)
			g->in_len = 0;
	}
	return act;
}

static bool
check_results(const struct relay_client *c, const struct step *s, char *why, size_t why_len)
{
	const struct relay_rcpt_result *res = relay_client_results(c);
	const struct smtp_reply *hr = NULL;
	bool perm = false;
	bool has = relay_client_host_error(c, &perm, &hr);
	static const char letters[] = {[RELAY_RCPT_PENDING] = '-',
				       [RELAY_RCPT_OK] = 'O',
				       [RELAY_RCPT_TEMP] = 'T',
				       [RELAY_RCPT_PERM] = 'P'};

	for (size_t i = 0; s->status[i] != '\0'; i++) {
		char got = letters[res[i].status];
		if (got != s->status[i] || res[i].reply.code != s->codes[i]) {
			snprintf(why, why_len, "rcpt %zu: %c %d, want %c %d", i, got,
				 res[i].reply.code, s->status[i], s->codes[i]);
			return false;
		}
		if (res[i].status == RELAY_RCPT_PENDING && res[i].reply.code != 0) {
			snprintf(why, why_len, "rcpt %zu: pending with a reply", i);
			return false;
		}
	}
	if (!has != (s->host == '-') || (has && perm != (s->host == 'P'))) {
		snprintf(why, why_len, "host error %d permanent %d, want %c", has, perm, s->host);
		return false;
	}
	if (has && hr->code != s->host_code) {
		snprintf(why, why_len, "host error %d, want %d", hr->code, s->host_code);
		return false;
	}
	if (has && s->host_text != NULL && strstr(hr->text, s->host_text) == NULL) {
		snprintf(why, why_len, "host error text \"%s\", want \"%s\"", hr->text,
			 s->host_text);
		return false;
	}
	return true;
}

/* Runs one step; false (with why) on a mismatch. */
static bool
run_step(struct relay_client *c, struct glue *g, const struct step *s, size_t split, char *why,
	 size_t why_len)
{
	enum relay_client_action act = RELAY_ACT_NONE;
	struct buf *out = relay_client_output(c);
	const char *want_out = s->out != NULL ? s->out : "";

	switch (s->kind) {
	case END:
		return true;
	case SERVER:
		act = server_says(c, g, s->data, split);
		if (g->in_len != s->left) {
			snprintf(why, why_len, "%zu octets unconsumed, want %zu", g->in_len,
				 s->left);
			return false;
		}
		break;
	case START:
		act = relay_client_start(c, s->msg);
		break;
	case BODY_SENT:
		relay_client_body_sent(c);
		act = g->in_len > 0 ? glue_feed(c, g) : RELAY_ACT_NONE;
		break;
	case TLS_OK:
	case TLS_FAIL:
		act = relay_client_tls_done(c, s->kind == TLS_OK);
		break;
	case QUIT:
		act = relay_client_quit(c);
		break;
	case ABORT:
		relay_client_abort(c, s->data);
		act = RELAY_ACT_CLOSE;
		break;
	case DROP:
		g->in_len = 0;
		return true;
	case CHECK:
		return check_results(c, s, why, why_len);
	}
	if (act != s->act) {
		snprintf(why, why_len, "action %s, want %s", act_names[act], act_names[s->act]);
		return false;
	}
	if (out->len != strlen(want_out) ||
	    (out->len > 0 && memcmp(out->data, want_out, out->len) != 0)) {
		snprintf(why, why_len, "output \"%.*s\", want \"%s\"", (int)out->len,
			 out->len ? out->data : "", want_out);
		return false;
	}
	buf_reset(out); /* the glue wrote it */
	return true;
}

static bool
run_case(const struct client_case *cc, size_t split)
{
	struct relay_client_conf cfg = {.helo_name = "client.test", .tls_wanted = cc->tls_wanted};
	struct relay_client *c = relay_client_new(&cfg);
	struct glue *g = calloc(1, sizeof(*g));
	bool ok = true;
	char why[512];

	assert_non_null(g);
	for (size_t i = 0; i < STEPS_MAX && cc->steps[i].kind != END; i++) {
		if (!run_step(c, g, &cc->steps[i], split, why, sizeof(why))) {
			print_error("case \"%s\" step %zu (%s %zu): %s\n", cc->name, i + 1,
				    split == SPLIT_WHOLE   ? "whole"
				    : split == SPLIT_BYTES ? "bytewise"
							   : "split at",
				    split == SPLIT_BYTES ? 1 : split, why);
			ok = false;
			break;
		}
	}
	free(g);
	relay_client_free(c);
	return ok;
}

static size_t
longest_server_step(const struct client_case *cc)
{
	size_t max = 0;

	for (size_t i = 0; i < STEPS_MAX && cc->steps[i].kind != END; i++)
		if (cc->steps[i].kind == SERVER && strlen(cc->steps[i].data) > max)
			max = strlen(cc->steps[i].data);
	return max;
}

static void
test_dialogues(void **state)
{
	size_t failed = 0;

	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		const struct client_case *cc = &cases[i];
		bool ok = run_case(cc, SPLIT_WHOLE) && run_case(cc, SPLIT_BYTES);

		for (size_t k = 1; ok && k < longest_server_step(cc); k++)
			ok = run_case(cc, k);
		if (!ok)
			failed++;
	}
	assert_int_equal(failed, 0);
}

/* ---- cases outside the table ------------------------------------------------ */

static void
test_initial_state(void **state)
{
	struct relay_client_conf cfg = {.helo_name = "client.test"};
	struct relay_client *c = relay_client_new(&cfg);
	const struct smtp_reply *r = (const struct smtp_reply *)1;
	bool perm = true;

	assert_int_equal(relay_client_output(c)->len, 0);
	assert_false(relay_client_host_error(c, &perm, &r));
	assert_false(perm);
	assert_null(r);
	assert_false(relay_client_has_tls(c));
	assert_false(relay_client_tls_active(c));
	relay_client_free(c);
	relay_client_free(NULL);
}

static void
test_tls_flags(void **state)
{
	struct relay_client_conf cfg = {.helo_name = "client.test", .tls_wanted = true};
	struct relay_client *c = relay_client_new(&cfg);
	enum relay_client_action act;

	relay_client_feed(c, GREET, strlen(GREET), &act);
	buf_reset(relay_client_output(c));
	relay_client_feed(c, EHLO_TLS, strlen(EHLO_TLS), &act);
	assert_int_equal(act, RELAY_ACT_SEND);
	assert_true(relay_client_has_tls(c));
	assert_false(relay_client_tls_active(c));
	buf_reset(relay_client_output(c));
	relay_client_feed(c, "220 go\r\n", 8, &act);
	assert_int_equal(act, RELAY_ACT_STARTTLS);
	assert_int_equal(relay_client_tls_done(c, true), RELAY_ACT_SEND);
	assert_true(relay_client_tls_active(c));
	assert_true(relay_client_has_tls(c));
	relay_client_free(c);
}

/* Replies the client waits for are fed together with replies after them. */
static void
test_feed_stops_at_action(void **state)
{
	struct relay_client_conf cfg = {.helo_name = "client.test"};
	struct relay_client *c = relay_client_new(&cfg);
	const char *in = GREET "250 mx.test\r\n";
	enum relay_client_action act;
	size_t used = relay_client_feed(c, in, strlen(in), &act);

	assert_int_equal(act, RELAY_ACT_SEND);
	assert_int_equal(used, strlen(GREET));
	used = relay_client_feed(c, in + used, strlen(in) - used, &act);
	assert_int_equal(act, RELAY_ACT_IDLE);
	relay_client_free(c);
}

/* More recipients than one transaction takes: the rest wait with a 452. */
static void
test_many_recipients(void **state)
{
	enum { N = 1005 };
	struct relay_client_conf cfg = {.helo_name = "client.test"};
	struct relay_client *c = relay_client_new(&cfg);
	const char **rcpts = calloc(N, sizeof(*rcpts));
	struct relay_client_msg m = {"s@a.test", NULL, N, 10, false, false};
	const struct relay_rcpt_result *res;
	enum relay_client_action act;
	const char *ehlo = GREET EHLO_PIPE;
	size_t used, rcpt_lines = 0;
	struct buf *out = relay_client_output(c);

	assert_non_null(rcpts);
	for (size_t i = 0; i < N; i++)
		rcpts[i] = "someone.with.a.long.name@example.test";
	m.rcpts = rcpts;
	used = relay_client_feed(c, ehlo, strlen(ehlo), &act);
	used += relay_client_feed(c, ehlo + used, strlen(ehlo) - used, &act);
	assert_int_equal(act, RELAY_ACT_IDLE);
	buf_reset(out);
	assert_int_equal(relay_client_start(c, &m), RELAY_ACT_SEND);
	for (const char *p = buf_cstr(out); (p = strstr(p, "RCPT TO:")) != NULL; p++)
		rcpt_lines++;
	assert_int_equal(rcpt_lines, 1000);
	res = relay_client_results(c);
	assert_int_equal(res[999].status, RELAY_RCPT_PENDING);
	assert_int_equal(res[1000].status, RELAY_RCPT_TEMP);
	assert_int_equal(res[1004].reply.code, 452);
	free(rcpts);
	relay_client_free(c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_dialogues),	    cmocka_unit_test(test_initial_state),
	    cmocka_unit_test(test_tls_flags),	    cmocka_unit_test(test_feed_stops_at_action),
	    cmocka_unit_test(test_many_recipients),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
