/*
 * Unit tests for src/conf: every table row below is one named cmocka test.
 * Configs are parsed from strings with conf_parse(); only the conf_load()
 * cases touch the file system (temporary files, and petrel.conf.example,
 * so run from the repository root).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conf/conf.h"

#define TLS_PAIR "tls_cert = /etc/ssl/c.pem\ntls_key = /etc/ssl/k.pem\n"
/* what a submission listener needs besides its address */
#define SUBMIT_NEEDS TLS_PAIR "users_file = /etc/petrel/users\n"
#define NAME	     "t.conf"
#define ERR_CAP	     512
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- rendering a field as text, so tables can state expected values ----- */

static void add(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
add(char *out, size_t cap, const char *fmt, ...)
{
	size_t len = strlen(out);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(out + len, cap - len, fmt, ap);
	va_end(ap);
}

static void
render_listen(const struct conf_listen *l, size_t n, char *out, size_t cap)
{
	for (size_t i = 0; i < n; i++)
		add(out, cap, strchr(l[i].host, ':') ? "%s[%s]:%u" : "%s%s:%u", i ? "," : "",
		    l[i].host, l[i].port);
}

static void
render_cidr(const struct conf_cidr *n, char *out, size_t cap)
{
	char a[INET6_ADDRSTRLEN];

	inet_ntop(n->family, n->addr, a, sizeof(a));
	add(out, cap, "%s/%u", a, n->prefix);
}

static void
render_str(const char *s, char *out, size_t cap)
{
	add(out, cap, "%s", s != NULL ? s : "(unset)");
}

/* Writes the value of `key` in c, in a canonical text form, into out. */
static void
render(const struct conf *c, const char *key, char *out, size_t cap)
{
	out[0] = '\0';
	if (strcmp(key, "hostname") == 0)
		render_str(c->hostname, out, cap);
	else if (strcmp(key, "listen_smtp") == 0)
		render_listen(c->listen_smtp, c->listen_smtp_len, out, cap);
	else if (strcmp(key, "listen_submission") == 0)
		render_listen(c->listen_submission, c->listen_submission_len, out, cap);
	else if (strcmp(key, "listen_submissions") == 0)
		render_listen(c->listen_submissions, c->listen_submissions_len, out, cap);
	else if (strcmp(key, "local_domains") == 0)
		for (size_t i = 0; i < c->local_domains_len; i++)
			add(out, cap, "%s%s", i ? "," : "", c->local_domains[i]);
	else if (strcmp(key, "mail_root") == 0)
		render_str(c->mail_root, out, cap);
	else if (strcmp(key, "spool_dir") == 0)
		render_str(c->spool_dir, out, cap);
	else if (strcmp(key, "users_file") == 0)
		render_str(c->users_file, out, cap);
	else if (strcmp(key, "aliases_file") == 0)
		render_str(c->aliases_file, out, cap);
	else if (strcmp(key, "recipient_delimiter") == 0)
		render_str(c->recipient_delimiter, out, cap);
	else if (strcmp(key, "relay_networks") == 0)
		for (size_t i = 0; i < c->relay_networks_len; i++) {
			add(out, cap, "%s", i ? "," : "");
			render_cidr(&c->relay_networks[i], out, cap);
		}
	else if (strcmp(key, "dns_resolver") == 0)
		render_str(c->dns_resolver, out, cap);
	else if (strcmp(key, "smtp_port") == 0)
		add(out, cap, "%u", c->smtp_port);
	else if (strcmp(key, "relayhost") == 0)
		render_str(c->relayhost, out, cap);
	else if (strcmp(key, "tls_cert") == 0)
		render_str(c->tls_cert, out, cap);
	else if (strcmp(key, "tls_key") == 0)
		render_str(c->tls_key, out, cap);
	else if (strcmp(key, "max_message_size") == 0)
		add(out, cap, "%llu", (unsigned long long)c->max_message_size);
	else if (strcmp(key, "max_recipients") == 0)
		add(out, cap, "%zu", c->max_recipients);
	else if (strcmp(key, "max_connections") == 0)
		add(out, cap, "%zu", c->max_connections);
	else if (strcmp(key, "max_connections_per_ip") == 0)
		add(out, cap, "%zu", c->max_connections_per_ip);
	else if (strcmp(key, "smtp_timeout") == 0)
		add(out, cap, "%u", c->smtp_timeout_s);
	else if (strcmp(key, "queue_lifetime") == 0)
		add(out, cap, "%u", c->queue_lifetime_s);
	else if (strcmp(key, "retry_min") == 0)
		add(out, cap, "%u", c->retry_min_s);
	else if (strcmp(key, "retry_max") == 0)
		add(out, cap, "%u", c->retry_max_s);
	else if (strcmp(key, "user") == 0)
		render_str(c->user, out, cap);
	else
		fail_msg("render: no such key '%s'", key);
}

static const char *const all_keys[] = {
    "hostname",
    "listen_smtp",
    "listen_submission",
    "listen_submissions",
    "local_domains",
    "mail_root",
    "spool_dir",
    "users_file",
    "aliases_file",
    "recipient_delimiter",
    "relay_networks",
    "dns_resolver",
    "smtp_port",
    "relayhost",
    "tls_cert",
    "tls_key",
    "max_message_size",
    "max_recipients",
    "max_connections",
    "max_connections_per_ip",
    "smtp_timeout",
    "queue_lifetime",
    "retry_min",
    "retry_max",
    "user",
};

static struct conf *
parse(const char *text, char *err)
{
	return conf_parse(NAME, text, strlen(text), err, ERR_CAP);
}

/* ---- valid configs: one key's resulting value --------------------------- */

struct value_case {
	const char *name;
	const char *text;
	const char *key;
	const char *want; /* render() of the key */
};

static const struct value_case value_cases[] = {
    /* Defaults (CONTRACT.md) */
    {"default listen_smtp", "", "listen_smtp", "127.0.0.1:2525"},
    {"default listen_submission", "", "listen_submission", ""},
    {"default listen_submissions", "", "listen_submissions", ""},
    {"default local_domains", "", "local_domains", "localhost"},
    {"default mail_root", "", "mail_root", "./var/mail"},
    {"default spool_dir", "", "spool_dir", "./var/spool"},
    {"default users_file", "", "users_file", "(unset)"},
    {"default aliases_file", "", "aliases_file", "(unset)"},
    {"default recipient_delimiter", "", "recipient_delimiter", "+"},
    {"default relay_networks", "", "relay_networks", "127.0.0.0/8"},
    {"default dns_resolver", "", "dns_resolver", "(unset)"},
    {"default smtp_port", "", "smtp_port", "25"},
    {"default relayhost", "", "relayhost", "(unset)"},
    {"default tls_cert", "", "tls_cert", "(unset)"},
    {"default tls_key", "", "tls_key", "(unset)"},
    {"default max_message_size", "", "max_message_size", "26214400"},
    {"default max_recipients", "", "max_recipients", "100"},
    {"default max_connections", "", "max_connections", "10000"},
    {"default max_connections_per_ip", "", "max_connections_per_ip", "50"},
    {"default smtp_timeout", "", "smtp_timeout", "300"},
    {"default queue_lifetime", "", "queue_lifetime", "432000"},
    {"default retry_min", "", "retry_min", "60"},
    {"default retry_max", "", "retry_max", "3600"},
    {"default user", "", "user", "(unset)"},
    /* Syntax */
    {"no blanks around =", "smtp_port=2525", "smtp_port", "2525"},
    {"tabs and blanks", "\t smtp_port \t=\t 587 \t", "smtp_port", "587"},
    {"comment after value", "smtp_port = 587 # submission", "smtp_port", "587"},
    {"comment glued to value", "smtp_port = 587#x", "smtp_port", "587"},
    {"CRLF line ends", "# c\r\nsmtp_port = 26\r\n", "smtp_port", "26"},
    {"last line without newline", "\n\nsmtp_port = 27", "smtp_port", "27"},
    {"comments and blank lines", "# a\n\n   # b\n\t\nsmtp_port = 28\n", "smtp_port", "28"},
    {"= inside a path value", "mail_root = /srv/a=b", "mail_root", "/srv/a=b"},
    /* hostname */
    {"hostname fqdn", "hostname = mx1.example.org", "hostname", "mx1.example.org"},
    {"hostname trailing dot dropped", "hostname = mx.example.org.", "hostname", "mx.example.org"},
    {"hostname single label", "hostname = mailhost", "hostname", "mailhost"},
    {"hostname digits and hyphen", "hostname = 1-mx.x9.example", "hostname", "1-mx.x9.example"},
    /* listeners */
    {"listen list", "listen_smtp = 0.0.0.0:25, [::]:25", "listen_smtp", "0.0.0.0:25,[::]:25"},
    {"listen by name", "listen_smtp = localhost:2525", "listen_smtp", "localhost:2525"},
    {"listen list no blanks", "listen_smtp = 127.0.0.1:25,[::1]:25", "listen_smtp",
     "127.0.0.1:25,[::1]:25"},
    {"submission none", "listen_submission = none", "listen_submission", ""},
    {"submission NONE", "listen_submission = NONE", "listen_submission", ""},
    {"submissions empty", "listen_submissions =", "listen_submissions", ""},
    {"submissions port 465", "listen_submissions = 0.0.0.0:465\n" SUBMIT_NEEDS,
     "listen_submissions", "0.0.0.0:465"},
    {"submission port 65535", "listen_submission = [::1]:65535\n" SUBMIT_NEEDS, "listen_submission",
     "[::1]:65535"},
    /* local_domains */
    {"domains lower-cased", "local_domains = Example.ORG, MAIL.example.net", "local_domains",
     "example.org,mail.example.net"},
    {"domains trailing dot", "local_domains = example.org.", "local_domains", "example.org"},
    {"domains unicode kept as a-labels",
     "local_domains = M\xc3\xbcller.Example, b\xc3\xbc"
     "cher.test.",
     "local_domains", "xn--mller-kva.example,xn--bcher-kva.test"},
    /* paths and strings */
    {"users_file", "users_file = /etc/petrel/users", "users_file", "/etc/petrel/users"},
    {"aliases_file", "aliases_file = aliases", "aliases_file", "aliases"},
    {"spool_dir", "spool_dir = /var/spool/petrel", "spool_dir", "/var/spool/petrel"},
    {"delimiter empty", "recipient_delimiter =", "recipient_delimiter", ""},
    {"delimiter several", "recipient_delimiter = +-", "recipient_delimiter", "+-"},
    {"delimiter all allowed", "recipient_delimiter = +-_=.", "recipient_delimiter", "+-_=."},
    {"user", "user = petrel", "user", "petrel"},
    {"user with dot and digits", "user = mail.2_x-y", "user", "mail.2_x-y"},
    /* relay_networks */
    {"relay list", "relay_networks = 127.0.0.0/8, ::1/128, 192.168.0.0/16", "relay_networks",
     "127.0.0.0/8,::1/128,192.168.0.0/16"},
    {"relay bare addresses", "relay_networks = 10.1.2.3, 2001:db8::1", "relay_networks",
     "10.1.2.3/32,2001:db8::1/128"},
    {"relay postfix brackets", "relay_networks = [2001:db8::]/32", "relay_networks",
     "2001:db8::/32"},
    {"relay none", "relay_networks = none", "relay_networks", ""},
    {"relay empty", "relay_networks =", "relay_networks", ""},
    /* dns_resolver */
    {"resolver default port", "dns_resolver = 127.0.0.1", "dns_resolver", "127.0.0.1:53"},
    {"resolver with port", "dns_resolver = 127.0.0.1:5353", "dns_resolver", "127.0.0.1:5353"},
    {"resolver bare v6", "dns_resolver = ::1", "dns_resolver", "[::1]:53"},
    {"resolver bracketed v6", "dns_resolver = [2001:db8::53]:5300", "dns_resolver",
     "[2001:db8::53]:5300"},
    {"resolver bracketed v6 no port", "dns_resolver = [::1]", "dns_resolver", "[::1]:53"},
    /* relayhost */
    {"relayhost name", "relayhost = smtp.isp.example", "relayhost", "smtp.isp.example"},
    {"relayhost bracketed port", "relayhost = [smtp.isp.example]:587", "relayhost",
     "[smtp.isp.example]:587"},
    {"relayhost v4 port", "relayhost = 192.0.2.1:2525", "relayhost", "192.0.2.1:2525"},
    {"relayhost v6", "relayhost = [2001:db8::25]:25", "relayhost", "[2001:db8::25]:25"},
    /* numbers */
    {"smtp_port 1", "smtp_port = 1", "smtp_port", "1"},
    {"smtp_port 65535", "smtp_port = 65535", "smtp_port", "65535"},
    {"size bare bytes", "max_message_size = 1048576", "max_message_size", "1048576"},
    {"size 1K minimum", "max_message_size = 1K", "max_message_size", "1024"},
    {"size lower-case m", "max_message_size = 10m", "max_message_size", "10485760"},
    {"size G", "max_message_size = 2G", "max_message_size", "2147483648"},
    {"max_recipients 1", "max_recipients = 1", "max_recipients", "1"},
    {"max_recipients 100000", "max_recipients = 100000", "max_recipients", "100000"},
    {"max_connections", "max_connections = 1", "max_connections", "1"},
    {"max_connections_per_ip", "max_connections_per_ip = 5", "max_connections_per_ip", "5"},
    {"timeout bare seconds", "smtp_timeout = 1", "smtp_timeout", "1"},
    {"timeout minutes", "smtp_timeout = 10m", "smtp_timeout", "600"},
    {"queue_lifetime 0", "queue_lifetime = 0", "queue_lifetime", "0"},
    {"queue_lifetime hours", "queue_lifetime = 12h", "queue_lifetime", "43200"},
    {"retry equal bounds", "retry_min = 5m\nretry_max = 300s", "retry_min", "300"},
    {"retry_max days", "retry_max = 1d", "retry_max", "86400"},
    {"retry_min raised with max", "retry_max = 4h\nretry_min = 2h", "retry_min", "7200"},
    {"tls pair", "tls_cert = /etc/ssl/c.pem\ntls_key = /etc/ssl/k.pem", "tls_key",
     "/etc/ssl/k.pem"},
};

static void
run_value_case(void **state)
{
	const struct value_case *t = *state;
	char err[ERR_CAP], got[1024];
	struct conf *c = parse(t->text, err);

	if (c == NULL)
		fail_msg("%s: unexpected error: %s", t->name, err);
	render(c, t->key, got, sizeof(got));
	assert_string_equal(got, t->want);
	assert_null(c->path);
	conf_free(c);
}

/* ---- invalid configs: the exact message --------------------------------- */

struct error_case {
	const char *name;
	const char *text;
	const char *want; /* the whole error message */
};

#define A64 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

static const struct error_case error_cases[] = {
    /* Lines and syntax */
    {"unknown key on line 7",
     "# petrel\n\nhostname = mx.example\n#\n\nsmtp_port = 25\nmax_foo = 1\n",
     NAME ":7: unknown key 'max_foo'"},
    {"line numbers count CRLF lines", "# a\r\n# b\r\nbogus = 1\r\n",
     NAME ":3: unknown key 'bogus'"},
    {"keys are case-sensitive", "Hostname = mx.example", NAME ":1: unknown key 'Hostname'"},
    {"key with blank inside", "smtp port = 25", NAME ":1: unknown key 'smtp port'"},
    {"missing =", "\nhostname mx.example\n",
     NAME ":2: missing '=' in 'hostname mx.example' (want key = value)"},
    {"missing key", "= 25", NAME ":1: missing key before '='"},
    {"duplicate key", "smtp_port = 25\n\nsmtp_port = 26",
     NAME ":3: duplicate key 'smtp_port' (first set on line 1)"},
    {"control character",
     "hostname = a\x01"
     "b",
     NAME ":1: control character 0x01 in line"},
    {"lone CR inside a line", "hostname = a\rb", NAME ":1: control character 0x0d in line"},
    {"escaped unknown key", "\xff\xfe = 1", NAME ":1: unknown key '\\xff\\xfe'"},
    /* Empty values */
    {"empty hostname", "hostname =", NAME ":1: hostname: empty value"},
    {"empty hostname after comment strip", "hostname = # none", NAME ":1: hostname: empty value"},
    {"empty listen_smtp", "listen_smtp =", NAME ":1: listen_smtp: empty value"},
    {"empty local_domains", "local_domains =", NAME ":1: local_domains: empty value"},
    {"empty mail_root", "mail_root =", NAME ":1: mail_root: empty value"},
    {"empty spool_dir", "spool_dir = ", NAME ":1: spool_dir: empty value"},
    {"empty users_file", "users_file =", NAME ":1: users_file: empty value"},
    {"empty aliases_file", "aliases_file =", NAME ":1: aliases_file: empty value"},
    {"empty dns_resolver", "dns_resolver =", NAME ":1: dns_resolver: empty value"},
    {"empty smtp_port", "smtp_port =", NAME ":1: smtp_port: empty value"},
    {"empty relayhost", "relayhost =", NAME ":1: relayhost: empty value"},
    {"empty tls_cert", "tls_cert =", NAME ":1: tls_cert: empty value"},
    {"empty max_message_size", "max_message_size =", NAME ":1: max_message_size: empty value"},
    {"empty retry_max", "retry_max =", NAME ":1: retry_max: empty value"},
    {"empty user", "user =", NAME ":1: user: empty value"},
    /* hostname */
    {"hostname underscore", "hostname = mx_1.example",
     NAME ":1: hostname: bad host name 'mx_1.example'"},
    {"hostname leading hyphen", "hostname = -mx.example",
     NAME ":1: hostname: bad host name '-mx.example'"},
    {"hostname trailing hyphen label", "hostname = mx-.example",
     NAME ":1: hostname: bad host name 'mx-.example'"},
    {"hostname empty label", "hostname = mx..example",
     NAME ":1: hostname: bad host name 'mx..example'"},
    {"hostname numeric tld", "hostname = 10.0.0.1", NAME ":1: hostname: bad host name '10.0.0.1'"},
    {"hostname two dots", "hostname = mx.example..",
     NAME ":1: hostname: bad host name 'mx.example..'"},
    {"hostname label of 64", "hostname = " A64 ".example",
     NAME ":1: hostname: bad host name '" A64 ".example'"},
    {"long value cut in message", "hostname = " A64 A64 "_",
     NAME ":1: hostname: bad host name '" A64 "aaaaaaaaaaaaaaaaaaaaaaaaaaaa...'"},
    /* listeners */
    {"listen without port", "listen_smtp = 127.0.0.1",
     NAME ":1: listen_smtp: bad listen address '127.0.0.1' (want addr:port or [addr]:port)"},
    {"listen port 0", "listen_smtp = 127.0.0.1:0",
     NAME ":1: listen_smtp: bad listen address '127.0.0.1:0' (want addr:port or [addr]:port)"},
    {"listen port 65536", "listen_smtp = 127.0.0.1:65536",
     NAME ":1: listen_smtp: bad listen address '127.0.0.1:65536' (want addr:port or [addr]:port)"},
    {"listen unbracketed v6", "listen_submission = ::1:587",
     NAME ":1: listen_submission: bad listen address '::1:587' (want addr:port or [addr]:port)"},
    {"listen smtp none", "listen_smtp = none",
     NAME ":1: listen_smtp: bad listen address 'none' (want addr:port or [addr]:port)"},
    {"listen second item bad", "listen_smtp = 127.0.0.1:25, [::1]",
     NAME ":1: listen_smtp: bad listen address '[::1]' (want addr:port or [addr]:port)"},
    {"listen trailing comma", "listen_submissions = 127.0.0.1:465,",
     NAME ":1: listen_submissions: empty list item"},
    {"listen double comma", "listen_smtp = 127.0.0.1:25,,127.0.0.1:26",
     NAME ":1: listen_smtp: empty list item"},
    /* local_domains */
    {"domain with blank", "local_domains = exa mple.org",
     NAME ":1: local_domains: bad domain name 'exa mple.org'"},
    {"domain at sign", "local_domains = example.org, user@example.net",
     NAME ":1: local_domains: bad domain name 'user@example.net'"},
    {"domain invalid idna",
     "local_domains = a\xe2\x81\x84"
     "b.example",
     NAME ":1: local_domains: bad domain name 'a\\xe2\\x81\\x84b.example'"},
    {"domain not utf-8", "local_domains = m\xfcller.example",
     NAME ":1: local_domains: bad domain name 'm\\xfcller.example'"},
    {"domain list trailing comma", "local_domains = example.org,",
     NAME ":1: local_domains: empty list item"},
    {"domains none", "local_domains = None",
     NAME ":1: local_domains: at least one domain is required"},
    {"domain numeric tld", "local_domains = none, 1.2",
     NAME ":1: local_domains: bad domain name '1.2'"},
    /* recipient_delimiter */
    {"delimiter at sign", "recipient_delimiter = +@",
     NAME ":1: recipient_delimiter: bad delimiter '+@' (allowed characters: +-_=.)"},
    {"delimiter with blank", "recipient_delimiter = + -",
     NAME ":1: recipient_delimiter: bad delimiter '+ -' (allowed characters: +-_=.)"},
    /* relay_networks */
    {"relay host bits", "relay_networks = 10.1.2.3/8",
     NAME ":1: relay_networks: network '10.1.2.3/8' has host bits set"},
    {"relay v6 host bits", "relay_networks = 2001:db8::1/32",
     NAME ":1: relay_networks: network '2001:db8::1/32' has host bits set"},
    {"relay prefix 33", "relay_networks = 10.0.0.0/33",
     NAME ":1: relay_networks: bad network '10.0.0.0/33'"},
    {"relay prefix 129", "relay_networks = ::/129",
     NAME ":1: relay_networks: bad network '::/129'"},
    {"relay name", "relay_networks = localhost",
     NAME ":1: relay_networks: bad network 'localhost'"},
    {"relay empty item", "relay_networks = 127.0.0.0/8,,::1",
     NAME ":1: relay_networks: empty list item"},
    /* dns_resolver */
    {"resolver name", "dns_resolver = dns.example",
     NAME ":1: dns_resolver: bad resolver address 'dns.example'"},
    {"resolver port 0", "dns_resolver = 127.0.0.1:0",
     NAME ":1: dns_resolver: bad resolver address '127.0.0.1:0'"},
    {"resolver bracketed v4", "dns_resolver = [127.0.0.1]:53",
     NAME ":1: dns_resolver: bad resolver address '[127.0.0.1]:53'"},
    /* smtp_port */
    {"smtp_port 0", "smtp_port = 0", NAME ":1: smtp_port: bad port '0'"},
    {"smtp_port 65536", "smtp_port = 65536", NAME ":1: smtp_port: bad port '65536'"},
    {"smtp_port negative", "smtp_port = -25", NAME ":1: smtp_port: bad port '-25'"},
    {"smtp_port name", "smtp_port = smtp", NAME ":1: smtp_port: bad port 'smtp'"},
    /* relayhost */
    {"relayhost unbracketed v6", "relayhost = 2001:db8::1",
     NAME ":1: relayhost: bad relay host '2001:db8::1'"},
    {"relayhost unclosed bracket", "relayhost = [smtp.example:25",
     NAME ":1: relayhost: bad relay host '[smtp.example:25'"},
    {"relayhost bad port", "relayhost = smtp.example:smtp",
     NAME ":1: relayhost: bad relay host 'smtp.example:smtp'"},
    {"relayhost junk after bracket", "relayhost = [smtp.example]x",
     NAME ":1: relayhost: bad relay host '[smtp.example]x'"},
    /* tls pair, reported on the line that set the lone key */
    {"tls_cert alone", "# tls\ntls_cert = /etc/ssl/c.pem\n",
     NAME ":2: tls_cert '/etc/ssl/c.pem' is set but tls_key is not"},
    {"tls_key alone", "\n\n\ntls_key = k.pem",
     NAME ":4: tls_key 'k.pem' is set but tls_cert is not"},
    /* submission listeners need TLS (AUTH is offered only under TLS) */
    {"submissions without tls", "# x\nlisten_submissions = 127.0.0.1:465",
     NAME ":2: listen_submissions needs tls_cert and tls_key"},
    {"submission without tls", "listen_submission = 127.0.0.1:587",
     NAME ":1: listen_submission needs tls_cert and tls_key"},
    /* nor without users: AUTH comes before MAIL */
    {"submission without users", "listen_submission = 127.0.0.1:587\n" TLS_PAIR,
     NAME ":1: listen_submission needs users_file (AUTH comes before MAIL there)"},
    {"submissions without users", TLS_PAIR "listen_submissions = 127.0.0.1:465\n",
     NAME ":3: listen_submissions needs users_file (AUTH comes before MAIL there)"},
    /* sizes */
    {"size bad suffix", "\n\nmax_message_size = 12X", NAME ":3: max_message_size: bad size '12X'"},
    {"size below 1K", "max_message_size = 1023",
     NAME ":1: max_message_size: '1023' is below the minimum 1024 bytes"},
    {"size T suffix", "max_message_size = 1T", NAME ":1: max_message_size: bad size '1T'"},
    {"size fraction", "max_message_size = 1.5M", NAME ":1: max_message_size: bad size '1.5M'"},
    {"size overflow", "max_message_size = 99999999999999999999",
     NAME ":1: max_message_size: bad size '99999999999999999999'"},
    /* counts */
    {"max_recipients 0", "max_recipients = 0",
     NAME ":1: max_recipients: '0' is out of range 1..100000"},
    {"max_recipients 100001", "max_recipients = 100001",
     NAME ":1: max_recipients: '100001' is out of range 1..100000"},
    {"max_recipients word", "max_recipients = ten", NAME ":1: max_recipients: bad number 'ten'"},
    {"max_connections 0", "max_connections = 0",
     NAME ":1: max_connections: '0' is below the minimum 1"},
    {"max_connections suffix", "max_connections = 10K",
     NAME ":1: max_connections: bad number '10K'"},
    {"max_connections_per_ip 0", "max_connections_per_ip = 0",
     NAME ":1: max_connections_per_ip: '0' is below the minimum 1"},
    /* durations */
    {"smtp_timeout 0", "smtp_timeout = 0s", NAME ":1: smtp_timeout: '0s' is below the minimum 1s"},
    {"smtp_timeout weeks", "smtp_timeout = 1w", NAME ":1: smtp_timeout: bad duration '1w'"},
    {"queue_lifetime word", "queue_lifetime = forever",
     NAME ":1: queue_lifetime: bad duration 'forever'"},
    {"retry_min 0", "retry_min = 0", NAME ":1: retry_min: '0' is below the minimum 1s"},
    {"retry_min above retry_max", "retry_max = 10m\nretry_min = 1h",
     NAME ":2: retry_min (3600s) is greater than retry_max (600s)"},
    {"retry_min above default max", "retry_min = 2h",
     NAME ":1: retry_min (7200s) is greater than retry_max (3600s)"},
    {"retry_max below default min", "\nretry_max = 30s",
     NAME ":2: retry_min (60s) is greater than retry_max (30s)"},
    /* user */
    {"user with blank", "user = mail user", NAME ":1: user: bad user name 'mail user'"},
    {"user leading hyphen", "user = -root", NAME ":1: user: bad user name '-root'"},
    {"user too long", "user = abcdefghijklmnopqrstuvwxyz0123456",
     NAME ":1: user: bad user name 'abcdefghijklmnopqrstuvwxyz0123456'"},
};

static void
run_error_case(void **state)
{
	const struct error_case *t = *state;
	char err[ERR_CAP];
	struct conf *c = parse(t->text, err);

	if (c != NULL) {
		conf_free(c);
		fail_msg("%s: parsed, want error: %s", t->name, t->want);
	}
	assert_string_equal(err, t->want);
}

/* ---- value parsers --------------------------------------------------- */

struct size_case {
	const char *in;
	int rc;
	uint64_t want;
};

static const struct size_case size_cases[] = {
    {"0", 0, 0},
    {"1024", 0, 1024},
    {"1K", 0, 1024},
    {"1k", 0, 1024},
    {"25M", 0, 25ull << 20},
    {"1G", 0, 1ull << 30},
    {"3g", 0, 3ull << 30},
    {"18446744073709551615", 0, UINT64_MAX},
    {"17179869183G", 0, 17179869183ull << 30},
    {"", -1, 0},
    {"K", -1, 0},
    {"12X", -1, 0},
    {"-1", -1, 0},
    {"+1", -1, 0},
    {" 1", -1, 0},
    {"1 K", -1, 0},
    {"1KB", -1, 0},
    {"1.5M", -1, 0},
    {"18446744073709551616", -1, 0},
    {"17179869184G", -1, 0},
};

static void
run_size_case(void **state)
{
	const struct size_case *t = *state;
	uint64_t got = 12345;

	assert_int_equal(conf_parse_size(t->in, &got), t->rc);
	if (t->rc == 0)
		assert_true(got == t->want);
	else
		assert_true(got == 12345);
}

struct duration_case {
	const char *in;
	int rc;
	unsigned want;
};

static const struct duration_case duration_cases[] = {
    {"60", 0, 60},
    {"60s", 0, 60},
    {"5m", 0, 300},
    {"1h", 0, 3600},
    {"5d", 0, 432000},
    {"1H", 0, 3600},
    {"0", 0, 0},
    {"4294967295", 0, 4294967295u},
    {"49710d", 0, 4294944000u},
    {"", -1, 0},
    {"s", -1, 0},
    {"1w", -1, 0},
    {"4294967296", -1, 0},
    {"49711d", -1, 0},
    {"-5", -1, 0},
    {"1h30m", -1, 0},
    {"5 m", -1, 0},
    {"1.5h", -1, 0},
};

static void
run_duration_case(void **state)
{
	const struct duration_case *t = *state;
	unsigned got = 12345;

	assert_int_equal(conf_parse_duration(t->in, &got), t->rc);
	assert_int_equal(got, t->rc == 0 ? t->want : 12345);
}

struct cidr_case {
	const char *in;
	int rc;
	const char *want; /* rendered "addr/prefix" */
};

static const struct cidr_case cidr_cases[] = {
    {"127.0.0.0/8", 0, "127.0.0.0/8"},
    {"10.1.2.3", 0, "10.1.2.3/32"},
    {"0.0.0.0/0", 0, "0.0.0.0/0"},
    {"192.168.1.128/25", 0, "192.168.1.128/25"},
    {"::1/128", 0, "::1/128"},
    {"::1", 0, "::1/128"},
    {"::/0", 0, "::/0"},
    {"[2001:db8::]/32", 0, "2001:db8::/32"},
    {"[::1]", 0, "::1/128"},
    {"::ffff:10.0.0.0/104", 0, "::ffff:10.0.0.0/104"},
    {"10.1.2.3/8", -1, NULL},
    {"192.168.1.129/25", -1, NULL},
    {"10.0.0.0/33", -1, NULL},
    {"10.0.0.0/", -1, NULL},
    {"/8", -1, NULL},
    {"10.0.0/8", -1, NULL},
    {"010.0.0.0/8", -1, NULL},
    {"::1/129", -1, NULL},
    {"2001:db8::1/32", -1, NULL},
    {"[10.0.0.0]/8", -1, NULL},
    {"10.0.0.0/+8", -1, NULL},
    {"10.0.0.0/8/8", -1, NULL},
    {"fe80::1%eth0", -1, NULL},
    {"[::1", -1, NULL},
    {"", -1, NULL},
};

static void
run_cidr_case(void **state)
{
	const struct cidr_case *t = *state;
	struct conf_cidr n;
	char got[128] = "";

	assert_int_equal(conf_parse_cidr(t->in, &n), t->rc);
	if (t->rc != 0)
		return;
	render_cidr(&n, got, sizeof(got));
	assert_string_equal(got, t->want);
	assert_int_equal(n.family, strchr(t->want, ':') ? AF_INET6 : AF_INET);
}

struct listen_case {
	const char *in;
	int rc;
	const char *host;
	unsigned port;
};

static const struct listen_case listen_cases[] = {
    {"127.0.0.1:25", 0, "127.0.0.1", 25},
    {"[::1]:587", 0, "::1", 587},
    {"[::]:25", 0, "::", 25},
    {"localhost:2525", 0, "localhost", 2525},
    {"mx.example.org:1", 0, "mx.example.org", 1},
    {"0.0.0.0:65535", 0, "0.0.0.0", 65535},
    {":25", -1, NULL, 0},
    {"127.0.0.1", -1, NULL, 0},
    {"127.0.0.1:", -1, NULL, 0},
    {"127.0.0.1:0", -1, NULL, 0},
    {"127.0.0.1:65536", -1, NULL, 0},
    {"127.0.0.1:25x", -1, NULL, 0},
    {"127.0.0.1:-25", -1, NULL, 0},
    {"::1:25", -1, NULL, 0},
    {"[::1]", -1, NULL, 0},
    {"[::1]25", -1, NULL, 0},
    {"[127.0.0.1]:25", -1, NULL, 0},
    {"[]:25", -1, NULL, 0},
    {"host_name:25", -1, NULL, 0},
    {"1.2.3:25", -1, NULL, 0},
    {"", -1, NULL, 0},
};

static void
run_listen_case(void **state)
{
	const struct listen_case *t = *state;
	struct conf_listen l = {NULL, 0};

	assert_int_equal(conf_parse_listen(t->in, &l), t->rc);
	if (t->rc != 0) {
		assert_null(l.host);
		return;
	}
	assert_string_equal(l.host, t->host);
	assert_int_equal(l.port, t->port);
	free(l.host);
}

/* ---- lookups ----------------------------------------------------------- */

struct relay_case {
	const char *name;
	const char *networks; /* NULL: the embedded default */
	const char *client;   /* numeric address; "unix" for an AF_UNIX peer */
	bool want;
};

static const struct relay_case relay_cases[] = {
    {"default loopback", NULL, "127.0.0.1", true},
    {"default other loopback", NULL, "127.255.0.9", true},
    {"default outside", NULL, "128.0.0.1", false},
    {"default v6 loopback not listed", NULL, "::1", false},
    {"default v4-mapped loopback", NULL, "::ffff:127.0.0.1", true},
    {"v4 /8 inside", "10.0.0.0/8", "10.200.1.1", true},
    {"v4 /8 outside", "10.0.0.0/8", "11.0.0.1", false},
    {"v4 /25 last inside", "192.168.1.0/25", "192.168.1.127", true},
    {"v4 /25 first outside", "192.168.1.0/25", "192.168.1.128", false},
    {"v4 /32 exact", "192.0.2.7", "192.0.2.7", true},
    {"v4 /32 neighbour", "192.0.2.7", "192.0.2.6", false},
    {"v4 /0 any v4", "0.0.0.0/0", "203.0.113.5", true},
    {"v4 /0 not v6", "0.0.0.0/0", "2001:db8::1", false},
    {"v4-mapped inside", "10.0.0.0/8", "::ffff:10.1.2.3", true},
    {"v4-mapped outside", "10.0.0.0/8", "::ffff:11.1.2.3", false},
    {"v4-compatible is not mapped", "10.0.0.0/8", "::10.1.2.3", false},
    {"v6 /128 exact", "::1/128", "::1", true},
    {"v6 /128 other", "::1/128", "::2", false},
    {"v6 /32 inside", "2001:db8::/32", "2001:db8:ffff::1", true},
    {"v6 /33 outside", "2001:db8::/33", "2001:db8:8000::1", false},
    {"v6 /33 inside", "2001:db8::/33", "2001:db8:7fff::1", true},
    {"v6 /0 not v4", "::/0", "192.0.2.1", false},
    {"v6 /0 any v6", "::/0", "fe80::1", true},
    {"mapped range as v6", "::ffff:0.0.0.0/96", "::ffff:192.0.2.1", true},
    {"second network matches", "10.0.0.0/8, 2001:db8::/32", "2001:db8::25", true},
    {"none matches nothing", "none", "127.0.0.1", false},
    {"unix socket", NULL, "unix", false},
};

static void
run_relay_case(void **state)
{
	const struct relay_case *t = *state;
	struct sockaddr_storage ss;
	char text[256], err[ERR_CAP];
	struct conf *c;

	memset(&ss, 0, sizeof(ss));
	if (strcmp(t->client, "unix") == 0) {
		ss.ss_family = AF_UNIX;
	} else if (strchr(t->client, ':') != NULL) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		s6->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, t->client, &s6->sin6_addr), 1);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		s4->sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, t->client, &s4->sin_addr), 1);
	}
	if (t->networks == NULL)
		c = conf_default();
	else {
		snprintf(text, sizeof(text), "relay_networks = %s\n", t->networks);
		c = parse(text, err);
	}
	assert_non_null(c);
	assert_int_equal(conf_in_relay_networks(c, (struct sockaddr *)&ss), t->want);
	conf_free(c);
}

struct domain_case {
	const char *name;
	const char *domains; /* NULL: the embedded default */
	const char *query;
	size_t len; /* 0: strlen(query) */
	bool want;
};

static const struct domain_case domain_cases[] = {
    {"default localhost", NULL, "localhost", 0, true},
    {"default other", NULL, "example.org", 0, false},
    {"exact", "example.org", "example.org", 0, true},
    {"upper-case query", "example.org", "EXAMPLE.Org", 0, true},
    {"upper-case config", "Example.ORG", "example.org", 0, true},
    {"trailing dot", "example.org", "example.org.", 0, true},
    {"config trailing dot", "example.org.", "example.org", 0, true},
    {"two trailing dots", "example.org", "example.org..", 0, false},
    {"prefix of entry", "example.org", "example.or", 0, false},
    {"entry is prefix", "example.org", "example.orgx", 0, false},
    {"subdomain not implied", "example.org", "mail.example.org", 0, false},
    {"parent not implied", "mail.example.org", "example.org", 0, false},
    {"empty", "example.org", "", 0, false},
    {"lone dot", "example.org", ".", 0, false},
    {"second in list", "a.example, b.example", "B.EXAMPLE", 0, true},
    {"length-limited slice", "example.org", "example.org>junk", 11, true},
    {"slice cut short", "example.org", "example.org", 7, false},
    /* a Unicode name and its A-label form are one domain (RFC 5890) */
    {"unicode query, a-label config", "xn--mller-kva.example", "m\xc3\xbcller.example", 0, true},
    {"a-label query, unicode config", "M\xc3\x9cller.example", "xn--mller-kva.example", 0, true},
    {"unicode both, case folded", "m\xc3\xbcller.example", "M\xc3\x9cLLER.EXAMPLE.", 0, true},
    {"unicode other name", "xn--mller-kva.example", "m\xc3\xb6ller.example", 0, false},
    {"unicode slice", "xn--mller-kva.example", "m\xc3\xbcller.example>x", 15, true},
    {"not utf-8", "xn--mller-kva.example", "m\xfcller.example", 0, false},
};

static void
run_domain_case(void **state)
{
	const struct domain_case *t = *state;
	char text[256], err[ERR_CAP];
	struct conf *c;

	if (t->domains == NULL)
		c = conf_default();
	else {
		snprintf(text, sizeof(text), "local_domains = %s\n", t->domains);
		c = parse(text, err);
	}
	assert_non_null(c);
	assert_int_equal(conf_is_local_domain(c, t->query, t->len != 0 ? t->len : strlen(t->query)),
			 t->want);
	conf_free(c);
}

/* ---- single tests -------------------------------------------------------- */

static void
test_default_hostname(void **state)
{
	char want[256] = "";
	struct conf *c = conf_default();

	assert_non_null(c);
	gethostname(want, sizeof(want) - 1);
	assert_string_equal(c->hostname, want[0] != '\0' ? want : "localhost");
	assert_null(c->path);
	conf_free(c);
}

/* Every key set at once, including all optional ones. */
static void
test_full_config(void **state)
{
	static const char text[] = "hostname = mx.example.org\n"
				   "listen_smtp = 0.0.0.0:25, [::]:25\n"
				   "listen_submission = 0.0.0.0:587\n"
				   "listen_submissions = 0.0.0.0:465\n"
				   "local_domains = example.org, example.net\n"
				   "mail_root = /var/mail/petrel\n"
				   "spool_dir = /var/spool/petrel\n"
				   "users_file = /etc/petrel/users\n"
				   "aliases_file = /etc/petrel/aliases\n"
				   "recipient_delimiter = +-\n"
				   "relay_networks = 127.0.0.0/8, ::1/128\n"
				   "dns_resolver = 127.0.0.1:5353\n"
				   "smtp_port = 2525\n"
				   "relayhost = [smtp.isp.example]:587\n"
				   "tls_cert = /etc/petrel/cert.pem\n"
				   "tls_key = /etc/petrel/key.pem\n"
				   "max_message_size = 50M\n"
				   "max_recipients = 500\n"
				   "max_connections = 2000\n"
				   "max_connections_per_ip = 20\n"
				   "smtp_timeout = 5m\n"
				   "queue_lifetime = 3d\n"
				   "retry_min = 5m\n"
				   "retry_max = 2h\n"
				   "user = petrel\n";
	char err[ERR_CAP];
	struct conf *c = parse(text, err);

	if (c == NULL)
		fail_msg("%s", err);
	assert_string_equal(c->hostname, "mx.example.org");
	assert_int_equal(c->listen_smtp_len, 2);
	assert_int_equal(c->listen_submission_len, 1);
	assert_int_equal(c->listen_submissions[0].port, 465);
	assert_int_equal(c->local_domains_len, 2);
	assert_string_equal(c->users_file, "/etc/petrel/users");
	assert_string_equal(c->aliases_file, "/etc/petrel/aliases");
	assert_int_equal(c->relay_networks_len, 2);
	assert_string_equal(c->dns_resolver, "127.0.0.1:5353");
	assert_int_equal(c->smtp_port, 2525);
	assert_string_equal(c->relayhost, "[smtp.isp.example]:587");
	assert_string_equal(c->tls_cert, "/etc/petrel/cert.pem");
	assert_true(c->max_message_size == 50ull << 20);
	assert_int_equal(c->max_recipients, 500);
	assert_int_equal(c->max_connections, 2000);
	assert_int_equal(c->max_connections_per_ip, 20);
	assert_int_equal(c->smtp_timeout_s, 300);
	assert_int_equal(c->queue_lifetime_s, 3 * 86400);
	assert_int_equal(c->retry_min_s, 300);
	assert_int_equal(c->retry_max_s, 7200);
	assert_string_equal(c->user, "petrel");
	conf_free(c);
}

static void
test_line_too_long(void **state)
{
	char err[ERR_CAP];
	size_t n = 4096;
	char *text = malloc(2 * n + 64);
	struct conf *c;

	/* Exactly 4096 characters is allowed (a long comment)... */
	memset(text, '#', n);
	text[n] = '\n';
	strcpy(text + n + 1, "# next\n");
	c = conf_parse(NAME, text, strlen(text), err, sizeof(err));
	assert_non_null(c);
	conf_free(c);
	/* ...4097 on line 2 is not, CR of a CRLF line end not counted. */
	strcpy(text, "# first\r\n");
	memset(text + 9, '#', n + 1);
	strcpy(text + 9 + n + 1, "\r\n");
	c = conf_parse(NAME, text, strlen(text), err, sizeof(err));
	assert_null(c);
	assert_string_equal(err, NAME ":2: line too long (more than 4096 characters)");
	free(text);
}

static void
test_too_large(void **state)
{
	char err[ERR_CAP];
	size_t n = 1024 * 1024 + 1;
	char *text = malloc(n);

	memset(text, '\n', n);
	assert_null(conf_parse(NAME, text, n, err, sizeof(err)));
	assert_string_equal(err, NAME ": file too large (more than 1048576 bytes)");
	/* One byte less is fine: blank lines. */
	struct conf *c = conf_parse(NAME, text, n - 1, err, sizeof(err));
	assert_non_null(c);
	conf_free(c);
	free(text);
}

/* Text not NUL-terminated: only len bytes may be read (ASan checks). */
static void
test_not_terminated(void **state)
{
	static const char src[] = "smtp_port = 2526";
	char err[ERR_CAP];
	char *text = malloc(sizeof(src) - 1);
	struct conf *c;

	memcpy(text, src, sizeof(src) - 1);
	c = conf_parse(NAME, text, sizeof(src) - 1, err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->smtp_port, 2526);
	conf_free(c);
	free(text);
}

/* A NUL would cut a value short if the parser used C strings on the raw text. */
static void
test_nul_byte(void **state)
{
	static const char text[] = "smtp_port = 25\nhostname = a\0b\n";
	char err[ERR_CAP];

	assert_null(conf_parse(NAME, text, sizeof(text) - 1, err, sizeof(err)));
	assert_string_equal(err, NAME ":2: NUL byte in line");
}

static void
test_small_err_buffer(void **state)
{
	char err[8];

	memset(err, 'x', sizeof(err));
	assert_null(conf_parse(NAME, "bogus = 1", 9, err, sizeof(err)));
	assert_string_equal(err, "t.conf:");
	assert_null(conf_parse(NAME, "bogus = 1", 9, NULL, 0));
	assert_null(conf_parse(NAME, "bogus = 1", 9, err, 0));
}

static void
test_free_null(void **state)
{
	conf_free(NULL);
	assert_false(conf_is_local_domain(NULL, "localhost", 9));
	assert_false(conf_in_relay_networks(NULL, NULL));
}

/* Writes text to a fresh temporary file; returns its path (static buffer). */
static const char *
temp_file(const void *text, size_t len)
{
	static char path[64];
	int fd;

	snprintf(path, sizeof(path), "/tmp/test_conf.XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	close(fd);
	return path;
}

static void
test_load_ok(void **state)
{
	static const char text[] = "hostname = mx.example.org\nsmtp_port = 26\n";
	const char *path = temp_file(text, sizeof(text) - 1);
	char err[ERR_CAP];
	struct conf *c = conf_load(path, err, sizeof(err));

	if (c == NULL)
		fail_msg("%s", err);
	assert_string_equal(c->path, path);
	assert_string_equal(c->hostname, "mx.example.org");
	assert_int_equal(c->smtp_port, 26);
	conf_free(c);
	unlink(path);
}

static void
test_load_error_names_path(void **state)
{
	static const char text[] = "# x\nsmtp_port = 0\n";
	const char *path = temp_file(text, sizeof(text) - 1);
	char err[ERR_CAP], want[ERR_CAP];

	assert_null(conf_load(path, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s:2: smtp_port: bad port '0'", path);
	assert_string_equal(err, want);
	unlink(path);
}

static void
test_load_nul(void **state)
{
	static const char text[] = "smtp_port = 25\0\n";
	const char *path = temp_file(text, sizeof(text) - 1);
	char err[ERR_CAP], want[ERR_CAP];

	assert_null(conf_load(path, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s:1: NUL byte in line", path);
	assert_string_equal(err, want);
	unlink(path);
}

static void
test_load_too_large(void **state)
{
	size_t n = 1024 * 1024 + 1;
	char *text = malloc(n);
	const char *path;
	char err[ERR_CAP], want[ERR_CAP];

	memset(text, '#', n);
	path = temp_file(text, n);
	free(text);
	assert_null(conf_load(path, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s: file too large (more than 1048576 bytes)", path);
	assert_string_equal(err, want);
	unlink(path);
}

static void
test_load_missing(void **state)
{
	char err[ERR_CAP];

	assert_null(conf_load("/nonexistent/petrel.conf", err, sizeof(err)));
	assert_string_equal(err,
			    "/nonexistent/petrel.conf: cannot open: No such file or directory");
}

static void
test_load_directory(void **state)
{
	char err[ERR_CAP];

	assert_null(conf_load("/", err, sizeof(err)));
	assert_string_equal(err, "/: cannot read: Is a directory");
}

/* The shipped example documents the defaults: loading it must equal conf_default(). */
static void
test_example_file(void **state)
{
	char err[ERR_CAP], a[1024], b[1024];
	struct conf *c = conf_load("petrel.conf.example", err, sizeof(err));
	struct conf *d = conf_default();

	if (c == NULL)
		fail_msg("%s", err);
	for (size_t i = 0; i < ARRAY_LEN(all_keys); i++) {
		render(c, all_keys[i], a, sizeof(a));
		render(d, all_keys[i], b, sizeof(b));
		if (strcmp(a, b) != 0)
			fail_msg("%s: example '%s', default '%s'", all_keys[i], a, b);
	}
	conf_free(c);
	conf_free(d);
}

/*
 * The example documents every key: with its commented-out samples switched
 * on, each key is set exactly once and the whole file is still valid.
 */
static void
test_example_samples(void **state)
{
	FILE *f = fopen("petrel.conf.example", "r");
	char line[1024], err[ERR_CAP];
	size_t len = 0, cap = 64 * 1024;
	char *text = malloc(cap);
	struct conf *c;

	assert_non_null(f);
	text[0] = '\0';
	while (fgets(line, sizeof(line), f) != NULL) {
		const char *l = line;
		for (size_t i = 0; i < ARRAY_LEN(all_keys); i++) {
			size_t n = strlen(all_keys[i]);
			if (line[0] == '#' && strncmp(line + 1, all_keys[i], n) == 0 &&
			    strncmp(line + 1 + n, " = ", 3) == 0)
				l = line + 1;
		}
		len += (size_t)snprintf(text + len, cap - len, "%s", l);
		assert_true(len < cap);
	}
	fclose(f);
	for (size_t i = 0; i < ARRAY_LEN(all_keys); i++) {
		char key[64];
		snprintf(key, sizeof(key), "\n%s = ", all_keys[i]);
		if (strstr(text, key) == NULL)
			fail_msg("petrel.conf.example does not document %s", all_keys[i]);
	}
	c = conf_parse("petrel.conf.example", text, len, err, sizeof(err));
	if (c == NULL)
		fail_msg("%s", err);
	assert_non_null(c->users_file);
	assert_non_null(c->aliases_file);
	assert_non_null(c->dns_resolver);
	assert_non_null(c->relayhost);
	assert_non_null(c->tls_cert);
	assert_non_null(c->user);
	conf_free(c);
	free(text);
}

/* ---- main ----------------------------------------------------------- */

/* Runs fn once per row of a table, each row a named test. */
static int
run_table(const char *group, CMUnitTestFunction fn, const void *rows, size_t row_size, size_t n,
	  const char *(*name_of)(const void *row))
{
	struct CMUnitTest *tests = calloc(n, sizeof(*tests));
	int failed;

	for (size_t i = 0; i < n; i++) {
		const void *row = (const char *)rows + i * row_size;
		tests[i].name = name_of(row);
		tests[i].test_func = fn;
		tests[i].initial_state = (void *)(uintptr_t)row;
	}
	failed = _cmocka_run_group_tests(group, tests, n, NULL, NULL);
	free(tests);
	return failed;
}

static const char *
value_name(const void *row)
{
	return ((const struct value_case *)row)->name;
}

static const char *
error_name(const void *row)
{
	return ((const struct error_case *)row)->name;
}

static const char *
size_name(const void *row)
{
	return ((const struct size_case *)row)->in;
}

static const char *
duration_name(const void *row)
{
	return ((const struct duration_case *)row)->in;
}

static const char *
cidr_name(const void *row)
{
	return ((const struct cidr_case *)row)->in;
}

static const char *
listen_name(const void *row)
{
	return ((const struct listen_case *)row)->in;
}

static const char *
relay_name(const void *row)
{
	return ((const struct relay_case *)row)->name;
}

static const char *
domain_name(const void *row)
{
	return ((const struct domain_case *)row)->name;
}

#define RUN_TABLE(group, fn, rows, name_of)                                                        \
	run_table(group, fn, rows, sizeof((rows)[0]), ARRAY_LEN(rows), name_of)

int
main(void)
{
	static const struct CMUnitTest single[] = {
	    cmocka_unit_test(test_default_hostname), cmocka_unit_test(test_full_config),
	    cmocka_unit_test(test_line_too_long),    cmocka_unit_test(test_too_large),
	    cmocka_unit_test(test_not_terminated),   cmocka_unit_test(test_nul_byte),
	    cmocka_unit_test(test_small_err_buffer), cmocka_unit_test(test_free_null),
	    cmocka_unit_test(test_load_ok),	     cmocka_unit_test(test_load_error_names_path),
	    cmocka_unit_test(test_load_nul),	     cmocka_unit_test(test_load_too_large),
	    cmocka_unit_test(test_load_missing),     cmocka_unit_test(test_load_directory),
	    cmocka_unit_test(test_example_file),     cmocka_unit_test(test_example_samples),
	};
	int failed = 0;

	failed += RUN_TABLE("conf values", run_value_case, value_cases, value_name);
	failed += RUN_TABLE("conf errors", run_error_case, error_cases, error_name);
	failed += RUN_TABLE("conf_parse_size", run_size_case, size_cases, size_name);
	failed +=
	    RUN_TABLE("conf_parse_duration", run_duration_case, duration_cases, duration_name);
	failed += RUN_TABLE("conf_parse_cidr", run_cidr_case, cidr_cases, cidr_name);
	failed += RUN_TABLE("conf_parse_listen", run_listen_case, listen_cases, listen_name);
	failed += RUN_TABLE("conf_in_relay_networks", run_relay_case, relay_cases, relay_name);
	failed += RUN_TABLE("conf_is_local_domain", run_domain_case, domain_cases, domain_name);
	failed += cmocka_run_group_tests_name("conf", single, NULL, NULL);
	return failed != 0;
}
