/*
 * queue_journal — the spool's journal: where a small message is made
 * durable before its 250, many sessions' messages sharing one flush.
 *
 * spool/journal/ holds segments (files named by a 16-hex-digit sequence
 * number) that are only ever appended to (record format: queue_jrec.h).  A
 * worker thread appends a message's queue-file image; the first writer to
 * find no flush running becomes the leader and flushes (fdatasync) until no
 * one waits, each flush covering every record written before it began; the
 * others leave at once and are told when their record is durable (group
 * commit).  N concurrent messages cost one flush instead of N file
 * creations, flushes, renames and directory flushes, and no thread is held
 * per waiting message.  Once the message is delivered (or moved to a queue
 * file) journal_done() appends a "finished" mark; a segment whose every
 * message is finished, and which takes no more, is removed.
 *
 * After a crash, journal_recover() hands back every message without its
 * mark; the queue turns each into an ordinary queue file (delivered as a
 * recovered message: a copy a crash left in a Maildir is found, not made
 * twice).  Marks are written without a flush of their own: a mark lost in a
 * crash only means a recovered message is looked for in its Maildirs again.
 *
 * Threads: journal_append and journal_done from any thread; open, recover,
 * clear and close from one thread while no other uses the journal.
 */
#ifndef PETREL_QUEUE_JOURNAL_H
#define PETREL_QUEUE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

/* A message waiting for the flush that makes it durable (the caller's memory). */
struct journal_wait {
	void (*done)(struct journal_wait *w); /* any thread; w is the caller's again */
	int err;			      /* for done: 0, or the flush's errno */
	struct journal_seg *seg;	      /* for done: where it is (journal_done) */
	uint64_t end;
	char id[UTIL_ID_LEN + 1];
	struct journal_wait *next;
};

/*
 * Appends message id (the concatenation of parts); w->done(w) runs once it
 * is on stable storage (w->err 0), or once that failed (w->err set: the
 * flush failed, so whether the record reached the disk is unknown — it may
 * come back from journal_recover after a restart; whoever makes the message
 * durable another way keeps its id, so that a second copy is recognised).
 * done may run on this thread before journal_append returns, or on another.
 * Returns 0, or an errno value when the message could not be written (done
 * does not run, and nothing of it stays in the journal): EAGAIN when older
 * segments, still holding messages in delivery, fill the journal's room.
 */
int journal_append(struct journal *j, const char *id, const void *const *parts, const size_t *lens,
		   size_t nparts, struct journal_wait *w);
/* Message id, appended to seg, needs the journal no more (delivered, or in a queue file). */
void journal_done(struct journal *j, struct journal_seg *seg, const char *id);

/* Flushes the marks, removes finished segments, frees j.  NULL is fine. */
void journal_close(struct journal *j);

#endif
