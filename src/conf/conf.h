/*
 * conf — petrel's configuration: the one place that knows key names.
 *
 * conf_load() parses a `key = value` file (see CONTRACT.md), validates every
 * key and value, and returns an immutable struct conf that the rest of petrel
 * reads.  It does no I/O beyond reading that one file (files named by keys,
 * such as users_file, are opened by their modules).  conf_default() returns
 * the embedded default.  The caller owns the result and frees it with
 * conf_free().
 */
#ifndef PETREL_CONF_H
#define PETREL_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct conf_listen {
	char *host; /* owned; numeric address ("127.0.0.1", "::1") or name */
	uint16_t port;
};

struct conf_cidr {
	int family;	  /* AF_INET or AF_INET6 */
	uint8_t addr[16]; /* network address, 4 or 16 bytes used */
	unsigned prefix;  /* prefix length in bits */
};

struct conf {
	char *hostname; /* owned */
	struct conf_listen *listen_smtp;
	size_t listen_smtp_len;
	struct conf_listen *listen_submission;
	size_t listen_submission_len;
	struct conf_listen *listen_submissions;
	size_t listen_submissions_len;
	char **local_domains; /* owned, lower-cased */
	size_t local_domains_len;
	char *mail_root;	   /* owned */
	char *spool_dir;	   /* owned */
	char *users_file;	   /* owned, NULL when unset */
	char *aliases_file;	   /* owned, NULL when unset */
	char *recipient_delimiter; /* owned; set of delimiter characters, "" = none */
	struct conf_cidr *relay_networks;
	size_t relay_networks_len;
	char *dns_resolver; /* owned "addr:port" (port defaults to 53), NULL when unset */
	uint16_t smtp_port;
	char *relayhost; /* owned "host[:port]", NULL when unset */
	char *tls_cert;	 /* owned, NULL when unset */
	char *tls_key;	 /* owned, NULL when unset */
	uint64_t max_message_size;
	size_t max_recipients;
	size_t max_connections;
	size_t max_connections_per_ip;
	unsigned smtp_timeout_s;
	unsigned queue_lifetime_s;
	unsigned retry_min_s;
	unsigned retry_max_s;
	char *user; /* owned, NULL when unset */
	char *path; /* owned: the file this came from, NULL for the embedded default */
};

/* The embedded default of CONTRACT.md (hostname = the machine's name). */
struct conf *conf_default(void);
/*
 * Parses and validates `path`.  On error returns NULL and writes
 * "PATH:LINE: what is wrong" (or "PATH: ..." for file-level errors) to err.
 */
struct conf *conf_load(const char *path, char *err, size_t err_cap);
/*
 * Same, from a string already in memory (tests, fuzzing); `name` is used in
 * error messages in place of a path.
 */
struct conf *conf_parse(const char *name, const char *text, size_t len, char *err, size_t err_cap);
void conf_free(struct conf *c);

/* True when domain (any case, optional trailing dot) is one of local_domains. */
bool conf_is_local_domain(const struct conf *c, const char *domain, size_t len);
/* True when the address (AF_INET/AF_INET6 sockaddr, v4-mapped v6 handled) is in relay_networks. */
bool conf_in_relay_networks(const struct conf *c, const struct sockaddr *sa);
/*
 * Parsers for value syntaxes, exported for unit tests.  Each returns 0 and
 * stores the value, or -1 on a malformed value.
 */
int conf_parse_size(const char *s, uint64_t *out);	 /* "25M", "1024", "1G" */
int conf_parse_duration(const char *s, unsigned *out_s); /* "300s", "5m", "1h", "5d", "60" */
int conf_parse_cidr(const char *s,
		    struct conf_cidr *out); /* "127.0.0.0/8", "::1/128", "10.1.2.3" */
int conf_parse_listen(const char *s, struct conf_listen *out); /* "127.0.0.1:25", "[::1]:25" */

#endif
