/*
 * Unit tests for util_dirsync: the group commit of directory flushes.
 *
 * This file defines fsync() itself, so the calls util_dirsync makes land
 * here (a definition in the executable comes before libc's): by default it
 * passes straight through to the system call, but a test can hold every
 * flush until it releases it (the gate), make one flush fail, and count the
 * flushes and the directories they were made on.  That makes the batching
 * observable: which callers one flush covered, which had to wait for the
 * next, and who receives a flush's error.
 *
 * Directories live under a mkdtemp() directory removed at the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
/* From <sanitizer/allocator_interface.h>, which not every compiler installs. */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#include "util/util_dirsync.h"

#define NTHREADS  16
#define MAX_CALLS 64

static char tmp_root[] = "/tmp/petrel-test-dirsync-XXXXXX";
#include "unit_tmpdir.h"
static unsigned dir_seq;

/* ---- the fsync() util_dirsync calls ---- */

static pthread_mutex_t fk_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fk_cond = PTHREAD_COND_INITIALIZER;
static bool fk_gate;		  /* flushes wait until released */
static unsigned fk_calls;	  /* flushes begun since fake_reset() */
static bool fk_go[MAX_CALLS];	  /* the flush with this number may finish */
static unsigned fk_inside;	  /* flushes waiting at the gate now */
static int fk_fail_call = -1;	  /* this flush fails ... */
static int fk_fail_errno;	  /* ... with this error */
static unsigned fk_gen;		  /* fake_reset() count */
static ino_t fk_ino[MAX_CALLS];	  /* the directory each flush was made on */
static bool fk_really[MAX_CALLS]; /* the flush reached the system call */

int
fsync(int fd)
{
	struct stat st;
	unsigned me, gen;
	int fail;

	pthread_mutex_lock(&fk_lock);
	me = fk_calls++;
	gen = fk_gen;
	if (me < MAX_CALLS)
		fk_ino[me] = fstat(fd, &st) == 0 ? st.st_ino : 0;
	if (fk_gate) {
		fk_inside++;
		pthread_cond_broadcast(&fk_cond);
		while (me < MAX_CALLS && !fk_go[me] && gen == fk_gen)
			pthread_cond_wait(&fk_cond, &fk_lock);
		if (gen == fk_gen)
			fk_inside--;
	}
	fail = gen == fk_gen && fk_fail_call == (int)me ? fk_fail_errno : 0;
	if (me < MAX_CALLS && gen == fk_gen)
		fk_really[me] = fail == 0;
	pthread_mutex_unlock(&fk_lock);
	if (fail != 0) {
		errno = fail;
		return -1;
	}
	return (int)syscall(SYS_fsync, fd);
}

static void
fake_reset(bool gate)
{
	pthread_mutex_lock(&fk_lock);
	fk_gen++; /* a flush still held by a failed test goes on */
	pthread_cond_broadcast(&fk_cond);
	fk_gate = gate;
	fk_calls = 0;
	memset(fk_go, 0, sizeof(fk_go));
	fk_inside = 0;
	fk_fail_call = -1;
	fk_fail_errno = 0;
	memset(fk_ino, 0, sizeof(fk_ino));
	memset(fk_really, 0, sizeof(fk_really));
	pthread_mutex_unlock(&fk_lock);
}

static unsigned
fake_calls(void)
{
	unsigned n;

	pthread_mutex_lock(&fk_lock);
	n = fk_calls;
	pthread_mutex_unlock(&fk_lock);
	return n;
}

/* Lets flushes numbered below n finish. */
static void
fake_release(unsigned n)
{
	pthread_mutex_lock(&fk_lock);
	for (unsigned i = 0; i < n && i < MAX_CALLS; i++)
		fk_go[i] = true;
	pthread_cond_broadcast(&fk_cond);
	pthread_mutex_unlock(&fk_lock);
}

/* Lets the flush numbered k finish (and no other). */
static void
fake_release_one(unsigned k)
{
	pthread_mutex_lock(&fk_lock);
	fk_go[k] = true;
	pthread_cond_broadcast(&fk_cond);
	pthread_mutex_unlock(&fk_lock);
}

/* Waits (10 s at most) until `inside` flushes wait at the gate and `calls` have begun. */
static void
fake_wait(unsigned inside, unsigned calls)
{
	struct timespec deadline;
	bool ok = true;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 10;
	pthread_mutex_lock(&fk_lock);
	while ((fk_inside != inside || fk_calls != calls) && ok)
		ok = pthread_cond_timedwait(&fk_cond, &fk_lock, &deadline) == 0;
	ok = fk_inside == inside && fk_calls == calls;
	pthread_mutex_unlock(&fk_lock);
	if (!ok)
		fail_msg("expected %u flushes begun, %u waiting; got %u, %u", calls, inside,
			 fk_calls, fk_inside);
}

/* ---- callers on their own threads ---- */

struct caller {
	pthread_t thread;
	int fd;
	atomic_bool started; /* about to call util_dirsync() */
	atomic_bool done;    /* it returned */
	int rc, err;
};

static void *
caller_main(void *arg)
{
	struct caller *c = arg;

	atomic_store(&c->started, true);
	c->rc = util_dirsync(c->fd);
	c->err = c->rc < 0 ? errno : 0;
	atomic_store(&c->done, true);
	return NULL;
}

static void
caller_start(struct caller *c, int fd)
{
	c->fd = fd;
	atomic_store(&c->started, false);
	atomic_store(&c->done, false);
	c->rc = c->err = -2;
	assert_int_equal(pthread_create(&c->thread, NULL, caller_main, c), 0);
}

static void
sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Waits until every caller has started, then a little longer: they are inside util_dirsync(). */
static void
callers_settle(struct caller *c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		while (!atomic_load(&c[i].started))
			sleep_ms(1);
	sleep_ms(300);
}

static size_t
callers_done(struct caller *c, size_t n)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		k += atomic_load(&c[i].done);
	return k;
}

/* ---- helpers ---- */

static char *
fresh_dir(void)
{
	char *p = malloc(strlen(tmp_root) + 32);

	assert_non_null(p);
	sprintf(p, "%s/d%u", tmp_root, dir_seq++);
	assert_int_equal(mkdir(p, 0700), 0);
	return p;
}

static int
open_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	assert_true(fd >= 0);
	return fd;
}

static ino_t
inode_of(int fd)
{
	struct stat st;

	assert_int_equal(fstat(fd, &st), 0);
	return st.st_ino;
}

static size_t
count_entries(const char *dir, const char *prefix)
{
	DIR *d = opendir(dir);
	const struct dirent *e;
	size_t n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL)
		if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
			n++;
	closedir(d);
	return n;
}

/* Heap in use: the sanitizer's count under ASan, malloc's otherwise. */
static size_t
heap_in_use(void)
{
#ifdef __SANITIZE_ADDRESS__
	return __sanitizer_get_current_allocated_bytes();
#else
	struct mallinfo2 mi = mallinfo2();

	return mi.uordblks + mi.hblkhd;
#endif
}

/* ---- many threads, one directory: create, rename, flush ---- */

#define FILES_PER_THREAD 25

struct renamer {
	pthread_t thread;
	unsigned id;
	const char *dir;
	int fails;
	int first_errno;
};

static void *
renamer_main(void *arg)
{
	struct renamer *r = arg;
	char tmp_dir[512], path[600], dest[600];
	int dfd = open(r->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* its own descriptor */

	snprintf(tmp_dir, sizeof(tmp_dir), "%s/tmp", r->dir);
	for (unsigned k = 0; k < FILES_PER_THREAD; k++) {
		int fd;

		snprintf(path, sizeof(path), "%s/f%02u-%03u", tmp_dir, r->id, k);
		snprintf(dest, sizeof(dest), "%s/f%02u-%03u", r->dir, r->id, k);
		fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
		if (fd < 0 || write(fd, "x\n", 2) != 2 || fdatasync(fd) != 0 || close(fd) != 0 ||
		    rename(path, dest) != 0) {
			r->fails++;
			continue;
		}
		if (util_dirsync(dfd) != 0) {
			if (r->fails++ == 0)
				r->first_errno = errno;
		}
	}
	if (dfd < 0)
		r->fails++;
	else
		close(dfd);
	return NULL;
}

static void
test_many_threads_one_directory(void **state)
{
	char *dir = fresh_dir();
	char tmp_dir[512];
	struct renamer r[NTHREADS];
	unsigned flushes;

	fake_reset(false);
	snprintf(tmp_dir, sizeof(tmp_dir), "%s/tmp", dir);
	assert_int_equal(mkdir(tmp_dir, 0700), 0);
	for (unsigned i = 0; i < NTHREADS; i++) {
		r[i] = (struct renamer){.id = i, .dir = dir};
		assert_int_equal(pthread_create(&r[i].thread, NULL, renamer_main, &r[i]), 0);
	}
	for (unsigned i = 0; i < NTHREADS; i++) {
		assert_int_equal(pthread_join(r[i].thread, NULL), 0);
		if (r[i].fails != 0)
			fail_msg("thread %u: %d failures, first %s", i, r[i].fails,
				 strerror(r[i].first_errno));
	}
	/* Every file is in the directory, none left behind in tmp/. */
	assert_int_equal(count_entries(dir, "f"), NTHREADS * FILES_PER_THREAD);
	assert_int_equal(count_entries(tmp_dir, "f"), 0);
	flushes = fake_calls();
	/* At most one flush per call; each call made or shared at least one. */
	assert_true(flushes >= 1);
	assert_true(flushes <= NTHREADS * FILES_PER_THREAD);
	free(dir);
}

/*
 * The batching itself: while a leader's flush runs, callers that come in
 * (each with its own descriptor of the directory) are not covered by it, and
 * then all of them share one next flush.
 */
static void
test_waiters_share_the_next_flush(void **state)
{
	char *dir = fresh_dir();
	struct caller leader, w[NTHREADS - 1];
	int fds[NTHREADS];

	for (size_t i = 0; i < NTHREADS; i++)
		fds[i] = open_dir(dir);
	fake_reset(true);
	caller_start(&leader, fds[0]);
	fake_wait(1, 1); /* the leader's flush is running (held at the gate) */
	for (size_t i = 0; i < NTHREADS - 1; i++)
		caller_start(&w[i], fds[i + 1]);
	callers_settle(w, NTHREADS - 1);
	/* Nobody else began a flush of the same directory meanwhile. */
	fake_wait(1, 1);
	assert_false(atomic_load(&leader.done));
	assert_int_equal(callers_done(w, NTHREADS - 1), 0);

	/* The leader's flush ends: it returns; the others need a flush that began after them. */
	fake_release(1);
	assert_int_equal(pthread_join(leader.thread, NULL), 0);
	assert_int_equal(leader.rc, 0);
	fake_wait(1, 2);
	sleep_ms(100);
	assert_int_equal(callers_done(w, NTHREADS - 1), 0);

	/* That one flush covers all of them. */
	fake_release(MAX_CALLS); /* all: a late caller must not hang the test */
	for (size_t i = 0; i < NTHREADS - 1; i++) {
		assert_int_equal(pthread_join(w[i].thread, NULL), 0);
		assert_int_equal(w[i].rc, 0);
	}
	assert_int_equal(fake_calls(), 2);
	assert_true(fk_really[0] && fk_really[1]);
	assert_true(fk_ino[0] == inode_of(fds[0]) && fk_ino[1] == inode_of(fds[0]));
	for (size_t i = 0; i < NTHREADS; i++)
		close(fds[i]);
	free(dir);
}

/* A failed flush: every caller it covered gets the error, and only those. */
static void
test_error_goes_to_every_covered_waiter(void **state)
{
	char *dir = fresh_dir();
	struct caller leader, w[NTHREADS - 1];
	int fd = open_dir(dir);

	fake_reset(true);
	pthread_mutex_lock(&fk_lock);
	fk_fail_call = 1; /* the second flush: the batch of waiters */
	fk_fail_errno = EIO;
	pthread_mutex_unlock(&fk_lock);
	caller_start(&leader, fd);
	fake_wait(1, 1);
	for (size_t i = 0; i < NTHREADS - 1; i++)
		caller_start(&w[i], fd); /* here all share one descriptor */
	callers_settle(w, NTHREADS - 1);
	fake_wait(1, 1);
	fake_release(MAX_CALLS); /* all: a late caller must not hang the test */
	assert_int_equal(pthread_join(leader.thread, NULL), 0);
	for (size_t i = 0; i < NTHREADS - 1; i++)
		assert_int_equal(pthread_join(w[i].thread, NULL), 0);
	assert_int_equal(fake_calls(), 2);
	assert_int_equal(leader.rc, 0);
	assert_int_equal(leader.err, 0);
	for (size_t i = 0; i < NTHREADS - 1; i++) {
		assert_int_equal(w[i].rc, -1);
		assert_int_equal(w[i].err, EIO);
	}

	/* The error does not stick: the next flush is a new one and succeeds. */
	fake_reset(false);
	assert_int_equal(util_dirsync(fd), 0);
	assert_int_equal(fake_calls(), 1);
	close(fd);
	free(dir);
}

/*
 * Two directories at once: a flush held on one does not hold up the other;
 * a second descriptor of the first directory is recognised as the same
 * directory (device and inode) and waits for it.
 */
static void
test_two_directories(void **state)
{
	char *dx = fresh_dir(), *dy = fresh_dir();
	int x1 = open_dir(dx), x2 = open_dir(dx), y = open_dir(dy);
	struct caller a, b, c;

	fake_reset(true);
	caller_start(&a, x1);
	fake_wait(1, 1);
	caller_start(&b, y);
	fake_wait(2, 2); /* y's flush began while x's still runs */
	caller_start(&c, x2);
	callers_settle(&c, 1);
	fake_wait(2, 2); /* x through another descriptor: waits, no flush of its own yet */
	assert_true(fk_ino[0] == inode_of(x1));
	assert_true(fk_ino[1] == inode_of(y));

	/* y finishes first even though x started earlier. */
	fake_release_one(1);
	assert_int_equal(pthread_join(b.thread, NULL), 0);
	sleep_ms(100);
	assert_false(atomic_load(&a.done));
	assert_false(atomic_load(&c.done));

	/* x's first flush ends: a returns; c needs a flush of x that began after it. */
	fake_release_one(0);
	assert_int_equal(pthread_join(a.thread, NULL), 0);
	fake_wait(1, 3);
	sleep_ms(100);
	assert_false(atomic_load(&c.done));
	fake_release_one(2);
	assert_int_equal(pthread_join(c.thread, NULL), 0);
	assert_int_equal(a.rc, 0);
	assert_int_equal(b.rc, 0);
	assert_int_equal(c.rc, 0);
	assert_int_equal(fake_calls(), 3);
	assert_true(fk_ino[2] == inode_of(x1));
	close(x1);
	close(x2);
	close(y);
	free(dx);
	free(dy);
}

/* Errors from the system: fsync of a pipe (EINVAL), a closed descriptor (EBADF). */
static void
test_system_errors(void **state)
{
	int p[2];
	int fd;
	char *dir = fresh_dir();

	fake_reset(false);
	assert_int_equal(pipe(p), 0);
	errno = 0;
	assert_int_equal(util_dirsync(p[0]), -1);
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_int_equal(util_dirsync(p[1]), -1);
	assert_int_equal(errno, EINVAL);
	close(p[0]);
	close(p[1]);

	fd = open_dir(dir);
	close(fd);
	errno = 0;
	assert_int_equal(util_dirsync(fd), -1);
	assert_int_equal(errno, EBADF);
	errno = 0;
	assert_int_equal(util_dirsync(-1), -1);
	assert_int_equal(errno, EBADF);

	/* A working directory still works after those. */
	fd = open_dir(dir);
	assert_int_equal(util_dirsync(fd), 0);
	close(fd);
	free(dir);
}

/* Many callers, several directories and failing descriptors mixed, from many threads. */
#define MIX_DIRS   3
#define MIX_ROUNDS 300

struct mixer {
	pthread_t thread;
	unsigned id;
	char **dirs;
	int bad;
};

static void *
mixer_main(void *arg)
{
	struct mixer *m = arg;
	int fds[MIX_DIRS], p[2];

	for (size_t d = 0; d < MIX_DIRS; d++)
		fds[d] = open(m->dirs[d], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (pipe(p) != 0)
		p[0] = p[1] = -1;
	for (unsigned k = 0; k < MIX_ROUNDS; k++) {
		unsigned pick = (k + m->id) % (MIX_DIRS + 1);

		if (pick == MIX_DIRS) {
			if (util_dirsync(p[0]) != -1 || errno != EINVAL)
				m->bad++;
		} else if (util_dirsync(fds[pick]) != 0) {
			m->bad++;
		}
	}
	for (size_t d = 0; d < MIX_DIRS; d++)
		close(fds[d]);
	close(p[0]);
	close(p[1]);
	return NULL;
}

static void
run_mix(char **dirs)
{
	struct mixer m[NTHREADS];

	for (unsigned i = 0; i < NTHREADS; i++) {
		m[i] = (struct mixer){.id = i, .dirs = dirs};
		assert_int_equal(pthread_create(&m[i].thread, NULL, mixer_main, &m[i]), 0);
	}
	for (unsigned i = 0; i < NTHREADS; i++) {
		assert_int_equal(pthread_join(m[i].thread, NULL), 0);
		if (m[i].bad != 0)
			fail_msg("thread %u: %d wrong results", i, m[i].bad);
	}
}

/*
 * Repeated use: the per-directory entries are freed when their last caller
 * leaves, so the heap does not grow with the number of calls or of
 * directories seen (under ASan the leak check at exit and the allocator's
 * count see the same).
 */
static void
test_repeated_use_frees_entries(void **state)
{
	enum { NDIRS = 200 };
	char *dirs[NDIRS];
	size_t before, after;

	fake_reset(false);
	for (size_t i = 0; i < NDIRS; i++)
		dirs[i] = fresh_dir();
	run_mix(dirs); /* warms up whatever the threads and stdio allocate once */

	before = heap_in_use();
	for (int round = 0; round < 5; round++)
		for (size_t i = 0; i < NDIRS; i++) {
			int fd = open_dir(dirs[i]);

			assert_int_equal(util_dirsync(fd), 0);
			close(fd);
		}
	run_mix(dirs + 3);
	run_mix(dirs + 100);
	after = heap_in_use();
	/* A kept entry costs tens of bytes: 200 directories would show thousands. */
	if (after > before + 512)
		fail_msg("heap grew by %zu bytes over %d directories", after - before, NDIRS);
	for (size_t i = 0; i < NDIRS; i++)
		free(dirs[i]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_many_threads_one_directory),
	    cmocka_unit_test(test_waiters_share_the_next_flush),
	    cmocka_unit_test(test_error_goes_to_every_covered_waiter),
	    cmocka_unit_test(test_two_directories),
	    cmocka_unit_test(test_system_errors),
	    cmocka_unit_test(test_repeated_use_frees_entries),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
