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
queue_drop_write(struct queue_drop *d, const void *data, size_t len)
{
	return queue_file_write_all(d->fd, data, len);
}

int
queue_drop_commit(struct queue_drop *d, char id[UTIL_ID_LEN + 1], char *err, size_t err_cap)
{
	if (fdatasync(d->fd) != 0 || renameat(d->dir_fd, d->tmp, d->dir_fd, d->id) != 0 ||
	    fsync(d->dir_fd) != 0) {
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

static void
pickup_run(struct util_pool_job *job)
{
	struct pickup *p = (struct pickup *)job;
	struct queue *q = p->q;
	DIR *dir = fdopendir(dup(q->incoming_fd));

	struct dirent *de;

	/* A dup shares the directory offset: start from the top every time. */
	if (dir != NULL)
		rewinddir(dir);
	while (dir != NULL && (de = readdir(dir)) != NULL) {
		/* ".ID" files are still being written. */
		if (!util_id_valid(de->d_name))
			continue;
		if (renameat(q->incoming_fd, de->d_name, q->queue_fd, de->d_name) != 0) {
			log_warn("pickup of %s: %s", de->d_name, strerror(errno));
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
	/* The renames must be durable before the files leave incoming/ for good. */
	if (p->len > 0 && (fsync(q->queue_fd) != 0 || fsync(q->incoming_fd) != 0))
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
