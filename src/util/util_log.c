#include "util/util_log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_LEVEL_INFO;

static const char *const level_names[] = {
    [LOG_LEVEL_DEBUG] = "debug",
    [LOG_LEVEL_INFO] = "info",
    [LOG_LEVEL_WARN] = "warning",
    [LOG_LEVEL_ERR] = "error",
};

void
log_set_level(enum log_level level)
{
	min_level = level;
}

/* The process id, looked up once (petrel does not fork). */
static int
log_pid(void)
{
	static atomic_int pid;
	int p = atomic_load_explicit(&pid, memory_order_relaxed);

	if (p == 0) {
		p = (int)getpid();
		atomic_store_explicit(&pid, p, memory_order_relaxed);
	}
	return p;
}

/* The line's time stamp: formatted once a second by each thread. */
static const char *
log_stamp(void)
{
	static _Thread_local time_t last = (time_t)-1;
	static _Thread_local char stamp[32];
	time_t now = time(NULL);

	if (now != last) {
		struct tm tm;

		gmtime_r(&now, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
		last = now;
	}
	return stamp;
}

static void __attribute__((format(printf, 2, 0)))
vlog(enum log_level level, const char *fmt, va_list ap)
{
	char line[2048];
	size_t len;
	int n;

	n = snprintf(line, sizeof(line), "%s petrel[%d]: %s: ", log_stamp(), log_pid(),
		     level_names[level]);
	if (n < 0 || (size_t)n >= sizeof(line))
		return;
	vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	len = strlen(line);
	line[len++] = '\n'; /* room was left for it */
	/*
	 * One write(2) per line keeps lines whole when threads log concurrently
	 * (a line is shorter than PIPE_BUF), without stdio's lock on stderr.
	 */
	while (write(STDERR_FILENO, line, len) < 0 && errno == EINTR)
		;
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;

	if (level < min_level)
		return;
	va_start(ap, fmt);
	vlog(level, fmt, ap);
	va_end(ap);
}

void
log_fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LEVEL_ERR, fmt, ap);
	va_end(ap);
	exit(1);
}

char *
util_log_escape(char *dst, size_t cap, const char *src, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	if (cap == 0)
		return dst;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)src[i];
		size_t need = (c < 0x20 || c >= 0x7f || c == '\\') ? 4 : 1;

		if (o + need + 4 > cap) {
			if (o + 4 <= cap) {
				dst[o++] = '.';
				dst[o++] = '.';
				dst[o++] = '.';
			}
			break;
		}
		if (need == 4) {
			dst[o++] = '\\';
			dst[o++] = 'x';
			dst[o++] = hex[c >> 4];
			dst[o++] = hex[c & 15];
		} else {
			dst[o++] = (char)c;
		}
	}
	dst[o] = '\0';
	return dst;
}
