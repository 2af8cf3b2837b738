/*
 * queue_internal — what queue.c (receiving, recovery) and queue_run.c
 * (delivery attempts, the schedule) share.  Internal to queue/.
 */
#ifndef PETREL_QUEUE_INTERNAL_H
#define PETREL_QUEUE_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "queue/queue.h"
#include "queue/queue_file.h"
#include "util/util_pool.h"

/* A message known to the queue: acknowledged, not yet finished. */
struct entry {
	char id[UTIL_ID_LEN + 1];
	uint64_t due_ms;
	unsigned attempts;
	bool recovered;
	/*
	 * A message acknowledged in the journal and held in memory, delivered from
	 * there (no queue file) until an attempt leaves recipients for later: it is
	 * then written to queue/ID with its progress and becomes an ordinary entry.
	 */
	struct queue_msg *jmsg;
	struct queue_file_status *jst; /* its progress, when it could not be written to disk */
};

struct queue {
	char *dir;
	int tmp_fd;	 /* spool/tmp */
	int queue_fd;	 /* spool/queue */
	int incoming_fd; /* spool/incoming (petrel sendmail drops messages here) */
	bool pickup_running;
	queue_expand_fn pickup_expand;
	void *pickup_expand_arg;
	struct queue_limits limits;
	struct util_pool *pool;
	size_t mem_used; /* octets of messages held in memory while received */
	struct spares *spares;
	queue_direct_fn direct;
	void (*direct_release)(void *msg_ctx);
	struct journal *journal; /* NULL: small messages are committed without it */
	struct queue_msg *stuck; /* journaled, could be neither delivered nor queued */
	/* Journaled, all local: waiting for a batch of the direct way (queue.c). */
	struct queue_msg *direct_head, *direct_tail;
	size_t direct_batches;	  /* batches on the background workers */
	atomic_bool stopping;	  /* queue_close(): background deliveries leave their messages */
	atomic_uint left;	  /* ... in the journal, this many, for the next start */
	atomic_bool journal_full; /* the journal refused messages: logged once */
	queue_deliver_fn deliver;
	void *deliver_ctx;
	queue_bounce_fn bounce;
	void *bounce_ctx;
	/* Waiting entries, a binary min-heap on due_ms. */
	struct entry **heap;
	size_t heap_len, heap_cap;
	size_t running; /* entries being delivered */
	size_t total;	/* entries known (waiting + running) */
	bool closing;	/* no new deliveries */
};

/*
 * Finished queue files are kept as spares ("queue/.spare.N") and rewritten
 * for later messages instead of being unlinked: on a file system without a
 * journal, ext4 does not reuse an inode freed in the last minutes, and each
 * new file pays a search past every recently freed one.  Worker threads.
 */
struct spares;
struct spares *queue_spares_new(void);
void queue_spares_free(struct spares *sp);
/* Ends queue/ID (size octets): kept as a spare, or unlinked when there are enough. */
void queue_spare_put(struct queue *q, const char *id, off_t size);

/*
 * Worker, right after a commit: the delivery of the message just renamed to
 * queue/ID, loaded from the header the commit has in memory (no second trip
 * to a worker to read it).  Then, on the loop, start it (or schedule the
 * entry when deliveries are at their limit or the load failed).
 */
struct queue_delivery *queue_delivery_preload(struct queue *q, const char *id, const char *header,
					      size_t header_len);
void queue_delivery_start_preloaded(struct queue *q, struct queue_delivery *d);

/*
 * Journaled messages the deliverer takes from memory (queue.c keeps them,
 * queue_run.c schedules and delivers them).  Loop: schedule m, due now.
 */
void queue_schedule_journaled(struct queue *q, struct queue_msg *m);
const char *queue_jmsg_header(const struct queue_msg *m, size_t *len);
const char *queue_jmsg_body(const struct queue_msg *m, size_t *len);
/* Worker: every recipient is finished: the journal forgets the message. */
void queue_jmsg_finished(struct queue_msg *m);
/* Worker: queue/ID made durable (then the journal forgets it); 0 or errno. */
int queue_jmsg_spool(struct queue_msg *m);
/* Loop: the memory goes (delivered, queued, or left in the journal at a stop). */
void queue_jmsg_free(struct queue_msg *m);

/* Milliseconds until a stuck journaled message is tried again (-1: none). */
long queue_stuck_due_ms(const struct queue *q);
/* Hands the stuck messages that are due (all: every one) back to the workers. */
void queue_stuck_retry(struct queue *q, bool all);

/* Adds e to the schedule (due_ms 0: now). */
void queue_schedule(struct queue *q, struct entry *e);
/* Starts the deliveries that are due, up to max_deliveries at once. */
void queue_start_due(struct queue *q);

#endif
