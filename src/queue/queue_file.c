#include "queue/queue_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "util/util_mem.h"

#define HEADER_MAX (64u * 1024 * 1024)

int
queue_file_header(struct buf *out, const char *id, time_t arrival, const struct queue_envelope *env)
{
	int rc = 0;

	rc |= buf_append_str(out, QUEUE_FILE_MAGIC);
	rc |= buf_printf(out, "id %s\narrival %lld\nsender %s\n", id, (long long)arrival,
			 env->sender);
	for (size_t i = 0; i < env->rcpts_len; i++) {
		rc |= buf_printf(out, "rcpt %s\n", env->rcpts[i]);
		if (env->orcpts != NULL && env->orcpts[i] != NULL &&
		    strcmp(env->orcpts[i], env->rcpts[i]) != 0)
			rc |= buf_printf(out, "orcpt %s\n", env->orcpts[i]);
	}
	rc |= buf_printf(out, "helo %s\nclient_addr %s\nclient_name %s\nprotocol %s\n", env->helo,
			 env->client_addr, env->client_name, env->protocol);
	rc |= buf_printf(out, "body %s\nsmtputf8 %d\n", env->body_8bit ? "8BITMIME" : "7BIT",
			 env->smtputf8 ? 1 : 0);
	if (env->expanded)
		rc |= buf_append_str(out, "expanded 1\n");
	rc |= buf_append_str(out, "\n");
	return rc ? -1 : 0;
}

void
queue_rcpt_list_add(struct queue_rcpt_list *l, const char *rcpt, const char *orig)
{
	for (size_t i = 0; i < l->len; i++) {
		if (strcasecmp(l->rcpts[i], rcpt) == 0)
			return; /* one copy per final recipient */
	}
	if (l->len == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 8;
		l->rcpts = xrealloc(l->rcpts, l->cap * sizeof(char *));
		l->orcpts = xrealloc(l->orcpts, l->cap * sizeof(char *));
	}
	l->rcpts[l->len] = xstrdup(rcpt);
	l->orcpts[l->len++] = xstrdup(orig);
}

void
queue_rcpt_list_free(struct queue_rcpt_list *l)
{
	for (size_t i = 0; i < l->len; i++) {
		free(l->rcpts[i]);
		free(l->orcpts[i]);
	}
	free(l->rcpts);
	free(l->orcpts);
	memset(l, 0, sizeof(*l));
}

void
queue_file_env_free(struct queue_file_env *env)
{
	free(env->sender);
	for (size_t i = 0; i < env->rcpts_len; i++) {
		free(env->rcpts[i]);
		free(env->orcpts[i]);
	}
	free(env->rcpts);
	free(env->orcpts);
	free(env->helo);
	free(env->client_addr);
	free(env->client_name);
	free(env->protocol);
	memset(env, 0, sizeof(*env));
}

static bool
key_is(const char *line, size_t key_len, const char *key)
{
	return strlen(key) == key_len && memcmp(line, key, key_len) == 0;
}

int
queue_file_parse(const char *data, size_t len, struct queue_file_env *env, char *err,
		 size_t err_cap)
{
	size_t magic_len = strlen(QUEUE_FILE_MAGIC);
	size_t pos = magic_len;
	size_t rcpts_cap = 0;

	memset(env, 0, sizeof(*env));
	if (len < magic_len || memcmp(data, QUEUE_FILE_MAGIC, magic_len) != 0) {
		snprintf(err, err_cap, "not a petrel queue file");
		return -1;
	}
	for (;;) {
		const char *line = data + pos;
		const char *nl = memchr(line, '\n', len - pos);
		const char *sp;
		size_t line_len, key_len;
		char *value;

		if (nl == NULL) {
			snprintf(err, err_cap, "truncated header");
			goto fail;
		}
		line_len = (size_t)(nl - line);
		pos += line_len + 1;
		if (line_len == 0)
			break;
		sp = memchr(line, ' ', line_len);
		key_len = sp ? (size_t)(sp - line) : line_len;
		value = sp ? xstrndup(sp + 1, line_len - key_len - 1) : xstrdup("");
		if (key_is(line, key_len, "id")) {
			snprintf(env->id, sizeof(env->id), "%s", value);
			free(value);
		} else if (key_is(line, key_len, "arrival")) {
			long long t = strtoll(value, NULL, 10);
			/* Damaged: kept where time arithmetic cannot overflow (now - arrival). */
			env->arrival = t < 0		 ? 0
				       : t > (1LL << 40) ? (time_t)(1LL << 40)
							 : (time_t)t;
			free(value);
		} else if (key_is(line, key_len, "sender")) {
			free(env->sender);
			env->sender = value;
		} else if (key_is(line, key_len, "rcpt")) {
			if (env->rcpts_len == rcpts_cap) {
				rcpts_cap = rcpts_cap ? rcpts_cap * 2 : 8;
				env->rcpts = xrealloc(env->rcpts, rcpts_cap * sizeof(char *));
				env->orcpts = xrealloc(env->orcpts, rcpts_cap * sizeof(char *));
			}
			env->orcpts[env->rcpts_len] = xstrdup(value);
			env->rcpts[env->rcpts_len++] = value;
		} else if (key_is(line, key_len, "orcpt") && env->rcpts_len > 0) {
			free(env->orcpts[env->rcpts_len - 1]);
			env->orcpts[env->rcpts_len - 1] = value;
		} else if (key_is(line, key_len, "helo")) {
			free(env->helo);
			env->helo = value;
		} else if (key_is(line, key_len, "client_addr")) {
			free(env->client_addr);
			env->client_addr = value;
		} else if (key_is(line, key_len, "client_name")) {
			free(env->client_name);
			env->client_name = value;
		} else if (key_is(line, key_len, "protocol")) {
			free(env->protocol);
			env->protocol = value;
		} else if (key_is(line, key_len, "body")) {
			env->body_8bit = strcmp(value, "8BITMIME") == 0;
			free(value);
		} else if (key_is(line, key_len, "smtputf8")) {
			env->smtputf8 = strcmp(value, "1") == 0;
			free(value);
		} else if (key_is(line, key_len, "expanded")) {
			env->expanded = strcmp(value, "1") == 0;
			free(value);
		} else {
			free(value); /* a key from a newer petrel: ignored */
		}
	}
	if (!util_id_valid(env->id) || env->sender == NULL || env->rcpts_len == 0) {
		snprintf(err, err_cap, "incomplete header");
		goto fail;
	}
	if (env->helo == NULL)
		env->helo = xstrdup("");
	if (env->client_addr == NULL)
		env->client_addr = xstrdup("");
	if (env->client_name == NULL)
		env->client_name = xstrdup("unknown");
	if (env->protocol == NULL)
		env->protocol = xstrdup("SMTP");
	env->body_off = (off_t)pos;
	return 0;
fail:
	queue_file_env_free(env);
	return -1;
}

int
queue_file_read(int fd, struct queue_file_env *env, char *err, size_t err_cap)
{
	size_t cap = 4096, len = 0;
	char *data = xmalloc(cap);
	int rc = -1;

	for (;;) {
		ssize_t n = pread(fd, data + len, cap - len, (off_t)len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			snprintf(err, err_cap, "read: %s", strerror(errno));
			break;
		}
		len += (size_t)n;
		/* The header ends at the first empty line. */
		if (memmem(data, len, "\n\n", 2) != NULL || n == 0) {
			rc = queue_file_parse(data, len, env, err, err_cap);
			break;
		}
		if (len == cap) {
			if (cap >= HEADER_MAX) {
				snprintf(err, err_cap, "header too large");
				break;
			}
			cap *= 2;
			data = xrealloc(data, cap);
		}
	}
	free(data);
	return rc;
}

void
queue_file_status_free(struct queue_file_status *st)
{
	free(st->done);
	free(st->failed);
	st->done = st->failed = NULL;
}

int
queue_file_status_read(int dirfd, const char *id, size_t rcpts_len, struct queue_file_status *st)
{
	char name[UTIL_ID_LEN + 8];
	char line[512];
	FILE *f;
	int fd;

	memset(st, 0, sizeof(*st));
	st->done = xcalloc(rcpts_len, sizeof(bool));
	st->failed = xcalloc(rcpts_len, sizeof(bool));
	snprintf(name, sizeof(name), "%s.st", id);
	fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? 0 : -1;
	f = fdopen(fd, "r");
	if (f == NULL) {
		close(fd);
		return -1;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		unsigned long v;
		line[strcspn(line, "\n")] = '\0';
		if (sscanf(line, "attempts %lu", &v) == 1) {
			st->attempts = (unsigned)v;
		} else if (sscanf(line, "done %lu", &v) == 1 && v < rcpts_len) {
			st->done[v] = true;
		} else if (sscanf(line, "fail %lu", &v) == 1 && v < rcpts_len) {
			st->done[v] = true;
			st->failed[v] = true;
		} else if (strncmp(line, "error ", 6) == 0) {
			util_strlcpy(st->error, line + 6, sizeof(st->error));
		}
	}
	fclose(f);
	return 0;
}

int
queue_file_write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int
queue_file_status_write(int dirfd, const char *id, size_t rcpts_len,
			const struct queue_file_status *st)
{
	char name[UTIL_ID_LEN + 8], tmp[UTIL_ID_LEN + 12];
	struct buf b;
	int fd, rc = -1;

	buf_init(&b, 16u * 1024 * 1024);
	buf_printf(&b, "attempts %u\n", st->attempts);
	for (size_t i = 0; i < rcpts_len; i++) {
		if (st->done[i])
			buf_printf(&b, "%s %zu\n", st->failed[i] ? "fail" : "done", i);
	}
	buf_printf(&b, "error %s\n", st->error);
	snprintf(name, sizeof(name), "%s.st", id);
	snprintf(tmp, sizeof(tmp), "%s.st.new", id);
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		goto out;
	if (queue_file_write_all(fd, b.data, b.len) != 0 || fdatasync(fd) != 0) {
		close(fd);
		unlinkat(dirfd, tmp, 0);
		goto out;
	}
	close(fd);
	if (renameat(dirfd, tmp, dirfd, name) != 0) {
		unlinkat(dirfd, tmp, 0);
		goto out;
	}
	rc = 0;
out:
	buf_free(&b);
	return rc;
}
