#include "smtp/smtp_trace.h"

#include <string.h>
#include <strings.h>

static bool
is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/*
 * Whether line[0..n) starts the field name (name, then optional white space
 * and a colon); *value is set to the offset after the colon.
 */
static bool
field_is(const char *line, size_t n, const char *name, size_t *value)
{
	size_t len = strlen(name), i;

	if (n < len + 1 || strncasecmp(line, name, len) != 0)
		return false;
	for (i = len; i < n && is_wsp(line[i]); i++)
		;
	if (i == n || line[i] != ':')
		return false;
	*value = i + 1;
	return true;
}

/* Ends the Delivered-To: value that started at offset start of t->delivered_to. */
static void
value_end(struct smtp_trace *t, size_t start)
{
	struct buf *b = &t->delivered_to;
	size_t s = start, e = b->len;

	for (int pass = 0; pass < 2; pass++) {
		while (s < e && is_wsp(b->data[s]))
			s++;
		while (e > s && is_wsp(b->data[e - 1]))
			e--;
		if (pass > 0 || e - s < 2 || b->data[s] != '<' || b->data[e - 1] != '>')
			break;
		s++; /* then the white space inside the brackets */
		e--;
	}
	if (e == s || memchr(b->data + s, '\0', e - s) != NULL) {
		b->len = start; /* an empty value names no one, nor does one with a NUL */
		return;
	}
	memmove(b->data + start, b->data + s, e - s);
	b->len = start + (e - s);
	/* A value and its NUL take no more room than its field's lines: this does not fail. */
	if (buf_append(b, "", 1) != 0)
		b->len = start;
}

void
smtp_trace_scan(struct smtp_trace *t, const char *msg, size_t len)
{
	size_t i = 0, start = 0;
	bool in_value = false; /* the lines now continue a Delivered-To: field */

	t->received = 0;
	/* Each value is shorter than its line, "Delivered-To:" and all: len bounds them all. */
	buf_init(&t->delivered_to, len);
	while (i < len) {
		const char *nl = memchr(msg + i, '\n', len - i);
		size_t end = nl != NULL ? (size_t)(nl - msg) : len, n, v;
		const char *line = msg + i;

		if (end > i && msg[end - 1] == '\r')
			end--;
		n = end - i;
		if (n == 0)
			break; /* the empty line: the body follows */
		if (is_wsp(line[0])) {
			/* A folded line: its CRLF goes, its white space stays (RFC 5322 2.2.3). */
			if (in_value && buf_append(&t->delivered_to, line, n) != 0)
				in_value = false;
		} else {
			if (in_value)
				value_end(t, start);
			in_value = false;
			if (field_is(line, n, "Received", &v)) {
				t->received++;
			} else if (field_is(line, n, "Delivered-To", &v)) {
				start = t->delivered_to.len;
				in_value = buf_append(&t->delivered_to, line + v, n - v) == 0;
			}
		}
		if (nl == NULL)
			break;
		i = (size_t)(nl - msg) + 1;
	}
	if (in_value)
		value_end(t, start);
}

bool
smtp_trace_delivered_to(const struct smtp_trace *t, const char *addr)
{
	const struct buf *b = &t->delivered_to;

	for (size_t i = 0; i < b->len;) {
		const char *v = b->data + i;

		if (strcasecmp(v, addr) == 0)
			return true;
		i += strlen(v) + 1;
	}
	return false;
}

bool
smtp_trace_too_many_hops(const struct smtp_trace *t)
{
	return t->received > SMTP_TRACE_HOPS_MAX;
}

void
smtp_trace_free(struct smtp_trace *t)
{
	buf_free(&t->delivered_to);
}
