/*
 * Unit tests for src/deliver: local-part safety, users and aliases files,
 * recipient checks, alias expansion and Maildir writing.  Files live under a
 * mkdtemp() directory removed at the end; no conf_load(): each test builds
 * its struct conf by hand.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf/conf.h"
#include "deliver/deliver.h"
#include "util/util_mem.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define BLOCK	     (64 * 1024) /* deliver_maildir.c reads the spool file in blocks of this size */

static char tmp_root[] = "/tmp/petrel-test-deliver-XXXXXX";
#include "unit_tmpdir.h"
static unsigned file_seq;

/* ---- helpers ---- */

static char *
path_join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = xmalloc(la + 1 + lb + 1);

	memcpy(p, a, la);
	p[la] = '/';
	memcpy(p + la + 1, b, lb + 1);
	return p;
}

/* A fresh directory under tmp_root; caller frees the path. */
static char *
fresh_dir(void)
{
	char name[32];
	char *p;

	snprintf(name, sizeof(name), "d%u", file_seq++);
	p = path_join(tmp_root, name);
	assert_int_equal(mkdir(p, 0700), 0);
	return p;
}

static void
write_bytes(const char *path, const char *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

/* Writes text to a new file under tmp_root; caller frees the path. */
static char *
temp_file(const char *text)
{
	char name[32];
	char *p;

	snprintf(name, sizeof(name), "f%u", file_seq++);
	p = path_join(tmp_root, name);
	write_bytes(p, text, strlen(text));
	return p;
}

/* Reads a whole file; NULL when it does not exist. */
static char *
read_all(const char *path, size_t *len)
{
	struct stat st;
	char *buf;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return NULL;
	assert_int_equal(fstat(fd, &st), 0);
	buf = xmalloc((size_t)st.st_size + 1);
	assert_int_equal(read(fd, buf, (size_t)st.st_size), st.st_size);
	buf[st.st_size] = '\0';
	close(fd);
	*len = (size_t)st.st_size;
	return buf;
}

static size_t
count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	const struct dirent *e;
	size_t n = 0;

	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

static bool
exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

static struct conf *
conf_new(const char *users, const char *aliases, const char *delim)
{
	struct conf *c = xcalloc(1, sizeof(*c));

	c->local_domains = xcalloc(2, sizeof(*c->local_domains));
	c->local_domains[0] = xstrdup("example.org");
	c->local_domains[1] = xstrdup("example.net");
	c->local_domains_len = 2;
	c->users_file = users ? xstrdup(users) : NULL;
	c->aliases_file = aliases ? xstrdup(aliases) : NULL;
	c->recipient_delimiter = xstrdup(delim);
	return c;
}

static void
conf_del(struct conf *c)
{
	for (size_t i = 0; i < c->local_domains_len; i++)
		free(c->local_domains[i]);
	free(c->local_domains);
	free(c->users_file);
	free(c->aliases_file);
	free(c->recipient_delimiter);
	free(c);
}

/* Loads a db from users/aliases text (NULL = file unset). */
static struct deliver_db *
db_from(const char *users, const char *aliases, const char *delim, struct conf **cp, char *err,
	size_t err_cap)
{
	char *up = users ? temp_file(users) : NULL;
	char *ap = aliases ? temp_file(aliases) : NULL;
	struct deliver_db *db;

	*cp = conf_new(up, ap, delim);
	db = deliver_db_load(*cp, err, err_cap);
	free(up);
	free(ap);
	return db;
}

/* ---- deliver_local_part_is_safe ---- */

static void
test_local_part_is_safe(void **state)
{
	char long64[65], long65[66];
	const struct {
		const char *name;
		const char *s;
		size_t len;
		bool safe;
	} cases[] = {
	    {"plain", "a", 1, true},
	    {"dot inside", "a.b", 3, true},
	    {"leading dot", ".a", 2, false},
	    {"dot dot", "..", 2, false},
	    {"single dot", ".", 1, false},
	    {"slash", "a/b", 3, false},
	    {"control", "a\x01", 2, false},
	    {"DEL", "a\x7f", 2, false},
	    {"embedded NUL", "a\0b", 3, false},
	    {"newline", "a\nb", 3, false},
	    {"empty", "", 0, false},
	    {"64 octets", long64, 64, true},
	    {"65 octets", long65, 65, false},
	    {"UTF-8", "j\xc3\xb6rg", 5, true},
	    {"plus and dash", "a+b-c", 5, true},
	    {"trailing dot", "a.", 2, true},
	};

	memset(long64, 'x', 64);
	long64[64] = '\0';
	memset(long65, 'x', 65);
	long65[65] = '\0';
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool got = deliver_local_part_is_safe(cases[i].s, cases[i].len);

		if (got != cases[i].safe)
			fail_msg("case '%s': got %d", cases[i].name, got);
	}
	assert_false(deliver_local_part_is_safe(NULL, 0));
}

/* ---- users file ---- */

static const char users_text[] = "# users\n"
				 "\n"
				 "alice@example.org:{SHA512-CRYPT}$6$salt$hash\n"
				 "   # indented comment\n"
				 "Bob@Example.ORG:{PLAIN}pw:1000:1000::/home/bob::extra\n"
				 "carol@example.net:{PLAIN}c\r\n"
				 "nopw@example.org:\n"
				 "bob+list@example.org:{PLAIN}l\n";

static void
test_users_file(void **state)
{
	char err[256] = "";
	struct conf *c;
	struct deliver_db *db = db_from(users_text, NULL, "+", &c, err, sizeof(err));

	assert_non_null(db);
	assert_string_equal(deliver_db_password(db, "alice@example.org"),
			    "{SHA512-CRYPT}$6$salt$hash");
	assert_string_equal(deliver_db_password(db, "ALICE@example.ORG"),
			    "{SHA512-CRYPT}$6$salt$hash");
	/* Extra passwd-file fields are not part of the password. */
	assert_string_equal(deliver_db_password(db, "bob@example.org"), "{PLAIN}pw");
	assert_string_equal(deliver_db_password(db, "carol@example.net"), "{PLAIN}c");
	assert_null(deliver_db_password(db, "nobody@example.org"));
	assert_null(deliver_db_password(db, "alice@example.net"));
	assert_null(deliver_db_password(db, "alice"));
	/* Listed with an empty password: receives mail, cannot log in. */
	assert_null(deliver_db_password(db, "nopw@example.org"));
	assert_int_equal(deliver_check_rcpt(db, c, "nopw", 4, "example.org", 11), DELIVER_RCPT_OK);
	deliver_db_free(db);
	conf_del(c);
}

static void
test_users_file_errors(void **state)
{
	const struct {
		const char *name;
		const char *text;
		const char *want; /* expected after "PATH:" */
	} cases[] = {
	    {"no @", "# c\nalice:{PLAIN}x\n", ":2: user field is not user@domain"},
	    {"no @, later line", "a@example.org:{PLAIN}x\n\nbob:{PLAIN}y\n",
	     ":3: user field is not user@domain"},
	    {"no colon", "alice@example.org\n", ":1: expected user@domain:{SCHEME}hash"},
	    {"unsafe local", "../x@example.org:{PLAIN}x\n", ":1: user: unsafe or empty local part"},
	    {"empty local", "@example.org:{PLAIN}x\n", ":1: user: unsafe or empty local part"},
	    {"empty domain", "a@:{PLAIN}x\n", ":1: user: bad or empty domain"},
	    {"slash domain", "a@x/y:{PLAIN}x\n", ":1: user: bad or empty domain"},
	    {"duplicate", "a@example.org:x\nA@EXAMPLE.org:y\n", ":2: duplicate user a@example.org"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char err[256] = "";
		struct conf *c;
		struct deliver_db *db = db_from(cases[i].text, NULL, "+", &c, err, sizeof(err));
		const char *colon = strchr(err, ':');

		if (db != NULL)
			fail_msg("case '%s': loaded", cases[i].name);
		/* "PATH:LINE: ..." names the file the conf gave. */
		if (strncmp(err, c->users_file, strlen(c->users_file)) != 0 || colon == NULL ||
		    strcmp(colon, cases[i].want) != 0)
			fail_msg("case '%s': err '%s'", cases[i].name, err);
		conf_del(c);
	}
}

static void
test_users_file_long_line_and_missing(void **state)
{
	char err[256] = "";
	char *text = xmalloc(10000);
	struct conf *c;
	struct deliver_db *db;

	memset(text, 'a', 9998);
	text[9998] = '\n';
	text[9999] = '\0';
	db = db_from(text, NULL, "+", &c, err, sizeof(err));
	assert_null(db);
	assert_non_null(strstr(err, ":1: line longer than"));
	conf_del(c);
	free(text);

	c = conf_new("/nonexistent/petrel-users", NULL, "+");
	assert_null(deliver_db_load(c, err, sizeof(err)));
	assert_string_equal(err, "/nonexistent/petrel-users: No such file or directory");
	conf_del(c);
}

/* ---- aliases file ---- */

static void
test_aliases_file_errors(void **state)
{
	const struct {
		const char *name;
		const char *text;
		const char *want;
	} cases[] = {
	    {"no colon", "# x\nroot@example.org alice\n", ":2: expected alias@domain: target, ..."},
	    {"empty targets", "root@example.org:\n", ":1: alias root@example.org has no targets"},
	    {"only commas", "root@example.org: , ,\n", ":1: alias root@example.org has no targets"},
	    {"no domain", "root: alice\n", ":1: alias: not local@domain"},
	    {"unsafe alias", ".x@example.org: alice\n", ":1: alias: unsafe or empty local part"},
	    {"pipe", "a@example.org: |/bin/sh\n",
	     ":1: pipe, file and :include: targets are not supported"},
	    {"file", "a@example.org: /var/mail/x\n",
	     ":1: pipe, file and :include: targets are not supported"},
	    {"include", "a@example.org: :include:/etc/list\n",
	     ":1: pipe, file and :include: targets are not supported"},
	    {"space in target", "a@example.org: b c\n", ":1: space or control character in target"},
	    {"empty target domain", "a@example.org: b@\n", ":1: empty domain in target"},
	    {"empty target local", "a@example.org: @x.test\n", ":1: empty local part in target"},
	    {"unsafe bare target", "a@example.org: ..\n", ":1: unsafe local part in target"},
	    {"unsafe target with domain", "a@example.org: ../etc@example.org\n",
	     ":1: unsafe local part in target"},
	    {"leading dot target with domain", "a@example.org: .x@remote.example\n",
	     ":1: unsafe local part in target"},
	    {"two @ in target", "a@example.org: b@@example.org\n", ":1: two @ in target"},
	    {"duplicate", "a@example.org: b\nA@example.org: c\n",
	     ":2: duplicate alias a@example.org"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char err[256] = "";
		struct conf *c;
		struct deliver_db *db = db_from(NULL, cases[i].text, "+", &c, err, sizeof(err));
		const char *colon = strchr(err, ':');

		if (db != NULL)
			fail_msg("case '%s': loaded", cases[i].name);
		if (strncmp(err, c->aliases_file, strlen(c->aliases_file)) != 0 || colon == NULL ||
		    strcmp(colon, cases[i].want) != 0)
			fail_msg("case '%s': err '%s'", cases[i].name, err);
		conf_del(c);
	}
}

/* ---- expansion ---- */

#define EXP_USERS                                                                                  \
	"alice@example.org:{PLAIN}a\n"                                                             \
	"bob@example.org:{PLAIN}b\n"                                                               \
	"dave@example.org:{PLAIN}d\n"                                                              \
	"self@example.org:{PLAIN}s\n"                                                              \
	"trash@example.org:{PLAIN}t\n"                                                             \
	"sales@example.net:{PLAIN}s\n"                                                             \
	"alice@example.net:{PLAIN}a\n"                                                             \
	"a b@example.org:{PLAIN}q\n"                                                               \
	"bob+list@example.org:{PLAIN}l\n"                                                          \
	"d10@example.org:{PLAIN}x\n"                                                               \
	"e11@example.org:{PLAIN}x\n"
static const char exp_users[] = EXP_USERS;
/* Without a delimiter the aliases' tagged targets must be users of their own. */
static const char exp_users_nodelim[] =
    EXP_USERS "alice+box@example.org:{PLAIN}x\nself2+x@example.org:{PLAIN}x\n";

static const char exp_aliases[] =
    "# aliases\n"
    "postmaster@example.org: root\n"
    "Root@Example.org: alice, BOB@example.org\n"
    "list@example.org: alice, bob, carol@Remote.TEST, root, Carol@remote.test\n"
    "self@example.org: self, dave\n"
    "self2@example.org: self2+x, dave\n"
    "loop1@example.org: loop2\n"
    "loop2@example.org: loop1\n"
    "alice+spam@example.org: trash\n"
    "tagged@example.org: alice+box\n"
    "info@example.net: sales, root@example.org\n"
    "fwd@example.org: someone@remote.test, alice@example.net\n"
    "d0@example.org: d1\nd1@example.org: d2\nd2@example.org: d3\nd3@example.org: d4\n"
    "d4@example.org: d5\nd5@example.org: d6\nd6@example.org: d7\nd7@example.org: d8\n"
    "d8@example.org: d9\nd9@example.org: d10\n"
    "e0@example.org: e1\ne1@example.org: e2\ne2@example.org: e3\ne3@example.org: e4\n"
    "e4@example.org: e5\ne5@example.org: e6\ne6@example.org: e7\ne7@example.org: e8\n"
    "e8@example.org: e9\ne9@example.org: e10\ne10@example.org: e11\n"
    "diamond@example.org: root, postmaster, list\n";

/* Targets joined with ',' (remote ones prefixed with '!') into dst. */
static void
join_targets(const struct deliver_target *t, size_t n, char *dst, size_t cap)
{
	size_t o = 0;

	dst[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		int w = snprintf(dst + o, cap - o, "%s%s%s", i ? "," : "", t[i].is_local ? "" : "!",
				 t[i].addr);

		assert_true(w > 0 && (size_t)w < cap - o);
		o += (size_t)w;
		if (t[i].is_local) {
			/* addr is exactly user@domain for local targets. */
			assert_non_null(t[i].user);
			assert_non_null(t[i].domain);
			assert_int_equal(strlen(t[i].addr),
					 strlen(t[i].user) + 1 + strlen(t[i].domain));
			assert_memory_equal(t[i].addr, t[i].user, strlen(t[i].user));
			assert_string_equal(t[i].addr + strlen(t[i].user) + 1, t[i].domain);
		} else {
			assert_null(t[i].user);
			assert_null(t[i].domain);
		}
	}
}

struct expand_case {
	const char *name;
	const char *addr;
	const char *want; /* joined targets, or NULL for an error */
	const char *err;  /* substring of the error when want is NULL */
};

static void
run_expand_cases(const char *users, const char *delim, const struct expand_case *cases, size_t n)
{
	char err[256] = "";
	struct conf *c;
	struct deliver_db *db = db_from(users, exp_aliases, delim, &c, err, sizeof(err));

	if (db == NULL)
		fail_msg("load: %s", err);
	for (size_t i = 0; i < n; i++) {
		struct deliver_target *t = (struct deliver_target *)&t;
		size_t len = 99;
		char got[1024];
		int rc;

		err[0] = '\0';
		rc = deliver_expand(db, c, cases[i].addr, &t, &len, err, sizeof(err));
		if (cases[i].want == NULL) {
			if (rc != -1 || t != NULL || len != 0 || strstr(err, cases[i].err) == NULL)
				fail_msg("case '%s': rc %d err '%s'", cases[i].name, rc, err);
			continue;
		}
		if (rc != 0)
			fail_msg("case '%s': %s", cases[i].name, err);
		join_targets(t, len, got, sizeof(got));
		if (strcmp(got, cases[i].want) != 0)
			fail_msg("case '%s': got '%s' want '%s'", cases[i].name, got,
				 cases[i].want);
		deliver_targets_free(t, len);
	}
	deliver_db_free(db);
	conf_del(c);
}

static void
test_expand(void **state)
{
	static const struct expand_case cases[] = {
	    {"user", "alice@example.org", "alice@example.org", NULL},
	    {"case", "ALICE@Example.ORG", "alice@example.org", NULL},
	    {"trailing dot", "alice@example.org.", "alice@example.org", NULL},
	    {"tag stripped", "alice+foo@example.org", "alice@example.org", NULL},
	    {"exact tagged alias first", "alice+spam@example.org", "trash@example.org", NULL},
	    {"two levels", "postmaster@example.org", "alice@example.org,bob@example.org", NULL},
	    {"alias via tag", "root+x@example.org", "alice@example.org,bob@example.org", NULL},
	    {"dedupe", "list@example.org",
	     "alice@example.org,bob@example.org,!carol@remote.test,!Carol@remote.test", NULL},
	    {"diamond", "diamond@example.org",
	     "alice@example.org,bob@example.org,!carol@remote.test,!Carol@remote.test", NULL},
	    {"self is a user", "self@example.org", "self@example.org,dave@example.org", NULL},
	    {"self via tag", "self2@example.org", "self2@example.org,dave@example.org", NULL},
	    {"tagged target", "tagged@example.org", "alice@example.org", NULL},
	    {"other local domain", "info@example.net",
	     "sales@example.net,alice@example.org,"
	     "bob@example.org",
	     NULL},
	    {"remote targets", "fwd@example.org", "!someone@remote.test,alice@example.net", NULL},
	    {"remote recipient", "X@Remote.Test", "!X@remote.test", NULL},
	    {"unknown local kept", "nobody@example.org", "nobody@example.org", NULL},
	    {"users file with tag", "bob+list@example.org", "bob+list@example.org", NULL},
	    {"other tag of bob", "bob+other@example.org", "bob@example.org", NULL},
	    {"empty before delimiter", "+foo@example.org", "+foo@example.org", NULL},
	    {"10 levels", "d0@example.org", "d10@example.org", NULL},
	    {"11 levels", "e0@example.org", NULL, "deeper than 10"},
	    {"loop", "loop1@example.org", NULL, "loop"},
	    {"unsafe", "../x@example.org", NULL, "unsafe local part"},
	    {"unsafe slash", "a/b@example.net", NULL, "unsafe local part"},
	    {"no domain", "alice", NULL, "no domain"},
	    /* a quoted local part names the mailbox of its unquoted form */
	    {"quoted user", "\"a b\"@example.org", "a b@example.org", NULL},
	    {"quoted plain", "\"alice\"@example.org", "alice@example.org", NULL},
	    {"quoted alias", "\"list\"@example.org",
	     "alice@example.org,bob@example.org,!carol@remote.test,!Carol@remote.test", NULL},
	    {"quoted escapes", "\"a\\\"b\"@example.org", "a\"b@example.org", NULL},
	    {"quoted dots", "\"a..b\"@example.org", "a..b@example.org", NULL},
	    {"quoted unsafe", "\"../x\"@example.org", NULL, "unsafe local part"},
	    {"quoted slash", "\"a/b\"@example.org", NULL, "unsafe local part"},
	    {"quoted empty", "\"\"@example.org", NULL, "unsafe local part"},
	    {"empty domain", "alice@", NULL, "no domain"},
	};

	run_expand_cases(exp_users, "+", cases, sizeof(cases) / sizeof(cases[0]));
}

static void
test_expand_delimiters(void **state)
{
	static const struct expand_case multi[] = {
	    {"plus", "alice+x@example.org", "alice@example.org", NULL},
	    {"dash", "alice-x@example.org", "alice@example.org", NULL},
	    {"first wins", "alice-x+y@example.org", "alice@example.org", NULL},
	};
	static const struct expand_case none[] = {
	    {"no delimiter", "alice+x@example.org", "alice+x@example.org", NULL},
	    {"exact alias still", "alice+spam@example.org", "trash@example.org", NULL},
	};

	run_expand_cases(exp_users, "+-", multi, sizeof(multi) / sizeof(multi[0]));
	run_expand_cases(exp_users_nodelim, "", none, sizeof(none) / sizeof(none[0]));
	/* Without a users file the result is the same shape. */
	run_expand_cases(NULL, "+-", multi, sizeof(multi) / sizeof(multi[0]));
}

/* ---- deliver_check_rcpt ---- */

struct rcpt_case {
	const char *local;
	size_t local_len; /* 0: strlen */
	const char *domain;
	enum deliver_rcpt_status want;
};

static void
run_rcpt_cases(const char *users, const char *delim, const struct rcpt_case *cases, size_t n)
{
	char err[256] = "";
	struct conf *c;
	struct deliver_db *db = db_from(users, exp_aliases, delim, &c, err, sizeof(err));

	if (db == NULL)
		fail_msg("load: %s", err);
	for (size_t i = 0; i < n; i++) {
		size_t len = cases[i].local_len ? cases[i].local_len : strlen(cases[i].local);
		enum deliver_rcpt_status got = deliver_check_rcpt(
		    db, c, cases[i].local, len, cases[i].domain, strlen(cases[i].domain));

		if (got != cases[i].want)
			fail_msg("case %zu '%s@%s': got %d want %d", i, cases[i].local,
				 cases[i].domain, got, cases[i].want);
	}
	deliver_db_free(db);
	conf_del(c);
}

static void
test_check_rcpt(void **state)
{
	static const struct rcpt_case with_users[] = {
	    {"alice", 0, "example.org", DELIVER_RCPT_OK},
	    {"ALICE", 0, "EXAMPLE.ORG", DELIVER_RCPT_OK},
	    {"alice", 0, "example.org.", DELIVER_RCPT_OK},
	    {"alice+tag", 0, "example.org", DELIVER_RCPT_OK},
	    {"bob", 0, "example.net", DELIVER_RCPT_UNKNOWN},
	    /* RFC 5321 4.5.1: postmaster exists at every local domain, listed or not */
	    {"postmaster", 0, "example.net", DELIVER_RCPT_OK},
	    {"PostMaster+x", 0, "example.net", DELIVER_RCPT_OK},
	    {"postmasters", 0, "example.net", DELIVER_RCPT_UNKNOWN},
	    {"a b", 0, "example.org", DELIVER_RCPT_OK},
	    {"nobody", 0, "example.org", DELIVER_RCPT_UNKNOWN},
	    {"nobody+alice", 0, "example.org", DELIVER_RCPT_UNKNOWN},
	    {"postmaster", 0, "example.org", DELIVER_RCPT_OK},
	    {"root+x", 0, "example.org", DELIVER_RCPT_OK},
	    {"Info", 0, "example.net", DELIVER_RCPT_OK},
	    {"bob+list", 0, "example.org", DELIVER_RCPT_OK},
	    {"+alice", 0, "example.org", DELIVER_RCPT_UNKNOWN},
	    {"../alice", 0, "example.org", DELIVER_RCPT_BAD_LOCAL},
	    {".alice", 0, "example.org", DELIVER_RCPT_BAD_LOCAL},
	    {"a/b", 0, "example.org", DELIVER_RCPT_BAD_LOCAL},
	    {"", 0, "example.org", DELIVER_RCPT_BAD_LOCAL},
	    {"al\0ice", 6, "example.org", DELIVER_RCPT_BAD_LOCAL},
	};
	static const struct rcpt_case without_users[] = {
	    {"anyone", 0, "example.org", DELIVER_RCPT_OK},
	    {"j\xc3\xb6rg", 0, "example.net", DELIVER_RCPT_OK},
	    {"postmaster", 0, "example.org", DELIVER_RCPT_OK},
	    {"a/b", 0, "example.org", DELIVER_RCPT_BAD_LOCAL},
	    {"..", 0, "example.org", DELIVER_RCPT_BAD_LOCAL},
	    {"a\r\n", 0, "example.org", DELIVER_RCPT_BAD_LOCAL},
	};
	static const struct rcpt_case no_delim[] = {
	    {"alice", 0, "example.org", DELIVER_RCPT_OK},
	    {"alice+tag", 0, "example.org", DELIVER_RCPT_UNKNOWN},
	    {"alice+spam", 0, "example.org", DELIVER_RCPT_OK},
	};

	run_rcpt_cases(exp_users, "+", with_users, sizeof(with_users) / sizeof(with_users[0]));
	run_rcpt_cases(NULL, "+", without_users, sizeof(without_users) / sizeof(without_users[0]));
	run_rcpt_cases(exp_users_nodelim, "", no_delim, sizeof(no_delim) / sizeof(no_delim[0]));
}

/* A domain spelled with Unicode labels and its A-label form are one domain. */
static void
test_international_domain(void **state)
{
	static const char users[] = "j\xc3\xb6rg@M\xc3\x9cller.example:{PLAIN}a\n"
				    "anna@xn--mller-kva.example:{PLAIN}b\n";
	static const char aliases[] = "info@m\xc3\xbcller.example: anna, j\xc3\xb6rg\n";
	char err[256] = "", got[512];
	char *up = temp_file(users), *ap = temp_file(aliases);
	struct conf *c = conf_new(up, ap, "+");
	struct deliver_db *db;
	struct deliver_target *t;
	size_t n;

	free(c->local_domains[1]);
	c->local_domains[1] = xstrdup("xn--mller-kva.example");
	db = deliver_db_load(c, err, sizeof(err));
	if (db == NULL)
		fail_msg("load: %s", err);
	assert_int_equal(deliver_check_rcpt(db, c, "j\xc3\xb6rg", 5, "m\xc3\xbcller.example", 15),
			 DELIVER_RCPT_OK);
	assert_int_equal(deliver_check_rcpt(db, c, "j\xc3\xb6rg", 5, "xn--mller-kva.example", 21),
			 DELIVER_RCPT_OK);
	assert_int_equal(deliver_check_rcpt(db, c, "anna+x", 6, "M\xc3\x9cLLER.example.", 16),
			 DELIVER_RCPT_OK);
	assert_int_equal(deliver_check_rcpt(db, c, "eve", 3, "m\xc3\xbcller.example", 15),
			 DELIVER_RCPT_UNKNOWN);
	/* AUTH names the user either way too */
	assert_string_equal(deliver_db_password(db, "J\xc3\xb6rg@m\xc3\xbcller.example"),
			    "{PLAIN}a");
	assert_string_equal(deliver_db_password(db, "anna@M\xc3\x9cller.Example"), "{PLAIN}b");
	assert_null(deliver_db_password(db, "anna@a\xe2\x81\x84"
					    "b.example"));
	/* The Maildir's directory is the A-label form, whatever the spelling. */
	assert_int_equal(
	    deliver_expand(db, c, "info@M\xc3\x9cller.example", &t, &n, err, sizeof(err)), 0);
	join_targets(t, n, got, sizeof(got));
	assert_string_equal(got, "anna@xn--mller-kva.example,j\xc3\xb6rg@xn--mller-kva.example");
	deliver_targets_free(t, n);
	assert_int_equal(deliver_resolve(db, c, "anna@m\xc3\xbcller.example", &t, err, sizeof(err)),
			 0);
	assert_string_equal(t[0].domain, "xn--mller-kva.example");
	deliver_targets_free(t, 1);
	/* Not a valid IDNA2008 name (U+2044): no local domain, left to the relay. */
	assert_int_equal(deliver_expand(db, c,
					"a@a\xe2\x81\x84"
					"b.example",
					&t, &n, err, sizeof(err)),
			 0);
	join_targets(t, n, got, sizeof(got));
	assert_string_equal(got, "!a@a\xe2\x81\x84"
				 "b.example");
	deliver_targets_free(t, n);
	deliver_db_free(db);
	conf_del(c);
	free(up);
	free(ap);
}

/* With a users_file, a local alias target must be a user or an alias (or postmaster). */
static void
test_alias_targets_must_exist(void **state)
{
	static const char users[] = "alice@example.org:{PLAIN}a\n";
	char err[512] = "";
	struct conf *c;
	struct deliver_db *db;

	db = db_from(users, "team@example.org: alice, alcie\n", "+", &c, err, sizeof(err));
	assert_null(db);
	assert_non_null(strstr(err, ": alias team@example.org: target alcie@example.org is neither "
				    "a user of "));
	conf_del(c);
	/* users (with a tag), aliases, postmaster, remote and quoted targets are all fine */
	db = db_from(users,
		     "team@example.org: alice+x, list, postmaster, x@remote.test\n"
		     "list@example.org: \"alice\"\n",
		     "+", &c, err, sizeof(err));
	if (db == NULL)
		fail_msg("load: %s", err);
	deliver_db_free(db);
	conf_del(c);
	/* without a users_file every local part exists */
	db = db_from(NULL, "team@example.org: alice, alcie\n", "+", &c, err, sizeof(err));
	assert_non_null(db);
	deliver_db_free(db);
	conf_del(c);
}

static void
test_empty_db(void **state)
{
	char err[64] = "";
	struct conf *c = conf_new(NULL, NULL, "+");
	struct deliver_db *db = deliver_db_load(c, err, sizeof(err));
	struct deliver_target *t;
	size_t n;

	assert_non_null(db);
	assert_null(deliver_db_password(db, "alice@example.org"));
	assert_int_equal(deliver_check_rcpt(db, c, "x", 1, "example.org", 11), DELIVER_RCPT_OK);
	assert_int_equal(deliver_expand(db, c, "x+y@example.org", &t, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 1);
	assert_string_equal(t[0].addr, "x@example.org");
	assert_string_equal(t[0].user, "x");
	assert_string_equal(t[0].domain, "example.org");
	assert_true(t[0].is_local);
	deliver_targets_free(t, n);
	deliver_targets_free(NULL, 0);
	deliver_db_free(db);
	deliver_db_free(NULL);
	conf_del(c);
}

/* A users file large enough to make the hash table grow several times. */
static void
test_many_users(void **state)
{
	const size_t n = 5000;
	char *text = xmalloc(n * 64);
	size_t o = 0;
	char err[256] = "";
	struct conf *c;
	struct deliver_db *db;

	for (size_t i = 0; i < n; i++)
		o += (size_t)snprintf(text + o, 64, "user%zu@example.org:{PLAIN}p%zu\n", i, i);
	db = db_from(text, NULL, "+", &c, err, sizeof(err));
	assert_non_null(db);
	for (size_t i = 0; i < n; i++) {
		char addr[64], pw[64];

		snprintf(addr, sizeof(addr), "USER%zu@example.org", i);
		snprintf(pw, sizeof(pw), "{PLAIN}p%zu", i);
		assert_string_equal(deliver_db_password(db, addr), pw);
	}
	assert_null(deliver_db_password(db, "user5000@example.org"));
	deliver_db_free(db);
	conf_del(c);
	free(text);
}

/* ---- Maildir ---- */

/* A spool-like file: junk, then the message at body_off. */
static struct deliver_msg
spool_msg(const char *dir, const char *prefix, const char *body, size_t body_len)
{
	char spool[32];
	char *p;
	size_t plen = strlen(prefix);
	char *data = xmalloc(plen + body_len + 1);
	struct deliver_msg m = {.headers = "Return-Path: <a@remote.test>\nDelivered-To: u@d\n"};

	snprintf(spool, sizeof(spool), "spool%u", file_seq++);
	p = path_join(dir, spool);
	memcpy(data, prefix, plen);
	memcpy(data + plen, body, body_len);
	write_bytes(p, data, plen + body_len);
	m.body_fd = open(p, O_RDONLY | O_CLOEXEC);
	assert_true(m.body_fd >= 0);
	m.body_off = (off_t)plen;
	m.body_len = body_len;
	free(data);
	free(p);
	return m;
}

/*
 * The expected Maildir file: headers, then body with CRLF turned into LF,
 * and an LF after a last line without one.
 */
static char *
expected_file(const struct deliver_msg *m, const char *body, size_t len, size_t *out_len)
{
	size_t hl = strlen(m->headers), o = hl;
	char *e = xmalloc(hl + len + 1);

	memcpy(e, m->headers, hl);
	for (size_t i = 0; i < len; i++) {
		if (body[i] == '\r' && i + 1 < len && body[i + 1] == '\n')
			continue;
		e[o++] = body[i];
	}
	if (len > 0 && body[len - 1] != '\n')
		e[o++] = '\n';
	*out_len = o;
	return e;
}

static void
check_delivered(const char *root, const char *rel, const struct deliver_msg *m, const char *body,
		size_t len)
{
	char *p = path_join(root, rel);
	size_t got_len, want_len;
	char *got = read_all(p, &got_len);
	char *want = expected_file(m, body, len, &want_len);
	struct stat st;

	if (got == NULL)
		fail_msg("%s missing", p);
	assert_int_equal(got_len, want_len);
	assert_memory_equal(got, want, want_len);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	free(got);
	free(want);
	free(p);
}

static void
test_maildir_write(void **state)
{
	static const char body[] = "Subject: hi\r\n\r\nline 1\r\nbare\rcr\r\n\r\nlast\r\n";
	char *dir = fresh_dir();
	char *root = path_join(dir, "mail");
	struct deliver_msg m = spool_msg(dir, "SPOOL HEADER\n", body, sizeof(body) - 1);
	const char *subdirs[] = {"",
				 "/example.org",
				 "/example.org/alice",
				 "/example.org/alice/tmp",
				 "/example.org/alice/new",
				 "/example.org/alice/cur"};
	bool permanent = true;
	char err[256] = "";

	/* mail_root itself is created when missing, like the Maildir under it. */
	assert_int_equal(deliver_maildir_write(root, "example.org", "alice", "0123ABCD.1", &m,
					       &permanent, err, sizeof(err)),
			 0);
	assert_false(permanent);
	check_delivered(root, "example.org/alice/new/0123ABCD.1", &m, body, sizeof(body) - 1);
	for (size_t i = 0; i < sizeof(subdirs) / sizeof(subdirs[0]); i++) {
		char p[512];
		struct stat st;

		snprintf(p, sizeof(p), "%s%s", root, subdirs[i]);
		assert_int_equal(stat(p, &st), 0);
		assert_true(S_ISDIR(st.st_mode));
		assert_int_equal(st.st_mode & 07777, 0700);
	}
	snprintf(err, sizeof(err), "%s/example.org/alice/tmp", root);
	assert_int_equal(count_entries(err), 0);
	close(m.body_fd);
	free(root);
	free(dir);
}

/* Bodies that put CR, LF or CRLF across the 64 KiB read boundaries. */
static const struct {
	const char *name;
	size_t len;
	const char *prefix; /* spool bytes before body_off; blocks start at body_off */
	size_t cr_at[4];    /* positions of CR (0 ends the list) */
	size_t lf_at[4];
} edge_cases[] = {
    {"CRLF across each edge",
     3 * BLOCK + 10,
     "",
     {BLOCK - 1, 2 * BLOCK - 1, 3 * BLOCK - 1},
     {BLOCK, 2 * BLOCK, 3 * BLOCK}},
    {"CRLF across edge, offset", BLOCK + 5, "0123456", {BLOCK - 1}, {BLOCK}},
    {"CR at edge, no LF", BLOCK + 5, "", {BLOCK - 1}, {0}},
    {"CRLF just before edge", BLOCK + 5, "", {BLOCK - 2}, {BLOCK - 1}},
    {"CRLF just after edge", BLOCK + 5, "", {BLOCK}, {BLOCK + 1}},
    {"CR CR LF across edge", BLOCK + 5, "", {BLOCK - 1, BLOCK}, {BLOCK + 1}},
    {"CR last byte of body", BLOCK + 1, "", {BLOCK}, {0}},
    {"CR last byte of one block", BLOCK, "", {BLOCK - 1}, {0}},
    {"CRLF ends exactly at edge", BLOCK, "", {BLOCK - 2}, {BLOCK - 1}},
};

/* The body of edge_cases[i] into body (len octets). */
static void
edge_body(size_t i, char *body)
{
	size_t len = edge_cases[i].len;

	/* Ordinary CRLF lines of 78 characters, then the CRs and LFs under test. */
	for (size_t j = 0; j < len; j++)
		body[j] = (j % 80 == 78) ? '\r' : (j % 80 == 79) ? '\n' : 'a' + (char)(j % 26);
	for (size_t j = 0; j < len; j++)
		if (j % BLOCK >= BLOCK - 3 || j % BLOCK <= 3)
			body[j] = 'x'; /* near an edge only the case's CRs and LFs */
	for (size_t k = 0; k < 4 && edge_cases[i].cr_at[k]; k++)
		body[edge_cases[i].cr_at[k]] = '\r';
	for (size_t k = 0; k < 4 && edge_cases[i].lf_at[k]; k++)
		body[edge_cases[i].lf_at[k]] = '\n';
}

/*
 * A message held in memory (body_mem), as the commit hands it over: it sits
 * prefix_len octets into a heap block that ends exactly where the message
 * does, so that reading one octet too far is caught by ASan.  body_fd is
 * invalid: nothing may be read from a file.  *block is freed by the caller.
 */
static struct deliver_msg
mem_msg(const char *body, size_t len, size_t prefix_len, bool first_copy, char **block)
{
	struct deliver_msg m = {.headers = "Return-Path: <a@remote.test>\nDelivered-To: u@d\n"};
	char *b = xmalloc(prefix_len + len > 0 ? prefix_len + len : 1);

	memset(b, '#', prefix_len);
	memcpy(b + prefix_len, body, len);
	m.body_mem = b + prefix_len;
	m.body_fd = -1;
	m.body_off = 0;
	m.body_len = len;
	m.first_copy = first_copy;
	*block = b;
	return m;
}

/*
 * Odd octets through the run-by-run CRLF conversion, from memory and from a
 * spool file, compared with the file written literally: NULs pass, a bare LF
 * stays, a CR not before an LF stays, CR CR LF keeps the first CR, a CR last
 * stays and gets the LF of the last line; the headers come first, in the
 * same write.
 */
static void
test_maildir_odd_octets(void **state)
{
	static const char body[] = "a\0b\r\n\0\0\r\nbare\nlf\r\rcr\r\nx\r\0y\r";
	static const char want[] = "Return-Path: <a@remote.test>\nDelivered-To: u@d\n"
				   "a\0b\n\0\0\nbare\nlf\r\rcr\nx\r\0y\r\n";
	char *dir = fresh_dir();
	char *block, *got;
	struct deliver_msg mem = mem_msg(body, sizeof(body) - 1, 3, true, &block);
	struct deliver_msg file = spool_msg(dir, "HEADER\n", body, sizeof(body) - 1);
	bool permanent = true;
	char err[256] = "", p[512];
	size_t len;

	file.headers = mem.headers;
	assert_int_equal(deliver_maildir_write(dir, "example.org", "oct", "MEM", &mem, &permanent,
					       err, sizeof(err)),
			 0);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "oct", "FILE", &file, &permanent,
					       err, sizeof(err)),
			 0);
	for (int i = 0; i < 2; i++) {
		snprintf(p, sizeof(p), "%s/example.org/oct/new/%s", dir, i == 0 ? "MEM" : "FILE");
		got = read_all(p, &len);
		assert_non_null(got);
		assert_int_equal(len, sizeof(want) - 1);
		assert_memory_equal(got, want, sizeof(want) - 1);
		free(got);
	}
	close(file.body_fd);
	free(block);
	free(dir);
}

static void
run_block_edges(bool in_memory)
{
	for (size_t i = 0; i < sizeof(edge_cases) / sizeof(edge_cases[0]); i++) {
		char *dir = fresh_dir();
		size_t len = edge_cases[i].len;
		char *body = xmalloc(len);
		char *block = NULL;
		struct deliver_msg m;
		bool permanent = true;
		char err[256] = "";

		edge_body(i, body);
		if (in_memory)
			m = mem_msg(body, len, strlen(edge_cases[i].prefix), true, &block);
		else
			m = spool_msg(dir, edge_cases[i].prefix, body, len);
		if (deliver_maildir_write(dir, "example.org", "bob", "MSG", &m, &permanent, err,
					  sizeof(err)) != 0)
			fail_msg("case '%s' (%s): %s", edge_cases[i].name,
				 in_memory ? "memory" : "spool file", err);
		check_delivered(dir, "example.org/bob/new/MSG", &m, body, len);
		if (m.body_fd >= 0)
			close(m.body_fd);
		free(block);
		free(body);
		free(dir);
	}
}

static void
test_maildir_block_edges(void **state)
{
	run_block_edges(false);
}

/* The same boundaries with the message in memory (delivery at the commit). */
static void
test_maildir_block_edges_memory(void **state)
{
	run_block_edges(true);
}

/* A message in memory: small, empty, and one CR-only last octet; body_fd is never read. */
static void
test_maildir_memory_body(void **state)
{
	static const char body[] = "Subject: mem\r\n\r\nline 1\r\nbare\rcr\r\n.dot\r\nlast\r";
	char *dir = fresh_dir();
	char *block;
	struct deliver_msg m = mem_msg(body, sizeof(body) - 1, 0, true, &block);
	bool permanent = true;
	char err[256] = "";
	char p[512];

	assert_int_equal(deliver_maildir_write(dir, "example.org", "hal", "MEM1", &m, &permanent,
					       err, sizeof(err)),
			 0);
	assert_false(permanent);
	check_delivered(dir, "example.org/hal/new/MEM1", &m, body, sizeof(body) - 1);
	snprintf(p, sizeof(p), "%s/example.org/hal/tmp", dir);
	assert_int_equal(count_entries(p), 0);
	free(block);

	/* An empty message in memory: only the headers. */
	m = mem_msg("", 0, 0, true, &block);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "hal", "MEM2", &m, &permanent,
					       err, sizeof(err)),
			 0);
	check_delivered(dir, "example.org/hal/new/MEM2", &m, "", 0);
	free(block);

	/* Without first_copy (a memory body and the usual look for an earlier copy). */
	m = mem_msg(body, sizeof(body) - 1, 3, false, &block);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "hal", "MEM3", &m, &permanent,
					       err, sizeof(err)),
			 0);
	check_delivered(dir, "example.org/hal/new/MEM3", &m, body, sizeof(body) - 1);
	free(block);
	snprintf(p, sizeof(p), "%s/example.org/hal/new", dir);
	assert_int_equal(count_entries(p), 3);
	free(dir);
}

/*
 * first_copy (the direct way: no earlier attempt can exist) writes without
 * looking for an earlier copy in cur/ and without clearing tmp/; a
 * redelivery (first_copy false) of what it wrote rewrites it while it is in
 * new/ (a crash may have cut it short) and skips it once read (in cur/).
 */
static void
test_maildir_first_copy(void **state)
{
	char *dir = fresh_dir();
	char *block_a, *block_b;
	struct deliver_msg a = mem_msg("A\r\n", 3, 0, true, &block_a);
	struct deliver_msg b = mem_msg("B\r\n", 3, 0, true, &block_b);
	struct deliver_msg redo = spool_msg(dir, "", "R\r\n", 3); /* first_copy false */
	bool permanent = true;
	char err[256] = "";
	char p[512], q[512];

	/* A file of that name in cur/ is not looked for: the message is written. */
	assert_int_equal(deliver_maildir_write(dir, "example.org", "ida", "M0", &a, &permanent, err,
					       sizeof(err)),
			 0);
	snprintf(p, sizeof(p), "%s/example.org/ida/cur/M1:2,S", dir);
	write_bytes(p, "read before\n", 12);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "ida", "M1", &b, &permanent, err,
					       sizeof(err)),
			 0);
	check_delivered(dir, "example.org/ida/new/M1", &b, "B\r\n", 3);
	assert_true(exists(p));

	/* Nor in new/: the earlier file is not consulted (the rename replaces it, one file). */
	snprintf(p, sizeof(p), "%s/example.org/ida/new/M2", dir);
	write_bytes(p, "old\n", 4);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "ida", "M2", &a, &permanent, err,
					       sizeof(err)),
			 0);
	check_delivered(dir, "example.org/ida/new/M2", &a, "A\r\n", 3);
	snprintf(p, sizeof(p), "%s/example.org/ida/new", dir);
	assert_int_equal(count_entries(p), 3); /* M0, M1, M2 */

	/* tmp/ is not cleared: a file of that name there makes it fail, transiently, untouched. */
	snprintf(p, sizeof(p), "%s/example.org/ida/tmp/M3", dir);
	write_bytes(p, "someone else's\n", 15);
	permanent = true;
	assert_int_equal(deliver_maildir_write(dir, "example.org", "ida", "M3", &a, &permanent, err,
					       sizeof(err)),
			 -1);
	assert_false(permanent);
	assert_non_null(strstr(err, "tmp/M3"));
	assert_true(exists(p));
	snprintf(q, sizeof(q), "%s/example.org/ida/new/M3", dir);
	assert_false(exists(q));
	/* The queue's later attempt (first_copy false) replaces the leftover and delivers. */
	assert_int_equal(deliver_maildir_write(dir, "example.org", "ida", "M3", &redo, &permanent,
					       err, sizeof(err)),
			 0);
	check_delivered(dir, "example.org/ida/new/M3", &redo, "R\r\n", 3);
	assert_false(exists(p));

	/* A redelivery of what the direct way delivered: in new/ it is written again ... */
	assert_int_equal(deliver_maildir_write(dir, "example.org", "ida", "M4", &a, &permanent, err,
					       sizeof(err)),
			 0);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "ida", "M4", &redo, &permanent,
					       err, sizeof(err)),
			 0);
	check_delivered(dir, "example.org/ida/new/M4", &redo, "R\r\n", 3);
	snprintf(p, sizeof(p), "%s/example.org/ida/new", dir);
	assert_int_equal(count_entries(p), 5); /* M0..M4, one file each */
	/* ... and skipped once the user has moved it to cur/. */
	snprintf(p, sizeof(p), "%s/example.org/ida/new/M4", dir);
	snprintf(q, sizeof(q), "%s/example.org/ida/cur/M4:2,S", dir);
	assert_int_equal(rename(p, q), 0);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "ida", "M4", &redo, &permanent,
					       err, sizeof(err)),
			 0);
	assert_false(exists(p));
	check_delivered(dir, "example.org/ida/cur/M4:2,S", &redo, "R\r\n", 3);
	snprintf(p, sizeof(p), "%s/example.org/ida/tmp", dir);
	assert_int_equal(count_entries(p), 0);

	/* A Maildir that cannot be written (new is a file): transient, nothing left in tmp/. */
	snprintf(p, sizeof(p), "%s/example.org/jon", dir);
	assert_int_equal(mkdir(p, 0700), 0);
	snprintf(p, sizeof(p), "%s/example.org/jon/new", dir);
	write_bytes(p, "", 0);
	permanent = true;
	assert_int_equal(deliver_maildir_write(dir, "example.org", "jon", "M5", &a, &permanent, err,
					       sizeof(err)),
			 -1);
	assert_false(permanent);
	assert_non_null(strstr(err, "Not a directory"));
	snprintf(p, sizeof(p), "%s/example.org/jon/tmp", dir);
	assert_int_equal(count_entries(p), 0);

	close(redo.body_fd);
	free(block_a);
	free(block_b);
	free(dir);
}

static void
test_maildir_redelivery(void **state)
{
	char *dir = fresh_dir();
	struct deliver_msg first = spool_msg(dir, "", "A\r\n", 3);
	struct deliver_msg second = spool_msg(dir, "", "B\r\n", 3);
	bool permanent;
	char err[256] = "";
	char p[512];

	assert_int_equal(deliver_maildir_write(dir, "example.org", "carol", "M1", &first,
					       &permanent, err, sizeof(err)),
			 0);
	/* Still in new/: written again over itself (a crash may have cut the first short). */
	assert_int_equal(deliver_maildir_write(dir, "example.org", "carol", "M1", &second,
					       &permanent, err, sizeof(err)),
			 0);
	check_delivered(dir, "example.org/carol/new/M1", &second, "B\r\n", 3);
	snprintf(p, sizeof(p), "%s/example.org/carol/new", dir);
	assert_int_equal(count_entries(p), 1);

	/* Already read by the user (moved to cur/ with flags): nothing is written. */
	snprintf(p, sizeof(p), "%s/example.org/carol/cur/M2:2,S", dir);
	write_bytes(p, "old\n", 4);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "carol", "M2", &second,
					       &permanent, err, sizeof(err)),
			 0);
	snprintf(p, sizeof(p), "%s/example.org/carol/new/M2", dir);
	assert_false(exists(p));

	/* cur/M2:2,S only shares a prefix with "M": that is another message. */
	assert_int_equal(deliver_maildir_write(dir, "example.org", "carol", "M", &second,
					       &permanent, err, sizeof(err)),
			 0);
	check_delivered(dir, "example.org/carol/new/M", &second, "B\r\n", 3);

	/* A tmp/ file left by a crash is replaced. */
	snprintf(p, sizeof(p), "%s/example.org/carol/tmp/M3", dir);
	write_bytes(p, "partial", 7);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "carol", "M3", &second,
					       &permanent, err, sizeof(err)),
			 0);
	check_delivered(dir, "example.org/carol/new/M3", &second, "B\r\n", 3);
	assert_false(exists(p));
	close(first.body_fd);
	close(second.body_fd);
	free(dir);
}

/*
 * The Maildir directories kept open between deliveries are used only while
 * they are still the ones at their path: a Maildir, a domain directory or
 * new/ moved away or replaced behind petrel's back is looked up again, and
 * nothing is written into what was moved.
 */
static void
test_maildir_cache_follows_the_path(void **state)
{
	char *dir = fresh_dir();
	char *block;
	struct deliver_msg m = mem_msg("x\r\n", 3, 0, true, &block);
	bool permanent;
	char err[256] = "";
	char a[512], b[512];

	/* 1: delivered, the directories kept; 2: the Maildir renamed away first. */
	assert_int_equal(deliver_maildir_write(dir, "example.org", "lee", "C1", &m, &permanent, err,
					       sizeof(err)),
			 0);
	snprintf(a, sizeof(a), "%s/example.org/lee", dir);
	snprintf(b, sizeof(b), "%s/example.org/lee.moved", dir);
	assert_int_equal(rename(a, b), 0);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "lee", "C2", &m, &permanent, err,
					       sizeof(err)),
			 0);
	check_delivered(dir, "example.org/lee/new/C2", &m, "x\r\n", 3);
	snprintf(a, sizeof(a), "%s/example.org/lee.moved/new", dir);
	assert_int_equal(count_entries(a), 1); /* C1 only */

	/* 3: the whole domain directory replaced by another. */
	snprintf(a, sizeof(a), "%s/example.org", dir);
	snprintf(b, sizeof(b), "%s/example.org.old", dir);
	assert_int_equal(rename(a, b), 0);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "lee", "C3", &m, &permanent, err,
					       sizeof(err)),
			 0);
	check_delivered(dir, "example.org/lee/new/C3", &m, "x\r\n", 3);
	snprintf(a, sizeof(a), "%s/example.org.old/lee/new", dir);
	assert_int_equal(count_entries(a), 1); /* C2 only */

	/* 4: new/ replaced by a symlink to a directory elsewhere: not followed. */
	snprintf(a, sizeof(a), "%s/example.org/lee/new", dir);
	snprintf(b, sizeof(b), "%s/elsewhere", dir);
	assert_int_equal(mkdir(b, 0700), 0);
	snprintf(b, sizeof(b), "%s/example.org/lee/new.real", dir);
	assert_int_equal(rename(a, b), 0);
	snprintf(b, sizeof(b), "%s/elsewhere", dir);
	assert_int_equal(symlink(b, a), 0);
	permanent = true;
	assert_int_equal(deliver_maildir_write(dir, "example.org", "lee", "C4", &m, &permanent, err,
					       sizeof(err)),
			 -1);
	assert_false(permanent);
	assert_int_equal(count_entries(b), 0);

	/* 5: more mailboxes than are kept open, then the first again: each in its place. */
	for (int i = 0; i < 40; i++) {
		char user[16];

		snprintf(user, sizeof(user), "u%d", i % 20);
		snprintf(b, sizeof(b), "M%d", i);
		assert_int_equal(deliver_maildir_write(dir, "example.org", user, b, &m, &permanent,
						       err, sizeof(err)),
				 0);
	}
	for (int i = 0; i < 20; i++) {
		snprintf(a, sizeof(a), "%s/example.org/u%d/new", dir, i);
		assert_int_equal(count_entries(a), 2);
	}
	free(block);
	free(dir);
}

/* Mailbox, domain and file names a delivery must refuse (permanently). */
static const struct unsafe_case {
	const char *domain, *user, *name;
} unsafe_cases[] = {
    {"example.org", ".x", "M"},
    {"example.org", "..", "M"},
    {"example.org", "a/b", "M"},
    {"example.org", "", "M"},
    {"example.org", "a\nb", "M"},
    {"../etc", "x", "M"},
    {".", "x", "M"},
    {"", "x", "M"},
    {"a/b", "x", "M"},
    {"exa\x01mple", "x", "M"},
    {"example.org", "x", "../M"},
    {"example.org", "x", ".M"},
    {"example.org", "x", "M:2,S"},
    {"example.org", "x", ""},
    {"example.org", "x", "a/b"},
};

static void
test_maildir_unsafe_names(void **state)
{
	const struct unsafe_case *cases = unsafe_cases;
	char *dir = fresh_dir();
	struct deliver_msg m = spool_msg(dir, "", "x\r\n", 3);

	for (size_t i = 0; i < ARRAY_LEN(unsafe_cases); i++) {
		bool permanent = false;
		char err[256] = "";

		if (deliver_maildir_write(dir, cases[i].domain, cases[i].user, cases[i].name, &m,
					  &permanent, err, sizeof(err)) != -1 ||
		    !permanent || err[0] == '\0')
			fail_msg("case %zu: accepted or not permanent", i);
	}
	/* Only the spool file: no directory was created. */
	assert_int_equal(count_entries(dir), 1);
	close(m.body_fd);
	free(dir);
}

/* Transient failures: -1, permanent clear, nothing left in tmp/ or new/. */
static void
test_maildir_transient_failures(void **state)
{
	char *dir = fresh_dir();
	struct deliver_msg m = spool_msg(dir, "", "x\r\n", 3);
	struct deliver_msg shortm = m;
	bool permanent = true;
	char err[256] = "";
	char p[512], q[512];

	/* tmp/ is a regular file (root ignores mode bits, so no chmod 0500 here). */
	snprintf(p, sizeof(p), "%s/example.org", dir);
	assert_int_equal(mkdir(p, 0700), 0);
	snprintf(p, sizeof(p), "%s/example.org/dan", dir);
	assert_int_equal(mkdir(p, 0700), 0);
	snprintf(p, sizeof(p), "%s/example.org/dan/new", dir);
	assert_int_equal(mkdir(p, 0700), 0);
	snprintf(p, sizeof(p), "%s/example.org/dan/tmp", dir);
	write_bytes(p, "", 0);
	assert_int_equal(
	    deliver_maildir_write(dir, "example.org", "dan", "M", &m, &permanent, err, sizeof(err)),
	    -1);
	assert_false(permanent);
	assert_non_null(strstr(err, "Not a directory"));
	snprintf(p, sizeof(p), "%s/example.org/dan/new", dir);
	assert_int_equal(count_entries(p), 0);

	/* The mailbox is a symlink: not followed. */
	snprintf(p, sizeof(p), "%s/elsewhere", dir);
	assert_int_equal(mkdir(p, 0700), 0);
	snprintf(q, sizeof(q), "%s/example.org/eve", dir);
	assert_int_equal(symlink(p, q), 0);
	permanent = true;
	assert_int_equal(
	    deliver_maildir_write(dir, "example.org", "eve", "M", &m, &permanent, err, sizeof(err)),
	    -1);
	assert_false(permanent);
	assert_int_equal(count_entries(p), 0);

	/* The spool file is shorter than body_len says. */
	shortm.body_len = 100;
	permanent = true;
	assert_int_equal(deliver_maildir_write(dir, "example.org", "fay", "M", &shortm, &permanent,
					       err, sizeof(err)),
			 -1);
	assert_false(permanent);
	assert_non_null(strstr(err, "spool file ends"));
	snprintf(p, sizeof(p), "%s/example.org/fay/tmp", dir);
	assert_int_equal(count_entries(p), 0);
	snprintf(p, sizeof(p), "%s/example.org/fay/new", dir);
	assert_int_equal(count_entries(p), 0);

	/* A bad spool descriptor. */
	shortm.body_fd = -1;
	shortm.body_len = 3;
	assert_int_equal(deliver_maildir_write(dir, "example.org", "fay", "M", &shortm, &permanent,
					       err, sizeof(err)),
			 -1);
	assert_false(permanent);
	assert_non_null(strstr(err, "reading spool file"));
	snprintf(p, sizeof(p), "%s/example.org/fay/tmp", dir);
	assert_int_equal(count_entries(p), 0);

	/* mail_root's parent is missing. */
	snprintf(p, sizeof(p), "%s/no/such/root", dir);
	assert_int_equal(
	    deliver_maildir_write(p, "example.org", "x", "M", &m, &permanent, err, sizeof(err)),
	    -1);
	assert_false(permanent);
	assert_non_null(strstr(err, "No such file or directory"));
	close(m.body_fd);
	free(dir);
}

static void
test_maildir_empty_body(void **state)
{
	char *dir = fresh_dir();
	struct deliver_msg m = spool_msg(dir, "prefix", "", 0);
	bool permanent;
	char err[256] = "";

	assert_int_equal(
	    deliver_maildir_write(dir, "example.org", "gus", "M", &m, &permanent, err, sizeof(err)),
	    0);
	check_delivered(dir, "example.org/gus/new/M", &m, "", 0);
	close(m.body_fd);
	free(dir);
}

/*
 * A message whose last line has no line end (a BDAT client may send one)
 * gets an LF in the Maildir, whole lines as Postfix writes them; one that
 * ends with CRLF gets no second.  From memory and from the spool file, also
 * when the message ends exactly at the end of a read block.
 */
static void
test_maildir_last_line_without_lf(void **state)
{
	static const struct {
		const char *body, *want;
	} cases[] = {
	    {"Subject: x\r\n\r\nabc", "Subject: x\n\nabc\n"},
	    {"Subject: x\r\n\r\nabc\r\n", "Subject: x\n\nabc\n"},
	    {"Subject: x\r\n\r\nabc\n", "Subject: x\n\nabc\n"},
	    {"abc", "abc\n"},
	};
	const char *headers = "Return-Path: <a@remote.test>\nDelivered-To: u@d\n";
	size_t hl = strlen(headers);
	char *dir = fresh_dir();
	char *big = xmalloc(BLOCK), *block, *got, name[32], p[512];
	bool permanent;
	char err[256] = "";
	size_t len;

	memset(big, 'z', BLOCK); /* the last case: one block exactly, no line end */
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]) + 1; i++) {
		const char *body = i < sizeof(cases) / sizeof(cases[0]) ? cases[i].body : big;
		size_t blen = body == big ? BLOCK : strlen(body);
		struct deliver_msg mem = mem_msg(body, blen, 0, true, &block);
		struct deliver_msg file = spool_msg(dir, "HEADER\n", body, blen);

		file.headers = mem.headers;
		for (int way = 0; way < 2; way++) {
			snprintf(name, sizeof(name), "M%zu.%d", i, way);
			assert_int_equal(deliver_maildir_write(dir, "example.org", "lf", name,
							       way == 0 ? &mem : &file, &permanent,
							       err, sizeof(err)),
					 0);
			snprintf(p, sizeof(p), "%s/example.org/lf/new/%s", dir, name);
			got = read_all(p, &len);
			assert_non_null(got);
			assert_memory_equal(got, headers, hl);
			if (body == big) {
				assert_int_equal(len, hl + BLOCK + 1);
				assert_int_equal(got[hl + BLOCK - 1], 'z');
				assert_int_equal(got[hl + BLOCK], '\n');
			} else {
				assert_int_equal(len, hl + strlen(cases[i].want));
				assert_memory_equal(got + hl, cases[i].want, strlen(cases[i].want));
			}
			free(got);
		}
		close(file.body_fd);
		free(block);
	}
	free(big);
	free(dir);
}

/* ---- batches (deliver_batch_*) ---- */

/* <dir>/<domain>/<user>/<sub>, into buf. */
static const char *
box_path(char *buf, size_t cap, const char *dir, const char *domain, const char *user,
	 const char *sub)
{
	snprintf(buf, cap, "%s/%s/%s/%s", dir, domain, user, sub);
	return buf;
}

/* How many entries <dir>/<domain>/<user>/<sub> has. */
static size_t
box_count(const char *dir, const char *domain, const char *user, const char *sub)
{
	char p[512];

	return count_entries(box_path(p, sizeof(p), dir, domain, user, sub));
}

/* dir's Maildir <domain>/<user> holds ntmp entries in tmp/ and nnew in new/. */
static void
assert_box(const char *dir, const char *domain, const char *user, size_t ntmp, size_t nnew)
{
	assert_int_equal(box_count(dir, domain, user, "tmp"), ntmp);
	assert_int_equal(box_count(dir, domain, user, "new"), nnew);
}

/* Adds one copy, which must succeed; returns the batch's length after it. */
static size_t
batch_add_ok(struct deliver_batch *b, const char *dir, const char *domain, const char *user,
	     const char *name, const struct deliver_msg *m)
{
	bool permanent = true;
	char err[256] = "";

	if (deliver_batch_add(b, dir, domain, user, name, m, &permanent, err, sizeof(err)) != 0)
		fail_msg("adding %s/%s/%s: %s", domain, user, name, err);
	assert_false(permanent);
	return deliver_batch_len(b);
}

/* The copies of one batch, written and made visible together. */
struct batch_copy {
	const char *domain, *user, *name;
	const char *body;
	size_t len;
	bool spooled; /* body from a spool file, else in memory */
};

/* Descriptors open in this process (the entries of /proc/self/fd, one the listing's own). */
static size_t
open_fds(void)
{
	return count_entries("/proc/self/fd");
}

/*
 * Tests of the unnamed way need a filesystem with unnamed files (O_TMPFILE)
 * under tmp_root: skipped where there is none (petrel writes by way of tmp/).
 */
static void
need_unnamed_files(void)
{
	int fd = open(tmp_root, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);

	if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL))
		skip();
	assert_true(fd >= 0);
	close(fd);
}

/*
 * Makes <dir>/<domain>/<user> a Maildir that petrel has written into before
 * (its directories kept open for the next delivery) and that holds nothing:
 * a batch into it then opens no directory, only what its copies need.
 */
static void
maildir_ready(const char *dir, const char *domain, const char *user)
{
	char *block;
	struct deliver_msg m = mem_msg("W\r\n", 3, 0, true, &block);
	bool permanent;
	char err[256] = "", p[512];

	if (deliver_maildir_write(dir, domain, user, "READY", &m, &permanent, err, sizeof(err)) !=
	    0)
		fail_msg("%s/%s: %s", domain, user, err);
	assert_int_equal(unlink(box_path(p, sizeof(p), dir, domain, user, "new/READY")), 0);
	free(block);
}

/*
 * The tmp/ way: every copy is in tmp/ (byte for byte, mode 0600) and none in
 * new/ until the commit.  The unnamed way: no copy is in tmp/ or new/ until
 * the commit, each held open instead (one more descriptor for each), and the
 * commit closes them.  After the commit, each is in new/ and tmp/ is empty;
 * freeing the committed batch takes nothing back (and, the unnamed way, into
 * Maildirs already open, leaves as many descriptors as before the batch).
 */
static void
run_batch(const struct batch_copy *cp, size_t n, bool unnamed)
{
	struct deliver_msg *m;
	char **blocks;
	struct deliver_batch *b;
	char *dir, err[256] = "", rel[512];
	size_t base, held;

	if (unnamed)
		need_unnamed_files();
	dir = fresh_dir();
	m = xcalloc(n, sizeof(*m));
	blocks = xcalloc(n, sizeof(*blocks));
	for (size_t i = 0; i < n; i++) {
		if (cp[i].spooled)
			m[i] = spool_msg(dir, "junk before\r\n", cp[i].body, cp[i].len);
		else
			m[i] = mem_msg(cp[i].body, cp[i].len, 5, true, &blocks[i]);
		if (unnamed)
			maildir_ready(dir, cp[i].domain, cp[i].user);
	}
	base = open_fds();
	b = deliver_batch_new();
	assert_int_equal(deliver_batch_len(b), 0);
	for (size_t i = 0; i < n; i++) {
		size_t before = open_fds();

		assert_int_equal(batch_add_ok(b, dir, cp[i].domain, cp[i].user, cp[i].name, &m[i]),
				 i + 1);
		/* (The first copy also opens the batch's descriptor of the filesystem.) */
		if (unnamed && i > 0)
			assert_int_equal(open_fds(), before + 1);
	}
	held = open_fds();
	for (size_t i = 0; i < n; i++) {
		if (unnamed) {
			assert_int_equal(box_count(dir, cp[i].domain, cp[i].user, "tmp"), 0);
		} else {
			snprintf(rel, sizeof(rel), "%s/%s/tmp/%s", cp[i].domain, cp[i].user,
				 cp[i].name);
			check_delivered(dir, rel, &m[i], cp[i].body, cp[i].len);
		}
		assert_int_equal(box_count(dir, cp[i].domain, cp[i].user, "new"), 0);
	}
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	assert_int_equal(open_fds(), held - (unnamed ? n : 0));
	for (size_t i = 0; i < n; i++) {
		snprintf(rel, sizeof(rel), "%s/%s/new/%s", cp[i].domain, cp[i].user, cp[i].name);
		check_delivered(dir, rel, &m[i], cp[i].body, cp[i].len);
		assert_int_equal(box_count(dir, cp[i].domain, cp[i].user, "tmp"), 0);
	}
	deliver_batch_free(b);
	if (unnamed)
		assert_int_equal(open_fds(), base);
	for (size_t i = 0; i < n; i++) {
		size_t in_box = 0;

		for (size_t j = 0; j < n; j++)
			in_box += strcmp(cp[i].domain, cp[j].domain) == 0 &&
				  strcmp(cp[i].user, cp[j].user) == 0;
		snprintf(rel, sizeof(rel), "%s/%s/new/%s", cp[i].domain, cp[i].user, cp[i].name);
		check_delivered(dir, rel, &m[i], cp[i].body, cp[i].len);
		assert_int_equal(box_count(dir, cp[i].domain, cp[i].user, "new"), in_box);
		assert_int_equal(box_count(dir, cp[i].domain, cp[i].user, "cur"), 0);
		if (m[i].body_fd >= 0)
			close(m[i].body_fd);
		free(blocks[i]);
	}
	free(blocks);
	free(m);
	free(dir);
}

static const char batch_body_a[] = "Subject: a\r\n\r\nline 1\r\nbare\rcr\r\n";
static const char batch_body_b[] = "Subject: b\r\n\r\n.dot\r\nlast\r";
static const char batch_body_c[] = "";

/* Several copies into one Maildir (new/ flushed once); a batch of one (fdatasync). */
static const struct batch_copy one_maildir[] = {
    {"example.org", "amy", "B1", batch_body_a, sizeof(batch_body_a) - 1, false},
    {"example.org", "amy", "B2", batch_body_b, sizeof(batch_body_b) - 1, true},
    {"example.org", "amy", "B3", batch_body_c, 0, false},
    {"example.org", "amy", "B4", batch_body_a, sizeof(batch_body_a) - 1, true},
};
static const struct batch_copy one_copy[] = {
    {"example.org", "amy", "B5", batch_body_b, sizeof(batch_body_b) - 1, false},
};

/* Copies into several Maildirs of two domains, several into some of them. */
static const struct batch_copy several_maildirs[] = {
    {"example.org", "amy", "S1", batch_body_a, sizeof(batch_body_a) - 1, false},
    {"example.org", "ben", "S2", batch_body_b, sizeof(batch_body_b) - 1, true},
    {"example.net", "amy", "S3", batch_body_b, sizeof(batch_body_b) - 1, false},
    {"example.org", "amy", "S4", batch_body_c, 0, true},
    {"example.net", "cat", "S5", batch_body_a, sizeof(batch_body_a) - 1, true},
    {"example.org", "ben", "S1", batch_body_a, sizeof(batch_body_a) - 1, false},
};

static void
test_batch_one_maildir(void **state)
{
	run_batch(one_maildir, ARRAY_LEN(one_maildir), false);
	run_batch(one_copy, ARRAY_LEN(one_copy), false);
}

static void
test_batch_several_maildirs(void **state)
{
	run_batch(several_maildirs, ARRAY_LEN(several_maildirs), false);
}

/* The same batches as unnamed files: nothing in tmp/ or new/ before the commit. */
static void
test_batch_unnamed_one_maildir(void **state)
{
	run_batch(one_maildir, ARRAY_LEN(one_maildir), true);
	run_batch(one_copy, ARRAY_LEN(one_copy), true);
}

static void
test_batch_unnamed_several_maildirs(void **state)
{
	run_batch(several_maildirs, ARRAY_LEN(several_maildirs), true);
}

/* rollback(mark) takes back only what was added after mark; the batch goes on from there. */
static void
test_batch_rollback(void **state)
{
	char *dir = fresh_dir();
	char *block;
	struct deliver_msg a = mem_msg("A\r\n", 3, 0, true, &block);
	struct deliver_msg s = spool_msg(dir, "", "S\r\n", 3);
	struct deliver_batch *b = deliver_batch_new();
	char err[256] = "";
	size_t mark;

	/* Nothing added: a rollback to 0 is harmless. */
	deliver_batch_rollback(b, 0);
	assert_int_equal(deliver_batch_len(b), 0);
	batch_add_ok(b, dir, "example.org", "amy", "R1", &a);
	mark = batch_add_ok(b, dir, "example.org", "amy", "R2", &s);
	assert_int_equal(mark, 2);
	batch_add_ok(b, dir, "example.org", "amy", "R3", &a);
	batch_add_ok(b, dir, "example.org", "ben", "R4", &s);
	assert_int_equal(batch_add_ok(b, dir, "example.net", "cat", "R5", &a), 5);
	/* A mark at or past the end changes nothing. */
	deliver_batch_rollback(b, 5);
	deliver_batch_rollback(b, 9);
	assert_int_equal(deliver_batch_len(b), 5);
	assert_int_equal(box_count(dir, "example.org", "amy", "tmp"), 3);

	deliver_batch_rollback(b, mark);
	assert_int_equal(deliver_batch_len(b), mark);
	check_delivered(dir, "example.org/amy/tmp/R1", &a, "A\r\n", 3);
	check_delivered(dir, "example.org/amy/tmp/R2", &s, "S\r\n", 3);
	assert_int_equal(box_count(dir, "example.org", "amy", "tmp"), 2);
	assert_int_equal(box_count(dir, "example.org", "ben", "tmp"), 0);
	assert_int_equal(box_count(dir, "example.net", "cat", "tmp"), 0);

	/* Added after the rollback (one name again): in the batch like the others. */
	assert_int_equal(batch_add_ok(b, dir, "example.org", "ben", "R4", &a), 3);
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	check_delivered(dir, "example.org/amy/new/R1", &a, "A\r\n", 3);
	check_delivered(dir, "example.org/amy/new/R2", &s, "S\r\n", 3);
	check_delivered(dir, "example.org/ben/new/R4", &a, "A\r\n", 3);
	assert_int_equal(box_count(dir, "example.org", "amy", "new"), 2);
	assert_int_equal(box_count(dir, "example.org", "ben", "new"), 1);
	assert_int_equal(box_count(dir, "example.net", "cat", "new"), 0);
	deliver_batch_free(b);
	assert_int_equal(box_count(dir, "example.org", "amy", "new"), 2);
	assert_int_equal(box_count(dir, "example.org", "ben", "new"), 1);
	assert_int_equal(box_count(dir, "example.org", "amy", "tmp"), 0);
	assert_int_equal(box_count(dir, "example.org", "ben", "tmp"), 0);
	assert_int_equal(box_count(dir, "example.net", "cat", "tmp"), 0);

	/* Rolled back to nothing, the commit delivers nothing. */
	b = deliver_batch_new();
	batch_add_ok(b, dir, "example.org", "amy", "R6", &a);
	deliver_batch_rollback(b, 0);
	assert_int_equal(deliver_batch_len(b), 0);
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	deliver_batch_free(b);
	assert_box(dir, "example.org", "amy", 0, 2);
	close(s.body_fd);
	free(block);
	free(dir);
}

/* A batch freed without its commit leaves nothing, in tmp/ or new/; an empty one commits. */
static void
test_batch_free_without_commit(void **state)
{
	char *dir = fresh_dir();
	char *block;
	struct deliver_msg a = mem_msg("A\r\n", 3, 0, true, &block);
	struct deliver_msg s = spool_msg(dir, "", "S\r\n", 3);
	struct deliver_batch *b = deliver_batch_new();
	char err[256] = "";

	batch_add_ok(b, dir, "example.org", "amy", "F1", &a);
	batch_add_ok(b, dir, "example.org", "amy", "F2", &s);
	assert_int_equal(batch_add_ok(b, dir, "example.net", "ben", "F3", &a), 3);
	assert_int_equal(box_count(dir, "example.org", "amy", "tmp"), 2);
	assert_int_equal(box_count(dir, "example.net", "ben", "tmp"), 1);
	deliver_batch_free(b);
	assert_box(dir, "example.org", "amy", 0, 0);
	assert_box(dir, "example.net", "ben", 0, 0);

	/* Nothing added at all. */
	b = deliver_batch_new();
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	deliver_batch_free(b);
	deliver_batch_free(NULL);
	close(s.body_fd);
	free(block);
	free(dir);
}

/*
 * The commit cannot rename into the second Maildir (its new/ removed, or
 * replaced by a file, under the batch): -1, and the copy already renamed
 * into the first Maildir's new/ is taken back; freeing the batch leaves no
 * tmp/ file.  Afterwards the second Maildir, repaired, is written again.
 */
static void
test_batch_commit_fails_part_way(void **state)
{
	for (int how = 0; how < 2; how++) {
		char *dir = fresh_dir();
		char *block;
		struct deliver_msg a = mem_msg("A\r\n", 3, 0, true, &block);
		struct deliver_msg s = spool_msg(dir, "", "S\r\n", 3);
		struct deliver_batch *b = deliver_batch_new();
		bool permanent = true;
		char err[256] = "";
		char p[512];

		batch_add_ok(b, dir, "example.org", "amy", "C1", &a);
		batch_add_ok(b, dir, "example.net", "ben", "C2", &s);
		assert_int_equal(batch_add_ok(b, dir, "example.org", "amy", "C3", &a), 3);
		box_path(p, sizeof(p), dir, "example.net", "ben", "new");
		assert_int_equal(rmdir(p), 0);
		if (how == 1)
			write_bytes(p, "not a directory\n", 16);

		assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), -1);
		if (err[0] == '\0')
			fail_msg("how %d: no error text", how);
		assert_non_null(strstr(err, "C2"));
		/* amy's C1 was renamed before ben's failed: not left in new/ */
		assert_int_equal(box_count(dir, "example.org", "amy", "new"), 0);
		if (how == 1) {
			size_t len;
			char *got = read_all(
			    box_path(p, sizeof(p), dir, "example.net", "ben", "new"), &len);

			assert_non_null(got);
			assert_int_equal(len, 16);
			assert_memory_equal(got, "not a directory\n", 16);
			free(got);
		}
		deliver_batch_free(b);
		assert_box(dir, "example.org", "amy", 0, 0);
		assert_int_equal(box_count(dir, "example.net", "ben", "tmp"), 0);

		/* Repaired, ben's Maildir (looked up afresh) takes the message again. */
		box_path(p, sizeof(p), dir, "example.net", "ben", "new");
		if (how == 1)
			assert_int_equal(unlink(p), 0);
		assert_int_equal(deliver_maildir_write(dir, "example.net", "ben", "C2", &s,
						       &permanent, err, sizeof(err)),
				 0);
		check_delivered(dir, "example.net/ben/new/C2", &s, "S\r\n", 3);
		close(s.body_fd);
		free(block);
		free(dir);
	}
}

/*
 * Groups: a copy that cannot be renamed takes back its own group's copies
 * only.  Group 1 (amy C2, ben C3) fails at ben's rename; group 0 (amy C1)
 * and group 2 (cal C4) are delivered; deliver_batch_failed tells them apart.
 */
static void
test_batch_failed_group_leaves_the_others(void **state)
{
	char *dir = fresh_dir();
	char *block;
	struct deliver_msg a = mem_msg("A\r\n", 3, 0, true, &block);
	struct deliver_batch *b = deliver_batch_new();
	char err[256] = "";
	char p[512];

	batch_add_ok(b, dir, "example.org", "amy", "C1", &a);
	deliver_batch_group(b, 1);
	batch_add_ok(b, dir, "example.org", "amy", "C2", &a);
	batch_add_ok(b, dir, "example.org", "ben", "C3", &a);
	deliver_batch_group(b, 2);
	assert_int_equal(batch_add_ok(b, dir, "example.org", "cal", "C4", &a), 4);
	assert_int_equal(rmdir(box_path(p, sizeof(p), dir, "example.org", "ben", "new")), 0);

	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "C3"));
	assert_false(deliver_batch_failed(b, 0));
	assert_true(deliver_batch_failed(b, 1));
	assert_false(deliver_batch_failed(b, 2));
	check_delivered(dir, "example.org/amy/new/C1", &a, "A\r\n", 3);
	check_delivered(dir, "example.org/cal/new/C4", &a, "A\r\n", 3);
	/* amy's C2 was renamed before ben's C3 failed: taken back. */
	assert_int_equal(box_count(dir, "example.org", "amy", "new"), 1);
	deliver_batch_free(b);
	assert_int_equal(box_count(dir, "example.org", "amy", "tmp"), 0);
	assert_int_equal(box_count(dir, "example.org", "ben", "tmp"), 0);
	assert_int_equal(box_count(dir, "example.org", "amy", "new"), 1);
	free(block);
	free(dir);
}

/*
 * A redelivery (first_copy false) of a copy the user already moved to cur/
 * as NAME:2,S adds nothing (0, the length unchanged, nothing written); a
 * first copy of the same name is not looked for there and is written.
 */
static void
test_batch_skips_copy_already_read(void **state)
{
	char *dir = fresh_dir();
	char *block;
	struct deliver_msg a = mem_msg("A\r\n", 3, 0, true, &block);
	struct deliver_msg redo = spool_msg(dir, "", "R\r\n", 3);
	struct deliver_batch *b = deliver_batch_new();
	bool permanent = true;
	char err[256] = "";
	char seen[512];
	size_t len;
	char *got;

	batch_add_ok(b, dir, "example.org", "amy", "K0", &a);
	snprintf(seen, sizeof(seen), "%s/example.org/amy/cur/K1:2,S", dir);
	write_bytes(seen, "read before\n", 12);
	assert_int_equal(deliver_batch_add(b, dir, "example.org", "amy", "K1", &redo, &permanent,
					   err, sizeof(err)),
			 0);
	assert_false(permanent);
	assert_int_equal(deliver_batch_len(b), 1);
	assert_int_equal(box_count(dir, "example.org", "amy", "tmp"), 1);
	/* Also in a batch of its own. */
	{
		struct deliver_batch *b2 = deliver_batch_new();

		assert_int_equal(deliver_batch_add(b2, dir, "example.org", "amy", "K1", &redo,
						   &permanent, err, sizeof(err)),
				 0);
		assert_int_equal(deliver_batch_len(b2), 0);
		assert_int_equal(deliver_batch_commit(b2, err, sizeof(err)), 0);
		deliver_batch_free(b2);
	}
	/* A first copy of the same name does not look there. */
	assert_int_equal(batch_add_ok(b, dir, "example.org", "amy", "K1", &a), 2);
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	deliver_batch_free(b);
	check_delivered(dir, "example.org/amy/new/K0", &a, "A\r\n", 3);
	check_delivered(dir, "example.org/amy/new/K1", &a, "A\r\n", 3);
	assert_box(dir, "example.org", "amy", 0, 2);
	assert_int_equal(box_count(dir, "example.org", "amy", "cur"), 1);
	got = read_all(seen, &len);
	assert_non_null(got);
	assert_int_equal(len, 12);
	assert_memory_equal(got, "read before\n", 12);
	free(got);
	close(redo.body_fd);
	free(block);
	free(dir);
}

/* Unsafe names: -1 with *permanent set, the length unchanged, no directory made. */
static void
test_batch_unsafe_names(void **state)
{
	const struct unsafe_case *cases = unsafe_cases;
	char *dir = fresh_dir();
	char *root = path_join(dir, "mail");
	char *block;
	struct deliver_msg a = mem_msg("A\r\n", 3, 0, true, &block);
	struct deliver_batch *b = deliver_batch_new();
	char err[256] = "";
	char p[512];

	batch_add_ok(b, root, "example.org", "amy", "U0", &a);
	for (size_t i = 0; i < ARRAY_LEN(unsafe_cases); i++) {
		bool permanent = false;

		err[0] = '\0';
		if (deliver_batch_add(b, root, cases[i].domain, cases[i].user, cases[i].name, &a,
				      &permanent, err, sizeof(err)) != -1 ||
		    !permanent || err[0] == '\0')
			fail_msg("case %zu: accepted or not permanent", i);
		assert_int_equal(deliver_batch_len(b), 1);
	}
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	deliver_batch_free(b);
	check_delivered(root, "example.org/amy/new/U0", &a, "A\r\n", 3);
	/* Only the one Maildir below mail_root. */
	assert_int_equal(count_entries(root), 1);
	snprintf(p, sizeof(p), "%s/example.org", root);
	assert_int_equal(count_entries(p), 1);
	assert_int_equal(count_entries(dir), 1);
	free(block);
	free(root);
	free(dir);
}

/*
 * A copy that cannot be written (its Maildir's tmp/ is a file; a leftover
 * tmp/ file of its name) fails alone: -1, not permanent, the length
 * unchanged, and the rest of the batch — also later copies into the same
 * Maildir — is committed.
 */
static void
test_batch_failed_add_leaves_the_rest(void **state)
{
	char *dir = fresh_dir();
	char *block;
	struct deliver_msg a = mem_msg("A\r\n", 3, 0, true, &block);
	struct deliver_batch *b = deliver_batch_new();
	bool permanent;
	char err[256] = "";
	char p[512], left[512];
	size_t len;
	char *got;

	snprintf(p, sizeof(p), "%s/example.org", dir);
	assert_int_equal(mkdir(p, 0700), 0);
	snprintf(p, sizeof(p), "%s/example.org/dan", dir);
	assert_int_equal(mkdir(p, 0700), 0);
	write_bytes(box_path(p, sizeof(p), dir, "example.org", "dan", "tmp"), "", 0);

	batch_add_ok(b, dir, "example.org", "amy", "E1", &a);
	permanent = true;
	assert_int_equal(
	    deliver_batch_add(b, dir, "example.org", "dan", "E2", &a, &permanent, err, sizeof(err)),
	    -1);
	assert_false(permanent);
	assert_non_null(strstr(err, "Not a directory"));
	assert_int_equal(deliver_batch_len(b), 1);

	/* A file of that name already in amy's tmp/ (first_copy: not ours to replace). */
	snprintf(left, sizeof(left), "%s/example.org/amy/tmp/E3", dir);
	write_bytes(left, "someone else's\n", 15);
	permanent = true;
	assert_int_equal(
	    deliver_batch_add(b, dir, "example.org", "amy", "E3", &a, &permanent, err, sizeof(err)),
	    -1);
	assert_false(permanent);
	assert_non_null(strstr(err, "tmp/E3"));
	assert_int_equal(deliver_batch_len(b), 1);
	/* amy's Maildir still takes the next copy. */
	assert_int_equal(batch_add_ok(b, dir, "example.org", "amy", "E4", &a), 2);
	assert_int_equal(batch_add_ok(b, dir, "example.org", "ben", "E5", &a), 3);

	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	deliver_batch_free(b);
	check_delivered(dir, "example.org/amy/new/E1", &a, "A\r\n", 3);
	check_delivered(dir, "example.org/amy/new/E4", &a, "A\r\n", 3);
	check_delivered(dir, "example.org/ben/new/E5", &a, "A\r\n", 3);
	assert_box(dir, "example.org", "amy", 1, 2);
	got = read_all(left, &len);
	assert_non_null(got);
	assert_int_equal(len, 15);
	assert_memory_equal(got, "someone else's\n", 15);
	free(got);
	assert_false(exists(box_path(p, sizeof(p), dir, "example.org", "dan", "new")));
	free(block);
	free(dir);
}

/* ---- batches as unnamed files (O_TMPFILE in new/, linked at the commit) ---- */

/*
 * rollback(mark): the copies added after the mark are closed there and then
 * (the descriptors back to what they were at the mark) and never appear in
 * tmp/ or new/; those before the mark, and one added after the rollback, are
 * delivered by the commit.  Rolled back to nothing, a batch delivers nothing.
 */
static void
test_batch_unnamed_rollback(void **state)
{
	const char *users[][2] = {
	    {"example.org", "amy"}, {"example.org", "ben"}, {"example.net", "cat"}};
	struct deliver_msg a, s;
	struct deliver_batch *b;
	char *dir, *block, err[256] = "";
	size_t base, mark, at_mark, held;

	need_unnamed_files();
	dir = fresh_dir();
	a = mem_msg("A\r\n", 3, 0, true, &block);
	s = spool_msg(dir, "", "S\r\n", 3);
	for (size_t i = 0; i < ARRAY_LEN(users); i++)
		maildir_ready(dir, users[i][0], users[i][1]);
	base = open_fds();
	b = deliver_batch_new();
	batch_add_ok(b, dir, "example.org", "amy", "R1", &a);
	mark = batch_add_ok(b, dir, "example.org", "amy", "R2", &s);
	at_mark = open_fds();
	batch_add_ok(b, dir, "example.org", "amy", "R3", &a);
	batch_add_ok(b, dir, "example.org", "ben", "R4", &s);
	assert_int_equal(batch_add_ok(b, dir, "example.net", "cat", "R5", &a), 5);
	assert_int_equal(open_fds(), at_mark + 3);

	deliver_batch_rollback(b, mark);
	assert_int_equal(deliver_batch_len(b), mark);
	assert_int_equal(open_fds(), at_mark);
	for (size_t i = 0; i < ARRAY_LEN(users); i++) {
		assert_int_equal(box_count(dir, users[i][0], users[i][1], "tmp"), 0);
		assert_int_equal(box_count(dir, users[i][0], users[i][1], "new"), 0);
	}

	/* Added after the rollback (one name again): in the batch like the others. */
	assert_int_equal(batch_add_ok(b, dir, "example.org", "ben", "R4", &a), 3);
	held = open_fds();
	assert_int_equal(held, at_mark + 1);
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	assert_int_equal(open_fds(), held - 3);
	check_delivered(dir, "example.org/amy/new/R1", &a, "A\r\n", 3);
	check_delivered(dir, "example.org/amy/new/R2", &s, "S\r\n", 3);
	check_delivered(dir, "example.org/ben/new/R4", &a, "A\r\n", 3);
	deliver_batch_free(b);
	assert_int_equal(open_fds(), base);
	assert_int_equal(box_count(dir, "example.org", "amy", "new"), 2);
	assert_int_equal(box_count(dir, "example.org", "ben", "new"), 1);
	assert_int_equal(box_count(dir, "example.net", "cat", "new"), 0);
	for (size_t i = 0; i < ARRAY_LEN(users); i++)
		assert_int_equal(box_count(dir, users[i][0], users[i][1], "tmp"), 0);

	/* Rolled back to nothing, the commit delivers nothing. */
	b = deliver_batch_new();
	batch_add_ok(b, dir, "example.org", "amy", "R6", &a);
	batch_add_ok(b, dir, "example.net", "cat", "R7", &s);
	held = open_fds();
	deliver_batch_rollback(b, 0);
	assert_int_equal(deliver_batch_len(b), 0);
	assert_int_equal(open_fds(), held - 2);
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	deliver_batch_free(b);
	assert_int_equal(open_fds(), base);
	assert_int_equal(box_count(dir, "example.org", "amy", "new"), 2);
	assert_int_equal(box_count(dir, "example.net", "cat", "new"), 0);
	assert_int_equal(box_count(dir, "example.org", "amy", "tmp"), 0);
	assert_int_equal(box_count(dir, "example.net", "cat", "tmp"), 0);
	close(s.body_fd);
	free(block);
	free(dir);
}

/* A batch freed without its commit closes its copies: nothing in tmp/ or new/, nothing held. */
static void
test_batch_unnamed_free_without_commit(void **state)
{
	struct deliver_msg a, s;
	struct deliver_batch *b;
	char *dir, *block;
	size_t base, first;

	need_unnamed_files();
	dir = fresh_dir();
	a = mem_msg("A\r\n", 3, 0, true, &block);
	s = spool_msg(dir, "", "S\r\n", 3);
	maildir_ready(dir, "example.org", "amy");
	maildir_ready(dir, "example.net", "ben");
	base = open_fds();
	b = deliver_batch_new();
	batch_add_ok(b, dir, "example.org", "amy", "F1", &a);
	first = open_fds();
	batch_add_ok(b, dir, "example.org", "amy", "F2", &s);
	assert_int_equal(batch_add_ok(b, dir, "example.net", "ben", "F3", &a), 3);
	assert_int_equal(open_fds(), first + 2);
	assert_box(dir, "example.org", "amy", 0, 0);
	assert_box(dir, "example.net", "ben", 0, 0);
	deliver_batch_free(b);
	assert_int_equal(open_fds(), base);
	assert_box(dir, "example.org", "amy", 0, 0);
	assert_box(dir, "example.net", "ben", 0, 0);
	close(s.body_fd);
	free(block);
	free(dir);
}

/*
 * A redelivery (first_copy false) over a new/<name> already there (an
 * earlier attempt's): until the commit new/<name> keeps its old content;
 * after it, new/<name> holds the new one, the only entry of that name, and
 * tmp/ is empty: alone (fdatasync) and in a batch (syncfs).  A copy the user
 * already moved to cur/<name>:2,S is not written: 0, nothing added, no
 * descriptor kept.
 */
static void
test_maildir_unnamed_redelivery(void **state)
{
	static const char old[] = "Subject: old\n\nan earlier, longer copy\n";
	struct deliver_msg a, redo, sredo;
	struct deliver_batch *b;
	bool permanent = true;
	char *dir, *block_a, *block_r, *got;
	char err[256] = "", p[512], seen[512];
	size_t base, held, len;

	need_unnamed_files();
	dir = fresh_dir();
	a = mem_msg("A\r\n", 3, 0, true, &block_a);
	redo = mem_msg("redone\r\n", 8, 0, false, &block_r);
	sredo = spool_msg(dir, "", "spooled\r\n", 9); /* first_copy false */
	assert_int_equal(deliver_maildir_write(dir, "example.org", "kim", "M1", &a, &permanent, err,
					       sizeof(err)),
			 0);
	base = open_fds();

	/* Alone. */
	assert_int_equal(deliver_maildir_write(dir, "example.org", "kim", "M1", &redo, &permanent,
					       err, sizeof(err)),
			 0);
	check_delivered(dir, "example.org/kim/new/M1", &redo, "redone\r\n", 8);
	assert_box(dir, "example.org", "kim", 0, 1);
	assert_int_equal(open_fds(), base);

	/* In a batch, with a copy of a new name. */
	write_bytes(box_path(p, sizeof(p), dir, "example.org", "kim", "new/M2"), old,
		    sizeof(old) - 1);
	b = deliver_batch_new();
	batch_add_ok(b, dir, "example.org", "kim", "M2", &sredo);
	batch_add_ok(b, dir, "example.org", "kim", "M3", &redo);
	held = open_fds();
	got = read_all(p, &len);
	assert_non_null(got);
	assert_int_equal(len, sizeof(old) - 1);
	assert_memory_equal(got, old, len);
	free(got);
	assert_box(dir, "example.org", "kim", 0, 2);
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	assert_int_equal(open_fds(), held - 2);
	check_delivered(dir, "example.org/kim/new/M2", &sredo, "spooled\r\n", 9);
	check_delivered(dir, "example.org/kim/new/M3", &redo, "redone\r\n", 8);
	assert_box(dir, "example.org", "kim", 0, 3);
	deliver_batch_free(b);
	assert_int_equal(open_fds(), base);

	/* Already read (cur/M4:2,S): nothing written, nothing held. */
	snprintf(seen, sizeof(seen), "%s/example.org/kim/cur/M4:2,S", dir);
	write_bytes(seen, "read before\n", 12);
	b = deliver_batch_new();
	batch_add_ok(b, dir, "example.org", "kim", "M5", &a);
	held = open_fds();
	assert_int_equal(deliver_batch_add(b, dir, "example.org", "kim", "M4", &redo, &permanent,
					   err, sizeof(err)),
			 0);
	assert_false(permanent);
	assert_int_equal(deliver_batch_len(b), 1);
	assert_int_equal(open_fds(), held);
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	deliver_batch_free(b);
	assert_int_equal(open_fds(), base);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "kim", "M4", &redo, &permanent,
					       err, sizeof(err)),
			 0);
	assert_int_equal(open_fds(), base);
	assert_false(exists(box_path(p, sizeof(p), dir, "example.org", "kim", "new/M4")));
	check_delivered(dir, "example.org/kim/new/M5", &a, "A\r\n", 3);
	assert_int_equal(box_count(dir, "example.org", "kim", "new"), 4); /* M1, M2, M3, M5 */
	assert_int_equal(box_count(dir, "example.org", "kim", "tmp"), 0);
	assert_int_equal(box_count(dir, "example.org", "kim", "cur"), 1);
	got = read_all(seen, &len);
	assert_non_null(got);
	assert_int_equal(len, 12);
	assert_memory_equal(got, "read before\n", 12);
	free(got);
	close(sredo.body_fd);
	free(block_a);
	free(block_r);
	free(dir);
}

/*
 * Copies that cannot be written fail alone (-1, not permanent, the length
 * unchanged), each leaving no copy open and nothing in tmp/ or new/: into a
 * Maildir whose new/ is a regular file; from a spool file shorter than the
 * message (the unnamed file, part written, is closed and so never had a
 * name); with no descriptor left for the unnamed file (EMFILE), which does
 * not make later copies go by way of tmp/.  The rest of the batch, added
 * before and after, is committed, also into the Maildirs where a copy
 * failed.
 */
static void
test_batch_unnamed_failed_add(void **state)
{
	struct deliver_msg a, s, shortm;
	struct deliver_batch *b;
	struct rlimit lim, low;
	bool permanent;
	char *dir, *block, *got;
	char err[256] = "", p[512];
	size_t base, held, len;
	int probe, rc;

	need_unnamed_files();
	dir = fresh_dir();
	a = mem_msg("A\r\n", 3, 0, true, &block);
	s = spool_msg(dir, "", "S\r\n", 3);
	shortm = s;
	shortm.body_len = 100;
	snprintf(p, sizeof(p), "%s/example.org", dir);
	assert_int_equal(mkdir(p, 0700), 0);
	snprintf(p, sizeof(p), "%s/example.org/dan", dir);
	assert_int_equal(mkdir(p, 0700), 0);
	write_bytes(box_path(p, sizeof(p), dir, "example.org", "dan", "new"), "", 0);
	maildir_ready(dir, "example.org", "amy");
	maildir_ready(dir, "example.org", "ben");
	base = open_fds();
	b = deliver_batch_new();
	batch_add_ok(b, dir, "example.org", "amy", "E1", &a);
	held = open_fds();

	/* dan's new/ is a regular file. */
	permanent = true;
	assert_int_equal(
	    deliver_batch_add(b, dir, "example.org", "dan", "E2", &a, &permanent, err, sizeof(err)),
	    -1);
	assert_false(permanent);
	assert_non_null(strstr(err, "Not a directory"));
	assert_int_equal(deliver_batch_len(b), 1);
	assert_int_equal(open_fds(), held);
	assert_int_equal(box_count(dir, "example.org", "dan", "tmp"), 0);

	/* The spool file ends before the message. */
	permanent = true;
	assert_int_equal(deliver_batch_add(b, dir, "example.org", "amy", "E3", &shortm, &permanent,
					   err, sizeof(err)),
			 -1);
	assert_false(permanent);
	assert_non_null(strstr(err, "spool file ends"));
	assert_int_equal(deliver_batch_len(b), 1);
	assert_box(dir, "example.org", "amy", 0, 0);
	/* (amy's Maildir, looked up afresh after that, is held open until the batch ends.) */
	held = open_fds();

	/* No descriptor to be had: every one below the limit is in use. */
	probe = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(probe >= 0);
	close(probe);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &lim), 0);
	low = lim;
	low.rlim_cur = (rlim_t)probe;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	permanent = true;
	rc =
	    deliver_batch_add(b, dir, "example.org", "ben", "E4", &a, &permanent, err, sizeof(err));
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);
	assert_int_equal(rc, -1);
	assert_false(permanent);
	assert_non_null(strstr(err, "Too many open files"));
	assert_int_equal(deliver_batch_len(b), 1);
	assert_int_equal(open_fds(), held);

	/* The same Maildirs take the next copies, as unnamed files still. */
	batch_add_ok(b, dir, "example.org", "amy", "E5", &s);
	assert_int_equal(batch_add_ok(b, dir, "example.org", "ben", "E6", &a), 3);
	held = open_fds();
	assert_box(dir, "example.org", "amy", 0, 0);
	assert_box(dir, "example.org", "ben", 0, 0);
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	assert_int_equal(open_fds(), held - 3);
	deliver_batch_free(b);
	check_delivered(dir, "example.org/amy/new/E1", &a, "A\r\n", 3);
	check_delivered(dir, "example.org/amy/new/E5", &s, "S\r\n", 3);
	check_delivered(dir, "example.org/ben/new/E6", &a, "A\r\n", 3);
	assert_int_equal(box_count(dir, "example.org", "amy", "new"), 2);
	assert_int_equal(box_count(dir, "example.org", "ben", "new"), 1);
	assert_int_equal(box_count(dir, "example.org", "amy", "tmp"), 0);
	assert_int_equal(box_count(dir, "example.org", "ben", "tmp"), 0);
	assert_int_equal(box_count(dir, "example.org", "dan", "tmp"), 0);
	got = read_all(box_path(p, sizeof(p), dir, "example.org", "dan", "new"), &len);
	assert_non_null(got);
	assert_int_equal(len, 0);
	free(got);
	/*
	 * A Maildir where a write failed is looked up afresh, not kept open:
	 * once both are open again, as many descriptors as before the batch.
	 */
	maildir_ready(dir, "example.org", "amy");
	maildir_ready(dir, "example.org", "ben");
	assert_int_equal(open_fds(), base);
	close(s.body_fd);
	free(block);
	free(dir);
}

/*
 * The commit cannot link ben's copy C3 into new/: ben's new/ removed, or
 * replaced by a file, after the add; or ben's new/C3 already there and tmp/
 * removed, so that the one-step replacement cannot be made (the earlier copy
 * stays as it was).  C3's group (amy C2, ben C3) is delivered nowhere: amy's
 * C2, linked first, is taken back, nothing is left in tmp/.  The other
 * groups (amy C1, cal C4) are delivered; deliver_batch_failed tells which,
 * and every copy's descriptor is closed.
 */
static void
test_batch_unnamed_link_fails(void **state)
{
	static const char earlier[] = "an earlier attempt's copy\n";

	need_unnamed_files();
	for (int how = 0; how < 3; how++) {
		char *dir = fresh_dir();
		char *block;
		struct deliver_msg a = mem_msg("A\r\n", 3, 0, true, &block);
		struct deliver_msg s = spool_msg(dir, "", "S\r\n", 3); /* first_copy false */
		struct deliver_batch *b;
		char err[256] = "", p[512];
		size_t base, held, len;
		char *got;

		maildir_ready(dir, "example.org", "amy");
		maildir_ready(dir, "example.org", "ben");
		maildir_ready(dir, "example.org", "cal");
		if (how == 2)
			write_bytes(box_path(p, sizeof(p), dir, "example.org", "ben", "new/C3"),
				    earlier, sizeof(earlier) - 1);
		base = open_fds();
		b = deliver_batch_new();
		batch_add_ok(b, dir, "example.org", "amy", "C1", &a);
		deliver_batch_group(b, 1);
		batch_add_ok(b, dir, "example.org", "amy", "C2", &a);
		batch_add_ok(b, dir, "example.org", "ben", "C3", &s);
		deliver_batch_group(b, 2);
		assert_int_equal(batch_add_ok(b, dir, "example.org", "cal", "C4", &a), 4);
		held = open_fds();
		box_path(p, sizeof(p), dir, "example.org", "ben", how == 2 ? "tmp" : "new");
		assert_int_equal(rmdir(p), 0);
		if (how == 1)
			write_bytes(p, "not a directory\n", 16);

		assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), -1);
		if (strstr(err, "C3") == NULL)
			fail_msg("how %d: %s", how, err);
		assert_int_equal(open_fds(), held - 4);
		assert_false(deliver_batch_failed(b, 0));
		assert_true(deliver_batch_failed(b, 1));
		assert_false(deliver_batch_failed(b, 2));
		check_delivered(dir, "example.org/amy/new/C1", &a, "A\r\n", 3);
		check_delivered(dir, "example.org/cal/new/C4", &a, "A\r\n", 3);
		assert_int_equal(box_count(dir, "example.org", "amy", "new"), 1);
		assert_int_equal(box_count(dir, "example.org", "cal", "new"), 1);
		if (how == 1) {
			got = read_all(box_path(p, sizeof(p), dir, "example.org", "ben", "new"),
				       &len);
			assert_non_null(got);
			assert_int_equal(len, 16);
			assert_memory_equal(got, "not a directory\n", 16);
			free(got);
		} else if (how == 2) {
			got = read_all(box_path(p, sizeof(p), dir, "example.org", "ben", "new/C3"),
				       &len);
			assert_non_null(got);
			assert_int_equal(len, sizeof(earlier) - 1);
			assert_memory_equal(got, earlier, len);
			free(got);
			assert_int_equal(box_count(dir, "example.org", "ben", "new"), 1);
		}
		deliver_batch_free(b);
		assert_int_equal(open_fds(), base);
		assert_box(dir, "example.org", "amy", 0, 1);
		assert_int_equal(box_count(dir, "example.org", "ben", "tmp"), 0);
		assert_int_equal(box_count(dir, "example.org", "cal", "tmp"), 0);
		close(s.body_fd);
		free(block);
		free(dir);
	}
}

/*
 * Where the kernel refuses linkat(AT_EMPTY_PATH), the first copy linked by
 * its /proc path switches every later link to that path; a link that fails
 * both ways (new/ gone) switches nothing.
 */
static void
test_unnamed_link_switches_after_refusal(void **state)
{
	char *dir = fresh_dir();
	char *block;
	struct deliver_msg a = mem_msg("A\r\n", 3, 0, true, &block);
	struct deliver_batch *b;
	char err[256] = "", p[512];

	need_unnamed_files();
	maildir_ready(dir, "example.org", "amy");
	maildir_ready(dir, "example.org", "ben");
	assert_true(deliver_maildir_links_by_path()); /* maildir_ready delivered a copy */
	deliver_maildir_link_by_path(false);

	b = deliver_batch_new();
	batch_add_ok(b, dir, "example.org", "ben", "F1", &a);
	assert_int_equal(rmdir(box_path(p, sizeof(p), dir, "example.org", "ben", "new")), 0);
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "F1"));
	deliver_batch_free(b);
	assert_false(deliver_maildir_links_by_path());

	b = deliver_batch_new();
	batch_add_ok(b, dir, "example.org", "amy", "F2", &a);
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), 0);
	deliver_batch_free(b);
	check_delivered(dir, "example.org/amy/new/F2", &a, "A\r\n", 3);
	assert_true(deliver_maildir_links_by_path());
	free(block);
	free(dir);
}

/*
 * The unnamed way and tmp/: a redelivery removes a tmp/<name> an earlier
 * attempt left; a first copy whose new/<name> is already there goes by way
 * of tmp/<name> only if that name is free there — a stranger's tmp/<name>
 * is left alone, the copy fails (transiently), and the new/<name> there
 * stays as it was.
 */
static void
test_maildir_unnamed_and_tmp_leftovers(void **state)
{
	static const char stale[] = "half a copy from a crash";
	static const char theirs[] = "someone else's file";
	static const char before[] = "Subject: before\n\nthere first\n";
	struct deliver_msg redo, first;
	struct deliver_batch *b;
	bool permanent = true;
	char *dir, *block_r, *block_f, *got;
	char err[256] = "", p[512];
	size_t len;

	(void)state;
	need_unnamed_files();
	dir = fresh_dir();
	redo = mem_msg("redone\r\n", 8, 0, false, &block_r);
	first = mem_msg("first\r\n", 7, 0, true, &block_f);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "lee", "M0", &first, &permanent,
					       err, sizeof(err)),
			 0);

	/* A redelivery: the stale tmp/M1 goes, new/M1 holds the copy. */
	write_bytes(box_path(p, sizeof(p), dir, "example.org", "lee", "tmp/M1"), stale,
		    sizeof(stale) - 1);
	assert_int_equal(deliver_maildir_write(dir, "example.org", "lee", "M1", &redo, &permanent,
					       err, sizeof(err)),
			 0);
	check_delivered(dir, "example.org/lee/new/M1", &redo, "redone\r\n", 8);
	assert_int_equal(box_count(dir, "example.org", "lee", "tmp"), 0);

	/* A first copy, new/M2 there and a stranger's tmp/M2: both stay, the group fails. */
	write_bytes(box_path(p, sizeof(p), dir, "example.org", "lee", "new/M2"), before,
		    sizeof(before) - 1);
	write_bytes(box_path(p, sizeof(p), dir, "example.org", "lee", "tmp/M2"), theirs,
		    sizeof(theirs) - 1);
	b = deliver_batch_new();
	deliver_batch_group(b, 0);
	batch_add_ok(b, dir, "example.org", "lee", "M3", &first);
	deliver_batch_group(b, 1);
	batch_add_ok(b, dir, "example.org", "lee", "M2", &first);
	assert_int_equal(deliver_batch_commit(b, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "tmp/M2"));
	assert_false(deliver_batch_failed(b, 0));
	assert_true(deliver_batch_failed(b, 1));
	deliver_batch_free(b);
	check_delivered(dir, "example.org/lee/new/M3", &first, "first\r\n", 7);
	got = read_all(box_path(p, sizeof(p), dir, "example.org", "lee", "new/M2"), &len);
	assert_non_null(got);
	assert_int_equal(len, sizeof(before) - 1);
	assert_memory_equal(got, before, len);
	free(got);
	got = read_all(box_path(p, sizeof(p), dir, "example.org", "lee", "tmp/M2"), &len);
	assert_non_null(got);
	assert_int_equal(len, sizeof(theirs) - 1);
	assert_memory_equal(got, theirs, len);
	free(got);
	assert_int_equal(box_count(dir, "example.org", "lee", "tmp"), 1);
	free(block_r);
	free(block_f);
	free(dir);
}

/* Copies as unnamed files linked into new/ (the default where the filesystem allows). */
static int
unnamed_way(void **state)
{
	(void)state;
	deliver_maildir_unnamed(true);
	deliver_maildir_link_by_path(false);
	deliver_maildir_refuse_empty_path(false);
	return 0;
}

/* Unnamed files linked by their /proc/self/fd path (kernels that refuse AT_EMPTY_PATH). */
static int
unnamed_proc_way(void **state)
{
	(void)state;
	deliver_maildir_unnamed(true);
	deliver_maildir_link_by_path(true);
	deliver_maildir_refuse_empty_path(false);
	return 0;
}

/* Unnamed files where the kernel refuses AT_EMPTY_PATH: the first link finds the /proc way. */
static int
unnamed_refused_way(void **state)
{
	(void)state;
	deliver_maildir_unnamed(true);
	deliver_maildir_link_by_path(false);
	deliver_maildir_refuse_empty_path(true);
	return 0;
}

/* Copies as tmp/<name> files renamed into new/. */
static int
tmp_way(void **state)
{
	(void)state;
	deliver_maildir_unnamed(false);
	return 0;
}

/* A test run both ways: as the copies are written does not show in what it checks. */
#define BOTH_WAYS(f)                                                                               \
	{#f " (unnamed)", f, unnamed_way, NULL, NULL},                                             \
	{                                                                                          \
#f " (tmp/)", f, tmp_way, NULL, NULL                                               \
	}
/* A test of the tmp/ way: it looks at the copies in tmp/ before the commit. */
#define TMP_WAY(f) cmocka_unit_test_setup(f, tmp_way)
/* A test of the unnamed way, run with each way of linking. */
#define UNNAMED_WAY(f)                                                                             \
	{#f " (AT_EMPTY_PATH)", f, unnamed_way, NULL, NULL},                                       \
	    {#f " (/proc path)", f, unnamed_proc_way, NULL, NULL},                                 \
	{                                                                                          \
#f " (AT_EMPTY_PATH refused)", f, unnamed_refused_way, NULL, NULL                  \
	}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_local_part_is_safe),
	    cmocka_unit_test(test_users_file),
	    cmocka_unit_test(test_users_file_errors),
	    cmocka_unit_test(test_users_file_long_line_and_missing),
	    cmocka_unit_test(test_aliases_file_errors),
	    cmocka_unit_test(test_expand),
	    cmocka_unit_test(test_expand_delimiters),
	    cmocka_unit_test(test_check_rcpt),
	    cmocka_unit_test(test_international_domain),
	    cmocka_unit_test(test_alias_targets_must_exist),
	    cmocka_unit_test(test_empty_db),
	    cmocka_unit_test(test_many_users),
	    BOTH_WAYS(test_maildir_write),
	    BOTH_WAYS(test_maildir_odd_octets),
	    BOTH_WAYS(test_maildir_block_edges),
	    BOTH_WAYS(test_maildir_block_edges_memory),
	    BOTH_WAYS(test_maildir_memory_body),
	    TMP_WAY(test_maildir_first_copy),
	    TMP_WAY(test_maildir_redelivery),
	    BOTH_WAYS(test_maildir_cache_follows_the_path),
	    BOTH_WAYS(test_maildir_unsafe_names),
	    BOTH_WAYS(test_maildir_transient_failures),
	    BOTH_WAYS(test_maildir_empty_body),
	    BOTH_WAYS(test_maildir_last_line_without_lf),
	    TMP_WAY(test_batch_one_maildir),
	    TMP_WAY(test_batch_several_maildirs),
	    TMP_WAY(test_batch_rollback),
	    TMP_WAY(test_batch_free_without_commit),
	    BOTH_WAYS(test_batch_commit_fails_part_way),
	    BOTH_WAYS(test_batch_failed_group_leaves_the_others),
	    TMP_WAY(test_batch_skips_copy_already_read),
	    BOTH_WAYS(test_batch_unsafe_names),
	    TMP_WAY(test_batch_failed_add_leaves_the_rest),
	    UNNAMED_WAY(test_batch_unnamed_one_maildir),
	    UNNAMED_WAY(test_batch_unnamed_several_maildirs),
	    UNNAMED_WAY(test_batch_unnamed_rollback),
	    UNNAMED_WAY(test_batch_unnamed_free_without_commit),
	    UNNAMED_WAY(test_maildir_unnamed_redelivery),
	    UNNAMED_WAY(test_maildir_unnamed_and_tmp_leftovers),
	    UNNAMED_WAY(test_batch_unnamed_failed_add),
	    UNNAMED_WAY(test_batch_unnamed_link_fails),
	    cmocka_unit_test_setup(test_unnamed_link_switches_after_refusal, unnamed_refused_way),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
