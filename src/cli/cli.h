/*
 * cli — what the command handlers of `petrel` share: the handlers
 * themselves (one file per command group), the config file a command
 * reads, and the road to a running server (its pid file and SIGUSR1).
 *
 * Internal to src/cli/.  Handlers get argv[0] = the command's name and
 * return the process exit status; they write to stdout/stderr and never
 * call exit().
 */
#ifndef PETREL_CLI_H
#define PETREL_CLI_H

#include <stddef.h>
#include <sys/types.h>

struct conf;

#define CLI_SYSTEM_CONF "/etc/petrel/petrel.conf"

/* A handler's way of saying "wrong arguments: print my usage line". */
#define CLI_USAGE (-1)

/* petrel queue list|show|flush|delete (cli_queue.c); `mailq` is `queue list`. */
int cli_queue(int argc, char **argv);
int cli_mailq(int argc, char **argv);
/* petrel sendmail, and the binary invoked as `sendmail` (cli_sendmail.c). */
int cli_sendmail(int argc, char **argv);
/* petrel passwd (cli_passwd.c). */
int cli_passwd(int argc, char **argv);

/* -c FILE, else /etc/petrel/petrel.conf when it exists, else NULL (the embedded default). */
const char *cli_config_path(const char *given);
/*
 * Loads the configuration a command uses (cli_config_path(given)); the
 * caller frees it with conf_free().  NULL with err filled on error.
 */
struct conf *cli_conf_load(const char *given, char *err, size_t err_cap);

enum cli_server {
	CLI_SERVER_RUNNING, /* the pid file names a live petrel server */
	CLI_SERVER_NONE,    /* no pid file, or a stale one */
	CLI_SERVER_DENIED,  /* alive, but not ours to signal (another user) */
};

/* Who serves spool_dir, from <spool_dir>/petrel.pid; *pid is set unless NONE. */
enum cli_server cli_server_find(const char *spool_dir, pid_t *pid);
/*
 * Sends SIGUSR1 (look into incoming/, retry deferred mail now) to the
 * server of spool_dir.  0, or -1 with err filled (no server, not allowed).
 */
int cli_server_wake(const char *spool_dir, char *err, size_t err_cap);

#endif
