/*
 * util_log — one line per event on stderr, in the style mail administrators
 * grep (and feed to fail2ban and pflogsumm):
 *   2026-11-28T21:00:00Z petrel[1234]: info: 4F2A1C: from=<a@b>, size=12, nrcpt=1
 * Text that came from the network goes through util_log_escape() first.
 */
#ifndef PETREL_UTIL_LOG_H
#define PETREL_UTIL_LOG_H

#include <stddef.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERR };

void log_set_level(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_err(...)   log_msg(LOG_LEVEL_ERR, __VA_ARGS__)
/* Logs and exits(1): only for startup and configuration failures. */
void log_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/*
 * Copies src[0..len) into dst (capacity cap, always NUL-terminated),
 * replacing control bytes, '\\' and non-ASCII with \xNN and cutting at
 * cap - 1 with a trailing "...".  Returns dst.
 */
char *util_log_escape(char *dst, size_t cap, const char *src, size_t len);

#endif
