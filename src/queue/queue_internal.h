/*
 * queue_internal — what queue.c (receiving, recovery) and queue_run.c
 * (delivery attempts, the schedule) share.  Internal to queue/.
 */
#ifndef PETREL_QUEUE_INTERNAL_H
#define PETREL_QUEUE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "queue/queue.h"
#include "util/util_pool.h"

/* A message known to the queue: acknowledged, not yet finished. */
struct entry {
	char id[UTIL_ID_LEN + 1];
	uint64_t due_ms;
	unsigned attempts;
	bool recovered;
};

struct queue {
	char *dir;
	int tmp_fd;	 /* spool/tmp */
	int queue_fd;	 /* spool/queue */
	int incoming_fd; /* spool/incoming (petrel sendmail drops messages here) */
	bool pickup_running;
	struct queue_limits limits;
	struct util_pool *pool;
	size_t mem_used; /* octets of messages held in memory while received */
	queue_direct_fn direct;
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

/* Adds e to the schedule (due_ms 0: now). */
void queue_schedule(struct queue *q, struct entry *e);
/* Starts the deliveries that are due, up to max_deliveries at once. */
void queue_start_due(struct queue *q);

#endif
