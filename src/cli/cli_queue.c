/*
 * cli_queue — `petrel queue list|show|flush|delete` (and `mailq`): the
 * mailq / postcat / postqueue -f / postsuper -d of petrel.
 *
 * It reads the spool the server writes (queue_file.h) without locking:
 * a message may be delivered and removed between the directory listing
 * and the open, and is then silently skipped.  flush only asks the server
 * (SIGUSR1); delete unlinks the files, and a server that schedules a
 * deleted message finds it gone and forgets it.
 *
 * A small message is acknowledged in the spool journal (queue_journal.h)
 * and delivered from the server's memory: until its delivery ends it has
 * no queue file, only a record in a journal segment.  list and show read
 * those too (records as queue_jrec.h, payloads as queue_file.h), showing
 * every message with a record and no "finished" mark as in delivery;
 * delete cannot take such a message from the server and says so.  The
 * segments are read while the server appends to and removes them: one that
 * is gone is skipped, a record being written at the end is not whole yet
 * and ends the scan (jrec_scan).
 */
#include "cli/cli.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf/conf.h"
#include "queue/queue_file.h"
#include "queue/queue_journal.h"
#include "queue/queue_jrec.h"
#include "smtp/smtp_parse.h"
#include "util/util_log.h"
#include "util/util_mem.h"
#include "util/util_time.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Where a message is: the two directories of message files (the first
 * WHERE_COUNT), or a record in the journal, in delivery.
 */
enum where { WHERE_QUEUE, WHERE_INCOMING, WHERE_JOURNAL };
#define WHERE_COUNT 2

static const char *const where_dir[WHERE_COUNT] = {
    [WHERE_QUEUE] = "queue",
    [WHERE_INCOMING] = "incoming",
};

struct spool {
	const char *dir;
	int fds[WHERE_COUNT]; /* -1 when the directory does not exist (yet) */
};

/* One message as the commands see it; everything owned. */
struct msg {
	char id[UTIL_ID_LEN + 1];
	enum where where;
	int fd;
	struct queue_file_env env;
	struct queue_file_status st;
	uint64_t size; /* octets of the message itself */
	char *image;   /* WHERE_JOURNAL, for show: the queue-file image (env.body_off into it) */
};

struct queue_cmd {
	const char *name;
	int (*run)(struct spool *sp, int argc, char **argv, bool json);
	int min_args, max_args; /* after the subcommand; max -1: any */
};

static int
spool_open(struct spool *sp, const char *dir)
{
	sp->dir = dir;
	for (size_t i = 0; i < WHERE_COUNT; i++) {
		char path[4096];

		snprintf(path, sizeof(path), "%s/%s", dir, where_dir[i]);
		sp->fds[i] = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		if (sp->fds[i] < 0 && errno != ENOENT) {
			fprintf(stderr, "petrel queue: %s: %s\n", path, strerror(errno));
			return -1;
		}
	}
	return 0;
}

static void
spool_close(struct spool *sp)
{
	for (size_t i = 0; i < WHERE_COUNT; i++) {
		if (sp->fds[i] >= 0)
			close(sp->fds[i]);
	}
}

static void
msg_free(struct msg *m)
{
	if (m->fd >= 0)
		close(m->fd);
	queue_file_env_free(&m->env);
	queue_file_status_free(&m->st);
	free(m->image);
	m->image = NULL;
	m->fd = -1;
}

/*
 * Reads the envelope and progress of id in dir w.  0; 1 when it is not
 * there (never was, or delivered meanwhile); -1 after a warning.
 */
static int
msg_load(const struct spool *sp, enum where w, const char *id, struct msg *m)
{
	struct stat sb;
	char err[256];

	memset(m, 0, sizeof(*m));
	m->fd = -1;
	if (sp->fds[w] < 0)
		return 1;
	/* Non-blocking: incoming/ takes files from any local user, a FIFO among them. */
	m->fd = openat(sp->fds[w], id, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (m->fd < 0) {
		if (errno == ENOENT)
			return 1;
		fprintf(stderr, "petrel queue: %s/%s: %s\n", where_dir[w], id, strerror(errno));
		return -1;
	}
	if (fstat(m->fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
		fprintf(stderr, "petrel queue: %s/%s: not a regular file\n", where_dir[w], id);
		close(m->fd);
		m->fd = -1;
		return -1;
	}
	if (queue_file_read(m->fd, &m->env, err, sizeof(err)) != 0) {
		fprintf(stderr, "petrel queue: %s/%s: %s\n", where_dir[w], id, err);
		close(m->fd);
		m->fd = -1;
		return -1;
	}
	if (sb.st_size > m->env.body_off)
		m->size = (uint64_t)(sb.st_size - m->env.body_off);
	/* incoming/ holds no progress files: the status comes out empty. */
	if (queue_file_status_read(sp->fds[w], id, m->env.rcpts_len, &m->st) != 0)
		fprintf(stderr, "petrel queue: %s.st: %s\n", id, strerror(errno));
	memcpy(m->id, id, sizeof(m->id));
	m->where = w;
	return 0;
}

static int
cmp_id(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

/* The message ids in one directory, sorted (ids sort by arrival). */
static char (*list_ids(int dirfd, size_t *len))[UTIL_ID_LEN + 1]
{
	char(*ids)[UTIL_ID_LEN + 1] = NULL;
	size_t cap = 0;
	struct dirent *de;
	DIR *d;

	*len = 0;
	if (dirfd < 0)
		return NULL;
	d = fdopendir(dup(dirfd));
	/* A dup shares the offset of dirfd: start from the top whatever read it before. */
	if (d != NULL)
		rewinddir(d);
	while (d != NULL && (de = readdir(d)) != NULL) {
		/* Progress files, ".ID" drop-offs being written and strangers are not messages. */
		if (!util_id_valid(de->d_name))
			continue;
		if (*len == cap) {
			cap = cap ? cap * 2 : 64;
			ids = xrealloc(ids, cap * sizeof(*ids));
		}
		memcpy(ids[(*len)++], de->d_name, UTIL_ID_LEN + 1);
	}
	if (d != NULL)
		closedir(d);
	if (*len > 0)
		qsort(ids, *len, sizeof(*ids), cmp_id);
	return ids;
}

static const char *
msg_status(const struct msg *m)
{
	if (m->where == WHERE_INCOMING)
		return "incoming";
	if (m->where == WHERE_JOURNAL)
		return "delivering";
	return m->st.attempts > 0 ? "deferred" : "queued";
}

static bool
id_listed(char (*ids)[UTIL_ID_LEN + 1], size_t n, const char *id)
{
	return n > 0 && bsearch(id, ids, n, sizeof(*ids), cmp_id) != NULL;
}

/* ---- the journal ------------------------------------------------------------------ */

#define SEG_NAME_LEN JOURNAL_SEG_NAME_LEN

/* The messages of the journal without a "finished" mark. */
struct jscan {
	const char *want; /* only this id (show, delete), or NULL: all */
	const char *seg;  /* the segment being read, for warnings */
	struct jrec_ids done;
	size_t done_sorted; /* done[0..done_sorted) is sorted */
	struct msg *msgs;
	size_t msgs_len, msgs_cap;
	int status; /* 1 after a warning */
};

static bool
jscan_is_done(const struct jscan *s, const char *id)
{
	return id_listed(s->done.v, s->done_sorted, id);
}

static bool
jscan_msg(void *arg, const struct jrec *r)
{
	struct jscan *s = arg;
	struct msg *m;
	char err[256];

	if (r->type != JREC_MSG || (s->want != NULL && strcmp(r->id, s->want) != 0) ||
	    jscan_is_done(s, r->id))
		return true;
	if (s->msgs_len == s->msgs_cap) {
		s->msgs_cap = s->msgs_cap ? 2 * s->msgs_cap : 16;
		s->msgs = xrealloc(s->msgs, s->msgs_cap * sizeof(*s->msgs));
	}
	m = &s->msgs[s->msgs_len];
	memset(m, 0, sizeof(*m));
	m->fd = -1;
	if (queue_file_parse(r->payload, r->len, &m->env, err, sizeof(err)) != 0) {
		fprintf(stderr, "petrel queue: journal/%s: %s: %s\n", s->seg, r->id, err);
		s->status = 1;
		return true;
	}
	if (strcmp(m->env.id, r->id) != 0) {
		fprintf(stderr, "petrel queue: journal/%s: %s: holds message %s\n", s->seg, r->id,
			m->env.id);
		queue_file_env_free(&m->env);
		s->status = 1;
		return true;
	}
	memcpy(m->id, r->id, sizeof(m->id));
	m->where = WHERE_JOURNAL;
	m->size = (uint64_t)r->len - (uint64_t)m->env.body_off;
	if (s->want != NULL) {
		m->image = xmalloc(r->len + 1);
		memcpy(m->image, r->payload, r->len);
	}
	s->msgs_len++;
	return true;
}

/*
 * Reads segment name under dirfd (journal_seg_read); NULL when it is gone,
 * is no file, or cannot be read (after a warning, s->status set).  What the
 * server appends meanwhile is not read, or read in part: jrec_scan stops
 * before a record that is not whole.
 */
static char *
seg_read(int dirfd, const char *name, size_t *len, struct jscan *s)
{
	char *buf = journal_seg_read(dirfd, name, len);

	/* Gone: every message in it was finished.  Anything else hides messages: said so. */
	if (buf == NULL && errno != ENOENT) {
		fprintf(stderr, "petrel queue: journal/%s: %s\n", name, strerror(errno));
		s->status = 1;
	}
	return buf;
}

static int
cmp_msg_id(const void *a, const void *b)
{
	return strcmp(((const struct msg *)a)->id, ((const struct msg *)b)->id);
}

/*
 * The journal's messages in delivery (want: only that one), by id, into s:
 * every message record whose id has no "finished" mark in any segment.  As
 * the server's recovery (journal_recover): each segment is scanned for its
 * marks first, then for its messages.  0, or -1 when spool/journal cannot
 * be read at all (after a warning); a journal not there is empty.
 */
static int
journal_scan(const struct spool *sp, const char *want, struct jscan *s)
{
	char path[4096];
	char(*names)[SEG_NAME_LEN] = NULL;
	size_t names_len = 0, names_cap = 0, kept = 0;
	struct dirent *de;
	DIR *d;
	int dirfd;

	memset(s, 0, sizeof(*s));
	s->want = want;
	snprintf(path, sizeof(path), "%s/journal", sp->dir);
	dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dirfd < 0) {
		if (errno == ENOENT)
			return 0;
		fprintf(stderr, "petrel queue: %s: %s\n", path, strerror(errno));
		s->status = 1;
		return -1;
	}
	d = fdopendir(dup(dirfd));
	while (d != NULL && (de = readdir(d)) != NULL) {
		uint64_t seq;

		if (!journal_seg_name(de->d_name, &seq))
			continue;
		if (names_len == names_cap) {
			names_cap = names_cap ? 2 * names_cap : 16;
			names = xrealloc(names, names_cap * sizeof(*names));
		}
		memcpy(names[names_len++], de->d_name, SEG_NAME_LEN);
	}
	if (d != NULL)
		closedir(d);
	/* Oldest first (fixed width: the names sort as their numbers). */
	if (names_len > 1)
		qsort(names, names_len, sizeof(*names), cmp_id);
	for (size_t i = 0; i < names_len; i++) {
		size_t len = 0;
		char *buf = seg_read(dirfd, names[i], &len, s);

		if (buf == NULL)
			continue;
		s->seg = names[i];
		jrec_scan(buf, len, jrec_collect_done, &s->done);
		if (s->done.len > 1)
			qsort(s->done.v, s->done.len, sizeof(*s->done.v), cmp_id);
		s->done_sorted = s->done.len;
		jrec_scan(buf, len, jscan_msg, s);
		free(buf);
	}
	s->seg = NULL;
	free(names);
	close(dirfd);
	/* Marked in a later segment, or in two records: out. */
	if (s->msgs_len > 1)
		qsort(s->msgs, s->msgs_len, sizeof(*s->msgs), cmp_msg_id);
	for (size_t i = 0; i < s->msgs_len; i++) {
		struct msg *m = &s->msgs[i];

		if (jscan_is_done(s, m->id) ||
		    (kept > 0 && strcmp(s->msgs[kept - 1].id, m->id) == 0)) {
			msg_free(m);
			continue;
		}
		s->msgs[kept++] = *m;
	}
	s->msgs_len = kept;
	return 0;
}

static void
jscan_free(struct jscan *s)
{
	for (size_t i = 0; i < s->msgs_len; i++)
		msg_free(&s->msgs[i]);
	free(s->msgs);
	free(s->done.v);
	memset(s, 0, sizeof(*s));
}

/*
 * Completes a message from the journal: its progress, which the server
 * writes to queue/ID.st before queue/ID when it queues the message (and
 * keeps there when it cannot write queue/ID).  Empty when there is none.
 */
static void
jmsg_status(const struct spool *sp, struct msg *m)
{
	if (sp->fds[WHERE_QUEUE] < 0 ||
	    queue_file_status_read(sp->fds[WHERE_QUEUE], m->id, m->env.rcpts_len, &m->st) != 0) {
		queue_file_status_free(&m->st);
		memset(&m->st, 0, sizeof(m->st));
		m->st.done = xcalloc(m->env.rcpts_len, sizeof(bool));
		m->st.failed = xcalloc(m->env.rcpts_len, sizeof(bool));
	}
}

/* ---- list ------------------------------------------------------------------------ */

/* A JSON string (RFC 8259): quotes, backslashes and controls escaped; bad UTF-8 as U+00XX. */
static void
json_str(FILE *f, const char *s)
{
	bool utf8 = smtp_utf8_valid(s, strlen(s));

	fputc('"', f);
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c == '\r')
			fputs("\\r", f);
		else if (c == '\t')
			fputs("\\t", f);
		else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8))
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void
print_json(const struct msg *m, bool first)
{
	fputs(first ? "\n  {" : ",\n  {", stdout);
	fputs("\"id\": ", stdout);
	json_str(stdout, m->id);
	printf(", \"status\": \"%s\", \"size\": %llu, \"arrival\": %lld, \"sender\": ",
	       msg_status(m), (unsigned long long)m->size, (long long)m->env.arrival);
	json_str(stdout, m->env.sender);
	fputs(", \"recipients\": [", stdout);
	for (size_t i = 0; i < m->env.rcpts_len; i++) {
		fputs(i ? ", {\"address\": " : "{\"address\": ", stdout);
		json_str(stdout, m->env.rcpts[i]);
		fputs(", \"original\": ", stdout);
		json_str(stdout, m->env.orcpts[i]);
		printf(", \"done\": %s, \"failed\": %s}", m->st.done[i] ? "true" : "false",
		       m->st.failed[i] ? "true" : "false");
	}
	printf("], \"attempts\": %u, \"last_error\": ", m->st.attempts);
	if (m->st.error[0] != '\0')
		json_str(stdout, m->st.error);
	else
		fputs("null", stdout);
	fputc('}', stdout);
}

#define LIST_INDENT 48 /* where the sender column starts */

/* One mailq entry: id, size, arrival, sender; then the error and the recipients left. */
static void
print_text(const struct msg *m, bool first)
{
	char date[32], esc[600];
	struct tm tm;

	if (first)
		printf("%-16s %8s %-20s  %s\n", "-Queue ID-------", "--Size--",
		       "----Arrival Time----", "-Sender/Recipient-------");
	localtime_r(&m->env.arrival, &tm);
	strftime(date, sizeof(date), "%a %b %e %H:%M:%S", &tm);
	printf("%-16s %8llu %-20.20s  %s\n", m->id, (unsigned long long)m->size, date,
	       m->env.sender[0] ? m->env.sender : "MAILER-DAEMON");
	if (m->where == WHERE_INCOMING)
		printf("%*s(waiting in incoming/ for the server to pick it up)\n", LIST_INDENT, "");
	else if (m->where == WHERE_JOURNAL)
		printf("%*s(in delivery, held in the spool journal)\n", LIST_INDENT, "");
	/* The error is a remote server's text: no terminal control sequences from it. */
	if (m->st.error[0] != '\0')
		printf("%*s(%s)\n", LIST_INDENT, "",
		       util_log_escape(esc, sizeof(esc), m->st.error, strlen(m->st.error)));
	for (size_t i = 0; i < m->env.rcpts_len; i++) {
		if (!m->st.done[i])
			printf("%*s%s\n", LIST_INDENT, "", m->env.rcpts[i]);
	}
	putchar('\n');
}

static void
print_msg(const struct msg *m, bool json, size_t *count, uint64_t *total)
{
	if (json)
		print_json(m, *count == 0);
	else
		print_text(m, *count == 0);
	*total += m->size;
	(*count)++;
}

/*
 * queue/, then the messages in delivery from the journal, then incoming/.
 * The journal is read first: a message the server queues meanwhile (queue/ID,
 * then its mark) is then found in one place or the other, and one found in
 * both is shown once, from queue/.
 */
static int
cmd_list(struct spool *sp, int argc, char **argv, bool json)
{
	char(*ids[WHERE_COUNT])[UTIL_ID_LEN + 1];
	size_t n[WHERE_COUNT];
	struct jscan js;
	uint64_t total = 0;
	size_t count = 0;
	int status = 0;

	journal_scan(sp, NULL, &js);
	for (size_t w = 0; w < WHERE_COUNT; w++)
		ids[w] = list_ids(sp->fds[w], &n[w]);
	if (json)
		putchar('[');
	for (size_t w = 0; w < WHERE_COUNT; w++) {
		for (size_t i = 0; i < n[w]; i++) {
			struct msg m;
			int rc = msg_load(sp, (enum where)w, ids[w][i], &m);

			if (rc < 0)
				status = 1;
			if (rc != 0)
				continue;
			print_msg(&m, json, &count, &total);
			msg_free(&m);
		}
		if (w != WHERE_QUEUE)
			continue;
		for (size_t i = 0; i < js.msgs_len; i++) {
			struct msg *m = &js.msgs[i];

			if (id_listed(ids[WHERE_QUEUE], n[WHERE_QUEUE], m->id) ||
			    id_listed(ids[WHERE_INCOMING], n[WHERE_INCOMING], m->id))
				continue;
			jmsg_status(sp, m);
			print_msg(m, json, &count, &total);
		}
	}
	if (json)
		fputs(count ? "\n]\n" : "]\n", stdout);
	else if (count == 0)
		printf("Mail queue is empty\n");
	else
		printf("-- %llu Kbytes in %zu Request%s.\n",
		       (unsigned long long)(total + 1023) / 1024, count, count == 1 ? "" : "s");
	for (size_t w = 0; w < WHERE_COUNT; w++)
		free(ids[w]);
	if (js.status != 0)
		status = 1;
	jscan_free(&js);
	return status;
}

/* ---- show ------------------------------------------------------------------------ */

/* Upper-cases a queue id given on the command line; false when it is not one. */
static bool
parse_id(const char *arg, char id[UTIL_ID_LEN + 1])
{
	size_t len = strlen(arg);

	if (len != UTIL_ID_LEN)
		return false;
	for (size_t i = 0; i < len; i++)
		id[i] = (char)toupper((unsigned char)arg[i]);
	id[len] = '\0';
	return util_id_valid(id);
}

/*
 * Whether message id is in delivery from the journal (and not queued
 * meanwhile); m, when given, gets it (the caller frees it).  -1 when the
 * journal cannot be read.
 */
static int
journal_find(const struct spool *sp, const char *id, struct msg *m)
{
	struct jscan js;
	int rc;

	if (journal_scan(sp, id, &js) != 0) {
		jscan_free(&js);
		return -1;
	}
	rc = js.msgs_len > 0 ? 0 : 1;
	if (rc == 0 && sp->fds[WHERE_QUEUE] >= 0 &&
	    faccessat(sp->fds[WHERE_QUEUE], id, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		rc = 1; /* queued since: queue/ has it */
	if (rc == 0 && m != NULL) {
		*m = js.msgs[0];
		js.msgs_len = 0;
		jmsg_status(sp, m);
	}
	jscan_free(&js);
	return rc;
}

/* Finds id in queue/, incoming/ or the journal; 0, 1 (no such message) or -1. */
static int
find_msg(const struct spool *sp, const char *arg, struct msg *m)
{
	char id[UTIL_ID_LEN + 1];
	int rc;

	if (!parse_id(arg, id))
		return 1;
	for (size_t w = 0; w < WHERE_COUNT; w++) {
		rc = msg_load(sp, (enum where)w, id, m);
		if (rc != 1)
			return rc;
	}
	rc = journal_find(sp, id, m);
	if (rc != 1)
		return rc;
	/* Queued while the journal was read. */
	return msg_load(sp, WHERE_QUEUE, id, m);
}

static void
print_envelope(const struct msg *m)
{
	char date[64];

	util_rfc5322_date(m->env.arrival, date, sizeof(date));
	printf("*** ENVELOPE RECORDS %s ***\n", m->id);
	printf("id: %s\nstatus: %s%s\n", m->id, msg_status(m),
	       m->where == WHERE_JOURNAL ? " (held in the spool journal)" : "");
	printf("arrival: %s (%lld)\n", date, (long long)m->env.arrival);
	printf("size: %llu\n", (unsigned long long)m->size);
	printf("sender: <%s>\n", m->env.sender);
	for (size_t i = 0; i < m->env.rcpts_len; i++) {
		const char *state = m->st.failed[i] ? "failed" : m->st.done[i] ? "done" : "pending";

		printf("recipient: <%s> %s", m->env.rcpts[i], state);
		if (strcmp(m->env.orcpts[i], m->env.rcpts[i]) != 0)
			printf(" (original <%s>)", m->env.orcpts[i]);
		putchar('\n');
	}
	printf("helo: %s\nclient: %s [%s]\nprotocol: %s\n", m->env.helo, m->env.client_name,
	       m->env.client_addr, m->env.protocol);
	printf("body: %s\nsmtputf8: %s\n", m->env.body_8bit ? "8BITMIME" : "7BIT",
	       m->env.smtputf8 ? "yes" : "no");
	printf("attempts: %u\n", m->st.attempts);
	if (m->st.error[0] != '\0') {
		char esc[600];
		printf("last_error: %s\n",
		       util_log_escape(esc, sizeof(esc), m->st.error, strlen(m->st.error)));
	}
	printf("*** MESSAGE CONTENTS %s ***\n", m->id);
}

/* Copies the message part of m's file to stdout as it is stored (CRLF lines). */
static int
print_message(const struct msg *m)
{
	char chunk[64 * 1024];
	off_t off = m->env.body_off;

	if (m->where == WHERE_JOURNAL) {
		if (fwrite(m->image + off, 1, m->size, stdout) != m->size)
			return -1;
		return 0;
	}
	fflush(stdout);
	for (;;) {
		ssize_t n = pread(m->fd, chunk, sizeof(chunk), off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "petrel queue: %s: %s\n", m->id, strerror(errno));
			return -1;
		}
		if (n == 0)
			break;
		if (fwrite(chunk, 1, (size_t)n, stdout) != (size_t)n)
			return -1;
		off += n;
	}
	return 0;
}

static int
cmd_show(struct spool *sp, int argc, char **argv, bool json)
{
	struct msg m;
	int rc, status = 0;

	for (int i = 0; i < argc; i++) {
		rc = find_msg(sp, argv[i], &m);
		if (rc == 1)
			fprintf(stderr, "petrel queue show: %s: no such message\n", argv[i]);
		if (rc != 0) {
			status = 1;
			continue;
		}
		print_envelope(&m);
		if (print_message(&m) != 0)
			status = 1;
		msg_free(&m);
	}
	return status;
}

/* ---- flush ------------------------------------------------------------------------ */

static int
cmd_flush(struct spool *sp, int argc, char **argv, bool json)
{
	char err[512];

	if (cli_server_wake(sp->dir, err, sizeof(err)) != 0) {
		fprintf(stderr, "petrel queue flush: %s\n", err);
		return 1;
	}
	return 0;
}

/* ---- delete ----------------------------------------------------------------------- */

/* Unlinks id (and its progress files) from dir w; true when the message was there. */
static bool
unlink_msg(const struct spool *sp, enum where w, const char *id)
{
	static const char *const suffixes[] = {".st", ".st.new"};
	char name[UTIL_ID_LEN + 16];

	if (sp->fds[w] < 0 || unlinkat(sp->fds[w], id, 0) != 0) {
		if (sp->fds[w] >= 0 && errno != ENOENT)
			fprintf(stderr, "petrel queue delete: %s/%s: %s\n", where_dir[w], id,
				strerror(errno));
		return false;
	}
	/* The message file goes first: a server never sees a message without its progress. */
	for (size_t i = 0; i < ARRAY_LEN(suffixes); i++) {
		snprintf(name, sizeof(name), "%s%s", id, suffixes[i]);
		unlinkat(sp->fds[w], name, 0);
	}
	return true;
}

/*
 * Deletes every message in queue/ and incoming/; *busy: how many the journal
 * has in delivery.  The journal is read first, as for list.
 */
static size_t
delete_all(const struct spool *sp, size_t *busy)
{
	char(*ids[WHERE_COUNT])[UTIL_ID_LEN + 1];
	size_t n[WHERE_COUNT], deleted = 0;
	struct jscan js;

	journal_scan(sp, NULL, &js);
	for (size_t w = 0; w < WHERE_COUNT; w++) {
		ids[w] = list_ids(sp->fds[w], &n[w]);
		for (size_t i = 0; i < n[w]; i++)
			deleted += unlink_msg(sp, (enum where)w, ids[w][i]) ? 1 : 0;
	}
	*busy = 0;
	for (size_t i = 0; i < js.msgs_len; i++) {
		const char *id = js.msgs[i].id;

		if (id_listed(ids[WHERE_QUEUE], n[WHERE_QUEUE], id) ||
		    id_listed(ids[WHERE_INCOMING], n[WHERE_INCOMING], id))
			continue;
		/* Queued since the listing: deleted as well. */
		if (unlink_msg(sp, WHERE_QUEUE, id))
			deleted++;
		else
			(*busy)++;
	}
	for (size_t w = 0; w < WHERE_COUNT; w++)
		free(ids[w]);
	jscan_free(&js);
	return deleted;
}

/*
 * A message in delivery from the journal is in the server's memory: there
 * is nothing to unlink that would stop it (and its record must stay until
 * the delivery ends, or a crash would lose it).  Once queued it can be
 * deleted.
 */
static int
cmd_delete(struct spool *sp, int argc, char **argv, bool json)
{
	size_t deleted = 0;
	int status = 0;

	for (int i = 0; i < argc; i++) {
		char id[UTIL_ID_LEN + 1];
		bool found = false;
		int busy = 1;

		if (strcmp(argv[i], "ALL") == 0) {
			size_t n;

			deleted += delete_all(sp, &n);
			if (n > 0)
				fprintf(
				    stderr,
				    "petrel queue delete: %zu message%s being delivered from the "
				    "spool journal not deleted; try again when queued\n",
				    n, n == 1 ? "" : "s");
			continue;
		}
		if (parse_id(argv[i], id)) {
			for (size_t w = 0; w < WHERE_COUNT && !found; w++)
				found = unlink_msg(sp, (enum where)w, id);
			if (!found) {
				busy = journal_find(sp, id, NULL);
				/* Queued while the journal was read. */
				found = unlink_msg(sp, WHERE_QUEUE, id);
			}
		}
		if (found) {
			deleted++;
		} else if (busy == 0) {
			fprintf(
			    stderr,
			    "petrel queue delete: %s: message is being delivered (from the spool "
			    "journal); try again when it is queued\n",
			    id);
			status = 1;
		} else {
			if (busy == 1)
				fprintf(stderr, "petrel queue delete: %s: no such message\n",
					argv[i]);
			status = 1;
		}
	}
	printf("petrel queue: Deleted: %zu message%s\n", deleted, deleted == 1 ? "" : "s");
	return status;
}

/* ---- dispatch ---------------------------------------------------------------------- */

static const struct queue_cmd queue_cmds[] = {
    {"list", cmd_list, 0, 0},
    {"show", cmd_show, 1, -1},
    {"flush", cmd_flush, 0, 0},
    {"delete", cmd_delete, 1, -1},
};

/* Options may come before or after the subcommand (getopt_long permutes). */
static int
queue_main(int argc, char **argv, const char *sub)
{
	static const struct option longopts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"config", required_argument, NULL, 'c'},
	    {NULL, 0, NULL, 0},
	};
	const struct queue_cmd *cmd = NULL;
	const char *file = NULL;
	bool json = false;
	struct conf *c;
	struct spool sp;
	char err[512];
	int opt, nargs, status;

	while ((opt = getopt_long(argc, argv, "c:j", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			file = optarg;
			break;
		case 'j':
			json = true;
			break;
		default:
			return CLI_USAGE;
		}
	}
	if (sub == NULL) {
		if (optind >= argc)
			return CLI_USAGE;
		sub = argv[optind++];
	}
	for (size_t i = 0; i < ARRAY_LEN(queue_cmds); i++) {
		if (strcmp(sub, queue_cmds[i].name) == 0)
			cmd = &queue_cmds[i];
	}
	nargs = argc - optind;
	if (cmd == NULL || nargs < cmd->min_args || (cmd->max_args >= 0 && nargs > cmd->max_args) ||
	    (json && cmd->run != cmd_list))
		return CLI_USAGE;
	c = cli_conf_load(file, err, sizeof(err));
	if (c == NULL) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (spool_open(&sp, c->spool_dir) != 0) {
		conf_free(c);
		return 1;
	}
	status = cmd->run(&sp, nargs, argv + optind, json);
	if (fflush(stdout) != 0)
		status = 1;
	spool_close(&sp);
	conf_free(c);
	return status;
}

int
cli_queue(int argc, char **argv)
{
	return queue_main(argc, argv, NULL);
}

int
cli_mailq(int argc, char **argv)
{
	return queue_main(argc, argv, "list");
}
