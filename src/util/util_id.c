#include "util/util_id.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>
#include <unistd.h>

static _Atomic uint32_t counter;
static _Atomic int seeded;

void
util_id_new(char dst[UTIL_ID_LEN + 1])
{
	struct timeval tv;
	uint64_t usec;
	uint32_t n;

	if (!atomic_exchange(&seeded, 1)) {
		uint32_t seed = 0;
		if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed))
			seed = (uint32_t)getpid() * 2654435761u;
		atomic_fetch_add(&counter, seed);
	}
	gettimeofday(&tv, NULL);
	usec = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
	n = atomic_fetch_add(&counter, 1) & 0x0fffffffu;
	snprintf(dst, UTIL_ID_LEN + 1, "%09llX%07X", (unsigned long long)(usec & 0xfffffffffull),
		 (unsigned)(n & 0x0fffffffu));
}

bool
util_id_valid(const char *s)
{
	size_t i;

	for (i = 0; i < UTIL_ID_LEN; i++) {
		char c = s[i];
		if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F')))
			return false;
	}
	return s[i] == '\0';
}
