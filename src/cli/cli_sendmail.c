/*
 * cli_sendmail — `petrel sendmail` and the binary called as `sendmail`:
 * the sendmail(8) command line of cron, PHP's mail() and mutt, writing the
 * message into spool/incoming/ (queue_drop_*) and waking the server.
 * `-bs` (an SMTP session on stdio) is cli_sendmail_bs.c's.
 *
 * Exit codes are sendmail's (<sysexits.h>): 0, EX_USAGE, EX_DATAERR,
 * EX_CANTCREAT or EX_TEMPFAIL for the spool, EX_CONFIG.  The header section
 * is held in memory (it is needed whole for -t and for the fields added
 * when missing, and is capped); the body streams through in chunks.
 */
#include "cli/cli_sendmail.h"

#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/cli_mail.h"
#include "conf/conf.h"
#include "queue/queue.h"
#include "util/util_buf.h"
#include "util/util_fs.h"
#include "util/util_id.h"
#include "util/util_mem.h"
#include "util/util_time.h"

#define CHUNK_LEN  (64 * 1024)
#define HEADER_MAX (1024 * 1024) /* octets of the header section held for -t */
#define OUT_CAP	   (CLI_MAIL_LINES_OUT_MAX(CHUNK_LEN) + CLI_MAIL_LINES_FINISH_MAX)

enum mode { MODE_DELIVER, MODE_SMTP, MODE_LIST, MODE_FLUSH };

struct opts {
	enum mode mode;
	const char *conf_file;
	const char *sender;    /* -f; NULL: the invoking user */
	const char *full_name; /* -F */
	bool extract;	       /* -t */
	bool dot_ends;	       /* no -i / -oi */
	bool verbose;	       /* -v */
	bool body_7bit;	       /* -B 7BIT */
	char **rcpt_args;      /* borrowed from argv */
	size_t rcpt_args_len;
};

/* One submission: envelope being built, then the drop-off being written. */
struct job {
	const struct opts *o;
	const struct conf *conf;
	char *sender; /* owned, "" for the null sender */
	bool sender_is_user;
	char **rcpts; /* owned */
	size_t rcpts_len, rcpts_cap;
	bool smtputf8;
	int status;	/* EX_* decided by a callback */
	char *bad_addr; /* owned: the address that set status */
	struct queue_drop *drop;
	uint64_t written; /* message octets given to the drop */
};

static volatile sig_atomic_t interrupted;

static void
on_signal(int sig)
{
	interrupted = sig;
}

/* ---- options ------------------------------------------------------------------------- */

static void
warn_ignored(const char *what)
{
	fprintf(stderr, "sendmail: warning: %s ignored\n", what);
}

/* An option with a value; EX_OK, or EX_USAGE after a message. */
static int
set_opt(struct opts *o, char opt, const char *val)
{
	switch (opt) {
	case 'c':
		o->conf_file = val;
		break;
	case 'f':
	case 'r': /* the obsolete spelling of -f */
		o->sender = val;
		break;
	case 'F':
		o->full_name = val;
		break;
	case 'o': /* -oi, -oem, -odi, -oQ/dir, ... (sendmail's long options) */
		if (strcmp(val, "i") == 0)
			o->dot_ends = false;
		else if (val[0] == 'Q' || val[0] == 'A')
			warn_ignored(val[0] == 'Q' ? "-oQ (the spool is spool_dir of the config)"
						   : "-oA (aliases come from aliases_file)");
		break;
	case 'B':
		if (strcasecmp(val, "7BIT") == 0) {
			o->body_7bit = true;
		} else if (strcasecmp(val, "8BITMIME") != 0) {
			fprintf(stderr, "sendmail: -B %s: only 7BIT and 8BITMIME are known\n", val);
			return EX_USAGE;
		}
		break;
	case 'N':
		warn_ignored("-N (DSN NOTIFY: failures are always reported)");
		break;
	case 'R':
	case 'V':
		warn_ignored(opt == 'R' ? "-R (DSN RET)" : "-V (DSN ENVID)");
		break;
	case 'b':
		if (strcmp(val, "m") == 0) {
			o->mode = MODE_DELIVER;
		} else if (strcmp(val, "s") == 0) {
			o->mode = MODE_SMTP;
		} else if (strcmp(val, "p") == 0) {
			o->mode = MODE_LIST;
		} else {
			fprintf(stderr, "sendmail: -b%s is not supported\n", val);
			return EX_USAGE;
		}
		break;
	case 'q':
		o->mode = MODE_FLUSH;
		break;
	case 'C':
		warn_ignored("-C (use -c FILE for petrel's config)");
		break;
	default: /* -A, -O, -X, -L, -h, -d: meaningless here */
		break;
	}
	return EX_OK;
}

/*
 * sendmail's command line: options first or mixed with recipients, flags
 * bundled ("-ti"), values attached or separate ("-fme", "-f me"), "--" ends
 * the options.  Returns EX_OK or EX_USAGE.
 */
static int
parse_opts(int argc, char **argv, struct opts *o)
{
	static const char with_value[] = "cfrFoBNRVbACOXLhdq";
	bool end_opts = false;

	memset(o, 0, sizeof(*o));
	o->dot_ends = true;
	o->rcpt_args = xcalloc((size_t)argc + 1, sizeof(char *));
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];

		if (!end_opts && strcmp(arg, "--") == 0) {
			end_opts = true;
			continue;
		}
		if (end_opts || arg[0] != '-' || arg[1] == '\0') {
			o->rcpt_args[o->rcpt_args_len++] = argv[i];
			continue;
		}
		for (const char *p = arg + 1; *p != '\0'; p++) {
			const char *val;
			int rc;

			if (strchr(with_value, *p) == NULL) {
				switch (*p) {
				case 't':
					o->extract = true;
					break;
				case 'i':
					o->dot_ends = false;
					break;
				case 'v':
					o->verbose = true;
					break;
				case 'n': /* no aliasing */
				case 'm': /* me too */
				case 'U': /* initial submission */
				case 'G': /* gateway */
					break;
				default:
					fprintf(stderr, "sendmail: unknown option -%c\n", *p);
					return EX_USAGE;
				}
				continue;
			}
			/* -q and -d take an optional value, attached only. */
			if (p[1] != '\0' || *p == 'q' || *p == 'd')
				val = p + 1;
			else if (i + 1 < argc)
				val = argv[++i];
			else {
				fprintf(stderr, "sendmail: option -%c needs a value\n", *p);
				return EX_USAGE;
			}
			rc = set_opt(o, *p, val);
			if (rc != EX_OK)
				return rc;
			break;
		}
	}
	return EX_OK;
}

/* ---- envelope --------------------------------------------------------------------- */

/* Domain given to a bare local part: the first local domain, so `sendmail root` stays here. */
static const char *
rcpt_domain(const struct conf *c)
{
	return c->local_domains_len > 0 ? c->local_domains[0] : c->hostname;
}

/* Adds one recipient (validated, duplicates dropped); a cli_mail_addr_fn. */
static int
add_rcpt(void *ctx, const char *addr)
{
	struct job *j = ctx;
	struct smtp_path path;

	if (cli_mail_addr_check(addr, rcpt_domain(j->conf), false, &path) != 0) {
		j->status = EX_DATAERR;
		j->bad_addr = xstrdup(addr);
		return -1;
	}
	/*
	 * SMTPUTF8 is asked for only when an envelope address needs it: UTF-8 in
	 * the header alone is no reason to bounce at a peer without the extension.
	 */
	j->smtputf8 |= path.is_utf8;
	for (size_t i = 0; i < j->rcpts_len; i++) {
		if (strcmp(j->rcpts[i], path.addr) == 0)
			return 0;
	}
	if (j->rcpts_len == j->rcpts_cap) {
		j->rcpts_cap = j->rcpts_cap ? j->rcpts_cap * 2 : 8;
		j->rcpts = xrealloc(j->rcpts, j->rcpts_cap * sizeof(char *));
	}
	j->rcpts[j->rcpts_len++] = xstrdup(path.addr);
	return 0;
}

/* Adds an address list (a command-line argument or a header value); EX_OK or EX_DATAERR. */
static int
add_rcpt_list(struct job *j, const char *what, const char *list, size_t len)
{
	int rc = cli_mail_addr_list(list, len, add_rcpt, j);

	if (rc == 0)
		return EX_OK;
	if (j->bad_addr != NULL)
		fprintf(stderr, "sendmail: %s: bad recipient address <%s>\n", what, j->bad_addr);
	else
		fprintf(stderr, "sendmail: %s: malformed address list\n", what);
	return EX_DATAERR;
}

/*
 * A command-line argument: an address list too ("a@b, Name <c@d>"), but
 * without the line breaks a header may hold: "a@b\r\nRCPT TO:<x@y>" must not
 * read as a folded list naming x@y.
 */
static int
add_rcpt_arg(struct job *j, const char *arg)
{
	for (const char *p = arg; *p != '\0'; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f) {
			fprintf(stderr, "sendmail: control character in recipient argument\n");
			return EX_DATAERR;
		}
	}
	return add_rcpt_list(j, "recipient", arg, strlen(arg));
}

/* The envelope sender: -f, else login@hostname.  EX_OK or EX_DATAERR. */
static int
set_sender(struct job *j)
{
	const char *given = j->o->sender;
	struct smtp_path path;
	struct passwd *pw;

	if (given == NULL) {
		pw = getpwuid(getuid());
		if (pw == NULL || pw->pw_name == NULL) {
			fprintf(stderr, "sendmail: who are you? (uid %d has no name; use -f)\n",
				(int)getuid());
			return EX_DATAERR;
		}
		given = pw->pw_name;
		j->sender_is_user = true;
	}
	if (cli_mail_addr_check(given, j->conf->hostname, true, &path) != 0) {
		fprintf(stderr, "sendmail: bad sender address <%s>\n", given);
		return EX_DATAERR;
	}
	j->smtputf8 |= path.is_utf8;
	j->sender = xstrdup(path.addr);
	return EX_OK;
}

/* The full name of an added From: -F, else the user's GECOS name for the default sender. */
static const char *
full_name(const struct job *j, char *buf, size_t cap)
{
	struct passwd *pw;

	if (j->o->full_name != NULL)
		return j->o->full_name;
	if (!j->sender_is_user || (pw = getpwuid(getuid())) == NULL || pw->pw_gecos == NULL)
		return NULL;
	util_strlcpy(buf, pw->pw_gecos, cap);
	buf[strcspn(buf, ",")] = '\0';
	return buf;
}

/* ---- input ---------------------------------------------------------------------------- */

struct input {
	struct cli_mail_lines lines;
	char chunk[CHUNK_LEN];
	char out[OUT_CAP];
	size_t out_len;
	bool done; /* end of file, or the "." line */
};

/*
 * Reads and converts the next chunk of stdin into in->out.  EX_OK (check
 * in->done), EX_DATAERR on a NUL, EX_TEMPFAIL on a read error or signal.
 */
static int
input_next(struct input *in)
{
	ssize_t n;
	size_t used;

	in->out_len = 0;
	do {
		n = read(STDIN_FILENO, in->chunk, sizeof(in->chunk));
	} while (n < 0 && errno == EINTR && !interrupted);
	if (interrupted) {
		fprintf(stderr, "sendmail: interrupted; nothing sent\n");
		return EX_TEMPFAIL;
	}
	if (n < 0) {
		fprintf(stderr, "sendmail: reading the message: %s\n", strerror(errno));
		return EX_TEMPFAIL;
	}
	if (n == 0) {
		cli_mail_lines_finish(&in->lines, in->out, &in->out_len);
		in->done = true;
		return EX_OK;
	}
	switch (
	    cli_mail_lines_push(&in->lines, in->chunk, (size_t)n, &used, in->out, &in->out_len)) {
	case CLI_MAIL_LINES_MORE:
		break;
	case CLI_MAIL_LINES_END:
		in->done = true;
		break;
	case CLI_MAIL_LINES_NUL:
		fprintf(stderr, "sendmail: the message contains a NUL octet\n");
		return EX_DATAERR;
	}
	return EX_OK;
}

/* Reads until the header section is complete; head then also holds the start of the body. */
static int
read_header(struct input *in, struct buf *head, struct cli_mail_split *split)
{
	size_t scanned = 0;

	for (;;) {
		int rc = input_next(in);

		if (rc != EX_OK)
			return rc;
		if (buf_append(head, in->out, in->out_len) != 0 ||
		    (head->len > HEADER_MAX && !in->done)) {
			fprintf(stderr, "sendmail: the header section is over %d octets\n",
				HEADER_MAX);
			return EX_DATAERR;
		}
		if (cli_mail_header_end(head->data, head->len, &scanned, split))
			return EX_OK;
		if (in->done) {
			cli_mail_header_all(head->data, head->len, split);
			return EX_OK;
		}
	}
}

/* ---- the message ----------------------------------------------------------------------- */

struct header_facts {
	bool resent; /* Resent-To/Cc/Bcc present: they name the recipients */
	bool has_from, has_date, has_msgid;
};

static bool
is_bcc(const struct cli_mail_field *f)
{
	return cli_mail_field_is(f, "Bcc") || cli_mail_field_is(f, "Resent-Bcc");
}

static void
scan_header(const char *h, size_t len, struct header_facts *facts)
{
	struct cli_mail_field f;
	size_t pos = 0;

	memset(facts, 0, sizeof(*facts));
	while (cli_mail_header_next(h, len, &pos, &f)) {
		facts->resent |= cli_mail_field_is(&f, "Resent-To") ||
				 cli_mail_field_is(&f, "Resent-Cc") ||
				 cli_mail_field_is(&f, "Resent-Bcc");
		facts->has_from |= cli_mail_field_is(&f, "From");
		facts->has_date |= cli_mail_field_is(&f, "Date");
		facts->has_msgid |= cli_mail_field_is(&f, "Message-ID");
	}
}

/* -t: the recipients of To/Cc/Bcc (or of their Resent- forms, as sendmail does). */
static int
extract_rcpts(struct job *j, const char *h, size_t len, bool resent)
{
	static const char *const plain[] = {"To", "Cc", "Bcc"};
	static const char *const again[] = {"Resent-To", "Resent-Cc", "Resent-Bcc"};
	const char *const *names = resent ? again : plain;
	struct cli_mail_field f;
	size_t pos = 0;

	while (cli_mail_header_next(h, len, &pos, &f)) {
		for (size_t i = 0; i < 3; i++) {
			int rc;
			if (!cli_mail_field_is(&f, names[i]))
				continue;
			rc = add_rcpt_list(j, names[i], f.value, f.value_len);
			if (rc != EX_OK)
				return rc;
		}
	}
	return EX_OK;
}

/* The header as stored: the fields minus Bcc, then From/Date/Message-ID when missing. */
static int
build_header(const struct job *j, const char *h, size_t len, const struct header_facts *facts,
	     struct buf *out)
{
	struct cli_mail_field f;
	size_t pos = 0;
	int rc = 0;

	while (cli_mail_header_next(h, len, &pos, &f)) {
		/* Bcc recipients must not see each other, nor the others them. */
		if (!is_bcc(&f))
			rc |= buf_append(out, h + f.start, f.end - f.start);
	}
	if (!facts->has_from) {
		char gecos[CLI_MAIL_NAME_MAX + 1], addr[SMTP_PATH_MAX + 32];

		if (j->sender[0] != '\0')
			util_strlcpy(addr, j->sender, sizeof(addr));
		else
			snprintf(addr, sizeof(addr), "MAILER-DAEMON@%s", j->conf->hostname);
		rc |= cli_mail_from_field(out, full_name(j, gecos, sizeof(gecos)), addr);
	}
	if (!facts->has_date) {
		char date[64];
		util_rfc5322_date(time(NULL), date, sizeof(date));
		rc |= buf_printf(out, "Date: %s\r\n", date);
	}
	if (!facts->has_msgid) {
		/* The queue id is not known before the commit; a fresh id is as unique. */
		char id[UTIL_ID_LEN + 1];
		util_id_new(id);
		rc |= buf_printf(out, "Message-ID: <%s@%s>\r\n", id, j->conf->hostname);
	}
	return rc ? -1 : 0;
}

int
cli_sendmail_spool_status(int err)
{
	switch (err) {
	case EACCES:
	case EPERM:
	case EROFS:
	case ENOTDIR:
		return EX_CANTCREAT;
	default:
		return EX_TEMPFAIL;
	}
}

/* Hands octets to the drop-off, within max_message_size. */
static int
put(struct job *j, const char *data, size_t len)
{
	uint64_t max = j->conf->max_message_size;

	if (len == 0)
		return EX_OK;
	if (max > 0 && j->written + len > max) {
		fprintf(stderr,
			"sendmail: the message is larger than max_message_size (%llu "
			"octets)\n",
			(unsigned long long)max);
		return EX_DATAERR;
	}
	if (queue_drop_write(j->drop, data, len) != 0) {
		int e = errno;
		fprintf(stderr, "sendmail: writing to the spool: %s\n", strerror(e));
		return cli_sendmail_spool_status(e);
	}
	j->written += len;
	return EX_OK;
}

int
cli_sendmail_drop_open(const struct conf *c, const struct queue_envelope *env,
		       struct queue_drop **drop, char *err, size_t err_cap)
{
	char path[4096], why[512];

	*drop = NULL;
	snprintf(path, sizeof(path), "%s/incoming", c->spool_dir);
	if (util_mkdirs(path, 0700) != 0) {
		int e = errno;
		snprintf(err, err_cap, "%s: %s", path, strerror(e));
		errno = e;
		return cli_sendmail_spool_status(e);
	}
	*drop = queue_drop_open(c->spool_dir, env, why, sizeof(why));
	if (*drop == NULL) {
		int e = errno;
		snprintf(err, err_cap, "%s", why);
		errno = e;
		return cli_sendmail_spool_status(e);
	}
	/* Root's file would be unreadable to a server that runs as `user`: it gets the file. */
	if (geteuid() == 0 && c->user != NULL) {
		const struct passwd *pw = getpwnam(c->user);

		if (pw != NULL && queue_drop_give(*drop, pw->pw_uid, pw->pw_gid) != 0) {
			int e = errno;
			snprintf(err, err_cap, "cannot give the message to %s: %s", c->user,
				 strerror(e));
			queue_drop_abort(*drop);
			*drop = NULL;
			errno = e;
			return cli_sendmail_spool_status(e);
		}
	}
	return EX_OK;
}

static int
open_drop(struct job *j)
{
	const char *const *rcpts = (const char *const *)j->rcpts;
	struct queue_envelope env = {
	    .sender = j->sender,
	    .rcpts = rcpts,
	    .rcpts_len = j->rcpts_len,
	    .helo = "",
	    .client_addr = "127.0.0.1",
	    .client_name = "localhost",
	    .protocol = "local",
	    /* 8BITMIME allows 7-bit content too; the relay says it only to peers that offer it. */
	    .body_8bit = !j->o->body_7bit,
	    .smtputf8 = j->smtputf8,
	};
	char err[512];
	int rc = cli_sendmail_drop_open(j->conf, &env, &j->drop, err, sizeof(err));

	if (rc != EX_OK)
		fprintf(stderr, "sendmail: %s\n", err);
	return rc;
}

/* Writes everything after the header section: what was read with it, then the rest of stdin. */
static int
write_body(struct job *j, struct input *in, const char *start, size_t len)
{
	int rc = put(j, start, len);

	while (rc == EX_OK && !in->done) {
		rc = input_next(in);
		if (rc == EX_OK)
			rc = put(j, in->out, in->out_len);
	}
	return rc;
}

/* Reads the message, completes the envelope, writes it into incoming/. */
static int
submit(struct job *j, struct input *in)
{
	struct cli_mail_split split;
	struct header_facts facts;
	struct buf head, out;
	const char *h;
	char id[UTIL_ID_LEN + 1], err[512];
	bool body_follows;
	int rc;

	buf_init(&head, HEADER_MAX + OUT_CAP);
	buf_init(&out, HEADER_MAX + 64 * 1024);
	rc = read_header(in, &head, &split);
	if (rc != EX_OK)
		goto out;
	h = head.data + split.header_off;
	scan_header(h, split.header_len, &facts);
	if (j->o->extract) {
		rc = extract_rcpts(j, h, split.header_len, facts.resent);
		if (rc != EX_OK)
			goto out;
	}
	if (j->rcpts_len == 0) {
		fprintf(stderr, "sendmail: no recipient addresses found in the message header\n");
		rc = EX_USAGE;
		goto out;
	}
	/* The blank line: kept, or put before a body that started without one. */
	body_follows = split.has_blank || split.body_off < head.len;
	if (build_header(j, h, split.header_len, &facts, &out) != 0 ||
	    (body_follows && buf_append_str(&out, "\r\n") != 0)) {
		fprintf(stderr, "sendmail: the header section is too large\n");
		rc = EX_DATAERR;
		goto out;
	}
	rc = open_drop(j);
	if (rc == EX_OK)
		rc = put(j, out.data, out.len);
	if (rc == EX_OK)
		rc = write_body(j, in, head.data + split.body_off, head.len - split.body_off);
	if (rc == EX_OK && queue_drop_commit(j->drop, id, err, sizeof(err)) != 0) {
		int e = errno;
		fprintf(stderr, "sendmail: %s\n", err);
		rc = cli_sendmail_spool_status(e);
	}
	if (rc != EX_OK) {
		queue_drop_abort(j->drop);
	} else if (j->o->verbose) {
		fprintf(stderr, "sendmail: queued as %s (%zu recipient%s)\n", id, j->rcpts_len,
			j->rcpts_len == 1 ? "" : "s");
	}
	j->drop = NULL;
out:
	buf_free(&head);
	buf_free(&out);
	return rc;
}

void
cli_sendmail_catch_signals(void)
{
	static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
}

bool
cli_sendmail_interrupted(void)
{
	return interrupted != 0;
}

static int
deliver(const struct opts *o, const struct conf *c)
{
	struct job j;
	struct input *in;
	char err[512];
	int rc;

	memset(&j, 0, sizeof(j));
	j.o = o;
	j.conf = c;
	rc = set_sender(&j);
	for (size_t i = 0; rc == EX_OK && i < o->rcpt_args_len; i++)
		rc = add_rcpt_arg(&j, o->rcpt_args[i]);
	if (rc == EX_OK && j.rcpts_len == 0 && !o->extract) {
		fprintf(stderr, "sendmail: no recipients given (name them, or use -t)\n");
		rc = EX_USAGE;
	}
	if (rc == EX_OK) {
		cli_sendmail_catch_signals();
		in = xcalloc(1, sizeof(*in));
		cli_mail_lines_init(&in->lines, o->dot_ends);
		rc = submit(&j, in);
		free(in);
	}
	/* Not an error when no server runs: it picks the message up when it starts. */
	if (rc == EX_OK && cli_server_wake(c->spool_dir, err, sizeof(err)) != 0 && o->verbose)
		fprintf(stderr, "sendmail: %s; the message waits in the spool\n", err);
	for (size_t i = 0; i < j.rcpts_len; i++)
		free(j.rcpts[i]);
	free(j.rcpts);
	free(j.sender);
	free(j.bad_addr);
	return rc;
}

int
cli_sendmail(int argc, char **argv)
{
	struct opts o;
	struct conf *c = NULL;
	char err[512];
	int rc;

	rc = parse_opts(argc, argv, &o);
	if (rc == EX_OK && o.mode == MODE_SMTP && o.rcpt_args_len > 0) {
		/* They come with RCPT (Postfix: "stand-alone mode requires no recipient"). */
		fprintf(stderr, "sendmail: -bs takes no recipients\n");
		rc = EX_USAGE;
	}
	if (rc == EX_OK && (o.mode == MODE_DELIVER || o.mode == MODE_SMTP)) {
		c = cli_conf_load(o.conf_file, err, sizeof(err));
		if (c == NULL) {
			fprintf(stderr, "sendmail: %s\n", err);
			rc = EX_CONFIG;
		} else if (o.mode == MODE_SMTP) {
			/* -f, -F, -t, -i do nothing here: MAIL and DATA say it all. */
			rc = cli_sendmail_bs(c);
		} else {
			rc = deliver(&o, c);
		}
	} else if (rc == EX_OK) {
		/* -bp is mailq, -q a flush: the queue commands do it. */
		char *args[5] = {"queue", o.mode == MODE_LIST ? "list" : "flush"};
		int n = 2;
		if (o.conf_file != NULL) {
			args[n++] = "-c";
			args[n++] = (char *)o.conf_file;
		}
		rc = cli_queue(n, args);
		if (rc < 0)
			rc = EX_USAGE;
	}
	conf_free(c);
	free(o.rcpt_args);
	return rc;
}
