#include "cli/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"
#include "queue/queue.h"

const char *
cli_config_path(const char *given)
{
	if (given != NULL)
		return given;
	if (access(CLI_SYSTEM_CONF, F_OK) == 0)
		return CLI_SYSTEM_CONF;
	return NULL;
}

struct conf *
cli_conf_load(const char *given, char *err, size_t err_cap)
{
	const char *path = cli_config_path(given);
	struct conf *c = path ? conf_load(path, err, err_cap) : conf_default();

	if (c == NULL && path == NULL)
		snprintf(err, err_cap, "cannot build the default configuration");
	return c;
}

/* Reads a small file into buf (NUL-terminated); its length, or -1. */
static ssize_t
read_small(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	ssize_t n;

	if (fd < 0)
		return -1;
	do {
		n = read(fd, buf, cap - 1);
	} while (n < 0 && errno == EINTR);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return n;
}

/*
 * True unless /proc says pid is something else than `... serve`: a pid file
 * left by a killed server may name a recycled pid, and SIGUSR1 kills most
 * programs.  Without /proc the pid file is trusted.
 */
static bool
is_petrel_server(pid_t pid)
{
	char path[64], cmd[4096];
	ssize_t n;
	size_t first;

	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	n = read_small(path, cmd, sizeof(cmd));
	if (n < 0) {
		int e = errno;
		if (access("/proc/self", F_OK) != 0)
			return true; /* no /proc here */
		return e != ENOENT;  /* gone, or hidden from us (hidepid) */
	}
	/* argv[1] must be "serve". */
	first = strnlen(cmd, (size_t)n);
	if (first + 1 >= (size_t)n)
		return false;
	return strcmp(cmd + first + 1, "serve") == 0;
}

enum cli_server
cli_server_find(const char *spool_dir, pid_t *pid)
{
	char path[4096], text[32], *end;
	long v;

	*pid = 0;
	if ((size_t)snprintf(path, sizeof(path), "%s/%s", spool_dir, QUEUE_PID_FILE) >=
	    sizeof(path))
		return CLI_SERVER_NONE;
	if (read_small(path, text, sizeof(text)) <= 0)
		return CLI_SERVER_NONE;
	errno = 0;
	v = strtol(text, &end, 10);
	if (errno != 0 || end == text || (*end != '\n' && *end != '\0') || v <= 1 ||
	    v > 0x7fffffffL)
		return CLI_SERVER_NONE;
	*pid = (pid_t)v;
	if (kill(*pid, 0) != 0)
		return errno == EPERM ? CLI_SERVER_DENIED : CLI_SERVER_NONE;
	return is_petrel_server(*pid) ? CLI_SERVER_RUNNING : CLI_SERVER_NONE;
}

int
cli_server_wake(const char *spool_dir, char *err, size_t err_cap)
{
	pid_t pid;

	switch (cli_server_find(spool_dir, &pid)) {
	case CLI_SERVER_RUNNING:
		break;
	case CLI_SERVER_NONE:
		snprintf(err, err_cap, "no petrel server is running for %s", spool_dir);
		return -1;
	case CLI_SERVER_DENIED:
		snprintf(err, err_cap, "the server of %s (pid %d) runs as another user", spool_dir,
			 (int)pid);
		return -1;
	}
	if (kill(pid, SIGUSR1) != 0) {
		snprintf(err, err_cap, "kill %d: %s", (int)pid, strerror(errno));
		return -1;
	}
	return 0;
}
