/*
 * Unit tests for queue_journal, the spool's journal of small messages.
 *
 * Each test gets a spool directory of its own under a mkdtemp() directory
 * (removed at the end), opens the journal there, and looks at what lands
 * on disk: segment files are read back and walked with jrec_scan, and
 * segments are written by hand to stand for what a crash leaves behind.
 *
 * This file defines fdatasync() itself, so the flushes queue_journal makes
 * land here (a definition in the executable comes before libc's): it counts
 * them, can make one of them fail, and otherwise passes straight through
 * to the system call.  The count shows the group commit at work: many
 * threads appending at once share far fewer flushes than messages.  read()
 * is defined the same way, to stand for a disk that fails while recovery
 * reads a segment back.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "queue/queue_journal.h"
#include "queue/queue_jrec.h"
#include "util/util_log.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define NAMES_MAX    64
#define WAIT_S	     10 /* a done callback that has not run by then never will */

static char tmp_root[] = "/tmp/petrel-test-journal-XXXXXX";
#include "unit_tmpdir.h"
static unsigned dir_seq;

/* ---- the fdatasync() queue_journal calls ---- */

static pthread_mutex_t fk_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned fk_calls;     /* flushes since fake_reset() */
static int fk_fail_call = -1; /* this flush fails ... */
static int fk_fail_errno;     /* ... with this error */
static unsigned fk_failed;    /* flushes made to fail */
static pthread_cond_t fk_cond = PTHREAD_COND_INITIALIZER;
static int fk_hold_call = -1; /* this flush waits for fake_release() ... */
static bool fk_holding;	      /* ... and is waiting now */

int
fdatasync(int fd)
{
	unsigned me;
	int fail;

	pthread_mutex_lock(&fk_lock);
	me = fk_calls++;
	fail = fk_fail_call == (int)me ? fk_fail_errno : 0;
	fk_failed += fail != 0;
	if (fk_hold_call == (int)me) {
		fk_holding = true;
		pthread_cond_broadcast(&fk_cond);
		while (fk_hold_call == (int)me)
			pthread_cond_wait(&fk_cond, &fk_lock);
		fk_holding = false;
	}
	pthread_mutex_unlock(&fk_lock);
	if (fail != 0) {
		errno = fail;
		return -1;
	}
	return (int)syscall(SYS_fdatasync, fd);
}

static void
fake_reset(void)
{
	pthread_mutex_lock(&fk_lock);
	fk_calls = 0;
	fk_fail_call = -1;
	fk_fail_errno = 0;
	fk_failed = 0;
	fk_hold_call = -1;
	pthread_mutex_unlock(&fk_lock);
}

static void
fake_fail(int call, int err)
{
	pthread_mutex_lock(&fk_lock);
	fk_fail_call = call;
	fk_fail_errno = err;
	pthread_mutex_unlock(&fk_lock);
}

/* The flush numbered call will wait, once it comes, until fake_release(). */
static void
fake_hold(int call)
{
	pthread_mutex_lock(&fk_lock);
	fk_hold_call = call;
	pthread_mutex_unlock(&fk_lock);
}

/* Waits (WAIT_S at most) until the held flush has come; true when it has. */
static bool
fake_held(void)
{
	struct timespec deadline;
	bool held;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += WAIT_S;
	pthread_mutex_lock(&fk_lock);
	while (!fk_holding && pthread_cond_timedwait(&fk_cond, &fk_lock, &deadline) == 0)
		;
	held = fk_holding;
	pthread_mutex_unlock(&fk_lock);
	return held;
}

static void
fake_release(void)
{
	pthread_mutex_lock(&fk_lock);
	fk_hold_call = -1;
	pthread_cond_broadcast(&fk_cond);
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

/* ---- the read() journal_recover calls ---- */

static int rd_fail_errno; /* every read() fails with this while it is not 0 */

ssize_t
read(int fd, void *buf, size_t len)
{
	if (__atomic_load_n(&rd_fail_errno, __ATOMIC_SEQ_CST) != 0) {
		errno = rd_fail_errno;
		return -1;
	}
	return (ssize_t)syscall(SYS_read, fd, buf, len);
}

/* ---- a spool directory per test ---- */

struct spool {
	char path[256];
	char jdir[300];
	int fd;
};

static void
spool_new(struct spool *s)
{
	snprintf(s->path, sizeof(s->path), "%s/spool%u", tmp_root, dir_seq++);
	snprintf(s->jdir, sizeof(s->jdir), "%s/journal", s->path);
	assert_int_equal(mkdir(s->path, 0700), 0);
	s->fd = open(s->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(s->fd >= 0);
}

static void
spool_done(struct spool *s)
{
	close(s->fd);
}

static struct journal *
open_ok(const struct spool *s)
{
	char err[256] = "";
	struct journal *j = journal_open(s->fd, err, sizeof(err));

	if (j == NULL)
		fail_msg("journal_open: %s", err);
	return j;
}

static int
cmp_name(const void *a, const void *b)
{
	return strcmp(a, b);
}

/*
 * The entries of spool/journal (but . and .., and ".next": the next
 * segment, made ahead, which holds no record), sorted; returns how many.
 */
static size_t
list_journal(const struct spool *s, char names[NAMES_MAX][64])
{
	DIR *d = opendir(s->jdir);
	const struct dirent *e;
	size_t n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
		    strcmp(e->d_name, ".next") == 0)
			continue;
		assert_true(n < NAMES_MAX);
		assert_true(strlen(e->d_name) < 64);
		strcpy(names[n++], e->d_name);
	}
	closedir(d);
	qsort(names, n, sizeof(names[0]), cmp_name);
	return n;
}

static size_t
count_journal(const struct spool *s)
{
	char names[NAMES_MAX][64];

	return list_journal(s, names);
}

static bool
journal_has(const struct spool *s, const char *name)
{
	char path[400];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", s->jdir, name);
	return stat(path, &st) == 0;
}

static char *
read_whole(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	assert_true(n >= 0);
	rewind(f);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static void
write_whole(const struct spool *s, const char *name, const void *data, size_t len)
{
	char path[400];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", s->jdir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	if (len > 0)
		assert_int_equal(write(fd, data, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

static void
make_id(char id[UTIL_ID_LEN + 1], unsigned long n)
{
	snprintf(id, UTIL_ID_LEN + 1, "%016lX", 0x5EED000000000000ul + n);
}

/* ---- records read back from a segment file ---- */

struct rec {
	enum jrec_type type;
	char id[UTIL_ID_LEN + 1];
	char *data;
	size_t len;
};

struct recs {
	struct rec *v;
	size_t n, cap;
};

static void
recs_push(struct recs *rs, enum jrec_type type, const char *id, const char *data, size_t len)
{
	if (rs->n == rs->cap) {
		rs->cap = rs->cap ? 2 * rs->cap : 64;
		rs->v = realloc(rs->v, rs->cap * sizeof(*rs->v));
		assert_non_null(rs->v);
	}
	rs->v[rs->n].type = type;
	memcpy(rs->v[rs->n].id, id, UTIL_ID_LEN + 1);
	rs->v[rs->n].data = malloc(len + 1);
	assert_non_null(rs->v[rs->n].data);
	if (len > 0)
		memcpy(rs->v[rs->n].data, data, len);
	rs->v[rs->n].len = len;
	rs->n++;
}

static void
recs_free(struct recs *rs)
{
	for (size_t i = 0; i < rs->n; i++)
		free(rs->v[i].data);
	free(rs->v);
	memset(rs, 0, sizeof(*rs));
}

static bool
recs_fn(void *arg, const struct jrec *r)
{
	recs_push(arg, r->type, r->id, r->payload, r->len);
	return true;
}

/* Every record of segment `name`; the whole file must be whole records. */
static void
scan_segment(const struct spool *s, const char *name, struct recs *rs)
{
	char path[400], *buf;
	size_t len;

	snprintf(path, sizeof(path), "%s/%s", s->jdir, name);
	buf = read_whole(path, &len);
	/* Records, then nothing but the zeros the segment was made with. */
	for (size_t off = jrec_scan(buf, len, recs_fn, rs); off < len; off++)
		assert_int_equal(buf[off], 0);
	free(buf);
}

/* A record image as queue_jrec writes it, for hand-made segments. */
static void
img_rec(char **buf, size_t *len, enum jrec_type type, const char *id, const char *data, size_t dlen)
{
	char head[JREC_HEAD_LEN];
	const void *parts[1] = {data};

	jrec_head(head, type, id, parts, &dlen, type == JREC_MSG ? 1 : 0);
	*buf = realloc(*buf, *len + JREC_HEAD_LEN + dlen);
	assert_non_null(*buf);
	memcpy(*buf + *len, head, JREC_HEAD_LEN);
	if (dlen > 0)
		memcpy(*buf + *len + JREC_HEAD_LEN, data, dlen);
	*len += JREC_HEAD_LEN + dlen;
}

/* ---- waiting for a message's flush ---- */

static pthread_mutex_t wt_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wt_cond = PTHREAD_COND_INITIALIZER;

struct waiter {
	struct journal_wait w;
	int calls; /* how many times done ran */
	int err;
	struct journal_seg *seg;
};

static void
waiter_done(struct journal_wait *w)
{
	struct waiter *x = (struct waiter *)((char *)w - offsetof(struct waiter, w));

	pthread_mutex_lock(&wt_lock);
	x->calls++;
	x->err = w->err;
	x->seg = w->seg;
	pthread_cond_broadcast(&wt_cond);
	pthread_mutex_unlock(&wt_lock);
}

static void
waiter_init(struct waiter *x)
{
	memset(x, 0, sizeof(*x));
	x->w.done = waiter_done;
	x->err = -1;
}

/* Waits (WAIT_S at most) for done to run; returns how many times it ran. */
static int
waiter_wait(struct waiter *x)
{
	struct timespec deadline;
	int calls;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += WAIT_S;
	pthread_mutex_lock(&wt_lock);
	while (x->calls == 0 && pthread_cond_timedwait(&wt_cond, &wt_lock, &deadline) == 0)
		;
	calls = x->calls;
	pthread_mutex_unlock(&wt_lock);
	return calls;
}

/* Appends a message in nparts near-equal parts and waits for its flush; returns its segment. */
static struct journal_seg *
append_parts(struct journal *j, const char *id, const char *data, size_t len, size_t nparts,
	     int want_err)
{
	struct waiter x;
	const void *parts[4];
	size_t lens[4], off = 0;

	assert_true(nparts >= 1 && nparts <= 4);
	for (size_t i = 0; i < nparts; i++) {
		size_t n = i + 1 < nparts ? len / nparts : len - off;

		parts[i] = data + off;
		lens[i] = n;
		off += n;
	}
	waiter_init(&x);
	assert_int_equal(journal_append(j, id, parts, lens, nparts, &x.w), 0);
	if (waiter_wait(&x) != 1)
		fail_msg("%s: done ran %d times", id, x.calls);
	assert_int_equal(x.err, want_err);
	assert_non_null(x.seg);
	return x.seg;
}

static struct journal_seg *
append_ok(struct journal *j, const char *id, const char *data, size_t len)
{
	return append_parts(j, id, data, len, 1, 0);
}

/* ---- what journal_recover hands back ---- */

struct took {
	struct recs got;
	size_t calls;
	size_t fail_at; /* fn returns fail_errno on this call (1-based); 0: never */
	int fail_errno;
};

static int
take(void *arg, const char *id, const char *data, size_t len)
{
	struct took *t = arg;

	t->calls++;
	if (t->calls == t->fail_at)
		return t->fail_errno;
	assert_int_equal(strlen(id), UTIL_ID_LEN);
	recs_push(&t->got, JREC_MSG, id, data, len);
	return 0;
}

static long
recover_ok(struct journal *j, struct took *t)
{
	char err[256] = "";
	long n = journal_recover(j, take, t, err, sizeof(err));

	if (n < 0)
		fail_msg("journal_recover: %s", err);
	assert_int_equal(n, t->got.n);
	return n;
}

static void
assert_took(const struct took *t, size_t i, const char *id, const char *data, size_t len)
{
	assert_true(i < t->got.n);
	assert_string_equal(t->got.v[i].id, id);
	assert_int_equal(t->got.v[i].len, len);
	assert_memory_equal(t->got.v[i].data, data, len);
}

/* ---- opening ---- */

static void
test_open_creates_directory(void **state)
{
	struct spool s;
	struct journal *j;
	struct stat st;

	spool_new(&s);
	j = open_ok(&s);
	assert_int_equal(stat(s.jdir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_int_equal(count_journal(&s), 0); /* no segment before the first message */
	journal_close(j);
	assert_int_equal(count_journal(&s), 0);

	/* Again, over the directory now there. */
	j = open_ok(&s);
	journal_close(j);
	journal_close(NULL);
	spool_done(&s);
}

static void
test_open_errors(void **state)
{
	struct spool s;
	char err[256] = "";
	char path[400];
	int fd;

	spool_new(&s);
	/* spool/journal is a file. */
	snprintf(path, sizeof(path), "%s/journal", s.path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_null(journal_open(s.fd, err, sizeof(err)));
	assert_non_null(strstr(err, "journal"));
	assert_non_null(strstr(err, strerror(ENOTDIR)));

	/* No spool at all. */
	err[0] = '\0';
	assert_null(journal_open(-1, err, sizeof(err)));
	assert_non_null(strstr(err, "journal"));
	assert_non_null(strstr(err, strerror(EBADF)));
	spool_done(&s);
}

/* ---- appending ---- */

/*
 * One message: its done runs once with err 0, the segment on disk holds
 * exactly its record, journal_done adds exactly a mark, and a segment with
 * nothing owed goes at close.
 */
static void
test_append_one(void **state)
{
	static const char msg[] = "Return-Path: <a@example.org>\r\n\r\nHello.\r\n";
	struct spool s;
	struct journal *j;
	struct journal_seg *seg;
	char names[NAMES_MAX][64], id[UTIL_ID_LEN + 1];
	struct recs rs = {0};

	spool_new(&s);
	fake_reset();
	j = open_ok(&s);
	make_id(id, 1);
	seg = append_ok(j, id, msg, sizeof(msg) - 1);
	assert_true(fake_calls() >= 1); /* made durable by a flush */

	assert_int_equal(list_journal(&s, names), 1);
	assert_string_equal(names[0], "0000000000000001");
	scan_segment(&s, names[0], &rs);
	assert_int_equal(rs.n, 1);
	assert_int_equal(rs.v[0].type, JREC_MSG);
	assert_string_equal(rs.v[0].id, id);
	assert_int_equal(rs.v[0].len, sizeof(msg) - 1);
	assert_memory_equal(rs.v[0].data, msg, sizeof(msg) - 1);
	recs_free(&rs);

	/* The mark: one more record, a head and nothing else (written by the writer). */
	journal_done(j, seg, id);
	journal_stop(j);
	scan_segment(&s, names[0], &rs);
	assert_int_equal(rs.n, 2);
	assert_int_equal(rs.v[1].type, JREC_DONE);
	assert_string_equal(rs.v[1].id, id);
	assert_int_equal(rs.v[1].len, 0);
	recs_free(&rs);
	{
		char path[400];
		struct stat st;

		snprintf(path, sizeof(path), "%s/%s", s.jdir, names[0]);
		assert_int_equal(stat(path, &st), 0);
		/* Allocated (4 MiB, reading as zeros) before the first record: no growth. */
		assert_int_equal(st.st_size, 4 << 20);
	}

	/* Still the current segment until the close, which removes it. */
	assert_int_equal(count_journal(&s), 1);
	journal_close(j);
	assert_int_equal(count_journal(&s), 0);
	spool_done(&s);
}

/* A message in up to four parts is their concatenation; more parts, or too much, is refused. */
static void
test_append_parts_and_limits(void **state)
{
	static const char msg[] = "X-Envelope: one\r\nSubject: parts\r\n\r\nbody text\r\n";
	struct spool s;
	struct journal *j;
	struct waiter x;
	char id[UTIL_ID_LEN + 1], names[NAMES_MAX][64];
	struct recs rs = {0};
	const void *parts[5] = {"a", "b", "c", "d", "e"};
	size_t lens[5] = {1, 1, 1, 1, 1};

	spool_new(&s);
	j = open_ok(&s);
	for (size_t n = 1; n <= 4; n++) {
		make_id(id, n);
		append_parts(j, id, msg, sizeof(msg) - 1, n, 0);
	}

	waiter_init(&x);
	make_id(id, 5);
	assert_int_equal(journal_append(j, id, parts, lens, 5, &x.w), EINVAL);
	{
		size_t big = (size_t)JREC_PAYLOAD_MAX + 1;
		char *data = calloc(1, big);
		const void *bparts[2] = {data, data};
		size_t blens[2] = {big - 10, 10};

		assert_non_null(data);
		assert_int_equal(journal_append(j, id, bparts, blens, 2, &x.w), EFBIG);
		free(data);
	}
	assert_int_equal(x.calls, 0); /* done does not run for a refused message */

	assert_int_equal(list_journal(&s, names), 1);
	scan_segment(&s, names[0], &rs);
	assert_int_equal(rs.n, 4); /* nothing of the refused ones */
	for (size_t i = 0; i < 4; i++) {
		make_id(id, i + 1);
		assert_int_equal(rs.v[i].type, JREC_MSG);
		assert_string_equal(rs.v[i].id, id);
		assert_int_equal(rs.v[i].len, sizeof(msg) - 1);
		assert_memory_equal(rs.v[i].data, msg, sizeof(msg) - 1);
	}
	recs_free(&rs);
	journal_close(j);
	spool_done(&s);
}

/* ---- recovery ---- */

/*
 * Messages not marked finished survive a close and come back, oldest
 * first, with their exact bytes; journal_clear then removes the segment, and
 * new messages go into a segment numbered after the recovered ones.
 */
static void
test_recover_unfinished(void **state)
{
	struct spool s;
	struct journal *j;
	struct journal_seg *seg[5];
	char ids[5][UTIL_ID_LEN + 1], data[5][80], names[NAMES_MAX][64];
	size_t lens[5];
	struct took t = {0};
	struct recs rs = {0};

	spool_new(&s);
	j = open_ok(&s);
	for (size_t i = 0; i < 5; i++) {
		make_id(ids[i], 100 + i);
		/* A header, then octets of many values (NULs among them), then CRLF. */
		lens[i] =
		    (size_t)snprintf(data[i], sizeof(data[i]), "Subject: message %zu\r\n\r\n", i);
		for (size_t k = 0; k < 10 * i; k++)
			data[i][lens[i]++] = (char)(k * 37);
		data[i][lens[i]++] = '\r';
		data[i][lens[i]++] = '\n';
		seg[i] = append_parts(j, ids[i], data[i], lens[i], 1 + i % 4, 0);
	}
	journal_done(j, seg[1], ids[1]);
	journal_done(j, seg[3], ids[3]);
	journal_close(j);

	/* On disk: the five messages and the two marks. */
	assert_int_equal(list_journal(&s, names), 1);
	assert_string_equal(names[0], "0000000000000001");
	scan_segment(&s, names[0], &rs);
	assert_int_equal(rs.n, 7);
	assert_int_equal(rs.v[5].type, JREC_DONE);
	assert_string_equal(rs.v[5].id, ids[1]);
	assert_int_equal(rs.v[6].type, JREC_DONE);
	assert_string_equal(rs.v[6].id, ids[3]);
	recs_free(&rs);

	j = open_ok(&s);
	assert_int_equal(recover_ok(j, &t), 3);
	assert_took(&t, 0, ids[0], data[0], lens[0]);
	assert_took(&t, 1, ids[2], data[2], lens[2]);
	assert_took(&t, 2, ids[4], data[4], lens[4]);
	assert_int_equal(count_journal(&s), 1); /* kept until journal_clear */
	journal_clear(j);
	assert_int_equal(count_journal(&s), 0);

	/* The next segment is numbered after the recovered one. */
	append_ok(j, ids[0], "again", 5);
	assert_int_equal(list_journal(&s, names), 1);
	assert_string_equal(names[0], "0000000000000002");
	journal_close(j);
	recs_free(&t.got);
	spool_done(&s);
}

/*
 * Segments come back in the order of their numbers, not of their names'
 * places in the directory; the records of one in file order.
 */
static void
test_recover_oldest_first(void **state)
{
	static const unsigned long seqs[] = {0x10, 0x2, 0xa, 0x1f, 0x3};
	struct spool s;
	struct journal *j;
	struct took t = {0};
	char id[UTIL_ID_LEN + 1], name[32], names[NAMES_MAX][64];

	spool_new(&s);
	j = open_ok(&s); /* creates journal/ */
	journal_close(j);
	for (size_t i = 0; i < ARRAY_LEN(seqs); i++) {
		char *buf = NULL;
		size_t len = 0;

		/* Message (seq, 0) and (seq, 1), then (seq, 2) marked finished. */
		for (unsigned k = 0; k < 3; k++) {
			char text[32];

			make_id(id, seqs[i] * 16 + k);
			snprintf(text, sizeof(text), "seg %lx msg %u", seqs[i], k);
			img_rec(&buf, &len, JREC_MSG, id, text, strlen(text));
		}
		img_rec(&buf, &len, JREC_DONE, id, NULL, 0);
		snprintf(name, sizeof(name), "%016lx", seqs[i]);
		write_whole(&s, name, buf, len);
		free(buf);
	}
	j = open_ok(&s);
	assert_int_equal(recover_ok(j, &t), 2 * ARRAY_LEN(seqs));
	{
		static const unsigned long sorted[] = {0x2, 0x3, 0xa, 0x10, 0x1f};

		for (size_t i = 0; i < ARRAY_LEN(sorted); i++)
			for (unsigned k = 0; k < 2; k++) {
				char text[32];

				make_id(id, sorted[i] * 16 + k);
				snprintf(text, sizeof(text), "seg %lx msg %u", sorted[i], k);
				assert_took(&t, 2 * i + k, id, text, strlen(text));
			}
	}
	journal_clear(j);
	assert_int_equal(count_journal(&s), 0);
	make_id(id, 1);
	append_ok(j, id, "x", 1);
	assert_int_equal(list_journal(&s, names), 1);
	assert_string_equal(names[0], "0000000000000020"); /* after 0x1f */
	journal_close(j);
	recs_free(&t.got);
	spool_done(&s);
}

/*
 * What a crash leaves: the last record cut anywhere (or zeros after the
 * last whole one).  Recovery hands back the whole records only.
 */
static void
test_recover_torn_tail(void **state)
{
	struct spool s;
	char ids[3][UTIL_ID_LEN + 1];
	char *buf = NULL;
	size_t len = 0, whole = 0;
	static const char *const texts[3] = {"first message", "second message",
					     "the third, torn by the crash"};

	spool_new(&s);
	journal_close(open_ok(&s));
	for (size_t i = 0; i < 3; i++) {
		make_id(ids[i], 7 + i);
		img_rec(&buf, &len, JREC_MSG, ids[i], texts[i], strlen(texts[i]));
		if (i == 1)
			whole = len;
	}
	for (size_t cut = whole; cut < len + 40; cut++) {
		struct journal *j;
		struct took t = {0};
		char *img = calloc(1, cut + 1); /* zeros past the end of the writes */

		assert_non_null(img);
		memcpy(img, buf, cut < len ? cut : len);
		write_whole(&s, "0000000000000005", img, cut);
		free(img);
		j = open_ok(&s);
		if (cut >= len) {
			assert_int_equal(recover_ok(j, &t), 3);
			assert_took(&t, 2, ids[2], texts[2], strlen(texts[2]));
		} else {
			assert_int_equal(recover_ok(j, &t), 2);
		}
		assert_took(&t, 0, ids[0], texts[0], strlen(texts[0]));
		assert_took(&t, 1, ids[1], texts[1], strlen(texts[1]));
		journal_close(j); /* no journal_clear: the segment stays for the next round */
		recs_free(&t.got);
	}
	free(buf);
	spool_done(&s);
}

/* Only names of 16 lower-case hex digits are segments; anything else is left alone. */
static void
test_recover_ignores_other_names(void **state)
{
	static const char *const others[] = {
	    "000000000000000A",	 /* upper case */
	    "000000000000000g",	 /* not hex */
	    "00000000000000001", /* 17 digits */
	    "000000000000001",	 /* 15 digits */
	    "0000000000000001.tmp",
	    ".0000000000000001",
	    " 000000000000001",
	    "0x00000000000001",
	    "tmp",
	};
	struct spool s;
	struct journal *j;
	struct took t = {0};
	char id[UTIL_ID_LEN + 1], *buf = NULL;
	size_t len = 0;

	spool_new(&s);
	journal_close(open_ok(&s));
	make_id(id, 42);
	img_rec(&buf, &len, JREC_MSG, id, "should not come back", 20);
	for (size_t i = 0; i < ARRAY_LEN(others); i++)
		write_whole(&s, others[i], buf, len);
	free(buf);
	buf = NULL;
	len = 0;
	make_id(id, 43);
	img_rec(&buf, &len, JREC_MSG, id, "the real one", 12);
	write_whole(&s, "00000000000000ff", buf, len);
	free(buf);

	j = open_ok(&s);
	assert_int_equal(recover_ok(j, &t), 1);
	assert_took(&t, 0, id, "the real one", 12);
	journal_clear(j);
	for (size_t i = 0; i < ARRAY_LEN(others); i++)
		if (!journal_has(&s, others[i]))
			fail_msg("%s was removed", others[i]);
	assert_false(journal_has(&s, "00000000000000ff"));
	journal_close(j);
	recs_free(&t.got);
	spool_done(&s);
}

/*
 * fn's error stops the walk: journal_recover returns -1, err names the
 * segment and the error, and fn is not called again.
 */
static void
test_recover_fn_error(void **state)
{
	struct spool s;
	struct journal *j;
	char id[UTIL_ID_LEN + 1];

	spool_new(&s);
	journal_close(open_ok(&s));
	for (unsigned seg = 1; seg <= 2; seg++) {
		char *buf = NULL, name[32];
		size_t len = 0;

		for (unsigned k = 0; k < 2; k++) {
			make_id(id, seg * 10 + k);
			img_rec(&buf, &len, JREC_MSG, id, "m", 1);
		}
		snprintf(name, sizeof(name), "%016x", seg);
		write_whole(&s, name, buf, len);
		free(buf);
	}
	for (size_t fail_at = 1; fail_at <= 4; fail_at++) {
		struct took t = {.fail_at = fail_at, .fail_errno = fail_at % 2 ? EIO : ENOSPC};
		char err[256] = "", want[64];

		j = open_ok(&s);
		assert_int_equal(journal_recover(j, take, &t, err, sizeof(err)), -1);
		assert_int_equal(t.calls, fail_at);
		assert_int_equal(t.got.n, fail_at - 1);
		snprintf(want, sizeof(want), "journal/%016zx", fail_at <= 2 ? (size_t)1 : 2);
		if (strstr(err, want) == NULL || strstr(err, strerror(t.fail_errno)) == NULL)
			fail_msg("fn failed on call %zu: err \"%s\"", fail_at, err);
		journal_close(j);
		recs_free(&t.got);
	}
	/* Nothing was lost: all four are still there. */
	{
		struct took t = {0};

		j = open_ok(&s);
		assert_int_equal(recover_ok(j, &t), 4);
		journal_close(j);
		recs_free(&t.got);
	}
	spool_done(&s);
}

/* A segment that cannot be read (here a directory) stops recovery, named in err. */
static void
test_recover_unreadable_segment(void **state)
{
	struct spool s;
	struct journal *j;
	struct took t = {0};
	char err[256] = "", path[400];

	spool_new(&s);
	journal_close(open_ok(&s));
	snprintf(path, sizeof(path), "%s/0000000000000003", s.jdir);
	assert_int_equal(mkdir(path, 0700), 0);
	j = open_ok(&s);
	assert_int_equal(journal_recover(j, take, &t, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "journal/0000000000000003"));
	assert_int_equal(t.calls, 0);
	journal_close(j);
	assert_int_equal(rmdir(path), 0);
	spool_done(&s);
}

/*
 * The disk fails while a segment is read back (EIO): that segment cannot be
 * read, so recovery must fail and name it, not hand back less than is there
 * (the queue would then journal_clear() acknowledged messages away).
 */
static void
test_recover_read_error(void **state)
{
	struct spool s;
	struct journal *j;
	struct took t = {0};
	char err[256] = "", id[UTIL_ID_LEN + 1], *buf = NULL;
	size_t len = 0;
	long n;
	bool sound;

	spool_new(&s);
	journal_close(open_ok(&s));
	make_id(id, 77);
	img_rec(&buf, &len, JREC_MSG, id, "acknowledged", 12);
	write_whole(&s, "0000000000000004", buf, len);
	free(buf);

	j = open_ok(&s);
	__atomic_store_n(&rd_fail_errno, EIO, __ATOMIC_SEQ_CST);
	n = journal_recover(j, take, &t, err, sizeof(err));
	__atomic_store_n(&rd_fail_errno, 0, __ATOMIC_SEQ_CST);
	journal_close(j);
	recs_free(&t.got);

	/* The segment itself is sound: read without the failure, its message comes back. */
	memset(&t, 0, sizeof(t));
	j = open_ok(&s);
	recover_ok(j, &t);
	journal_close(j);
	spool_done(&s);
	sound = t.got.n == 1 && strcmp(t.got.v[0].id, id) == 0;
	recs_free(&t.got);
	assert_true(sound);

	if (n != -1)
		fail_msg(
		    "a segment that could not be read: journal_recover returned %ld, err \"%s\"", n,
		    err);
	assert_non_null(strstr(err, "journal/0000000000000004"));
	assert_non_null(strstr(err, strerror(EIO)));
}

/* ---- finished segments go ---- */

/* Appends messages of 1 MiB until the journal moves to a new segment; returns how many. */
static size_t
fill_first_segment(struct journal *j, struct journal_seg **segs, char ids[][UTIL_ID_LEN + 1],
		   size_t max, const char *big, size_t big_len)
{
	for (size_t i = 0; i < max; i++) {
		make_id(ids[i], 500 + i);
		segs[i] = append_ok(j, ids[i], big, big_len);
		if (i > 0 && segs[i] != segs[0])
			return i + 1;
	}
	fail_msg("no second segment after %zu messages of %zu octets", max, big_len);
	return 0;
}

/*
 * The next segment is made ahead (".next": 4 MiB allocated, zeros) by the append
 * that took a new one, and becomes the segment after it by a rename; a
 * ".next" left by a stop is removed at open, the one unused at close.
 */
static void
test_next_segment_made_ahead(void **state)
{
	enum { MAX = 16 };
	size_t big_len = 1u << 20, n, len;
	char *big = malloc(big_len), *buf;
	struct spool s;
	struct journal *j;
	struct journal_seg *segs[MAX];
	char ids[MAX][UTIL_ID_LEN + 1], names[NAMES_MAX][64], path[400];

	assert_non_null(big);
	memset(big, 'N', big_len);
	spool_new(&s);
	j = open_ok(&s);
	snprintf(path, sizeof(path), "%s/.next", s.jdir);
	assert_false(journal_has(&s, ".next")); /* the first segment was made when needed */
	n = fill_first_segment(j, segs, ids, MAX, big, big_len);
	assert_true(journal_has(&s, ".next")); /* made by the append that took the second */
	buf = read_whole(path, &len);
	assert_int_equal(len, 4u << 20);
	for (size_t i = 0; i < len; i++)
		assert_int_equal(buf[i], 0);
	free(buf);
	/* Fill the second: the third is the spare, renamed; a new spare follows. */
	for (size_t i = n; i < MAX; i++) {
		make_id(ids[i], 700 + i);
		segs[i] = append_ok(j, ids[i], big, big_len);
		if (segs[i] != segs[n - 1])
			break;
	}
	assert_int_equal(list_journal(&s, names), 3);
	assert_string_equal(names[2], "0000000000000003");
	assert_true(journal_has(&s, ".next"));
	journal_close(j);
	assert_false(journal_has(&s, ".next"));

	write_whole(&s, ".next", "stale", 5);
	j = open_ok(&s);
	assert_false(journal_has(&s, ".next"));
	journal_close(j);
	free(big);
}

/*
 * A full segment, then every message in it marked finished: it is removed
 * at the last mark, while the current segment stays.
 */
static void
test_sealed_segment_goes_at_last_mark(void **state)
{
	enum { MAX = 16 };
	size_t big_len = 1u << 20, n;
	char *big = malloc(big_len);
	struct spool s;
	struct journal *j;
	struct journal_seg *segs[MAX];
	char ids[MAX][UTIL_ID_LEN + 1], names[NAMES_MAX][64];
	struct took t = {0};

	assert_non_null(big);
	memset(big, 'B', big_len);
	spool_new(&s);
	j = open_ok(&s);
	n = fill_first_segment(j, segs, ids, MAX, big, big_len);
	assert_true(n >= 3);
	assert_int_equal(list_journal(&s, names), 2);
	assert_string_equal(names[0], "0000000000000001");
	assert_string_equal(names[1], "0000000000000002");
	for (size_t i = 0; i + 1 < n; i++) {
		assert_true(journal_has(&s, "0000000000000001"));
		journal_done(j, segs[i], ids[i]);
	}
	assert_false(journal_has(&s, "0000000000000001"));
	assert_true(journal_has(&s, "0000000000000002"));

	/* The message owed in the second one survives the close. */
	journal_close(j);
	assert_int_equal(list_journal(&s, names), 1);
	assert_string_equal(names[0], "0000000000000002");
	j = open_ok(&s);
	assert_int_equal(recover_ok(j, &t), 1);
	assert_took(&t, 0, ids[n - 1], big, big_len);
	journal_clear(j);
	journal_close(j);
	recs_free(&t.got);
	free(big);
	spool_done(&s);
}

/*
 * Sixteen live segments (64 MiB) still owing messages: the journal refuses
 * the next message with EAGAIN and writes nothing of it; once the oldest
 * segment's message is finished it takes messages again.
 */
static void
test_full_journal_refuses_until_a_segment_goes(void **state)
{
	enum { LIVE = 16 };
	size_t big_len = JREC_PAYLOAD_MAX;
	char *big = malloc(big_len);
	struct spool s;
	struct journal *j;
	struct journal_seg *segs[LIVE];
	char ids[LIVE + 1][UTIL_ID_LEN + 1], names[NAMES_MAX][64];
	const void *parts[1];
	size_t lens[1] = {1};
	struct waiter x;

	assert_non_null(big);
	memset(big, 'F', big_len);
	spool_new(&s);
	j = open_ok(&s);
	for (size_t i = 0; i < LIVE; i++) {
		make_id(ids[i], 900 + i);
		segs[i] = append_ok(j, ids[i], big, big_len); /* one a segment: each is full */
		if (i > 0)
			assert_ptr_not_equal(segs[i], segs[i - 1]);
	}
	assert_int_equal(list_journal(&s, names), LIVE);
	make_id(ids[LIVE], 999);
	parts[0] = "x";
	waiter_init(&x);
	assert_int_equal(journal_append(j, ids[LIVE], parts, lens, 1, &x.w), EAGAIN);
	assert_int_equal(x.calls, 0);
	assert_int_equal(list_journal(&s, names), LIVE);

	/* The oldest one finished: it goes, and there is room again. */
	journal_done(j, segs[0], ids[0]);
	assert_false(journal_has(&s, "0000000000000001"));
	append_ok(j, ids[LIVE], "x", 1);
	assert_int_equal(list_journal(&s, names), LIVE);
	journal_close(j);

	/*
	 * Sixteen again, the current one full and all its messages finished: it
	 * is not current for long — a new message retires it and takes its room.
	 */
	spool_done(&s);
	spool_new(&s);
	j = open_ok(&s);
	for (size_t i = 0; i < LIVE; i++) {
		make_id(ids[i], 900 + i);
		segs[i] = append_ok(j, ids[i], big, big_len);
	}
	journal_done(j, segs[LIVE - 1], ids[LIVE - 1]);
	assert_int_equal(list_journal(&s, names), LIVE); /* current: stays for now */
	append_ok(j, ids[LIVE], "x", 1);
	assert_int_equal(list_journal(&s, names), LIVE);
	assert_false(journal_has(&s, "0000000000000010"));
	journal_close(j);
	free(big);
	spool_done(&s);
}

/*
 * Every message of a segment marked finished while it is still current:
 * it stays until it is sealed, by the move to a new segment.
 */
static void
test_finished_segment_goes_when_sealed(void **state)
{
	enum { MAX = 16 };
	size_t big_len = 1u << 20, n;
	char *big = malloc(big_len);
	struct spool s;
	struct journal *j;
	struct journal_seg *segs[MAX];
	char ids[MAX][UTIL_ID_LEN + 1], names[NAMES_MAX][64];

	assert_non_null(big);
	memset(big, 'F', big_len);
	spool_new(&s);
	j = open_ok(&s);
	/* How many messages fill a segment: learnt once, then again with marks between. */
	n = fill_first_segment(j, segs, ids, MAX, big, big_len);
	for (size_t i = 0; i < n; i++)
		journal_done(j, segs[i], ids[i]);
	journal_close(j);
	assert_int_equal(count_journal(&s), 0);

	j = open_ok(&s);
	for (size_t i = 0; i + 1 < n; i++) {
		make_id(ids[i], 900 + i);
		segs[i] = append_ok(j, ids[i], big, big_len);
		assert_true(segs[i] == segs[0]);
	}
	for (size_t i = 0; i + 1 < n; i++)
		journal_done(j, segs[i], ids[i]);
	/* All finished, but still the current segment. */
	assert_int_equal(list_journal(&s, names), 1);
	make_id(ids[n - 1], 999);
	segs[n - 1] = append_ok(j, ids[n - 1], "small", 5);
	assert_true(segs[n - 1] != segs[0]);
	assert_int_equal(list_journal(&s, names), 1);
	assert_string_equal(names[0], "0000000000000002");
	journal_done(j, segs[n - 1], ids[n - 1]);
	journal_close(j);
	assert_int_equal(count_journal(&s), 0);
	free(big);
	spool_done(&s);
}

/* ---- many threads at once ---- */

#define NTHREADS   16
#define PER_THREAD 200

struct appender {
	pthread_t thread;
	unsigned id;
	struct journal *j;
	struct waiter *w; /* PER_THREAD of them */
	int bad;	  /* appends refused, or done not run exactly once with err 0 */
	char detail[128];
};

/* Message k of thread t: a length that varies from 40 to ~4 KiB, octets that tell it apart. */
static size_t
thread_msg(char *buf, unsigned t, unsigned k)
{
	size_t len = 40 + (t * 131 + k * 37) % 4000;
	int n = snprintf(buf, len, "thread %02u message %03u\r\n", t, k);

	for (size_t i = (size_t)n; i < len; i++)
		buf[i] = (char)(t * 7 + k + i);
	return len;
}

static void *
appender_main(void *arg)
{
	struct appender *a = arg;
	char buf[4100], id[UTIL_ID_LEN + 1];

	for (unsigned k = 0; k < PER_THREAD; k++) {
		struct waiter *x = &a->w[k];
		const void *parts[2];
		size_t len = thread_msg(buf, a->id, k), lens[2] = {10, len - 10};
		int rc;

		make_id(id, a->id * 1000ul + k);
		parts[0] = buf;
		parts[1] = buf + 10;
		waiter_init(x);
		rc = journal_append(a->j, id, parts, lens, 2, &x->w);
		if (rc != 0) {
			snprintf(a->detail, sizeof(a->detail), "message %u: %s", k, strerror(rc));
			a->bad++;
			continue;
		}
		/* Like a session, one message at a time: the next after this one's flush. */
		if (waiter_wait(x) != 1 || x->err != 0 || x->seg == NULL) {
			snprintf(a->detail, sizeof(a->detail),
				 "message %u: done ran %d times, err %d", k, x->calls, x->err);
			a->bad++;
			break; /* one wait of WAIT_S is enough: the test fails anyway */
		}
		/* Every other message is delivered at once: its mark goes in among the appends. */
		if (k % 2 == 0)
			journal_done(a->j, x->seg, id);
	}
	return NULL;
}

static void
test_many_threads(void **state)
{
	struct spool s;
	struct journal *j;
	struct appender a[NTHREADS];
	struct took t = {0};
	unsigned flushes;
	size_t next[NTHREADS] = {0};
	char buf[4100], id[UTIL_ID_LEN + 1];

	spool_new(&s);
	fake_reset();
	j = open_ok(&s);
	for (unsigned i = 0; i < NTHREADS; i++) {
		a[i] = (struct appender){.id = i, .j = j};
		a[i].w = calloc(PER_THREAD, sizeof(*a[i].w));
		assert_non_null(a[i].w);
		assert_int_equal(pthread_create(&a[i].thread, NULL, appender_main, &a[i]), 0);
	}
	for (unsigned i = 0; i < NTHREADS; i++)
		assert_int_equal(pthread_join(a[i].thread, NULL), 0);
	flushes = fake_calls();
	for (unsigned i = 0; i < NTHREADS; i++) {
		if (a[i].bad != 0)
			fail_msg("thread %u: %d bad, last %s", i, a[i].bad, a[i].detail);
		/* Exactly once, even now that every flush is over. */
		for (unsigned k = 0; k < PER_THREAD; k++)
			if (a[i].w[k].calls != 1)
				fail_msg("thread %u message %u: done ran %d times", i, k,
					 a[i].w[k].calls);
	}
	/* Group commit: far fewer flushes than messages. */
	print_message("%u appends, %u flushes\n", NTHREADS * PER_THREAD, flushes);
	assert_true(flushes >= 1);
	if (flushes > NTHREADS * PER_THREAD / 2)
		fail_msg("%u flushes for %u appends", flushes, NTHREADS * PER_THREAD);
	journal_close(j);
	/* Some 6 MiB of messages: the journal moved to a second segment while they came in. */
	assert_int_equal(count_journal(&s), 2);

	/* The odd messages of every thread come back, each exactly once, in its thread's order. */
	j = open_ok(&s);
	assert_int_equal(recover_ok(j, &t), NTHREADS * PER_THREAD / 2);
	for (size_t i = 0; i < t.got.n; i++) {
		unsigned long n = strtoul(t.got.v[i].id, NULL, 16) - 0x5EED000000000000ul;
		unsigned th = (unsigned)(n / 1000), k = (unsigned)(n % 1000);
		size_t len;

		assert_true(th < NTHREADS);
		assert_int_equal(k, 2 * next[th] + 1);
		next[th]++;
		make_id(id, n);
		len = thread_msg(buf, th, k);
		assert_took(&t, i, id, buf, len);
	}
	for (unsigned i = 0; i < NTHREADS; i++)
		assert_int_equal(next[i], PER_THREAD / 2);
	journal_clear(j);
	assert_int_equal(count_journal(&s), 0);
	journal_close(j);
	recs_free(&t.got);
	for (unsigned i = 0; i < NTHREADS; i++)
		free(a[i].w);
	spool_done(&s);
}

/* ---- the writer: batches, stop ---- */

/* Waits for each of x[0..n) to be told; fails unless each was told once with err. */
static void
wait_all(struct waiter *x, size_t n, int err)
{
	for (size_t i = 0; i < n; i++) {
		if (waiter_wait(&x[i]) != 1)
			fail_msg("message %zu: done ran %d times", i, x[i].calls);
		assert_int_equal(x[i].err, err);
	}
}

/*
 * Messages appended while the writer is in a flush wait for it, untold,
 * and then go to the disk together: one write, one flush for all of them,
 * in the order they came, each told once.
 */
static void
test_appends_during_a_flush_share_the_next(void **state)
{
	enum { N = 40 };
	struct spool s;
	struct journal *j;
	struct waiter first, x[N];
	char names[NAMES_MAX][64], ids[N + 2][UTIL_ID_LEN + 1], body[N][32];
	struct recs rs = {0};
	const void *parts[1];
	size_t lens[1];
	unsigned before;
	int told;

	spool_new(&s);
	fake_reset();
	j = open_ok(&s);
	make_id(ids[N + 1], 7000);
	append_ok(j, ids[N + 1], "warm", 4); /* the segment and its spare exist */

	fake_hold((int)fake_calls());
	make_id(ids[N], 7001);
	parts[0] = "held";
	lens[0] = 4;
	waiter_init(&first);
	assert_int_equal(journal_append(j, ids[N], parts, lens, 1, &first.w), 0);
	assert_true(fake_held());
	for (size_t i = 0; i < N; i++) {
		make_id(ids[i], 7100 + i);
		lens[0] = (size_t)snprintf(body[i], sizeof(body[i]), "message %zu", i);
		parts[0] = body[i];
		waiter_init(&x[i]);
		assert_int_equal(journal_append(j, ids[i], parts, lens, 1, &x[i].w), 0);
	}
	pthread_mutex_lock(&wt_lock);
	told = first.calls;
	for (size_t i = 0; i < N; i++)
		told += x[i].calls; /* not durable yet: not told */
	pthread_mutex_unlock(&wt_lock);
	assert_int_equal(told, 0);

	before = fake_calls();
	fake_release();
	wait_all(&first, 1, 0);
	wait_all(x, N, 0);
	assert_int_equal(fake_calls() - before, 1); /* the N in one flush after the held one */
	for (size_t i = 1; i < N; i++)
		assert_ptr_equal(x[i].seg, x[0].seg);

	assert_int_equal(list_journal(&s, names), 1);
	scan_segment(&s, names[0], &rs);
	assert_int_equal(rs.n, N + 2);
	assert_string_equal(rs.v[1].id, ids[N]);
	for (size_t i = 0; i < N; i++) {
		assert_string_equal(rs.v[2 + i].id, ids[i]);
		assert_int_equal(rs.v[2 + i].len, strlen(body[i]));
		assert_memory_equal(rs.v[2 + i].data, body[i], strlen(body[i]));
	}
	recs_free(&rs);
	journal_close(j);
	spool_done(&s);
}

static void *
release_later(void *arg)
{
	(void)arg;
	usleep(100 * 1000);
	fake_release();
	return NULL;
}

/*
 * journal_stop returns once every message appended before it is told
 * (durable: it comes back after the close); an append after it is refused
 * at once (ESHUTDOWN), its done never run; a second stop is harmless.
 */
static void
test_stop_tells_every_waiter(void **state)
{
	enum { N = 200 };
	struct spool s;
	struct journal *j;
	struct waiter *x = calloc(N + 1, sizeof(*x));
	char ids[N + 1][UTIL_ID_LEN + 1];
	struct took t = {0};
	const void *parts[1] = {"stopping"};
	size_t lens[1] = {8};

	pthread_t releaser;
	size_t untold = 0;

	assert_non_null(x);
	spool_new(&s);
	fake_reset();
	j = open_ok(&s);
	make_id(ids[0], 8000);
	append_ok(j, ids[0], "stopping", 8); /* the segment and its spare exist */
	fake_hold((int)fake_calls());
	for (size_t i = 1; i < N; i++) {
		make_id(ids[i], 8000 + i);
		waiter_init(&x[i]);
		assert_int_equal(journal_append(j, ids[i], parts, lens, 1, &x[i].w), 0);
	}
	/* Stopping while the writer is in a flush: the stop waits for it and the rest. */
	assert_true(fake_held());
	assert_int_equal(pthread_create(&releaser, NULL, release_later, NULL), 0);
	journal_stop(j);
	assert_int_equal(pthread_join(releaser, NULL), 0);
	pthread_mutex_lock(&wt_lock);
	for (size_t i = 1; i < N; i++)
		untold += x[i].calls != 1 || x[i].err != 0;
	pthread_mutex_unlock(&wt_lock);
	if (untold != 0)
		fail_msg("%zu message(s) not told once, without error, when the stop returned",
			 untold);
	make_id(ids[N], 8999);
	waiter_init(&x[N]);
	assert_int_equal(journal_append(j, ids[N], parts, lens, 1, &x[N].w), ESHUTDOWN);
	journal_stop(j);
	journal_close(j);
	assert_int_equal(x[N].calls, 0);

	j = open_ok(&s);
	assert_int_equal(recover_ok(j, &t), N);
	for (size_t i = 0; i < N; i++)
		assert_took(&t, i, ids[i], "stopping", 8);
	journal_clear(j);
	journal_close(j);
	recs_free(&t.got);
	free(x);
	spool_done(&s);
}

/*
 * Room runs out while messages wait for the writer: the room was there
 * when they were appended, so they are not refused at once, but the one
 * that finds the last segment full is told EAGAIN (no segment, nothing of
 * it written) while the one before it is made durable.
 */
static void
test_room_gone_while_waiting(void **state)
{
	enum { LIVE = 16 };
	size_t big_len = JREC_PAYLOAD_MAX;
	char *big = malloc(big_len);
	struct spool s;
	struct journal *j;
	struct waiter a, b, c;
	char ids[LIVE + 3][UTIL_ID_LEN + 1], names[NAMES_MAX][64];
	const void *pa[1] = {"small again"}, *pb[1], *pc[1] = {"no room"};
	size_t la[1] = {11}, lb[1] = {big_len}, lc[1] = {7};
	struct took t = {0};
	bool refused_back = false;

	assert_non_null(big);
	memset(big, 'R', big_len);
	pb[0] = big;
	spool_new(&s);
	fake_reset();
	j = open_ok(&s);
	for (size_t i = 0; i < LIVE - 1; i++) {
		make_id(ids[i], 600 + i);
		append_ok(j, ids[i], big, big_len); /* fifteen full segments, owed */
	}
	make_id(ids[LIVE - 1], 700);
	append_ok(j, ids[LIVE - 1], "small", 5); /* the sixteenth, with room */
	for (size_t i = LIVE; i < LIVE + 3; i++)
		make_id(ids[i], 701 + i - LIVE);

	fake_hold((int)fake_calls());
	waiter_init(&a);
	assert_int_equal(journal_append(j, ids[LIVE], pa, la, 1, &a.w), 0);
	assert_true(fake_held()); /* the writer is in a's flush */
	waiter_init(&b);
	assert_int_equal(journal_append(j, ids[LIVE + 1], pb, lb, 1, &b.w), 0); /* fills it */
	waiter_init(&c);
	/* Room still seems there: b is not written yet. */
	assert_int_equal(journal_append(j, ids[LIVE + 2], pc, lc, 1, &c.w), 0);
	fake_release();
	wait_all(&a, 1, 0);
	wait_all(&b, 1, 0);
	wait_all(&c, 1, EAGAIN);
	assert_null(c.seg);
	assert_int_equal(list_journal(&s, names), LIVE);
	journal_close(j);

	/* Everything but the refused one comes back. */
	j = open_ok(&s);
	recover_ok(j, &t);
	for (size_t i = 0; i < t.got.n; i++)
		refused_back = refused_back || strcmp(t.got.v[i].id, ids[LIVE + 2]) == 0;
	assert_int_equal(t.got.n, LIVE + 2);
	assert_false(refused_back);
	assert_took(&t, LIVE, ids[LIVE], "small again", 11);
	assert_took(&t, LIVE + 1, ids[LIVE + 1], big, big_len);
	journal_clear(j);
	journal_close(j);
	recs_free(&t.got);
	free(big);
	spool_done(&s);
}

/*
 * A "finished" mark is written by the writer, not by the thread that
 * finished the message: while the writer is in a flush the mark waits (the
 * count is up at once), and it is on disk once the writer has gone round
 * again (at the latest when it stops).  A mark whose segment has gone
 * meanwhile (its last message finished) is dropped, not written.
 */
static void
test_marks_written_by_the_writer(void **state)
{
	size_t big_len = JREC_PAYLOAD_MAX;
	char *big = malloc(big_len);
	struct spool s;
	struct journal *j;
	struct journal_seg *s1, *s1b, *s2;
	struct waiter x;
	char ids[6][UTIL_ID_LEN + 1], names[NAMES_MAX][64];
	const void *parts[1] = {"third"};
	size_t lens[1] = {5};
	struct recs rs = {0};
	struct took t = {0};

	assert_non_null(big);
	memset(big, 'M', big_len);
	spool_new(&s);
	fake_reset();
	j = open_ok(&s);
	for (int i = 0; i < 6; i++)
		make_id(ids[i], 4000 + (unsigned long)i);
	s1 = append_ok(j, ids[0], "small one", 9);
	s1b = append_ok(j, ids[1], big, big_len); /* fills the first segment */
	assert_ptr_equal(s1, s1b);
	s2 = append_ok(j, ids[2], "second segment", 14);
	assert_ptr_not_equal(s1, s2);
	append_ok(j, ids[3], "also second", 11);

	/* The writer held in a flush: marks wait for it. */
	fake_hold((int)fake_calls());
	waiter_init(&x);
	assert_int_equal(journal_append(j, ids[4], parts, lens, 1, &x.w), 0);
	assert_true(fake_held());
	journal_done(j, s2, ids[2]);
	journal_done(j, s1, ids[0]); /* its segment still owes ids[1] */
	assert_int_equal(list_journal(&s, names), 2);
	scan_segment(&s, names[1], &rs);
	assert_int_equal(rs.n, 3); /* three messages (the third in its flush), no mark yet */
	for (size_t i = 0; i < rs.n; i++)
		assert_int_equal(rs.v[i].type, JREC_MSG);
	recs_free(&rs);
	scan_segment(&s, names[0], &rs);
	assert_int_equal(rs.n, 2);
	recs_free(&rs);
	/* The first segment's last message: it goes now; its waiting mark is dropped. */
	journal_done(j, s1b, ids[1]);
	assert_false(journal_has(&s, "0000000000000001"));
	fake_release();
	wait_all(&x, 1, 0);
	journal_stop(j);

	assert_int_equal(list_journal(&s, names), 1);
	scan_segment(&s, names[0], &rs);
	assert_int_equal(rs.n, 4); /* ids[2], ids[3], ids[4] and the mark of ids[2] */
	assert_int_equal(rs.v[3].type, JREC_DONE);
	assert_string_equal(rs.v[3].id, ids[2]);
	recs_free(&rs);
	journal_close(j);

	j = open_ok(&s);
	assert_int_equal(recover_ok(j, &t), 2);
	assert_took(&t, 0, ids[3], "also second", 11);
	assert_took(&t, 1, ids[4], "third", 5);
	journal_clear(j);
	journal_close(j);
	recs_free(&t.got);
	free(big);
	spool_done(&s);
}

/* ---- a failed flush ---- */

/*
 * A flush fails (EIO): the message it was to cover is told so (err EIO,
 * done once).  Whether its record reached the disk is unknown, so it may
 * come back from the journal later — but only whole and under its own id
 * (queue_journal.h: the caller keeps that id when it makes the message
 * durable another way, so the queue recognises a second copy).  The
 * message before it, acknowledged and still owed, must come back; the one
 * after goes into a new segment and must come back too.
 */
static void
test_failed_flush_may_come_back_whole(void **state)
{
	struct spool s;
	struct journal *j;
	struct journal_seg *sa, *sc;
	char ida[UTIL_ID_LEN + 1], idb[UTIL_ID_LEN + 1], idc[UTIL_ID_LEN + 1];
	struct took t = {0};
	bool a_first, c_last, b_back = false, b_whole = false;
	size_t n;

	spool_new(&s);
	fake_reset();
	j = open_ok(&s);
	make_id(ida, 1);
	make_id(idb, 2);
	make_id(idc, 3);
	sa = append_ok(j, ida, "acknowledged before", 19);
	fake_fail((int)fake_calls(), EIO); /* the next flush */
	append_parts(j, idb, "never acknowledged", 18, 1, EIO);
	assert_int_equal(fk_failed, 1);
	sc = append_ok(j, idc, "acknowledged after", 18);
	assert_true(sc != sa);
	assert_true(journal_has(&s, "0000000000000002"));
	journal_close(j);

	/* What came back, noted before the checks so that a failure leaks nothing. */
	j = open_ok(&s);
	recover_ok(j, &t);
	journal_clear(j);
	journal_close(j);
	spool_done(&s);
	for (size_t i = 0; i < t.got.n; i++)
		if (strcmp(t.got.v[i].id, idb) == 0) {
			b_back = true;
			b_whole = t.got.v[i].len == 18 &&
				  memcmp(t.got.v[i].data, "never acknowledged", 18) == 0;
		}
	a_first = t.got.n >= 1 && strcmp(t.got.v[0].id, ida) == 0 && t.got.v[0].len == 19 &&
		  memcmp(t.got.v[0].data, "acknowledged before", 19) == 0;
	c_last = t.got.n >= 1 && strcmp(t.got.v[t.got.n - 1].id, idc) == 0 &&
		 t.got.v[t.got.n - 1].len == 18 &&
		 memcmp(t.got.v[t.got.n - 1].data, "acknowledged after", 18) == 0;
	n = t.got.n;
	recs_free(&t.got);
	assert_true(a_first);
	assert_true(c_last);
	if (b_back && !b_whole)
		fail_msg("the message whose flush failed came back, but not whole");
	assert_int_equal(n, b_back ? 3 : 2);
}

/* A failed flush with nothing else owed in its segment: the segment goes once the rest is done. */
static void
test_failed_flush_segment_goes(void **state)
{
	struct spool s;
	struct journal *j;
	struct journal_seg *sa;
	char ida[UTIL_ID_LEN + 1], idb[UTIL_ID_LEN + 1];

	spool_new(&s);
	fake_reset();
	j = open_ok(&s);
	make_id(ida, 1);
	make_id(idb, 2);
	sa = append_ok(j, ida, "first", 5);
	fake_fail((int)fake_calls(), EIO);
	append_parts(j, idb, "second", 6, 1, EIO);
	assert_int_equal(fk_failed, 1);
	assert_true(journal_has(&s, "0000000000000001"));
	journal_done(j, sa, ida); /* the last one owed in a sealed segment */
	assert_false(journal_has(&s, "0000000000000001"));
	journal_close(j);
	assert_int_equal(count_journal(&s), 0);
	spool_done(&s);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_open_creates_directory),
	    cmocka_unit_test(test_open_errors),
	    cmocka_unit_test(test_append_one),
	    cmocka_unit_test(test_append_parts_and_limits),
	    cmocka_unit_test(test_recover_unfinished),
	    cmocka_unit_test(test_recover_oldest_first),
	    cmocka_unit_test(test_recover_torn_tail),
	    cmocka_unit_test(test_recover_ignores_other_names),
	    cmocka_unit_test(test_recover_fn_error),
	    cmocka_unit_test(test_recover_unreadable_segment),
	    cmocka_unit_test(test_recover_read_error),
	    cmocka_unit_test(test_sealed_segment_goes_at_last_mark),
	    cmocka_unit_test(test_next_segment_made_ahead),
	    cmocka_unit_test(test_finished_segment_goes_when_sealed),
	    cmocka_unit_test(test_full_journal_refuses_until_a_segment_goes),
	    cmocka_unit_test(test_many_threads),
	    cmocka_unit_test(test_appends_during_a_flush_share_the_next),
	    cmocka_unit_test(test_stop_tells_every_waiter),
	    cmocka_unit_test(test_room_gone_while_waiting),
	    cmocka_unit_test(test_marks_written_by_the_writer),
	    cmocka_unit_test(test_failed_flush_segment_goes),
	    cmocka_unit_test(test_failed_flush_may_come_back_whole),
	};

	log_set_level(LOG_LEVEL_WARN); /* journal_close's counts at info level are noise here */
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
