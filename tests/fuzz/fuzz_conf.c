/*
 * libFuzzer harness for conf_parse(): any bytes must either parse into a
 * struct conf (freed again, so leaks show) or yield a NUL-terminated
 * "NAME:..." error, never crash or read outside the input.
 * Seeds: tests/fuzz/corpus/conf/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];
	/* A private copy of exactly size bytes: no NUL after it to lean on. */
	char *text = malloc(size ? size : 1);
	struct conf *c;

	if (text == NULL)
		return 0;
	if (size > 0)
		memcpy(text, data, size);
	c = conf_parse("fuzz.conf", text, size, err, sizeof(err));
	if (c == NULL) {
		/* Every failure explains itself, starting with the name. */
		if (strncmp(err, "fuzz.conf:", 10) != 0 || strlen(err) >= sizeof(err))
			abort();
	} else {
		/* Whatever parsed is usable: the lookups must not trip either. */
		(void)conf_is_local_domain(c, text, size < 64 ? size : 64);
		if (c->hostname == NULL || c->listen_smtp_len == 0 || c->local_domains_len == 0 ||
		    c->retry_min_s > c->retry_max_s ||
		    (c->tls_cert == NULL) != (c->tls_key == NULL))
			abort();
		conf_free(c);
	}
	free(text);
	return 0;
}
