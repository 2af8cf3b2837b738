/*
 * queue_drop — the drop-off of other processes into spool/incoming/, and
 * the server's pickup from there.
 */
#include "queue/queue_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "queue/queue_file.h"
#include "util/util_buf.h"
#include "util/util_log.h"
#include "util/util_mem.h"

struct queue_drop {
	int dir_fd; /* spool/incoming */
	int fd;
	char id[UTIL_ID_LEN + 1];
	char tmp[UTIL_ID_LEN + 2]; /* ".ID" */
	bool committed;
	bool dir_unreadable; /* another user's incoming/ (queue_open): flushed by syncfs */
};

struct queue_drop *
queue_drop_open(const char *spool_dir, const struct queue_envelope *env, char *err, size_t err_cap)
{
	struct queue_drop *d = xcalloc(1, sizeof(*d));
	struct buf header;
	char path[4096];

	d->fd = -1;
	snprintf(path, sizeof(path), "%s/incoming", spool_dir);
	d->dir_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (d->dir_fd < 0 && errno == EACCES) {
		/* The server's incoming/ lets others in but not read it: enough to add a file. */
		d->dir_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
		d->dir_unreadable = true;
	}
	if (d->dir_fd < 0) {
		snprintf(err, err_cap, "%s: %s", path, strerror(errno));
		free(d);
		return NULL;
	}
	util_id_new(d->id);
	snprintf(d->tmp, sizeof(d->tmp), ".%s", d->id);
	d->fd =
	    openat(d->dir_fd, d->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (d->fd < 0) {
		snprintf(err, err_cap, "%s/%s: %s", path, d->tmp, strerror(errno));
		queue_drop_abort(d);
		return NULL;
	}
	/* Readable by the server's group, which the file takes from incoming/ (queue_open). */
	if (fchmod(d->fd, 0640) != 0) {
		snprintf(err, err_cap, "%s/%s: %s", path, d->tmp, strerror(errno));
		queue_drop_abort(d);
		return NULL;
	}
	buf_init(&header, 64u * 1024 * 1024);
	if (queue_file_header(&header, d->id, time(NULL), env) != 0 ||
	    queue_file_write_all(d->fd, header.data, header.len) != 0) {
		snprintf(err, err_cap, "cannot write the envelope: %s", strerror(errno));
		buf_free(&header);
		queue_drop_abort(d);
		return NULL;
	}
	buf_free(&header);
	return d;
}

int
queue_drop_give(struct queue_drop *d, uid_t uid, gid_t gid)
{
	return fchown(d->fd, uid, gid);
}

int
queue_drop_write(struct queue_drop *d, const void *data, size_t len)
{
	return queue_file_write_all(d->fd, data, len);
}

int
queue_drop_commit(struct queue_drop *d, char id[UTIL_ID_LEN + 1], char *err, size_t err_cap)
{
	/* A directory one cannot read cannot be fsync'd: its file system is flushed instead. */
	if (fdatasync(d->fd) != 0 || renameat(d->dir_fd, d->tmp, d->dir_fd, d->id) != 0 ||
	    (d->dir_unreadable ? syncfs(d->fd) : fsync(d->dir_fd)) != 0) {
		snprintf(err, err_cap, "cannot store the message: %s", strerror(errno));
		return -1;
	}
	d->committed = true;
	memcpy(id, d->id, UTIL_ID_LEN + 1);
	close(d->fd);
	close(d->dir_fd);
	free(d);
	return 0;
}

void
queue_drop_abort(struct queue_drop *d)
{
	if (d == NULL)
		return;
	if (d->fd >= 0) {
		close(d->fd);
		unlinkat(d->dir_fd, d->tmp, 0);
	}
	close(d->dir_fd);
	free(d);
}

/* ---- pickup (server side) ---------------------------------------------------- */

struct pickup {
	struct util_pool_job job;
	struct queue *q;
	char (*ids)[UTIL_ID_LEN + 1];
	size_t len, cap;
};

void
queue_set_pickup_expand(struct queue *q, queue_expand_fn fn, void *arg)
{
	q->pickup_expand = fn;
	q->pickup_expand_arg = arg;
}

#define PICKUP_HEADER_MAX (8u * 1024 * 1024) /* the envelope of a dropped message */

/*
 * The form petrel sendmail writes a message in, as DATA accepts one: CRLF
 * lines of at most 1000 octets, no bare CR or LF, no NUL.  Checked across
 * chunks (*prev, *col carry over); the relay sends the spool as it is.
 */
/* An address as petrel sendmail writes one: at most 256 octets, no control characters. */
static bool
addr_clean(const char *a)
{
	size_t len = strlen(a);

	if (len > 256)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)a[i] < 0x20 || a[i] == 0x7f)
			return false;
	return true;
}

static bool
body_clean(const char *s, size_t n, char *prev, size_t *col)
{
	for (size_t i = 0; i < n; i++) {
		char b = s[i];

		if (b == '\0' || (b == '\n') != (*prev == '\r'))
			return false; /* NUL, a bare LF, or a CR not followed by LF */
		*col = b == '\n' ? 0 : *col + 1;
		if (*col > 999) /* 998 octets and the CR */
			return false;
		*prev = b;
	}
	return true;
}

/*
 * incoming/ID becomes queue/ID with its recipients expanded (written as
 * tmp/ID, flushed, renamed).  The file was written by another user's
 * process: only a regular file with one link is taken (never a symlink or
 * a hard link to someone else's file).  0 when queued; 1 when the file is
 * refused for good, -1 when it could not be copied now (err says why).
 */
static int
pickup_one(struct queue *q, const char *id, char *err, size_t err_cap)
{
	struct queue_file_env env;
	struct queue_rcpt_list x = {0};
	struct queue_envelope out;
	struct buf header;
	struct stat st;
	char *data = NULL;
	ssize_t n = 0;
	off_t off;
	char prev = '\n';
	size_t col = 0;
	int in, tmp = -1, rc = -1;

	err[0] = '\0';
	in = openat(q->incoming_fd, id, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (in < 0 && (errno == ELOOP || errno == EACCES || errno == EPERM)) {
		/* A symlink, or a file kept from us: never to be read. */
		snprintf(err, err_cap, "refused: %s",
			 errno == ELOOP ? "a symbolic link" : strerror(errno));
		return 1;
	}
	if (in < 0 || fstat(in, &st) != 0) {
		snprintf(err, err_cap, "%s", strerror(errno));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode) || st.st_nlink != 1) {
		snprintf(err, err_cap, "refused: not a regular file with one link");
		rc = 1;
		goto out_close;
	}
	data = xmalloc(PICKUP_HEADER_MAX);
	n = pread(in, data, PICKUP_HEADER_MAX, 0);
	if (n < 0) {
		snprintf(err, err_cap, "%s", strerror(errno));
		goto out_free;
	}
	if (queue_file_parse(data, (size_t)n, &env, err, err_cap) != 0) {
		rc = 1; /* not written by petrel sendmail */
		goto out_free;
	}
	for (size_t i = 0; i <= env.rcpts_len; i++) {
		/* (they end up in our Return-Path: and Delivered-To: fields, and in commands) */
		if (!addr_clean(i == env.rcpts_len ? env.sender : env.rcpts[i])) {
			snprintf(err, err_cap, "refused: a control character in an address");
			queue_file_env_free(&env);
			rc = 1;
			goto out_free;
		}
	}
	for (size_t i = 0; i < env.rcpts_len; i++) {
		if (q->pickup_expand != NULL)
			q->pickup_expand(q->pickup_expand_arg, env.rcpts[i], &x);
		else
			queue_rcpt_list_add(&x, env.rcpts[i], env.rcpts[i]);
	}
	/*
	 * What the file says of where and when it came from is not taken on a
	 * local user's word (it ends up in our Received: field and decides the
	 * expiry): a drop is local, and arrives when it is picked up.
	 */
	out = (struct queue_envelope){
	    .sender = env.sender,
	    .rcpts = (const char *const *)x.rcpts,
	    .orcpts = (const char *const *)x.orcpts,
	    .rcpts_len = x.len,
	    .helo = "",
	    .client_addr = "127.0.0.1",
	    .client_name = "localhost",
	    .protocol = "local",
	    .body_8bit = env.body_8bit,
	    .smtputf8 = env.smtputf8,
	    .expanded = true,
	};
	buf_init(&header, 64u * 1024 * 1024);
	/* O_EXCL: the name was the dropper's choice; never over a message being received. */
	tmp = openat(q->tmp_fd, id, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (tmp < 0 && errno == EEXIST) {
		snprintf(err, err_cap, "refused: its name is taken");
		rc = 1;
		goto out_env;
	}
	if (tmp < 0 || queue_file_header(&header, id, time(NULL), &out) != 0 ||
	    queue_file_write_all(tmp, header.data, header.len) != 0)
		goto out_env;
	for (off = env.body_off; (n = pread(in, data, PICKUP_HEADER_MAX, off)) > 0; off += n) {
		if (!body_clean(data, (size_t)n, &prev, &col)) {
			snprintf(err, err_cap,
				 "refused: bare CR or LF, NUL or a line over 1000 octets in it");
			rc = 1;
			goto out_env;
		}
		if (queue_file_write_all(tmp, data, (size_t)n) != 0)
			goto out_env;
	}
	if (n == 0 && prev == '\r') {
		snprintf(err, err_cap, "refused: it ends with a bare CR");
		rc = 1;
		goto out_env;
	}
	if (n < 0 || fdatasync(tmp) != 0 || renameat(q->tmp_fd, id, q->queue_fd, id) != 0)
		goto out_env;
	rc = 0;
out_env:
	if (rc != 0 && err[0] == '\0')
		snprintf(err, err_cap, "cannot queue it: %s", strerror(errno));
	if (rc != 0 && tmp >= 0)
		unlinkat(q->tmp_fd, id, 0);
	buf_free(&header);
	queue_rcpt_list_free(&x);
	queue_file_env_free(&env);
out_free:
	free(data);
out_close:
	if (tmp >= 0)
		close(tmp);
	if (in >= 0)
		close(in);
	return rc;
}

static void
pickup_run(struct util_pool_job *job)
{
	struct pickup *p = (struct pickup *)job;
	struct queue *q = p->q;
	DIR *dir = fdopendir(dup(q->incoming_fd));
	struct dirent *de;
	char err[256];
	int rc;

	/* A dup shares the directory offset: start from the top every time. */
	if (dir != NULL)
		rewinddir(dir);
	while (dir != NULL && (de = readdir(dir)) != NULL) {
		/* ".ID" files are still being written. */
		if (!util_id_valid(de->d_name))
			continue;
		if (faccessat(q->queue_fd, de->d_name, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
			/* Queued by a pickup that stopped before removing it here. */
			unlinkat(q->incoming_fd, de->d_name, 0);
			continue;
		}
		/* Copied, never renamed: the file stays its dropper's, the copy is ours. */
		if ((rc = pickup_one(q, de->d_name, err, sizeof(err))) != 0) {
			log_warn("pickup of %s: %s", de->d_name, err);
			if (rc > 0)
				unlinkat(q->incoming_fd, de->d_name, 0); /* refused: never again */
			continue;
		}
		if (p->len == p->cap) {
			p->cap = p->cap ? p->cap * 2 : 16;
			p->ids = xrealloc(p->ids, p->cap * sizeof(*p->ids));
		}
		memcpy(p->ids[p->len++], de->d_name, UTIL_ID_LEN + 1);
	}
	if (dir != NULL)
		closedir(dir);
	/*
	 * The queue files must be durable before their drop files are removed.
	 * If they cannot be, the copies go and the drop files stay, the only
	 * copies: a copy delivered while its drop file stays would be picked up
	 * and delivered again.
	 */
	if (p->len > 0 && fsync(q->queue_fd) != 0) {
		log_warn("pickup: fsync: %s; trying again later", strerror(errno));
		for (size_t i = 0; i < p->len; i++)
			unlinkat(q->queue_fd, p->ids[i], 0);
		p->len = 0;
	}
	for (size_t i = 0; i < p->len; i++)
		unlinkat(q->incoming_fd, p->ids[i], 0);
	if (p->len > 0 && fsync(q->incoming_fd) != 0)
		log_warn("pickup: fsync: %s", strerror(errno));
	util_pool_complete(q->pool, job);
}

static void
pickup_done(struct util_pool_job *job)
{
	struct pickup *p = (struct pickup *)job;
	struct queue *q = p->q;

	for (size_t i = 0; i < p->len; i++) {
		struct entry *e = xcalloc(1, sizeof(*e));
		memcpy(e->id, p->ids[i], sizeof(e->id));
		log_info("%s: pickup from incoming", e->id);
		q->total++;
		queue_schedule(q, e);
	}
	q->pickup_running = false;
	free(p->ids);
	free(p);
	queue_start_due(q);
}

void
queue_pickup(struct queue *q)
{
	struct pickup *p;

	if (q->pickup_running || q->closing)
		return;
	q->pickup_running = true;
	p = xcalloc(1, sizeof(*p));
	p->job.run = pickup_run;
	p->job.done = pickup_done;
	p->q = q;
	util_pool_submit(q->pool, &p->job);
}
