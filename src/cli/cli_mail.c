#include "cli/cli_mail.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* ---- stdin lines -> CRLF lines ----------------------------------------------- */

void
cli_mail_lines_init(struct cli_mail_lines *l, bool dot_ends)
{
	memset(l, 0, sizeof(*l));
	l->dot_ends = dot_ends;
	l->at_bol = true;
}

/* One octet of a line; a line at CLI_MAIL_LINE_MAX octets is folded first. */
static void
emit(struct cli_mail_lines *l, char c, char *out, size_t *out_len)
{
	if (l->col >= CLI_MAIL_LINE_MAX) {
		/* CRLF SP: in the header section the rest is a continuation line. */
		out[(*out_len)++] = '\r';
		out[(*out_len)++] = '\n';
		out[(*out_len)++] = ' ';
		l->col = 1;
	}
	out[(*out_len)++] = c;
	l->col++;
}

/* The line ends; true when it was the lone "." that ends the input. */
static bool
end_line(struct cli_mail_lines *l, char *out, size_t *out_len)
{
	if (l->dot_pending)
		return true;
	out[(*out_len)++] = '\r';
	out[(*out_len)++] = '\n';
	l->col = 0;
	l->at_bol = true;
	return false;
}

enum cli_mail_lines_status
cli_mail_lines_push(struct cli_mail_lines *l, const char *in, size_t len, size_t *used, char *out,
		    size_t *out_len)
{
	*used = 0;
	if (l->ended)
		return CLI_MAIL_LINES_END;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];

		if (c == '\0') {
			l->ended = true;
			*used = i;
			return CLI_MAIL_LINES_NUL;
		}
		if (l->cr_pending) {
			/* CRLF, or a bare CR: either ends the line. */
			l->cr_pending = false;
			if (end_line(l, out, out_len)) {
				l->ended = true;
				*used = c == '\n' ? i + 1 : i;
				return CLI_MAIL_LINES_END;
			}
			if (c == '\n')
				continue;
		}
		if (c == '\n') {
			if (end_line(l, out, out_len)) {
				l->ended = true;
				*used = i + 1;
				return CLI_MAIL_LINES_END;
			}
			continue;
		}
		if (c == '\r') {
			l->cr_pending = true; /* its LF may come in the next push */
			continue;
		}
		if (l->at_bol && c == '.' && l->dot_ends) {
			l->dot_pending = true;
			l->at_bol = false;
			continue;
		}
		if (l->dot_pending) {
			l->dot_pending = false;
			emit(l, '.', out, out_len);
		}
		emit(l, c, out, out_len);
		l->at_bol = false;
	}
	*used = len;
	return CLI_MAIL_LINES_MORE;
}

void
cli_mail_lines_finish(struct cli_mail_lines *l, char *out, size_t *out_len)
{
	if (l->ended)
		return;
	l->ended = true;
	/* A CR just before the end ends the last line (an empty one too); "." there ends the
	 * message. */
	if (l->dot_pending)
		return;
	if (l->cr_pending || !l->at_bol)
		end_line(l, out, out_len);
	l->cr_pending = false;
}

/* ---- the header section ----------------------------------------------------------- */

/* Length of a field name at line[0..len) up to its colon, or 0 when the line is no field. */
static size_t
field_name_len(const char *line, size_t len)
{
	size_t i = 0, name_len;

	/* ftext: printable US-ASCII except ':' (RFC 5322 3.6.8). */
	while (i < len && line[i] > 32 && line[i] < 127 && line[i] != ':')
		i++;
	name_len = i;
	/* RFC 5322 4.5.3 (obs-optional): white space before the colon. */
	while (i < len && (line[i] == ' ' || line[i] == '\t'))
		i++;
	if (name_len == 0 || i >= len || line[i] != ':')
		return 0;
	return name_len;
}

/* Length of a leading "From " line with its CRLF, or 0. */
static size_t
from_line_len(const char *data, size_t len)
{
	const char *nl;

	if (len < 5 || memcmp(data, "From ", 5) != 0)
		return 0;
	nl = memchr(data, '\n', len);
	return nl ? (size_t)(nl - data) + 1 : 0;
}

bool
cli_mail_header_end(const char *data, size_t len, size_t *scanned, struct cli_mail_split *out)
{
	size_t pos = *scanned, end;

	for (;;) {
		/* (data may be NULL when nothing was read yet) */
		const char *nl = pos < len ? memchr(data + pos, '\n', len - pos) : NULL;
		size_t line_len, start = pos;

		if (nl == NULL) {
			*scanned = pos;
			return false;
		}
		/* Every LF here is the end of a CRLF written by cli_mail_lines_push(). */
		line_len = (size_t)(nl - (data + pos));
		if (line_len > 0 && data[pos + line_len - 1] == '\r')
			line_len--;
		pos = (size_t)(nl - data) + 1;
		if (line_len == 0) {
			end = start;
			out->body_off = pos;
			out->has_blank = true;
			break;
		}
		/* A mailbox separator some programs still write first; sendmail drops it. */
		if (start == 0 && line_len >= 5 && memcmp(data, "From ", 5) == 0)
			continue;
		if (data[start] == ' ' || data[start] == '\t') {
			if (start > 0)
				continue; /* a continuation line */
		} else if (field_name_len(data + start, line_len) > 0) {
			continue;
		}
		end = start;
		out->body_off = start;
		out->has_blank = false;
		break;
	}
	*scanned = pos;
	out->header_off = from_line_len(data, len);
	if (out->header_off > end)
		out->header_off = end;
	out->header_len = end - out->header_off;
	return true;
}

void
cli_mail_header_all(const char *data, size_t len, struct cli_mail_split *out)
{
	out->header_off = from_line_len(data, len);
	out->header_len = len - out->header_off;
	out->body_off = len;
	out->has_blank = false;
}

bool
cli_mail_header_next(const char *data, size_t len, size_t *pos, struct cli_mail_field *f)
{
	size_t p = *pos, line_end;
	const char *nl, *colon;

	if (p >= len)
		return false;
	memset(f, 0, sizeof(*f));
	f->start = p;
	f->name = data + p;
	nl = memchr(data + p, '\n', len - p);
	line_end = nl ? (size_t)(nl - data) + 1 : len;
	f->name_len = field_name_len(data + p, line_end - p);
	colon = memchr(data + p, ':', line_end - p);
	f->value = colon ? colon + 1 : data + line_end;
	/* Continuation lines belong to the field. */
	while (line_end < len && (data[line_end] == ' ' || data[line_end] == '\t')) {
		nl = memchr(data + line_end, '\n', len - line_end);
		line_end = nl ? (size_t)(nl - data) + 1 : len;
	}
	f->end = line_end;
	f->value_len = (size_t)(data + line_end - f->value);
	if (f->value_len > 0 && f->value[f->value_len - 1] == '\n')
		f->value_len--;
	if (f->value_len > 0 && f->value[f->value_len - 1] == '\r')
		f->value_len--;
	*pos = line_end;
	return true;
}

bool
cli_mail_field_is(const struct cli_mail_field *f, const char *name)
{
	return strlen(name) == f->name_len && strncasecmp(f->name, name, f->name_len) == 0;
}

/* ---- addresses ---------------------------------------------------------------------- */

struct elem {
	char text[CLI_MAIL_ADDR_MAX + 1]; /* outside <>: a bare address or a display name */
	size_t text_len;
	bool text_over;
	char angle[CLI_MAIL_ADDR_MAX + 1]; /* inside <> */
	size_t angle_len;
	bool angle_over;
	bool has_angle;
	bool in_angle;
};

static void
elem_put(struct elem *e, char c)
{
	if (e->in_angle) {
		if (e->angle_len < CLI_MAIL_ADDR_MAX)
			e->angle[e->angle_len++] = c;
		else
			e->angle_over = true;
	} else {
		if (e->text_len < CLI_MAIL_ADDR_MAX)
			e->text[e->text_len++] = c;
		else
			e->text_over = true;
	}
}

/* Trims s[0..*len) of spaces in place; returns its new start. */
static char *
trim(char *s, size_t *len)
{
	while (*len > 0 && s[*len - 1] == ' ')
		(*len)--;
	while (*len > 0 && s[0] == ' ') {
		s++;
		(*len)--;
	}
	s[*len] = '\0';
	return s;
}

/* Hands the element to fn (when it holds an address) and starts a new one. */
static int
elem_emit(struct elem *e, cli_mail_addr_fn fn, void *ctx)
{
	char *addr;
	size_t len;
	int rc = 0;

	if (e->has_angle) {
		if (e->angle_over)
			return -1;
		len = e->angle_len;
		addr = trim(e->angle, &len);
	} else {
		if (e->text_over)
			return -1;
		len = e->text_len;
		addr = trim(e->text, &len);
	}
	if (len > 0)
		rc = fn(ctx, addr);
	memset(e, 0, sizeof(*e));
	return rc;
}

int
cli_mail_addr_list(const char *value, size_t len, cli_mail_addr_fn fn, void *ctx)
{
	struct elem e;
	bool in_quote = false;
	unsigned comment = 0;
	int rc;

	memset(&e, 0, sizeof(e));
	for (size_t i = 0; i < len; i++) {
		char c = value[i];

		/* Unfolding (RFC 5322 2.2.3): line breaks vanish, tabs are spaces. */
		if (c == '\r' || c == '\n')
			continue;
		if (c == '\t')
			c = ' ';
		if (in_quote) {
			elem_put(&e, c);
			if (c == '\\' && i + 1 < len)
				elem_put(&e, value[++i]);
			else if (c == '"')
				in_quote = false;
			continue;
		}
		if (comment > 0) {
			if (c == '\\')
				i++;
			else if (c == '(')
				comment++;
			else if (c == ')')
				comment--;
			continue;
		}
		switch (c) {
		case '"':
			in_quote = true;
			elem_put(&e, c);
			break;
		case '(':
			comment = 1;
			break;
		case '<':
			if (e.in_angle)
				return -1;
			e.in_angle = true;
			e.has_angle = true;
			e.angle_len = 0;
			break;
		case '>':
			if (!e.in_angle)
				return -1;
			e.in_angle = false;
			break;
		case ':':
			/* Inside <> a source route ("@a,@b:x@y"); outside, a group's name ends. */
			if (e.in_angle) {
				elem_put(&e, c);
			} else {
				e.text_len = 0;
				e.text_over = false;
			}
			break;
		case ',':
		case ';':
			if (e.in_angle) {
				elem_put(&e, c);
				break;
			}
			rc = elem_emit(&e, fn, ctx);
			if (rc != 0)
				return rc;
			break;
		default:
			elem_put(&e, c);
			break;
		}
	}
	if (in_quote || comment > 0 || e.in_angle)
		return -1;
	return elem_emit(&e, fn, ctx);
}

/* True when s has an '@' outside a quoted string (it names a domain). */
static bool
has_domain(const char *s, size_t len)
{
	bool in_quote = false;

	for (size_t i = 0; i < len; i++) {
		if (in_quote && s[i] == '\\')
			i++;
		else if (s[i] == '"')
			in_quote = !in_quote;
		else if (!in_quote && s[i] == '@')
			return true;
	}
	return false;
}

int
cli_mail_addr_check(const char *in, const char *domain, bool allow_null, struct smtp_path *path)
{
	char arg[2 * SMTP_PATH_MAX + 16];
	size_t len = strlen(in);
	int n;

	memset(path, 0, sizeof(*path));
	if (len >= 2 && in[0] == '<' && in[len - 1] == '>') {
		in++;
		len -= 2;
	}
	if (len == 0) {
		if (!allow_null)
			return -1;
		path->is_null = true;
		return 0;
	}
	if (len > SMTP_PATH_MAX)
		return -1;
	if (has_domain(in, len))
		n = snprintf(arg, sizeof(arg), "TO:<%.*s>", (int)len, in);
	else if (domain != NULL && domain[0] != '\0')
		n = snprintf(arg, sizeof(arg), "TO:<%.*s@%s>", (int)len, in, domain);
	else
		return -1;
	if (n < 0 || (size_t)n >= sizeof(arg))
		return -1;
	if (smtp_parse_rcpt_to(arg, (size_t)n, path) != SMTP_ARG_OK || path->is_postmaster ||
	    path->domain_len == 0)
		return -1;
	return 0;
}

/* ---- fields sendmail adds ------------------------------------------------------------ */

/* Length of the UTF-8 sequence starting at s[0..len), or 0 when it is malformed. */
static size_t
utf8_seq_len(const char *s, size_t len)
{
	unsigned char c = (unsigned char)s[0];
	size_t n = c < 0x80		   ? 1
		   : c >= 0xc2 && c < 0xe0 ? 2
		   : c >= 0xe0 && c < 0xf0 ? 3
		   : c >= 0xf0 && c < 0xf5 ? 4
					   : 0;

	if (n == 0 || n > len || !smtp_utf8_valid(s, n))
		return 0;
	return n;
}

/* The name made safe: no controls, valid UTF-8, at most CLI_MAIL_NAME_MAX octets. */
static size_t
clean_name(const char *name, char *out, bool *is_ascii)
{
	size_t len = strlen(name), o = 0;

	*is_ascii = true;
	for (size_t i = 0; i < len;) {
		unsigned char c = (unsigned char)name[i];
		size_t n = c >= 0x80 ? utf8_seq_len(name + i, len - i) : 1;

		if (n > 1) {
			if (o + n > CLI_MAIL_NAME_MAX)
				break;
			memcpy(out + o, name + i, n);
			o += n;
			i += n;
			*is_ascii = false;
			continue;
		}
		if (o + 1 > CLI_MAIL_NAME_MAX)
			break;
		out[o++] = c < 0x20 || c == 0x7f ? ' ' : c >= 0x80 ? '?' : (char)c;
		i++;
	}
	return o;
}

static int
append_base64(struct buf *out, const unsigned char *s, size_t len)
{
	static const char b64[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	int rc = 0;

	for (size_t i = 0; i < len; i += 3) {
		unsigned v = (unsigned)s[i] << 16;
		char q[4];

		if (i + 1 < len)
			v |= (unsigned)s[i + 1] << 8;
		if (i + 2 < len)
			v |= s[i + 2];
		q[0] = b64[(v >> 18) & 63];
		q[1] = b64[(v >> 12) & 63];
		q[2] = i + 1 < len ? b64[(v >> 6) & 63] : '=';
		q[3] = i + 2 < len ? b64[v & 63] : '=';
		rc |= buf_append(out, q, 4);
	}
	return rc;
}

/*
 * RFC 2047 encoded-words of at most 75 octets (45 octets of text each, cut
 * between UTF-8 sequences), separated by spaces.
 */
static int
append_encoded_words(struct buf *out, const char *s, size_t len)
{
	int rc = 0;

	for (size_t i = 0; i < len;) {
		size_t n = 0;

		while (i + n < len) {
			size_t seq = utf8_seq_len(s + i + n, len - i - n);
			if (seq == 0 || n + seq > 45)
				break;
			n += seq;
		}
		if (n == 0)
			break; /* clean_name() left only whole sequences: not reached */
		rc |= buf_append_str(out, i == 0 ? "=?UTF-8?B?" : " =?UTF-8?B?");
		rc |= append_base64(out, (const unsigned char *)s + i, n);
		rc |= buf_append_str(out, "?=");
		i += n;
	}
	return rc;
}

int
cli_mail_from_field(struct buf *out, const char *full_name, const char *addr)
{
	char name[CLI_MAIL_NAME_MAX];
	size_t len = 0;
	bool is_ascii = true;
	int rc = 0;

	if (full_name != NULL)
		len = clean_name(full_name, name, &is_ascii);
	while (len > 0 && name[len - 1] == ' ')
		len--;
	if (len == 0)
		return buf_printf(out, "From: %s\r\n", addr);
	rc |= buf_append_str(out, "From: ");
	if (is_ascii) {
		rc |= buf_append_str(out, "\"");
		for (size_t i = 0; i < len; i++) {
			if (name[i] == '"' || name[i] == '\\')
				rc |= buf_append(out, "\\", 1);
			rc |= buf_append(out, name + i, 1);
		}
		rc |= buf_append_str(out, "\"");
	} else {
		rc |= append_encoded_words(out, name, len);
	}
	rc |= buf_printf(out, " <%s>\r\n", addr);
	return rc ? -1 : 0;
}
