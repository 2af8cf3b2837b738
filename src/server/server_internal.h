/*
 * server_internal — what the files of server/ share among themselves.
 */
#ifndef PETREL_SERVER_INTERNAL_H
#define PETREL_SERVER_INTERNAL_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <time.h>

#include "server/server.h"

struct conf;
struct conn;
struct evconnlistener;

struct ip_count {
	struct ip_count *next;
	char addr[INET6_ADDRSTRLEN];
	size_t count;	      /* open sessions */
	size_t auth_failures; /* failed AUTHs, forgotten after AUTH_FAIL_WINDOW_S */
	size_t auth_pending;  /* password checks under way (each may be one more failure) */
	time_t auth_last_failure;
};

enum listener_kind {
	LISTENER_SMTP,	      /* MX: port 25 style */
	LISTENER_SUBMISSION,  /* STARTTLS, AUTH required (RFC 6409) */
	LISTENER_SUBMISSIONS, /* implicit TLS, AUTH required (RFC 8314) */
};

struct listener {
	struct server *srv;
	enum listener_kind kind;
	struct evconnlistener *el;
};

#define IP_BUCKETS 4096

struct server {
	struct event_base *base;
	pthread_mutex_t cfg_lock; /* guards cfg for the delivery threads */
	struct server_cfg *cfg;
	struct queue *queue;
	struct relay *relay;
	struct listener **listeners;
	size_t listeners_len;
	struct event *ev_term, *ev_int, *ev_hup, *ev_usr1, *ev_queue, *ev_timer;
	struct event *ev_relay_dns, *ev_relay_done;
	struct event *ev_accept; /* listeners paused after a failed accept resume (or NULL) */
	struct conn *conns;	 /* every open connection, for shutdown */
	size_t nconns;
	struct ip_count *ips[IP_BUCKETS];
	size_t ip_sweep_next; /* the bucket ip_add() frees idle records of next */
	bool stopping;
};

/* server_conn.c */
void server_conn_accept(struct server *srv, enum listener_kind kind, int fd,
			const struct sockaddr *sa, int salen);
/* Ends every session (421), waits for commits in flight; the loop exits when none are left. */
void server_conn_shutdown_all(struct server *srv);

/* server_main.c: called when a connection goes away, so shutdown can finish. */
void server_conn_gone(struct server *srv);

/*
 * server_privs.c: with `user` set and started as root (a no-op otherwise),
 * hands the spool and the Maildirs' directories to that user (what a run as
 * root left there too), then becomes it for good.  0, or -1 (logged): the
 * start must stop.
 */
int server_privs_drop(const struct conf *conf);

/* server_reject.c: the refusals of one session, logged and not. */
struct smtp_refusal;
struct server_reject_count {
	size_t mail;	 /* refusals of mail logged (SMTP_REFUSAL_MAIL) */
	size_t protocol; /* protocol errors logged (SMTP_REFUSAL_PROTOCOL) */
	size_t unlogged; /* refusals left out by the caps */
};
/*
 * Logs "ID: reject: CMD from unknown[client]: reply; from=<..> to=<..>
 * proto=.. helo=<..>" (id NULL: "NOQUEUE"), the client's text escaped,
 * unless the session's cap for its kind is reached: then it only counts it.
 */
void server_reject_log(struct server_reject_count *n, const char *id, const char *client,
		       const char *proto, const struct smtp_refusal *r);
/* At the disconnect: how many refusals the caps left out, if any. */
void server_reject_log_end(const struct server_reject_count *n, const char *client);

#endif
