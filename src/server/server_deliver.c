/*
 * server_deliver — the queue's deliverer: each recipient of a queued
 * message is expanded (aliases, recipient_delimiter) and written into its
 * Maildir.  Runs on the queue's worker threads.
 *
 * Recipients in foreign domains go to the relay, one session per domain.
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

/* The copies one delivery at the commit made, so that they can be taken back. */
struct copy {
	char *domain, *user;
	char name[256];
};

struct copies {
	struct copy *v;
	size_t len, cap;
};

static void
copies_add(struct copies *c, const char *domain, const char *user, const char *name)
{
	if (c->len == c->cap) {
		c->cap = c->cap ? 2 * c->cap : 4;
		c->v = xrealloc(c->v, c->cap * sizeof(*c->v));
	}
	c->v[c->len].domain = xstrdup(domain);
	c->v[c->len].user = xstrdup(user);
	util_strlcpy(c->v[c->len].name, name, sizeof(c->v[c->len].name));
	c->len++;
}

static void
copies_free(struct copies *c)
{
	for (size_t i = 0; i < c->len; i++) {
		free(c->v[i].domain);
		free(c->v[i].user);
	}
	free(c->v);
}

/* copies: NULL, or where each copy written is recorded. */
static void
deliver_one(const struct conf *conf, const struct deliver_db *db, const struct queue_item *item,
	    size_t i, struct queue_rcpt_result *res, struct copies *copies)
{
	const char *rcpt = item->rcpts[i];
	char addr[600];
	struct deliver_target *targets = NULL;
	size_t ntargets = 0;
	char err[200];
	struct buf h;
	double delay = difftime(time(NULL), item->arrival);
	int deferred = 0;

	/* Queue files of older versions may hold a bare "Postmaster". */
	if (strchr(rcpt, '@') == NULL)
		snprintf(addr, sizeof(addr), "postmaster@%s", conf->local_domains[0]);
	else
		snprintf(addr, sizeof(addr), "%s", rcpt);
	util_strlcpy(res->relay, "local", sizeof(res->relay));
	if (deliver_expand(db, conf, addr, &targets, &ntargets, err, sizeof(err)) != 0) {
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
		char name[256];
		bool permanent = false;

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
		if (deliver_maildir_write(conf->mail_root, tg->domain, tg->user, name, &m,
					  &permanent, err, sizeof(err)) != 0) {
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
		if (copies != NULL)
			copies_add(copies, tg->domain, tg->user, name);
		if (strcmp(tg->addr, addr) == 0)
			log_info("%s: to=<%s>, relay=local, delay=%.0f, status=sent (delivered to "
				 "maildir)",
				 item->id, tg->addr, delay);
		else
			log_info("%s: to=<%s>, orig_to=<%s>, relay=local, delay=%.0f, status=sent "
				 "(delivered to maildir)",
				 item->id, tg->addr, rcpt, delay);
	}
	res->status = deferred ? QUEUE_RCPT_DEFER : QUEUE_RCPT_DONE;
out:
	buf_free(&h);
	deliver_targets_free(targets, ntargets);
}

/*
 * The direct way, on a worker thread (queue_set_direct): a message whose
 * recipients all expand to local mailboxes is written into them — right
 * after its 250 when the journal holds it, or before the
 * 250 when the journal could not take it.  Anything else (a foreign or
 * unknown recipient, an alias error) is left to the queue untouched; after
 * a failed write the copies already made are removed again and the whole
 * message is queued.
 */
bool
server_deliver_direct(void *msg_ctx, const struct queue_item *item)
{
	const struct server_cfg *cfg = msg_ctx;
	struct queue_rcpt_result res;
	struct copies copies = {0};
	bool ok = true;

	for (size_t i = 0; i < item->rcpts_len; i++) {
		struct deliver_target *targets = NULL;
		size_t n = 0;
		bool local = true;
		char err[200];

		if (strchr(item->rcpts[i], '@') == NULL || !is_local(cfg->conf, item->rcpts[i]))
			return false;
		if (deliver_expand(cfg->db, cfg->conf, item->rcpts[i], &targets, &n, err,
				   sizeof(err)) != 0)
			return false;
		for (size_t t = 0; t < n; t++)
			local = local && targets[t].is_local;
		deliver_targets_free(targets, n);
		if (!local)
			return false;
	}
	log_info("%s: from=<%s>, size=%llu, nrcpt=%zu (delivering at once)", item->id, item->sender,
		 (unsigned long long)item->body_len, item->rcpts_len);
	for (size_t i = 0; i < item->rcpts_len && ok; i++) {
		memset(&res, 0, sizeof(res));
		deliver_one(cfg->conf, cfg->db, item, i, &res, &copies);
		ok = res.status == QUEUE_RCPT_DONE;
	}
	if (!ok) {
		/*
		 * All or nothing: the message goes to the queue whole, and if the spool
		 * refuses it too the client gets a 4xx and sends it again; neither may
		 * find a copy already made.
		 */
		for (size_t k = 0; k < copies.len; k++) {
			struct copy *cp = &copies.v[k];
			char err[200];

			if (deliver_maildir_remove(cfg->conf->mail_root, cp->domain, cp->user,
						   cp->name, err, sizeof(err)) != 0)
				log_warn("%s: cannot take back the copy for %s@%s: %s", item->id,
					 cp->user, cp->domain, err);
		}
		log_info("%s: delivery at once failed for a recipient; %zu copy(ies) taken back, "
			 "the message goes to the queue",
			 item->id, copies.len);
	}
	copies_free(&copies);
	return ok;
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

	for (size_t i = 0; i < item->rcpts_len; i++) {
		if (!item->done[i] && is_local(a->cfg->conf, item->rcpts[i]))
			deliver_one(a->cfg->conf, a->cfg->db, item, i, &results[i], NULL);
	}
}

/* Loop thread: hands each foreign domain's recipients to the relay. */
static void
local_done(void *arg)
{
	struct attempt *a = arg;
	const struct queue_item *item = queue_delivery_item(a->d);
	struct queue_rcpt_result *results = queue_delivery_results(a->d);
	bool *taken = xcalloc(item->rcpts_len, sizeof(bool));
	size_t *group = xcalloc(item->rcpts_len, sizeof(size_t));

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
			/* With a relayhost every foreign recipient goes in one transaction. */
			if (!item->done[k] && !taken[k] && at != NULL &&
			    !is_local(a->cfg->conf, item->rcpts[k]) &&
			    (a->cfg->conf->relayhost != NULL || strcasecmp(at + 1, domain) == 0)) {
				taken[k] = true;
				group[n++] = k;
			}
		}
		a->parts++;
		relay_deliver(a->srv->relay, a->cfg->conf, domain, item, group, n, results,
			      part_done, a);
	}
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
