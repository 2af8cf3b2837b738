/*
 * smtp_body — the message body reader for DATA and BDAT.
 *
 * A resumable push parser: feed it whatever bytes arrived, in any split, and
 * it writes the message bytes (dot-stuffing undone, CRLF line ends kept) to a
 * caller buffer.  Pure: no allocation, no I/O.
 *
 * End of data (DATA mode) is the exact octets CR LF . CR LF and nothing
 * else (the CRLF before the dot may be the one that ended the DATA command).
 * LF.LF, LF.CRLF, CR.CR, CRLF.LF ... are content, so nothing inside one
 * message can end it early and start a second transaction (SMTP smuggling).
 *
 * Policy on bad content — the message is refused after its end, the session
 * goes on: a bare CR or bare LF (SMTP_BODY_BARE_EOL), a line over
 * SMTP_LINE_MAX octets with its CRLF, not counting a stuffing dot
 * (SMTP_BODY_LONG_LINE, RFC 5321 4.5.3.1.6), more than max_size octets (SMTP_BODY_TOO_BIG; once
 * set, no further output is produced, the input is still consumed to its end).
 */
#ifndef PETREL_SMTP_BODY_H
#define PETREL_SMTP_BODY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum smtp_body_flag {
	SMTP_BODY_TOO_BIG = 1u << 0,
	SMTP_BODY_LONG_LINE = 1u << 1,
	SMTP_BODY_BARE_EOL = 1u << 2,
};

enum smtp_body_status {
	SMTP_BODY_MORE, /* all input consumed, or the output buffer is full: call again */
	SMTP_BODY_END,	/* DATA mode: end of data consumed; the message is complete */
};

struct smtp_body {
	uint64_t max_size; /* limit on message octets (after unstuffing) */
	uint64_t size;	   /* message octets seen so far (also counted past max_size) */
	unsigned flags;	   /* enum smtp_body_flag bits */
	/* private parser state */
	int state;
	size_t line_len;
};

/* Starts a new message. */
void smtp_body_begin(struct smtp_body *b, uint64_t max_size);

/*
 * DATA mode.  Consumes from in[0..in_len), sets *consumed; appends message
 * octets to out[*out_len..out_cap) and advances *out_len.  Returns
 * SMTP_BODY_END once the terminating CRLF.CRLF has been consumed (*consumed
 * then stops right after it: later bytes belong to the next command), else
 * SMTP_BODY_MORE.  When out has less than 2 free octets it stops early (with
 * *consumed < in_len): drain out and call again.
 */
enum smtp_body_status smtp_body_data(struct smtp_body *b, const char *in, size_t in_len,
				     size_t *consumed, char *out, size_t out_cap, size_t *out_len);

/*
 * BDAT mode: the octets of one chunk, no dot-stuffing and no terminator (the
 * caller counts the chunk size).  Same output contract and checks as DATA.
 */
void smtp_body_bdat(struct smtp_body *b, const char *in, size_t in_len, size_t *consumed, char *out,
		    size_t out_cap, size_t *out_len);
/* BDAT mode: call after the LAST chunk; a trailing bare CR sets SMTP_BODY_BARE_EOL. */
void smtp_body_bdat_end(struct smtp_body *b);

#endif
