/*
 * cli_sendmail — what `petrel sendmail` (cli_sendmail.c) shares with its
 * SMTP mode `sendmail -bs` (cli_sendmail_bs.c): the drop-off of one message
 * into spool/incoming/ and the signals that end the input.
 *
 * Internal to src/cli/.  Errors come back as <sysexits.h> codes with the
 * text in the caller's buffer; nothing here writes to stdout or stderr.
 */
#ifndef PETREL_CLI_SENDMAIL_H
#define PETREL_CLI_SENDMAIL_H

#include <stdbool.h>
#include <stddef.h>

struct conf;
struct queue_drop;
struct queue_envelope;

/*
 * Starts a message in <spool_dir>/incoming/ (made when missing: a server
 * that never ran finds the message at its start) for env, given to the
 * configuration's `user` when root drops it.  EX_OK with *drop set (the
 * caller writes, then commits or aborts it), else EX_CANTCREAT (the spool
 * refuses us) or EX_TEMPFAIL (it may work later) with err filled and errno
 * set.
 */
int cli_sendmail_drop_open(const struct conf *c, const struct queue_envelope *env,
			   struct queue_drop **drop, char *err, size_t err_cap);
/* EX_CANTCREAT for an errno that says the spool refuses us, EX_TEMPFAIL for the others. */
int cli_sendmail_spool_status(int err);

/*
 * SIGINT, SIGTERM, SIGHUP and SIGQUIT set a flag instead of killing the
 * process (no SA_RESTART: a blocked read or write returns EINTR), so that an
 * unfinished drop-off is removed, not left behind.
 */
void cli_sendmail_catch_signals(void);
bool cli_sendmail_interrupted(void);

/*
 * `sendmail -bs`: an SMTP session on stdin and stdout (cli_sendmail_bs.c).
 * Returns the exit status: 0 once the session ended, whatever its
 * transactions gave (as Postfix's `smtpd -S`).
 */
int cli_sendmail_bs(const struct conf *c);

#endif
