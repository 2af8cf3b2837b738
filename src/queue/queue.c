#include "queue/queue.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/queue_file.h"
#include "queue/queue_internal.h"
#include "util/util_pool.h"
#include "util/util_buf.h"
#include "util/util_dirsync.h"
#include "util/util_fs.h"
#include "util/util_log.h"
#include "util/util_mem.h"
#include "util/util_time.h"

#define HEADER_BUF_MAX (64u * 1024 * 1024)
/*
 * A message this small is kept in memory until its end, so that a message
 * whose recipients are all delivered at the commit (queue_set_direct) never
 * needs a spool file.  Larger ones, or any once the memory held for all
 * messages being received reaches MEM_TOTAL_MAX, go to tmp/ID as they come.
 */
#define MEM_MSG_MAX   (256u * 1024)
#define MEM_TOTAL_MAX (64u * 1024 * 1024)

enum op_kind { OP_APPEND, OP_COMMIT, OP_ABORT };

struct msg_op {
	struct util_pool_job job; /* first: a job is an op */
	enum op_kind kind;
	struct queue_msg *msg;
	char *data; /* owned */
	size_t len;
	queue_done_fn done;
	void *arg;
	int err;
	struct queue_delivery *preloaded; /* OP_COMMIT: the delivery, ready to start */
	struct msg_op *next;
};

struct queue_msg {
	struct queue *q;
	char id[UTIL_ID_LEN + 1];
	struct buf header; /* written before the first octet of the message */
	char *mem;	   /* the message so far, while it is held in memory */
	size_t mem_len, mem_cap;
	bool spilled; /* the message goes to tmp/ID (mem is no longer used) */
	int fd;	      /* tmp/ID once created, worker threads only */
	bool created;
	void *direct_ctx; /* queue_msg_direct(): offered to q->direct at the commit */
	bool delivered;	  /* the commit delivered it (queue_set_direct): never spooled */
	int err;	  /* first write error; sticks */
	size_t pending;	  /* octets appended, not yet written */
	bool busy;	  /* an op is on the pool */
	bool detached;	  /* callbacks dropped */
	struct msg_op *ops_head, *ops_tail;
};

static void msg_kick(struct queue_msg *m);

/* ---- receiving a message: worker side ----------------------------------- */

static int
msg_create(struct queue_msg *m)
{
	m->fd =
	    openat(m->q->tmp_fd, m->id, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (m->fd < 0)
		return errno;
	m->created = true;
	if (queue_file_write_all(m->fd, m->header.data, m->header.len) != 0)
		return errno;
	return 0;
}

/*
 * Offers a message held in memory to the direct deliverer.  True when every
 * recipient got it: then nothing of it goes to the spool.
 */
static bool
msg_deliver_direct(struct queue_msg *m)
{
	struct queue *q = m->q;
	struct queue_file_env env;
	struct queue_item it;
	char err[200];
	bool ok;

	if (queue_file_parse(m->header.data, m->header.len, &env, err, sizeof(err)) != 0) {
		log_err("%s: %s", m->id, err);
		return false;
	}
	memset(&it, 0, sizeof(it));
	memcpy(it.id, m->id, sizeof(it.id));
	it.arrival = env.arrival;
	it.sender = env.sender;
	it.rcpts_len = env.rcpts_len;
	it.rcpts = env.rcpts;
	it.orcpts = env.orcpts;
	it.done = NULL;
	it.helo = env.helo;
	it.client_addr = env.client_addr;
	it.client_name = env.client_name;
	it.protocol = env.protocol;
	it.body_8bit = env.body_8bit;
	it.smtputf8 = env.smtputf8;
	it.fd = -1;
	it.body_mem = m->mem != NULL ? m->mem : "";
	it.body_len = m->mem_len;
	ok = q->direct(m->direct_ctx, &it);
	queue_file_env_free(&env);
	return ok;
}

/* ---- spare queue files ------------------------------------------------ */

#define SPARES_MAX     1024
#define SPARE_SIZE_MAX (64 * 1024) /* a larger file's blocks are given back (unlinked) */
#define SPARE_PREFIX   ".spare."
#define SPARE_NAME_LEN 32

struct spares {
	pthread_mutex_t lock;
	unsigned *names; /* numbers N of queue/.spare.N, a stack */
	size_t len;
	unsigned next; /* the number of the next spare */
};

struct spares *
queue_spares_new(void)
{
	struct spares *sp = xcalloc(1, sizeof(*sp));

	pthread_mutex_init(&sp->lock, NULL);
	sp->names = xcalloc(SPARES_MAX, sizeof(*sp->names));
	return sp;
}

void
queue_spares_free(struct spares *sp)
{
	if (sp == NULL)
		return;
	pthread_mutex_destroy(&sp->lock);
	free(sp->names);
	free(sp);
}

static void
spare_name(char name[SPARE_NAME_LEN], unsigned n)
{
	snprintf(name, SPARE_NAME_LEN, SPARE_PREFIX "%u", n);
}

/* Takes a spare's name; false when there is none. */
static bool
spare_take(struct queue *q, char name[SPARE_NAME_LEN])
{
	struct spares *sp = q->spares;
	bool found = false;
	unsigned n = 0;

	pthread_mutex_lock(&sp->lock);
	if (sp->len > 0) {
		n = sp->names[--sp->len];
		found = true;
	}
	pthread_mutex_unlock(&sp->lock);
	if (found)
		spare_name(name, n);
	return found;
}

/* Gives a name back (a spare that could not be used this time). */
static void
spare_return(struct queue *q, const char *name)
{
	struct spares *sp = q->spares;
	unsigned n = (unsigned)strtoul(name + strlen(SPARE_PREFIX), NULL, 10);
	bool kept = false;

	pthread_mutex_lock(&sp->lock);
	if (sp->len < SPARES_MAX) {
		sp->names[sp->len++] = n;
		kept = true;
	}
	pthread_mutex_unlock(&sp->lock);
	if (!kept)
		unlinkat(q->queue_fd, name, 0);
}

void
queue_spare_put(struct queue *q, const char *id, off_t size)
{
	struct spares *sp = q->spares;
	char name[SPARE_NAME_LEN];
	unsigned n = 0;
	bool keep = false;

	if (size <= SPARE_SIZE_MAX) {
		pthread_mutex_lock(&sp->lock);
		if (sp->len < SPARES_MAX) {
			keep = true;
			n = sp->next++;
		}
		pthread_mutex_unlock(&sp->lock);
	}
	spare_name(name, n);
	/* Not flushed, like an unlink: after a crash the message may be delivered again. */
	if (keep && renameat(q->queue_fd, id, q->queue_fd, name) == 0) {
		pthread_mutex_lock(&sp->lock);
		if (sp->len < SPARES_MAX) {
			sp->names[sp->len++] = n;
			keep = false;
		}
		pthread_mutex_unlock(&sp->lock);
		if (keep) /* the stack filled up meanwhile */
			unlinkat(q->queue_fd, name, 0);
		return;
	}
	unlinkat(q->queue_fd, id, 0);
}

/* A spare found at start: kept, or removed when there are enough. */
static void
spare_found(struct queue *q, const char *name)
{
	struct spares *sp = q->spares;
	const char *num = name + strlen(SPARE_PREFIX);
	char *end;
	unsigned long n = strtoul(num, &end, 10);

	if (*num < '0' || *num > '9' || *end != '\0' || n >= 0x7fffffffUL ||
	    sp->len >= SPARES_MAX) {
		unlinkat(q->queue_fd, name, 0);
		return;
	}
	sp->names[sp->len++] = (unsigned)n;
	if ((unsigned)n >= sp->next)
		sp->next = (unsigned)n + 1;
}

/*
 * Writes a message held in memory over a spare: truncate, write, fdatasync,
 * rename to queue/ID.  0, ENOENT when there is no usable spare, or errno.
 */
static int
msg_spool_spare(struct queue_msg *m)
{
	struct queue *q = m->q;
	char name[SPARE_NAME_LEN];
	int fd, err = 0;

	if (!spare_take(q, name))
		return ENOENT;
	fd = openat(q->queue_fd, name, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno != ENOENT)
			spare_return(q, name);
		return ENOENT; /* removed behind our back: not an error of this message */
	}
	if (queue_file_write_all(fd, m->header.data, m->header.len) != 0 ||
	    (m->mem_len > 0 && queue_file_write_all(fd, m->mem, m->mem_len) != 0) ||
	    fdatasync(fd) != 0)
		err = errno;
	close(fd);
	if (err == 0 && renameat(q->queue_fd, name, q->queue_fd, m->id) != 0)
		err = errno;
	if (err != 0)
		spare_return(q, name); /* truncated again when next used */
	return err;
}

/* Data first, then the name, then the directory: a file in queue/ is always whole. */
static int
msg_spool(struct queue_msg *m)
{
	struct queue *q = m->q;
	int err = m->err;

	if (err == 0 && !m->created && !m->spilled) {
		err = msg_spool_spare(m);
		if (err == 0)
			goto flush;
		if (err != ENOENT)
			return err;
		err = 0;
	}
	if (err == 0 && !m->created)
		err = msg_create(m);
	if (err == 0 && !m->spilled && m->mem_len > 0 &&
	    queue_file_write_all(m->fd, m->mem, m->mem_len) != 0)
		err = errno;
	if (err == 0 && fdatasync(m->fd) != 0)
		err = errno;
	if (m->fd >= 0)
		close(m->fd);
	m->fd = -1;
	if (err == 0 && renameat(q->tmp_fd, m->id, q->queue_fd, m->id) != 0)
		err = errno;
	if (err != 0) {
		if (m->created)
			unlinkat(q->tmp_fd, m->id, 0);
		return err;
	}
flush:
	/* One flush of queue/ for every message renamed meanwhile (group commit). */
	if (util_dirsync(q->queue_fd) != 0)
		return errno;
	return 0;
}

static void
op_run(struct util_pool_job *job)
{
	struct msg_op *op = (struct msg_op *)job;
	struct queue_msg *m = op->msg;
	struct queue *q = m->q;

	switch (op->kind) {
	case OP_APPEND:
		if (m->err == 0 && !m->created)
			m->err = msg_create(m);
		if (m->err == 0 && queue_file_write_all(m->fd, op->data, op->len) != 0)
			m->err = errno;
		op->err = m->err;
		break;
	case OP_COMMIT:
		if (m->err == 0 && !m->spilled && q->direct != NULL && m->direct_ctx != NULL &&
		    msg_deliver_direct(m)) {
			m->delivered = true;
			op->err = 0;
			break;
		}
		m->err = msg_spool(m);
		op->err = m->err;
		if (op->err == 0)
			op->preloaded =
			    queue_delivery_preload(q, m->id, m->header.data, m->header.len);
		break;
	case OP_ABORT:
		if (m->fd >= 0)
			close(m->fd);
		m->fd = -1;
		if (m->created)
			unlinkat(q->tmp_fd, m->id, 0);
		break;
	}
	util_pool_complete(q->pool, job);
}

/* ---- receiving a message: loop side ------------------------------------- */

static void
msg_free(struct queue_msg *m)
{
	m->q->mem_used -= m->mem_cap;
	free(m->mem);
	buf_free(&m->header);
	free(m);
}

static void
op_done(struct util_pool_job *job)
{
	struct msg_op *op = (struct msg_op *)job;
	struct queue_msg *m = op->msg;
	struct queue *q = m->q;
	enum op_kind kind;

	m->busy = false;
	m->ops_head = op->next;
	if (m->ops_head == NULL)
		m->ops_tail = NULL;
	if (op->kind == OP_APPEND)
		m->pending -= op->len;
	if (!m->detached && op->done != NULL)
		op->done(op->arg, op->err);
	if (op->preloaded != NULL)
		queue_delivery_start_preloaded(q, op->preloaded); /* deliver right away */
	kind = op->kind;
	free(op->data);
	free(op);
	if (kind == OP_APPEND)
		msg_kick(m);
	else
		msg_free(m); /* commit and abort end the message */
	queue_start_due(q);
}

static void
msg_kick(struct queue_msg *m)
{
	if (m->busy || m->ops_head == NULL || m->q->closing)
		return;
	m->busy = true;
	util_pool_submit(m->q->pool, &m->ops_head->job);
}

/* Queues an op; data (len octets) becomes the op's own. */
static void
msg_push_owned(struct queue_msg *m, enum op_kind kind, char *data, size_t len, queue_done_fn done,
	       void *arg)
{
	struct msg_op *op = xcalloc(1, sizeof(*op));

	op->job.run = op_run;
	op->job.done = op_done;
	op->kind = kind;
	op->msg = m;
	op->data = data;
	op->len = len;
	op->done = done;
	op->arg = arg;
	if (m->ops_tail != NULL)
		m->ops_tail->next = op;
	else
		m->ops_head = op;
	m->ops_tail = op;
	msg_kick(m);
}

struct queue_msg *
queue_msg_new(struct queue *q, const struct queue_envelope *env)
{
	struct queue_msg *m = xcalloc(1, sizeof(*m));

	m->q = q;
	m->fd = -1;
	util_id_new(m->id);
	buf_init(&m->header, HEADER_BUF_MAX);
	if (queue_file_header(&m->header, m->id, time(NULL), env) != 0)
		m->err = E2BIG;
	return m;
}

const char *
queue_msg_id(const struct queue_msg *m)
{
	return m->id;
}

/* Keeps len more octets in memory if the limits allow it. */
static bool
msg_keep(struct queue_msg *m, const char *data, size_t len)
{
	struct queue *q = m->q;
	size_t need = m->mem_len + len, cap = m->mem_cap;

	if (m->spilled || need > MEM_MSG_MAX)
		return false;
	if (need > cap) {
		cap = cap ? cap : 4096;
		while (cap < need)
			cap *= 2;
		if (cap > MEM_MSG_MAX)
			cap = MEM_MSG_MAX;
		if (q->mem_used - m->mem_cap + cap > MEM_TOTAL_MAX)
			return false;
		m->mem = xrealloc(m->mem, cap);
		q->mem_used += cap - m->mem_cap;
		m->mem_cap = cap;
	}
	memcpy(m->mem + m->mem_len, data, len);
	m->mem_len = need;
	return true;
}

void
queue_msg_append(struct queue_msg *m, const char *data, size_t len, queue_done_fn done, void *arg)
{
	char *copy;

	if (len == 0 || msg_keep(m, data, len))
		return; /* nothing waits for the disk: no callback is due */
	if (!m->spilled) {
		/* From now on the message goes to tmp/ID: first what memory held. */
		m->spilled = true;
		if (m->mem_len > 0) {
			m->pending += m->mem_len;
			m->q->mem_used -= m->mem_cap;
			msg_push_owned(m, OP_APPEND, m->mem, m->mem_len, NULL, NULL);
		} else {
			m->q->mem_used -= m->mem_cap;
			free(m->mem);
		}
		m->mem = NULL;
		m->mem_len = m->mem_cap = 0;
	}
	copy = xmalloc(len);
	memcpy(copy, data, len);
	m->pending += len;
	msg_push_owned(m, OP_APPEND, copy, len, done, arg);
}

size_t
queue_msg_pending(const struct queue_msg *m)
{
	return m->pending;
}

void
queue_msg_commit(struct queue_msg *m, queue_done_fn done, void *arg)
{
	msg_push_owned(m, OP_COMMIT, NULL, 0, done, arg);
}

bool
queue_msg_delivered(const struct queue_msg *m)
{
	return m->delivered;
}

void
queue_msg_abort(struct queue_msg *m)
{
	m->detached = true;
	if (!m->spilled && m->ops_head == NULL) {
		msg_free(m); /* only memory: nothing to undo on disk */
		return;
	}
	msg_push_owned(m, OP_ABORT, NULL, 0, NULL, NULL);
}

void
queue_msg_detach(struct queue_msg *m)
{
	m->detached = true;
}

void
queue_set_direct(struct queue *q, queue_direct_fn fn)
{
	q->direct = fn;
}

void
queue_msg_direct(struct queue_msg *m, void *msg_ctx)
{
	m->direct_ctx = msg_ctx;
}

/* ---- open, recover, close ------------------------------------------------- */

static int
open_dir(int parent, const char *name, char *err, size_t err_cap)
{
	int fd;

	if (mkdirat(parent, name, 0700) != 0 && errno != EEXIST) {
		snprintf(err, err_cap, "mkdir %s: %s", name, strerror(errno));
		return -1;
	}
	fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		snprintf(err, err_cap, "open %s: %s", name, strerror(errno));
	return fd;
}

/* Removes what a crash left in tmp/ (never acknowledged) and schedules queue/. */
static void
recover(struct queue *q)
{
	DIR *d;
	struct dirent *de;
	size_t found = 0, dropped = 0;

	d = fdopendir(dup(q->tmp_fd));
	while (d != NULL && (de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		unlinkat(q->tmp_fd, de->d_name, 0);
		dropped++;
	}
	if (d != NULL)
		closedir(d);
	d = fdopendir(dup(q->queue_fd));
	while (d != NULL && (de = readdir(d)) != NULL) {
		struct entry *e;
		if (!util_id_valid(de->d_name)) {
			size_t n = strlen(de->d_name);
			if (n > 4 && strcmp(de->d_name + n - 4, ".new") == 0)
				unlinkat(q->queue_fd, de->d_name, 0);
			else if (strncmp(de->d_name, SPARE_PREFIX, strlen(SPARE_PREFIX)) == 0)
				spare_found(q, de->d_name);
			continue;
		}
		e = xcalloc(1, sizeof(*e));
		memcpy(e->id, de->d_name, sizeof(e->id));
		e->recovered = true;
		q->total++;
		queue_schedule(q, e);
		found++;
	}
	if (d != NULL)
		closedir(d);
	if (found > 0 || dropped > 0)
		log_info("queue: recovered %zu message(s), removed %zu unfinished file(s)", found,
			 dropped);
}

struct queue *
queue_open(const char *spool_dir, const struct queue_limits *limits, char *err, size_t err_cap)
{
	struct queue *q = xcalloc(1, sizeof(*q));
	int spool_fd;

	q->tmp_fd = q->queue_fd = q->incoming_fd = -1;
	q->dir = xstrdup(spool_dir);
	q->limits = *limits;
	if (q->limits.workers == 0)
		q->limits.workers = 8;
	if (q->limits.max_deliveries == 0)
		q->limits.max_deliveries = 64;
	if (util_mkdirs(spool_dir, 0700) != 0) {
		snprintf(err, err_cap, "%s: %s", spool_dir, strerror(errno));
		goto fail;
	}
	spool_fd = open(spool_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (spool_fd < 0) {
		snprintf(err, err_cap, "%s: %s", spool_dir, strerror(errno));
		goto fail;
	}
	q->spares = queue_spares_new();
	q->tmp_fd = open_dir(spool_fd, "tmp", err, err_cap);
	q->queue_fd = open_dir(spool_fd, "queue", err, err_cap);
	q->incoming_fd = open_dir(spool_fd, "incoming", err, err_cap);
	/* New directories must survive a crash before any message is put in them. */
	fsync(spool_fd);
	close(spool_fd);
	if (q->tmp_fd < 0 || q->queue_fd < 0 || q->incoming_fd < 0)
		goto fail;
	recover(q);
	q->pool = util_pool_new(q->limits.workers);
	queue_pickup(q); /* what petrel sendmail left while the server was down */
	return q;
fail:
	queue_close(q);
	return NULL;
}

void
queue_close(struct queue *q)
{
	if (q == NULL)
		return;
	q->closing = true;
	if (q->pool != NULL)
		util_pool_stop(q->pool); /* workers finish their jobs */
	if (q->pool != NULL) {
		/* Completed work is recorded (entries back in the heap) and freed below. */
		util_pool_dispatch(q->pool);
		util_pool_free(q->pool);
	}
	for (size_t i = 0; i < q->heap_len; i++)
		free(q->heap[i]);
	free(q->heap);
	if (q->tmp_fd >= 0)
		close(q->tmp_fd);
	if (q->queue_fd >= 0)
		close(q->queue_fd);
	if (q->incoming_fd >= 0)
		close(q->incoming_fd);
	queue_spares_free(q->spares);
	free(q->dir);
	free(q);
}

int
queue_notify_fd(const struct queue *q)
{
	return util_pool_notify_fd(q->pool);
}

void
queue_dispatch(struct queue *q)
{
	util_pool_dispatch(q->pool);
	queue_start_due(q);
}

size_t
queue_length(const struct queue *q)
{
	return q->total;
}
