#include "queue/queue_journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "queue/queue_jrec.h"
#include "util/util_log.h"
#include "util/util_mem.h"

/* A segment takes no more messages past this size. */
#define SEG_MAX	     (4u << 20)
#define SEG_READ_MAX (4 * SEG_MAX + 2 * (size_t)JREC_PAYLOAD_MAX)
#define SEG_NAME_LEN JOURNAL_SEG_NAME_LEN
/*
 * Live segments at most: a segment stays while any of its messages is in
 * delivery (a relay that waits out its timeouts keeps one), so this bounds
 * the journal's disk (64 MiB); beyond it messages take the queue's way.
 */
#define SEGS_MAX  16
#define PARTS_MAX JOURNAL_PARTS_MAX

struct journal_seg {
	uint64_t seq;
	int fd;
	uint64_t len;	 /* octets written */
	uint64_t synced; /* octets on stable storage */
	bool syncing;	 /* a thread is in fdatasync for it */
	bool sealed;	 /* takes no more messages (full, or a write or flush failed) */
	int broken;	 /* errno of a failed flush: nothing unflushed can be trusted */
	size_t records, finished;
	struct journal_wait *wait_head, *wait_tail; /* written, waiting for a flush */
	struct journal_seg *next;
};

struct journal {
	pthread_mutex_t lock; /* the segments, their waiters, the spare */
	int dir_fd;
	uint64_t next_seq;
	struct journal_seg *cur;  /* where messages go; NULL until the first */
	struct journal_seg *segs; /* every live segment */
	size_t segs_len;
	struct journal_seg *dead; /* retired, to be removed by reap() */
	uint64_t *found;	  /* journal_recover: segments read, for journal_clear */
	size_t found_len;
	int spare_fd;	   /* SPARE_NAME, allocated and flushed, for the next segment; or -1 */
	bool spare_wanted; /* the writer is to make it once out of the lock */
	atomic_bool room;  /* room_update(), as of the last change under lock */
	/*
	 * The writer thread (started by the first append) and what waits for it,
	 * under a lock of their own: an append never waits behind the disk work
	 * done under lock (a new segment, a mark) — it may come from the event loop.
	 */
	pthread_mutex_t pend_lock;
	pthread_cond_t cond; /* the writer waits on it */
	pthread_t writer;
	bool writer_started;
	bool writer_idle; /* waiting on cond: the next append signals it */
	bool stopping;	  /* journal_stop: write what waits, then end */
	struct journal_wait *pend_head, *pend_tail; /* appended, not yet written */
	struct mark *marks;			    /* journal_done's, not yet written */
	size_t marks_len, marks_cap;
};

/* A "finished" mark the writer is to write: its segment by number (it may be gone by then). */
struct mark {
	uint64_t seq;
	char id[UTIL_ID_LEN];
};

/* The next segment, made ahead; not a segment's name, so recovery and readers pass it by. */
#define SPARE_NAME ".next"

static void
seg_name(char name[SEG_NAME_LEN], uint64_t seq)
{
	snprintf(name, SEG_NAME_LEN, "%016" PRIx64, seq);
}

bool
journal_seg_name(const char *name, uint64_t *seq)
{
	uint64_t v = 0;
	size_t i;

	for (i = 0; i < SEG_NAME_LEN - 1; i++) {
		char c = name[i];

		if (c >= '0' && c <= '9')
			v = (v << 4) | (uint64_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = (v << 4) | (uint64_t)(c - 'a' + 10);
		else
			return false;
	}
	if (name[i] != '\0')
		return false;
	*seq = v;
	return true;
}

struct journal *
journal_open(int spool_fd, char *err, size_t err_cap)
{
	struct journal *j;
	int fd;

	if (mkdirat(spool_fd, "journal", 0700) != 0 && errno != EEXIST) {
		snprintf(err, err_cap, "mkdir journal: %s", strerror(errno));
		return NULL;
	}
	fd = openat(spool_fd, "journal", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		snprintf(err, err_cap, "open journal: %s", strerror(errno));
		return NULL;
	}
	j = xcalloc(1, sizeof(*j));
	pthread_mutex_init(&j->lock, NULL);
	pthread_mutex_init(&j->pend_lock, NULL);
	pthread_cond_init(&j->cond, NULL);
	atomic_init(&j->room, true);
	j->dir_fd = fd;
	j->next_seq = 1;
	j->spare_fd = -1;
	unlinkat(fd, SPARE_NAME, 0); /* perhaps half made when petrel stopped */
	return j;
}

/* ---- recovery ------------------------------------------------------------- */

struct scan {
	struct jrec_ids done;
	/* the second pass */
	int (*fn)(void *arg, const char *id, const char *data, size_t len);
	void *arg;
	int err;
	long taken;
};

static bool
is_done(const struct scan *s, const char *id)
{
	for (size_t i = 0; i < s->done.len; i++)
		if (memcmp(s->done.v[i], id, UTIL_ID_LEN) == 0)
			return true;
	return false;
}

static bool
hand_back(void *arg, const struct jrec *r)
{
	struct scan *s = arg;

	if (r->type != JREC_MSG || is_done(s, r->id))
		return true;
	s->err = s->fn(s->arg, r->id, r->payload, r->len);
	if (s->err != 0)
		return false;
	s->taken++;
	return true;
}

static int
cmp_seq(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The bound (SEG_READ_MAX): SEG_MAX, one record past it, a mark for each record. */
char *
journal_seg_read(int dir_fd, const char *name, size_t *len)
{
	struct stat st;
	char *buf;
	size_t off = 0, size;
	int e, fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

	if (fd < 0)
		return NULL;
	e = fstat(fd, &st) != 0 ? errno : !S_ISREG(st.st_mode) ? EINVAL : 0;
	if (e != 0) {
		close(fd);
		errno = e;
		return NULL;
	}
	size = (uint64_t)st.st_size > SEG_READ_MAX ? SEG_READ_MAX : (size_t)st.st_size;
	buf = xmalloc(size + 1);
	while (off < size) {
		ssize_t n = read(fd, buf + off, size - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			/* Not the end of the segment: its messages must not be taken for gone. */
			e = errno;
			free(buf);
			close(fd);
			errno = e;
			return NULL;
		}
		if (n == 0)
			break; /* shorter than it was a moment ago: what is there */
		off += (size_t)n;
	}
	close(fd);
	*len = off;
	return buf;
}

long
journal_recover(struct journal *j,
		int (*fn)(void *arg, const char *id, const char *data, size_t len), void *arg,
		char *err, size_t err_cap)
{
	DIR *d = fdopendir(dup(j->dir_fd));
	struct dirent *de;
	struct scan s = {0};
	size_t cap = 0;

	if (d == NULL) {
		snprintf(err, err_cap, "journal: %s", strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		uint64_t seq;

		if (!journal_seg_name(de->d_name, &seq))
			continue;
		if (j->found_len == cap) {
			cap = cap ? 2 * cap : 16;
			j->found = xrealloc(j->found, cap * sizeof(*j->found));
		}
		j->found[j->found_len++] = seq;
	}
	closedir(d);
	if (j->found_len > 1)
		qsort(j->found, j->found_len, sizeof(*j->found), cmp_seq);
	s.fn = fn;
	s.arg = arg;
	for (size_t i = 0; i < j->found_len; i++) {
		char name[SEG_NAME_LEN], *buf;
		size_t len = 0, whole;

		seg_name(name, j->found[i]);
		if (j->found[i] >= j->next_seq)
			j->next_seq = j->found[i] + 1;
		buf = journal_seg_read(j->dir_fd, name, &len);
		if (buf == NULL) {
			snprintf(err, err_cap, "journal/%s: %s", name, strerror(errno));
			free(s.done.v);
			return -1;
		}
		s.done.len = 0;
		whole = jrec_scan(buf, len, jrec_collect_done, &s.done);
		/* The zeros of a segment's allocated room (seg_prefill) are no torn write. */
		while (len > whole && buf[len - 1] == '\0')
			len--;
		if (whole < len)
			log_warn("journal/%s: %zu octet(s) after the last whole record ignored (a "
				 "write a crash cut short is never acknowledged)",
				 name, len - whole);
		jrec_scan(buf, len, hand_back, &s);
		free(buf);
		if (s.err != 0) {
			snprintf(err, err_cap, "journal/%s: %s", name, strerror(s.err));
			free(s.done.v);
			return -1;
		}
	}
	free(s.done.v);
	return s.taken;
}

void
journal_clear(struct journal *j)
{
	for (size_t i = 0; i < j->found_len; i++) {
		char name[SEG_NAME_LEN];

		seg_name(name, j->found[i]);
		if (unlinkat(j->dir_fd, name, 0) != 0 && errno != ENOENT)
			log_warn("journal/%s: %s", name, strerror(errno));
	}
	if (j->found_len > 0)
		fsync(j->dir_fd);
	free(j->found);
	j->found = NULL;
	j->found_len = 0;
}

/* ---- appending ------------------------------------------------------------ */

/* Lock held.  A sealed segment with every message finished and no flush running goes. */
static void
maybe_retire(struct journal *j, struct journal_seg *seg)
{
	struct journal_seg **p;

	if (!seg->sealed || seg->syncing || seg->finished < seg->records)
		return;
	for (p = &j->segs; *p != seg; p = &(*p)->next)
		;
	*p = seg->next;
	j->segs_len--;
	if (j->cur == seg)
		j->cur = NULL;
	/* Removed by reap(), outside the lock: no one waits behind an unlink and a flush. */
	seg->next = j->dead;
	j->dead = seg;
}

/* Lock not held: removes the retired segments, for good (a segment back after a crash
 * would bring its messages back). */
static void
reap(struct journal *j)
{
	struct journal_seg *dead;

	pthread_mutex_lock(&j->lock);
	dead = j->dead;
	j->dead = NULL;
	pthread_mutex_unlock(&j->lock);
	if (dead == NULL)
		return;
	while (dead != NULL) {
		struct journal_seg *seg = dead;
		char name[SEG_NAME_LEN];

		dead = seg->next;
		seg_name(name, seg->seq);
		close(seg->fd);
		if (unlinkat(j->dir_fd, name, 0) != 0)
			log_warn("journal/%s: cannot remove: %s", name, strerror(errno));
		free(seg);
	}
	if (fsync(j->dir_fd) != 0)
		log_warn("journal: fsync of the directory: %s", strerror(errno));
}

/*
 * A new segment has its SEG_MAX octets allocated (fallocate) and flushed
 * before it takes a message: its size and blocks are then on disk, so the
 * flush of each record no longer writes the block bitmap and the group's
 * descriptor and grows no size (an appended file's flush on ext4 without a
 * journal writes them one synchronous write after the other).  Allocated
 * blocks read as zeros, where a scan stops (queue_jrec), as at the end of a
 * file.  (Writing the zeros out saved a little more per flush but doubled
 * the journal's writes: 64 KiB messages lost more than 1 KiB ones gained.)
 * A filesystem without fallocate gets a plain file, as before.
 */
static int
seg_prefill(int fd)
{
	if (fallocate(fd, 0, 0, SEG_MAX) != 0 && errno != EOPNOTSUPP)
		return -1;
	return fdatasync(fd);
}

/* Lock held.  A new current segment, its name durable before any message goes in. */
static struct journal_seg *
seg_new(struct journal *j)
{
	struct journal_seg *seg;
	char name[SEG_NAME_LEN];
	int fd, e;

	/* The current one takes no more (full or sealed): it may go now, making room. */
	if (j->cur != NULL) {
		j->cur->sealed = true;
		maybe_retire(j, j->cur);
	}
	if (j->segs_len >= SEGS_MAX) {
		errno = EAGAIN;
		return NULL;
	}
	seg_name(name, j->next_seq);
	if (j->spare_fd >= 0 && renameat(j->dir_fd, SPARE_NAME, j->dir_fd, name) == 0) {
		fd = j->spare_fd; /* made ahead: no wait for its allocation to be flushed */
	} else {
		fd = openat(j->dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
			    0600);
		if (fd >= 0 && seg_prefill(fd) != 0) {
			e = errno;
			close(fd);
			unlinkat(j->dir_fd, name, 0);
			errno = e;
			fd = -1;
		}
		if (j->spare_fd >= 0) {
			close(j->spare_fd); /* could not be renamed: made again */
			unlinkat(j->dir_fd, SPARE_NAME, 0);
		}
	}
	j->spare_fd = -1;
	j->spare_wanted = true; /* the writer makes the next, out of the lock */
	if (fd < 0)
		return NULL;
	if (fsync(j->dir_fd) != 0) {
		e = errno;
		close(fd);
		unlinkat(j->dir_fd, name, 0);
		errno = e;
		return NULL;
	}
	seg = xcalloc(1, sizeof(*seg));
	seg->seq = j->next_seq++;
	seg->fd = fd;
	seg->next = j->segs;
	j->segs = seg;
	j->segs_len++;
	j->cur = seg;
	return seg;
}

/* Lock held.  Writes a whole record at the end of seg: 0, or an errno value. */
static int
seg_write(struct journal_seg *seg, struct iovec *iov, int iovcnt)
{
	uint64_t off = seg->len;
	size_t left = 0;

	for (int i = 0; i < iovcnt; i++)
		left += iov[i].iov_len;
	while (left > 0) {
		ssize_t n = pwritev(seg->fd, iov, iovcnt, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;

			/* Nothing may follow a torn record: cut it off, or take no more here. */
			if (ftruncate(seg->fd, (off_t)seg->len) != 0)
				seg->sealed = true;
			return e;
		}
		off += (uint64_t)n;
		left -= (size_t)n;
		while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt > 0) {
			iov->iov_base = (char *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	seg->len = off;
	return 0;
}

/*
 * Lock held.  Appends the "finished" mark of id (no flush of its own: the
 * next flush, or the one at close, takes it along).  Also after a failed
 * flush: a later flush may well succeed, and a mark that reaches the disk
 * keeps its message from coming back.
 */
static void
seg_mark(struct journal_seg *seg, const char *id)
{
	char head[JREC_HEAD_LEN];
	struct iovec iov = {head, sizeof(head)};

	jrec_head(head, JREC_DONE, id, NULL, NULL, 0);
	if (seg_write(seg, &iov, 1) != 0)
		seg->sealed = true;
}

/*
 * Lock held, after a change: whether a message now would find room (no
 * EAGAIN from seg_new), for journal_append to read without the lock.
 */
static void
room_update(struct journal *j)
{
	const struct journal_seg *c = j->cur;
	bool room;

	if (c != NULL && !c->sealed && c->len < SEG_MAX)
		room = true;
	else if (c != NULL && c->finished == c->records)
		room = j->segs_len <= SEGS_MAX; /* full and finished: it goes for the next */
	else
		room = j->segs_len < SEGS_MAX;
	atomic_store(&j->room, room);
}

/*
 * Lock held, seg->syncing set by the caller (the writer), every waiter on
 * seg written before the call.  Flushes them, the lock released meanwhile,
 * and tells them (when the flush failed, each with its error: nothing
 * unflushed is trusted) — only once the segments' bookkeeping is done and
 * the segments that went are removed, so that a caller told sees the
 * journal as the flush left it.
 */
static void
seg_flush(struct journal *j, struct journal_seg *seg)
{
	struct journal_wait *ready;
	int rc;

	pthread_mutex_unlock(&j->lock);
	rc = fdatasync(seg->fd) == 0 ? 0 : errno;
	pthread_mutex_lock(&j->lock);
	ready = seg->wait_head;
	seg->wait_head = seg->wait_tail = NULL;
	if (rc == 0) {
		seg->synced = seg->len;
	} else if (seg->broken == 0) {
		/* A failed flush may have dropped the dirty pages: trust nothing after it. */
		seg->broken = rc;
		seg->sealed = true;
		log_err("journal/%016" PRIx64 ": fdatasync: %s; its unflushed messages are "
			"committed again without the journal, and may come back from it at the "
			"next start",
			seg->seq, strerror(rc));
	}
	if (seg->broken != 0) {
		for (struct journal_wait *w = ready; w != NULL; w = w->next) {
			/*
			 * Not acknowledged here.  Marked finished, but the mark may not
			 * reach the disk either, so the record may come back after a
			 * restart: the caller keeps its id (journal_append).
			 */
			w->err = seg->broken;
			seg->finished++;
			seg_mark(seg, w->id);
		}
	}
	seg->syncing = false;
	maybe_retire(j, seg);
	room_update(j);
	pthread_mutex_unlock(&j->lock);
	reap(j);
	while (ready != NULL) {
		struct journal_wait *w = ready;

		ready = w->next; /* w may be gone once told */
		w->next = NULL;
		w->done(w);
	}
	pthread_mutex_lock(&j->lock);
}

/*
 * Lock not held: makes the spare segment a new one will be (seg_new), so
 * that no commit waits for its allocation to be flushed.  The writer, once
 * a new segment was taken.
 */
static void
spare_make(struct journal *j)
{
	int fd = openat(j->dir_fd, SPARE_NAME,
			O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);

	if (fd >= 0 && seg_prefill(fd) != 0) {
		log_warn("journal: cannot make the next segment ahead: %s", strerror(errno));
		close(fd);
		unlinkat(j->dir_fd, SPARE_NAME, 0);
		fd = -1;
	}
	pthread_mutex_lock(&j->lock);
	j->spare_fd = fd;
	pthread_mutex_unlock(&j->lock);
}

/* Lock held: the live segment numbered seq, or NULL (retired). */
static struct journal_seg *
find_seg(const struct journal *j, uint64_t seq)
{
	struct journal_seg *seg;

	for (seg = j->segs; seg != NULL && seg->seq != seq; seg = seg->next)
		;
	return seg;
}

/* Marks in one write at most. */
#define MARKS_IOV 64

/*
 * Lock held: the writer (or journal_done once it has stopped).  Writes
 * marks[0..n) at the ends of their segments, a run of one segment's in one
 * write (no flush of their own); a mark whose segment is gone (every
 * message of it finished) is not needed.
 */
static void
write_marks(struct journal *j, const struct mark *marks, size_t n)
{
	char heads[MARKS_IOV][JREC_HEAD_LEN];
	struct iovec iov[MARKS_IOV];
	size_t i = 0;

	while (i < n) {
		uint64_t seq = marks[i].seq;
		struct journal_seg *seg = find_seg(j, seq);
		int cnt = 0;

		if (seg == NULL) {
			while (i < n && marks[i].seq == seq)
				i++;
			continue;
		}
		for (; i < n && cnt < MARKS_IOV && marks[i].seq == seq; i++, cnt++) {
			char id[UTIL_ID_LEN + 1];

			memcpy(id, marks[i].id, UTIL_ID_LEN);
			id[UTIL_ID_LEN] = '\0';
			jrec_head(heads[cnt], JREC_DONE, id, NULL, NULL, 0);
			iov[cnt].iov_base = heads[cnt];
			iov[cnt].iov_len = JREC_HEAD_LEN;
		}
		if (seg_write(seg, iov, cnt) != 0)
			seg->sealed = true;
	}
}

/* Lock held: tells each of list (not written) that it failed with err. */
static void
tell_failed(struct journal *j, struct journal_wait *list, int err)
{
	room_update(j);
	pthread_mutex_unlock(&j->lock);
	while (list != NULL) {
		struct journal_wait *w = list;

		list = w->next; /* w may be gone once told */
		w->next = NULL;
		w->seg = NULL;
		w->err = err;
		w->done(w);
	}
	pthread_mutex_lock(&j->lock);
}

/* The octets of w's record. */
static size_t
rec_len(const struct journal_wait *w)
{
	size_t len = sizeof(w->head);

	for (size_t i = 0; i < w->nparts; i++)
		len += w->lens[i];
	return len;
}

/* iovecs in one write of the writer: IOV_MAX is 1024. */
#define BATCH_IOV 512

/*
 * Lock held: the writer.  Writes the records of list, as many as one write
 * takes at a time, at the end of the current segment (a new one when it is
 * full), flushes them (one fdatasync for all of them) and tells them.
 */
static void
write_batch(struct journal *j, struct journal_wait *list)
{
	while (list != NULL) {
		struct iovec iov[BATCH_IOV];
		struct journal_seg *seg = j->cur;
		struct journal_wait *w, *last = NULL;
		size_t n = 0;
		int iovcnt = 0, err;
		uint64_t end;

		if (seg == NULL || seg->sealed || seg->len >= SEG_MAX)
			seg = seg_new(j);
		if (seg == NULL) {
			tell_failed(j, list, errno);
			return;
		}
		/* The first record always; more while the iovecs last and the segment has room. */
		end = seg->len;
		for (w = list; w != NULL; w = w->next) {
			if (w != list &&
			    (iovcnt + 1 + (int)w->nparts > BATCH_IOV || end >= SEG_MAX))
				break;
			iov[iovcnt].iov_base = w->head;
			iov[iovcnt++].iov_len = sizeof(w->head);
			for (size_t i = 0; i < w->nparts; i++) {
				iov[iovcnt].iov_base = (void *)w->parts[i];
				iov[iovcnt++].iov_len = w->lens[i];
			}
			end += rec_len(w);
			w->end = end;
			w->seg = seg;
			last = w;
			n++;
		}
		w = list;
		list = last->next;
		last->next = NULL;
		err = seg_write(seg, iov, iovcnt);
		if (err != 0) {
			/* Cut off by seg_write; where that failed, the segment is sealed. */
			seg->sealed = true;
			maybe_retire(j, seg);
			tell_failed(j, w, err);
			continue;
		}
		seg->records += n;
		if (seg->wait_tail != NULL)
			seg->wait_tail->next = w;
		else
			seg->wait_head = w;
		seg->wait_tail = last;
		seg->syncing = true;
		if (j->spare_wanted) {
			/* Before the flush: the next segment is ready when these are told. */
			j->spare_wanted = false;
			pthread_mutex_unlock(&j->lock);
			spare_make(j);
			pthread_mutex_lock(&j->lock);
		}
		seg_flush(j, seg);
	}
}

/*
 * The writer thread: takes every record appended since it last looked,
 * writes them with one pwritev and flushes them with one fdatasync, so that
 * the messages of one flush are the ones that came during the one before
 * (the batch grows with the load) and an append costs its caller no system
 * call unless the writer sleeps.
 */
static void *
writer_run(void *arg)
{
	struct journal *j = arg;
	struct mark *marks = NULL; /* the writer's: swapped with j->marks */
	size_t marks_cap = 0;

	pthread_setname_np(pthread_self(), "petrel-journal");
	for (;;) {
		struct journal_wait *list;
		struct mark *m;
		size_t n, cap;

		pthread_mutex_lock(&j->pend_lock);
		while (j->pend_head == NULL && j->marks_len == 0 && !j->stopping) {
			j->writer_idle = true;
			pthread_cond_wait(&j->cond, &j->pend_lock);
		}
		j->writer_idle = false;
		list = j->pend_head;
		j->pend_head = j->pend_tail = NULL;
		m = j->marks;
		n = j->marks_len;
		cap = j->marks_cap;
		j->marks = marks;
		j->marks_cap = marks_cap;
		j->marks_len = 0;
		marks = m;
		marks_cap = cap;
		pthread_mutex_unlock(&j->pend_lock);
		if (list == NULL && n == 0)
			break; /* stopping, and nothing waits */
		pthread_mutex_lock(&j->lock);
		write_marks(j, marks, n);
		if (list != NULL)
			write_batch(j, list);
		room_update(j);
		pthread_mutex_unlock(&j->lock);
		reap(j);
	}
	free(marks);
	return NULL;
}

int
journal_append(struct journal *j, const char *id, const void *const *parts, const size_t *lens,
	       size_t nparts, struct journal_wait *w)
{
	size_t total = 0;
	bool wake;
	int err;

	if (nparts > PARTS_MAX)
		return EINVAL;
	for (size_t i = 0; i < nparts; i++) {
		w->parts[i] = parts[i];
		w->lens[i] = lens[i];
		total += lens[i];
	}
	if (total > JREC_PAYLOAD_MAX)
		return EFBIG;
	w->nparts = nparts;
	jrec_head(w->head, JREC_MSG, id, parts, lens, nparts);
	memcpy(w->id, id, UTIL_ID_LEN);
	w->id[UTIL_ID_LEN] = '\0';
	w->seg = NULL;
	w->end = 0;
	w->err = 0;
	w->next = NULL;
	pthread_mutex_lock(&j->pend_lock);
	if (j->stopping || !atomic_load(&j->room)) {
		pthread_mutex_unlock(&j->pend_lock);
		return j->stopping ? ESHUTDOWN : EAGAIN;
	}
	if (!j->writer_started) {
		err = pthread_create(&j->writer, NULL, writer_run, j);
		if (err != 0) {
			pthread_mutex_unlock(&j->pend_lock);
			return err;
		}
		j->writer_started = true;
	}
	if (j->pend_tail != NULL)
		j->pend_tail->next = w;
	else
		j->pend_head = w;
	j->pend_tail = w;
	wake = j->writer_idle;
	j->writer_idle = false;
	pthread_mutex_unlock(&j->pend_lock);
	if (wake)
		pthread_cond_signal(&j->cond);
	return 0;
}

void
journal_stop(struct journal *j)
{
	bool started;

	if (j == NULL)
		return;
	pthread_mutex_lock(&j->pend_lock);
	j->stopping = true;
	started = j->writer_started;
	j->writer_started = false;
	pthread_mutex_unlock(&j->pend_lock);
	if (!started)
		return;
	pthread_cond_signal(&j->cond);
	pthread_join(j->writer, NULL);
}

/*
 * The count goes up at once (a segment whose every message is finished goes
 * now); the mark itself is written by the writer thread with the next
 * records, so that no thread writes to the disk under the segments' lock
 * but the writer (a background worker at a low priority preempted there
 * would hold up every commit).  Once the writer has stopped, here.
 */
void
journal_done(struct journal *j, struct journal_seg *seg, const char *id)
{
	struct mark mk = {.seq = seg->seq};
	bool gone, queued = false, wake = false;

	memcpy(mk.id, id, UTIL_ID_LEN);
	pthread_mutex_lock(&j->lock);
	seg->finished++;
	gone = seg->finished == seg->records && seg->sealed;
	if (gone)
		maybe_retire(j, seg);
	room_update(j);
	pthread_mutex_unlock(&j->lock);
	if (!gone) {
		pthread_mutex_lock(&j->pend_lock);
		if (j->writer_started && !j->stopping) {
			if (j->marks_len == j->marks_cap) {
				j->marks_cap = j->marks_cap ? 2 * j->marks_cap : 64;
				j->marks = xrealloc(j->marks, j->marks_cap * sizeof(*j->marks));
			}
			j->marks[j->marks_len++] = mk;
			wake = j->writer_idle;
			j->writer_idle = false;
			queued = true;
		}
		pthread_mutex_unlock(&j->pend_lock);
		if (wake)
			pthread_cond_signal(&j->cond);
	}
	if (!gone && !queued) {
		pthread_mutex_lock(&j->lock);
		write_marks(j, &mk, 1);
		pthread_mutex_unlock(&j->lock);
	}
	reap(j);
}

void
journal_close(struct journal *j)
{
	if (j == NULL)
		return;
	journal_stop(j);
	while (j->segs != NULL) {
		struct journal_seg *seg = j->segs;

		if (seg->finished < seg->records) {
			/* Messages still owed: keep the segment, with its marks flushed. */
			if (fdatasync(seg->fd) != 0)
				log_err("journal: fdatasync: %s", strerror(errno));
			j->segs = seg->next;
			close(seg->fd);
			free(seg);
			continue;
		}
		seg->sealed = true;
		maybe_retire(j, seg);
	}
	reap(j);
	if (j->spare_fd >= 0) {
		close(j->spare_fd);
		unlinkat(j->dir_fd, SPARE_NAME, 0);
	}
	close(j->dir_fd);
	free(j->found);
	free(j->marks);
	pthread_mutex_destroy(&j->lock);
	pthread_mutex_destroy(&j->pend_lock);
	pthread_cond_destroy(&j->cond);
	free(j);
}
