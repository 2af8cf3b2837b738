/*
 * util_pool — worker threads and the road back to the event loop.
 *
 * A job runs on a worker thread; when its work is done (there or on another
 * thread) util_pool_complete() puts it on the
 * completion list, and util_pool_dispatch() runs its done function on the event
 * loop's thread.  Used by the queue (disk work) and the relay (SMTP sessions).
 */
#ifndef PETREL_UTIL_POOL_H
#define PETREL_UTIL_POOL_H

#include <stdbool.h>

struct util_pool;
struct util_pool_job;

typedef void (*util_pool_run_fn)(struct util_pool_job *job);  /* worker thread */
typedef void (*util_pool_done_fn)(struct util_pool_job *job); /* event loop thread */

struct util_pool_job {
	util_pool_run_fn run;
	util_pool_done_fn done;
	struct util_pool_job *next; /* owned by the pool while queued */
};

/* workers threads for util_pool_submit(), bg_workers for util_pool_submit_background(). */
struct util_pool *util_pool_new(unsigned workers, unsigned bg_workers);
/* Waits for queued jobs to run, then stops the threads; completions stay for util_pool_dispatch().
 */
void util_pool_stop(struct util_pool *p);
/* Frees a stopped pool; undispatched completions are dropped. */
void util_pool_free(struct util_pool *p);
void util_pool_submit(struct util_pool *p, struct util_pool_job *job);
/*
 * Work that may wait: runs, in order, on the background workers, which run
 * at a lower CPU priority than the others.  util_pool_stop() runs these too.
 */
void util_pool_submit_background(struct util_pool *p, struct util_pool_job *job);
/* Any thread: the job's work is over; its done function runs at the next util_pool_dispatch(). */
void util_pool_complete(struct util_pool *p, struct util_pool_job *job);
int util_pool_notify_fd(const struct util_pool *p);
/* Event loop thread: runs done functions of completed jobs.  Returns how many ran. */
unsigned util_pool_dispatch(struct util_pool *p);

#endif
