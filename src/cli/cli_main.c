/*
 * cli_main — the petrel command line: serve, check-config, version.
 */
#include <event2/event.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"
#include "deliver/deliver.h"
#include "server/server.h"
#include "util/util_log.h"

#define PETREL_VERSION "0.1.0"
#define SYSTEM_CONF    "/etc/petrel/petrel.conf"

static int
usage(void)
{
	fprintf(stderr, "usage: petrel serve [-c FILE] [-v]\n"
			"       petrel check-config [-c FILE]\n"
			"       petrel version\n");
	return 2;
}

/* -c FILE, else /etc/petrel/petrel.conf when it exists, else NULL (the embedded default). */
static const char *
config_path(const char *given)
{
	if (given != NULL)
		return given;
	if (access(SYSTEM_CONF, F_OK) == 0)
		return SYSTEM_CONF;
	return NULL;
}

static int
check_config(const char *path)
{
	struct conf *c;
	struct deliver_db *db;
	char err[512];

	c = path ? conf_load(path, err, sizeof(err)) : conf_default();
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
	conf_free(c);
	return 0;
}

static int
version(void)
{
	printf("petrel %s\n", PETREL_VERSION);
	printf("libevent %s\n", event_get_version());
	printf("%s\n", OpenSSL_version(OPENSSL_VERSION));
	return 0;
}

int
main(int argc, char **argv)
{
	const char *cmd, *file = NULL;
	int opt;

	if (argc < 2)
		return usage();
	cmd = argv[1];
	argc--;
	argv++;
	while ((opt = getopt(argc, argv, "c:v")) != -1) {
		switch (opt) {
		case 'c':
			file = optarg;
			break;
		case 'v':
			log_set_level(LOG_LEVEL_DEBUG);
			break;
		default:
			return usage();
		}
	}
	if (optind != argc)
		return usage();
	if (strcmp(cmd, "serve") == 0)
		return server_run(config_path(file));
	if (strcmp(cmd, "check-config") == 0)
		return check_config(config_path(file));
	if (strcmp(cmd, "version") == 0)
		return version();
	return usage();
}
