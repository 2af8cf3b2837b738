/*
 * queue_journal — the spool's journal: where a small message is made
 * durable before its 250, many sessions' messages sharing one flush.
 *
 * spool/journal/ holds segments (files named by a 16-hex-digit sequence
 * number) that are only ever appended to (record format: queue_jrec.h).  An
 * append only queues the record: the journal's writer thread takes every
 * record queued since it last looked, writes them in one pwritev and flushes
 * them with one fdatasync, then tells each waiter its message is durable
 * (group commit).  Records queued during a flush go together in the next,
 * so the batch grows with the load; N concurrent messages cost one flush
 * instead of N file creations, flushes, renames and directory flushes, and
 * an append costs its caller no system call unless the writer sleeps.  Once
 * the message is delivered (or moved to a queue file) journal_done() appends
 * a "finished" mark; a segment whose every message is finished, and which
 * takes no more, is removed.
 *
 * After a crash, journal_recover() hands back every message without its
 * mark; the queue turns each into an ordinary queue file (delivered as a
 * recovered message: a copy a crash left in a Maildir is found, not made
 * twice).  Marks are written without a flush of their own: a mark lost in a
 * crash only means a recovered message is looked for in its Maildirs again.
 *
 * Threads: journal_append and journal_done from any thread; open, recover,
 * clear, stop and close from one thread while no other uses the journal.
 */
#ifndef PETREL_QUEUE_JOURNAL_H
#define PETREL_QUEUE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/queue_jrec.h"
#include "util/util_id.h"

struct journal;
struct journal_seg;

/* Opens (creating) spool/journal below spool_fd.  NULL with err filled on failure. */
struct journal *journal_open(int spool_fd, char *err, size_t err_cap);

/*
 * Before the first append: calls fn for every message in the segments on
 * disk that is not marked finished, oldest first; fn returns 0 or an errno
 * value, which stops the walk.  Returns how many messages fn took, or -1
 * with err filled (a segment that cannot be read, or fn's error).
 */
long journal_recover(struct journal *j,
		     int (*fn)(void *arg, const char *id, const char *data, size_t len), void *arg,
		     char *err, size_t err_cap);
/* A segment's name: 16 lower-case hex digits (and the NUL). */
#define JOURNAL_SEG_NAME_LEN 17
/* True when name is a segment's; *seq: its number. */
bool journal_seg_name(const char *name, uint64_t *seq);
/*
 * Reads segment name below dir_fd into memory (malloc'd; *len octets): the
 * whole of it, up to a bound no segment petrel writes comes near, so that a
 * stray huge file cannot take the memory.  A segment shorter than it was a
 * moment ago is read as it is now.  NULL with errno set when it cannot be
 * opened or read (EINVAL: not a regular file).  For recovery and readers
 * such as petrel queue.
 */
char *journal_seg_read(int dir_fd, const char *name, size_t *len);

/* After journal_recover's messages are durable elsewhere: removes the segments it read. */
void journal_clear(struct journal *j);

/* Parts of one message at most. */
#define JOURNAL_PARTS_MAX 4

/* A message waiting for the flush that makes it durable (the caller's memory). */
struct journal_wait {
	void (*done)(struct journal_wait *w); /* writer thread; w is the caller's again */
	int err;			      /* for done: 0, or why it is not durable */
	struct journal_seg *seg;	      /* for done: where it is (journal_done) */
	/* the journal's, from journal_append until done */
	uint64_t end;
	char id[UTIL_ID_LEN + 1];
	char head[JREC_HEAD_LEN];
	const void *parts[JOURNAL_PARTS_MAX];
	size_t lens[JOURNAL_PARTS_MAX];
	size_t nparts;
	struct journal_wait *next;
};

/*
 * Appends message id (the concatenation of parts, which stay the caller's
 * and unchanged until done runs); w->done(w) runs on the writer thread once
 * it is on stable storage (w->err 0), or once it cannot be: w->err set, an
 * errno value — EAGAIN when older segments, still holding messages in
 * delivery, fill the journal's room; for a failed write nothing of it stays;
 * for a failed flush whether the record reached the disk is unknown — it may
 * come back from journal_recover after a restart; whoever makes the message
 * durable another way keeps its id, so that a second copy is recognised.
 * Returns 0, or an errno value when the message is refused at once (done
 * does not run, and nothing of it is written): EINVAL, EFBIG, EAGAIN (no
 * room), ESHUTDOWN (after journal_stop).
 */
int journal_append(struct journal *j, const char *id, const void *const *parts, const size_t *lens,
		   size_t nparts, struct journal_wait *w);
/* Message id, appended to seg, needs the journal no more (delivered, or in a queue file). */
void journal_done(struct journal *j, struct journal_seg *seg, const char *id);

/*
 * Waits until every message appended is written and flushed (its done has
 * run), then stops the writer thread; appends are refused after.  NULL is
 * fine; so is a second call.
 */
void journal_stop(struct journal *j);
/* journal_stop, then flushes the marks, removes finished segments, frees j.  NULL is fine. */
void journal_close(struct journal *j);

#endif
