/*
 * queue_run — delivery attempts and the retry schedule.
 *
 * One attempt of one message goes through these steps:
 *   load     (worker)  open queue/ID, parse the envelope and ID.st
 *   deliver  (loop)    the deliverer decides the recipients, in its own time
 *   bounce   (worker)  when recipients failed for good: build the DSN ...
 *            (loop)    ... and queue it; its commit comes before the next step,
 *                      so a crash never loses both the message and its bounce
 *   record   (worker)  remove the files when every recipient is finished,
 *                      else rewrite ID.st
 *   (loop)   reschedule with backoff, or forget the entry.
 */
#include "queue/queue_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/queue_file.h"
#include "util/util_log.h"
#include "util/util_mem.h"
#include "util/util_time.h"

struct queue_delivery {
	struct util_pool_job job;
	struct queue *q;
	struct entry *entry;
	struct queue_file_env env;
	struct queue_file_status st;
	struct queue_item item;
	struct queue_rcpt_result *res;
	bool *failed_now; /* recipients that failed for good in this attempt */
	int fd;
	bool loaded;
	bool finished; /* every recipient done: the files are gone */
	bool jspooled; /* the journaled message is in queue/ID now (entry->jmsg goes) */
	char *bounce;  /* the DSN to queue, owned */
	size_t bounce_len;
};

/* ---- the schedule ---------------------------------------------------------- */

static void
heap_swap(struct queue *q, size_t a, size_t b)
{
	struct entry *t = q->heap[a];
	q->heap[a] = q->heap[b];
	q->heap[b] = t;
}

static void
heap_push(struct queue *q, struct entry *e)
{
	size_t i;

	if (q->heap_len == q->heap_cap) {
		q->heap_cap = q->heap_cap ? q->heap_cap * 2 : 64;
		q->heap = xrealloc(q->heap, q->heap_cap * sizeof(*q->heap));
	}
	i = q->heap_len++;
	q->heap[i] = e;
	while (i > 0 && q->heap[(i - 1) / 2]->due_ms > q->heap[i]->due_ms) {
		heap_swap(q, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static struct entry *
heap_pop(struct queue *q)
{
	struct entry *top = q->heap[0];
	size_t i = 0;

	q->heap[0] = q->heap[--q->heap_len];
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, min = i;
		if (l < q->heap_len && q->heap[l]->due_ms < q->heap[min]->due_ms)
			min = l;
		if (r < q->heap_len && q->heap[r]->due_ms < q->heap[min]->due_ms)
			min = r;
		if (min == i)
			break;
		heap_swap(q, i, min);
		i = min;
	}
	return top;
}

void
queue_schedule(struct queue *q, struct entry *e)
{
	if (e->due_ms == 0)
		e->due_ms = util_now_ms();
	heap_push(q, e);
}

/* The pause after attempt n: retry_min doubling up to retry_max, with +-10% jitter. */
static uint64_t
backoff_ms(const struct queue_limits *l, unsigned attempts)
{
	uint64_t s = l->retry_min_s;
	uint64_t ms;

	for (unsigned i = 1; i < attempts && s < l->retry_max_s; i++)
		s *= 2;
	if (s > l->retry_max_s)
		s = l->retry_max_s;
	ms = s * 1000u;
	return ms - ms / 10 + (uint64_t)random() % (ms / 5 + 1);
}

void
queue_set_retry_limits(struct queue *q, unsigned retry_min_s, unsigned retry_max_s,
		       unsigned lifetime_s)
{
	q->limits.retry_min_s = retry_min_s;
	q->limits.retry_max_s = retry_max_s;
	q->limits.lifetime_s = lifetime_s;
}

long
queue_next_due_ms(const struct queue *q)
{
	uint64_t now = util_now_ms();
	long heap_ms, stuck_ms = queue_stuck_due_ms(q);

	/* With every delivery slot taken, the next start comes from a delivery's end. */
	if (q->heap_len == 0 || q->running >= q->limits.max_deliveries)
		return stuck_ms;
	heap_ms = q->heap[0]->due_ms <= now ? 0 : (long)(q->heap[0]->due_ms - now);
	return stuck_ms >= 0 && stuck_ms < heap_ms ? stuck_ms : heap_ms;
}

void
queue_flush_all(struct queue *q)
{
	uint64_t now = util_now_ms();

	/* Equal keys keep the heap valid. */
	for (size_t i = 0; i < q->heap_len; i++)
		q->heap[i]->due_ms = now;
	queue_stuck_retry(q, true);
	queue_start_due(q);
}

void
queue_set_deliverer(struct queue *q, queue_deliver_fn fn, void *ctx)
{
	q->deliver = fn;
	q->deliver_ctx = ctx;
}

void
queue_set_bounce(struct queue *q, queue_bounce_fn fn, void *ctx)
{
	q->bounce = fn;
	q->bounce_ctx = ctx;
}

/* ---- generic blocking work ------------------------------------------------- */

struct work {
	struct util_pool_job job;
	struct queue *q;
	void (*run)(void *);
	void (*done)(void *);
	void *arg;
};

static void
work_run(struct util_pool_job *job)
{
	struct work *w = (struct work *)job;

	w->run(w->arg);
	util_pool_complete(w->q->pool, job);
}

static void
work_done(struct util_pool_job *job)
{
	struct work *w = (struct work *)job;

	w->done(w->arg);
	free(w);
}

void
queue_work(struct queue *q, void (*run)(void *), void (*done)(void *), void *arg)
{
	struct work *w = xcalloc(1, sizeof(*w));

	w->job.run = work_run;
	w->job.done = work_done;
	w->q = q;
	w->run = run;
	w->done = done;
	w->arg = arg;
	util_pool_submit(q->pool, &w->job);
}

/* ---- one attempt ------------------------------------------------------------ */

static void delivery_loaded(struct util_pool_job *job);
static void delivery_recorded(struct util_pool_job *job);
static void record_run(struct util_pool_job *job);

static void
delivery_free(struct queue_delivery *d)
{
	if (d->fd >= 0)
		close(d->fd);
	queue_file_env_free(&d->env);
	queue_file_status_free(&d->st);
	free(d->res);
	free(d->failed_now);
	free(d->bounce);
	free(d);
}

/* The progress and the item of a delivery whose envelope is parsed (body_len: after it). */
static void
delivery_fill(struct queue_delivery *d, uint64_t body_len)
{
	struct queue *q = d->q;
	struct entry *e = d->entry;
	struct queue_item *it = &d->item;

	if (e->jst != NULL) {
		/* Progress that could not be written (to queue/ID or to ID.st): kept in memory. */
		d->st = *e->jst;
		free(e->jst);
		e->jst = NULL;
	} else if (e->jmsg != NULL || (e->attempts == 0 && !e->recovered)) {
		/* Queued by this process and never attempted, or held in memory: no status file. */
		memset(&d->st, 0, sizeof(d->st));
		d->st.done = xcalloc(d->env.rcpts_len, sizeof(bool));
		d->st.failed = xcalloc(d->env.rcpts_len, sizeof(bool));
	} else if (queue_file_status_read(q->queue_fd, e->id, d->env.rcpts_len, &d->st) != 0)
		log_warn("%s: cannot read delivery status: %s", e->id, strerror(errno));
	if (d->st.attempts > e->attempts)
		e->attempts = d->st.attempts;
	memcpy(it->id, e->id, sizeof(it->id));
	it->arrival = d->env.arrival;
	it->sender = d->env.sender;
	it->rcpts_len = d->env.rcpts_len;
	it->rcpts = d->env.rcpts;
	it->orcpts = d->env.orcpts;
	it->done = d->st.done;
	it->helo = d->env.helo;
	it->client_addr = d->env.client_addr;
	it->client_name = d->env.client_name;
	it->protocol = d->env.protocol;
	it->body_8bit = d->env.body_8bit;
	it->smtputf8 = d->env.smtputf8;
	it->expanded = d->env.expanded;
	it->attempts = e->attempts;
	it->recovered = e->recovered;
	it->fd = d->fd;
	it->body_off = d->env.body_off;
	it->body_len = body_len;
	d->res = xcalloc(d->env.rcpts_len, sizeof(*d->res));
	d->failed_now = xcalloc(d->env.rcpts_len, sizeof(bool));
	d->loaded = true;
}

/* Moves queue/ID (and ID.st) to spool/corrupt/ for the administrator.  0, or -1 (errno). */
static int
move_to_corrupt(struct queue *q, const char *id)
{
	char dir[4096], path[4200], st[UTIL_ID_LEN + 8];

	snprintf(dir, sizeof(dir), "%s/corrupt", q->dir);
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return -1;
	snprintf(st, sizeof(st), "%s.st", id);
	snprintf(path, sizeof(path), "%s/%s", dir, st);
	renameat(q->queue_fd, st, AT_FDCWD, path);
	snprintf(path, sizeof(path), "%s/%s", dir, id);
	return renameat(q->queue_fd, id, AT_FDCWD, path);
}

/* Worker: read the envelope and the progress of one entry. */
static void
load_run(struct util_pool_job *job)
{
	struct queue_delivery *d = (struct queue_delivery *)job;
	struct queue *q = d->q;
	struct entry *e = d->entry;
	char err[200];
	struct stat sb;

	d->fd = openat(q->queue_fd, e->id, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (d->fd < 0) {
		/* Deleted by "petrel queue delete", or finished: forget it. */
		if (errno == ENOENT)
			d->finished = true;
		else
			log_err("%s: cannot open queue file: %s", e->id, strerror(errno));
		util_pool_complete(q->pool, job);
		return;
	}
	if (queue_file_read(d->fd, &d->env, err, sizeof(err)) != 0 || fstat(d->fd, &sb) != 0) {
		/* Retried, it would fail again at every attempt and never expire. */
		if (move_to_corrupt(q, e->id) == 0) {
			log_err("%s: unreadable queue file: %s; moved to corrupt/", e->id, err);
			d->finished = true;
		} else {
			log_err("%s: unreadable queue file: %s; left in place (corrupt/: %s)",
				e->id, err, strerror(errno));
		}
		util_pool_complete(q->pool, job);
		return;
	}
	if (d->env.id[0] != '\0' && strcmp(d->env.id, e->id) != 0) {
		/*
		 * A spare rewritten for a message whose rename was lost in a crash: that
		 * message was never acknowledged, and this one was finished before.
		 */
		char st[UTIL_ID_LEN + 8];

		log_warn("%s: queue file holds message %s (never acknowledged); removed", e->id,
			 d->env.id);
		unlinkat(q->queue_fd, e->id, 0);
		snprintf(st, sizeof(st), "%s.st", e->id);
		unlinkat(q->queue_fd, st, 0);
		d->finished = true;
		util_pool_complete(q->pool, job);
		return;
	}
	delivery_fill(d, (uint64_t)sb.st_size - (uint64_t)d->env.body_off);
	util_pool_complete(q->pool, job);
}

/* Loop: the delivery of a journaled message, from memory (no trip to a worker). */
static void
jmsg_load(struct queue_delivery *d)
{
	struct entry *e = d->entry;
	size_t hlen, blen;
	const char *h = queue_jmsg_header(e->jmsg, &hlen);
	const char *body = queue_jmsg_body(e->jmsg, &blen);
	char err[200];

	if (queue_file_parse(h, hlen, &d->env, err, sizeof(err)) != 0) {
		log_err("%s: %s", e->id, err);
		return;
	}
	d->env.body_off = 0;
	delivery_fill(d, blen);
	d->item.body_mem = body;
}

void
queue_schedule_journaled(struct queue *q, struct queue_msg *m)
{
	struct entry *e = xcalloc(1, sizeof(*e));

	memcpy(e->id, queue_msg_id(m), sizeof(e->id));
	e->jmsg = m;
	q->total++;
	queue_schedule(q, e); /* due now: queue_start_due() follows */
}

ssize_t
queue_item_read(const struct queue_item *it, void *dst, size_t len, uint64_t off)
{
	if (off >= it->body_len)
		return 0;
	if (len > it->body_len - off)
		len = (size_t)(it->body_len - off);
	if (it->body_mem != NULL) {
		memcpy(dst, it->body_mem + off, len);
		return (ssize_t)len;
	}
	return pread(it->fd, dst, len, it->body_off + (off_t)off);
}

/* Loop: the entry is back in the schedule or gone. */
static void
delivery_end(struct queue_delivery *d)
{
	struct queue *q = d->q;
	struct entry *e = d->entry;

	q->running--;
	if (e->jmsg != NULL && (d->finished || d->jspooled)) {
		queue_jmsg_free(e->jmsg);
		e->jmsg = NULL;
	}
	if (d->finished) {
		q->total--;
		if (e->jst != NULL)
			queue_file_status_free(e->jst);
		free(e->jst);
		free(e);
	} else {
		e->attempts++;
		e->recovered = false;
		e->due_ms = util_now_ms() + backoff_ms(&q->limits, e->attempts);
		heap_push(q, e);
	}
	delivery_free(d);
	queue_start_due(q);
}

static void
delivery_loaded(struct util_pool_job *job)
{
	struct queue_delivery *d = (struct queue_delivery *)job;
	struct queue *q = d->q;

	if (!d->loaded || q->deliver == NULL || q->closing) {
		delivery_end(d);
		return;
	}
	q->deliver(q->deliver_ctx, d);
}

const struct queue_item *
queue_delivery_item(const struct queue_delivery *d)
{
	return &d->item;
}

struct queue_rcpt_result *
queue_delivery_results(struct queue_delivery *d)
{
	return d->res;
}

/* Worker: the DSN for the recipients that failed now. */
static void
bounce_run(struct util_pool_job *job)
{
	struct queue_delivery *d = (struct queue_delivery *)job;

	d->bounce = d->q->bounce(d->q->bounce_ctx, &d->item, d->res, d->failed_now, &d->bounce_len);
	util_pool_complete(d->q->pool, job);
}

static void
bounce_committed(void *arg, int err)
{
	struct queue_delivery *d = arg;

	if (err != 0) {
		/* Without its bounce the failure is not recorded: the attempt is repeated. */
		log_err("%s: cannot queue the bounce: %s", d->item.id, strerror(err));
		for (size_t i = 0; i < d->item.rcpts_len; i++) {
			if (d->failed_now[i])
				d->st.done[i] = d->st.failed[i] = false;
		}
	}
	memset(d->failed_now, 0, d->item.rcpts_len * sizeof(bool));
	if (d->q->closing) {
		delivery_end(d);
		return;
	}
	d->job.run = record_run;
	d->job.done = delivery_recorded;
	util_pool_submit(d->q->pool, &d->job);
}

static void
bounce_built(struct util_pool_job *job)
{
	struct queue_delivery *d = (struct queue_delivery *)job;
	struct queue *q = d->q;
	struct queue_msg *m;
	const char *rcpts[1] = {d->item.sender};
	struct queue_envelope env = {
	    .sender = "",
	    .rcpts = rcpts,
	    .rcpts_len = 1,
	    .helo = "",
	    .client_addr = "127.0.0.1",
	    .client_name = "localhost",
	    .protocol = "local",
	};
	const char *hdr_end;

	if (d->bounce == NULL || q->closing) {
		bounce_committed(d, d->bounce == NULL ? EINVAL : ECANCELED);
		return;
	}
	/*
	 * The notification's own needs, not the original's: 8BITMIME when it
	 * holds 8-bit octets (quoted headers), SMTPUTF8 only for a UTF-8 address
	 * or header field of its own.  A bounce marked SMTPUTF8 without need is
	 * refused by servers without the extension, and a bounce is never
	 * bounced: the sender would hear nothing.
	 */
	hdr_end = memmem(d->bounce, d->bounce_len, "\r\n\r\n", 4);
	env.body_8bit = util_has_8bit(d->bounce, d->bounce_len);
	env.smtputf8 = util_has_8bit(d->item.sender, strlen(d->item.sender)) ||
		       (hdr_end != NULL && util_has_8bit(d->bounce, (size_t)(hdr_end - d->bounce)));
	m = queue_msg_new(q, &env);
	log_info("%s: sender non-delivery notification: %s", d->item.id, queue_msg_id(m));
	queue_msg_append(m, d->bounce, d->bounce_len, NULL, NULL);
	queue_msg_commit(m, bounce_committed, d);
}

/*
 * Worker: a journaled message has recipients left for later: its progress
 * and then the message itself go to queue/ (one flush of queue/ covers both
 * names; a progress file without its message is read when the journal's
 * copy is queued at the next start).  Only then does the journal forget it.
 * When that fails it stays in memory and in the journal, progress and all.
 */
/* Worker: unless err (an earlier step's) is set, a journaled message goes to queue/. */
static bool
jmsg_to_queue(struct queue_delivery *d, int err)
{
	if (err == 0)
		err = queue_jmsg_spool(d->entry->jmsg);
	if (err == 0) {
		d->jspooled = true;
		return true;
	}
	log_err("%s: cannot queue (%s); kept in the journal, trying again later", d->entry->id,
		strerror(err));
	return false;
}

static void
record_journaled(struct queue_delivery *d)
{
	struct queue *q = d->q;
	struct entry *e = d->entry;
	int err = 0;

	d->st.attempts = e->attempts + 1;
	if (queue_file_status_write(q->queue_fd, e->id, d->env.rcpts_len, &d->st) != 0)
		err = errno;
	if (jmsg_to_queue(d, err))
		return;
	e->jst = xmalloc(sizeof(*e->jst));
	*e->jst = d->st;
	memset(&d->st, 0, sizeof(d->st)); /* the entry owns it now */
}

/* Worker: remove a finished message, or record what is done. */
static void
record_run(struct util_pool_job *job)
{
	struct queue_delivery *d = (struct queue_delivery *)job;
	struct queue *q = d->q;
	bool any_left = false;

	for (size_t i = 0; i < d->env.rcpts_len; i++) {
		if (!d->st.done[i])
			any_left = true;
	}
	if (!any_left) {
		char st[UTIL_ID_LEN + 8];
		struct stat sb;

		if (d->entry->jmsg != NULL)
			queue_jmsg_finished(d->entry->jmsg);
		else
			queue_spare_put(q, d->entry->id, fstat(d->fd, &sb) == 0 ? sb.st_size : -1);
		/*
		 * A status file exists only after an attempt that left work.  Removed
		 * after the message is retired: a crash in between leaves it without
		 * its message (removed at start), never a message without its progress.
		 */
		if (d->st.attempts > 0 || d->entry->attempts > 0 || d->entry->recovered) {
			snprintf(st, sizeof(st), "%s.st", d->entry->id);
			unlinkat(q->queue_fd, st, 0);
		}
		log_info("%s: removed", d->entry->id);
		d->finished = true;
	} else if (d->entry->jmsg != NULL) {
		record_journaled(d);
	} else {
		d->st.attempts = d->entry->attempts + 1;
		if (queue_file_status_write(q->queue_fd, d->entry->id, d->env.rcpts_len, &d->st) !=
		    0) {
			/*
			 * Kept in memory for the next attempt (delivery_fill takes it
			 * first): read from the old ID.st it would send again what was
			 * sent, and bounce again what bounced, at every retry.
			 */
			log_warn("%s: cannot record delivery status: %s (kept in memory)",
				 d->entry->id, strerror(errno));
			d->entry->jst = xmalloc(sizeof(*d->entry->jst));
			*d->entry->jst = d->st;
			memset(&d->st, 0, sizeof(d->st)); /* the entry owns it now */
		}
	}
	util_pool_complete(q->pool, job);
}

static void
delivery_recorded(struct util_pool_job *job)
{
	delivery_end((struct queue_delivery *)job);
}

/* Worker: a journaled message whose header cannot be read from memory goes to queue/. */
static void
jmsg_spool_run(struct util_pool_job *job)
{
	struct queue_delivery *d = (struct queue_delivery *)job;

	jmsg_to_queue(d, 0);
	util_pool_complete(d->q->pool, job);
}

void
queue_delivery_finish(struct queue_delivery *d)
{
	struct queue *q = d->q;
	bool expired = time(NULL) - d->item.arrival >= (time_t)q->limits.lifetime_s;
	bool any_failed = false;

	if (q->closing) {
		/* Nothing is recorded: the next start repeats this attempt. */
		delivery_end(d);
		return;
	}

	for (size_t i = 0; i < d->item.rcpts_len; i++) {
		struct queue_rcpt_result *r = &d->res[i];

		if (d->st.done[i])
			continue;
		switch (r->status) {
		case QUEUE_RCPT_DONE:
			d->st.done[i] = true;
			break;
		case QUEUE_RCPT_FAIL:
			d->st.done[i] = d->st.failed[i] = true;
			d->failed_now[i] = true;
			any_failed = true;
			break;
		case QUEUE_RCPT_PENDING:
		case QUEUE_RCPT_DEFER:
			if (r->reason[0] != '\0')
				util_strlcpy(d->st.error, r->reason, sizeof(d->st.error));
			if (!expired)
				break;
			/* queue_lifetime is over: give up, and tell the sender why. */
			{
				char why[sizeof(r->reason)];
				util_strlcpy(why, r->reason[0] ? r->reason : "no attempt succeeded",
					     sizeof(why));
				snprintf(r->reason, sizeof(r->reason), QUEUE_EXPIRED_PREFIX "%.*s",
					 (int)(sizeof(why) - 40), why);
			}
			log_info("%s: to=<%s>, relay=none, delay=%.0f, status=expired (%s)",
				 d->item.id, d->item.rcpts[i],
				 difftime(time(NULL), d->item.arrival), r->reason);
			r->status = QUEUE_RCPT_FAIL;
			d->st.done[i] = d->st.failed[i] = true;
			d->failed_now[i] = true;
			any_failed = true;
			break;
		}
	}
	/* A message from <> never bounces: no loops (RFC 5321 6.1). */
	if (any_failed && q->bounce != NULL && d->item.sender[0] != '\0' && !q->closing) {
		d->job.run = bounce_run;
		d->job.done = bounce_built;
	} else {
		d->job.run = record_run;
		d->job.done = delivery_recorded;
	}
	util_pool_submit(q->pool, &d->job);
}

struct queue_delivery *
queue_delivery_preload(struct queue *q, const char *id, const char *header, size_t header_len)
{
	struct queue_delivery *d = xcalloc(1, sizeof(*d));
	struct entry *e = xcalloc(1, sizeof(*e));
	char err[200];
	struct stat sb;

	memcpy(e->id, id, sizeof(e->id));
	d->job.run = load_run;
	d->job.done = delivery_loaded;
	d->q = q;
	d->entry = e;
	d->fd = openat(q->queue_fd, id, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (d->fd >= 0 && queue_file_parse(header, header_len, &d->env, err, sizeof(err)) == 0 &&
	    fstat(d->fd, &sb) == 0)
		delivery_fill(d, (uint64_t)sb.st_size - (uint64_t)d->env.body_off);
	return d;
}

void
queue_delivery_start_preloaded(struct queue *q, struct queue_delivery *d)
{
	struct entry *e = d->entry;

	q->total++;
	if (!d->loaded || q->closing || q->running >= q->limits.max_deliveries) {
		/* Loaded again when its turn comes. */
		delivery_free(d);
		queue_schedule(q, e); /* due now */
		return;
	}
	q->running++;
	delivery_loaded(&d->job);
}

void
queue_start_due(struct queue *q)
{
	uint64_t now = util_now_ms();

	if (q->closing)
		return;
	while (q->heap_len > 0 && q->running < q->limits.max_deliveries &&
	       q->heap[0]->due_ms <= now) {
		struct queue_delivery *d = xcalloc(1, sizeof(*d));
		d->job.run = load_run;
		d->job.done = delivery_loaded;
		d->q = q;
		d->fd = -1;
		d->entry = heap_pop(q);
		q->running++;
		if (d->entry->jmsg != NULL) {
			jmsg_load(d);
			if (d->loaded) {
				delivery_loaded(&d->job);
				continue;
			}
			/* Not to be delivered from memory: queued as after a crash. */
			d->job.run = jmsg_spool_run;
			d->job.done = delivery_recorded;
		}
		util_pool_submit(q->pool, &d->job);
	}
}
