/*
 * cli_queue — `petrel queue list|show|flush|delete` (and `mailq`): the
 * mailq / postcat / postqueue -f / postsuper -d of petrel.
 *
 * It reads the spool the server writes (queue_file.h) without locking:
 * a message may be delivered and removed between the directory listing
 * and the open, and is then silently skipped.  flush only asks the server
 * (SIGUSR1); delete unlinks the files, and a server that schedules a
 * deleted message finds it gone and forgets it.
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
#include "smtp/smtp_parse.h"
#include "util/util_log.h"
#include "util/util_mem.h"
#include "util/util_time.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* The two directories a message can be in, in the order they are shown. */
enum where { WHERE_QUEUE, WHERE_INCOMING };
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
	m->fd = openat(sp->fds[w], id, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (m->fd < 0) {
		if (errno == ENOENT)
			return 1;
		fprintf(stderr, "petrel queue: %s/%s: %s\n", where_dir[w], id, strerror(errno));
		return -1;
	}
	if (queue_file_read(m->fd, &m->env, err, sizeof(err)) != 0) {
		fprintf(stderr, "petrel queue: %s/%s: %s\n", where_dir[w], id, err);
		close(m->fd);
		m->fd = -1;
		return -1;
	}
	if (fstat(m->fd, &sb) == 0 && sb.st_size > m->env.body_off)
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
	return m->st.attempts > 0 ? "deferred" : "queued";
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

static int
cmd_list(struct spool *sp, int argc, char **argv, bool json)
{
	uint64_t total = 0;
	size_t count = 0;
	int status = 0;

	if (json)
		putchar('[');
	for (size_t w = 0; w < WHERE_COUNT; w++) {
		size_t n;
		char(*ids)[UTIL_ID_LEN + 1] = list_ids(sp->fds[w], &n);

		for (size_t i = 0; i < n; i++) {
			struct msg m;
			int rc = msg_load(sp, (enum where)w, ids[i], &m);

			if (rc < 0)
				status = 1;
			if (rc != 0)
				continue;
			if (json)
				print_json(&m, count == 0);
			else
				print_text(&m, count == 0);
			total += m.size;
			count++;
			msg_free(&m);
		}
		free(ids);
	}
	if (json)
		fputs(count ? "\n]\n" : "]\n", stdout);
	else if (count == 0)
		printf("Mail queue is empty\n");
	else
		printf("-- %llu Kbytes in %zu Request%s.\n",
		       (unsigned long long)(total + 1023) / 1024, count, count == 1 ? "" : "s");
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

/* Finds id in queue/ or incoming/; 0, 1 (no such message) or -1. */
static int
find_msg(const struct spool *sp, const char *arg, struct msg *m)
{
	char id[UTIL_ID_LEN + 1];

	if (!parse_id(arg, id))
		return 1;
	for (size_t w = 0; w < WHERE_COUNT; w++) {
		int rc = msg_load(sp, (enum where)w, id, m);
		if (rc != 1)
			return rc;
	}
	return 1;
}

static void
print_envelope(const struct msg *m)
{
	char date[64];

	util_rfc5322_date(m->env.arrival, date, sizeof(date));
	printf("*** ENVELOPE RECORDS %s ***\n", m->id);
	printf("id: %s\nstatus: %s\n", m->id, msg_status(m));
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

static size_t
delete_all(const struct spool *sp)
{
	size_t deleted = 0;

	for (size_t w = 0; w < WHERE_COUNT; w++) {
		size_t n;
		char(*ids)[UTIL_ID_LEN + 1] = list_ids(sp->fds[w], &n);

		for (size_t i = 0; i < n; i++)
			deleted += unlink_msg(sp, (enum where)w, ids[i]) ? 1 : 0;
		free(ids);
	}
	return deleted;
}

static int
cmd_delete(struct spool *sp, int argc, char **argv, bool json)
{
	size_t deleted = 0;
	int status = 0;

	for (int i = 0; i < argc; i++) {
		char id[UTIL_ID_LEN + 1];
		bool found = false;

		if (strcmp(argv[i], "ALL") == 0) {
			deleted += delete_all(sp);
			continue;
		}
		if (parse_id(argv[i], id)) {
			for (size_t w = 0; w < WHERE_COUNT && !found; w++)
				found = unlink_msg(sp, (enum where)w, id);
		}
		if (found) {
			deleted++;
		} else {
			fprintf(stderr, "petrel queue delete: %s: no such message\n", argv[i]);
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
