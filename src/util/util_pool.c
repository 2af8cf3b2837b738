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
#define BG_NICE 10

struct util_pool {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct util_pool_job *head, *tail;	 /* waiting to run */
	struct util_pool_job *bg_head, *bg_tail; /* background jobs waiting to run */
	pthread_cond_t bg_cond;
	struct util_pool_job *done_head, *done_tail; /* waiting for util_pool_dispatch */
	bool stopping;
	unsigned nthreads;
	pthread_t *threads;
	int efd;
};

static void *
worker(void *arg)
{
	struct util_pool *p = arg;

	for (;;) {
		struct util_pool_job *job;

		pthread_mutex_lock(&p->lock);
		while (p->head == NULL && !p->stopping)
			pthread_cond_wait(&p->cond, &p->lock);
		job = p->head;
		if (job == NULL) {
			pthread_mutex_unlock(&p->lock);
			return NULL;
		}
		p->head = job->next;
		if (p->head == NULL)
			p->tail = NULL;
		pthread_mutex_unlock(&p->lock);
		job->next = NULL;
		job->run(job);
	}
}

/*
 * A background worker: the same loop over its own list, at a lower CPU
 * priority, so that work someone waits on (a client's 250) goes first when
 * the CPU is short.  Only ever lowered: no privilege needed, none kept.
 */
static void *
bg_worker(void *arg)
{
	struct util_pool *p = arg;

	if (setpriority(PRIO_PROCESS, (id_t)gettid(), BG_NICE) != 0)
		log_warn("background worker priority: %s", strerror(errno));
	for (;;) {
		struct util_pool_job *job;

		pthread_mutex_lock(&p->lock);
		while (p->bg_head == NULL && !p->stopping)
			pthread_cond_wait(&p->bg_cond, &p->lock);
		job = p->bg_head;
		if (job == NULL) {
			pthread_mutex_unlock(&p->lock);
			return NULL;
		}
		p->bg_head = job->next;
		if (p->bg_head == NULL)
			p->bg_tail = NULL;
		pthread_mutex_unlock(&p->lock);
		job->next = NULL;
		job->run(job);
	}
}

struct util_pool *
util_pool_new(unsigned workers, unsigned bg_workers)
{
	struct util_pool *p = xcalloc(1, sizeof(*p));

	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	pthread_cond_init(&p->bg_cond, NULL);
	p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->efd < 0)
		log_fatal("eventfd: %s", strerror(errno));
	p->threads = xcalloc(workers + bg_workers, sizeof(*p->threads));
	for (unsigned i = 0; i < workers + bg_workers; i++) {
		if (pthread_create(&p->threads[i], NULL, i < workers ? worker : bg_worker, p) != 0)
			log_fatal("cannot start queue worker thread");
		p->nthreads++;
	}
	return p;
}

void
util_pool_stop(struct util_pool *p)
{
	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->cond);
	pthread_cond_broadcast(&p->bg_cond);
	pthread_mutex_unlock(&p->lock);
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
	pthread_cond_destroy(&p->cond);
	pthread_cond_destroy(&p->bg_cond);
	free(p);
}

void
util_pool_submit(struct util_pool *p, struct util_pool_job *job)
{
	job->next = NULL;
	pthread_mutex_lock(&p->lock);
	if (p->tail != NULL)
		p->tail->next = job;
	else
		p->head = job;
	p->tail = job;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

void
util_pool_submit_background(struct util_pool *p, struct util_pool_job *job)
{
	job->next = NULL;
	pthread_mutex_lock(&p->lock);
	if (p->bg_tail != NULL)
		p->bg_tail->next = job;
	else
		p->bg_head = job;
	p->bg_tail = job;
	pthread_cond_signal(&p->bg_cond);
	pthread_mutex_unlock(&p->lock);
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
