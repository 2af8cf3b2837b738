#include "deliver/deliver.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util_dirsync.h"
#include "util/util_mem.h"

/*
 * Maildir delivery (https://cr.yp.to/proto/maildir.html): write tmp/<name>,
 * flush it, rename it into new/, flush new/: a name in new/ always stands for
 * a whole message.  Where the kernel and filesystem allow, a copy is written
 * in tmp/ as an unnamed file (O_TMPFILE), flushed, and linked into new/ under
 * its name: the same one step from nothing to a whole message, without a
 * name made in tmp/ and taken away again (two directory updates fewer for
 * every copy).  Copies are written in batches (struct deliver_batch)
 * so that many of them share the flushes: all files of a batch are
 * written, flushed together (one syncfs(2) per filesystem; fdatasync for a
 * lone file), linked or renamed, and new/ flushed (util_dirsync, shared with
 * other threads, for one Maildir; syncfs for several).  Every path component
 * below mail_root is opened relative to its parent with O_NOFOLLOW, so a
 * symlink planted in a mailbox cannot redirect a delivery elsewhere.
 */

#define BLOCK_LEN    (64 * 1024) /* bytes read from the spool file at a time */
#define DOMAIN_MAX   255
#define NAME_MAX_LEN 255

struct maildir {
	int root, domain, box, tmp, new_dir, cur; /* directory fds, -1 when not open */
};

static void fail(char *err, size_t err_cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
fail(char *err, size_t err_cap, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || err_cap == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, err_cap, fmt, ap);
	va_end(ap);
}

/* A single path component: not empty, no '/', no leading '.', no control octet. */
static bool
component_is_safe(const char *s, size_t max, bool allow_colon)
{
	size_t len = strlen(s);

	if (len == 0 || len > max || s[0] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch < 0x20 || ch == 0x7f || ch == '/' || (ch == ':' && !allow_colon))
			return false;
	}
	return true;
}

/*
 * Opens directory name under parent without following a symlink, creating
 * it (mode 0700) when missing.  A new directory's entry is flushed with its
 * parent, or a crash could lose the Maildir with the message inside.
 */
static int
open_dir(int parent, const char *name)
{
	int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
	int fd = openat(parent, name, flags);
	bool made;

	if (fd >= 0 || errno != ENOENT)
		return fd;
	made = mkdirat(parent, name, 0700) == 0;
	if (!made && errno != EEXIST)
		return -1;
	fd = openat(parent, name, flags);
	if (fd >= 0 && made && fsync(parent) < 0) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

static void
close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void
maildir_close(struct maildir *md)
{
	close_fd(&md->root);
	close_fd(&md->domain);
	close_fd(&md->box);
	close_fd(&md->tmp);
	close_fd(&md->new_dir);
	close_fd(&md->cur);
}

static int
maildir_open(struct maildir *md, const char *mail_root, const char *domain, const char *user,
	     char *err, size_t err_cap)
{
	/* mail_root itself is the administrator's choice and may be a symlink. */
	md->root = open(mail_root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (md->root < 0 && errno == ENOENT && (mkdir(mail_root, 0700) == 0 || errno == EEXIST))
		md->root = open(mail_root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (md->root < 0) {
		fail(err, err_cap, "%s: %s", mail_root, strerror(errno));
		return -1;
	}
	if ((md->domain = open_dir(md->root, domain)) < 0) {
		fail(err, err_cap, "%s/%s: %s", mail_root, domain, strerror(errno));
		return -1;
	}
	if ((md->box = open_dir(md->domain, user)) < 0) {
		fail(err, err_cap, "%s/%s/%s: %s", mail_root, domain, user, strerror(errno));
		return -1;
	}
	if ((md->tmp = open_dir(md->box, "tmp")) < 0 ||
	    (md->new_dir = open_dir(md->box, "new")) < 0 ||
	    (md->cur = open_dir(md->box, "cur")) < 0) {
		fail(err, err_cap, "%s/%s/%s/{tmp,new,cur}: %s", mail_root, domain, user,
		     strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * Sets *found when cur/<name>[:flags] exists: the message was delivered,
 * and moved by a reader, before a crash kept the queue from recording it.
 * (A copy still in new/ is simply written again under its name.)
 */
static int
already_delivered(const struct maildir *md, const char *name, bool *found, char *err,
		  size_t err_cap)
{
	size_t len = strlen(name);
	const struct dirent *d;
	DIR *dir;
	int fd;

	*found = false;
	/*
	 * fdopendir() takes the descriptor it is given; md->cur stays ours.  A
	 * descriptor of its own (not a dup: that would share the read position
	 * with other threads using the same cached Maildir).
	 */
	if ((fd = openat(md->cur, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
	    (dir = fdopendir(fd)) == NULL) {
		fail(err, err_cap, "cur/: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	errno = 0;
	while ((d = readdir(dir)) != NULL)
		if (strncmp(d->d_name, name, len) == 0 &&
		    (d->d_name[len] == ':' || d->d_name[len] == '\0')) {
			*found = true;
			break;
		}
	if (d == NULL && errno != 0) {
		fail(err, err_cap, "cur/: %s", strerror(errno));
		closedir(dir);
		return -1;
	}
	closedir(dir);
	return 0;
}

static int
write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		if (w == 0) {
			errno = ENOSPC;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * Turns CRLF into LF from in (n octets) to out (room for n + 1), returning
 * the octets written.  *held_cr: the previous block ended in a CR, not yet
 * written (an LF first in this block makes it a line end); on return, set
 * when this block ends in one.  Whole runs between CRs are copied at once.
 */
static size_t
crlf_to_lf(const char *in, size_t n, char *out, bool *held_cr)
{
	size_t i = 0, o = 0;

	if (*held_cr && n > 0) {
		*held_cr = false;
		if (in[0] == '\n') {
			out[o++] = '\n';
			i = 1;
		} else {
			out[o++] = '\r';
		}
	}
	while (i < n) {
		const char *cr = memchr(in + i, '\r', n - i);
		size_t run = (cr != NULL ? (size_t)(cr - in) : n) - i;

		memcpy(out + o, in + i, run);
		o += run;
		i += run;
		if (cr == NULL)
			break;
		if (i + 1 == n) {
			*held_cr = true; /* the next block tells */
			break;
		}
		if (in[i + 1] == '\n') {
			out[o++] = '\n';
			i += 2;
		} else {
			out[o++] = '\r';
			i++;
		}
	}
	return o;
}

/*
 * Writes the headers and then the message (from memory, or read from the
 * spool file block by block) into fd with CRLF turned into LF; the headers
 * go out with the first block, in one write.  A CR that ends one block is
 * held until the next block shows whether an LF follows; a CR not followed
 * by LF is copied as is.  A message that does not end with a line end (BDAT
 * lets a client send one) gets an LF: the file holds whole lines, as
 * Postfix writes them.  buf holds block octets in, then the headers (hlen)
 * and at most one block plus a held CR out, or at the end a held CR and
 * that LF.
 */
static int
copy_body(int fd, const struct deliver_msg *m, char *buf, size_t block, size_t hlen, char *err,
	  size_t err_cap)
{
	char *in = buf, *out = buf + block;
	uint64_t left = m->body_len;
	off_t off = m->body_off;
	bool held_cr = false;
	char last = '\n';  /* the message's last octet so far */
	size_t pre = hlen; /* octets already in out: the headers, before the first block */

	while (left > 0) {
		size_t want = left < block ? (size_t)left : block;
		ssize_t n;
		size_t o;

		if (m->body_mem != NULL) {
			in = (char *)m->body_mem + (m->body_len - left);
			n = (ssize_t)want;
		} else {
			n = pread(m->body_fd, in, want, off);
		}

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fail(err, err_cap, "reading spool file: %s", strerror(errno));
			return -1;
		}
		if (n == 0) {
			fail(err, err_cap, "spool file ends %llu bytes before the message",
			     (unsigned long long)left);
			return -1;
		}
		last = in[n - 1];
		o = pre + crlf_to_lf(in, (size_t)n, out + pre, &held_cr);
		if (write_all(fd, out, o) < 0) {
			fail(err, err_cap, "writing message: %s", strerror(errno));
			return -1;
		}
		pre = 0;
		off += n;
		left -= (uint64_t)n;
	}
	if (held_cr)
		out[pre++] = '\r';
	if (last != '\n')
		out[pre++] = '\n';
	if (pre > 0 && write_all(fd, out, pre) < 0) {
		fail(err, err_cap, "writing message: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* Writes tmp/<name> (not flushed: the batch's commit does that); the caller removes it on failure.
 */
static int
write_tmp(int fd, const struct deliver_msg *m, char *err, size_t err_cap)
{
	size_t hlen = m->headers != NULL ? strlen(m->headers) : 0;
	size_t block = m->body_len < BLOCK_LEN ? (size_t)m->body_len : BLOCK_LEN;
	char *buf = xmalloc(block + hlen + block + 2);
	int rc;

	if (hlen > 0)
		memcpy(buf + block, m->headers, hlen);
	rc = copy_body(fd, m, buf, block, hlen, err, err_cap);
	free(buf);
	return rc;
}

/* ---- open Maildirs kept for the next delivery ---------------------------- */

/*
 * A busy mailbox is not looked up component by component (six opens and
 * six closes) for every message: the directories of the last CACHE_SLOTS
 * Maildirs stay open.  Before each use, lstat(2) of the paths of the domain
 * directory, the Maildir and its new/ must find the very directories held
 * open (an open directory's inode number is never reused, and a symlink is
 * not a directory), so a Maildir, domain or mail_root removed, renamed,
 * replaced or turned into a symlink behind petrel's back is looked up again
 * (and refused, for a symlink), never written into.
 */
#define CACHE_SLOTS 16

struct cached {
	char *mail_root, *domain, *user; /* NULL: a free slot */
	struct maildir md;
	struct stat ids[3]; /* the domain directory, the Maildir, new/ (device and inode) */
	unsigned users;	    /* deliveries using md now */
	bool stale;	    /* closed once unused */
	unsigned long used; /* for choosing the slot to reuse */
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cached cache[CACHE_SLOTS];
static unsigned long cache_clock;

/* Lock held: frees slot c (nobody uses it). */
static void
cache_drop(struct cached *c)
{
	maildir_close(&c->md);
	free(c->mail_root);
	free(c->domain);
	free(c->user);
	memset(c, 0, sizeof(*c));
}

static bool
same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* The three paths still lead, through no symlink of petrel's, to the directories held open. */
static bool
cache_valid(const char *mail_root, const char *domain, const char *user, const struct stat ids[3])
{
	char path[PATH_MAX];
	struct stat st;

	for (int i = 0; i < 3; i++) {
		int n;

		if (i == 0)
			n = snprintf(path, sizeof(path), "%s/%s", mail_root, domain);
		else if (i == 1)
			n = snprintf(path, sizeof(path), "%s/%s/%s", mail_root, domain, user);
		else
			n = snprintf(path, sizeof(path), "%s/%s/%s/new", mail_root, domain, user);
		if (n <= 0 || (size_t)n >= sizeof(path) ||
		    fstatat(AT_FDCWD, path, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
		    !same_file(&st, &ids[i]))
			return false;
	}
	return true;
}

/* Done with c; stale: it must not be used again. */
static void
cache_put(struct cached *c, bool stale)
{
	pthread_mutex_lock(&cache_lock);
	c->users--;
	if (stale)
		c->stale = true;
	if (c->stale && c->users == 0)
		cache_drop(c);
	pthread_mutex_unlock(&cache_lock);
}

/* The open Maildir for these names, checked to still be the one at that path; or NULL. */
static struct cached *
cache_get(const char *mail_root, const char *domain, const char *user)
{
	struct cached *c = NULL;

	pthread_mutex_lock(&cache_lock);
	for (size_t i = 0; i < CACHE_SLOTS; i++) {
		struct cached *e = &cache[i];

		if (e->mail_root != NULL && !e->stale && strcmp(e->user, user) == 0 &&
		    strcmp(e->domain, domain) == 0 && strcmp(e->mail_root, mail_root) == 0) {
			c = e;
			c->users++;
			c->used = ++cache_clock;
			break;
		}
	}
	pthread_mutex_unlock(&cache_lock);
	if (c == NULL)
		return NULL;
	/* The names and ids of a slot in use do not change: read without the lock. */
	if (cache_valid(mail_root, domain, user, c->ids))
		return c;
	cache_put(c, true);
	return NULL;
}

/*
 * Keeps md (just opened) for later.  Returns the slot now holding it (or
 * another slot already holding the same Maildir: md is closed), in use by the
 * caller until cache_put(); or NULL when every slot is in use: md stays the
 * caller's.
 */
static struct cached *
cache_keep(const char *mail_root, const char *domain, const char *user, struct maildir *md)
{
	struct cached *slot = NULL;
	struct stat ids[3];

	if (fstat(md->domain, &ids[0]) != 0 || fstat(md->box, &ids[1]) != 0 ||
	    fstat(md->new_dir, &ids[2]) != 0)
		return NULL;
	pthread_mutex_lock(&cache_lock);
	for (size_t i = 0; i < CACHE_SLOTS; i++) {
		struct cached *e = &cache[i];

		if (e->mail_root == NULL) {
			if (slot == NULL || slot->mail_root != NULL)
				slot = e; /* a free slot first */
			continue;
		}
		if (!e->stale && same_file(&e->ids[2], &ids[2])) {
			slot = e; /* kept already (another thread was first) */
			maildir_close(md);
			goto use;
		}
		if (e->users == 0 &&
		    (slot == NULL || (slot->mail_root != NULL && e->used < slot->used)))
			slot = e; /* else the one unused for the longest */
	}
	if (slot == NULL)
		goto out;
	if (slot->mail_root != NULL)
		cache_drop(slot);
	slot->mail_root = xstrdup(mail_root);
	slot->domain = xstrdup(domain);
	slot->user = xstrdup(user);
	slot->md = *md;
	*md = (struct maildir){-1, -1, -1, -1, -1, -1}; /* the slot's now */
	memcpy(slot->ids, ids, sizeof(ids));
use:
	slot->users++;
	slot->used = ++cache_clock;
out:
	pthread_mutex_unlock(&cache_lock);
	return slot;
}

/* ---- batches: many copies, one flush ------------------------------------ */

/* A Maildir the batch writes into: the cache's (in use until the batch ends) or its own. */
struct box {
	char *mail_root, *domain, *user;
	struct cached *c;   /* NULL: own holds the directories */
	struct maildir own; /* opened for this batch only (every cache slot was in use) */
	dev_t dev;	    /* the filesystem of its new/, where its copies are written */
	bool retired; /* a write failed: later copies look the Maildir up afresh, c is not reused */
};

/* A copy: in tmp/, renamed into new/, delivered, or taken back (its group failed). */
enum copy_state { COPY_TMP, COPY_NEW, COPY_DONE, COPY_FAILED };

struct pending {
	size_t box;
	size_t group;
	enum copy_state state;
	int fd; /* COPY_TMP as an unnamed file in new/: its descriptor; else -1 */
	char name[NAME_MAX_LEN + 1];
};

/*
 * A filesystem the batch writes to, with a descriptor of its own for
 * syncfs(2): a write-back error is reported once per open file, so a
 * descriptor shared with other threads (the cache's) could let another
 * batch's syncfs take the error this one must see.  Opened before the
 * batch's first copy there, it sees every error since.
 */
struct filesystem {
	dev_t dev;
	int fd;
};

struct deliver_batch {
	struct box *boxes;
	size_t nboxes, boxes_cap;
	struct filesystem *fss;
	size_t nfss, fss_cap;
	struct pending *v;
	size_t len, cap;
	size_t group;	 /* of the copies added next */
	bool failed_all; /* the last commit's flush failed: no copy was delivered */
};

static const struct maildir *
box_md(const struct deliver_batch *b, size_t i)
{
	return b->boxes[i].c != NULL ? &b->boxes[i].c->md : &b->boxes[i].own;
}

/* Registers the filesystem dev (dir_fd is a directory on it) unless known already. */
static int
fs_add(struct deliver_batch *b, dev_t dev, int dir_fd)
{
	int fd;

	for (size_t i = 0; i < b->nfss; i++)
		if (b->fss[i].dev == dev)
			return 0;
	fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (b->nfss == b->fss_cap) {
		b->fss_cap = b->fss_cap ? 2 * b->fss_cap : 2;
		b->fss = xrealloc(b->fss, b->fss_cap * sizeof(*b->fss));
	}
	b->fss[b->nfss].dev = dev;
	b->fss[b->nfss++].fd = fd;
	return 0;
}

/* The batch's box for this Maildir, looked up (cache, or opened) on first use; or -1. */
static long
box_get(struct deliver_batch *b, const char *mail_root, const char *domain, const char *user,
	bool fresh, char *err, size_t err_cap)
{
	struct box bx = {0};
	struct stat st;

	for (size_t i = 0; i < b->nboxes; i++) {
		const struct box *e = &b->boxes[i];

		if (!e->retired && strcmp(e->user, user) == 0 && strcmp(e->domain, domain) == 0 &&
		    strcmp(e->mail_root, mail_root) == 0)
			return (long)i;
	}
	bx.own = (struct maildir){-1, -1, -1, -1, -1, -1};
	bx.c = fresh ? NULL : cache_get(mail_root, domain, user);
	if (bx.c == NULL) {
		if (maildir_open(&bx.own, mail_root, domain, user, err, err_cap) < 0) {
			maildir_close(&bx.own);
			return -1;
		}
		/* A Maildir found not to be the cached one (fresh) is not cached either. */
		if (!fresh)
			bx.c = cache_keep(mail_root, domain, user, &bx.own);
		/* Kept by the batch alone: only what writing and renaming need. */
		close_fd(&bx.own.root);
		close_fd(&bx.own.domain);
		close_fd(&bx.own.box);
	}
	/* new/'s filesystem: the copies' (a tmp/ file must be on it to be renamed there). */
	if (fstat(bx.c != NULL ? bx.c->md.new_dir : bx.own.new_dir, &st) != 0) {
		fail(err, err_cap, "new/: %s", strerror(errno));
		if (bx.c != NULL)
			cache_put(bx.c, false);
		maildir_close(&bx.own);
		return -1;
	}
	bx.dev = st.st_dev;
	if (fs_add(b, bx.dev, bx.c != NULL ? bx.c->md.new_dir : bx.own.new_dir) < 0) {
		fail(err, err_cap, "new/: %s", strerror(errno));
		if (bx.c != NULL)
			cache_put(bx.c, false);
		maildir_close(&bx.own);
		return -1;
	}
	bx.mail_root = xstrdup(mail_root);
	bx.domain = xstrdup(domain);
	bx.user = xstrdup(user);
	if (b->nboxes == b->boxes_cap) {
		b->boxes_cap = b->boxes_cap ? 2 * b->boxes_cap : 4;
		b->boxes = xrealloc(b->boxes, b->boxes_cap * sizeof(*b->boxes));
	}
	b->boxes[b->nboxes] = bx;
	return (long)b->nboxes++;
}

/* Unnamed files: 1 on, 0 off (deliver_maildir_unnamed), -1 found unusable here. */
static atomic_int unnamed_state = 1;
static atomic_bool proc_seen;	 /* /proc/self/fd is there */
static atomic_bool by_proc_path; /* linkat(AT_EMPTY_PATH) refused: link_unnamed() */
static atomic_bool refuse_empty; /* tests: act as a kernel that refuses AT_EMPTY_PATH */

void
deliver_maildir_unnamed(bool on)
{
	atomic_store(&unnamed_state, on ? 1 : 0);
}

void
deliver_maildir_link_by_path(bool on)
{
	atomic_store(&by_proc_path, on);
}

bool
deliver_maildir_links_by_path(void)
{
	return atomic_load(&by_proc_path);
}

void
deliver_maildir_refuse_empty_path(bool on)
{
	atomic_store(&refuse_empty, on);
}

/*
 * An unnamed file in tmp/ of md holding m, unflushed: its descriptor, or -1
 * with errno set (EOPNOTSUPP: not here, tmp/ it is).  It is linked by
 * link_unnamed(), which needs /proc/self/fd where the kernel refuses
 * linkat(AT_EMPTY_PATH).
 */
static int
write_unnamed(const struct maildir *md, const struct deliver_msg *m, char *err, size_t err_cap)
{
	int fd, e;

	if (atomic_load(&unnamed_state) != 1) {
		errno = EOPNOTSUPP;
		return -1;
	}
	if (!atomic_load(&proc_seen)) {
		/* Without /proc (a chroot) a refused AT_EMPTY_PATH would leave no way to link:
		 * tmp/. */
		if (access("/proc/self/fd", X_OK) != 0) {
			atomic_store(&unnamed_state, -1);
			errno = EOPNOTSUPP;
			return -1;
		}
		atomic_store(&proc_seen, true);
	}
	fd = openat(md->tmp, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0) {
		e = errno;
		/* The kernel or the filesystem has no O_TMPFILE: tmp/ from now on. */
		if (e == EOPNOTSUPP || e == EISDIR || e == EINVAL) {
			atomic_store(&unnamed_state, -1);
			errno = EOPNOTSUPP;
		} else {
			fail(err, err_cap, "tmp/ (unnamed file): %s", strerror(e));
			errno = e;
		}
		return -1;
	}
	if (write_tmp(fd, m, err, err_cap) < 0) {
		close(fd);
		errno = EIO;
		return -1;
	}
	return fd;
}

/*
 * Writes m into md, unflushed: an unnamed file in new/ (*ufd its descriptor)
 * or, where there are none, tmp/<name> (*ufd -1).  *skip: a reader already
 * moved this message into cur/ (a redelivery): nothing was written.
 */
static int
write_tmp_file(const struct maildir *md, const char *name, const struct deliver_msg *m, bool *skip,
	       int *ufd, char *err, size_t err_cap)
{
	int fd, rc;

	*skip = false;
	*ufd = -1;
	if (!m->first_copy && already_delivered(md, name, skip, err, err_cap) < 0)
		return -1;
	if (*skip)
		return 0;
	/* A tmp/<name> left by a crash during an earlier attempt is ours to replace. */
	if (!m->first_copy && unlinkat(md->tmp, name, 0) < 0 && errno != ENOENT) {
		fail(err, err_cap, "tmp/%s: %s", name, strerror(errno));
		return -1;
	}
	fd = write_unnamed(md, m, err, err_cap);
	if (fd >= 0) {
		*ufd = fd;
		return 0;
	}
	if (errno != EOPNOTSUPP)
		return -1;
	fd = openat(md->tmp, name, O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_WRONLY, 0600);
	if (fd < 0) {
		fail(err, err_cap, "tmp/%s: %s", name, strerror(errno));
		return -1;
	}
	rc = write_tmp(fd, m, err, err_cap);
	/* close() can report a late write error (NFS, quota). */
	if (close(fd) < 0 && rc == 0) {
		fail(err, err_cap, "close tmp/%s: %s", name, strerror(errno));
		rc = -1;
	}
	if (rc < 0)
		unlinkat(md->tmp, name, 0);
	return rc;
}

struct deliver_batch *
deliver_batch_new(void)
{
	return xcalloc(1, sizeof(struct deliver_batch));
}

size_t
deliver_batch_len(const struct deliver_batch *b)
{
	return b->len;
}

size_t
deliver_batch_maildirs(const struct deliver_batch *b)
{
	return b->nboxes;
}

void
deliver_batch_group(struct deliver_batch *b, size_t group)
{
	b->group = group;
}

bool
deliver_batch_failed(const struct deliver_batch *b, size_t group)
{
	if (b->failed_all)
		return true;
	for (size_t k = 0; k < b->len; k++)
		if (b->v[k].group == group && b->v[k].state == COPY_FAILED)
			return true;
	return false;
}

int
deliver_batch_add(struct deliver_batch *b, const char *mail_root, const char *domain,
		  const char *user, const char *name, const struct deliver_msg *m, bool *permanent,
		  char *err, size_t err_cap)
{
	bool skip = false;
	long i;
	int ufd = -1;

	*permanent = false;
	if (!deliver_local_part_is_safe(user, strlen(user))) {
		*permanent = true;
		fail(err, err_cap, "unsafe mailbox name");
		return -1;
	}
	if (!component_is_safe(domain, DOMAIN_MAX, true) ||
	    !component_is_safe(name, NAME_MAX_LEN, false)) {
		*permanent = true;
		fail(err, err_cap, "unsafe domain or file name");
		return -1;
	}
	if ((i = box_get(b, mail_root, domain, user, false, err, err_cap)) < 0)
		return -1;
	if (write_tmp_file(box_md(b, (size_t)i), name, m, &skip, &ufd, err, err_cap) < 0) {
		if (b->boxes[i].c == NULL)
			return -1;
		/* Whatever went wrong, once more with the directories looked up afresh. */
		b->boxes[i].retired = true;
		if ((i = box_get(b, mail_root, domain, user, true, err, err_cap)) < 0 ||
		    write_tmp_file(box_md(b, (size_t)i), name, m, &skip, &ufd, err, err_cap) < 0)
			return -1;
	}
	if (skip)
		return 0;
	if (b->len == b->cap) {
		b->cap = b->cap ? 2 * b->cap : 8;
		b->v = xrealloc(b->v, b->cap * sizeof(*b->v));
	}
	b->v[b->len].box = (size_t)i;
	b->v[b->len].group = b->group;
	b->v[b->len].state = COPY_TMP;
	b->v[b->len].fd = ufd;
	util_strlcpy(b->v[b->len].name, name, sizeof(b->v[b->len].name));
	b->len++;
	return 0;
}

/* A copy not yet in new/ goes: its unnamed file closed (freed) or its tmp/ file removed. */
static void
drop_copy(const struct deliver_batch *b, struct pending *p)
{
	if (p->fd >= 0) {
		close(p->fd);
		p->fd = -1;
	} else {
		unlinkat(box_md(b, p->box)->tmp, p->name, 0);
	}
}

void
deliver_batch_rollback(struct deliver_batch *b, size_t len)
{
	for (size_t k = len; k < b->len; k++)
		if (b->v[k].state == COPY_TMP)
			drop_copy(b, &b->v[k]);
	if (len < b->len)
		b->len = len;
}

/*
 * One syncfs(2) for each filesystem holding a copy in state: the data and
 * inodes of every file written there (COPY_TMP), or every name renamed there
 * (COPY_NEW), reach the disk with one flush of the disk's cache instead of one
 * per file or directory.
 */
static int
sync_filesystems(const struct deliver_batch *b, enum copy_state state)
{
	for (size_t i = 0; i < b->nfss; i++) {
		bool used = false;

		for (size_t k = 0; k < b->len && !used; k++)
			used = b->v[k].state == state && b->boxes[b->v[k].box].dev == b->fss[i].dev;
		if (used && syncfs(b->fss[i].fd) < 0)
			return -1;
	}
	return 0;
}

/* The data of every tmp/ file on disk: fdatasync of a lone file, else syncfs. */
static int
flush_files(const struct deliver_batch *b, char *err, size_t err_cap)
{
	const struct pending *p = &b->v[0];
	int fd, rc;

	if (b->len > 1) {
		if (sync_filesystems(b, COPY_TMP) == 0)
			return 0;
		fail(err, err_cap, "syncfs: %s", strerror(errno));
		return -1;
	}
	if (p->fd >= 0) {
		if (fdatasync(p->fd) == 0)
			return 0;
		fail(err, err_cap, "fdatasync: %s", strerror(errno));
		return -1;
	}
	fd = openat(box_md(b, p->box)->tmp, p->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		fail(err, err_cap, "tmp/%s: %s", p->name, strerror(errno));
		return -1;
	}
	rc = fdatasync(fd);
	if (rc < 0)
		fail(err, err_cap, "fdatasync: %s", strerror(errno));
	close(fd);
	return rc;
}

/* The renames durable: one (shared) fsync of new/ when all went into one Maildir. */
static int
flush_new_dirs(const struct deliver_batch *b, char *err, size_t err_cap)
{
	size_t first = SIZE_MAX;
	bool one = true;

	for (size_t k = 0; k < b->len; k++) {
		if (b->v[k].state != COPY_NEW)
			continue;
		if (first == SIZE_MAX)
			first = b->v[k].box;
		one = one && b->v[k].box == first;
	}
	if (first == SIZE_MAX)
		return 0; /* nothing renamed */
	if (one ? util_dirsync(box_md(b, first)->new_dir) == 0 : sync_filesystems(b, COPY_NEW) == 0)
		return 0;
	fail(err, err_cap, "%s new/: %s", one ? "fsync" : "syncfs", strerror(errno));
	return -1;
}

/* Takes back a copy: from new/ or tmp/ (the next attempt must not find it as well). */
static void
take_back(struct deliver_batch *b, struct pending *p)
{
	const struct maildir *md = box_md(b, p->box);

	if (p->state == COPY_NEW)
		unlinkat(md->new_dir, p->name, 0);
	else if (p->state == COPY_TMP)
		drop_copy(b, p);
	p->state = COPY_FAILED;
}

/*
 * Links the unnamed file fd into dir as name.  By the descriptor itself
 * (AT_EMPTY_PATH: Linux 6.10 and later allow it to the credentials that
 * opened the file, before only with CAP_DAC_READ_SEARCH) or, once that is
 * refused, by its /proc/self/fd path, which is a longer walk for the kernel.
 */
static int
link_unnamed(int fd, int dir, const char *name)
{
	char path[32];
	bool refused = false;

	if (!atomic_load_explicit(&by_proc_path, memory_order_relaxed)) {
		if (atomic_load_explicit(&refuse_empty, memory_order_relaxed))
			errno = ENOENT;
		else if (linkat(fd, "", dir, name, AT_EMPTY_PATH) == 0)
			return 0;
		if (errno != ENOENT && errno != EPERM)
			return -1;
		refused = true; /* or dir is gone: the /proc path tells */
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (linkat(AT_FDCWD, path, dir, name, AT_SYMLINK_FOLLOW) != 0)
		return -1;
	if (refused)
		atomic_store(&by_proc_path, true); /* the kernel refuses AT_EMPTY_PATH */
	return 0;
}

/*
 * Puts copy p into new/ under its name: links its unnamed file there, or
 * renames its tmp/ file.  A new/<name> already there (an earlier attempt's)
 * is replaced in one step as a rename does: by way of tmp/<name>, which must
 * not exist (as for a copy written there: O_EXCL).  *step: what failed.
 */
static int
publish(const struct maildir *md, struct pending *p, const char **step)
{
	*step = "rename to new/";
	if (p->fd < 0)
		return renameat(md->tmp, p->name, md->new_dir, p->name);
	*step = "link into new/";
	if (link_unnamed(p->fd, md->new_dir, p->name) == 0) {
		close(p->fd);
		p->fd = -1;
		return 0;
	}
	if (errno != EEXIST)
		return -1;
	*step = "link into tmp/";
	if (link_unnamed(p->fd, md->tmp, p->name) != 0)
		return -1;
	close(p->fd);
	p->fd = -1; /* a tmp/ file now: taken back from there should the rename fail */
	*step = "rename to new/";
	return renameat(md->tmp, p->name, md->new_dir, p->name);
}

int
deliver_batch_commit(struct deliver_batch *b, char *err, size_t err_cap)
{
	bool failed = false;
	const char *step;

	b->failed_all = false;
	if (b->len == 0)
		return 0;
	/* The data must be on disk before a rename makes a message visible. */
	if (flush_files(b, err, err_cap) < 0)
		goto fail_all;
	for (size_t k = 0; k < b->len; k++) {
		struct pending *p = &b->v[k];
		const struct maildir *md = box_md(b, p->box);

		if (p->state != COPY_TMP)
			continue; /* its group failed already */
		if (publish(md, p, &step) == 0) {
			p->state = COPY_NEW;
			continue;
		}
		/* That copy's group (its message) fails whole; the others go on. */
		if (!failed)
			fail(err, err_cap, "%s%s: %s", step, p->name, strerror(errno));
		failed = true;
		for (size_t j = 0; j < b->len; j++)
			if (b->v[j].group == p->group)
				take_back(b, &b->v[j]);
	}
	/* The renames are durable only once new/ itself is flushed. */
	if (flush_new_dirs(b, err, err_cap) < 0)
		goto fail_all;
	for (size_t k = 0; k < b->len; k++)
		if (b->v[k].state == COPY_NEW)
			b->v[k].state = COPY_DONE;
	return failed ? -1 : 0;
fail_all:
	for (size_t k = 0; k < b->len; k++)
		take_back(b, &b->v[k]);
	b->failed_all = true;
	return -1;
}

void
deliver_batch_free(struct deliver_batch *b)
{
	if (b == NULL)
		return;
	deliver_batch_rollback(b, 0);
	for (size_t i = 0; i < b->nboxes; i++) {
		struct box *bx = &b->boxes[i];

		if (bx->c != NULL)
			cache_put(bx->c, bx->retired);
		maildir_close(&bx->own);
		free(bx->mail_root);
		free(bx->domain);
		free(bx->user);
	}
	for (size_t i = 0; i < b->nfss; i++)
		close(b->fss[i].fd);
	free(b->fss);
	free(b->boxes);
	free(b->v);
	free(b);
}

int
deliver_maildir_write(const char *mail_root, const char *domain, const char *user, const char *name,
		      const struct deliver_msg *m, bool *permanent, char *err, size_t err_cap)
{
	struct deliver_batch *b = deliver_batch_new();
	int rc = deliver_batch_add(b, mail_root, domain, user, name, m, permanent, err, err_cap);

	if (rc == 0)
		rc = deliver_batch_commit(b, err, err_cap);
	deliver_batch_free(b);
	return rc;
}
