/*
 * libFuzzer harness for smtp_trace: the input is a message.  Beyond "no
 * crash, no out-of-bounds read", it aborts when a promise of smtp_trace.h
 * breaks: every Delivered-To: value is NUL-ended, non-empty, holds no LF
 * and no white space at either end, and matches itself; no more values
 * and Received: fields than the header section has lines; and the body
 * (what follows the first empty line) changes nothing.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "smtp/smtp_trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The length of the header section with its empty line (size when there is none). */
static size_t
header_len(const char *in, size_t size, size_t *lines)
{
	size_t i = 0;

	*lines = 0;
	while (i < size) {
		const char *nl = memchr(in + i, '\n', size - i);
		size_t end = nl != NULL ? (size_t)(nl - in) : size;

		if (end == i || (end == i + 1 && in[i] == '\r'))
			return nl != NULL ? end + 1 : size;
		(*lines)++;
		if (nl == NULL)
			break;
		i = end + 1;
	}
	return size;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	struct smtp_trace t, head;
	size_t lines, values = 0, hlen = header_len(in, size, &lines);

	smtp_trace_scan(&t, in, size);
	CHECK(t.delivered_to.len <= size);
	CHECK(t.delivered_to.len == 0 || t.delivered_to.data[t.delivered_to.len - 1] == '\0');
	for (size_t i = 0; i < t.delivered_to.len;) {
		const char *v = t.delivered_to.data + i;
		size_t n = strlen(v);

		CHECK(n > 0 && memchr(v, '\n', n) == NULL);
		CHECK(v[0] != ' ' && v[0] != '\t' && v[n - 1] != ' ' && v[n - 1] != '\t');
		CHECK(smtp_trace_delivered_to(&t, v));
		values++;
		i += n + 1;
	}
	CHECK(t.received + values <= lines);
	CHECK(smtp_trace_too_many_hops(&t) == (t.received > SMTP_TRACE_HOPS_MAX));

	smtp_trace_scan(&head, in, hlen);
	CHECK(head.received == t.received);
	CHECK(head.delivered_to.len == t.delivered_to.len);
	CHECK(t.delivered_to.len == 0 ||
	      memcmp(head.delivered_to.data, t.delivered_to.data, t.delivered_to.len) == 0);
	smtp_trace_free(&head);
	smtp_trace_free(&t);
	return 0;
}
