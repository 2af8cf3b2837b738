#include "deliver/deliver.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conf/conf.h"
#include "util/util_idna.h"
#include "util/util_log.h"
#include "util/util_mem.h"

/*
 * Users and aliases share one open-addressing hash table keyed by the
 * lower-cased "local@domain"; an address may be both a user and an alias.
 */

#define LOCAL_MAX	   64		   /* RFC 5321 4.5.3.1.1 */
#define DOMAIN_MAX	   255		   /* RFC 5321 4.5.3.1.2 */
#define KEY_MAX		   DELIVER_KEY_MAX /* LOCAL_MAX + 1 + DOMAIN_MAX */
#define DB_LINE_MAX	   8192 /* a longer line in users_file or aliases_file is an error */
#define EXPAND_DEPTH_MAX   10	/* nested aliases followed by deliver_expand() */
#define EXPAND_TARGETS_MAX 1000 /* targets one recipient may expand to */

struct db_entry {
	char *key; /* owned, lower-cased "local@domain"; NULL marks an empty slot */
	size_t key_len;
	char *password; /* owned "{SCHEME}hash" when a user, else NULL */
	char **targets; /* owned "local@domain" strings (domain lower-cased) when an alias */
	size_t targets_len;
};

struct deliver_db {
	struct db_entry *slots; /* owned, cap slots */
	size_t cap;		/* power of two */
	size_t len;		/* slots in use */
	bool has_users;		/* a users_file was loaded: only listed users exist */
	char *decoy;		/* owned: the first user's password hash (deliver_db_decoy_hash) */
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

static void
lower(char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] >= 'A' && s[i] <= 'Z')
			s[i] = (char)(s[i] - 'A' + 'a');
}

static bool
is_space(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* Trims blanks on both sides of [*p, *p + *len). */
static void
trim(const char **p, size_t *len)
{
	while (*len > 0 && is_space(**p)) {
		(*p)++;
		(*len)--;
	}
	while (*len > 0 && is_space((*p)[*len - 1]))
		(*len)--;
}

/* Domain part of a key or a file entry: a path component that cannot escape mail_root. */
static bool
domain_is_sane(const char *d, size_t len)
{
	if (len == 0 || len > DOMAIN_MAX || d[0] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)d[i];

		if (ch <= 0x20 || ch == 0x7f || ch == '/')
			return false;
	}
	return true;
}

bool
deliver_local_part_is_safe(const char *local, size_t len)
{
	if (local == NULL || len == 0 || len > LOCAL_MAX || local[0] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)local[i];

		/* '/' and a leading '.' would let a recipient name a path outside its Maildir. */
		if (ch < 0x20 || ch == 0x7f || ch == '/')
			return false;
	}
	return true;
}

static bool
is_local_domain(const struct conf *c, const char *domain, size_t len)
{
	/* conf_is_local_domain() lives in conf.c; deliver keeps its own copy of this
	 * small test so it links (and is tested) without the config parser. */
	char ascii[UTIL_IDNA_MAX + 1];

	if (!util_idna_ascii(&domain, &len, ascii))
		return false;
	if (len > 0 && domain[len - 1] == '.')
		len--;
	for (size_t i = 0; i < c->local_domains_len; i++) {
		const char *ld = c->local_domains[i];

		if (strlen(ld) == len && strncasecmp(ld, domain, len) == 0)
			return true;
	}
	return false;
}

/* Length of the local part before the first delimiter, or len when there is none. */
static size_t
strip_delimiter(const struct conf *c, const char *local, size_t len)
{
	const char *delims = c->recipient_delimiter;

	if (delims == NULL || delims[0] == '\0')
		return len;
	for (size_t i = 0; i < len; i++)
		if (local[i] != '\0' && strchr(delims, local[i]) != NULL)
			return i > 0 ? i : len; /* "+foo" keeps its '+': the part before is empty */
	return len;
}

/* ---- hash table ---- */

static uint64_t
hash_key(const char *key, size_t len)
{
	uint64_t h = 14695981039346656037ULL; /* FNV-1a */

	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)key[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static struct db_entry *
slot_for(const struct deliver_db *db, const char *key, size_t len)
{
	size_t mask = db->cap - 1;
	size_t i = (size_t)hash_key(key, len) & mask;

	/* The table is never more than half full, so an empty slot ends every probe. */
	for (;;) {
		struct db_entry *e = &db->slots[i];

		if (e->key == NULL || (e->key_len == len && memcmp(e->key, key, len) == 0))
			return e;
		i = (i + 1) & mask;
	}
}

static const struct db_entry *
lookup(const struct deliver_db *db, const char *key, size_t len)
{
	const struct db_entry *e;

	if (db == NULL || db->len == 0)
		return NULL;
	e = slot_for(db, key, len);
	return e->key != NULL ? e : NULL;
}

static void
grow(struct deliver_db *db)
{
	struct db_entry *old = db->slots;
	size_t old_cap = db->cap;

	db->cap = old_cap * 2;
	db->slots = xcalloc(db->cap, sizeof(*db->slots));
	for (size_t i = 0; i < old_cap; i++)
		if (old[i].key != NULL)
			*slot_for(db, old[i].key, old[i].key_len) = old[i];
	free(old);
}

/* The entry for key (lower-cased already), created empty when missing. */
static struct db_entry *
upsert(struct deliver_db *db, const char *key, size_t len)
{
	struct db_entry *e;

	if ((db->len + 1) * 2 > db->cap)
		grow(db);
	e = slot_for(db, key, len);
	if (e->key == NULL) {
		e->key = xstrndup(key, len);
		e->key_len = len;
		db->len++;
	}
	return e;
}

static void
entry_free(struct db_entry *e)
{
	free(e->key);
	if (e->password != NULL) {
		util_wipe(e->password, strlen(e->password));
		free(e->password);
	}
	for (size_t i = 0; i < e->targets_len; i++)
		free(e->targets[i]);
	free(e->targets);
}

void
deliver_db_free(struct deliver_db *db)
{
	if (db == NULL)
		return;
	for (size_t i = 0; i < db->cap; i++)
		if (db->slots[i].key != NULL)
			entry_free(&db->slots[i]);
	free(db->slots);
	free(db->decoy);
	free(db);
}

/* ---- file parsing ---- */

/*
 * Splits "local@domain" at its last '@' (a quoted local part may hold one),
 * lower-cases it into key and checks both halves.  Returns NULL on success or
 * what is wrong.
 */
static const char *
make_key(const char *addr, size_t len, char key[KEY_MAX + 1], size_t *key_len)
{
	const char *at = NULL;
	size_t local_len;
	long n;

	for (size_t i = len; i > 0; i--)
		if (addr[i - 1] == '@') {
			at = addr + i - 1;
			break;
		}
	if (at == NULL)
		return "not local@domain";
	local_len = (size_t)(at - addr);
	if (!deliver_local_part_is_safe(addr, local_len))
		return "unsafe or empty local part";
	if (!domain_is_sane(at + 1, len - local_len - 1))
		return "bad or empty domain";
	memcpy(key, addr, local_len + 1);
	/* "müller.example" is keyed as "xn--mller-kva.example", as rcpt_keys() looks it up. */
	n = util_idna_to_ascii(at + 1, len - local_len - 1, key + local_len + 1,
			       KEY_MAX - local_len, NULL);
	if (n <= 0)
		return "bad or empty domain";
	*key_len = local_len + 1 + (size_t)n;
	lower(key, *key_len);
	return NULL;
}

typedef int (*line_fn)(struct deliver_db *db, const char *line, size_t len, const char *path,
		       unsigned lineno, char *err, size_t err_cap);

/* Calls fn for each line of path that is neither blank nor a comment. */
static int
read_lines(struct deliver_db *db, const char *path, line_fn fn, char *err, size_t err_cap)
{
	FILE *f = fopen(path, "re");
	char *line = NULL;
	size_t line_cap = 0;
	ssize_t n;
	unsigned lineno = 0;
	int rc = 0;

	if (f == NULL) {
		fail(err, err_cap, "%s: %s", path, strerror(errno));
		return -1;
	}
	while ((n = getline(&line, &line_cap, f)) >= 0) {
		const char *p = line;
		size_t len = (size_t)n;

		lineno++;
		if (len > DB_LINE_MAX) {
			fail(err, err_cap, "%s:%u: line longer than %d bytes", path, lineno,
			     DB_LINE_MAX);
			rc = -1;
			break;
		}
		if (memchr(line, '\0', len) != NULL) {
			fail(err, err_cap, "%s:%u: NUL byte", path, lineno);
			rc = -1;
			break;
		}
		trim(&p, &len);
		if (len == 0 || p[0] == '#')
			continue;
		if (fn(db, p, len, path, lineno, err, err_cap) < 0) {
			rc = -1;
			break;
		}
	}
	if (rc == 0 && ferror(f)) {
		fail(err, err_cap, "%s: %s", path, strerror(errno)); /* EISDIR for a directory */
		rc = -1;
	}
	/* The users file holds password hashes: do not leave them in freed memory. */
	util_wipe(line, line_cap);
	free(line);
	fclose(f);
	return rc;
}

/* "user@domain:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]" (Dovecot passwd-file). */
static int
parse_user(struct deliver_db *db, const char *line, size_t len, const char *path, unsigned lineno,
	   char *err, size_t err_cap)
{
	const char *colon = memchr(line, ':', len);
	const char *pw, *pw_end;
	char key[KEY_MAX + 1];
	size_t key_len, user_len;
	const char *why;
	struct db_entry *e;

	if (colon == NULL) {
		fail(err, err_cap, "%s:%u: expected user@domain:{SCHEME}hash", path, lineno);
		return -1;
	}
	user_len = (size_t)(colon - line);
	if (memchr(line, '@', user_len) == NULL) {
		fail(err, err_cap, "%s:%u: user field is not user@domain", path, lineno);
		return -1;
	}
	if (user_len > KEY_MAX) {
		fail(err, err_cap, "%s:%u: user name too long", path, lineno);
		return -1;
	}
	if ((why = make_key(line, user_len, key, &key_len)) != NULL) {
		fail(err, err_cap, "%s:%u: user: %s", path, lineno, why);
		return -1;
	}
	pw = colon + 1;
	pw_end = memchr(pw, ':', len - user_len - 1);
	if (pw_end == NULL)
		pw_end = line + len;
	e = upsert(db, key, key_len);
	if (e->password != NULL) {
		fail(err, err_cap, "%s:%u: duplicate user %s", path, lineno, key);
		return -1;
	}
	e->password = xstrndup(pw, (size_t)(pw_end - pw));
	if (db->decoy == NULL && e->password[0] != '\0')
		db->decoy = xstrdup(e->password);
	return 0;
}

/*
 * One alias target, normalized to "local@domain" with the domain
 * lower-cased.  Returns NULL on success or what is wrong.
 */
static const char *
make_target(const char *t, size_t len, const char *alias_domain, char **out)
{
	const char *at = NULL;
	size_t dom_len = strlen(alias_domain);
	char *s;

	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)t[i];

		if (ch <= 0x20 || ch == 0x7f)
			return "space or control character in target";
	}
	/* Data is never code: no Postfix-style deliveries to programs or files. */
	if (t[0] == '|' || t[0] == '/' || (len >= 9 && memcmp(t, ":include:", 9) == 0))
		return "pipe, file and :include: targets are not supported";
	for (size_t i = len; i > 0; i--)
		if (t[i - 1] == '@') {
			at = t + i - 1;
			break;
		}
	if (at == NULL) {
		/* A bare local part means that local part in the alias's own domain. */
		if (!deliver_local_part_is_safe(t, len))
			return "unsafe local part in target";
		s = xmalloc(len + 1 + dom_len + 1);
		memcpy(s, t, len);
		s[len] = '@';
		memcpy(s + len + 1, alias_domain, dom_len + 1);
		*out = s;
		return NULL;
	}
	if (at == t)
		return "empty local part in target";
	if (at + 1 == t + len)
		return "empty domain in target";
	if (memchr(t, '@', (size_t)(at - t)) != NULL)
		return "two @ in target";
	/*
	 * The same rule as for a bare local part, whatever the domain: one that
	 * is local becomes a directory name ("../etc@localhost" could only bounce).
	 */
	if (!deliver_local_part_is_safe(t, (size_t)(at - t)))
		return "unsafe local part in target";
	s = xstrndup(t, len);
	lower(s + (at - t) + 1, len - (size_t)(at - t) - 1);
	*out = s;
	return NULL;
}

/* "alias@domain: target, target, ..." */
static int
parse_alias(struct deliver_db *db, const char *line, size_t len, const char *path, unsigned lineno,
	    char *err, size_t err_cap)
{
	const char *colon = memchr(line, ':', len);
	const char *name = line, *rest, *why;
	size_t name_len, rest_len, key_len;
	char key[KEY_MAX + 1];
	struct db_entry *e;
	char **targets = NULL;
	size_t n = 0;

	if (colon == NULL) {
		fail(err, err_cap, "%s:%u: expected alias@domain: target, ...", path, lineno);
		return -1;
	}
	name_len = (size_t)(colon - line);
	trim(&name, &name_len);
	if (name_len > KEY_MAX) {
		fail(err, err_cap, "%s:%u: alias name too long", path, lineno);
		return -1;
	}
	if ((why = make_key(name, name_len, key, &key_len)) != NULL) {
		fail(err, err_cap, "%s:%u: alias: %s", path, lineno, why);
		return -1;
	}
	rest = colon + 1;
	rest_len = len - (size_t)(rest - line);
	while (rest_len > 0) {
		const char *comma = memchr(rest, ',', rest_len);
		const char *t = rest;
		size_t t_len = comma != NULL ? (size_t)(comma - rest) : rest_len;
		char *target;

		rest_len -= t_len + (comma != NULL ? 1 : 0);
		rest += t_len + (comma != NULL ? 1 : 0);
		trim(&t, &t_len);
		if (t_len == 0)
			continue;
		if ((why = make_target(t, t_len, strchr(key, '@') + 1, &target)) != NULL) {
			fail(err, err_cap, "%s:%u: %s", path, lineno, why);
			goto fail;
		}
		targets = xrealloc(targets, (n + 1) * sizeof(*targets));
		targets[n++] = target;
	}
	if (n == 0) {
		fail(err, err_cap, "%s:%u: alias %s has no targets", path, lineno, key);
		goto fail;
	}
	e = upsert(db, key, key_len);
	if (e->targets != NULL) {
		fail(err, err_cap, "%s:%u: duplicate alias %s", path, lineno, key);
		goto fail;
	}
	e->targets = targets;
	e->targets_len = n;
	return 0;
fail:
	for (size_t i = 0; i < n; i++)
		free(targets[i]);
	free(targets);
	return -1;
}

static int check_targets(const struct deliver_db *db, const struct conf *c, char *err,
			 size_t err_cap);

struct deliver_db *
deliver_db_load(const struct conf *c, char *err, size_t err_cap)
{
	struct deliver_db *db = xcalloc(1, sizeof(*db));

	db->cap = 16;
	db->slots = xcalloc(db->cap, sizeof(*db->slots));
	if (c->users_file != NULL) {
		db->has_users = true;
		if (read_lines(db, c->users_file, parse_user, err, err_cap) < 0)
			goto fail;
	}
	if (c->aliases_file != NULL &&
	    (read_lines(db, c->aliases_file, parse_alias, err, err_cap) < 0 ||
	     check_targets(db, c, err, err_cap) < 0))
		goto fail;
	return db;
fail:
	deliver_db_free(db);
	return NULL;
}

const char *
deliver_db_decoy_hash(const struct deliver_db *db)
{
	return db->decoy;
}

bool
deliver_addr_key(const char *addr, char *out, size_t cap)
{
	char key[KEY_MAX + 1];
	size_t len = strlen(addr);

	if (len > KEY_MAX || make_key(addr, len, key, &len) != NULL || len >= cap)
		return false;
	memcpy(out, key, len + 1);
	return true;
}

const char *
deliver_db_password(const struct deliver_db *db, const char *address)
{
	char key[KEY_MAX + 1];
	size_t len = strlen(address);
	const struct db_entry *e;

	/* As the file's keys are made: lower-cased, the domain in its A-label form. */
	if (len > KEY_MAX || make_key(address, len, key, &len) != NULL)
		return NULL;
	e = lookup(db, key, len);
	/* An empty password field lists a user who receives mail but cannot log in. */
	if (e == NULL || e->password == NULL || e->password[0] == '\0')
		return NULL;
	return e->password;
}

/* ---- recipients ---- */

/*
 * The local part as it names a mailbox: a quoted string ("a b", as the SMTP
 * parser writes a local part that is no dot-string) without its quotes and
 * backslashes, so "a b"@d and the users file's a b@d are one user.  Writes
 * out (cap octets); returns the length, or -1 when it does not fit.
 */
static long
unquote_local(const char *s, size_t len, char *out, size_t cap)
{
	size_t o = 0;

	if (len < 2 || s[0] != '"' || s[len - 1] != '"') {
		if (len > cap)
			return -1;
		memcpy(out, s, len);
		return (long)len;
	}
	for (size_t i = 1; i + 1 < len; i++) {
		if (s[i] == '\\' && i + 2 < len)
			i++;
		if (o == cap)
			return -1;
		out[o++] = s[i];
	}
	return (long)o;
}

/* RFC 5321 4.5.1: postmaster at every local domain, listed or not. */
static bool
is_postmaster(const char *local, size_t len)
{
	return len == 10 && strncasecmp(local, "postmaster", 10) == 0;
}

/* The lookup keys of one local@domain recipient. */
struct rcpt_keys {
	char exact[KEY_MAX + 1]; /* lower-cased, trailing dot of the domain dropped */
	size_t exact_len;
	char base[KEY_MAX + 1]; /* same, local part cut at the recipient delimiter */
	size_t base_len;
	size_t local_len, base_local_len;
};

/* Fills k; false when the address cannot be a key at all (too long). */

static bool
rcpt_keys(const struct conf *c, const char *local, size_t local_len, const char *domain,
	  size_t domain_len, struct rcpt_keys *k)
{
	char ascii[UTIL_IDNA_MAX + 1];

	/* Keys, and the Maildir's directory, use a domain's A-label form. */
	if (!util_idna_ascii(&domain, &domain_len, ascii))
		return false;
	if (domain_len > 0 && domain[domain_len - 1] == '.')
		domain_len--;
	if (local_len > LOCAL_MAX || domain_len > DOMAIN_MAX)
		return false;
	k->local_len = local_len;
	k->base_local_len = strip_delimiter(c, local, local_len);
	memcpy(k->exact, local, local_len);
	k->exact[local_len] = '@';
	memcpy(k->exact + local_len + 1, domain, domain_len);
	k->exact_len = local_len + 1 + domain_len;
	k->exact[k->exact_len] = '\0';
	lower(k->exact, k->exact_len);
	memcpy(k->base, k->exact, k->base_local_len);
	memcpy(k->base + k->base_local_len, k->exact + local_len, 1 + domain_len + 1);
	k->base_len = k->base_local_len + 1 + domain_len;
	return true;
}

/* Postfix order: the address with its extension first, then without. */
static const struct db_entry *
find_alias(const struct deliver_db *db, const struct rcpt_keys *k)
{
	const struct db_entry *e = lookup(db, k->exact, k->exact_len);

	if ((e == NULL || e->targets == NULL) && k->base_len != k->exact_len)
		e = lookup(db, k->base, k->base_len);
	return e != NULL && e->targets != NULL ? e : NULL;
}

static const struct db_entry *
find_user(const struct deliver_db *db, const struct rcpt_keys *k)
{
	const struct db_entry *e = lookup(db, k->exact, k->exact_len);

	if ((e == NULL || e->password == NULL) && k->base_len != k->exact_len)
		e = lookup(db, k->base, k->base_len);
	return e != NULL && e->password != NULL ? e : NULL;
}

/*
 * With a users_file only listed users exist: a local alias target that is
 * neither a user nor an alias (a typo: "team: alice, alcie") is an error of
 * the aliases file, not a Maildir made for nobody to read.
 */
static int
check_targets(const struct deliver_db *db, const struct conf *c, char *err, size_t err_cap)
{
	if (!db->has_users)
		return 0;
	for (size_t i = 0; i < db->cap; i++) {
		const struct db_entry *e = &db->slots[i];

		for (size_t t = 0; e->key != NULL && t < e->targets_len; t++) {
			const char *addr = e->targets[t], *at = strrchr(addr, '@');
			char local[LOCAL_MAX], esc[2][128];
			struct rcpt_keys k;
			long n;

			if (!is_local_domain(c, at + 1, strlen(at + 1)))
				continue;
			n = unquote_local(addr, (size_t)(at - addr), local, sizeof(local));
			if (n > 0 && rcpt_keys(c, local, (size_t)n, at + 1, strlen(at + 1), &k) &&
			    (find_alias(db, &k) != NULL || find_user(db, &k) != NULL ||
			     is_postmaster(local, k.base_local_len)))
				continue;
			fail(err, err_cap,
			     "%s: alias %s: target %s is neither a user of %s nor an alias",
			     c->aliases_file,
			     util_log_escape(esc[0], sizeof(esc[0]), e->key, e->key_len),
			     util_log_escape(esc[1], sizeof(esc[1]), addr, strlen(addr)),
			     c->users_file);
			return -1;
		}
	}
	return 0;
}

enum deliver_rcpt_status
deliver_check_rcpt(const struct deliver_db *db, const struct conf *c, const char *local,
		   size_t local_len, const char *domain, size_t domain_len)
{
	struct rcpt_keys k;

	if (!deliver_local_part_is_safe(local, local_len))
		return DELIVER_RCPT_BAD_LOCAL;
	if (!rcpt_keys(c, local, local_len, domain, domain_len, &k))
		return DELIVER_RCPT_UNKNOWN;
	if (find_alias(db, &k) != NULL)
		return DELIVER_RCPT_OK;
	if (db == NULL || !db->has_users || is_postmaster(local, k.base_local_len))
		return DELIVER_RCPT_OK;
	return find_user(db, &k) != NULL ? DELIVER_RCPT_OK : DELIVER_RCPT_UNKNOWN;
}

enum deliver_rcpt_status
deliver_check_addr(const struct deliver_db *db, const struct conf *c, const char *addr)
{
	const char *at = strrchr(addr, '@');
	char local[LOCAL_MAX];
	long n;

	if (at == NULL)
		return DELIVER_RCPT_UNKNOWN;
	n = unquote_local(addr, (size_t)(at - addr), local, sizeof(local));
	if (n <= 0)
		return DELIVER_RCPT_BAD_LOCAL;
	return deliver_check_rcpt(db, c, local, (size_t)n, at + 1, strlen(at + 1));
}

struct expansion {
	const struct deliver_db *db;
	const struct conf *c;
	struct deliver_target *out; /* owned until handed to the caller */
	size_t len, cap;
	const struct db_entry **done; /* aliases fully expanded: a second mention adds nothing */
	size_t done_len, done_cap;
	char *err;
	size_t err_cap;
	bool final; /* the address is a final target: no alias lookup (deliver_resolve) */
};

static int
add_target(struct expansion *x, char *addr, bool is_local, char *user, char *domain)
{
	for (size_t i = 0; i < x->len; i++)
		if (strcmp(x->out[i].addr, addr) == 0) {
			free(addr);
			free(user);
			free(domain);
			return 0;
		}
	if (x->len == EXPAND_TARGETS_MAX) {
		fail(x->err, x->err_cap, "more than %d targets", EXPAND_TARGETS_MAX);
		free(addr);
		free(user);
		free(domain);
		return -1;
	}
	if (x->len == x->cap) {
		x->cap = x->cap ? x->cap * 2 : 4;
		x->out = xrealloc(x->out, x->cap * sizeof(*x->out));
	}
	x->out[x->len++] = (struct deliver_target){
	    .addr = addr, .is_local = is_local, .user = user, .domain = domain};
	return 0;
}

static bool
alias_is_done(const struct expansion *x, const struct db_entry *alias)
{
	for (size_t i = 0; i < x->done_len; i++)
		if (x->done[i] == alias)
			return true;
	return false;
}

static int
add_local_user(struct expansion *x, const struct rcpt_keys *k)
{
	const struct db_entry *u = NULL;
	const char *key = k->base;
	size_t local_len = k->base_local_len, key_len = k->base_len;

	/* A users_file entry spelled with its extension ("a+b@d") is that user. */
	if (x->db != NULL && x->db->has_users)
		u = find_user(x->db, k);
	if (u != NULL && u->key_len == k->exact_len) {
		key = k->exact;
		local_len = k->local_len;
		key_len = k->exact_len;
	}
	return add_target(x, xstrndup(key, key_len), true, xstrndup(key, local_len),
			  xstrdup(key + local_len + 1));
}

/* True when one of alias's targets is the alias itself ("a: a, b"). */
static bool
names_itself(const struct expansion *x, const struct db_entry *alias)
{
	for (size_t i = 0; i < alias->targets_len; i++) {
		const char *t = alias->targets[i], *at = strrchr(t, '@');
		char local[LOCAL_MAX];
		struct rcpt_keys k;
		long n;

		if (at == NULL || !is_local_domain(x->c, at + 1, strlen(at + 1)))
			continue;
		n = unquote_local(t, (size_t)(at - t), local, sizeof(local));
		if (n > 0 && rcpt_keys(x->c, local, (size_t)n, at + 1, strlen(at + 1), &k) &&
		    find_alias(x->db, &k) == alias)
			return true;
	}
	return false;
}

static int
expand_addr(struct expansion *x, const char *addr, const struct db_entry *parent, unsigned depth)
{
	size_t len = strlen(addr), local_len;
	const char *at = strrchr(addr, '@');
	const char *domain;
	const struct db_entry *alias;
	struct rcpt_keys k;
	char esc[128], local[LOCAL_MAX];
	long n;

	if (at == NULL || at[1] == '\0' || (at[1] == '.' && at[2] == '\0')) {
		fail(x->err, x->err_cap, "%s: no domain",
		     util_log_escape(esc, sizeof(esc), addr, len));
		return -1;
	}
	local_len = (size_t)(at - addr);
	domain = at + 1;
	if (!is_local_domain(x->c, domain, strlen(domain))) {
		char *remote = xstrdup(addr);

		lower(remote + local_len + 1, len - local_len - 1);
		if (remote[len - 1] == '.')
			remote[len - 1] = '\0';
		return add_target(x, remote, false, NULL, NULL);
	}
	n = unquote_local(addr, local_len, local, sizeof(local));
	if (n <= 0 || !deliver_local_part_is_safe(local, (size_t)n) ||
	    !rcpt_keys(x->c, local, (size_t)n, domain, strlen(domain), &k)) {
		fail(x->err, x->err_cap, "%s: unsafe local part",
		     util_log_escape(esc, sizeof(esc), addr, len));
		return -1;
	}
	alias = find_alias(x->db, &k);
	if (x->final) {
		/*
		 * A final address that is an alias not naming itself is one whose
		 * expansion failed when the message came in (server_rcpt_expand keeps
		 * it so): expanded again for the reason, it is refused, never given
		 * a Maildir of the alias's name.
		 */
		if (alias != NULL && !names_itself(x, alias)) {
			struct expansion again = {
			    .db = x->db, .c = x->c, .err = x->err, .err_cap = x->err_cap};
			int rc = expand_addr(&again, addr, NULL, 0);

			deliver_targets_free(again.out, again.len);
			free(again.done);
			if (rc < 0)
				return -1;
		}
		return add_local_user(x, &k);
	}
	/* An alias that names itself ("a: a, b") also delivers to the user. */
	if (alias == NULL || alias == parent)
		return add_local_user(x, &k);
	if (alias_is_done(x, alias))
		return 0;
	if (depth >= EXPAND_DEPTH_MAX) {
		fail(x->err, x->err_cap, "%s: aliases nested deeper than %d levels (loop?)",
		     util_log_escape(esc, sizeof(esc), addr, len), EXPAND_DEPTH_MAX);
		return -1;
	}
	for (size_t i = 0; i < alias->targets_len; i++)
		if (expand_addr(x, alias->targets[i], alias, depth + 1) < 0)
			return -1;
	if (x->done_len == x->done_cap) {
		x->done_cap = x->done_cap ? x->done_cap * 2 : 8;
		x->done = xrealloc(x->done, x->done_cap * sizeof(*x->done));
	}
	x->done[x->done_len++] = alias;
	return 0;
}

/*
 * A local target that is neither an alias nor a listed user (possible only
 * through an alias, since deliver_check_rcpt() refuses such recipients) is
 * kept: delivery creates its Maildir like that of any other local part.
 */
int
deliver_expand(const struct deliver_db *db, const struct conf *c, const char *addr,
	       struct deliver_target **out, size_t *out_len, char *err, size_t err_cap)
{
	struct expansion x = {.db = db, .c = c, .err = err, .err_cap = err_cap};
	int rc = expand_addr(&x, addr, NULL, 0);

	free(x.done);
	if (rc < 0) {
		deliver_targets_free(x.out, x.len);
		*out = NULL;
		*out_len = 0;
		return -1;
	}
	*out = x.out;
	*out_len = x.len;
	return 0;
}

int
deliver_resolve(const struct deliver_db *db, const struct conf *c, const char *addr,
		struct deliver_target **out, char *err, size_t err_cap)
{
	struct expansion x = {.db = db, .c = c, .err = err, .err_cap = err_cap, .final = true};

	*out = NULL;
	if (expand_addr(&x, addr, NULL, 0) < 0) {
		deliver_targets_free(x.out, x.len);
		return -1;
	}
	*out = x.out; /* exactly one */
	return 0;
}

void
deliver_targets_free(struct deliver_target *t, size_t n)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		free(t[i].addr);
		free(t[i].user);
		free(t[i].domain);
	}
	free(t);
}
