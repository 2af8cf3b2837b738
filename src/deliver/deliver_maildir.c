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
#include <sys/stat.h>
#include <unistd.h>

#include "util/util_dirsync.h"
#include "util/util_mem.h"

/*
 * Maildir delivery (https://cr.yp.to/proto/maildir.html): write tmp/<name>,
 * flush it, rename it into new/, flush new/ (one flush shared by the deliveries
 * that reach the same new/ together: util_dirsync): a name in new/ always
 * stands for a whole message.  Every path component below
 * mail_root is opened relative to its parent with O_NOFOLLOW, so a symlink
 * planted in a mailbox cannot redirect a delivery elsewhere.
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
 * Copies the message from the spool file into fd with CRLF turned into LF.
 * A CR that ends one block is held until the next block shows whether an LF
 * follows; a CR not followed by LF is copied as is.  buf holds 2 * BLOCK_LEN
 * + 1 bytes: one block in, at most one block plus a held CR out.
 */
static int
copy_body(int fd, const struct deliver_msg *m, char *buf, char *err, size_t err_cap)
{
	char *in = buf, *out = buf + BLOCK_LEN;
	uint64_t left = m->body_len;
	off_t off = m->body_off;
	bool held_cr = false;

	while (left > 0) {
		size_t want = left < BLOCK_LEN ? (size_t)left : BLOCK_LEN;
		ssize_t n;
		size_t o = 0;

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
		for (size_t i = 0; i < (size_t)n; i++) {
			char ch = in[i];

			if (held_cr) {
				held_cr = false;
				if (ch == '\n') {
					out[o++] = '\n';
					continue;
				}
				out[o++] = '\r';
			}
			if (ch == '\r')
				held_cr = true;
			else
				out[o++] = ch;
		}
		if (write_all(fd, out, o) < 0) {
			fail(err, err_cap, "writing message: %s", strerror(errno));
			return -1;
		}
		off += n;
		left -= (uint64_t)n;
	}
	if (held_cr && write_all(fd, "\r", 1) < 0) {
		fail(err, err_cap, "writing message: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* Writes tmp/<name> and flushes it; the caller removes it on failure. */
static int
write_tmp(int fd, const struct deliver_msg *m, char *err, size_t err_cap)
{
	char *buf;
	int rc;

	if (m->headers != NULL && write_all(fd, m->headers, strlen(m->headers)) < 0) {
		fail(err, err_cap, "writing headers: %s", strerror(errno));
		return -1;
	}
	buf = xmalloc(2 * BLOCK_LEN + 1);
	rc = copy_body(fd, m, buf, err, err_cap);
	free(buf);
	if (rc < 0)
		return -1;
	/* The data must be on disk before the rename makes the message visible. */
	if (fdatasync(fd) < 0) {
		fail(err, err_cap, "fdatasync: %s", strerror(errno));
		return -1;
	}
	return 0;
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

/* Keeps md (just opened, used successfully) for later; md is the cache's, or closed. */
static void
cache_add(const char *mail_root, const char *domain, const char *user, struct maildir *md)
{
	struct cached *slot = NULL;
	struct stat ids[3];

	if (fstat(md->domain, &ids[0]) != 0 || fstat(md->box, &ids[1]) != 0 ||
	    fstat(md->new_dir, &ids[2]) != 0) {
		maildir_close(md);
		return;
	}
	pthread_mutex_lock(&cache_lock);
	for (size_t i = 0; i < CACHE_SLOTS; i++) {
		struct cached *e = &cache[i];

		if (e->mail_root == NULL) {
			if (slot == NULL || slot->mail_root != NULL)
				slot = e; /* a free slot first */
			continue;
		}
		if (!e->stale && same_file(&e->ids[2], &ids[2])) {
			slot = NULL; /* kept already (another thread was first) */
			break;
		}
		if (e->users == 0 &&
		    (slot == NULL || (slot->mail_root != NULL && e->used < slot->used)))
			slot = e; /* else the one unused for the longest */
	}
	if (slot != NULL) {
		if (slot->mail_root != NULL)
			cache_drop(slot);
		slot->mail_root = xstrdup(mail_root);
		slot->domain = xstrdup(domain);
		slot->user = xstrdup(user);
		slot->md = *md;
		memcpy(slot->ids, ids, sizeof(ids));
		slot->used = ++cache_clock;
	} else {
		maildir_close(md);
	}
	pthread_mutex_unlock(&cache_lock);
}

/* Writes m as <name> into the open Maildir md. */
static int
write_into(const struct maildir *md, const char *name, const struct deliver_msg *m, char *err,
	   size_t err_cap)
{
	bool found = false, tmp_exists = false;
	int fd = -1, rc = -1;

	if (!m->first_copy && already_delivered(md, name, &found, err, err_cap) < 0)
		goto out;
	if (found) {
		rc = 0;
		goto out;
	}
	/* A tmp/<name> left by a crash during an earlier attempt is ours to replace. */
	if (!m->first_copy && unlinkat(md->tmp, name, 0) < 0 && errno != ENOENT) {
		fail(err, err_cap, "tmp/%s: %s", name, strerror(errno));
		goto out;
	}
	fd = openat(md->tmp, name, O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_WRONLY, 0600);
	if (fd < 0) {
		fail(err, err_cap, "tmp/%s: %s", name, strerror(errno));
		goto out;
	}
	tmp_exists = true;
	if (write_tmp(fd, m, err, err_cap) < 0)
		goto out;
	/* close() can report a late write error (NFS, quota). */
	rc = close(fd);
	fd = -1;
	if (rc < 0) {
		fail(err, err_cap, "close tmp/%s: %s", name, strerror(errno));
		goto out;
	}
	rc = -1;
	if (renameat(md->tmp, name, md->new_dir, name) < 0) {
		fail(err, err_cap, "rename to new/%s: %s", name, strerror(errno));
		goto out;
	}
	tmp_exists = false;
	/* The rename is durable only once new/ itself is flushed. */
	if (util_dirsync(md->new_dir) < 0) {
		fail(err, err_cap, "fsync new/: %s", strerror(errno));
		/* Not delivered: the next attempt must not find this copy as well. */
		unlinkat(md->new_dir, name, 0);
		goto out;
	}
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	if (tmp_exists)
		unlinkat(md->tmp, name, 0);
	return rc;
}

int
deliver_maildir_write(const char *mail_root, const char *domain, const char *user, const char *name,
		      const struct deliver_msg *m, bool *permanent, char *err, size_t err_cap)
{
	struct maildir md = {-1, -1, -1, -1, -1, -1};
	struct cached *c;

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
	c = cache_get(mail_root, domain, user);
	if (c != NULL) {
		if (write_into(&c->md, name, m, err, err_cap) == 0) {
			cache_put(c, false);
			return 0;
		}
		/* Whatever went wrong, once more with the directories looked up afresh. */
		cache_put(c, true);
	}
	if (maildir_open(&md, mail_root, domain, user, err, err_cap) < 0 ||
	    write_into(&md, name, m, err, err_cap) < 0) {
		maildir_close(&md);
		return -1;
	}
	cache_add(mail_root, domain, user, &md);
	return 0;
}

int
deliver_maildir_remove(const char *mail_root, const char *domain, const char *user,
		       const char *name, char *err, size_t err_cap)
{
	struct maildir md = {-1, -1, -1, -1, -1, -1};
	int rc = -1;

	if (!deliver_local_part_is_safe(user, strlen(user)) ||
	    !component_is_safe(domain, DOMAIN_MAX, true) ||
	    !component_is_safe(name, NAME_MAX_LEN, false)) {
		fail(err, err_cap, "unsafe mailbox, domain or file name");
		return -1;
	}
	if (maildir_open(&md, mail_root, domain, user, err, err_cap) < 0)
		goto out;
	if (unlinkat(md.new_dir, name, 0) < 0 && errno != ENOENT) {
		fail(err, err_cap, "new/%s: %s", name, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	maildir_close(&md);
	return rc;
}
