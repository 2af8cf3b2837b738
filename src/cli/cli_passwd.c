/*
 * cli_passwd — `petrel passwd`: a {SHA512-CRYPT} hash for the users file
 * (Dovecot passwd-file format), like `doveadm pw -s SHA512-CRYPT`.
 *
 * The password comes from stdin: one line, or, on a terminal, typed twice
 * without echo.  It lives in one buffer that is wiped before returning.
 */
#include "cli/cli.h"

#include <crypt.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "util/util_mem.h"

#define PASSWORD_MAX 1024 /* octets, newline excluded */

static volatile sig_atomic_t interrupted;

static void
on_signal(int sig)
{
	interrupted = sig;
}

/*
 * Reads one line from fd into buf (cap > 1) one octet at a time, so nothing
 * past the newline is consumed; strips the line end.  Returns its length, or
 * -1 on a read error, an interrupt, a NUL or a line over cap - 1 octets.
 */
static ssize_t
read_line(int fd, char *buf, size_t cap)
{
	size_t len = 0;

	for (;;) {
		char c;
		ssize_t n = read(fd, &c, 1);

		if (n < 0 && errno == EINTR && !interrupted)
			continue;
		if (n < 0)
			return -1;
		if (n == 0 || c == '\n')
			break;
		if (c == '\0' || len + 1 >= cap)
			return -1;
		buf[len++] = c;
	}
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	return (ssize_t)len;
}

/* Prompts on stderr and reads a line from the terminal on fd without echo. */
static ssize_t
read_hidden(int fd, const char *prompt, char *buf, size_t cap)
{
	struct termios old, quiet;
	ssize_t len;

	fputs(prompt, stderr);
	fflush(stderr);
	if (tcgetattr(fd, &old) != 0)
		return -1;
	quiet = old;
	quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
	quiet.c_lflag |= ICANON;
	if (tcsetattr(fd, TCSAFLUSH, &quiet) != 0)
		return -1;
	len = read_line(fd, buf, cap);
	tcsetattr(fd, TCSAFLUSH, &old);
	fputc('\n', stderr);
	return len;
}

/* Reads the password into pw; 0, or -1 after saying why on stderr. */
static int
read_password(char *pw, size_t cap)
{
	ssize_t len;

	if (isatty(STDIN_FILENO)) {
		char *again = xmalloc(cap);
		ssize_t len2;
		bool same;

		len = read_hidden(STDIN_FILENO, "Enter new password: ", pw, cap);
		len2 =
		    len > 0 ? read_hidden(STDIN_FILENO, "Retype new password: ", again, cap) : -1;
		same = len > 0 && len == len2 && memcmp(pw, again, (size_t)len) == 0;
		util_wipe(again, cap);
		free(again);
		if (len > 0 && len2 >= 0 && !same) {
			fprintf(stderr, "petrel passwd: the passwords do not match\n");
			return -1;
		}
	} else {
		len = read_line(STDIN_FILENO, pw, cap);
	}
	if (interrupted)
		return -1;
	if (len < 0) {
		fprintf(stderr,
			"petrel passwd: cannot read the password (over %d octets, a NUL, "
			"or a read error)\n",
			PASSWORD_MAX);
		return -1;
	}
	if (len == 0) {
		fprintf(stderr, "petrel passwd: empty password\n");
		return -1;
	}
	return 0;
}

/* Ctrl-C at the prompt must not leave the terminal without echo: reads see EINTR. */
static void
catch_signals(void)
{
	static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
}

int
cli_passwd(int argc, char **argv)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd;
	const char *hash;
	char *pw;
	int opt, status = 1;

	/* -c is accepted as by every command; the hash does not depend on it. */
	while ((opt = getopt(argc, argv, "c:")) != -1) {
		if (opt != 'c')
			return CLI_USAGE;
	}
	if (optind != argc)
		return CLI_USAGE;
	catch_signals();
	pw = xmalloc(PASSWORD_MAX + 2);
	cd = xcalloc(1, sizeof(*cd));
	if (read_password(pw, PASSWORD_MAX + 2) != 0)
		goto out;
	/* count 0: the library's default rounds; NULL entropy: it asks the kernel. */
	if (crypt_gensalt_rn("$6$", 0, NULL, 0, salt, sizeof(salt)) == NULL) {
		fprintf(stderr, "petrel passwd: crypt_gensalt: %s\n", strerror(errno));
		goto out;
	}
	hash = crypt_r(pw, salt, cd);
	/* libxcrypt reports failure with NULL or a string starting with '*'. */
	if (hash == NULL || hash[0] == '*') {
		fprintf(stderr, "petrel passwd: crypt: %s\n", strerror(errno));
		goto out;
	}
	printf("{SHA512-CRYPT}%s\n", hash);
	status = fflush(stdout) == 0 ? 0 : 1;
out:
	util_wipe(pw, PASSWORD_MAX + 2);
	util_wipe(cd, sizeof(*cd));
	free(pw);
	free(cd);
	return status;
}
