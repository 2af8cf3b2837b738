#include "util/util_dirsync.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util_mem.h"

/*
 * One entry per directory with callers inside util_dirsync().  A caller puts
 * a waiter (on its own stack) on the entry's list; when no flush is running
 * it becomes the leader: takes the whole list, flushes once without the
 * lock, and marks every waiter of that list done with the flush's result.
 * Waiters that arrive during a flush form the next list and the next leader.
 */
struct waiter {
	bool done;
	int err;
	struct waiter *next;
};

struct dir_entry {
	dev_t dev;
	ino_t ino;
	unsigned users; /* callers inside util_dirsync() for this directory */
	bool running;	/* a leader is flushing */
	struct waiter *list;
	pthread_cond_t cond;
	struct dir_entry *next;
};

#define BUCKETS 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct dir_entry *table[BUCKETS];

static struct dir_entry **
slot(dev_t dev, ino_t ino)
{
	uint64_t h = ((uint64_t)ino * 0x9e3779b97f4a7c15ull) ^ (uint64_t)dev;

	return &table[(h >> 32) % BUCKETS];
}

static struct dir_entry *
entry_get(dev_t dev, ino_t ino)
{
	struct dir_entry **head = slot(dev, ino), *e;

	for (e = *head; e != NULL; e = e->next)
		if (e->dev == dev && e->ino == ino)
			return e;
	e = xcalloc(1, sizeof(*e));
	e->dev = dev;
	e->ino = ino;
	pthread_cond_init(&e->cond, NULL);
	e->next = *head;
	*head = e;
	return e;
}

static void
entry_put(struct dir_entry *e)
{
	struct dir_entry **p;

	if (--e->users > 0)
		return;
	for (p = slot(e->dev, e->ino); *p != e; p = &(*p)->next)
		;
	*p = e->next;
	pthread_cond_destroy(&e->cond);
	free(e);
}

int
util_dirsync(int dir_fd)
{
	struct waiter me = {false, 0, NULL};
	struct dir_entry *e;
	struct stat st;
	int err;

	if (fstat(dir_fd, &st) != 0)
		return -1;
	pthread_mutex_lock(&lock);
	e = entry_get(st.st_dev, st.st_ino);
	e->users++;
	me.next = e->list;
	e->list = &me;
	while (!me.done) {
		struct waiter *batch;

		if (e->running) {
			pthread_cond_wait(&e->cond, &lock);
			continue;
		}
		/* Lead: one flush for every waiter that arrived before it begins. */
		e->running = true;
		batch = e->list;
		e->list = NULL;
		pthread_mutex_unlock(&lock);
		err = fsync(dir_fd) == 0 ? 0 : errno;
		pthread_mutex_lock(&lock);
		for (struct waiter *w = batch, *next; w != NULL; w = next) {
			next = w->next; /* w may return as soon as it sees done */
			w->err = err;
			w->done = true;
		}
		e->running = false;
		pthread_cond_broadcast(&e->cond);
	}
	err = me.err;
	entry_put(e);
	pthread_mutex_unlock(&lock);
	if (err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}
