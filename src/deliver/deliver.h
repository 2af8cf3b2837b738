/*
 * deliver — local delivery: who exists (users_file), where mail for an alias
 * goes (aliases_file), recipient_delimiter, and writing a message into a
 * Maildir.
 *
 * struct deliver_db is immutable after deliver_db_load() and may be read
 * from several threads.  Writing into a Maildir is blocking file I/O: call
 * it from a worker thread, never from the event loop.
 */
#ifndef PETREL_DELIVER_H
#define PETREL_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct conf;
struct deliver_db;

/*
 * Loads conf->users_file and conf->aliases_file (either may be unset).  On
 * error returns NULL and writes "FILE:LINE: what is wrong" to err.  Users
 * file: Dovecot passwd-file, "user@domain:{SCHEME}hash[:more fields]" a line,
 * '#' comments and blank lines ignored.  Aliases file: "alias@domain: target,
 * target" a line; a target without '@' means that local part in the alias's
 * domain.  Names are matched case-insensitively.
 */
struct deliver_db *deliver_db_load(const struct conf *c, char *err, size_t err_cap);
void deliver_db_free(struct deliver_db *db);
/* The password field ("{SCHEME}hash") of user@domain, or NULL if not listed.  Borrowed. */
const char *deliver_db_password(const struct deliver_db *db, const char *address);
/*
 * A password hash of the users file (its first), to check a password
 * against when the user does not exist: the answer then costs what a real
 * check costs, its scheme and rounds included.  NULL without users.
 */
const char *deliver_db_decoy_hash(const struct deliver_db *db);

/*
 * True when a local part can safely name a Maildir directory: non-empty, at
 * most 64 octets, no '/', no NUL or other control octet (< 0x20, 0x7f), and
 * not starting with '.'.
 */
bool deliver_local_part_is_safe(const char *local, size_t len);

enum deliver_rcpt_status {
	DELIVER_RCPT_OK,	/* exists (user or alias) */
	DELIVER_RCPT_UNKNOWN,	/* 550 5.1.1 */
	DELIVER_RCPT_BAD_LOCAL, /* unsafe local part: 553 5.1.3 */
};

/*
 * Decides whether local@domain (domain already known to be local) may
 * receive mail: the local part is checked for safety, lower-cased, cut at the
 * first recipient_delimiter character (when what precedes it is not empty),
 * then looked up in aliases and users.  With no users_file every safe local
 * part exists; postmaster exists at every local domain (RFC 5321 4.5.1).
 */
enum deliver_rcpt_status deliver_check_rcpt(const struct deliver_db *db, const struct conf *c,
					    const char *local, size_t local_len, const char *domain,
					    size_t domain_len);
/*
 * The form an address is known by in the users and aliases files (lower-cased,
 * the domain in its A-label form) into out (cap octets, DELIVER_KEY_MAX + 1
 * is enough); false when it is no local@domain of a safe local part.
 */
#define DELIVER_KEY_MAX (64 + 1 + 255)
bool deliver_addr_key(const char *addr, char *out, size_t cap);
/*
 * The same for a whole "local@domain" as a queue file holds it, its local
 * part possibly quoted ("a b"@d is the user a b).
 */
enum deliver_rcpt_status deliver_check_addr(const struct deliver_db *db, const struct conf *c,
					    const char *addr);

struct deliver_target {
	char *addr;    /* owned: "user@domain", lower-cased for local targets */
	bool is_local; /* domain is one of local_domains */
	char *user;    /* owned: local part after delimiter removal (local targets only) */
	char *domain;  /* owned: lower-cased domain (local targets only) */
};

/*
 * Expands one recipient address ("local@domain") into its final targets:
 * aliases recursively (at most 10 levels; an alias naming itself is a user),
 * duplicates removed, recipient_delimiter applied to local users.  A
 * non-local address expands to itself.  Returns 0 with *out (owned, free
 * with deliver_targets_free) or -1 with an error in err (alias loop too deep,
 * unsafe local part).
 */
int deliver_expand(const struct deliver_db *db, const struct conf *c, const char *addr,
		   struct deliver_target **out, size_t *out_len, char *err, size_t err_cap);
/*
 * The one target of an address that is final already (aliases were expanded
 * when the message came in): as deliver_expand without the alias lookup.
 * Returns 0 with *out (one target, free with deliver_targets_free(*out, 1))
 * or -1 with an error in err (unsafe local part; an alias that does not
 * name itself, kept because its expansion failed, fails with that reason).
 */
int deliver_resolve(const struct deliver_db *db, const struct conf *c, const char *addr,
		    struct deliver_target **out, char *err, size_t err_cap);
void deliver_targets_free(struct deliver_target *t, size_t n);

/* A message to write into one Maildir. */
struct deliver_msg {
	const char *headers;  /* borrowed: header lines to prepend (LF line ends, ends with LF) */
	const char *body_mem; /* the message in wire form (CRLF lines) in memory, or NULL: */
	int body_fd;	      /* the spool file holding it */
	off_t body_off;	      /* where the message starts in body_fd */
	uint64_t body_len;    /* its length */
	bool first_copy;      /* never delivered before (not a retry): skip the look for a copy */
};

/*
 * A batch of Maildir copies made durable together.  deliver_batch_add()
 * writes m into the Maildir <mail_root>/<domain>/<user> (creating it with
 * mode 0700 when missing): the headers, then the message with CRLF turned
 * into LF (and an LF after a last line that has no line end), as an unnamed
 * file in new/ (O_TMPFILE; kept open until the commit) or, where the kernel
 * or filesystem has none, as tmp/<name> (O_EXCL|O_NOFOLLOW); mode 0600;
 * nothing is flushed and nothing is visible yet.  Unless m->first_copy (a
 * redelivery after a crash), a cur/<name>:* (moved there by a reader) means
 * nothing is written and 0 is returned, while a new/<name> is written again
 * over itself (the same message: replaced in one step).  On failure it
 * returns -1, leaves no file, and writes the reason to err; *permanent is
 * set when retrying cannot help (unsafe user name), clear for disk full,
 * permissions and the like.
 *
 * Copies belong to the group last set with deliver_batch_group() (0 at
 * first): a caller's unit of all or nothing, such as one message.
 * deliver_batch_commit() flushes every file written (one syncfs(2) per
 * filesystem; fdatasync for a lone file), links (or renames) each into
 * new/<name> and flushes new/ (fsync shared with concurrent deliveries to
 * the same Maildir, or one syncfs for several Maildirs).  0: every copy is
 * delivered.  -1 (err: the first reason): not every — a copy that could not
 * be put into new/ takes its group's other copies back with it
 * (deliver_batch_failed() tells which groups), and a failed flush takes back
 * every copy.
 *
 * deliver_batch_rollback() removes the copies added after the first len
 * (deliver_batch_len() before them); deliver_batch_free() those not
 * committed.  Blocking file I/O: worker threads only.  A batch holds the
 * directories of every Maildir it names (deliver_batch_maildirs()) open
 * until it is freed, up to three descriptors each, and one descriptor for
 * each copy until its commit (deliver_batch_len() bounds them).
 */
struct deliver_batch;

struct deliver_batch *deliver_batch_new(void);
int deliver_batch_add(struct deliver_batch *b, const char *mail_root, const char *domain,
		      const char *user, const char *name, const struct deliver_msg *m,
		      bool *permanent, char *err, size_t err_cap);
size_t deliver_batch_len(const struct deliver_batch *b);
size_t deliver_batch_maildirs(const struct deliver_batch *b);
void deliver_batch_group(struct deliver_batch *b, size_t group);
bool deliver_batch_failed(const struct deliver_batch *b, size_t group);
void deliver_batch_rollback(struct deliver_batch *b, size_t len);
int deliver_batch_commit(struct deliver_batch *b, char *err, size_t err_cap);
void deliver_batch_free(struct deliver_batch *b);

/*
 * Whether copies may be written as unnamed files (the default where the
 * kernel and filesystem allow; off: always tmp/<name>, renamed).  For tests
 * of the tmp/ way; set before deliveries start.
 */
void deliver_maildir_unnamed(bool on);
/*
 * Whether unnamed files are linked by their /proc/self/fd path even where
 * linkat(AT_EMPTY_PATH) would do (off by default; on once the kernel refuses
 * it).  For tests of that way.
 */
void deliver_maildir_link_by_path(bool on);
/* Whether links go by the /proc path now (set, or switched to after a refusal). */
bool deliver_maildir_links_by_path(void);
/* Tests: every linkat(AT_EMPTY_PATH) fails with ENOENT, as where the kernel refuses it. */
void deliver_maildir_refuse_empty_path(bool on);

/* One copy, on its own: a batch of one. */
int deliver_maildir_write(const char *mail_root, const char *domain, const char *user,
			  const char *name, const struct deliver_msg *m, bool *permanent, char *err,
			  size_t err_cap);

#endif
