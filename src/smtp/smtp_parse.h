/*
 * smtp_parse — the grammar of SMTP commands and addresses (RFC 5321 4.1,
 * RFC 6531 for UTF-8, RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 3030 BDAT).
 *
 * Pure functions over {pointer, length}: no allocation, no I/O, no state.
 * Results that point into the input ("borrowed") are valid as long as the
 * input is.  Policy (which domains are ours, which users exist) is not
 * decided here; these functions only say what the client wrote.
 */
#ifndef PETREL_SMTP_PARSE_H
#define PETREL_SMTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTP_LINE_MAX	    1000 /* a command or text line, CRLF included (RFC 5321 4.5.3.1.4/6) */
#define SMTP_PATH_MAX	    256	 /* reverse-path / forward-path (RFC 5321 4.5.3.1.3) */
#define SMTP_LOCAL_MAX	    64	 /* local part (RFC 5321 4.5.3.1.1) */
#define SMTP_DOMAIN_MAX	    255	 /* domain (RFC 5321 4.5.3.1.2) */
#define SMTP_AUTH_PARAM_MAX 500	 /* MAIL's AUTH= value (RFC 4954 3 lengthens MAIL by 500) */

enum smtp_verb {
	SMTP_VERB_UNKNOWN,
	SMTP_VERB_HELO,
	SMTP_VERB_EHLO,
	SMTP_VERB_MAIL,
	SMTP_VERB_RCPT,
	SMTP_VERB_DATA,
	SMTP_VERB_BDAT,
	SMTP_VERB_RSET,
	SMTP_VERB_NOOP,
	SMTP_VERB_VRFY,
	SMTP_VERB_EXPN,
	SMTP_VERB_HELP,
	SMTP_VERB_QUIT,
	SMTP_VERB_STARTTLS,
	SMTP_VERB_AUTH,
};
#define SMTP_VERB_COUNT (SMTP_VERB_AUTH + 1)

struct smtp_command {
	enum smtp_verb verb;
	const char *arg; /* borrowed: text after the verb and its separating space(s); "" if none */
	size_t arg_len;	 /* trailing spaces removed */
};

/*
 * Splits one command line (CRLF already removed) into verb and argument.
 * The verb is matched case-insensitively and must be followed by a space or
 * the end of the line ("MAILX" is SMTP_VERB_UNKNOWN).  Never fails: anything
 * unrecognised is SMTP_VERB_UNKNOWN.
 */
void smtp_parse_command(const char *line, size_t len, struct smtp_command *out);

/* The result of parsing a MAIL FROM / RCPT TO argument; the session maps each to a reply. */
enum smtp_arg_status {
	SMTP_ARG_OK,
	SMTP_ARG_SYNTAX,	/* missing "FROM:"/"TO:" or no <...>: 501 5.5.2 */
	SMTP_ARG_PATH_SYNTAX,	/* malformed address: 501 5.1.7 (MAIL) / 501 5.1.3 (RCPT) */
	SMTP_ARG_PATH_TOO_LONG, /* path, local part or domain over its RFC limit: 501 5.1.7 / 5.1.3
				 */
	SMTP_ARG_PARAM_UNKNOWN, /* parameter keyword we do not implement: 555 5.5.4 */
	SMTP_ARG_PARAM_INVALID, /* known keyword, bad value or repeated: 501 5.5.4 */
};

struct smtp_path {
	bool is_null;	    /* MAIL FROM:<> */
	bool is_postmaster; /* RCPT TO:<Postmaster> with no domain (RFC 5321 4.1.1.3) */
	bool is_utf8;	    /* non-ASCII octets in local part or domain (needs SMTPUTF8) */
	bool quoted;	    /* the local part was a quoted-string */
	/*
	 * The address as it goes back on the wire: "local@domain", the local
	 * part quoted exactly when it must be (RFC 5321 4.1.2), the domain as
	 * given.  Source routes (<@a,@b:x@y>) are accepted and dropped (RFC 5321
	 * 4.1.1.3, Appendix C).  "" for the null path, "Postmaster" for the
	 * special postmaster recipient.
	 */
	char addr[SMTP_PATH_MAX + 1];
	/* The local part with quoting and backslash escapes undone. */
	char local[SMTP_PATH_MAX + 1];
	size_t local_len;
	/* The domain as given (case kept); an address literal keeps its brackets. */
	char domain[SMTP_DOMAIN_MAX + 1];
	size_t domain_len;
};

enum smtp_body_type { SMTP_BODY_7BIT, SMTP_BODY_8BITMIME, SMTP_BODY_BINARYMIME };

struct smtp_mail_params {
	bool has_size;
	uint64_t size; /* SIZE= (RFC 1870); a value past UINT64_MAX is UINT64_MAX */
	enum smtp_body_type body;
	bool smtputf8; /* SMTPUTF8 (RFC 6531) */
};

/*
 * Parses the argument of MAIL ("FROM:<path> [params]").  A space between
 * "FROM:" and "<" is tolerated (as most MTAs do).  Keywords are matched
 * case-insensitively: SIZE=digits, BODY=7BIT|8BITMIME, SMTPUTF8 (no value),
 * and, only when auth_offered (the session advertised AUTH), AUTH=<> or
 * AUTH=xtext (RFC 4954 5, at most SMTP_AUTH_PARAM_MAX octets), which is
 * checked and not kept.  Returns SMTP_ARG_OK and fills path and params, or
 * the first problem found.
 */
enum smtp_arg_status smtp_parse_mail_from(const char *arg, size_t len, bool auth_offered,
					  struct smtp_path *path, struct smtp_mail_params *params);
/*
 * Parses the argument of RCPT ("TO:<path> [params]").  No RCPT parameters
 * are implemented yet: any parameter is SMTP_ARG_PARAM_UNKNOWN.  The null
 * path is a syntax error for RCPT.
 */
enum smtp_arg_status smtp_parse_rcpt_to(const char *arg, size_t len, struct smtp_path *path);

/*
 * Parses a BDAT argument: "<size> [LAST]" (RFC 3030).  Returns 0 and fills
 * size and last, or -1 on syntax error (missing/non-numeric/overflowing size,
 * anything else after it).
 */
int smtp_parse_bdat(const char *arg, size_t len, uint64_t *size, bool *last);

/*
 * True when a HELO/EHLO argument is acceptable: non-empty, one word of
 * printable octets (UTF-8 allowed), at most SMTP_DOMAIN_MAX octets.  As
 * Postfix does, it does not insist on a resolvable domain.
 */
bool smtp_helo_arg_valid(const char *arg, size_t len);

/* True when s[0..len) is well-formed UTF-8 (no overlongs, no surrogates). */
bool smtp_utf8_valid(const char *s, size_t len);

#endif
