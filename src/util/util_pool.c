#include "util/util_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "util/util_log.h"
#include "util/util_mem.h"

/* The background workers' niceness (0 is the default, 19 the lowest). */
#define BG_NICE 19

/* Jobs waiting to run, and the workers that run them. */
struct lane {
	pthread_mutex_t lock; /* head, tail (one lock a lane: the lanes' workers and the
				 completions do not contend with each other) */
	struct util_pool_job *head, *tail;
	pthread_cond_t cond;
	struct util_pool *pool;
	int nice; /* the workers' niceness */
};

struct util_pool {
	struct lane lanes[2]; /* util_pool_submit, util_pool_submit_background */
	pthread_mutex_t lock; /* done_head, done_tail */
	struct util_pool_job *done_head, *done_tail; /* waiting for util_pool_dispatch */
	bool stopping;				     /* set under every lane's lock */
	unsigned nthreads;
	pthread_t *threads;
	int efd;
};

/*
 * A worker runs its lane's jobs in order.  The background lane's run at a
 * lower CPU priority, so that work someone waits on (a client's 250) goes
 * first when the CPU is short: only ever lowered, so no privilege is needed
 * and none is kept.
 */
static void *
worker(void *arg)
{
	struct lane *l = arg;
	struct util_pool *p = l->pool;

	/* Named for top -H and perf: which kind of work takes the CPU. */
	pthread_setname_np(pthread_self(), l->nice != 0 ? "petrel-bg" : "petrel-worker");
	if (l->nice != 0 && setpriority(PRIO_PROCESS, (id_t)gettid(), l->nice) != 0)
		log_warn("worker priority: %s", strerror(errno));
	for (;;) {
		struct util_pool_job *job;

		pthread_mutex_lock(&l->lock);
		while (l->head == NULL && !p->stopping)
			pthread_cond_wait(&l->cond, &l->lock);
		job = l->head;
		if (job == NULL) {
			pthread_mutex_unlock(&l->lock);
			return NULL;
		}
		l->head = job->next;
		if (l->head == NULL)
			l->tail = NULL;
		pthread_mutex_unlock(&l->lock);
		job->next = NULL;
		job->run(job);
	}
}

struct util_pool *
util_pool_new(unsigned workers, unsigned bg_workers)
{
	struct util_pool *p = xcalloc(1, sizeof(*p));

	pthread_mutex_init(&p->lock, NULL);
	for (int i = 0; i < 2; i++) {
		pthread_mutex_init(&p->lanes[i].lock, NULL);
		pthread_cond_init(&p->lanes[i].cond, NULL);
		p->lanes[i].pool = p;
	}
	p->lanes[1].nice = BG_NICE;
	p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->efd < 0)
		log_fatal("eventfd: %s", strerror(errno));
	p->threads = xcalloc(workers + bg_workers, sizeof(*p->threads));
	for (unsigned i = 0; i < workers + bg_workers; i++) {
		if (pthread_create(&p->threads[i], NULL, worker, &p->lanes[i < workers ? 0 : 1]) !=
		    0)
			log_fatal("cannot start queue worker thread");
		p->nthreads++;
	}
	return p;
}

void
util_pool_stop(struct util_pool *p)
{
	pthread_mutex_lock(&p->lanes[0].lock);
	pthread_mutex_lock(&p->lanes[1].lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->lanes[0].cond);
	pthread_cond_broadcast(&p->lanes[1].cond);
	pthread_mutex_unlock(&p->lanes[1].lock);
	pthread_mutex_unlock(&p->lanes[0].lock);
	for (unsigned i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	p->nthreads = 0;
}

void
util_pool_free(struct util_pool *p)
{
	if (p == NULL)
		return;
	util_pool_stop(p);
	free(p->threads);
	close(p->efd);
	pthread_mutex_destroy(&p->lock);
	for (int i = 0; i < 2; i++) {
		pthread_mutex_destroy(&p->lanes[i].lock);
		pthread_cond_destroy(&p->lanes[i].cond);
	}
	free(p);
}

static void
submit(struct lane *l, struct util_pool_job *job)
{
	job->next = NULL;
	pthread_mutex_lock(&l->lock);
	if (l->tail != NULL)
		l->tail->next = job;
	else
		l->head = job;
	l->tail = job;
	pthread_mutex_unlock(&l->lock);
	/* After the unlock: the worker woken does not wait for the lock at once. */
	pthread_cond_signal(&l->cond);
}

void
util_pool_submit(struct util_pool *p, struct util_pool_job *job)
{
	submit(&p->lanes[0], job);
}

void
util_pool_submit_background(struct util_pool *p, struct util_pool_job *job)
{
	submit(&p->lanes[1], job);
}

void
util_pool_complete(struct util_pool *p, struct util_pool_job *job)
{
	uint64_t one = 1;
	bool wake;

	job->next = NULL;
	pthread_mutex_lock(&p->lock);
	wake = p->done_head == NULL;
	if (p->done_tail != NULL)
		p->done_tail->next = job;
	else
		p->done_head = job;
	p->done_tail = job;
	pthread_mutex_unlock(&p->lock);
	/* Only the first completion of a batch needs to wake the loop. */
	if (wake && write(p->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_err("eventfd write: %s", strerror(errno));
}

int
util_pool_notify_fd(const struct util_pool *p)
{
	return p->efd;
}

unsigned
util_pool_dispatch(struct util_pool *p)
{
	struct util_pool_job *job;
	uint64_t count;
	unsigned n = 0;

	if (read(p->efd, &count, sizeof(count)) < 0 && errno != EAGAIN)
		log_err("eventfd read: %s", strerror(errno));
	pthread_mutex_lock(&p->lock);
	job = p->done_head;
	p->done_head = p->done_tail = NULL;
	pthread_mutex_unlock(&p->lock);
	while (job != NULL) {
		struct util_pool_job *next = job->next;
		job->done(job);
		job = next;
		n++;
	}
	return n;
}
