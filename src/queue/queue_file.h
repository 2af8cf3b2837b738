/*
 * queue_file — the on-disk format of a queue entry and of its progress file.
 *
 * queue/ID:  "PETREL-QUEUE 1\n", then "key value\n" lines (id, arrival,
 * sender, rcpt (repeated, each optionally followed by "orcpt ORIGINAL"), helo, client_addr,
 * client_name, protocol, body, smtputf8), a blank line, then the message in wire form (CRLF lines,
 * dot-stuffing undone).  Values never hold LF or NUL: the SMTP parser
 * refuses such addresses and HELO names.
 *
 * queue/ID.st: "attempts N\n", "done I\n" / "fail I\n" per finished recipient
 * index, "error TEXT\n".  Rewritten whole (tmp + rename) after an attempt
 * that leaves work.
 *
 * Internal to queue/ (and the queue CLI, which reads the same files).
 */
#ifndef PETREL_QUEUE_FILE_H
#define PETREL_QUEUE_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "queue/queue.h"
#include "util/util_buf.h"

#define QUEUE_FILE_MAGIC "PETREL-QUEUE 1\n"

/* A parsed queue file header; strings owned, freed by queue_file_env_free(). */
struct queue_file_env {
	char id[UTIL_ID_LEN + 1];
	time_t arrival;
	char *sender;
	char **rcpts;
	char **orcpts; /* same length as rcpts; each owned (a copy of rcpts[i] when not given) */
	size_t rcpts_len;
	char *helo;
	char *client_addr;
	char *client_name;
	char *protocol;
	bool body_8bit;
	bool smtputf8;
	bool expanded;
	off_t body_off; /* file offset of the message */
};

struct queue_file_status {
	unsigned attempts;
	bool *done;   /* owned, rcpts_len entries: delivered or bounced */
	bool *failed; /* owned, rcpts_len entries: bounced (subset of done) */
	char error[256];
};

/* Appends the header for env (ends with the blank line) to out.  -1 when out is too small. */
int queue_file_header(struct buf *out, const char *id, time_t arrival,
		      const struct queue_envelope *env);
/*
 * Parses a header from the first len octets of a file (it must contain the
 * blank line).  Returns 0 and fills env, or -1 with err filled.
 */
int queue_file_parse(const char *data, size_t len, struct queue_file_env *env, char *err,
		     size_t err_cap);
/* Reads and parses the header of an open queue file (blocking). */
int queue_file_read(int fd, struct queue_file_env *env, char *err, size_t err_cap);
void queue_file_env_free(struct queue_file_env *env);

/* Reads queue/ID.st under dirfd; a missing file is an empty status.  Blocking. */
int queue_file_status_read(int dirfd, const char *id, size_t rcpts_len,
			   struct queue_file_status *st);
/* Writes queue/ID.st durably (tmp file, fdatasync, rename).  Blocking. */
int queue_file_status_write(int dirfd, const char *id, size_t rcpts_len,
			    const struct queue_file_status *st);
void queue_file_status_free(struct queue_file_status *st);

/* write(2) all of it, retrying on EINTR and short writes.  0 or -1 (errno set). */
int queue_file_write_all(int fd, const void *data, size_t len);

#endif
