/*
 * cli_main — the petrel command line: one table of commands, and the names
 * the binary answers to when installed under another name (sendmail, mailq).
 * Each group of commands lives in its own file (cli.h).
 */
#include <event2/event.h>
#include <idn2.h>
#include <openssl/crypto.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unbound.h>
#include <unistd.h>

#include "cli/cli.h"
#include "conf/conf.h"
#include "deliver/deliver.h"
#include "server/server.h"
#include "tls/tls.h"
#include "util/util_log.h"

#define PETREL_VERSION "0.1.0"

struct cli_command {
	const char *name;
	int (*run)(int argc, char **argv); /* argv[0] is the name; exit status or CLI_USAGE */
	const char *usage;		   /* the arguments, for "usage: petrel NAME ..." */
	int usage_status;		   /* exit status of a usage error */
};

static int
cmd_serve(int argc, char **argv)
{
	const char *file = NULL;
	int opt;

	while ((opt = getopt(argc, argv, "c:v")) != -1) {
		switch (opt) {
		case 'c':
			file = optarg;
			break;
		case 'v':
			log_set_level(LOG_LEVEL_DEBUG);
			break;
		default:
			return CLI_USAGE;
		}
	}
	if (optind != argc)
		return CLI_USAGE;
	return server_run(cli_config_path(file));
}

/* What `serve` would refuse at start beyond the file's syntax: 0, or 1 with a message. */
static int
check_start(const struct conf *c)
{
	char err[512];
	int rc = 0;

	if (c->user != NULL && c->user[0] != '\0' && getpwnam(c->user) == NULL) {
		fprintf(stderr, "%s: user %s: no such user\n", c->path ? c->path : "(default)",
			c->user);
		rc = 1;
	}
	if (c->tls_cert != NULL && c->tls_key != NULL) {
		struct tls_ctx *tls = tls_server_ctx_new(c->tls_cert, c->tls_key, err, sizeof(err));

		if (tls == NULL) {
			fprintf(stderr, "%s: tls_cert/tls_key: %s\n",
				c->path ? c->path : "(default)", err);
			rc = 1;
		}
		tls_ctx_free(tls);
	}
	return rc;
}

static int
cmd_check_config(int argc, char **argv)
{
	const char *file = NULL;
	struct conf *c;
	struct deliver_db *db;
	char err[512];
	int opt, rc;

	while ((opt = getopt(argc, argv, "c:")) != -1) {
		if (opt != 'c')
			return CLI_USAGE;
		file = optarg;
	}
	if (optind != argc)
		return CLI_USAGE;
	c = cli_conf_load(file, err, sizeof(err));
	if (c == NULL) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	/* The users and aliases files are part of a valid configuration too. */
	db = deliver_db_load(c, err, sizeof(err));
	if (db == NULL) {
		fprintf(stderr, "%s\n", err);
		conf_free(c);
		return 1;
	}
	deliver_db_free(db);
	rc = check_start(c);
	conf_free(c);
	return rc;
}

static int
cmd_version(int argc, char **argv)
{
	int opt;

	/* -c is taken, as by every command, and means nothing here. */
	while ((opt = getopt(argc, argv, "c:")) != -1)
		if (opt != 'c')
			return CLI_USAGE;
	if (optind != argc)
		return CLI_USAGE;
	printf("petrel %s\n", PETREL_VERSION);
	printf("libevent %s\n", event_get_version());
	printf("%s\n", OpenSSL_version(OPENSSL_VERSION));
	printf("libunbound %s\n", ub_version());
	printf("libidn2 %s\n", idn2_check_version(NULL));
	return 0;
}

static const struct cli_command commands[] = {
    {"serve", cmd_serve, "[-c FILE] [-v]", 2},
    {"check-config", cmd_check_config, "[-c FILE]", 2},
    {"sendmail", cli_sendmail,
     "[-c FILE] [-t] [-i] [-f SENDER] [-F NAME] [RCPT...] | [-c FILE] -bs", 64},
    {"queue", cli_queue, "list [--json] | show ID | flush | delete ID...|ALL  [-c FILE]", 2},
    {"passwd", cli_passwd, "(reads the password on stdin)", 2},
    {"version", cmd_version, "[-c FILE]", 2},
};

/* Names the binary may be installed under, as the tools it stands in for. */
static const struct cli_command aliases[] = {
    {"sendmail", cli_sendmail,
     "[-c FILE] [-t] [-i] [-f SENDER] [-F NAME] [RCPT...] | [-c FILE] -bs", 64},
    {"mailq", cli_mailq, "[-c FILE] [--json]", 2},
};

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static int
usage(FILE *f, int status)
{
	for (size_t i = 0; i < ARRAY_LEN(commands); i++)
		fprintf(f, "%s petrel %s %s\n", i == 0 ? "usage:" : "      ", commands[i].name,
			commands[i].usage);
	return status;
}

static int
run(const struct cli_command *cmd, const char *prog, int argc, char **argv)
{
	int status = cmd->run(argc, argv);

	if (status != CLI_USAGE)
		return status;
	fprintf(stderr, "usage: %s%s%s %s\n", prog, prog[0] ? " " : "", cmd->name, cmd->usage);
	return cmd->usage_status;
}

int
main(int argc, char **argv)
{
	const char *self = argc > 0 ? strrchr(argv[0], '/') : NULL;

	self = self ? self + 1 : argc > 0 ? argv[0] : "petrel";
	for (size_t i = 0; i < ARRAY_LEN(aliases); i++) {
		if (strcmp(self, aliases[i].name) == 0)
			return run(&aliases[i], "", argc, argv);
	}
	if (argc < 2)
		return usage(stderr, 2);
	if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "-h") == 0)
		return usage(stdout, 0);
	for (size_t i = 0; i < ARRAY_LEN(commands); i++) {
		if (strcmp(argv[1], commands[i].name) == 0)
			return run(&commands[i], "petrel", argc - 1, argv + 1);
	}
	fprintf(stderr, "petrel: unknown command '%s'\n", argv[1]);
	return usage(stderr, 2);
}
