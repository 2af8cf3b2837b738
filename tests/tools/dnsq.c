/*
 * dnsq — drives relay_dns from the command line, for tests/integration/test_dns.py.
 *
 *   dnsq [-r addr:port] [-t timeout_s] [-s pause_s | -k] [-a] DOMAIN...
 *
 * Looks the DOMAINs up at once (through a dns_resolver-style `addr:port`, or
 * /etc/resolv.conf without -r), runs a poll() loop on relay_dns_fd(), and
 * prints each result as it arrives:
 *
 *   domain b.test
 *   status OK
 *   target 10 mx1.b.test 127.0.0.3 ::3
 *   end
 *
 * or "status NXDOMAIN" followed by "error TEXT".  -s looks the domains up
 * one after another, pausing pause_s seconds after each result.  -k cancels
 * every other lookup from inside the first callback.  -a looks the names up
 * with relay_dns_lookup_host() (A and AAAA only, no MX).  Exit status: 0 when
 * every lookup finished, 2 on a usage error, 3 when the timeout passed first.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay/relay_dns.h"
#include "util/util_mem.h"
#include "util/util_time.h"

#define USAGE "usage: dnsq [-r addr:port] [-t timeout_s] [-s pause_s | -k] [-a] DOMAIN...\n"

struct run {
	struct relay_dns_query **queries; /* NULL once finished or cancelled */
	size_t len;
	size_t finished;
	bool cancel_others;
};

static void
print_addr(const struct sockaddr_storage *ss)
{
	char text[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, text, sizeof(text));
	else if (ss->ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, text,
			  sizeof(text));
	printf(" %s", text);
}

static void
print_result(const struct relay_dns_result *res)
{
	printf("domain %s\nstatus %s\n", res->domain, relay_dns_status_name(res->status));
	if (res->error[0] != '\0')
		printf("error %s\n", res->error);
	for (size_t i = 0; i < res->targets_len; i++) {
		const struct relay_dns_target *t = &res->targets[i];

		printf("target %u %s", t->preference, t->hostname);
		for (size_t k = 0; k < t->addrs_len; k++)
			print_addr(&t->addrs[k]);
		printf("\n");
	}
	printf("end\n");
	fflush(stdout);
}

/* The callback's arg is a slot of run->queries. */
static struct run *the_run;

static void
on_result(const struct relay_dns_result *res, void *arg)
{
	struct relay_dns_query **slot = arg;
	struct run *run = the_run;

	print_result(res);
	*slot = NULL;
	run->finished++;
	if (!run->cancel_others)
		return;
	run->cancel_others = false;
	for (size_t i = 0; i < run->len; i++) {
		if (run->queries[i] != NULL) {
			relay_dns_cancel(run->queries[i]);
			run->queries[i] = NULL;
			run->finished++;
			printf("cancelled %zu\n", i);
		}
	}
	fflush(stdout);
}

/* Polls until `count` lookups have finished; false when the deadline passed. */
static bool
wait_for(struct relay_dns *dns, const struct run *run, size_t count, uint64_t deadline_ms)
{
	while (run->finished < count) {
		struct pollfd pfd = {.fd = relay_dns_fd(dns), .events = POLLIN};
		uint64_t now = util_now_ms();

		if (now >= deadline_ms)
			return false;
		if (poll(&pfd, 1, (int)(deadline_ms - now)) > 0)
			relay_dns_process(dns);
	}
	return true;
}

int
main(int argc, char **argv)
{
	const char *resolver = NULL;
	unsigned timeout_s = 60;
	int pause_s = -1;
	struct run run = {0};
	char err[256];
	struct relay_dns *dns;
	uint64_t deadline_ms;
	bool ok = true;
	bool host_only = false;
	int opt;

	while ((opt = getopt(argc, argv, "r:t:s:ka")) != -1) {
		switch (opt) {
		case 'r':
			resolver = optarg;
			break;
		case 't':
			timeout_s = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 's':
			pause_s = atoi(optarg);
			break;
		case 'k':
			run.cancel_others = true;
			break;
		case 'a':
			host_only = true;
			break;
		default:
			fputs(USAGE, stderr);
			return 2;
		}
	}
	if (optind >= argc || (pause_s >= 0 && run.cancel_others)) {
		fputs(USAGE, stderr);
		return 2;
	}
	dns = relay_dns_new(resolver, err, sizeof(err));
	if (dns == NULL) {
		fprintf(stderr, "dnsq: %s\n", err);
		return 2;
	}
	the_run = &run;
	run.len = (size_t)(argc - optind);
	run.queries = xcalloc(run.len, sizeof(*run.queries));
	deadline_ms = util_now_ms() + (uint64_t)timeout_s * 1000;
	for (size_t i = 0; i < run.len && ok; i++) {
		const char *name = argv[optind + (int)i];

		run.queries[i] = host_only
				     ? relay_dns_lookup_host(dns, name, on_result, &run.queries[i])
				     : relay_dns_lookup_mx(dns, name, on_result, &run.queries[i]);
		if (pause_s >= 0) {
			ok = wait_for(dns, &run, i + 1, deadline_ms);
			if (ok && i + 1 < run.len)
				sleep((unsigned)pause_s);
		}
	}
	if (ok)
		ok = wait_for(dns, &run, run.len, deadline_ms);
	relay_dns_free(dns);
	free(run.queries);
	if (!ok) {
		printf("timeout\n");
		return 3;
	}
	return 0;
}
