/*
 * server_privs — `user`: started as root, petrel binds its ports, hands
 * what it reads and writes on disk to that user, and becomes it for good.
 *
 * What a run as root left (before `user` was set, or at a kill -9) is
 * root's, 0600 and 0700: as the user petrel could open neither the journal
 * nor the queue files, nor write into a Maildir made then.  So the start
 * walks, once, without following a symbolic link:
 *   - spool_dir, the server's alone: every directory and every file with
 *     one link is made the user's (owner and group) — journal segments and
 *     `.next`, queue files and their `.st`, `.spare.N`, corrupt/, tmp/, the
 *     pid file.  In incoming/ (whose own modes queue_open sets) only drop
 *     files, by the rules the pickup relies on (queue_drop.c): root's become
 *     the user's, as `petrel sendmail` run by root gives them; other users'
 *     keep their owner and take the server's group, as incoming/'s setgid
 *     bit gives a file dropped there now, so that the server may read them.
 *   - mail_root: root's directories of the local domains, of their
 *     Maildirs, and those Maildirs' tmp/, new/ and cur/ (what deliveries
 *     write in).  Message files are never opened again by petrel and are
 *     not looked at: a big mail store costs a few stats a mailbox, not one a
 *     message.  Directories of other users (a Dovecot's) are left alone.
 * A file with more than one link is never handed over (a hard link to a
 * file elsewhere, planted by whoever could write the spool, keeps its
 * owner), nor is a symbolic link or a special file.  An entry is looked at
 * by name (fstatat, one call for the many that need nothing); one to hand
 * over or walk is then opened (O_PATH, O_NOFOLLOW), checked again and
 * changed through that descriptor: what was checked is what changes hands,
 * even in incoming/, where any local user may rename files.  A chown needs
 * no fsync: one lost in a crash is made again at the next start.
 */
#include "server/server_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf/conf.h"
#include "util/util_fs.h"
#include "util/util_log.h"

#define SPOOL_DEPTH_MAX 16 /* the spool is two deep; deeper is not petrel's doing */

enum walk_rule {
	WALK_SPOOL,    /* every directory (walked) and file with one link: the user's */
	WALK_INCOMING, /* drop files only: root's to the user, others' to the user's group */
	WALK_MAIL,     /* root's directories: local domains, Maildirs, tmp/ new/ cur/ */
};

/* Depths under mail_root: <domain>/<user>/{tmp,new,cur}. */
enum mail_depth {
	MAIL_DEPTH_DOMAIN = 1,
	MAIL_DEPTH_BOX = 2,
	MAIL_DEPTH_SUB = 3,
};

struct handover {
	const struct conf *conf; /* borrowed */
	uid_t uid;
	gid_t gid;
	size_t given;	 /* entries handed over */
	char path[4096]; /* of the entry at hand, for messages (truncated when longer) */
	size_t path_len;
};

/* Appends "/name" to h->path; returns the length to restore with path_pop(). */
static size_t
path_push(struct handover *h, const char *name)
{
	size_t old = h->path_len;
	int n = snprintf(h->path + old, sizeof(h->path) - old, "/%s", name);

	if (n > 0)
		h->path_len =
		    old + (size_t)n < sizeof(h->path) ? old + (size_t)n : sizeof(h->path) - 1;
	return old;
}

static void
path_pop(struct handover *h, size_t len)
{
	h->path_len = len;
	h->path[len] = '\0';
}

/* The path of the entry at hand, for a log line: escaped (in incoming/ a local user chose it). */
static const char *
shown_path(const struct handover *h, char *buf, size_t cap)
{
	return util_log_escape(buf, cap, h->path, h->path_len);
}

/*
 * Logs what could not be done with the entry at hand.  Under spool_dir
 * outside incoming/ that stops the start (-1): a message there would be
 * stuck; elsewhere only that entry is skipped (0).
 */
static int
failed(const struct handover *h, enum walk_rule rule, const char *what)
{
	char path[1024];
	int e = errno;

	shown_path(h, path, sizeof(path));
	if (rule == WALK_SPOOL) {
		log_err("user %s: cannot %s %s: %s", h->conf->user, what, path, strerror(e));
		return -1;
	}
	log_warn("user %s: cannot %s %s: %s; left as it is", h->conf->user, what, path,
		 strerror(e));
	return 0;
}

/* Gives the entry behind fd (any kind of descriptor) to uid:gid ((uid_t)-1: unchanged). */
static int
give(struct handover *h, enum walk_rule rule, int fd, uid_t uid, gid_t gid)
{
	if (fchownat(fd, "", uid, gid, AT_EMPTY_PATH) != 0)
		return failed(h, rule, "hand over");
	h->given++;
	return 0;
}

/* The owner the entry st describes must get under rule; false: none. */
static bool
new_owner(const struct handover *h, enum walk_rule rule, const struct stat *st, uid_t *uid,
	  gid_t *gid)
{
	*uid = h->uid;
	*gid = h->gid;
	switch (rule) {
	case WALK_SPOOL:
		return (S_ISDIR(st->st_mode) || (S_ISREG(st->st_mode) && st->st_nlink == 1)) &&
		       (st->st_uid != h->uid || st->st_gid != h->gid);
	case WALK_INCOMING:
		if (!S_ISREG(st->st_mode) || st->st_nlink != 1 || st->st_uid == h->uid)
			return false;
		if (st->st_uid == 0)
			return true;
		*uid = (uid_t)-1; /* the dropper's file: it stays theirs */
		return st->st_gid != h->gid;
	case WALK_MAIL:
		return S_ISDIR(st->st_mode) && st->st_uid == 0 && h->uid != 0;
	}
	return false;
}

static int walk(struct handover *h, int dir_fd, enum walk_rule rule, int depth);

/* Whether a directory at depth is walked (its entries looked at). */
static bool
is_walked(enum walk_rule rule, int depth)
{
	switch (rule) {
	case WALK_SPOOL:
		return true; /* (up to SPOOL_DEPTH_MAX: walk()) */
	case WALK_INCOMING:
		return false; /* a directory in incoming/ is nothing the pickup takes */
	case WALK_MAIL:
		return depth < MAIL_DEPTH_SUB;
	}
	return false;
}

/* Under mail_root only some directories are petrel's: skipped before any look at others. */
static bool
is_mail_name(const struct handover *h, const struct dirent *de, int depth)
{
	if (de->d_type != DT_DIR && de->d_type != DT_UNKNOWN)
		return false;
	switch ((enum mail_depth)depth) {
	case MAIL_DEPTH_DOMAIN:
		return conf_is_local_domain(h->conf, de->d_name, strlen(de->d_name));
	case MAIL_DEPTH_BOX:
		return true;
	case MAIL_DEPTH_SUB:
		return strcmp(de->d_name, "tmp") == 0 || strcmp(de->d_name, "new") == 0 ||
		       strcmp(de->d_name, "cur") == 0;
	}
	return false;
}

/* One entry of the directory parent, at depth (1: an entry of the top directory). */
static int
walk_entry(struct handover *h, int parent, const struct dirent *de, enum walk_rule rule, int depth)
{
	enum walk_rule child = rule;
	struct stat st;
	uid_t uid;
	gid_t gid;
	size_t mark;
	int fd = -1, dir, rc = 0;

	if (rule == WALK_MAIL && !is_mail_name(h, de, depth))
		return 0;
	if (rule == WALK_INCOMING && de->d_type != DT_REG && de->d_type != DT_UNKNOWN)
		return 0;
	mark = path_push(h, de->d_name);
	/* A look by name first: most entries need nothing, and cost one call. */
	if (fstatat(parent, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
		rc = errno == ENOENT ? 0 : failed(h, rule, "look at");
		goto out;
	}
	if (rule == WALK_SPOOL && S_ISREG(st.st_mode) && st.st_nlink > 1 && st.st_uid != h->uid) {
		char path[1024];

		/* (a queue file among them stays unreadable: the administrator must look) */
		log_warn("user %s: %s has %ju links: not handed over", h->conf->user,
			 shown_path(h, path, sizeof(path)), (uintmax_t)st.st_nlink);
		goto out;
	}
	if (!new_owner(h, rule, &st, &uid, &gid) &&
	    !(S_ISDIR(st.st_mode) && is_walked(rule, depth)))
		goto out;
	/* What changes hands is what the descriptor shows, not what the name showed. */
	fd = openat(parent, de->d_name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) != 0) {
		rc = errno == ENOENT ? 0 : failed(h, rule, "look at");
		goto out;
	}
	if (new_owner(h, rule, &st, &uid, &gid) && (rc = give(h, rule, fd, uid, gid)) != 0)
		goto out;
	if (!S_ISDIR(st.st_mode) || !is_walked(rule, depth))
		goto out;
	if (rule == WALK_SPOOL && depth == 1 && strcmp(de->d_name, "incoming") == 0)
		child = WALK_INCOMING;
	/* "." of the descriptor: the very directory looked at, wherever it is now. */
	dir = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		rc = failed(h, rule, "open");
		goto out;
	}
	rc = walk(h, dir, child, depth);
out:
	if (fd >= 0)
		close(fd);
	path_pop(h, mark);
	return rc;
}

/* Walks the entries of dir_fd (taken: closed here), the directory at depth. */
static int
walk(struct handover *h, int dir_fd, enum walk_rule rule, int depth)
{
	DIR *d;
	struct dirent *de;
	int rc = 0;

	if (rule == WALK_SPOOL && depth > SPOOL_DEPTH_MAX) {
		char path[1024];

		log_warn("user %s: %s: deeper than %d levels, not walked", h->conf->user,
			 shown_path(h, path, sizeof(path)), SPOOL_DEPTH_MAX);
		close(dir_fd);
		return 0;
	}
	d = fdopendir(dir_fd);
	if (d == NULL) {
		close(dir_fd);
		return failed(h, rule, "read");
	}
	while (rc == 0 && (errno = 0, de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			rc = walk_entry(h, dirfd(d), de, rule, depth + 1);
	}
	if (rc == 0 && de == NULL && errno != 0)
		rc = failed(h, rule, "read");
	closedir(d);
	return rc;
}

/*
 * spool_dir or mail_root, and what is under it (rule).  The directory itself
 * is the administrator's choice (it may be a symbolic link) and always
 * becomes the user's.  0, or -1 (logged).
 */
static int
walk_top(struct handover *h, const char *top, enum walk_rule rule)
{
	struct stat st;
	int fd;

	snprintf(h->path, sizeof(h->path), "%s", top);
	h->path_len = strlen(h->path);
	fd = open(top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) != 0 ||
	    ((st.st_uid != h->uid || st.st_gid != h->gid) &&
	     fchownat(fd, "", h->uid, h->gid, AT_EMPTY_PATH) != 0)) {
		log_err("cannot give %s to %s: %s", top, h->conf->user, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (st.st_uid != h->uid || st.st_gid != h->gid)
		h->given++;
	return walk(h, fd, rule, 0);
}

/*
 * Started as root with `user` set: the ports are bound; hand the spool and
 * the Maildirs to that user (above), then become it for good (groups first,
 * then gid, then uid) before any network input is read or any thread started.
 */
int
server_privs_drop(const struct conf *conf)
{
	struct handover h;
	struct passwd *pw;

	if (conf->user == NULL)
		return 0;
	if (geteuid() != 0) {
		log_warn("user = %s: not started as root, running as uid %d", conf->user,
			 (int)getuid());
		return 0;
	}
	pw = getpwnam(conf->user);
	if (pw == NULL) {
		log_err("user %s: no such user", conf->user);
		return -1;
	}
	if (util_mkdirs(conf->spool_dir, 0700) != 0) {
		log_err("spool_dir %s: %s", conf->spool_dir, strerror(errno));
		return -1;
	}
	memset(&h, 0, sizeof(h));
	h.conf = conf;
	h.uid = pw->pw_uid;
	h.gid = pw->pw_gid;
	if (walk_top(&h, conf->spool_dir, WALK_SPOOL) != 0 ||
	    walk_top(&h, conf->mail_root, WALK_MAIL) != 0)
		return -1;
	if (h.given > 0)
		log_info("user %s: %zu %s under %s and %s handed over", conf->user, h.given,
			 h.given == 1 ? "entry" : "entries", conf->spool_dir, conf->mail_root);
	if (initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 ||
	    setuid(pw->pw_uid) != 0) {
		log_err("cannot become %s: %s", conf->user, strerror(errno));
		return -1;
	}
	/* Verify: there must be no way back. */
	if (setuid(0) == 0 || geteuid() != pw->pw_uid || getegid() != pw->pw_gid) {
		log_err("privileges could not be dropped to %s", conf->user);
		return -1;
	}
	log_info("running as %s (uid %d, gid %d)", conf->user, (int)pw->pw_uid, (int)pw->pw_gid);
	return 0;
}
