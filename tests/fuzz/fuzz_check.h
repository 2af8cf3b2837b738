/*
 * fuzz_check — the harnesses' invariant check: a failed one names itself on
 * stderr and aborts, which libFuzzer (and the corpus replay) reports as a
 * crash with the input that caused it.
 */
#ifndef PETREL_FUZZ_CHECK_H
#define PETREL_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__,       \
				#cond);                                                            \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#endif
