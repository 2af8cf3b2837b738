/*
 * server — the event loop glue: listeners, connections, limits, timeouts,
 * signals, and the wiring of session, queue and delivery.
 *
 * This is the only module that knows libevent.  It decides no protocol
 * (src/smtp/ does) and writes no files (src/queue/ and src/deliver/ do, on
 * the queue's threads).
 */
#ifndef PETREL_SERVER_H
#define PETREL_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct conf;
struct deliver_db;
struct queue;
struct queue_rcpt_list;
struct event_base;
struct tls_ctx;

/*
 * The configuration in force, shared by sessions and delivery threads and
 * replaced as a whole on SIGHUP.  Holders keep a reference: a session keeps
 * the configuration it started with.
 */
struct server_cfg {
	atomic_int refs;
	struct conf *conf;     /* owned */
	struct deliver_db *db; /* owned */
	struct tls_ctx *tls;   /* owned: the server TLS context, NULL without tls_cert */
};

struct server_cfg *server_cfg_ref(struct server_cfg *cfg);
void server_cfg_unref(struct server_cfg *cfg);

/* The running server (one per process). */
struct server;

/*
 * Runs `petrel serve`: binds the listeners, opens the queue, serves until
 * SIGTERM/SIGINT.  conf_path NULL means the embedded default (or
 * /etc/petrel/petrel.conf, decided by the caller).  Returns the exit status.
 */
int server_run(const char *conf_path);

/* Queue deliverer for local recipients (server_deliver.c); ctx is the struct server. */
struct queue_delivery;
void server_deliver(void *ctx, struct queue_delivery *d);
/* The direct way (queue_set_direct); msg_ctx is a reference to a struct server_cfg. */
struct queue_item;
void server_deliver_direct(void *const *msg_ctx, const struct queue_item *items, size_t n,
			   bool *delivered);
/* Drops the session's reference to msg_ctx (a struct server_cfg) taken for the direct way. */
void server_direct_release(void *msg_ctx);
/* A recipient's aliases expanded into l (at DATA and at pickup). */
void server_rcpt_expand(const struct server_cfg *cfg, const char *rcpt, struct queue_rcpt_list *l);
/* queue_expand_fn (arg: the server): the same for a message from incoming/. */
void server_pickup_expand(void *arg, const char *rcpt, struct queue_rcpt_list *l);
/* The configuration currently in force, with a reference the caller drops.  Any thread. */
struct server_cfg *server_current_cfg(struct server *srv);

#endif
