/*
 * queue_pool — the queue's worker threads and the road back to the event loop.
 *
 * A job runs on a worker thread; when its work is done (there or on another
 * thread, such as the commit thread) pool_complete() puts it on the
 * completion list, and pool_dispatch() runs its done function on the event
 * loop's thread.  Internal to queue/.
 */
#ifndef PETREL_QUEUE_POOL_H
#define PETREL_QUEUE_POOL_H

#include <stdbool.h>

struct pool;
struct pool_job;

typedef void (*pool_run_fn)(struct pool_job *job);  /* worker thread */
typedef void (*pool_done_fn)(struct pool_job *job); /* event loop thread */

struct pool_job {
	pool_run_fn run;
	pool_done_fn done;
	struct pool_job *next; /* owned by the pool while queued */
};

struct pool *pool_new(unsigned workers);
/* Waits for queued jobs to run, then stops the threads; completions stay for pool_dispatch(). */
void pool_stop(struct pool *p);
/* Frees a stopped pool; undispatched completions are dropped. */
void pool_free(struct pool *p);
void pool_submit(struct pool *p, struct pool_job *job);
/* Any thread: the job's work is over; its done function runs at the next pool_dispatch(). */
void pool_complete(struct pool *p, struct pool_job *job);
int pool_notify_fd(const struct pool *p);
/* Event loop thread: runs done functions of completed jobs.  Returns how many ran. */
unsigned pool_dispatch(struct pool *p);

#endif
