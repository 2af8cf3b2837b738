#include "smtp/smtp_reply.h"

#include <stdint.h>
#include <string.h>

/*
 * The parser keeps the current line in p->line (without its LF) and the
 * reply built so far in p->cur.  Every decision is taken at a byte that is
 * the same however the input was split (the LF ending a line, or the first
 * octet past the line limit), so feeding a reply in pieces gives the same
 * result, and the same total consumed count, as feeding it at once.
 *
 * After an error the parser stays failed (line_len == FAILED) until
 * smtp_reply_parser_init(): the caller has lost the reply boundaries.
 */
#define FAILED SIZE_MAX

/* Room for the line and a CR that may turn out to precede the LF. */
#define LINE_STORE (SMTP_REPLY_LINE_MAX + 1)

void
smtp_reply_parser_init(struct smtp_reply_parser *p)
{
	memset(p, 0, sizeof(*p));
}

int
smtp_reply_class(const struct smtp_reply *r)
{
	switch (r->code / 100) {
	case 2:
	case 4:
	case 5:
		return r->code / 100;
	default:
		return 0;
	}
}

static bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* 1*3DIGIT at s[*i]; advances *i. */
static bool
skip_digits(const char *s, size_t len, size_t *i)
{
	size_t start = *i;

	while (*i < len && *i - start < 3 && is_digit(s[*i]))
		(*i)++;
	return *i > start;
}

/*
 * RFC 3463 2: class "." subject "." detail, subject and detail 1*3DIGIT,
 * followed by a space or the end of the line.  Recognized only when the
 * class repeats the reply's first digit ("250 4.1.0" is text, not a code:
 * a server that says both cannot be trusted on either).  Returns the
 * length of the code, 0 when there is none.
 */
static size_t
enhanced_len(const char *t, size_t len, int code)
{
	size_t i = 0;

	if (len < 5 || t[0] != (char)('0' + code / 100) || t[1] != '.')
		return 0;
	i = 2;
	if (!skip_digits(t, len, &i) || i >= len || t[i] != '.')
		return 0;
	i++;
	if (!skip_digits(t, len, &i))
		return 0;
	if (i < len && t[i] != ' ')
		return 0;
	return i;
}

/* Appends a line's text to the reply text, cutting at SMTP_REPLY_TEXT_MAX - 1. */
static void
append_text(struct smtp_reply *r, const char *t, size_t len)
{
	size_t have = strlen(r->text);
	size_t room = SMTP_REPLY_TEXT_MAX - 1 - have;

	if (r->lines > 1 && room > 0) {
		r->text[have++] = '\n';
		room--;
	}
	if (len > room)
		len = room;
	memcpy(r->text + have, t, len);
	r->text[have + len] = '\0';
}

/*
 * One complete line (CR stripped).  Returns -1 when malformed, 0 when the
 * reply continues, 1 when this was its last line.
 */
static int
take_line(struct smtp_reply_parser *p, const char *s, size_t len)
{
	struct smtp_reply *r = &p->cur;
	const char *text;
	size_t text_len, skip;
	int code;

	if (len > SMTP_REPLY_LINE_MAX || len < 3)
		return -1;
	/* RFC 5321 4.2: the code is three digits, 2yz..5yz in replies to commands. */
	if (s[0] < '2' || s[0] > '5' || !is_digit(s[1]) || !is_digit(s[2]))
		return -1;
	if (len > 3 && s[3] != ' ' && s[3] != '-')
		return -1;
	/* The text goes on as a C string; a NUL would silently cut it. */
	if (memchr(s, '\0', len) != NULL)
		return -1;
	code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
	if (p->in_reply && code != r->code)
		return -1; /* RFC 5321 4.2.1: every line of a reply has the same code */
	if (p->in_reply && r->lines >= SMTP_REPLY_LINES_MAX)
		return -1;
	text = len > 3 ? s + 4 : s + 3;
	text_len = len > 3 ? len - 4 : 0;
	if (!p->in_reply) {
		p->in_reply = true;
		r->code = code;
		skip = enhanced_len(text, text_len, code);
		if (skip > 0) {
			memcpy(r->enhanced, text, skip);
			r->enhanced[skip] = '\0';
			while (skip < text_len && text[skip] == ' ')
				skip++;
			text += skip;
			text_len -= skip;
		}
	}
	r->lines++;
	append_text(r, text, text_len);
	/* "250" alone (no separator) ends a reply, as "250 " does. */
	return len == 3 || s[3] == ' ';
}

enum smtp_reply_status
smtp_reply_parse(struct smtp_reply_parser *p, const char *in, size_t len, size_t *consumed,
		 struct smtp_reply *out)
{
	size_t used = 0;

	*consumed = 0;
	if (p->line_len == FAILED)
		return SMTP_REPLY_ERROR;
	while (used < len) {
		const char *lf = memchr(in + used, '\n', len - used);
		size_t chunk = lf != NULL ? (size_t)(lf - (in + used)) : len - used;
		size_t line_len;
		int rc;

		if (chunk > LINE_STORE - p->line_len) {
			/* The first octet past the limit is where the error is (split-invariant).
			 */
			*consumed = used + (LINE_STORE - p->line_len) + 1;
			p->line_len = FAILED;
			return SMTP_REPLY_ERROR;
		}
		memcpy(p->line + p->line_len, in + used, chunk);
		p->line_len += chunk;
		used += chunk;
		if (lf == NULL)
			break;
		used++; /* the LF */
		line_len = p->line_len;
		if (line_len > 0 && p->line[line_len - 1] == '\r')
			line_len--;
		p->line_len = 0;
		rc = take_line(p, p->line, line_len);
		if (rc < 0) {
			*consumed = used;
			p->line_len = FAILED;
			return SMTP_REPLY_ERROR;
		}
		if (rc > 0) {
			*out = p->cur;
			memset(&p->cur, 0, sizeof(p->cur));
			p->in_reply = false;
			*consumed = used;
			return SMTP_REPLY_DONE;
		}
	}
	*consumed = used;
	return SMTP_REPLY_MORE;
}
