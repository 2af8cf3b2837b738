/*
 * queue_jrec — the record format of the spool journal (queue_journal), kept
 * apart from the file and thread work so that it can be tested and fuzzed
 * on its own.
 *
 * A journal segment is a sequence of records, each
 *
 *   magic  4 octets  "PJM1" (a message) or "PJD1" (message ID is finished)
 *   len    4 octets  payload length, little-endian (0 for "PJD1")
 *   crc    4 octets  CRC-32C of magic, len, id and payload, little-endian
 *   id     16 octets the queue id (util_id)
 *   payload len octets: the queue file image (envelope header + message)
 *
 * A segment is only ever appended to, so everything after the first record
 * that does not check out (a torn write, zeros past a crash) was never
 * acknowledged and is ignored.
 */
#ifndef PETREL_QUEUE_JREC_H
#define PETREL_QUEUE_JREC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util_id.h"

#define JREC_HEAD_LEN (12 + UTIL_ID_LEN)
/* No record carries more than this (a message held in memory plus its envelope). */
#define JREC_PAYLOAD_MAX (4u << 20)

enum jrec_type {
	JREC_MSG,  /* an acknowledged message */
	JREC_DONE, /* the message with this id needs the journal no more */
};

/* CRC-32C of data, continuing from crc (0 to start): by the CPU's instruction where it has one. */
uint32_t jrec_crc32c(uint32_t crc, const void *data, size_t len);
/* The same in portable C (what jrec_crc32c falls back to; tests compare the two). */
uint32_t jrec_crc32c_sw(uint32_t crc, const void *data, size_t len);

/*
 * Fills head (JREC_HEAD_LEN octets) for a record whose payload is the
 * concatenation of parts[0..nparts-1].
 */
void jrec_head(char head[JREC_HEAD_LEN], enum jrec_type type, const char *id,
	       const void *const *parts, const size_t *lens, size_t nparts);

/* One record found by jrec_scan; id is NUL-terminated, payload points into the buffer. */
struct jrec {
	enum jrec_type type;
	char id[UTIL_ID_LEN + 1];
	const char *payload;
	size_t len;
};

/*
 * Walks the records of a segment image buf[0..len), calling fn for each
 * whole, checked record in order until fn returns false or a record does
 * not check out.  Returns the octets covered by whole records.
 */
size_t jrec_scan(const char *buf, size_t len, bool (*fn)(void *arg, const struct jrec *r),
		 void *arg);

/* Message ids, as the "finished" marks of a scan collect them (free(v) when done). */
struct jrec_ids {
	char (*v)[UTIL_ID_LEN + 1];
	size_t len, cap;
};
/* A jrec_scan callback: adds the id of every JREC_DONE record to arg, a struct jrec_ids. */
bool jrec_collect_done(void *arg, const struct jrec *r);

#endif
