#include "smtp/smtp_body.h"

#include <string.h>

#include "smtp/smtp_parse.h"

/*
 * Parser states.  The only state carried between calls besides line_len; a
 * pending '.' or CR is never written out before the next octet says what it
 * is, so any split of the input gives the same output.
 */
enum smtp_body_state {
	SMTP_BODY_ST_LINE_START, /* after CR LF (or the DATA command's CR LF) */
	SMTP_BODY_ST_DOT,	 /* '.' at line start, not yet written */
	SMTP_BODY_ST_DOT_CR,	 /* '.' CR at line start, neither written */
	SMTP_BODY_ST_IN_LINE,	 /* inside a line */
	SMTP_BODY_ST_CR,	 /* CR inside a line, not yet written */
	SMTP_BODY_ST_DONE,	 /* DATA mode: CR LF . CR LF consumed */
};

/* One call's view of its buffers. */
struct scan {
	const char *in; /* borrowed */
	size_t in_len;
	size_t pos; /* next input octet */
	char *out;  /* borrowed */
	size_t out_cap;
	size_t out_len;
	/*
	 * Search cursors of copy_run: no CR (LF) lies in [in + pos, cr) (lf);
	 * cr is the CR itself or the end of the span searched.  Each octet is
	 * searched about once per call, so a call stays linear even on input
	 * made of bare CRs or bare LFs.  NULL: not searched yet.
	 */
	const char *cr;
	const char *lf;
};

void
smtp_body_begin(struct smtp_body *b, uint64_t max_size)
{
	b->max_size = max_size;
	b->size = 0;
	b->flags = 0;
	b->state = SMTP_BODY_ST_LINE_START;
	b->line_len = 0;
}

/* Appends one message octet, or only counts it once the message is over max_size. */
static void
put(struct smtp_body *b, struct scan *s, char c)
{
	if (b->size >= b->max_size)
		b->flags |= SMTP_BODY_TOO_BIG;
	else
		s->out[s->out_len++] = c;
	b->size++;
}

/* Counts n wire octets of the current line (RFC 5321 4.5.3.1.6: 1000 with CR LF). */
static void
line_add(struct smtp_body *b, size_t n)
{
	b->line_len += n;
	if (b->line_len > SMTP_LINE_MAX) {
		b->flags |= SMTP_BODY_LONG_LINE;
		b->line_len = SMTP_LINE_MAX + 1; /* saturate: no wrap on endless lines */
	}
}

static const char *
find(const char *p, const char *end, char c)
{
	const char *q = memchr(p, c, (size_t)(end - p));

	return q != NULL ? q : end;
}

/*
 * Copies the run of octets before the next CR or LF (at least one: the caller
 * saw an ordinary octet at pos).  Leaves one octet of the 2 free, as a byte
 * at a time loop would; past max_size nothing is written and the run is
 * consumed whatever the room in out.
 */
static void
copy_run(struct smtp_body *b, struct scan *s)
{
	const char *p = s->in + s->pos;
	const char *lim = s->in + s->in_len;
	size_t room = s->out_cap - s->out_len - 1;
	const char *stop;
	size_t n;

	/* Search no further than this call can consume: a tiny out must not
	 * make every call scan the whole input. */
	if (!(b->flags & SMTP_BODY_TOO_BIG) && room < (size_t)(lim - p))
		lim = p + room;
	if (s->cr == NULL || s->cr <= p)
		s->cr = find(p, lim, '\r');
	if (s->lf == NULL || s->lf <= p)
		s->lf = find(p, lim, '\n');
	stop = s->cr < s->lf ? s->cr : s->lf;
	n = (size_t)(stop - p);

	if (!(b->flags & SMTP_BODY_TOO_BIG)) {
		uint64_t left = b->max_size - b->size;

		if (left == 0) {
			b->flags |= SMTP_BODY_TOO_BIG;
		} else {
			if (n > room)
				n = room;
			if (n > left)
				n = (size_t)left;
			memcpy(s->out + s->out_len, p, n);
			s->out_len += n;
		}
	}
	b->size += n;
	line_add(b, n);
	s->pos += n;
}

/*
 * The shared state machine.  is_data turns on dot handling and the end of
 * data; BDAT only checks line ends, line length and size.
 */
static enum smtp_body_status
scan(struct smtp_body *b, bool is_data, const char *in, size_t in_len, size_t *consumed, char *out,
     size_t out_cap, size_t *out_len)
{
	struct scan s = {
	    .in = in,
	    .in_len = in_len,
	    .out = out,
	    .out_cap = out_cap,
	    .out_len = *out_len,
	};

	if (s.out_len > s.out_cap)
		s.out_len = s.out_cap; /* a caller bug: act as if out were full */
	while (b->state != SMTP_BODY_ST_DONE && s.pos < in_len && s.out_cap - s.out_len >= 2) {
		char c = in[s.pos];

		switch ((enum smtp_body_state)b->state) {
		case SMTP_BODY_ST_LINE_START:
			if (is_data && c == '.') {
				/* Not counted: RFC 5321 4.5.3.1.6 excludes the dot added for
				 * transparency from the 1000-octet limit. */
				s.pos++;
				b->state = SMTP_BODY_ST_DOT;
			} else {
				b->state = SMTP_BODY_ST_IN_LINE;
			}
			break;
		case SMTP_BODY_ST_DOT:
			if (c == '\r') {
				s.pos++;
				line_add(b, 1);
				b->state = SMTP_BODY_ST_DOT_CR;
			} else {
				/* RFC 5321 4.5.2: a stuffed dot is deleted; c is content. */
				b->state = SMTP_BODY_ST_IN_LINE;
			}
			break;
		case SMTP_BODY_ST_DOT_CR:
			if (c == '\n') {
				s.pos++; /* later octets are the next command's */
				b->line_len = 0;
				b->state = SMTP_BODY_ST_DONE;
			} else {
				/* Stuffed dot, then a CR without LF: c decides as for any CR. */
				b->state = SMTP_BODY_ST_CR;
			}
			break;
		case SMTP_BODY_ST_IN_LINE:
			if (c == '\r') {
				s.pos++;
				line_add(b, 1);
				b->state = SMTP_BODY_ST_CR;
			} else if (c == '\n') {
				/* A bare LF does not end the line: "\n.\r\n" is content, never the
				 * end of data (SMTP smuggling). */
				s.pos++;
				line_add(b, 1);
				b->flags |= SMTP_BODY_BARE_EOL;
				put(b, &s, '\n');
			} else {
				copy_run(b, &s);
			}
			break;
		case SMTP_BODY_ST_CR:
			if (c == '\n') {
				s.pos++;
				line_add(b, 1);
				put(b, &s, '\r');
				put(b, &s, '\n');
				b->line_len = 0;
				b->state = SMTP_BODY_ST_LINE_START;
			} else {
				/* A bare CR stays inside the line ("\r.\r\n" is content); c is
				 * read again in IN_LINE. */
				b->flags |= SMTP_BODY_BARE_EOL;
				put(b, &s, '\r');
				b->state = SMTP_BODY_ST_IN_LINE;
			}
			break;
		case SMTP_BODY_ST_DONE:
			break; /* not reached: the loop stops first */
		}
	}
	*consumed = s.pos;
	*out_len = s.out_len;
	return b->state == SMTP_BODY_ST_DONE ? SMTP_BODY_END : SMTP_BODY_MORE;
}

enum smtp_body_status
smtp_body_data(struct smtp_body *b, const char *in, size_t in_len, size_t *consumed, char *out,
	       size_t out_cap, size_t *out_len)
{
	return scan(b, true, in, in_len, consumed, out, out_cap, out_len);
}

void
smtp_body_bdat(struct smtp_body *b, const char *in, size_t in_len, size_t *consumed, char *out,
	       size_t out_cap, size_t *out_len)
{
	/* A CR that ends a chunk stays pending (state CR): the LF may open the next. */
	(void)scan(b, false, in, in_len, consumed, out, out_cap, out_len);
}

void
smtp_body_bdat_end(struct smtp_body *b)
{
	if (b->state != SMTP_BODY_ST_CR)
		return;
	/* The last chunk ended in a CR that no LF followed.  It counts as a message
	 * octet but is not written: there is no buffer here, and the flag means the
	 * message is refused anyway. */
	b->flags |= SMTP_BODY_BARE_EOL;
	if (b->size >= b->max_size)
		b->flags |= SMTP_BODY_TOO_BIG;
	b->size++;
	b->state = SMTP_BODY_ST_IN_LINE;
}
