/*
 * server_conn — one client connection: bytes between the socket and the
 * SMTP session, and the session's events turned into queue operations.
 */
#include "server/server_internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "conf/conf.h"
#include "deliver/deliver.h"
#include "queue/queue.h"
#include "auth/auth.h"
#include "smtp/smtp_session.h"
#include "tls/tls.h"
#include "util/util_log.h"
#include "util/util_mem.h"

#define READ_CHUNK	   (64 * 1024)	    /* octets handed to the session at a time */
#define INPUT_HIGH	   (2 * READ_CHUNK) /* the socket is left unread while this much waits */
#define OUTPUT_HIGH	   (128 * 1024)	    /* stop reading while this much output waits */
#define PENDING_HIGH	   (256 * 1024) /* stop reading while this much body waits for the disk */
#define SHUTDOWN_WRITE_S   5	  /* how long a client may take to read a 421 (at stop, timeout) */
#define AUTH_FAIL_WINDOW_S 600	  /* failed AUTHs of a client address are counted this long */
#define AUTH_FAIL_MAX_IP   10	  /* failed AUTHs from one address before all of its AUTHs fail */
#define AUTH_WAIT_US	   100000 /* an AUTH over its address's limit looks again after this */

struct conn {
	struct server *srv;
	struct server_cfg *cfg; /* reference held for the session's life */
	struct bufferevent *bev;
	struct smtp_session *sess;
	struct queue_msg *msg;	  /* the message being received, if any */
	struct event *timer;	  /* smtp_timeout without progress */
	struct event *auth_delay; /* a failed AUTH is answered late */
	struct event *auth_retry; /* an AUTH waiting for its address's checks under way */
	enum listener_kind kind;
	bool authing; /* a password check is on a worker thread */
	char addr[INET6_ADDRSTRLEN];
	struct sockaddr_storage sa;
	bool committing;   /* waiting for the queue: read nothing */
	bool closing;	   /* close once the output is written */
	bool dead;	   /* the socket is gone; free when the commit or password check returns */
	bool counted;	   /* holds a slot in the per-address count */
	bool plain;	   /* c->bev is the socket's own (no TLS): replies may go straight to it */
	bool read_paused;  /* INPUT_HIGH octets wait: the socket is left unread (input_flow) */
	bool eof;	   /* the client closed its side: answer what it sent, then close */
	bool handshaking;  /* a TLS handshake under way: no reply can go out before it ends */
	bool auth_waiting; /* an AUTH waits for its address's checks under way (start_auth) */
	bool spool_failed; /* a write of this message's body failed (logged once a message) */
	struct server_reject_count rejects; /* refusals logged and left out (log_refusal) */
	struct conn *prev, *next;
};

static void conn_process(struct conn *c);
static void conn_free(struct conn *c);

/* ---- per-address connection counts ------------------------------------- */

static unsigned
ip_hash(const char *s)
{
	unsigned h = 2166136261u;
	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h % IP_BUCKETS;
}

/* A record that remembers nothing: no session, no check under way, no recent AUTH failure. */
static bool
ip_idle(const struct ip_count *ic, time_t now)
{
	return ic->count == 0 && ic->auth_pending == 0 &&
	       (ic->auth_failures == 0 || now - ic->auth_last_failure > AUTH_FAIL_WINDOW_S);
}

/* Frees the idle records of one bucket. */
static void
ip_sweep(struct ip_count **head, time_t now)
{
	struct ip_count *ic = *head, *prev = NULL;

	while (ic != NULL) {
		struct ip_count *next = ic->next;

		if (!ip_idle(ic, now)) {
			prev = ic;
		} else {
			if (prev == NULL)
				*head = next;
			else
				prev->next = next;
			free(ic);
		}
		ic = next;
	}
}

static size_t
ip_add(struct server *srv, const char *addr, int delta)
{
	struct ip_count **head = &srv->ips[ip_hash(addr)], *ic;
	time_t now = time(NULL);
	size_t count;

	/*
	 * Records outlive their connections while they remember recent AUTH
	 * failures (reconnecting must not reset the per-address limit).  Each
	 * call frees the idle ones of its own bucket and of one more, in turn:
	 * failures from ever new addresses are forgotten once their window is
	 * over, even in buckets no connection comes to again.
	 */
	ip_sweep(&srv->ips[srv->ip_sweep_next], now);
	srv->ip_sweep_next = (srv->ip_sweep_next + 1) % IP_BUCKETS;
	for (ic = *head; ic != NULL; ic = ic->next) {
		if (strcmp(ic->addr, addr) == 0)
			break;
	}
	if (ic == NULL) {
		if (delta < 0)
			return 0;
		ic = xcalloc(1, sizeof(*ic));
		snprintf(ic->addr, sizeof(ic->addr), "%s", addr);
		ic->next = *head;
		*head = ic;
	}
	ic->count = (size_t)((long)ic->count + delta);
	count = ic->count;
	ip_sweep(head, now);
	return count;
}

/* ---- policy -------------------------------------------------------------- */

static enum smtp_rcpt_verdict
check_rcpt(void *ctx, const struct smtp_path *rcpt)
{
	struct conn *c = ctx;
	const struct conf *conf = c->cfg->conf;

	if (rcpt->is_postmaster)
		return SMTP_RCPT_ACCEPT; /* RFC 5321 4.5.1: always accepted */
	if (conf_is_local_domain(conf, rcpt->domain, rcpt->domain_len)) {
		switch (deliver_check_rcpt(c->cfg->db, conf, rcpt->local, rcpt->local_len,
					   rcpt->domain, rcpt->domain_len)) {
		case DELIVER_RCPT_OK:
			return SMTP_RCPT_ACCEPT;
		case DELIVER_RCPT_UNKNOWN:
			return SMTP_RCPT_UNKNOWN_USER;
		case DELIVER_RCPT_BAD_LOCAL:
			return SMTP_RCPT_BAD_MAILBOX;
		}
	}
	if (conf_in_relay_networks(conf, (const struct sockaddr *)&c->sa) ||
	    smtp_session_auth_user(c->sess) != NULL)
		return SMTP_RCPT_ACCEPT;
	return SMTP_RCPT_RELAY_DENIED;
}

/* An authenticated user sends as itself, or as an alias that reaches it. */
static bool
sender_allowed(void *ctx, const struct smtp_path *sender, const char *user)
{
	struct conn *c = ctx;
	struct deliver_target *t = NULL;
	size_t n = 0;
	char err[256];
	bool ok = false;

	char me[DELIVER_KEY_MAX + 1], key[DELIVER_KEY_MAX + 1];

	if (sender->is_null || strcasecmp(sender->addr, user) == 0)
		return true;
	/* Compared as the users file knows them: case and an IDN domain's spelling aside. */
	if (!deliver_addr_key(user, me, sizeof(me)))
		return false;
	if (deliver_addr_key(sender->addr, key, sizeof(key)) && strcmp(key, me) == 0)
		return true;
	if (deliver_expand(c->cfg->db, c->cfg->conf, sender->addr, &t, &n, err, sizeof(err)) != 0)
		return false;
	for (size_t i = 0; i < n && !ok; i++)
		ok = deliver_addr_key(t[i].addr, key, sizeof(key)) && strcmp(key, me) == 0;
	deliver_targets_free(t, n);
	return ok;
}

/* Every 4xx and 5xx reply the session queues is logged here, at no cost to the others. */
static void
log_refusal(void *ctx, const struct smtp_refusal *r)
{
	struct conn *c = ctx;

	server_reject_log(&c->rejects, c->msg != NULL ? queue_msg_id(c->msg) : NULL, c->addr,
			  smtp_session_protocol(c->sess), r);
}

/* ---- output and lifetime -------------------------------------------------- */

static void
arm_timer(struct conn *c)
{
	struct timeval tv = {.tv_sec = c->cfg->conf->smtp_timeout_s, .tv_usec = 0};

	evtimer_add(c->timer, &tv);
}

/*
 * Moves queued replies to the socket.  Without TLS and with nothing of
 * ours waiting before them they are sent at once: no write event armed and
 * disarmed (two epoll_ctl calls a reply) and no turn of the loop before the
 * reply leaves.  What the socket does not take, and every error (reported
 * by the bufferevent's own write), goes the bufferevent's way.
 */
static void
flush_output(struct conn *c)
{
	struct buf *out = smtp_session_output(c->sess);
	size_t sent = 0;

	if (out->len == 0 || c->dead)
		return;
	if (c->plain && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
		ssize_t n = send(bufferevent_getfd(c->bev), out->data, out->len,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n > 0)
			sent = (size_t)n;
	}
	if (sent < out->len)
		bufferevent_write(c->bev, out->data + sent, out->len - sent);
	buf_reset(out);
}

static void
conn_close(struct conn *c)
{
	if (c->dead)
		return;
	c->dead = true;
	if (c->msg != NULL && !c->committing) {
		/* The client left mid-message: nothing of it is kept. */
		queue_msg_abort(c->msg);
		c->msg = NULL;
	}
	server_reject_log_end(&c->rejects, c->addr);
	log_info("disconnect from unknown[%s]", c->addr);
	tls_bev_close_notify(c->bev); /* RFC 8446 6.1; a no-op without TLS */
	bufferevent_free(c->bev);
	c->bev = NULL;
	evtimer_del(c->timer);
	evtimer_del(c->auth_retry);
	if (c->committing || c->authing) {
		/*
		 * The commit goes on (the message may have reached the disk), or the
		 * password check on its worker: freed in commit_done or auth_done.
		 */
		return;
	}
	conn_free(c);
}

static void
conn_free(struct conn *c)
{
	struct server *srv = c->srv;

	if (c->counted)
		ip_add(srv, c->addr, -1);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		srv->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	srv->nconns--;
	event_free(c->timer);
	event_free(c->auth_delay);
	event_free(c->auth_retry);
	smtp_session_free(c->sess);
	server_cfg_unref(c->cfg);
	free(c);
	server_conn_gone(srv);
}

/* ---- queue callbacks -------------------------------------------------- */

static void
append_done(void *arg, int err)
{
	struct conn *c = arg;

	/* One line a message: every later write of a large one fails the same way. */
	if (err != 0 && !c->spool_failed) {
		log_warn("%s: spool write failed: %s", queue_msg_id(c->msg), strerror(err));
		c->spool_failed = true;
	}
	/* Reading was paused while too much body waited for the disk. */
	if (!c->dead && !c->committing && c->msg != NULL &&
	    queue_msg_pending(c->msg) < PENDING_HIGH / 2)
		conn_process(c);
}

static void
commit_done(void *arg, int err)
{
	struct conn *c = arg;
	enum smtp_commit_result r = SMTP_COMMIT_OK;
	char id[UTIL_ID_LEN + 1];

	snprintf(id, sizeof(id), "%s", queue_msg_id(c->msg));
	if (err == 0) {
		/* A message the direct way is logged by server_deliver_direct() (or the queue). */
		if (!queue_msg_direct_taken(c->msg))
			log_info("%s: from=<%s>, size=%llu, nrcpt=%zu (queue active)", id,
				 smtp_session_sender(c->sess),
				 (unsigned long long)smtp_session_message_size(c->sess),
				 smtp_session_rcpt_count(c->sess));
	} else {
		r = (err == ENOSPC || err == EDQUOT) ? SMTP_COMMIT_NO_SPACE : SMTP_COMMIT_ERROR;
		log_warn("%s: not queued: %s", id, strerror(err));
	}
	c->committing = false;
	/* Before c->msg goes: a 4xx is logged with the message's id (log_refusal). */
	smtp_session_commit_done(c->sess, r, id);
	c->msg = NULL; /* the queue owns it now */
	if (c->dead) {
		conn_free(c);
		return;
	}
	if (c->srv->stopping && !c->closing) {
		/* The stop passed it by while it committed: its reply, then the 421. */
		smtp_session_close_421(c->sess, "4.3.2", "Service shutting down");
		c->closing = true;
	}
	conn_process(c);
}

/* ---- session events ------------------------------------------------------ */

/* Every recipient (aliases expanded) is in a local domain: the direct way may take it. */
static bool
rcpts_all_local(const struct conf *conf, const struct queue_rcpt_list *l)
{
	for (size_t i = 0; i < l->len; i++) {
		const char *at = strrchr(l->rcpts[i], '@');

		if (at == NULL || !conf_is_local_domain(conf, at + 1, strlen(at + 1)))
			return false;
	}
	return true;
}

static void
begin_message(struct conn *c)
{
	const struct smtp_mail_params *p = smtp_session_mail_params(c->sess);
	struct queue_rcpt_list l = {0};
	struct queue_envelope env;

	/* Aliases expanded now: the envelope holds the final recipients. */
	for (size_t i = 0; i < smtp_session_rcpt_count(c->sess); i++)
		server_rcpt_expand(c->cfg, smtp_session_rcpt(c->sess, i), &l);
	env.sender = smtp_session_sender(c->sess);
	env.rcpts = (const char *const *)l.rcpts;
	env.orcpts = (const char *const *)l.orcpts;
	env.rcpts_len = l.len;
	env.helo = smtp_session_helo(c->sess);
	env.client_addr = c->addr;
	env.client_name = "unknown";
	env.protocol = smtp_session_protocol(c->sess);
	env.body_8bit = p->body == SMTP_BODY_8BITMIME;
	env.smtputf8 = p->smtputf8;
	env.expanded = true;
	c->msg = queue_msg_new(c->srv->queue, &env);
	c->spool_failed = false;
	if (rcpts_all_local(c->cfg->conf, &l))
		queue_msg_direct(c->msg, server_cfg_ref(c->cfg)); /* server_direct_release */
	log_info("%s: client=unknown[%s]", queue_msg_id(c->msg), c->addr);
	queue_rcpt_list_free(&l);
}

static void
take_body(struct conn *c)
{
	const char *data;
	size_t len;

	smtp_session_body_take(c->sess, &data, &len);
	if (len > 0 && c->msg != NULL)
		queue_msg_append(c->msg, data, len, append_done, c);
}

/* ---- STARTTLS ---------------------------------------------------------------- */

static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

static void
start_tls(struct conn *c)
{
	struct bufferevent *tls;

	flush_output(c); /* the 220 goes out in clear */
	/*
	 * Whatever the client sent after STARTTLS, before the handshake, is
	 * thrown away: it would otherwise be read as if it came over TLS
	 * (CVE-2011-0411, RFC 3207 6).
	 */
	evbuffer_drain(bufferevent_get_input(c->bev),
		       evbuffer_get_length(bufferevent_get_input(c->bev)));
	tls = tls_bev_starttls(c->cfg->tls, c->srv->base, c->bev);
	if (tls == NULL) {
		log_warn("STARTTLS from unknown[%s]: cannot start TLS", c->addr);
		c->closing = true;
		return;
	}
	c->bev = tls;
	c->plain = false;
	c->read_paused = false;
	c->handshaking = true;
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* ---- AUTH ------------------------------------------------------------------ */

struct auth_check {
	struct conn *c;
	char *stored;	/* owned: the users file's hash, NULL when no such user */
	char *decoy;	/* owned: a hash to check against instead (see auth_run), or NULL */
	char *password; /* owned, wiped */
	bool refused;	/* the address is over its limit: no check, and no failure counted */
	bool ok;
};

/*
 * With no hash to check (no such user, or an address over its limit) the
 * password is checked against a decoy, one of the users file's own hashes
 * (its scheme and rounds): the answer takes as long as for a user who
 * exists, so its timing does not tell which users do.
 */
static void
auth_run(void *arg)
{
	struct auth_check *a = arg;

	if (a->stored == NULL) {
		if (a->decoy != NULL)
			(void)auth_password_verify(a->decoy, a->password);
		a->ok = false;
		return;
	}
	a->ok = auth_password_verify(a->stored, a->password);
}

static struct ip_count *
ip_find(struct server *srv, const char *addr)
{
	for (struct ip_count *ic = srv->ips[ip_hash(addr)]; ic != NULL; ic = ic->next) {
		if (strcmp(ic->addr, addr) == 0)
			return ic;
	}
	return NULL;
}

static void
auth_answer(struct conn *c, bool ok)
{
	smtp_session_auth_done(c->sess, ok);
	if (smtp_session_state(c->sess) == SMTP_STATE_CLOSED)
		c->closing = true;
	conn_process(c);
}

static void
auth_delay_cb(evutil_socket_t fd, short what, void *arg)
{
	auth_answer(arg, false);
}

static void
auth_done(void *arg)
{
	struct auth_check *a = arg;
	struct conn *c = a->c;
	bool ok = a->ok;

	struct ip_count *ic = ip_find(c->srv, c->addr);
	bool refused = a->refused;

	/* A {PLAIN} entry's hash is the password itself: wiped as the one tried is. */
	util_wipe(a->password, strlen(a->password));
	free(a->password);
	if (a->stored != NULL)
		util_wipe(a->stored, strlen(a->stored));
	free(a->stored);
	if (a->decoy != NULL)
		util_wipe(a->decoy, strlen(a->decoy));
	free(a->decoy);
	free(a);
	c->authing = false;
	if (ic != NULL && ic->auth_pending > 0)
		ic->auth_pending--; /* a failure is counted below, before the answer */
	if (c->dead) {
		conn_free(c);
		return;
	}
	if (ok) {
		const char *user, *password;
		char esc[300];

		smtp_session_auth_take(c->sess, &user, &password);
		log_info("unknown[%s]: sasl_username=%s", c->addr,
			 util_log_escape(esc, sizeof(esc), user, strlen(user)));
		auth_answer(c, true);
		return;
	}
	{
		/* A growing pause slows password guessing; the answer comes after it. */
		struct timeval tv = {.tv_sec = 1, .tv_usec = 0};
		time_t now = time(NULL);

		if (ic != NULL) {
			if (now - ic->auth_last_failure > AUTH_FAIL_WINDOW_S)
				ic->auth_failures = 0;
			/* Refused unchecked: no password was tried, no failure to count. */
			if (!refused) {
				ic->auth_failures++;
				ic->auth_last_failure = now;
			}
			tv.tv_sec = ic->auth_failures < 5 ? (time_t)ic->auth_failures : 5;
		}
		/* As Postfix words it, for fail2ban; never the response itself. */
		log_warn("unknown[%s]: SASL %s authentication failed: %s", c->addr,
			 smtp_session_auth_mechanism(c->sess),
			 refused ? "too many failures from this address"
				 : "authentication failure");
		evtimer_add(c->auth_delay, &tv);
	}
}

static void start_auth(struct conn *c);

static void
auth_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	start_auth(arg);
}

static void
start_auth(struct conn *c)
{
	struct auth_check *a;
	struct ip_count *ic = ip_find(c->srv, c->addr);
	const char *user, *password, *stored, *decoy;
	char key[300];

	/*
	 * An address with too many recent failures fails without a check.  The
	 * checks under way count as failures to come: past the limit with them,
	 * an AUTH waits for them to end (a success frees its place) instead of
	 * starting, so guesses sent at once on many connections meet the same
	 * limit, and logins sent at once with the right password all succeed.
	 */
	if (ic != NULL) {
		size_t recent = time(NULL) - ic->auth_last_failure <= AUTH_FAIL_WINDOW_S
				    ? ic->auth_failures
				    : 0;
		if (recent < AUTH_FAIL_MAX_IP && recent + ic->auth_pending >= AUTH_FAIL_MAX_IP) {
			struct timeval tv = {.tv_sec = 0, .tv_usec = AUTH_WAIT_US};

			c->auth_waiting = true;
			evtimer_add(c->auth_retry, &tv);
			return;
		}
	}
	c->auth_waiting = false;
	a = xcalloc(1, sizeof(*a));
	smtp_session_auth_take(c->sess, &user, &password);
	snprintf(key, sizeof(key), "%s", user);
	for (char *p = key; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	stored = deliver_db_password(c->cfg->db, key);
	decoy = deliver_db_decoy_hash(c->cfg->db);
	a->c = c;
	a->stored = stored ? xstrdup(stored) : NULL;
	a->decoy = decoy ? xstrdup(decoy) : NULL;
	a->password = xstrdup(password);
	/* Over the limit already: refused without a check. */
	if (ic != NULL) {
		if (time(NULL) - ic->auth_last_failure <= AUTH_FAIL_WINDOW_S &&
		    ic->auth_failures >= AUTH_FAIL_MAX_IP) {
			if (a->stored != NULL)
				util_wipe(a->stored, strlen(a->stored));
			free(a->stored);
			a->stored = NULL;
			a->refused = true;
		}
		ic->auth_pending++;
	}
	c->authing = true;
	queue_work(c->srv->queue, auth_run, auth_done, a);
}

/* Acts on one session event.  Returns false when processing must pause. */
static bool
handle_event(struct conn *c, enum smtp_event ev)
{
	switch (ev) {
	case SMTP_EVENT_NONE:
		return true;
	case SMTP_EVENT_MESSAGE_BEGIN:
		begin_message(c);
		return true;
	case SMTP_EVENT_BODY:
		take_body(c);
		return queue_msg_pending(c->msg) < PENDING_HIGH;
	case SMTP_EVENT_MESSAGE_END:
		take_body(c);
		c->committing = true;
		queue_msg_commit(c->msg, commit_done, c);
		return false;
	case SMTP_EVENT_MESSAGE_ABORT:
		if (c->msg != NULL)
			queue_msg_abort(c->msg);
		c->msg = NULL;
		return true;
	case SMTP_EVENT_STARTTLS:
		start_tls(c);
		return false;
	case SMTP_EVENT_AUTH:
		start_auth(c);
		return false;
	case SMTP_EVENT_CLOSE:
		c->closing = true;
		return false;
	}
	return true;
}

/*
 * Input the session does not take (its replies unread, a body waiting for
 * the disk, a commit or a password check under way) is left in the socket
 * once INPUT_HIGH octets wait, so that the client waits instead of the
 * server buffering whatever it sends; reading resumes once the session has
 * taken them.  (Not libevent's read watermark: resuming here also has a TLS
 * session read what OpenSSL already holds, which libevent 2.1 does only once
 * the socket becomes readable again.)
 */
static void
input_flow(struct conn *c)
{
	bool full;

	if (c->dead || c->eof)
		return; /* after the end of input there is nothing more to read */
	full = evbuffer_get_length(bufferevent_get_input(c->bev)) >= INPUT_HIGH;
	if (full == c->read_paused)
		return;
	c->read_paused = full;
	if (full)
		bufferevent_disable(c->bev, EV_READ);
	else
		tls_bev_resume_reading(c->bev);
}

/* Feeds buffered input to the session until it waits, then writes its replies. */
static void
conn_process(struct conn *c)
{
	struct evbuffer *in, *out;

	if (c->dead)
		return;
	in = bufferevent_get_input(c->bev);
	out = bufferevent_get_output(c->bev);
	enum smtp_event ev = SMTP_EVENT_NONE;
	bool taken_all = false; /* the session took all the input it can */

	while (!c->closing && !c->committing && !c->authing &&
	       smtp_session_state(c->sess) != SMTP_STATE_TLS &&
	       smtp_session_state(c->sess) != SMTP_STATE_AUTH_WAIT) {
		size_t len = evbuffer_get_length(in);
		size_t n, used, out_len;
		enum smtp_state st;
		const char *data;

		/* After an event the session may have more to do even without input. */
		if (len == 0 && ev == SMTP_EVENT_NONE) {
			taken_all = true;
			break;
		}
		if (c->msg != NULL && queue_msg_pending(c->msg) >= PENDING_HIGH)
			break; /* resumed by append_done */
		if (evbuffer_get_length(out) + smtp_session_output(c->sess)->len > OUTPUT_HIGH)
			break; /* resumed by the write callback */
		n = len < READ_CHUNK ? len : READ_CHUNK;
		data = n > 0 ? (const char *)evbuffer_pullup(in, (ev_ssize_t)n) : "";
		st = smtp_session_state(c->sess);
		out_len = smtp_session_output(c->sess)->len;
		used = smtp_session_feed(c->sess, data, n, &ev);
		evbuffer_drain(in, used);
		/*
		 * Progress restarts smtp_timeout: octets of a message (RFC 5321
		 * 4.5.3.2.5's data block), or a command answered.  The octets of an
		 * overlong line being skipped are none: trickled, they held a session
		 * open for ever.
		 */
		if (used > 0 &&
		    (st == SMTP_STATE_DATA || st == SMTP_STATE_BDAT || st == SMTP_STATE_DISCARD ||
		     ev != SMTP_EVENT_NONE || smtp_session_output(c->sess)->len != out_len))
			arm_timer(c);
		flush_output(c);
		if (!handle_event(c, ev))
			break;
		if (used == 0 && ev == SMTP_EVENT_NONE) {
			taken_all = true;
			break; /* a partial line: wait for more */
		}
	}
	flush_output(c);
	input_flow(c);
	/* The client closed its side and everything it sent is answered (or can never be). */
	if (c->eof && (taken_all || smtp_session_state(c->sess) == SMTP_STATE_TLS))
		c->closing = true;
	if (c->closing && evbuffer_get_length(out) == 0)
		conn_close(c);
}

/* ---- libevent callbacks --------------------------------------------------- */

static void
read_cb(struct bufferevent *bev, void *arg)
{
	conn_process(arg);
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	/*
	 * Output written: close if asked, else resume reading paused by output.
	 * A TLS bufferevent calls this deferred, so more may have been queued
	 * since (a 221 after the replies it wrote): then the next call closes.
	 */
	if (c->closing) {
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			conn_close(c);
		return;
	}
	conn_process(c);
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (what & BEV_EVENT_CONNECTED) {
		/* The TLS handshake is done (STARTTLS or implicit TLS). */
		char desc[128];
		tls_bev_describe(c->bev, desc, sizeof(desc));
		log_info("%s TLS connection established from unknown[%s]: %s",
			 c->kind == LISTENER_SUBMISSIONS ? "implicit" : "STARTTLS", c->addr, desc);
		c->handshaking = false;
		if (smtp_session_state(c->sess) == SMTP_STATE_TLS)
			smtp_session_tls_started(c->sess);
		conn_process(c);
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
		/*
		 * The client closed its side (shutdown(SHUT_WR), "nc -N"): the
		 * commands it sent before still get their replies, a message it
		 * ended still its 250 (RFC 5321 4.1.1.10: no close before the reply
		 * to QUIT), and the connection closes once they are out.
		 */
		c->eof = true;
		conn_process(c);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		conn_close(c);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		/* The client does not read what we write. */
		log_info("timeout (write) from unknown[%s]", c->addr);
		conn_close(c);
	}
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	struct timeval grace = {.tv_sec = SHUTDOWN_WRITE_S, .tv_usec = 0};

	if (c->closing) {
		/*
		 * Its last reply did not get out in time (a client that reads
		 * nothing, or a TLS handshake never finished, before which no
		 * reply can go out at all): closed without it.
		 */
		conn_close(c);
		return;
	}
	if (c->committing || c->authing) {
		arm_timer(c); /* the commit or the password check answers first */
		return;
	}
	log_info("timeout after %s from unknown[%s]", smtp_state_name(smtp_session_state(c->sess)),
		 c->addr);
	smtp_session_timeout(c->sess);
	if (c->msg != NULL) {
		queue_msg_abort(c->msg);
		c->msg = NULL;
	}
	c->closing = true;
	flush_output(c);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_close(c);
	else
		evtimer_add(c->timer, &grace); /* then closed, written or not */
}

/* ---- accept and shutdown -------------------------------------------------- */

static void
addr_string(const struct sockaddr *sa, char *dst, size_t cap)
{
	const void *p;

	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		p = &s6->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			inet_ntop(AF_INET, (const char *)p + 12, dst, (socklen_t)cap);
			return;
		}
	} else {
		p = &((const struct sockaddr_in *)sa)->sin_addr;
	}
	if (inet_ntop(sa->sa_family, p, dst, (socklen_t)cap) == NULL)
		snprintf(dst, cap, "unknown");
}

void
server_conn_accept(struct server *srv, enum listener_kind kind, int fd, const struct sockaddr *sa,
		   int salen)
{
	struct conn *c = xcalloc(1, sizeof(*c));
	struct smtp_session_conf scfg;
	struct smtp_policy policy = {.ctx = c,
				     .check_rcpt = check_rcpt,
				     .sender_allowed = sender_allowed,
				     .refused = log_refusal};
	const struct conf *conf;
	struct timeval wtv;
	const char *refuse = NULL;

	c->srv = srv;
	c->cfg = server_cfg_ref(srv->cfg);
	conf = c->cfg->conf;
	memcpy(&c->sa, sa, (size_t)salen < sizeof(c->sa) ? (size_t)salen : sizeof(c->sa));
	addr_string(sa, c->addr, sizeof(c->addr));
	c->kind = kind; /* fd: non-blocking already (evconnlistener accepts with SOCK_NONBLOCK) */
	c->plain = kind != LISTENER_SUBMISSIONS;
	c->handshaking = kind == LISTENER_SUBMISSIONS;
	if (kind == LISTENER_SUBMISSIONS)
		/* (conf refuses implicit TLS without a certificate; never a NULL context here) */
		c->bev = c->cfg->tls ? tls_bev_accept(c->cfg->tls, srv->base, fd) : NULL;
	else
		c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		/* Unlikely (out of memory in OpenSSL): the client just sees the close. */
		log_warn("unknown[%s]: cannot set up the connection", c->addr);
		close(fd);
		server_cfg_unref(c->cfg);
		free(c);
		return;
	}
	c->timer = evtimer_new(srv->base, timer_cb, c);
	c->auth_delay = evtimer_new(srv->base, auth_delay_cb, c);
	c->auth_retry = evtimer_new(srv->base, auth_retry_cb, c);
	c->next = srv->conns;
	if (srv->conns != NULL)
		srv->conns->prev = c;
	srv->conns = c;
	srv->nconns++;

	memset(&scfg, 0, sizeof(scfg));
	scfg.hostname = conf->hostname;
	scfg.max_message_size = conf->max_message_size;
	scfg.max_recipients = conf->max_recipients;
	scfg.starttls_offered = c->cfg->tls != NULL && kind != LISTENER_SUBMISSIONS;
	scfg.auth_offered = conf->users_file != NULL;
	scfg.auth_required = kind != LISTENER_SMTP;
	c->sess = smtp_session_new(&scfg, &policy);
	smtp_session_set_tls(c->sess, kind == LISTENER_SUBMISSIONS);

	log_info("connect from unknown[%s]", c->addr);
	if (srv->stopping)
		refuse = "Service shutting down";
	else if (srv->nconns > conf->max_connections)
		refuse = "Error: too many connections";
	else if (ip_add(srv, c->addr, 1) > conf->max_connections_per_ip)
		refuse = "Error: too many connections from your address";
	c->counted = refuse == NULL || srv->nconns <= conf->max_connections;
	if (refuse != NULL) {
		/* The 421 replaces the greeting; logged as a refusal of CONNECT. */
		smtp_session_refuse(c->sess, srv->stopping ? "4.3.2" : "4.7.0", refuse);
		c->closing = true;
	}
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	wtv.tv_sec = conf->smtp_timeout_s;
	wtv.tv_usec = 0;
	bufferevent_set_timeouts(c->bev, NULL, &wtv);
	bufferevent_enable(c->bev, refuse ? EV_WRITE : EV_READ | EV_WRITE);
	flush_output(c);
	if (refuse == NULL) {
		arm_timer(c);
	} else if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0 ||
		   kind == LISTENER_SUBMISSIONS) {
		/*
		 * The 421 is out; or, on implicit TLS, it could go out only after
		 * a handshake the client may never finish: closed without it, so
		 * that refused connections hold no slot (one address stalling
		 * handshakes kept every other client out).
		 */
		conn_close(c);
	} else {
		struct timeval grace = {.tv_sec = SHUTDOWN_WRITE_S, .tv_usec = 0};

		evtimer_add(c->timer, &grace); /* timer_cb closes it, the 421 written or not */
	}
}

void
server_conn_shutdown_all(struct server *srv)
{
	struct conn *c = srv->conns;

	while (c != NULL) {
		struct conn *next = c->next;
		struct timeval grace = {.tv_sec = SHUTDOWN_WRITE_S, .tv_usec = 0};

		/* A client that does not read its 421 must not hold the stop up. */
		if (!c->dead)
			bufferevent_set_timeouts(c->bev, NULL, &grace);
		if (!c->dead && c->handshaking) {
			/* Its 421 could go out only after a handshake: closed now instead. */
			conn_close(c);
		} else if (!c->dead && !c->committing && !c->closing) {
			/* A message half received is dropped: only the 250 makes it ours. */
			if (c->msg != NULL) {
				queue_msg_abort(c->msg);
				c->msg = NULL;
			}
			smtp_session_close_421(c->sess, "4.3.2", "Service shutting down");
			c->closing = true;
			flush_output(c);
			if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
				conn_close(c);
		}
		c = next;
	}
}
