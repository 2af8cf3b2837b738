/*
 * cli_mail — the pure parts of `petrel sendmail`: turning what a local
 * program writes on stdin into a message in wire form, reading its header
 * section, and the address syntax of the command line and of To:/Cc:/Bcc:.
 *
 * No I/O, no allocation except where a function says so; slices point into
 * the caller's buffers.  Policy (which flags, which defaults) lives in
 * cli_sendmail.c; delivery syntax of addresses is smtp_parse's.
 */
#ifndef PETREL_CLI_MAIL_H
#define PETREL_CLI_MAIL_H

#include <stdbool.h>
#include <stddef.h>

#include "smtp/smtp_parse.h"
#include "util/util_buf.h"

/* ---- stdin lines -> CRLF lines ----------------------------------------------- */

enum cli_mail_lines_status {
	CLI_MAIL_LINES_MORE, /* all input consumed, more may come */
	CLI_MAIL_LINES_END,  /* a line of a single "." ended the message (not with -i) */
	CLI_MAIL_LINES_NUL,  /* a NUL octet: refused (sendmail's EX_DATAERR) */
};

/*
 * Line ends LF, CRLF and a bare CR become CRLF (a bare CR or LF is no line
 * end in SMTP and, passed on, could end the message early at a server that
 * reads it so: smuggling).  A line of more than CLI_MAIL_LINE_MAX octets is
 * folded with CRLF SP (RFC 5322 2.1.1 allows no longer line), as Postfix's
 * smtp client does.  When dot_ends is set (sendmail without -i/-oi), a line
 * holding only "." ends the input; no dot-unstuffing ever happens (stdin is
 * not SMTP).
 */
#define CLI_MAIL_LINE_MAX 998

struct cli_mail_lines {
	bool dot_ends;
	bool at_bol;	  /* the next octet starts a line */
	bool dot_pending; /* the line so far is "." (not yet written) */
	bool cr_pending;  /* a CR was read: the line ends (CRLF or a bare CR) */
	bool ended;	  /* END or NUL was returned */
	size_t col;	  /* octets written of the current line */
};

/* Bytes of out a push of len octets may need; finish needs CLI_MAIL_LINES_FINISH_MAX. */
#define CLI_MAIL_LINES_OUT_MAX(len) (3 * (len) + 8)
#define CLI_MAIL_LINES_FINISH_MAX   4

void cli_mail_lines_init(struct cli_mail_lines *l, bool dot_ends);
/*
 * Converts in[0..len) and appends the result to out at *out_len (out must
 * have CLI_MAIL_LINES_OUT_MAX(len) bytes free).  *used tells how much of in
 * was consumed (less than len only after END or NUL).
 */
enum cli_mail_lines_status cli_mail_lines_push(struct cli_mail_lines *l, const char *in, size_t len,
					       size_t *used, char *out, size_t *out_len);
/* End of input: writes what is pending and a final CRLF when the last line lacked one. */
void cli_mail_lines_finish(struct cli_mail_lines *l, char *out, size_t *out_len);

/* ---- the header section (CRLF lines) ------------------------------------------- */

struct cli_mail_split {
	size_t header_off; /* where the fields start (after a leading mbox "From " line) */
	size_t header_len; /* the header fields, their final CRLF included */
	size_t body_off;   /* where the body starts */
	bool has_blank; /* a blank line separated them (else the body started with a non-field) */
};

/*
 * Looks for the end of the header section in data[0..len) (CRLF lines), from
 * *scanned on (a resumable scan: *scanned only moves over complete lines).
 * True when found, with out filled: the section ends at the first empty line
 * or before the first line that is neither a field nor a continuation.  A
 * first line "From ..." (an mbox separator) is skipped, as sendmail does.
 */
bool cli_mail_header_end(const char *data, size_t len, size_t *scanned, struct cli_mail_split *out);
/* The input ended before cli_mail_header_end() found an end: all of it is header. */
void cli_mail_header_all(const char *data, size_t len, struct cli_mail_split *out);

/* One header field of a header section; slices borrowed from it. */
struct cli_mail_field {
	const char *name;
	size_t name_len;
	const char *value; /* after the colon, folding CRLFs included, final CRLF excluded */
	size_t value_len;
	size_t start, end; /* the whole field, continuation lines and final CRLF included */
};

/* Iterates the fields of data[0..len) from *pos; false at the end. */
bool cli_mail_header_next(const char *data, size_t len, size_t *pos, struct cli_mail_field *f);
/* True when f's name is name (any case). */
bool cli_mail_field_is(const struct cli_mail_field *f, const char *name);

/* ---- addresses ---------------------------------------------------------------------- */

#define CLI_MAIL_ADDR_MAX 1024 /* one element of an address list, before validation */

/* Called for each address of a list; return 0 to go on, -1 to stop with that result. */
typedef int (*cli_mail_addr_fn)(void *ctx, const char *addr);

/*
 * Splits an RFC 5322 address-list (a To:/Cc:/Bcc: value, folding allowed):
 * "Name <a@b>", "a@b (comment)", quoted display names holding commas, group
 * syntax ("team: a@b, c@d;", "undisclosed-recipients:;") are understood.
 * fn gets each address as written (angle brackets and comments removed,
 * whitespace trimmed), not yet validated.  Returns 0, -1 on an unterminated
 * quote, comment or angle address or an element over CLI_MAIL_ADDR_MAX, or
 * what fn returned.
 */
int cli_mail_addr_list(const char *value, size_t len, cli_mail_addr_fn fn, void *ctx);

/*
 * Validates one address for the envelope: optional <>, a local part without
 * a domain gets "@domain" (sendmail's "root" -> root@<first local domain>),
 * then RFC 5321 syntax (smtp_parse: no controls, CR, LF, NUL; length
 * limits).  Fills path (path->addr is the normalized form); returns 0, or -1
 * when the address cannot be used.  "" and "<>" are the null path when
 * allow_null (a sender), else invalid.
 */
int cli_mail_addr_check(const char *in, const char *domain, bool allow_null,
			struct smtp_path *path);

/* ---- fields sendmail adds ------------------------------------------------------------ */

#define CLI_MAIL_NAME_MAX 256 /* octets of a full name used in From: */

/*
 * Appends "From: addr\r\n", or with a full name "From: \"Name\" <addr>\r\n"
 * (RFC 5322 3.4): a quoted-string for ASCII names, RFC 2047 "B" encoded-words
 * for UTF-8 ones.  Control octets in the name become spaces, invalid UTF-8
 * becomes '?', and the name is cut at CLI_MAIL_NAME_MAX octets.  -1 when out
 * is full.
 */
int cli_mail_from_field(struct buf *out, const char *full_name, const char *addr);

#endif
