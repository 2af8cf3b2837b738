/*
 * relay_session — one SMTP conversation on a relay thread: connect (or take
 * a cached connection), drive the pure client (relay_client) with blocking
 * I/O bounded by timeouts, stream the message dot-stuffed, and turn the
 * client's per-recipient results into queue results.
 *
 * Order of targets: the resolver's (MX preference, then addresses).  A
 * target that cannot be reached, fails temporarily, or answers 4xx for some
 * recipients passes those recipients on to the next one (RFC 5321 5.1); a
 * cached connection that turns out dead is replaced by a new one.
 */
#include "relay/relay_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "relay/relay_client.h"
#include "smtp/smtp_trace.h"
#include "tls/tls.h"
#include "util/util_log.h"
#include "util/util_mem.h"
#include "util/util_time.h"

#define IO_CHUNK  (64 * 1024)
#define CACHE_MAX 64

struct relay_conn {
	int fd;
	struct tls_conn *tls;
	struct relay_client *client;
	char key[INET6_ADDRSTRLEN + 8]; /* "addr:port", the cache key */
	char name[300];			/* "host[addr]:port" for logs and DSNs */
	char host[256];			/* the MX host name, for SNI */
	char in[IO_CHUNK];
	size_t in_len;
	bool tls_failed; /* the server offered STARTTLS and the handshake failed */
	/* under relay->active_lock: */
	uint64_t deadline_ms; /* util_now_ms() past which the watchdog ends it; 0: none */
	bool timed_out;	      /* the watchdog ended it */
};

/* ---- sockets ------------------------------------------------------------ */

static void
active_add(struct relay *r, struct relay_conn *c)
{
	pthread_mutex_lock(&r->active_lock);
	if (r->active_len == r->active_cap) {
		r->active_cap = r->active_cap ? r->active_cap * 2 : 16;
		r->active = xrealloc(r->active, r->active_cap * sizeof(*r->active));
	}
	r->active[r->active_len++] = c;
	if (r->stopping)
		shutdown(c->fd, SHUT_RDWR);
	pthread_mutex_unlock(&r->active_lock);
}

static void
active_del(struct relay *r, struct relay_conn *c)
{
	pthread_mutex_lock(&r->active_lock);
	for (size_t i = 0; i < r->active_len; i++) {
		if (r->active[i] == c) {
			r->active[i] = r->active[--r->active_len];
			break;
		}
	}
	pthread_mutex_unlock(&r->active_lock);
}

void
relay_session_stop_all(struct relay *r)
{
	pthread_mutex_lock(&r->active_lock);
	r->stopping = true;
	for (size_t i = 0; i < r->active_len; i++)
		shutdown(r->active[i]->fd, SHUT_RDWR);
	pthread_mutex_unlock(&r->active_lock);
}

/*
 * Deadlines.  SO_RCVTIMEO bounds one read, not one reply: a server that
 * sends a byte now and then (or TLS records a byte at a time, read inside
 * OpenSSL) would hold a relay thread without end.  So each wait for a reply,
 * each write of the message and each TLS handshake gets a deadline
 * (RFC 5321 4.5.3.2), and a watchdog thread shuts down the socket of a
 * conversation past it: the blocked read or write returns at once.
 */
static void
arm(struct relay *r, struct relay_conn *c, unsigned timeout_s)
{
	uint64_t deadline = timeout_s ? util_now_ms() + (uint64_t)timeout_s * 1000 : 0;

	pthread_mutex_lock(&r->active_lock);
	c->deadline_ms = deadline;
	pthread_mutex_unlock(&r->active_lock);
}

static bool
timed_out(struct relay *r, struct relay_conn *c)
{
	bool t;

	pthread_mutex_lock(&r->active_lock);
	t = c->timed_out;
	pthread_mutex_unlock(&r->active_lock);
	return t;
}

static void *
watchdog_main(void *arg)
{
	struct relay *r = arg;
	struct timespec wake;

	pthread_mutex_lock(&r->active_lock);
	while (!r->watchdog_stop) {
		uint64_t now = util_now_ms();

		for (size_t i = 0; i < r->active_len; i++) {
			struct relay_conn *c = r->active[i];
			if (c->deadline_ms != 0 && now >= c->deadline_ms && !c->timed_out) {
				c->timed_out = true;
				shutdown(c->fd, SHUT_RDWR);
			}
		}
		clock_gettime(CLOCK_MONOTONIC, &wake);
		wake.tv_nsec += 250 * 1000 * 1000;
		if (wake.tv_nsec >= 1000 * 1000 * 1000) {
			wake.tv_sec++;
			wake.tv_nsec -= 1000 * 1000 * 1000;
		}
		pthread_cond_timedwait(&r->watchdog_wake, &r->active_lock, &wake);
	}
	pthread_mutex_unlock(&r->active_lock);
	return NULL;
}

void
relay_watchdog_start(struct relay *r)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&r->watchdog_wake, &attr);
	pthread_condattr_destroy(&attr);
	if (pthread_create(&r->watchdog, NULL, watchdog_main, r) != 0) {
		log_err("relay: cannot start the watchdog thread");
		abort();
	}
}

void
relay_watchdog_stop(struct relay *r)
{
	pthread_mutex_lock(&r->active_lock);
	r->watchdog_stop = true;
	pthread_cond_signal(&r->watchdog_wake);
	pthread_mutex_unlock(&r->active_lock);
	pthread_join(r->watchdog, NULL);
	pthread_cond_destroy(&r->watchdog_wake);
}

static void
conn_close(struct relay *r, struct relay_conn *c)
{
	if (c == NULL)
		return;
	tls_conn_free(c->tls);
	active_del(r, c);
	close(c->fd);
	relay_client_free(c->client);
	free(c);
}

/* Connects within timeout_s; -1 with err filled. */
static int
connect_to(const struct relay_target *t, unsigned timeout_s, char *err, size_t err_cap)
{
	int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	struct pollfd pfd;
	struct timeval tv = {.tv_sec = timeout_s, .tv_usec = 0};
	int soerr = 0, one = 1;
	socklen_t len = sizeof(soerr);

	if (fd < 0) {
		snprintf(err, err_cap, "socket: %s", strerror(errno));
		return -1;
	}
	if (connect(fd, (const struct sockaddr *)&t->addr, t->addr_len) != 0 &&
	    errno != EINPROGRESS) {
		snprintf(err, err_cap, "connect: %s", strerror(errno));
		close(fd);
		return -1;
	}
	pfd.fd = fd;
	pfd.events = POLLOUT;
	if (poll(&pfd, 1, (int)timeout_s * 1000) != 1) {
		snprintf(err, err_cap, "connect: timed out");
		close(fd);
		return -1;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
		snprintf(err, err_cap, "connect: %s", strerror(soerr ? soerr : errno));
		close(fd);
		return -1;
	}
	/* From here on blocking I/O, each read and write bounded by the timeout. */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static int
write_all(struct relay_conn *c, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = c->tls ? tls_write(c->tls, p, len) : write(c->fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static ssize_t
read_some(struct relay_conn *c)
{
	ssize_t n;

	do {
		n = c->tls ? tls_read(c->tls, c->in + c->in_len, sizeof(c->in) - c->in_len)
			   : read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
	} while (n < 0 && errno == EINTR);
	if (n > 0)
		c->in_len += (size_t)n;
	return n;
}

static int
flush_output(struct relay_conn *c)
{
	struct buf *out = relay_client_output(c->client);
	int rc = write_all(c, out->data, out->len);

	buf_reset(out);
	return rc;
}

/* ---- the message ------------------------------------------------------------ */

/*
 * Writes our fields (prepended_fields), then the queued message with dot-stuffing
 * (RFC 5321 4.5.2) and ".\r\n".  The spool holds CRLF lines (bare CR and LF
 * were refused on the way in), so only leading dots need care.
 */
static int
send_body(struct relay_conn *c, const struct relay_job *j, const char *fields)
{
	const struct queue_item *it = j->item;
	char *in = xmalloc(IO_CHUNK);
	char *out = xmalloc(2 * IO_CHUNK + 8);
	uint64_t off = 0;
	bool line_start = true;
	char last = '\n';
	int rc = -1;

	if (write_all(c, fields, strlen(fields)) != 0)
		goto out;
	while (off < it->body_len) {
		size_t want =
		    it->body_len - off < IO_CHUNK ? (size_t)(it->body_len - off) : IO_CHUNK;
		ssize_t n = queue_item_read(it, in, want, off);
		size_t o = 0;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			goto out;
		for (ssize_t i = 0; i < n; i++) {
			if (line_start && in[i] == '.')
				out[o++] = '.';
			out[o++] = in[i];
			line_start = in[i] == '\n';
		}
		last = in[n - 1];
		arm(j->relay, c, j->timeout_s); /* each write: progress, not the whole (4.5.3.2) */
		if (write_all(c, out, o) != 0)
			goto out;
		off += (uint64_t)n;
	}
	if (last != '\n' && write_all(c, "\r\n", 2) != 0)
		goto out;
	rc = write_all(c, ".\r\n", 3);
out:
	free(in);
	free(out);
	return rc;
}

/* ---- driving the client ----------------------------------------------------- */

/* Why the connection failed: the watchdog's timeout, else what the socket said. */
static const char *
lost_why(struct relay *r, struct relay_conn *c, const char *otherwise)
{
	return timed_out(r, c) ? "timed out" : otherwise;
}

/*
 * Runs the client until it is idle (0) or the connection is over (-1, the
 * client knows why).  act is the action to begin with.  Every action that
 * sends something starts a new wait for a reply, with its own deadline.
 */
static int
drive(struct relay *r, struct relay_conn *c, const struct relay_job *j, const char *fields,
      enum relay_client_action act)
{
	char err[256];

	for (;;) {
		switch (act) {
		case RELAY_ACT_IDLE:
			arm(r, c, 0);
			return 0;
		case RELAY_ACT_CLOSE:
			flush_output(c);
			return -1;
		case RELAY_ACT_SEND:
			arm(r, c, j->timeout_s);
			if (flush_output(c) != 0) {
				relay_client_abort(c->client, lost_why(r, c, strerror(errno)));
				return -1;
			}
			act = RELAY_ACT_NONE;
			continue;
		case RELAY_ACT_BODY:
			/*
			 * Nothing may follow the 354 before the message's end (RFC 2920
			 * 3.1): bytes already here would be read as the reply to it.
			 */
			if (c->in_len > 0) {
				relay_client_abort(c->client, "server sent data after its 354");
				return -1;
			}
			if (flush_output(c) != 0 || send_body(c, j, fields) != 0) {
				relay_client_abort(
				    c->client,
				    lost_why(r, c, "write failed while sending the message"));
				return -1;
			}
			arm(r, c, j->timeout_s);
			relay_client_body_sent(c->client);
			act = RELAY_ACT_NONE;
			continue;
		case RELAY_ACT_STARTTLS:
			/*
			 * Bytes after the 220 came before the handshake, in clear:
			 * never to be taken as replies over TLS (RFC 3207 6).
			 */
			if (c->in_len > 0) {
				relay_client_abort(c->client,
						   "server sent data after its 220 to STARTTLS");
				return -1;
			}
			flush_output(c);
			arm(r, c, j->timeout_s);
			c->tls = tls_client_connect(r->tls, c->fd, c->host, err, sizeof(err));
			if (c->tls == NULL) {
				log_info("%s: TLS with %s failed: %s", j->item->id, c->name,
					 lost_why(r, c, err));
				c->tls_failed = true;
			}
			act = relay_client_tls_done(c->client, c->tls != NULL);
			continue;
		case RELAY_ACT_NONE:
			break;
		}
		/* Feed what is buffered; read more only when the client needs it. */
		if (c->in_len > 0) {
			size_t used = relay_client_feed(c->client, c->in, c->in_len, &act);
			memmove(c->in, c->in + used, c->in_len - used);
			c->in_len -= used;
			if (act != RELAY_ACT_NONE || used > 0)
				continue;
		}
		if (c->in_len == sizeof(c->in)) {
			relay_client_abort(c->client, "reply too long");
			return -1;
		}
		ssize_t n = read_some(c);
		if (n <= 0) {
			relay_client_abort(
			    c->client,
			    lost_why(r, c,
				     n == 0 ? "connection closed by server"
					    : (errno == EAGAIN ? "timed out" : strerror(errno))));
			return -1;
		}
	}
}

/* ---- the connection cache ---------------------------------------------------- */

static struct relay_conn *
cache_take(struct relay *r, const char *key)
{
	struct relay_cache_entry **pp, *e;
	struct relay_conn *c = NULL;
	time_t now = time(NULL);

	pthread_mutex_lock(&r->cache_lock);
	for (pp = &r->cache; (e = *pp) != NULL;) {
		if (now - e->idle_since > (time_t)r->limits.conn_idle_s) {
			/* Too old: the server may have closed it; drop it. */
			*pp = e->next;
			r->cache_len--;
			pthread_mutex_unlock(&r->cache_lock);
			conn_close(r, e->conn);
			free(e);
			pthread_mutex_lock(&r->cache_lock);
			pp = &r->cache;
			continue;
		}
		if (c == NULL && strcmp(e->conn->key, key) == 0) {
			c = e->conn;
			*pp = e->next;
			r->cache_len--;
			free(e);
			continue;
		}
		pp = &e->next;
	}
	pthread_mutex_unlock(&r->cache_lock);
	return c;
}

static void
cache_put(struct relay *r, struct relay_conn *c)
{
	struct relay_cache_entry *e;

	pthread_mutex_lock(&r->cache_lock);
	if (r->cache_len >= CACHE_MAX || r->stopping) {
		pthread_mutex_unlock(&r->cache_lock);
		relay_client_quit(c->client);
		flush_output(c);
		conn_close(r, c);
		return;
	}
	e = xcalloc(1, sizeof(*e));
	e->conn = c;
	e->idle_since = time(NULL);
	e->next = r->cache;
	r->cache = e;
	r->cache_len++;
	pthread_mutex_unlock(&r->cache_lock);
}

void
relay_session_cache_clear(struct relay *r)
{
	while (r->cache != NULL) {
		struct relay_cache_entry *e = r->cache;
		r->cache = e->next;
		relay_client_quit(e->conn->client);
		flush_output(e->conn);
		conn_close(r, e->conn);
		free(e);
	}
	r->cache_len = 0;
}

/* ---- one session ----------------------------------------------------------------- */

static struct relay_conn *
open_conn(struct relay *r, const struct relay_job *j, const struct relay_target *t, const char *key,
	  bool tls, char *err, size_t err_cap)
{
	struct relay_client_conf cfg = {.helo_name = j->hostname, .tls_wanted = tls};
	struct relay_conn *c;
	int fd = connect_to(t, j->timeout_s, err, err_cap);

	if (fd < 0)
		return NULL;
	c = xcalloc(1, sizeof(*c));
	c->fd = fd;
	arm(r, c, j->timeout_s); /* for the greeting */
	active_add(r, c);
	c->client = relay_client_new(&cfg);
	util_strlcpy(c->key, key, sizeof(c->key));
	util_strlcpy(c->host, t->host, sizeof(c->host));
	return c;
}

/* Our Received: field for the relayed copy (RFC 5321 4.4). */
static void
received_field(const struct relay_job *j, char *dst, size_t cap)
{
	const struct queue_item *it = j->item;
	char date[64];

	util_rfc5322_date(it->arrival, date, sizeof(date));
	if (j->n == 1)
		snprintf(dst, cap,
			 "Received: from %.200s (%.200s [%s])\r\n\tby %s (petrel) with %s id %s\r\n"
			 "\tfor <%.300s>; %s\r\n",
			 it->helo[0] ? it->helo : "localhost", it->client_name, it->client_addr,
			 j->hostname, it->protocol, it->id, it->rcpts[j->rcpts[0]], date);
	else
		snprintf(
		    dst, cap,
		    "Received: from %.200s (%.200s [%s])\r\n\tby %s (petrel) with %s id %s;\r\n"
		    "\t%s\r\n",
		    it->helo[0] ? it->helo : "localhost", it->client_name, it->client_addr,
		    j->hostname, it->protocol, it->id, date);
}

/*
 * What goes before the relayed copy: our Received: field, then, for
 * recipients an alias forwarded the message to, a Delivered-To: field naming
 * the alias (as Postfix's local(8) writes on the mail it forwards): where
 * the message comes back to that alias, the delivery sees the loop.
 */
static void
prepended_fields(const struct relay_job *j, char *dst, size_t cap)
{
	size_t len;
	int n;

	received_field(j, dst, cap);
	len = strlen(dst);
	if (j->delivered_to == NULL)
		return;
	n = snprintf(dst + len, cap - len, "Delivered-To: %s\r\n", j->delivered_to);
	if (n < 0 || (size_t)n >= cap - len)
		dst[len] = '\0'; /* never half a field */
}

/*
 * Whether relaying the message would go round a loop (why: the reason): it
 * went through more hops than a message that is not looping makes, or the
 * alias the recipients were forwarded for is named by a Delivered-To: field
 * already (it was forwarded for that alias before, and has come back).
 */
static bool
loops(const struct relay_job *j, char *why, size_t why_cap)
{
	const struct queue_item *it = j->item;
	char *h = xmalloc(SMTP_TRACE_PEEK);
	size_t len = it->body_len < SMTP_TRACE_PEEK ? (size_t)it->body_len : SMTP_TRACE_PEEK;
	ssize_t n = queue_item_read(it, h, len, 0);
	struct smtp_trace trace;
	bool looping = true;

	smtp_trace_scan(&trace, h, n > 0 ? (size_t)n : 0);
	if (smtp_trace_too_many_hops(&trace))
		snprintf(why, why_cap, "554 5.4.6 Too many hops: mail forwarding loop");
	else if (j->delivered_to != NULL && smtp_trace_delivered_to(&trace, j->delivered_to))
		snprintf(why, why_cap, "5.4.6 mail forwarding loop for %s", j->delivered_to);
	else
		looping = false;
	smtp_trace_free(&trace);
	free(h);
	return looping;
}

static void
set_result(struct relay_job *j, size_t k, enum queue_rcpt_status st, const char *reason,
	   const char *relay_name)
{
	struct queue_rcpt_result *res = &j->results[j->rcpts[k]];
	const char *word = st == QUEUE_RCPT_DONE   ? "sent"
			   : st == QUEUE_RCPT_FAIL ? "bounced"
						   : "deferred";

	res->status = st;
	util_strlcpy(res->reason, reason, sizeof(res->reason));
	util_strlcpy(res->relay, relay_name, sizeof(res->relay));
	log_info("%s: to=<%s>, relay=%s, delay=%.0f, status=%s (%s)", j->item->id,
		 j->item->rcpts[j->rcpts[k]], relay_name, difftime(time(NULL), j->item->arrival),
		 word, reason);
}

/* "250 2.0.0 Ok" from a reply, newlines flattened. */
static void
reply_text(const struct smtp_reply *rep, char *dst, size_t cap)
{
	snprintf(dst, cap, "%d %s%s%.560s", rep->code, rep->enhanced, rep->enhanced[0] ? " " : "",
		 rep->text);
	for (char *p = dst; *p; p++) {
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	}
}

/* Logs why recipients sub[0..n) still undecided move on from target t, if one is left. */
static void
log_next_server(const struct relay_job *j, size_t t, const size_t *sub, size_t n,
		const bool *undecided, const char *relay_name, const char (*why)[QUEUE_REASON_MAX])
{
	if (t + 1 >= j->targets_len || j->relay->stopping)
		return;
	for (size_t m = 0; m < n; m++) {
		if (undecided[sub[m]])
			log_info("%s: to=<%s>, relay=%s: %s (trying the next server)", j->item->id,
				 j->item->rcpts[j->rcpts[sub[m]]], relay_name, why[sub[m]]);
	}
}

/*
 * Order of work: the targets in turn while recipients are undecided.  A
 * recipient is decided by a 2xx (sent) or 5xx (bounced); a 4xx, a dropped
 * connection or an unreachable target leaves it to the next target
 * (RFC 5321 5.1, as Postfix does), and the last reason it got is the one
 * recorded when no target takes it.
 */
void
relay_session_run(struct util_pool_job *job)
{
	struct relay_job *j = (struct relay_job *)job;
	struct relay *r = j->relay;
	const struct queue_item *it = j->item;
	const char **rcpts = xcalloc(j->n, sizeof(*rcpts));
	size_t *sub = xcalloc(j->n, sizeof(*sub)); /* msg.rcpts[m] is rcpt sub[m] of the job */
	bool *undecided = xcalloc(j->n, sizeof(*undecided));
	char(*why)[QUEUE_REASON_MAX] = xcalloc(j->n, sizeof(*why));
	char(*why_relay)[300] = xcalloc(j->n, sizeof(*why_relay));
	size_t undecided_len = j->n;
	struct relay_client_msg msg;
	char fields[2048]; /* prepended_fields() */
	char loop[300];
	bool fresh_only = false; /* a cached connection to this target just failed */
	bool plain_next = false; /* its TLS handshake just failed: once more in plaintext */

	for (size_t k = 0; k < j->n; k++) {
		undecided[k] = true;
		util_strlcpy(why[k], "4.4.1 no server could be reached", sizeof(why[k]));
		util_strlcpy(why_relay[k], "none", sizeof(why_relay[k]));
	}
	memset(&msg, 0, sizeof(msg));
	msg.sender = it->sender;
	msg.rcpts = rcpts;
	msg.body_8bit = it->body_8bit;
	msg.smtputf8 = it->smtputf8;
	prepended_fields(j, fields, sizeof(fields));
	msg.size = it->body_len + strlen(fields);

	if (loops(j, loop, sizeof(loop))) {
		for (size_t k = 0; k < j->n; k++) {
			set_result(j, k, QUEUE_RCPT_FAIL, loop, "none");
			undecided[k] = false;
		}
		undecided_len = 0;
	}
	for (size_t t = 0; t < j->targets_len && undecided_len > 0 && !r->stopping; t++) {
		const struct relay_target *tg = &j->targets[t];
		char addr[INET6_ADDRSTRLEN], key[INET6_ADDRSTRLEN + 8], err[QUEUE_REASON_MAX],
		    relay_name[300];
		const void *a =
		    tg->addr.ss_family == AF_INET6
			? (const void *)&((const struct sockaddr_in6 *)&tg->addr)->sin6_addr
			: (const void *)&((const struct sockaddr_in *)&tg->addr)->sin_addr;
		struct relay_conn *c = NULL;
		const struct relay_rcpt_result *res;
		const struct smtp_reply *host_reply;
		bool permanent = false, reused = false, started = false, host, only_452, same_again;
		size_t accepted;
		int rc;

		inet_ntop(tg->addr.ss_family, a, addr, sizeof(addr));
		snprintf(key, sizeof(key), "%s:%u", addr, (unsigned)tg->port);
		snprintf(relay_name, sizeof(relay_name), "%.200s[%s]:%u", tg->host, addr,
			 (unsigned)tg->port);
		msg.rcpts_len = 0;
		for (size_t k = 0; k < j->n; k++) {
			if (undecided[k]) {
				sub[msg.rcpts_len] = k;
				rcpts[msg.rcpts_len++] = it->rcpts[j->rcpts[k]];
			}
		}
		bool plain = plain_next;

		plain_next = false;
		if (!fresh_only && !plain)
			c = cache_take(r, key);
		fresh_only = false;
		if (c != NULL) {
			reused = true;
			rc = 0;
		} else {
			c = open_conn(r, j, tg, key, !plain, err, sizeof(err));
			if (c == NULL) {
				for (size_t m = 0; m < msg.rcpts_len; m++) {
					snprintf(why[sub[m]], sizeof(why[0]), "4.4.1 %s: %s",
						 relay_name, err);
					util_strlcpy(why_relay[sub[m]], relay_name,
						     sizeof(why_relay[0]));
				}
				log_next_server(j, t, sub, msg.rcpts_len, undecided, relay_name,
						why);
				continue;
			}
			util_strlcpy(c->name, relay_name, sizeof(c->name));
			rc = drive(r, c, j, fields, RELAY_ACT_NONE);
		}
		if (rc == 0) {
			rc = drive(r, c, j, fields, relay_client_start(c->client, &msg));
			started = true;
		}
		host = relay_client_host_error(c->client, &permanent, &host_reply);
		if (host && c->tls_failed) {
			/*
			 * Opportunistic TLS (RFC 7435): a server that offers STARTTLS but
			 * cannot complete a handshake with us (TLS 1.0 only, a broken
			 * setup) gets the mail in plaintext, as it would without STARTTLS,
			 * instead of never.
			 */
			log_info("%s: trying %s again without TLS", it->id, relay_name);
			conn_close(r, c);
			plain_next = true;
			t--;
			continue;
		}
		if (host && reused && !permanent) {
			/* The server dropped the idle connection: try a new one. */
			conn_close(r, c);
			fresh_only = true;
			t--;
			continue;
		}
		/*
		 * A host failure (the connection lost, MAIL refused, ...) decides the
		 * recipients the server had not decided; one it had already refused
		 * or deferred at RCPT keeps that reply.
		 */
		res = started ? relay_client_results(c->client) : NULL;
		accepted = 0;
		only_452 = true;
		for (size_t m = 0; m < msg.rcpts_len; m++) {
			size_t k = sub[m];
			enum relay_rcpt_status st = res ? res[m].status : RELAY_RCPT_PENDING;
			const struct smtp_reply *rep = res ? &res[m].reply : NULL;

			if (host && st != RELAY_RCPT_PERM && st != RELAY_RCPT_TEMP) {
				st = permanent ? RELAY_RCPT_PERM : RELAY_RCPT_TEMP;
				rep = host_reply;
			}
			if (rep != NULL)
				reply_text(rep, err, sizeof(err));
			switch (st) {
			case RELAY_RCPT_OK:
				set_result(j, k, QUEUE_RCPT_DONE, err, relay_name);
				undecided[k] = false;
				undecided_len--;
				accepted++;
				break;
			case RELAY_RCPT_PERM:
				set_result(j, k, QUEUE_RCPT_FAIL, err, relay_name);
				undecided[k] = false;
				undecided_len--;
				break;
			case RELAY_RCPT_TEMP:
				util_strlcpy(why[k], err, sizeof(why[k]));
				util_strlcpy(why_relay[k], relay_name, sizeof(why_relay[k]));
				only_452 &= rep->code == 452;
				break;
			case RELAY_RCPT_PENDING:
				util_strlcpy(why[k], "4.4.2 no reply from server", sizeof(why[k]));
				util_strlcpy(why_relay[k], relay_name, sizeof(why_relay[k]));
				only_452 = false;
				break;
			}
		}
		/*
		 * The server took some recipients and said 452 (too many recipients,
		 * RFC 5321 4.5.3.1.10) to the rest: the rest go in the next
		 * transaction to the same server, on the same connection.
		 */
		same_again = !host && rc == 0 && accepted > 0 && undecided_len > 0 && only_452;
		if (!same_again)
			log_next_server(j, t, sub, msg.rcpts_len, undecided, relay_name, why);
		if (!host && rc == 0 && c->in_len == 0)
			cache_put(r, c);
		else
			conn_close(r, c); /* bytes left unasked would answer the next command */
		if (same_again)
			t--;
	}
	for (size_t k = 0; k < j->n; k++) {
		/* When stopping, the connection broke because we shut it down. */
		if (undecided[k])
			set_result(j, k, QUEUE_RCPT_DEFER,
				   r->stopping ? "4.3.2 petrel is stopping" : why[k], why_relay[k]);
	}
	free(why_relay);
	free(why);
	free(undecided);
	free(sub);
	free(rcpts);
	util_pool_complete(r->pool, job);
}
