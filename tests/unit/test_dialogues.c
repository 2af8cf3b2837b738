/*
 * Replays the SMTP dialogues of tests/dialogues/ (or the folder in argv[1])
 * through smtp_session, one cmocka test per file.
 *
 * The dialogue format, one item per line:
 *   C: text   a client line, sent with CRLF
 *   C+ text   client bytes sent as they are, without CRLF (BDAT chunks)
 *   S: text   the next server reply line, matched exactly
 *   # text    a comment; empty lines are ignored too
 * C lines accept the escapes \r \n \t \\ and \xHH (\x00 is a NUL).  The
 * client's bytes are sent when the next S line is reached (so consecutive C
 * lines are one pipelined group); every reply must then be matched by S lines
 * before the client sends again, and none may be left at the end.
 *
 * The server side: hostname mx.petrel.test, SIZE 512, at most 3 recipients,
 * no STARTTLS.  Recipients: alice, bob and postmaster at petrel.test and the
 * bare <Postmaster> are accepted; tempfail@petrel.test gets a temporary
 * failure; a petrel.test local part with a '/' is a bad mailbox name; other
 * petrel.test users are unknown; any other domain is a relay attempt.  The
 * glue is emulated as in test_smtp_session.c: every message is committed at
 * once as queue id TESTID.  Each dialogue is replayed three ways (each group
 * sent all at once, line by line, byte by byte) with the same expectations.
 */
#include "smtp/smtp_session.h"

#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "util/util_mem.h"

#define DEFAULT_DIR "tests/dialogues"
#define FILE_MAX    (1024 * 1024)

/* ---- the server's policy ---------------------------------------------- */

static enum smtp_rcpt_verdict
check_rcpt(void *ctx, const struct smtp_path *rcpt)
{
	static const char *const users[] = {"alice", "bob", "postmaster"};

	if (rcpt->is_postmaster)
		return SMTP_RCPT_ACCEPT;
	if (strcasecmp(rcpt->domain, "petrel.test") != 0)
		return SMTP_RCPT_RELAY_DENIED;
	if (strchr(rcpt->local, '/') != NULL)
		return SMTP_RCPT_BAD_MAILBOX;
	if (strcasecmp(rcpt->local, "tempfail") == 0)
		return SMTP_RCPT_TEMPFAIL;
	for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++)
		if (strcasecmp(rcpt->local, users[i]) == 0)
			return SMTP_RCPT_ACCEPT;
	return SMTP_RCPT_UNKNOWN_USER;
}

/* ---- a parsed dialogue ------------------------------------------------- */

struct bytes {
	char *p; /* owned */
	size_t len;
	size_t cap;
};

static void
bytes_add(struct bytes *b, const char *p, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		b->p = xrealloc(b->p, b->cap);
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = '\0';
}

enum op_kind { OP_SEND, OP_EXPECT };

struct op {
	enum op_kind kind;
	size_t line; /* in the file, from 1 */
	struct bytes text;
};

struct dialogue {
	char *path;	/* owned */
	struct op *ops; /* owned */
	size_t ops_len;
};

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Undoes the escapes of a C line into out; -1 on a bad escape. */
static int
unescape(const char *p, size_t len, struct bytes *out)
{
	for (size_t i = 0; i < len; i++) {
		char c = p[i];

		if (c == '\\') {
			if (++i == len)
				return -1;
			switch (p[i]) {
			case 'r':
				c = '\r';
				break;
			case 'n':
				c = '\n';
				break;
			case 't':
				c = '\t';
				break;
			case '\\':
				c = '\\';
				break;
			case 'x':
				if (i + 2 >= len || hex_digit(p[i + 1]) < 0 ||
				    hex_digit(p[i + 2]) < 0)
					return -1;
				c = (char)(hex_digit(p[i + 1]) * 16 + hex_digit(p[i + 2]));
				i += 2;
				break;
			default:
				return -1;
			}
		}
		bytes_add(out, &c, 1);
	}
	return 0;
}

static struct op *
add_op(struct dialogue *d, enum op_kind kind, size_t line)
{
	struct op *op;

	d->ops = xrealloc(d->ops, (d->ops_len + 1) * sizeof(*d->ops));
	op = &d->ops[d->ops_len++];
	*op = (struct op){.kind = kind, .line = line};
	return op;
}

/* Parses one line of a dialogue; false (with *why set) when it is not in the format. */
static bool
parse_line(struct dialogue *d, const char *p, size_t len, size_t line, const char **why)
{
	struct op *op;

	if (len == 0 || p[0] == '#')
		return true;
	if (len >= 2 && (memcmp(p, "C:", 2) == 0 || memcmp(p, "C+", 2) == 0)) {
		bool crlf = p[1] == ':';

		if (len > 2 && p[2] != ' ') {
			*why = "a space must follow C: or C+";
			return false;
		}
		op = add_op(d, OP_SEND, line);
		bytes_add(&op->text, "", 0); /* allocated even when empty */
		if (len > 3 && unescape(p + 3, len - 3, &op->text) != 0) {
			*why = "bad escape";
			return false;
		}
		if (crlf)
			bytes_add(&op->text, "\r\n", 2);
		return true;
	}
	if (len >= 3 && memcmp(p, "S: ", 3) == 0) {
		op = add_op(d, OP_EXPECT, line);
		bytes_add(&op->text, p + 3, len - 3);
		return true;
	}
	*why = "expected \"C: \", \"C+ \", \"S: \" or \"# \"";
	return false;
}

static void
dialogue_free(struct dialogue *d)
{
	for (size_t i = 0; i < d->ops_len; i++)
		free(d->ops[i].text.p);
	free(d->ops);
	free(d->path);
}

static void
dialogue_load(struct dialogue *d, const char *path)
{
	FILE *f = fopen(path, "rb");
	char *data = xmalloc(FILE_MAX + 1);
	size_t len, start = 0, line = 0;
	const char *why = NULL;

	*d = (struct dialogue){.path = xstrdup(path)};
	if (f == NULL)
		fail_msg("%s: cannot open", path);
	len = fread(data, 1, FILE_MAX + 1, f);
	fclose(f);
	if (len > FILE_MAX)
		fail_msg("%s: over %d octets", path, FILE_MAX);
	while (start < len) {
		const char *lf = memchr(data + start, '\n', len - start);
		size_t end = lf != NULL ? (size_t)(lf - data) : len;
		size_t n = end - start;

		line++;
		if (n > 0 && data[start + n - 1] == '\r')
			n--;
		if (!parse_line(d, data + start, n, line, &why))
			fail_msg("%s:%zu: %s", path, line, why);
		start = end + 1;
	}
	free(data);
	for (size_t i = 0; i < d->ops_len; i++)
		if (d->ops[i].kind == OP_EXPECT)
			return;
	fail_msg("%s: no S: line", path);
}

/* ---- the glue ---------------------------------------------------------- */

enum feed_mode { FEED_ALL, FEED_LINES, FEED_BYTES };

static const char *const mode_names[] = {
    [FEED_ALL] = "all at once",
    [FEED_LINES] = "line by line",
    [FEED_BYTES] = "byte by byte",
};

struct glue {
	const struct dialogue *d;
	enum feed_mode mode;
	struct smtp_session *s;
	struct bytes pending; /* unread client bytes, from pending_off */
	size_t pending_off;
	struct bytes replies; /* reply lines, each ended by '\n'; read from replies_off */
	size_t replies_off;
	bool closed;
};

/* Where a failure is reported: "file:line (mode)". */
#define WHERE(g, line) (g)->d->path, (line), mode_names[(g)->mode]

static void
collect_output(struct glue *g, size_t line)
{
	struct buf *out = smtp_session_output(g->s);
	size_t i = 0;

	while (i < out->len) {
		const char *p = out->data + i;
		const char *crlf = memmem(p, out->len - i, "\r\n", 2);
		size_t n;

		if (crlf == NULL)
			fail_msg("%s:%zu (%s): reply without CRLF", WHERE(g, line));
		n = (size_t)(crlf - p);
		if (memchr(p, '\n', n) != NULL)
			fail_msg("%s:%zu (%s): bare LF in a reply", WHERE(g, line));
		bytes_add(&g->replies, p, n);
		bytes_add(&g->replies, "\n", 1);
		i += n + 2;
	}
	buf_reset(out);
}

static void
handle_event(struct glue *g, enum smtp_event ev, size_t line)
{
	const char *data;
	size_t len;

	switch (ev) {
	case SMTP_EVENT_NONE:
	case SMTP_EVENT_MESSAGE_BEGIN:
	case SMTP_EVENT_MESSAGE_ABORT:
		break;
	case SMTP_EVENT_BODY:
		smtp_session_body_take(g->s, &data, &len);
		break;
	case SMTP_EVENT_MESSAGE_END:
		smtp_session_body_take(g->s, &data, &len);
		smtp_session_commit_done(g->s, SMTP_COMMIT_OK, "TESTID");
		break;
	case SMTP_EVENT_STARTTLS:
		g->pending.len = g->pending_off = 0;
		smtp_session_tls_started(g->s);
		break;
	case SMTP_EVENT_AUTH: {
		/* The glue checks the password; here one user and password exist. */
		const char *user, *password;
		smtp_session_auth_take(g->s, &user, &password);
		smtp_session_auth_done(g->s, strcmp(user, "alice@example.test") == 0 &&
						 strcmp(password, "secret") == 0);
		break;
	}
	case SMTP_EVENT_CLOSE:
		g->closed = true;
		g->pending.len = g->pending_off = 0;
		break;
	}
	collect_output(g, line);
}

/* As server_conn.c does: feed while unread input is pending, act on each event. */
static void
glue_input(struct glue *g, const char *p, size_t n, size_t line)
{
	if (g->closed)
		return;
	if (g->pending_off > 0) {
		memmove(g->pending.p, g->pending.p + g->pending_off,
			g->pending.len - g->pending_off);
		g->pending.len -= g->pending_off;
		g->pending_off = 0;
	}
	bytes_add(&g->pending, p, n);
	/* As the session asks: after an event, feed again even with no input left. */
	for (enum smtp_event last = SMTP_EVENT_NONE;
	     !g->closed && (g->pending_off < g->pending.len || last != SMTP_EVENT_NONE);) {
		size_t left = g->pending.len - g->pending_off;
		enum smtp_event ev = SMTP_EVENT_NONE;
		size_t used = smtp_session_feed(g->s, g->pending.p + g->pending_off, left, &ev);

		if (used > left)
			fail_msg("%s:%zu (%s): feed used %zu of %zu", WHERE(g, line), used, left);
		g->pending_off += used;
		collect_output(g, line);
		handle_event(g, ev, line);
		last = ev;
		if (used == 0 && ev == SMTP_EVENT_NONE)
			break;
	}
}

static void
glue_send(struct glue *g, const struct bytes *b, size_t line)
{
	size_t i = 0;

	switch (g->mode) {
	case FEED_ALL:
		glue_input(g, b->p, b->len, line);
		break;
	case FEED_LINES:
		while (i < b->len) {
			const char *lf = memchr(b->p + i, '\n', b->len - i);
			size_t k = lf != NULL ? (size_t)(lf - (b->p + i)) + 1 : b->len - i;

			glue_input(g, b->p + i, k, line);
			i += k;
		}
		break;
	case FEED_BYTES:
		for (i = 0; i < b->len; i++)
			glue_input(g, b->p + i, 1, line);
		break;
	}
}

/* The next unmatched reply line (NUL-terminated in place), or NULL. */
static const char *
next_reply(struct glue *g)
{
	char *p, *lf;

	if (g->replies_off >= g->replies.len)
		return NULL;
	p = g->replies.p + g->replies_off;
	lf = strchr(p, '\n');
	*lf = '\0';
	g->replies_off += (size_t)(lf - p) + 1;
	return p;
}

static void
replay(const struct dialogue *d, enum feed_mode mode)
{
	struct smtp_session_conf cfg = {
	    .hostname = "mx.petrel.test",
	    .max_message_size = 512,
	    .max_recipients = 3,
	};
	struct smtp_policy policy = {.ctx = NULL, .check_rcpt = check_rcpt};
	struct glue g = {.d = d, .mode = mode};
	struct bytes group = {0}; /* client bytes not sent yet */
	size_t group_line = 0;
	const char *got;

	g.s = smtp_session_new(&cfg, &policy);
	collect_output(&g, 0);
	for (size_t i = 0; i < d->ops_len; i++) {
		const struct op *op = &d->ops[i];

		if (op->kind == OP_SEND) {
			got = next_reply(&g);
			if (got != NULL)
				fail_msg("%s:%zu (%s): unexpected reply \"%s\" before this client "
					 "line",
					 WHERE(&g, op->line), got);
			if (group.len == 0)
				group_line = op->line;
			bytes_add(&group, op->text.p, op->text.len);
			continue;
		}
		if (group.len > 0) {
			glue_send(&g, &group, group_line);
			group.len = 0;
		}
		got = next_reply(&g);
		if (got == NULL)
			fail_msg("%s:%zu (%s): expected \"%s\", got no reply", WHERE(&g, op->line),
				 op->text.p);
		if (strcmp(got, op->text.p) != 0)
			fail_msg("%s:%zu (%s): expected \"%s\", got \"%s\"", WHERE(&g, op->line),
				 op->text.p, got);
	}
	if (group.len > 0)
		glue_send(&g, &group, group_line);
	got = next_reply(&g);
	if (got != NULL)
		fail_msg("%s: end (%s): unexpected reply \"%s\"", d->path, mode_names[mode], got);
	free(group.p);
	free(g.pending.p);
	free(g.replies.p);
	smtp_session_free(g.s);
}

static void
test_dialogue(void **state)
{
	struct dialogue d;

	dialogue_load(&d, *state);
	replay(&d, FEED_ALL);
	replay(&d, FEED_LINES);
	replay(&d, FEED_BYTES);
	dialogue_free(&d);
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int
main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : DEFAULT_DIR;
	DIR *dp = opendir(dir);
	struct dirent *de;
	char **paths = NULL;
	struct CMUnitTest *tests;
	size_t n = 0;
	int rc;

	if (dp == NULL) {
		fprintf(stderr, "test_dialogues: cannot open %s\n", dir);
		return 1;
	}
	while ((de = readdir(dp)) != NULL) {
		size_t len = strlen(de->d_name);
		char *path;

		if (len < 5 || de->d_name[0] == '.' || strcmp(de->d_name + len - 4, ".txt") != 0)
			continue;
		path = xmalloc(strlen(dir) + len + 2);
		memcpy(path, dir, strlen(dir));
		path[strlen(dir)] = '/';
		memcpy(path + strlen(dir) + 1, de->d_name, len + 1);
		paths = xrealloc(paths, (n + 1) * sizeof(*paths));
		paths[n++] = path;
	}
	closedir(dp);
	if (n == 0) {
		fprintf(stderr, "test_dialogues: no *.txt dialogue in %s\n", dir);
		return 1;
	}
	qsort(paths, n, sizeof(*paths), name_cmp);
	tests = xcalloc(n, sizeof(*tests));
	for (size_t i = 0; i < n; i++)
		tests[i] = (struct CMUnitTest){
		    .name = paths[i], .test_func = test_dialogue, .initial_state = paths[i]};
	rc = _cmocka_run_group_tests("dialogues", tests, n, NULL, NULL);
	for (size_t i = 0; i < n; i++)
		free(paths[i]);
	free(paths);
	free(tests);
	return rc;
}
