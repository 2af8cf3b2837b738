#include "queue/queue.h"

#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/queue_file.h"
#include "queue/queue_internal.h"
#include "queue/queue_journal.h"
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
	struct journal_wait jwait;	  /* OP_COMMIT into the journal */
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
	void *direct_ctx;	     /* queue_msg_direct(): offered to q->direct at the commit */
	bool delivered;		     /* the commit delivered it (queue_set_direct): never spooled */
	struct journal_seg *jseg;    /* acknowledged in the journal; delivery follows */
	bool no_journal;	     /* the journal did not make it durable: commit without */
	uint64_t retry_ms;	     /* journaled, neither delivered nor spooled: try again then */
	unsigned direct_tries;	     /* offers to q->direct so far */
	struct queue_msg *next_wait; /* on q->stuck, or waiting for a direct batch */
	int err;		     /* first write error; sticks */
	size_t pending;		     /* octets appended, not yet written */
	bool busy;		     /* an op is on the pool */
	bool detached;		     /* callbacks dropped */
	struct msg_op *ops_head, *ops_tail;
};

static void msg_kick(struct queue_msg *m);
static void op_done(struct util_pool_job *job);

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

/* The message held in memory as a queue item for the direct deliverer; env is to be freed. */
static int
msg_item(struct queue_msg *m, struct queue_file_env *env, struct queue_item *it)
{
	char err[200];

	if (queue_file_parse(m->header.data, m->header.len, env, err, sizeof(err)) != 0) {
		log_err("%s: %s", m->id, err);
		return -1;
	}
	memset(it, 0, sizeof(*it));
	memcpy(it->id, m->id, sizeof(it->id));
	it->arrival = env->arrival;
	it->sender = env->sender;
	it->rcpts_len = env->rcpts_len;
	it->rcpts = env->rcpts;
	it->orcpts = env->orcpts;
	it->done = NULL;
	it->helo = env->helo;
	it->client_addr = env->client_addr;
	it->client_name = env->client_name;
	it->protocol = env->protocol;
	it->body_8bit = env->body_8bit;
	it->smtputf8 = env->smtputf8;
	it->expanded = env->expanded;
	it->fd = -1;
	it->body_mem = m->mem != NULL ? m->mem : "";
	it->attempts = m->direct_tries++; /* a stuck message's retry looks for earlier copies */
	it->body_len = m->mem_len;
	return 0;
}

/* After the 250 the queue takes it: the line the commit would have logged. */
static void
log_queued_after_all(const struct queue_msg *m, const struct queue_item *it)
{
	log_info("%s: from=<%s>, size=%llu, nrcpt=%zu (queue active)", m->id, it->sender,
		 (unsigned long long)m->mem_len, it->rcpts_len);
}

/*
 * Offers one message held in memory to the direct deliverer, at its commit.
 * True when every recipient got it: then nothing of it goes to the spool.
 */
static bool
msg_deliver_direct(struct queue_msg *m)
{
	struct queue_file_env env;
	struct queue_item it;
	bool ok = false;

	if (msg_item(m, &env, &it) != 0)
		return false;
	m->q->direct(&m->direct_ctx, &it, 1, &ok);
	queue_file_env_free(&env);
	return ok;
}

/* ---- spare queue files ------------------------------------------------ */

#define SPARES_MAX     1024
#define SPARE_SIZE_MAX (64 * 1024) /* a larger file's blocks are given back (unlinked) */
#define SPARE_PREFIX   ".spare."
#define SPARE_NAME_LEN 40

/*
 * A spare is taken for a new message only once the rename that made it
 * (queue/ID -> queue/.spare.N, not flushed by itself) is durable: a later
 * flush of queue/ covered it.  Otherwise a crash while the spare is being
 * rewritten could leave the name ID on disk pointing at a truncated file.
 * Spare numbers only grow (64 bits: they never wrap), so a rename never
 * lands on an existing spare.
 */
struct spares {
	pthread_mutex_t lock;
	unsigned long long ready[SPARES_MAX]; /* settled: may be rewritten */
	unsigned long long fresh[SPARES_MAX]; /* renamed, not yet known to be durable */
	size_t ready_len, fresh_len;
	size_t out_len;		 /* taken for a message, or being settled: counted, not listed */
	unsigned long long next; /* the number of the next spare */
};

struct spares *
queue_spares_new(void)
{
	struct spares *sp = xcalloc(1, sizeof(*sp));

	pthread_mutex_init(&sp->lock, NULL);
	return sp;
}

void
queue_spares_free(struct spares *sp)
{
	if (sp == NULL)
		return;
	pthread_mutex_destroy(&sp->lock);
	free(sp);
}

static void
spare_name(char name[SPARE_NAME_LEN], unsigned long long n)
{
	snprintf(name, SPARE_NAME_LEN, SPARE_PREFIX "%llu", n);
}

/* Takes a settled spare (its number in *n, its name in name); false when there is none. */
static bool
spare_take(struct queue *q, unsigned long long *num, char name[SPARE_NAME_LEN])
{
	struct spares *sp = q->spares;
	bool found = false;
	unsigned long long n = 0;

	pthread_mutex_lock(&sp->lock);
	if (sp->ready_len > 0) {
		n = sp->ready[--sp->ready_len];
		sp->out_len++;
		found = true;
	}
	pthread_mutex_unlock(&sp->lock);
	if (found)
		spare_name(name, n);
	*num = n;
	return found;
}

/* A taken spare is done with: given back (could not be used this time), or not. */
static void
spare_release(struct queue *q, unsigned long long n, bool give_back)
{
	struct spares *sp = q->spares;

	pthread_mutex_lock(&sp->lock);
	sp->out_len--;
	if (give_back)
		sp->ready[sp->ready_len++] = n; /* its slot was counted in out_len */
	pthread_mutex_unlock(&sp->lock);
}

/* Before a flush of queue/: the spares it will make durable.  Returns how many (in out). */
static size_t
spares_before_flush(struct queue *q, unsigned long long out[SPARES_MAX])
{
	struct spares *sp = q->spares;
	size_t n;

	pthread_mutex_lock(&sp->lock);
	n = sp->fresh_len;
	memcpy(out, sp->fresh, n * sizeof(*out));
	sp->fresh_len = 0;
	sp->out_len += n;
	pthread_mutex_unlock(&sp->lock);
	return n;
}

/* After that flush: settled, or back to fresh when it failed. */
static void
spares_after_flush(struct queue *q, const unsigned long long *v, size_t n, bool flushed)
{
	struct spares *sp = q->spares;

	pthread_mutex_lock(&sp->lock);
	sp->out_len -= n;
	for (size_t i = 0; i < n; i++) {
		if (flushed)
			sp->ready[sp->ready_len++] = v[i];
		else
			sp->fresh[sp->fresh_len++] = v[i];
	}
	pthread_mutex_unlock(&sp->lock);
}

void
queue_spare_put(struct queue *q, const char *id, off_t size)
{
	struct spares *sp = q->spares;
	char name[SPARE_NAME_LEN];
	unsigned long long n = 0;
	bool keep = false, renamed;

	/* A slot is reserved first, so that the counts never pass SPARES_MAX. */
	pthread_mutex_lock(&sp->lock);
	if (size >= 0 && size <= SPARE_SIZE_MAX &&
	    sp->ready_len + sp->fresh_len + sp->out_len + 1 <= SPARES_MAX) {
		keep = true;
		n = sp->next++;
		sp->out_len++;
	}
	pthread_mutex_unlock(&sp->lock);
	if (!keep) {
		unlinkat(q->queue_fd, id, 0);
		return;
	}
	spare_name(name, n);
	/*
	 * Not flushed, like an unlink: after a crash the message may be delivered
	 * again.  Listed as fresh only once renamed, so that the next flush of
	 * queue/ to start is sure to cover the rename.
	 */
	renamed = renameat(q->queue_fd, id, q->queue_fd, name) == 0;
	if (!renamed)
		unlinkat(q->queue_fd, id, 0);
	pthread_mutex_lock(&sp->lock);
	sp->out_len--;
	if (renamed)
		sp->fresh[sp->fresh_len++] = n;
	pthread_mutex_unlock(&sp->lock);
}

/* A spare found at start (on disk: settled): kept, or removed when there are enough. */
static void
spare_found(struct queue *q, const char *name)
{
	struct spares *sp = q->spares;
	const char *num = name + strlen(SPARE_PREFIX);
	char *end, canon[SPARE_NAME_LEN];
	unsigned long long n;

	errno = 0;
	n = strtoull(num, &end, 10);
	spare_name(canon, n);
	/* Only the names spare_name() makes: no sign, no leading zero, no overflow. */
	if (*num < '0' || *num > '9' || *end != '\0' || errno != 0 || strcmp(canon, name) != 0 ||
	    n == ~0ull || sp->ready_len >= SPARES_MAX) {
		unlinkat(q->queue_fd, name, 0);
		return;
	}
	sp->ready[sp->ready_len++] = n;
	if (n >= sp->next)
		sp->next = n + 1;
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
	unsigned long long n;
	int fd, err = 0;

	if (!spare_take(q, &n, name))
		return ENOENT;
	fd = openat(q->queue_fd, name, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		/* Removed behind our back, or not a usable file: not this message's error. */
		if (errno != ENOENT)
			unlinkat(q->queue_fd, name, 0);
		spare_release(q, 0, false);
		return ENOENT;
	}
	if (queue_file_write_all(fd, m->header.data, m->header.len) != 0 ||
	    (m->mem_len > 0 && queue_file_write_all(fd, m->mem, m->mem_len) != 0) ||
	    fdatasync(fd) != 0)
		err = errno;
	close(fd);
	if (err == 0 && renameat(q->queue_fd, name, q->queue_fd, m->id) != 0)
		err = errno;
	/* On failure it is truncated again when next used. */
	spare_release(q, n, err != 0);
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
		/* Gone: a later try (a journaled message's) starts from memory again. */
		if (m->created)
			unlinkat(q->tmp_fd, m->id, 0);
		m->created = false;
		return err;
	}
flush:
	/* One flush of queue/ for every message renamed meanwhile (group commit). */
	{
		unsigned long long settling[SPARES_MAX];
		size_t n = spares_before_flush(q, settling);

		err = util_dirsync(q->queue_fd) == 0 ? 0 : errno;
		spares_after_flush(q, settling, n, err == 0);
	}
	if (err != 0) {
		/*
		 * Not acknowledged as queued: take the name back, so that neither the
		 * next start (a client's retry would come too) nor a later try of a
		 * journaled message finds a second copy.
		 */
		unlinkat(q->queue_fd, m->id, 0);
		m->created = false;
	}
	return err;
}

/* A message the journal refused for want of room: said once until there is room again. */
static void
journal_full_note(struct queue *q)
{
	if (!atomic_exchange(&q->journal_full, true))
		log_info("journal: full of messages still in delivery; messages are queued "
			 "without it until they finish");
}

/* Journal's writer thread: the flush covered (or failed) the commit op's message. */
static void
journal_flushed(struct journal_wait *w)
{
	struct msg_op *op = (struct msg_op *)((char *)w - offsetof(struct msg_op, jwait));
	struct queue_msg *m = op->msg;

	if (w->err == 0) {
		m->jseg = w->seg; /* acknowledged: delivery follows the 250 */
		op->err = 0;
		util_pool_complete(m->q->pool, &op->job);
		return;
	}
	if (w->err == EAGAIN)
		journal_full_note(m->q);
	else if (w->seg == NULL)
		log_warn("%s: journal: %s; committing without it", m->id, strerror(w->err));
	/*
	 * Not in the journal: the commit goes on the way it would without one,
	 * under the same id, so that a record a failed flush may have left, should
	 * it come back after a restart, is known for the same message (its
	 * Maildir copies carry the id).
	 */
	m->no_journal = true;
	util_pool_submit(m->q->pool, &op->job);
}

/*
 * Loop, at the commit: hands a message held in memory to the journal.  True
 * when it took it: the op completes once the shared flush has made it
 * durable (journal_flushed), and its delivery follows the 250
 * (msg_deliver_later).  False when the journal cannot take it: the commit goes
 * on a worker the way it would without a journal.
 */
static bool
msg_journal(struct queue_msg *m, struct msg_op *op)
{
	struct queue *q = m->q;
	const void *parts[2] = {m->header.data, m->mem != NULL ? m->mem : ""};
	size_t lens[2] = {m->header.len, m->mem_len};
	int err;

	if (q->journal == NULL || m->no_journal || m->err != 0 || m->spilled)
		return false;
	op->jwait.done = journal_flushed;
	err = journal_append(q->journal, m->id, parts, lens, 2, &op->jwait);
	if (err == EAGAIN) {
		journal_full_note(q);
		return false;
	}
	if (err != 0) {
		log_warn("%s: journal: %s; committing without it", m->id, strerror(err));
		return false;
	}
	if (atomic_load(&q->journal_full) && atomic_exchange(&q->journal_full, false))
		log_info("journal: room again");
	return true;
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
		/* Not taken by the journal (msg_kick), or taken and not made durable there. */
		if (m->err == 0 && !m->spilled && q->direct != NULL && m->direct_ctx != NULL) {
			if (msg_deliver_direct(m)) {
				m->delivered = true;
				op->err = 0;
				break;
			}
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
	if (m->direct_ctx != NULL && m->q->direct_release != NULL)
		m->q->direct_release(m->direct_ctx);
	m->q->mem_used -= m->mem_cap;
	free(m->mem);
	buf_free(&m->header);
	free(m);
}

/* ---- the direct way after the 250: batches ------------------------------- */

/*
 * Journaled messages whose recipients are all local are delivered in
 * batches on the background workers: at most DIRECT_BATCHES at a time, each
 * taking up to DIRECT_BATCH_MAX of the messages waiting, whose copies the
 * deliverer flushes together.  When deliveries keep up, a batch holds the one
 * message that just came; under load the messages that arrive while the
 * batches run make the next ones larger, and fewer flushes carry more mail.
 */
#define DIRECT_BATCHES	 4
#define DIRECT_BATCH_MAX 16

struct direct_batch {
	struct util_pool_job job; /* first: a job is a batch */
	struct queue *q;
	size_t n;
	struct queue_msg *m[DIRECT_BATCH_MAX];
	int err[DIRECT_BATCH_MAX];
	struct queue_delivery *preloaded[DIRECT_BATCH_MAX];
};

/* Worker: k was not delivered: into the queue, or stuck (err) with the journal keeping it. */
static void
batch_spool(struct direct_batch *b, size_t k)
{
	struct queue_msg *m = b->m[k];
	struct queue *q = b->q;

	b->err[k] = msg_spool(m);
	if (b->err[k] == 0)
		b->preloaded[k] = queue_delivery_preload(q, m->id, m->header.data, m->header.len);
	else
		log_err("%s: cannot deliver or queue (%s); kept in the journal, trying again "
			"after retry_min",
			m->id, strerror(b->err[k]));
}

static void
batch_run(struct util_pool_job *job)
{
	struct direct_batch *b = (struct direct_batch *)job;
	struct queue *q = b->q;
	struct queue_file_env env[DIRECT_BATCH_MAX];
	struct queue_item items[DIRECT_BATCH_MAX];
	void *ctx[DIRECT_BATCH_MAX];
	bool parsed[DIRECT_BATCH_MAX], delivered[DIRECT_BATCH_MAX];
	size_t n = 0;

	if (atomic_load(&q->stopping)) {
		/* Stopping: the journal keeps them for the next start. */
		atomic_fetch_add(&q->left, (unsigned)b->n);
		for (size_t k = 0; k < b->n; k++)
			b->err[k] = ESHUTDOWN;
		util_pool_complete(q->pool, job);
		return;
	}
	for (size_t k = 0; k < b->n; k++) {
		parsed[k] = msg_item(b->m[k], &env[n], &items[n]) == 0;
		if (parsed[k])
			ctx[n++] = b->m[k]->direct_ctx;
	}
	if (n > 0)
		q->direct(ctx, items, n, delivered);
	for (size_t k = 0, i = 0; k < b->n; k++) {
		bool ok = parsed[k] && delivered[i];

		if (parsed[k] && !ok)
			log_queued_after_all(b->m[k], &items[i]);
		if (parsed[k])
			queue_file_env_free(&env[i++]);
		if (ok)
			b->m[k]->delivered = true;
		else
			batch_spool(b, k);
		if (b->err[k] == 0)
			journal_done(q->journal, b->m[k]->jseg, b->m[k]->id);
	}
	util_pool_complete(q->pool, job);
}

static void direct_kick(struct queue *q);
static void msg_stuck(struct queue_msg *m);

/* Loop: the batch is over; each message is delivered, queued, or stuck. */
static void
batch_done(struct util_pool_job *job)
{
	struct direct_batch *b = (struct direct_batch *)job;
	struct queue *q = b->q;

	for (size_t k = 0; k < b->n; k++) {
		if (b->preloaded[k] != NULL)
			queue_delivery_start_preloaded(q, b->preloaded[k]);
		if (b->err[k] != 0)
			msg_stuck(b->m[k]);
		else
			msg_free(b->m[k]);
	}
	q->direct_batches--;
	free(b);
	direct_kick(q);
	queue_start_due(q);
}

/* Loop: the waiting messages go out in batches, while fewer than DIRECT_BATCHES run. */
static void
direct_kick(struct queue *q)
{
	while (q->direct_head != NULL && q->direct_batches < DIRECT_BATCHES) {
		struct direct_batch *b;

		if (q->closing) {
			struct queue_msg *m = q->direct_head;

			q->direct_head = m->next_wait;
			atomic_fetch_add(&q->left, 1);
			msg_free(m); /* still in the journal: the next start queues it */
			continue;
		}
		b = xcalloc(1, sizeof(*b));
		b->job.run = batch_run;
		b->job.done = batch_done;
		b->q = q;
		while (q->direct_head != NULL && b->n < DIRECT_BATCH_MAX) {
			b->m[b->n++] = q->direct_head;
			q->direct_head = q->direct_head->next_wait;
		}
		q->direct_batches++;
		util_pool_submit_background(q->pool, &b->job);
	}
	if (q->direct_head == NULL)
		q->direct_tail = NULL;
}

/* Loop: a journaled message waits for a worker that has nothing more urgent to do. */
static void
msg_deliver_later(struct queue_msg *m)
{
	struct queue *q = m->q;

	if (q->closing) {
		atomic_fetch_add(&q->left, 1);
		msg_free(m); /* still in the journal: the next start queues it */
		return;
	}
	if (m->mem_len > 0 && m->mem_len < m->mem_cap) {
		/* Held until delivered: only what it needs. */
		m->mem = xrealloc(m->mem, m->mem_len);
		q->mem_used -= m->mem_cap - m->mem_len;
		m->mem_cap = m->mem_len;
	}
	if (q->direct == NULL || m->direct_ctx == NULL) {
		/* Not all local: the deliverer (local and relay) takes it from memory. */
		queue_schedule_journaled(q, m);
		return;
	}
	m->next_wait = NULL;
	if (q->direct_tail != NULL)
		q->direct_tail->next_wait = m;
	else
		q->direct_head = m;
	q->direct_tail = m;
	direct_kick(q);
}

const char *
queue_jmsg_header(const struct queue_msg *m, size_t *len)
{
	*len = m->header.len;
	return m->header.data;
}

const char *
queue_jmsg_body(const struct queue_msg *m, size_t *len)
{
	*len = m->mem_len;
	return m->mem != NULL ? m->mem : "";
}

void
queue_jmsg_finished(struct queue_msg *m)
{
	journal_done(m->q->journal, m->jseg, m->id);
}

int
queue_jmsg_spool(struct queue_msg *m)
{
	int err = msg_spool(m);

	if (err == 0)
		journal_done(m->q->journal, m->jseg, m->id);
	return err;
}

void
queue_jmsg_free(struct queue_msg *m)
{
	msg_free(m);
}

/* Loop: neither delivered nor queued (a full disk): tried again after retry_min. */
static void
msg_stuck(struct queue_msg *m)
{
	struct queue *q = m->q;

	if (q->closing) {
		msg_free(m);
		return;
	}
	m->retry_ms = util_now_ms() + (uint64_t)q->limits.retry_min_s * 1000;
	m->next_wait = q->stuck;
	q->stuck = m;
}

/* Loop: the stuck messages whose time has come go back to the workers. */
void
queue_stuck_retry(struct queue *q, bool all)
{
	struct queue_msg **p = &q->stuck;
	uint64_t now = util_now_ms();

	while (*p != NULL) {
		struct queue_msg *m = *p;

		if (!all && m->retry_ms > now) {
			p = &m->next_wait;
			continue;
		}
		*p = m->next_wait;
		m->next_wait = NULL;
		msg_deliver_later(m);
	}
}

long
queue_stuck_due_ms(const struct queue *q)
{
	uint64_t now = util_now_ms(), first = UINT64_MAX;

	for (const struct queue_msg *m = q->stuck; m != NULL; m = m->next_wait)
		if (m->retry_ms < first)
			first = m->retry_ms;
	if (first == UINT64_MAX)
		return -1;
	return first <= now ? 0 : (long)(first - now);
}

static void
op_done(struct util_pool_job *job)
{
	struct msg_op *op = (struct msg_op *)job;
	struct queue_msg *m = op->msg;
	struct queue *q = m->q;
	enum op_kind kind;
	int err = op->err;

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
	else if (kind == OP_COMMIT && err == 0 && m->jseg != NULL)
		msg_deliver_later(m);
	else
		msg_free(m); /* the message is delivered, queued, or aborted */
	queue_start_due(q);
}

static void
msg_kick(struct queue_msg *m)
{
	struct msg_op *op = m->ops_head;

	if (m->busy || op == NULL || m->q->closing)
		return;
	m->busy = true;
	/* The journal's writer does the disk work: no worker in between. */
	if (op->kind == OP_COMMIT && msg_journal(m, op))
		return;
	util_pool_submit(m->q->pool, &op->job);
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
queue_msg_direct_taken(const struct queue_msg *m)
{
	return m->delivered || (m->jseg != NULL && m->direct_ctx != NULL);
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
queue_set_direct(struct queue *q, queue_direct_fn fn, void (*release)(void *msg_ctx))
{
	q->direct = fn;
	q->direct_release = release;
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

/* journal_recover: a message acknowledged in the journal becomes queue/ID. */
static int
requeue_one(void *arg, const char *id, const char *data, size_t len)
{
	struct queue *q = arg;
	int fd, err = 0;

	if (faccessat(q->queue_fd, id, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		return 0; /* queued before the crash (its delivery had failed) */
	fd = openat(q->tmp_fd, id, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return errno;
	if (queue_file_write_all(fd, data, len) != 0 || fdatasync(fd) != 0)
		err = errno;
	close(fd);
	if (err == 0 && renameat(q->tmp_fd, id, q->queue_fd, id) != 0)
		err = errno;
	if (err != 0)
		unlinkat(q->tmp_fd, id, 0);
	return err;
}

/*
 * Opens the journal and turns what a crash left in it into queue files
 * (durable before the journal forgets them).  A journal that cannot be
 * read stops the start: its messages were acknowledged.
 */
static int
journal_open_recover(struct queue *q, int spool_fd, char *err, size_t err_cap)
{
	long n;

	q->journal = journal_open(spool_fd, err, err_cap);
	if (q->journal == NULL)
		return -1;
	n = journal_recover(q->journal, requeue_one, q, err, err_cap);
	if (n < 0)
		return -1;
	if (n > 0 && fsync(q->queue_fd) != 0) {
		snprintf(err, err_cap, "fsync queue: %s", strerror(errno));
		return -1;
	}
	journal_clear(q->journal);
	if (n > 0)
		log_info("queue: %ld message(s) from the journal queued", n);
	return 0;
}

/*
 * True for "ID.st" without queue/ID: the progress of a journaled message
 * whose queue file was never written, left by a crash after the message was
 * finished.  (One whose message was still in the journal has its queue file
 * again by now: journal_open_recover runs first.)
 */
static bool
status_orphaned(const struct queue *q, const char *name)
{
	char id[UTIL_ID_LEN + 1];

	if (strlen(name) != UTIL_ID_LEN + 3 || strcmp(name + UTIL_ID_LEN, ".st") != 0)
		return false;
	memcpy(id, name, UTIL_ID_LEN);
	id[UTIL_ID_LEN] = '\0';
	return util_id_valid(id) && faccessat(q->queue_fd, id, F_OK, AT_SYMLINK_NOFOLLOW) != 0 &&
	       errno == ENOENT;
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
			else if (status_orphaned(q, de->d_name))
				unlinkat(q->queue_fd, de->d_name, 0);
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
	if (q->tmp_fd < 0 || q->queue_fd < 0 || q->incoming_fd < 0) {
		close(spool_fd);
		goto fail;
	}
	/*
	 * `petrel sendmail` runs as whoever calls it (cron, a web server): any
	 * local user may pass through the spool and put files into incoming/,
	 * but not list or read them, nor remove another's (sticky); the files
	 * take the directory's group (setgid), the server's, and are readable by
	 * it (0640).  The rest of the spool stays the server's alone (0700).
	 */
	if (fchmod(spool_fd, 0711) != 0 || fchmod(q->incoming_fd, 03733) != 0)
		log_warn("%s: cannot open incoming/ to local users: %s", spool_dir,
			 strerror(errno));
	if (journal_open_recover(q, spool_fd, err, err_cap) != 0) {
		close(spool_fd);
		goto fail;
	}
	close(spool_fd);
	recover(q);
	q->pool = util_pool_new(q->limits.workers, DIRECT_BATCHES);
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
	atomic_store(&q->stopping, true);
	journal_stop(q->journal); /* commits in it finish (or go to the workers) */
	if (q->pool != NULL)
		util_pool_stop(q->pool); /* workers finish their jobs */
	if (q->pool != NULL) {
		/* Completed work is recorded (entries back in the heap) and freed below. */
		util_pool_dispatch(q->pool);
		util_pool_free(q->pool);
	}
	for (size_t i = 0; i < q->heap_len; i++) {
		struct entry *e = q->heap[i];

		if (e->jmsg != NULL) {
			atomic_fetch_add(&q->left, 1);
			msg_free(e->jmsg); /* still in the journal: the next start queues it */
		}
		if (e->jst != NULL)
			queue_file_status_free(e->jst);
		free(e->jst);
		free(e);
	}
	free(q->heap);
	direct_kick(q); /* closing: the messages still waiting for a batch are left */
	while (q->stuck != NULL) {
		struct queue_msg *m = q->stuck;

		q->stuck = m->next_wait;
		atomic_fetch_add(&q->left, 1);
		msg_free(m); /* still in the journal: the next start queues it */
	}
	if (atomic_load(&q->left) > 0)
		log_info("queue: %u message(s) left in the journal for the next start",
			 atomic_load(&q->left));
	journal_close(q->journal); /* after the workers: every mark is written */
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
	queue_stuck_retry(q, false);
	queue_start_due(q);
}

size_t
queue_length(const struct queue *q)
{
	return q->total;
}
