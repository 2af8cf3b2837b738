/*
 * server_deliver — the queue's deliverer: each recipient of a queued
 * message is expanded (aliases, recipient_delimiter) and written into its
 * Maildir.  Runs on the queue's worker threads.
 *
 * Recipients in foreign domains go to the relay, one session per domain
 * (and per alias, for the recipients an alias forwarded the message to).
 */
#include "server/server_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "conf/conf.h"
#include "deliver/deliver.h"
#include "queue/queue.h"
#include "relay/relay.h"
#include "smtp/smtp_trace.h"
#include "util/util_buf.h"
#include "util/util_log.h"
#include "util/util_mem.h"
#include "util/util_time.h"

/* Return-Path, Delivered-To and Received for one target (LF line ends, as in the Maildir). */
static int
build_headers(struct buf *h, const struct conf *conf, const struct queue_item *item,
	      const char *target, const char *rcpt)
{
	char date[64];

	util_rfc5322_date(item->arrival, date, sizeof(date));
	buf_reset(h);
	buf_printf(h, "Return-Path: <%s>\n", item->sender);
	buf_printf(h, "Delivered-To: %s\n", target);
	buf_printf(h, "Received: from %s (%s [%s])\n", item->helo[0] ? item->helo : "unknown",
		   item->client_name, item->client_addr);
	buf_printf(h, "\tby %s (petrel) with %s id %s\n", conf->hostname, item->protocol, item->id);
	return buf_printf(h, "\tfor <%s>; %s\n", rcpt, date);
}

static bool
is_local(const struct conf *conf, const char *rcpt)
{
	const char *at = strrchr(rcpt, '@');

	return at == NULL || conf_is_local_domain(conf, at + 1, strlen(at + 1));
}

/* An address as the envelope holds it; a bare "Postmaster" (RFC 5321 4.5.1) is our first domain's.
 */
static void
full_addr(const struct conf *conf, const char *a, char *dst, size_t cap)
{
	if (strchr(a, '@') == NULL)
		snprintf(dst, cap, "postmaster@%s", conf->local_domains[0]);
	else
		snprintf(dst, cap, "%s", a);
}

/*
 * The mailboxes recipient i goes to.  An envelope whose aliases were
 * expanded when the message came in holds final targets, each resolved
 * without an alias lookup (looking again would deliver twice what an alias
 * naming itself, "a: a, b", gave).  Its original recipient is checked first
 * as RCPT checks it: a user no longer in users_file, or an unknown address
 * given to `petrel sendmail`, is refused here; an alias whose expansion
 * failed (a loop) is kept as it is and refused by deliver_resolve().  Queue
 * files of older versions were never expanded: they are now.
 */
static int
targets_of(const struct conf *conf, const struct deliver_db *db, const struct queue_item *item,
	   size_t i, struct deliver_target **out, size_t *n, char *err, size_t err_cap)
{
	char addr[600], orig[600];

	full_addr(conf, item->rcpts[i], addr, sizeof(addr));
	if (!item->expanded)
		return deliver_expand(db, conf, addr, out, n, err, err_cap);
	full_addr(conf, item->orcpts[i], orig, sizeof(orig));
	/*
	 * The recipient the client gave must still exist (a user removed since
	 * is unknown now); its expansion was made when the message came in.
	 */
	if (is_local(conf, orig) && deliver_check_addr(db, conf, orig) != DELIVER_RCPT_OK) {
		char esc[300];

		snprintf(err, err_cap, "%s: unknown user",
			 util_log_escape(esc, sizeof(esc), orig, strlen(orig)));
		return -1;
	}
	*n = 1;
	return deliver_resolve(db, conf, addr, out, err, err_cap);
}

/*
 * The trace fields of item's header section, read once for all its
 * recipients: in place from memory, else the first SMTP_TRACE_PEEK octets of
 * its queue file.  A read that fails leaves the summary empty (the copy's
 * own read then fails, and the delivery is deferred).  Free with
 * smtp_trace_free().
 */
static void
trace_of(const struct queue_item *item, struct smtp_trace *t)
{
	size_t len = item->body_len < SMTP_TRACE_PEEK ? (size_t)item->body_len : SMTP_TRACE_PEEK;
	char *h;
	ssize_t n;

	if (item->body_mem != NULL) {
		smtp_trace_scan(t, item->body_mem, len);
		return;
	}
	h = xmalloc(len + 1);
	n = queue_item_read(item, h, len, 0);
	smtp_trace_scan(t, h, n > 0 ? (size_t)n : 0);
	free(h);
}

/*
 * Whether a copy for addr would go round a mail forwarding loop, as Postfix's
 * local(8) decides: the message went through more than SMTP_TRACE_HOPS_MAX
 * hops, or was already delivered or forwarded for addr (one of its
 * Delivered-To: fields names it: the copy now would be the next round of the
 * loop).  Then why holds the reason (its status is 5.4.6).
 */
static bool
loops(const struct smtp_trace *trace, const char *addr, char *why, size_t why_cap)
{
	char esc[300];

	if (smtp_trace_too_many_hops(trace)) {
		snprintf(why, why_cap, "Too many hops: mail forwarding loop");
		return true;
	}
	if (smtp_trace_delivered_to(trace, addr)) {
		snprintf(why, why_cap, "mail forwarding loop for %s",
			 util_log_escape(esc, sizeof(esc), addr, strlen(addr)));
		return true;
	}
	return false;
}

/* Log lines held back until the batch they describe is committed. */
struct line {
	size_t msg; /* the message (its index in the batch) the line is about */
	char *text;
};

struct lines {
	struct line *v;
	size_t len, cap;
	size_t msg; /* of the lines added next */
};

static void
lines_add(struct lines *l, const char *text)
{
	if (l->len == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 8;
		l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
	}
	l->v[l->len].msg = l->msg;
	l->v[l->len++].text = xstrdup(text);
}

static void
lines_truncate(struct lines *l, size_t len)
{
	while (l->len > len)
		free(l->v[--l->len].text);
}

/*
 * A local recipient's copies: written and flushed now (batch NULL, the
 * queue's deliverer), or added to batch (the direct way), their "sent" lines
 * then kept in sent until the batch is committed.  trace: the message's
 * (trace_of).  A recipient whose copy would go round a loop fails (5.4.6),
 * the address it was given as first (before its aliases were expanded),
 * then each mailbox it goes to.
 */
static void
deliver_one(const struct conf *conf, const struct deliver_db *db, const struct queue_item *item,
	    size_t i, const struct smtp_trace *trace, struct queue_rcpt_result *res,
	    struct deliver_batch *batch, struct lines *sent)
{
	const char *rcpt = item->rcpts[i];
	char addr[600], orig[600];
	struct deliver_target *targets = NULL;
	size_t ntargets = 0;
	char err[200];
	struct buf h;
	double delay = difftime(time(NULL), item->arrival);
	int deferred = 0;

	full_addr(conf, rcpt, addr, sizeof(addr));
	full_addr(conf, item->orcpts[i], orig, sizeof(orig));
	util_strlcpy(res->relay, "local", sizeof(res->relay));
	if (loops(trace, orig, err, sizeof(err))) {
		res->status = QUEUE_RCPT_FAIL;
		snprintf(res->reason, sizeof(res->reason), "5.4.6 %s", err);
		log_info("%s: to=<%s>, relay=local, delay=%.0f, status=bounced (%s)", item->id,
			 rcpt, delay, err);
		return;
	}
	if (targets_of(conf, db, item, i, &targets, &ntargets, err, sizeof(err)) != 0) {
		res->status = QUEUE_RCPT_FAIL;
		snprintf(res->reason, sizeof(res->reason), "5.1.1 %s", err);
		log_info("%s: to=<%s>, relay=local, delay=%.0f, status=bounced (%s)", item->id,
			 rcpt, delay, err);
		return;
	}
	buf_init(&h, 64 * 1024);
	for (size_t t = 0; t < ntargets; t++) {
		struct deliver_target *tg = &targets[t];
		struct deliver_msg m;
		char name[256], line[1024];
		bool permanent = false;
		int rc;

		if (!tg->is_local) {
			/* A remote alias target waits for relaying, like any foreign recipient. */
			deferred = 1;
			snprintf(
			    res->reason, sizeof(res->reason),
			    "4.3.0 alias target <%s> became remote after the message was queued",
			    tg->addr);
			log_info(
			    "%s: to=<%s>, orig_to=<%s>, relay=none, delay=%.0f, status=deferred "
			    "(%s)",
			    item->id, tg->addr, rcpt, delay, res->reason);
			continue;
		}
		if (loops(trace, tg->addr, err, sizeof(err))) {
			res->status = QUEUE_RCPT_FAIL;
			snprintf(res->reason, sizeof(res->reason), "5.4.6 %s", err);
			log_info("%s: to=<%s>, orig_to=<%s>, relay=local, delay=%.0f, "
				 "status=bounced (%s)",
				 item->id, tg->addr, rcpt, delay, err);
			goto out;
		}
		build_headers(&h, conf, item, tg->addr, item->orcpts[i]);
		m.headers = buf_cstr(&h);
		m.body_mem = item->body_mem;
		/* The direct way's first attempt: no earlier copy can exist. */
		m.first_copy = item->body_mem != NULL && item->attempts == 0;
		m.body_fd = item->fd;
		m.body_off = item->body_off;
		m.body_len = item->body_len;
		/* A stable name: a redelivery after a crash finds the first copy and skips. */
		snprintf(name, sizeof(name), "%lld.P%sR%zuT%zu.%s", (long long)item->arrival,
			 item->id, i, t, conf->hostname);
		if (batch != NULL)
			rc = deliver_batch_add(batch, conf->mail_root, tg->domain, tg->user, name,
					       &m, &permanent, err, sizeof(err));
		else
			rc = deliver_maildir_write(conf->mail_root, tg->domain, tg->user, name, &m,
						   &permanent, err, sizeof(err));
		if (rc != 0) {
			if (permanent) {
				res->status = QUEUE_RCPT_FAIL;
				snprintf(res->reason, sizeof(res->reason), "5.2.0 %s", err);
				log_info("%s: to=<%s>, orig_to=<%s>, relay=local, delay=%.0f, "
					 "status=bounced (%s)",
					 item->id, tg->addr, rcpt, delay, err);
				goto out;
			}
			deferred = 1;
			snprintf(res->reason, sizeof(res->reason), "4.2.0 %s", err);
			log_warn("%s: to=<%s>, relay=local, delay=%.0f, status=deferred (%s)",
				 item->id, tg->addr, delay, err);
			continue;
		}
		if (strcmp(tg->addr, addr) == 0)
			snprintf(line, sizeof(line),
				 "%s: to=<%s>, relay=local, delay=%.0f, status=sent (delivered to "
				 "maildir)",
				 item->id, tg->addr, delay);
		else
			snprintf(line, sizeof(line),
				 "%s: to=<%s>, orig_to=<%s>, relay=local, delay=%.0f, status=sent "
				 "(delivered to maildir)",
				 item->id, tg->addr, rcpt, delay);
		if (sent != NULL)
			lines_add(sent, line);
		else
			log_info("%s", line);
	}
	res->status = deferred ? QUEUE_RCPT_DEFER : QUEUE_RCPT_DONE;
out:
	buf_free(&h);
	deliver_targets_free(targets, ntargets);
}

/*
 * A message for more mailboxes than this goes the queue's way, whose
 * deliverer writes one copy at a time: a batch holds its Maildirs open.
 */
#define DIRECT_TARGETS_MAX 16
/*
 * A batch is committed before the next message once it names this many
 * Maildirs, or holds this many copies (each an open file until the commit).
 */
#define BATCH_MAILDIRS_MAX 16
#define BATCH_COPIES_MAX   64

/*
 * Every recipient expands to local mailboxes only, not too many of them, and
 * none goes round a loop (trace: the message's; a recipient that does is
 * refused by the queue's deliverer, whose bounce the others do not wait for).
 */
static bool
goes_direct(const struct server_cfg *cfg, const struct queue_item *item,
	    const struct smtp_trace *trace)
{
	size_t total = 0;

	for (size_t i = 0; i < item->rcpts_len; i++) {
		struct deliver_target *targets = NULL;
		size_t n = 0;
		bool local = true;
		char err[200], orig[600];

		if (strchr(item->rcpts[i], '@') == NULL || !is_local(cfg->conf, item->rcpts[i]))
			return false;
		full_addr(cfg->conf, item->orcpts[i], orig, sizeof(orig));
		if (loops(trace, orig, err, sizeof(err)))
			return false;
		if (targets_of(cfg->conf, cfg->db, item, i, &targets, &n, err, sizeof(err)) != 0)
			return false;
		for (size_t t = 0; t < n; t++)
			local = local && targets[t].is_local &&
				!loops(trace, targets[t].addr, err, sizeof(err));
		deliver_targets_free(targets, n);
		total += n;
		if (!local || total > DIRECT_TARGETS_MAX)
			return false;
	}
	return true;
}

/*
 * Commits the batch holding messages from..to-1 (those with delivered[k]
 * set wrote every copy): a message whose copies were taken back goes to
 * the queue after all.  Then the "sent" lines of the messages delivered.
 */
static void
commit_batch(struct deliver_batch *batch, struct lines *sent, const struct queue_item *items,
	     bool *delivered, size_t from, size_t to)
{
	char err[200];

	if (deliver_batch_commit(batch, err, sizeof(err)) != 0) {
		for (size_t k = from; k < to; k++) {
			if (!delivered[k] || !deliver_batch_failed(batch, k))
				continue;
			delivered[k] = false;
			log_warn("%s: delivery at once failed (%s); copies taken back, the message "
				 "goes to the queue",
				 items[k].id, err);
		}
	}
	for (size_t l = 0; l < sent->len; l++)
		if (delivered[sent->v[l].msg])
			log_info("%s", sent->v[l].text);
	lines_truncate(sent, 0);
	deliver_batch_free(batch);
}

/*
 * The direct way, on a worker thread (queue_set_direct): messages whose
 * recipients all expand to local mailboxes are written into them — right
 * after their 250 when the journal holds them, or before the 250 when the
 * journal could not take one.  Their copies go into batches and are flushed
 * together.  Anything else (a foreign or unknown recipient, an alias error,
 * a recipient the message loops for) is left to the queue untouched; a
 * message one of whose copies cannot be written has its copies taken back
 * and is queued whole, while the rest of its batch is delivered (all of it
 * is queued when the batch's flush fails).
 */
void
server_deliver_direct(void *const *msg_ctx, const struct queue_item *items, size_t n,
		      bool *delivered)
{
	struct deliver_batch *batch = deliver_batch_new();
	struct lines sent = {0};
	size_t from = 0; /* the batch's first message */

	for (size_t k = 0; k < n; k++) {
		const struct server_cfg *cfg = msg_ctx[k];
		const struct queue_item *item = &items[k];
		struct smtp_trace trace;
		size_t mark, lines_mark;
		bool ok;

		delivered[k] = false;
		trace_of(item, &trace); /* from memory: no file read on the way */
		if (!goes_direct(cfg, item, &trace)) {
			smtp_trace_free(&trace);
			continue;
		}
		if (deliver_batch_maildirs(batch) >= BATCH_MAILDIRS_MAX ||
		    deliver_batch_len(batch) >= BATCH_COPIES_MAX) {
			commit_batch(batch, &sent, items, delivered, from, k);
			batch = deliver_batch_new();
			from = k;
		}
		log_info("%s: from=<%s>, size=%llu, nrcpt=%zu (delivering at once)", item->id,
			 item->sender, (unsigned long long)item->body_len, item->rcpts_len);
		mark = deliver_batch_len(batch);
		lines_mark = sent.len;
		deliver_batch_group(batch, k);
		sent.msg = k;
		ok = true;
		for (size_t i = 0; i < item->rcpts_len && ok; i++) {
			struct queue_rcpt_result res;

			memset(&res, 0, sizeof(res));
			deliver_one(cfg->conf, cfg->db, item, i, &trace, &res, batch, &sent);
			ok = res.status == QUEUE_RCPT_DONE;
		}
		smtp_trace_free(&trace);
		if (!ok) {
			/*
			 * All or nothing: the message goes to the queue whole, and if the
			 * spool refuses it too the client gets a 4xx and sends it again;
			 * neither may find a copy already made.
			 */
			log_info("%s: delivery at once failed for a recipient; %zu copy(ies) taken "
				 "back, the message goes to the queue",
				 item->id, sent.len - lines_mark);
			deliver_batch_rollback(batch, mark);
			lines_truncate(&sent, lines_mark);
			continue;
		}
		delivered[k] = true;
	}
	commit_batch(batch, &sent, items, delivered, from, n);
	free(sent.v);
}

/*
 * A recipient's aliases, expanded when the message comes in (as Postfix's
 * cleanup does): at DATA, and when a message dropped by `petrel sendmail`
 * is picked up.  Its final addresses go into l with rcpt as their original;
 * a remote target is then relayed like any foreign recipient.  An address
 * whose expansion fails is kept: its delivery refuses it with the reason.
 */
void
server_rcpt_expand(const struct server_cfg *cfg, const char *rcpt, struct queue_rcpt_list *l)
{
	struct deliver_target *t = NULL;
	size_t n = 0;
	char addr[600], err[256];

	full_addr(cfg->conf, rcpt, addr, sizeof(addr));
	if (deliver_expand(cfg->db, cfg->conf, addr, &t, &n, err, sizeof(err)) != 0) {
		log_warn("<%s>: %s", rcpt, err);
		queue_rcpt_list_add(l, addr, rcpt);
		return;
	}
	for (size_t k = 0; k < n; k++)
		queue_rcpt_list_add(l, t[k].addr, rcpt);
	deliver_targets_free(t, n);
}

void
server_pickup_expand(void *arg, const char *rcpt, struct queue_rcpt_list *l)
{
	struct server_cfg *cfg = server_current_cfg(arg);

	server_rcpt_expand(cfg, rcpt, l);
	server_cfg_unref(cfg);
}

void
server_direct_release(void *msg_ctx)
{
	server_cfg_unref(msg_ctx);
}

/* One attempt: local recipients on a worker thread, then one relay session per domain. */
struct attempt {
	struct server *srv;
	struct queue_delivery *d;
	struct server_cfg *cfg; /* the configuration this attempt runs under */
	size_t parts;		/* local part and relay sessions not yet finished */
};

static void
part_done(void *arg)
{
	struct attempt *a = arg;

	if (--a->parts > 0)
		return;
	server_cfg_unref(a->cfg);
	queue_delivery_finish(a->d);
	free(a);
}

static void
local_run(void *arg)
{
	struct attempt *a = arg;
	const struct queue_item *item = queue_delivery_item(a->d);
	struct queue_rcpt_result *results = queue_delivery_results(a->d);
	struct smtp_trace trace;

	trace_of(item, &trace);
	for (size_t i = 0; i < item->rcpts_len; i++) {
		if (!item->done[i] && is_local(a->cfg->conf, item->rcpts[i]))
			deliver_one(a->cfg->conf, a->cfg->db, item, i, &trace, &results[i], NULL,
				    NULL);
	}
	smtp_trace_free(&trace);
}

/*
 * The alias that forwarded the message to foreign recipient i, lower-cased
 * as Delivered-To: fields are (owned), or NULL: its address as given when an
 * alias of ours expanded to it.  An address that could not go into a header
 * field as it is (a control octet; UTF-8 in a message that is not SMTPUTF8)
 * names none.
 */
static char *
forwarded_for(const struct conf *conf, const struct queue_item *item, size_t i)
{
	char orig[600];

	if (!item->expanded)
		return NULL; /* older queue files: a foreign recipient is itself */
	full_addr(conf, item->orcpts[i], orig, sizeof(orig));
	if (!is_local(conf, orig))
		return NULL;
	for (char *p = orig; *p != '\0'; p++) {
		unsigned char ch = (unsigned char)*p;

		if (ch < 0x20 || ch == 0x7f || (ch >= 0x80 && !item->smtputf8))
			return NULL;
		if (ch >= 'A' && ch <= 'Z')
			*p = (char)(ch - 'A' + 'a');
	}
	return xstrdup(orig);
}

static bool
same_alias(const char *a, const char *b)
{
	return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

/*
 * Loop thread: hands each foreign domain's recipients to the relay, one
 * transaction for those of one domain (all foreign ones with a relayhost)
 * that one alias forwarded the message to, or that none did: the copy for
 * an alias's recipients names it in a Delivered-To: field.
 */
static void
local_done(void *arg)
{
	struct attempt *a = arg;
	const struct queue_item *item = queue_delivery_item(a->d);
	struct queue_rcpt_result *results = queue_delivery_results(a->d);
	bool *taken = xcalloc(item->rcpts_len, sizeof(bool));
	size_t *group = xcalloc(item->rcpts_len, sizeof(size_t));
	char **alias = xcalloc(item->rcpts_len, sizeof(char *));

	for (size_t i = 0; i < item->rcpts_len; i++)
		if (!item->done[i] && !is_local(a->cfg->conf, item->rcpts[i]))
			alias[i] = forwarded_for(a->cfg->conf, item, i);

	for (size_t i = 0; i < item->rcpts_len; i++) {
		const char *domain;
		size_t n = 0;

		if (item->done[i] || taken[i] || is_local(a->cfg->conf, item->rcpts[i]))
			continue;
		if (a->srv->relay == NULL) {
			/* Stopping: the relay is gone; the next start retries. */
			results[i].status = QUEUE_RCPT_DEFER;
			util_strlcpy(results[i].reason, "4.3.2 petrel is stopping",
				     sizeof(results[i].reason));
			continue;
		}
		domain = strrchr(item->rcpts[i], '@') + 1;
		for (size_t k = i; k < item->rcpts_len; k++) {
			const char *at = strrchr(item->rcpts[k], '@');
			/* With a relayhost every foreign recipient (of one alias) goes in one. */
			if (!item->done[k] && !taken[k] && at != NULL &&
			    !is_local(a->cfg->conf, item->rcpts[k]) &&
			    same_alias(alias[i], alias[k]) &&
			    (a->cfg->conf->relayhost != NULL || strcasecmp(at + 1, domain) == 0)) {
				taken[k] = true;
				group[n++] = k;
			}
		}
		a->parts++;
		relay_deliver(a->srv->relay, a->cfg->conf, domain, item, group, n, alias[i],
			      results, part_done, a);
	}
	for (size_t i = 0; i < item->rcpts_len; i++)
		free(alias[i]);
	free(alias);
	free(taken);
	free(group);
	part_done(a); /* the local part */
}

void
server_deliver(void *ctx, struct queue_delivery *d)
{
	struct attempt *a = xcalloc(1, sizeof(*a));
	const struct queue_item *item = queue_delivery_item(d);

	a->srv = ctx;
	a->d = d;
	a->cfg = server_current_cfg(a->srv);
	a->parts = 1;
	for (size_t i = 0; i < item->rcpts_len; i++) {
		if (!item->done[i] && is_local(a->cfg->conf, item->rcpts[i])) {
			queue_work(a->srv->queue, local_run, local_done, a);
			return;
		}
	}
	local_done(a); /* only foreign recipients: no trip to a worker */
}
