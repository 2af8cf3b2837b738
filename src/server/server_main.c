/*
 * server_main — `petrel serve`: configuration, listeners, signals, the
 * queue's wake-ups, and an orderly stop.
 */
#include "server/server_internal.h"

#include <errno.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "conf/conf.h"
#include "deliver/deliver.h"
#include "queue/queue.h"
#include "relay/relay.h"
#include "relay/relay_dsn.h"
#include "tls/tls.h"
#include "util/util_fs.h"
#include "util/util_log.h"
#include "util/util_mem.h"

#define SHUTDOWN_GRACE_S 30   /* longest wait for commits in flight at stop */
#define PICKUP_MS	 2000 /* how often spool/incoming/ is looked at */

struct server_cfg *
server_cfg_ref(struct server_cfg *cfg)
{
	atomic_fetch_add(&cfg->refs, 1);
	return cfg;
}

void
server_cfg_unref(struct server_cfg *cfg)
{
	if (cfg == NULL || atomic_fetch_sub(&cfg->refs, 1) != 1)
		return;
	deliver_db_free(cfg->db);
	conf_free(cfg->conf);
	tls_ctx_free(cfg->tls);
	free(cfg);
}

struct server_cfg *
server_current_cfg(struct server *srv)
{
	struct server_cfg *cfg;

	pthread_mutex_lock(&srv->cfg_lock);
	cfg = server_cfg_ref(srv->cfg);
	pthread_mutex_unlock(&srv->cfg_lock);
	return cfg;
}

/* The queue's bounce hook: the DSN names the host of the configuration in force now. */
static char *
server_bounce(void *ctx, const struct queue_item *item, const struct queue_rcpt_result *results,
	      const bool *failed_now, size_t *len)
{
	struct server_cfg *cfg = server_current_cfg(ctx);
	char *msg = relay_dsn_bounce(cfg->conf->hostname, item, results, failed_now, len);

	server_cfg_unref(cfg);
	return msg;
}

/* Loads the configuration and what it names; NULL (logged) when anything is wrong. */
static struct server_cfg *
load_cfg(const char *path, const struct server_cfg *running)
{
	struct server_cfg *cfg;
	struct conf *conf;
	struct deliver_db *db;
	char err[512];

	conf = path ? conf_load(path, err, sizeof(err)) : conf_default();
	if (conf == NULL) {
		log_err("%s", err);
		return NULL;
	}
	db = deliver_db_load(conf, err, sizeof(err));
	if (db == NULL) {
		log_err("%s", err);
		conf_free(conf);
		return NULL;
	}
	cfg = xcalloc(1, sizeof(*cfg));
	atomic_init(&cfg->refs, 1);
	cfg->conf = conf;
	cfg->db = db;
	if (conf->tls_cert != NULL) {
		/* Read again on every SIGHUP: a renewed certificate needs no restart. */
		cfg->tls = tls_server_ctx_new(conf->tls_cert, conf->tls_key, err, sizeof(err));
		if (cfg->tls == NULL && running != NULL && running->tls != NULL) {
			/*
			 * At a reload, after the privileges were dropped, a key readable by
			 * root only cannot be read again: the rest of the configuration
			 * still applies, with the certificate loaded before.
			 */
			log_warn("%s; keeping the certificate loaded before (restart to change it)",
				 err);
			cfg->tls = tls_ctx_share(running->tls);
		}
		if (cfg->tls == NULL) {
			log_err("%s", err);
			server_cfg_unref(cfg);
			return NULL;
		}
	}
	return cfg;
}

static const char *conf_path; /* for SIGHUP */

static void
accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct listener *li = arg;

	server_conn_accept(li->srv, li->kind, fd, sa, salen);
}

#define ACCEPT_PAUSE_MS 250 /* listeners rest this long after an accept failed */

static void
accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	if (srv->stopping)
		return;
	for (size_t i = 0; i < srv->listeners_len; i++)
		evconnlistener_enable(srv->listeners[i]->el);
}

/*
 * EMFILE, ENFILE, ENOBUFS: the pending connection stays in the backlog and
 * the listener stays readable, so trying again at once would spin (and log)
 * as fast as the loop turns.  Every listener rests ACCEPT_PAUSE_MS instead,
 * the sessions we have go on, and one line says so per pause.
 */
static void
accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct listener *li = arg;
	struct server *srv = li->srv;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};

	for (size_t i = 0; i < srv->listeners_len; i++)
		evconnlistener_disable(srv->listeners[i]->el);
	if (srv->ev_accept == NULL)
		srv->ev_accept = evtimer_new(srv->base, accept_resume_cb, srv);
	if (srv->ev_accept == NULL || evtimer_add(srv->ev_accept, &tv) != 0) {
		log_warn("accept: %s", evutil_socket_error_to_string(err));
		accept_resume_cb(-1, 0, srv);
		return;
	}
	log_warn("accept: %s; accepting again in %d ms", evutil_socket_error_to_string(err),
		 ACCEPT_PAUSE_MS);
}

static int
listen_on(struct server *srv, const struct conf_listen *l, enum listener_kind kind)
{
	struct listener *li;
	struct addrinfo hints, *res = NULL;
	char port[8];
	struct evconnlistener *el;
	bool v6 = strchr(l->host, ':') != NULL;
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%u", (unsigned)l->port);
	rc = getaddrinfo(l->host, port, &hints, &res);
	if (rc != 0) {
		log_err("listen %s:%s: %s", l->host, port, gai_strerror(rc));
		return -1;
	}
	li = xcalloc(1, sizeof(*li));
	li->srv = srv;
	li->kind = kind;
	/* [::]:25 is IPv6 only, so that 0.0.0.0:25 can be listed beside it. */
	el = evconnlistener_new_bind(srv->base, accept_cb, li,
				     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
					 LEV_OPT_CLOSE_ON_EXEC |
					 (res->ai_family == AF_INET6 ? LEV_OPT_BIND_IPV6ONLY : 0),
				     1024, res->ai_addr, (int)res->ai_addrlen);
	freeaddrinfo(res);
	if (el == NULL) {
		log_err("listen %s%s%s:%s: %s", v6 ? "[" : "", l->host, v6 ? "]" : "", port,
			strerror(errno));
		free(li);
		return -1;
	}
	li->el = el;
	evconnlistener_set_error_cb(el, accept_error_cb);
	srv->listeners = xrealloc(srv->listeners, (srv->listeners_len + 1) * sizeof(li));
	srv->listeners[srv->listeners_len++] = li;
	log_info("listening on %s%s%s:%s", v6 ? "[" : "", l->host, v6 ? "]" : "", port);
	return 0;
}

static void
close_listeners(struct server *srv)
{
	for (size_t i = 0; i < srv->listeners_len; i++) {
		evconnlistener_free(srv->listeners[i]->el);
		free(srv->listeners[i]);
	}
	free(srv->listeners);
	srv->listeners = NULL;
	srv->listeners_len = 0;
	if (srv->ev_accept != NULL) {
		event_free(srv->ev_accept);
		srv->ev_accept = NULL;
	}
}

void
server_conn_gone(struct server *srv)
{
	if (srv->stopping && srv->nconns == 0)
		event_base_loopexit(srv->base, NULL);
}

static void
stop_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *srv = arg;
	struct timeval grace = {.tv_sec = SHUTDOWN_GRACE_S, .tv_usec = 0};

	if (srv->stopping)
		return;
	log_info("signal %d: stopping", (int)sig);
	srv->stopping = true;
	close_listeners(srv);
	server_conn_shutdown_all(srv);
	if (srv->nconns == 0)
		event_base_loopexit(srv->base, NULL);
	else
		event_base_loopexit(srv->base, &grace);
}

static void
hup_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *srv = arg;
	struct server_cfg *cfg, *old;

	log_info("SIGHUP: reloading %s", conf_path ? conf_path : "the embedded default");
	cfg = load_cfg(conf_path, srv->cfg);
	if (cfg == NULL) {
		log_warn("reload failed; keeping the running configuration");
		return;
	}
	pthread_mutex_lock(&srv->cfg_lock);
	old = srv->cfg;
	srv->cfg = cfg;
	pthread_mutex_unlock(&srv->cfg_lock);
	/* Sessions that started before keep their own reference. */
	server_cfg_unref(old);
	queue_set_retry_limits(srv->queue, cfg->conf->retry_min_s, cfg->conf->retry_max_s,
			       cfg->conf->queue_lifetime_s);
	relay_set_timeout(srv->relay, cfg->conf->smtp_timeout_s);
	log_info("configuration reloaded (listeners, user, spool_dir and dns_resolver change "
		 "only on restart)");
	queue_flush_all(srv->queue);
}

static void
queue_timer_arm(struct server *srv)
{
	long ms = queue_next_due_ms(srv->queue);
	struct timeval tv;

	/* Wake at least every PICKUP_MS to look into spool/incoming/. */
	if (ms < 0 || ms > PICKUP_MS)
		ms = PICKUP_MS;
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000 + 1000;
	evtimer_add(srv->ev_timer, &tv);
}

static void
queue_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	queue_dispatch(srv->queue);
	if (what & EV_TIMEOUT)
		queue_pickup(srv->queue);
	queue_timer_arm(srv);
}

/* SIGUSR1 (petrel queue flush, petrel sendmail): look into incoming/, retry everything now. */
static void
usr1_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *srv = arg;

	queue_pickup(srv->queue);
	queue_flush_all(srv->queue);
}

static void
pid_file(const char *spool_dir, bool create)
{
	char path[4096], pid[32];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", spool_dir, QUEUE_PID_FILE);
	if (!create) {
		unlink(path);
		return;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		log_warn("%s: %s", path, strerror(errno));
		return;
	}
	snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	if (write(fd, pid, strlen(pid)) < 0)
		log_warn("%s: %s", path, strerror(errno));
	close(fd);
}

/* Thousands of sessions need thousands of descriptors: take what the hard limit allows. */
static void
raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			log_warn("setrlimit(RLIMIT_NOFILE): %s", strerror(errno));
	}
}

static void
relay_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	relay_process(srv->relay);
}

int
server_run(const char *path)
{
	struct server srv;
	struct queue_limits limits;
	char err[512];
	const struct conf *conf;
	int status = 0;

	memset(&srv, 0, sizeof(srv));
	conf_path = path;
	signal(SIGPIPE, SIG_IGN);
	srv.cfg = load_cfg(path, NULL);
	if (srv.cfg == NULL)
		return 1;
	conf = srv.cfg->conf;
	if (util_mkdirs(conf->mail_root, 0755) != 0) {
		log_err("mail_root %s: %s", conf->mail_root, strerror(errno));
		goto fail;
	}
	pthread_mutex_init(&srv.cfg_lock, NULL);
	{
		/*
		 * epoll with a change list: a write interest added and dropped within
		 * one turn of the loop (each reply) costs no epoll_ctl.  Its rule: a
		 * descriptor is never closed while a change to it may be pending (the
		 * change would fail on the closed number; a duplicate of it would stay
		 * watched).  STARTTLS hands the same descriptor on (tls_bev_starttls).
		 */
		struct event_config *ec = event_config_new();

		if (ec == NULL)
			log_fatal("cannot create the event loop");
		event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
		srv.base = event_base_new_with_config(ec);
		event_config_free(ec);
	}
	if (srv.base == NULL)
		log_fatal("cannot create the event loop");
	for (size_t i = 0; i < conf->listen_smtp_len; i++) {
		if (listen_on(&srv, &conf->listen_smtp[i], LISTENER_SMTP) != 0)
			goto fail;
	}
	for (size_t i = 0; i < conf->listen_submission_len; i++) {
		if (listen_on(&srv, &conf->listen_submission[i], LISTENER_SUBMISSION) != 0)
			goto fail;
	}
	for (size_t i = 0; i < conf->listen_submissions_len; i++) {
		if (listen_on(&srv, &conf->listen_submissions[i], LISTENER_SUBMISSIONS) != 0)
			goto fail;
	}
	raise_fd_limit();
	if (server_privs_drop(conf) != 0)
		goto fail;
	memset(&limits, 0, sizeof(limits));
	limits.retry_min_s = conf->retry_min_s;
	limits.retry_max_s = conf->retry_max_s;
	limits.lifetime_s = conf->queue_lifetime_s;
	srv.queue = queue_open(conf->spool_dir, &limits, err, sizeof(err));
	if (srv.queue == NULL) {
		log_err("queue: %s", err);
		goto fail;
	}
	/* smtp_timeout bounds each step of an outgoing conversation as of an incoming one. */
	srv.relay =
	    relay_new(conf->dns_resolver, &(struct relay_limits){.timeout_s = conf->smtp_timeout_s},
		      err, sizeof(err));
	if (srv.relay == NULL) {
		log_err("relay: %s", err);
		goto fail;
	}
	queue_set_deliverer(srv.queue, server_deliver, &srv);
	queue_set_direct(srv.queue, server_deliver_direct, server_direct_release);
	queue_set_pickup_expand(srv.queue, server_pickup_expand, &srv);
	queue_pickup(srv.queue); /* what petrel sendmail left while the server was down */
	queue_set_bounce(srv.queue, server_bounce, &srv);

	srv.ev_term = evsignal_new(srv.base, SIGTERM, stop_cb, &srv);
	srv.ev_int = evsignal_new(srv.base, SIGINT, stop_cb, &srv);
	srv.ev_hup = evsignal_new(srv.base, SIGHUP, hup_cb, &srv);
	srv.ev_usr1 = evsignal_new(srv.base, SIGUSR1, usr1_cb, &srv);
	srv.ev_queue =
	    event_new(srv.base, queue_notify_fd(srv.queue), EV_READ | EV_PERSIST, queue_cb, &srv);
	srv.ev_timer = evtimer_new(srv.base, queue_cb, &srv);
	srv.ev_relay_dns =
	    event_new(srv.base, relay_fd_dns(srv.relay), EV_READ | EV_PERSIST, relay_cb, &srv);
	srv.ev_relay_done =
	    event_new(srv.base, relay_fd_done(srv.relay), EV_READ | EV_PERSIST, relay_cb, &srv);
	event_add(srv.ev_relay_dns, NULL);
	event_add(srv.ev_relay_done, NULL);
	evsignal_add(srv.ev_term, NULL);
	evsignal_add(srv.ev_int, NULL);
	evsignal_add(srv.ev_hup, NULL);
	evsignal_add(srv.ev_usr1, NULL);
	pid_file(conf->spool_dir, true);
	event_add(srv.ev_queue, NULL);
	queue_dispatch(srv.queue); /* recovered messages start now */
	queue_timer_arm(&srv);
	log_info("petrel started: hostname=%s, spool=%s, mail_root=%s", conf->hostname,
		 conf->spool_dir, conf->mail_root);

	event_base_dispatch(srv.base);
	/* Stopping: a second SIGTERM must not kill what is being finished. */
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);

	if (srv.nconns > 0) {
		log_warn("stopping with %zu session(s) still open", srv.nconns);
		status = 0;
	}
	/* Relay sessions end first: their results are recorded by the queue. */
	relay_free(srv.relay);
	srv.relay = NULL;
	queue_close(srv.queue);
	close_listeners(&srv);
	event_free(srv.ev_relay_dns);
	event_free(srv.ev_relay_done);
	event_free(srv.ev_term);
	event_free(srv.ev_int);
	event_free(srv.ev_hup);
	event_free(srv.ev_usr1);
	pid_file(srv.cfg->conf->spool_dir, false);
	event_free(srv.ev_queue);
	event_free(srv.ev_timer);
	event_base_free(srv.base);
	server_cfg_unref(srv.cfg);
	for (size_t i = 0; i < IP_BUCKETS; i++) {
		while (srv.ips[i] != NULL) {
			struct ip_count *next = srv.ips[i]->next;
			free(srv.ips[i]);
			srv.ips[i] = next;
		}
	}
	pthread_mutex_destroy(&srv.cfg_lock);
	log_info("petrel stopped");
	return status;

fail:
	/* Startup failed: undo what was set up (the sanitizers check for leaks). */
	relay_free(srv.relay);
	queue_close(srv.queue);
	close_listeners(&srv);
	if (srv.base != NULL)
		event_base_free(srv.base);
	server_cfg_unref(srv.cfg);
	return 1;
}
