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

#include "server/server.h"

struct conn;
struct evconnlistener;

struct ip_count {
	struct ip_count *next;
	char addr[INET6_ADDRSTRLEN];
	size_t count;
};

#define IP_BUCKETS 4096

struct server {
	struct event_base *base;
	pthread_mutex_t cfg_lock; /* guards cfg for the delivery threads */
	struct server_cfg *cfg;
	struct queue *queue;
	struct relay *relay;
	char *bounce_hostname; /* the reporting MTA's name in bounces (fixed at start) */
	struct evconnlistener **listeners;
	size_t listeners_len;
	struct event *ev_term, *ev_int, *ev_hup, *ev_usr1, *ev_queue, *ev_timer;
	struct event *ev_relay_dns, *ev_relay_done;
	struct conn *conns; /* every open connection, for shutdown */
	size_t nconns;
	struct ip_count *ips[IP_BUCKETS];
	bool stopping;
};

/* server_conn.c */
void server_conn_accept(struct server *srv, int fd, const struct sockaddr *sa, int salen);
/* Ends every session (421), waits for commits in flight; the loop exits when none are left. */
void server_conn_shutdown_all(struct server *srv);

/* server_main.c: called when a connection goes away, so shutdown can finish. */
void server_conn_gone(struct server *srv);

#endif
