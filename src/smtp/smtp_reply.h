/*
 * smtp_reply — parsing SMTP replies (RFC 5321 4.2), as the outbound client
 * reads them: "250-first line", ..., "250 last line", with an optional
 * enhanced status code (RFC 3463) after the code.
 *
 * A resumable push parser: feed whatever bytes arrived, split anywhere; it
 * returns each complete reply.  Pure: no allocation, no I/O.  Bounded: a
 * reply line over SMTP_REPLY_LINE_MAX octets, more than
 * SMTP_REPLY_LINES_MAX lines, a malformed code, or lines of one reply with
 * different codes are errors (the connection is unusable after one).
 * Lines may end with CRLF or a bare LF (lenient, as MTAs are).
 */
#ifndef PETREL_SMTP_REPLY_H
#define PETREL_SMTP_REPLY_H

#include <stdbool.h>
#include <stddef.h>

#define SMTP_REPLY_LINE_MAX  2048
#define SMTP_REPLY_LINES_MAX 100
#define SMTP_REPLY_TEXT_MAX  4096

struct smtp_reply {
	int code;	   /* 200..599 */
	char enhanced[16]; /* "2.1.0" when the first line has one and its class matches, else "" */
	/*
	 * The text of every line (after "NNN-"/"NNN ", and after the enhanced
	 * code on the first line), joined with '\n'; cut at SMTP_REPLY_TEXT_MAX - 1.
	 */
	char text[SMTP_REPLY_TEXT_MAX];
	size_t lines;
};

struct smtp_reply_parser {
	/* private */
	char line[SMTP_REPLY_LINE_MAX + 2];
	size_t line_len;
	struct smtp_reply cur;
	bool in_reply;
};

enum smtp_reply_status {
	SMTP_REPLY_MORE,  /* consumed everything; no complete reply yet */
	SMTP_REPLY_DONE,  /* *out holds a reply; *consumed stops right after it */
	SMTP_REPLY_ERROR, /* malformed or over a limit */
};

void smtp_reply_parser_init(struct smtp_reply_parser *p);
enum smtp_reply_status smtp_reply_parse(struct smtp_reply_parser *p, const char *in, size_t len,
					size_t *consumed, struct smtp_reply *out);

/* 2, 4 or 5 (the class), or 0 for anything else (1xx, 3xx). */
int smtp_reply_class(const struct smtp_reply *r);

#endif
