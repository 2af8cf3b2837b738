/*
 * queue — the durable spool: store a message before it is acknowledged,
 * find it again after a crash, and hand it to delivery until every
 * recipient is done.
 *
 * Layout under spool_dir:
 *   journal/N  segments of the journal (queue_journal.h): small local messages
 *   tmp/ID     a message being received (never acknowledged; removed at start)
 *   queue/ID   an acknowledged message: envelope header, blank line, message
 *   queue/ID.st delivery progress of ID (recipients done, attempts, next try)
 *
 * Durability (what a 250 means): the message file is written and
 * fdatasync'd, renamed from tmp/ into queue/, and queue/ itself is fsync'd
 * before the commit callback runs.  Directory flushes are shared: one fsync
 * of queue/ covers every message renamed before it began (group commit,
 * util_dirsync), while the files' own flushes run in parallel on the worker
 * threads.  A small message (held in memory) is instead appended to the
 * journal, one fdatasync shared by every message written meanwhile.  One
 * offered to the direct deliverer (queue_msg_direct: all recipients local) is
 * delivered into the Maildirs right after its 250 by a background worker
 * (lower CPU priority: clients waiting for a 250 come first); any other goes
 * to the deliverer from memory (item->body_mem).  Neither gets a queue file
 * unless recipients are left for later; then queue/ID.st and queue/ID are
 * written before the journal forgets it.  When the journal cannot take a
 * message (disk full), a direct one is delivered before the 250, and spooled
 * if that fails; others are spooled.  A crash leaves the journal's
 * undelivered messages, which become queue files at the next start.  The event loop never waits on
 * the disk: every file operation runs on the queue's threads, and completions come back through
 * queue_notify_fd() / queue_dispatch() on the loop's thread.
 *
 * Threading: every function here is called from the event loop thread only,
 * except that queue_work() and the bounce builder run code on worker threads.
 */
#ifndef PETREL_QUEUE_H
#define PETREL_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "util/util_id.h"

struct queue;
struct queue_msg;

/* The envelope of a message being received; strings are copied. */
struct queue_envelope {
	const char *sender; /* "" for the null sender */
	const char *const *rcpts;
	size_t rcpts_len;
	const char *const *orcpts; /* NULL, or per rcpt: the address given at RCPT when an
				      alias was expanded (NULL entry: same as rcpts[i]) */
	const char *helo;
	const char *client_addr; /* numeric */
	const char *client_name; /* reverse name or "unknown" */
	const char *protocol;	 /* SMTP, ESMTP, ESMTPS, ESMTPSA, local */
	bool body_8bit;		 /* BODY=8BITMIME */
	bool smtputf8;
	/*
	 * rcpts are final: aliases were expanded when the message came in (orcpts
	 * say from what).  Unset in queue files of petrel versions before it.
	 */
	bool expanded;
};

struct queue_limits {
	unsigned retry_min_s;
	unsigned retry_max_s;
	unsigned lifetime_s;
	unsigned workers;	 /* file I/O threads (0: 8) */
	unsigned max_deliveries; /* messages being delivered at once (0: 64) */
};

/* A message as a deliverer sees it (read-only, valid until queue_delivery_finish). */
struct queue_item {
	char id[UTIL_ID_LEN + 1];
	time_t arrival;
	const char *sender;
	size_t rcpts_len;
	char *const *rcpts;
	char *const *orcpts; /* per rcpt: the address given at RCPT (== rcpts[i] when no alias) */
	const bool *done;    /* done[i]: recipient i was finished by an earlier attempt; skip it */
	const char *helo;
	const char *client_addr;
	const char *client_name;
	const char *protocol;
	bool body_8bit;
	bool smtputf8;
	bool expanded;	   /* rcpts are final (queue_envelope) */
	unsigned attempts; /* earlier attempts */
	bool recovered;	   /* found on disk at start: a crash may have delivered some of it */
	int fd;		   /* the queue file, read-only (-1 when body_mem is set) */
	off_t body_off;	   /* where the message starts in fd */
	uint64_t body_len;
	const char *body_mem; /* the message in memory (direct way, journaled), or NULL */
};

/*
 * Reads up to len octets of item's message from offset off (its memory or its
 * queue file): the count read, 0 at the end, or -1 with errno set.  Any
 * thread (the relay's, the bounce builder's), while the attempt runs.
 */
ssize_t queue_item_read(const struct queue_item *item, void *dst, size_t len, uint64_t off);

enum queue_rcpt_status {
	QUEUE_RCPT_PENDING, /* not attempted (the deliverer leaves it for later) */
	QUEUE_RCPT_DONE,    /* delivered */
	QUEUE_RCPT_DEFER,   /* temporary failure: retry later */
	QUEUE_RCPT_FAIL,    /* permanent failure: bounce */
};

/* What an expired recipient's reason starts with; the last error follows. */
#define QUEUE_EXPIRED_PREFIX "4.4.7 delivery time expired: "

/* Room for a reason: a remote's reply of a few lines, whole, for the bounce's Diagnostic-Code. */
#define QUEUE_REASON_MAX 640

struct queue_rcpt_result {
	enum queue_rcpt_status status;
	char reason[QUEUE_REASON_MAX]; /* for DEFER and FAIL: the remote or local reply */
	char relay[128];	       /* where it went: "local", "mx.example.org[192.0.2.1]:25" */
};

/* One delivery attempt of one message. */
struct queue_delivery;

/*
 * Starts an attempt, on the event loop thread.  The deliverer decides every
 * recipient not yet done (queue_delivery_results()[i]), on whatever thread
 * it likes, then calls queue_delivery_finish() on the loop thread.
 */
typedef void (*queue_deliver_fn)(void *ctx, struct queue_delivery *d);
const struct queue_item *queue_delivery_item(const struct queue_delivery *d);
struct queue_rcpt_result *queue_delivery_results(struct queue_delivery *d);
/* The attempt is over (event loop thread); results are recorded, bounces sent. */
void queue_delivery_finish(struct queue_delivery *d);

/*
 * Builds a bounce (an RFC 3464 DSN, CRLF line ends) for the recipients
 * with failed_now[i] set; runs on a worker thread.  Returns a malloc'd
 * message and its length, or NULL.  The queue sends it from <> to the
 * original sender (never for a message from <>).
 */
typedef char *(*queue_bounce_fn)(void *ctx, const struct queue_item *item,
				 const struct queue_rcpt_result *results, const bool *failed_now,
				 size_t *len);
void queue_set_bounce(struct queue *q, queue_bounce_fn fn, void *ctx);

/*
 * The direct way, on a worker thread, before any spool file exists:
 * messages received whole in memory (small ones) are offered to fn first
 * (items[k].body_mem set, items[k].done NULL, msg_ctx[k] as given to
 * queue_msg_direct) — after their 250 when the journal holds them, several
 * at a time, else one before its 250.  fn sets delivered[k] only when every
 * recipient of items[k] has the message on stable storage; the message is
 * then finished and never spooled.  Otherwise it is spooled as usual and
 * its delivery runs from the queue, so fn must leave nothing a later attempt
 * would duplicate (Maildir file names are stable per message and
 * recipient).  A crash after fn made a copy and before that was recorded
 * leaves the copy; the message is then delivered again from the journal or
 * by the client (at least once, never lost), under the same names.
 */
typedef void (*queue_direct_fn)(void *const *msg_ctx, const struct queue_item *items, size_t n,
				bool *delivered);
/* release(msg_ctx) runs on the loop thread once the queue is done with a message's msg_ctx. */
void queue_set_direct(struct queue *q, queue_direct_fn fn, void (*release)(void *msg_ctx));

/* Runs run(arg) on a worker thread (blocking file work), then done(arg) on the loop thread. */
void queue_work(struct queue *q, void (*run)(void *arg), void (*done)(void *arg), void *arg);

/* Result callbacks: err is 0 or an errno value (ENOSPC: disk full). */
typedef void (*queue_done_fn)(void *arg, int err);

/*
 * Opens (creating tmp/ and queue/) the spool, removes unfinished files from
 * tmp/, starts the threads, and schedules every message found in queue/.
 * Returns NULL with err filled on failure.
 */
struct queue *queue_open(const char *spool_dir, const struct queue_limits *limits, char *err,
			 size_t err_cap);
/* Stops the threads after in-flight work ends; pending callbacks are dropped. */
void queue_close(struct queue *q);
void queue_set_deliverer(struct queue *q, queue_deliver_fn fn, void *ctx);
/* New retry and lifetime limits (SIGHUP); for the attempts that end from now on.  Loop thread. */
void queue_set_retry_limits(struct queue *q, unsigned retry_min_s, unsigned retry_max_s,
			    unsigned lifetime_s);
/*
 * An envelope's recipients being built: final addresses and the ones given
 * for them (the orcpts of queue_envelope).  One entry per final address
 * (compared case-insensitively): the first one named keeps it.
 */
struct queue_rcpt_list {
	char **rcpts;  /* owned */
	char **orcpts; /* owned */
	size_t len, cap;
};
void queue_rcpt_list_add(struct queue_rcpt_list *l, const char *rcpt, const char *orig);
void queue_rcpt_list_free(struct queue_rcpt_list *l);

/*
 * The expansion of one recipient of a message picked up from incoming/, as
 * at DATA (aliases): adds its final addresses to out (the address itself
 * when it cannot be expanded: delivery then refuses it with the reason).
 * Runs on a worker thread.  Without one, picked-up messages keep their
 * recipients and are expanded at delivery.
 */
typedef void (*queue_expand_fn)(void *arg, const char *rcpt, struct queue_rcpt_list *out);
void queue_set_pickup_expand(struct queue *q, queue_expand_fn fn, void *arg);

/* A descriptor that becomes readable when completions wait; then call queue_dispatch(). */
int queue_notify_fd(const struct queue *q);
/* Runs completion callbacks and starts due deliveries.  Event loop thread. */
void queue_dispatch(struct queue *q);
/* Milliseconds until the next retry is due (-1: none). */
long queue_next_due_ms(const struct queue *q);
/* Makes every deferred message due now (petrel queue flush, SIGHUP). */
void queue_flush_all(struct queue *q);
/* Messages in the queue (received and not yet finished). */
size_t queue_length(const struct queue *q);

/* Starts receiving a message: assigns its id.  Nothing touches the disk yet. */
struct queue_msg *queue_msg_new(struct queue *q, const struct queue_envelope *env);
const char *queue_msg_id(const struct queue_msg *m);
/*
 * Appends message octets (copied).  A small message is held in memory
 * (done is not called: nothing waits for the disk); beyond that, writes
 * happen in order on a worker thread and done runs when this write finished
 * (err set on failure, after which the message can only be aborted).
 */
void queue_msg_append(struct queue_msg *m, const char *data, size_t len, queue_done_fn done,
		      void *arg);
/* Octets handed to queue_msg_append and not yet written. */
size_t queue_msg_pending(const struct queue_msg *m);
/*
 * Makes the message durable; done(arg, 0) runs once it is on stable storage
 * (then, and only then, may the client get its 250), or done(arg, errno).
 * Then the message belongs to the queue (delivery starts) and m is gone.
 */
void queue_msg_commit(struct queue_msg *m, queue_done_fn done, void *arg);
/*
 * Lets the commit offer m to the direct deliverer (queue_set_direct) with
 * msg_ctx, which the queue hands to the release function when done with it.
 */
void queue_msg_direct(struct queue_msg *m, void *msg_ctx);
/*
 * In the commit callback: true when m went to the direct deliverer's way
 * (delivered at the commit, or in the journal with its delivery following):
 * the deliverer logs it, or the queue does if it ends up queued after all.
 */
bool queue_msg_direct_taken(const struct queue_msg *m);
/* Drops the message and its file; m is gone.  No callback runs for it any more. */
void queue_msg_abort(struct queue_msg *m);
/* Forgets the callbacks of m (its owner went away); the work itself goes on. */
void queue_msg_detach(struct queue_msg *m);

/*
 * Moves messages dropped into spool/incoming/ (by `petrel sendmail`) into
 * the queue and schedules them.  Runs on the queue's threads; cheap when
 * incoming/ is empty.  The server calls it on SIGUSR1 and every few seconds.
 */
void queue_pickup(struct queue *q);

/* ---- the drop-off, for other processes (petrel sendmail) ------------------
 *
 * Blocking functions that write a message into spool/incoming/ the way the
 * server writes its own: "incoming/.ID" is written and fdatasync'd, renamed
 * to "incoming/ID", and incoming/ is fsync'd.  The running server picks it up
 * (queue_pickup); a server that starts later finds it too.
 */
struct queue_drop;

/* Starts a message; NULL with err filled when the spool is unusable. */
struct queue_drop *queue_drop_open(const char *spool_dir, const struct queue_envelope *env,
				   char *err, size_t err_cap);
/* Gives the file to uid/gid (root dropping mail for a server that runs as `user`).  0 or -1. */
int queue_drop_give(struct queue_drop *d, uid_t uid, gid_t gid);
/* Appends message octets (wire form: CRLF lines).  0, or -1 with errno set. */
int queue_drop_write(struct queue_drop *d, const void *data, size_t len);
/* Makes it durable and visible; writes the queue id into id.  0, or -1 with err filled. */
int queue_drop_commit(struct queue_drop *d, char id[UTIL_ID_LEN + 1], char *err, size_t err_cap);
/* Drops an unfinished message (also after a failed commit); frees d.  NULL is fine. */
void queue_drop_abort(struct queue_drop *d);

/* The spool's pid file, written by a running server: "<spool_dir>/petrel.pid". */
#define QUEUE_PID_FILE "petrel.pid"

#endif
