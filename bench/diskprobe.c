/*
 * diskprobe — how many messages per second this disk can make durable, with
 * no SMTP and no server at all: the ceiling under every load of the
 * benchmark.  Each "message" is what a Maildir delivery costs at the least:
 * create tmp/N, write 1,400 octets, fdatasync, close, rename to new/N,
 * fsync new/.  THREADS threads do it at once (one fsync of new/ each: no
 * sharing), FILES files in all.
 *
 *   diskprobe DIR THREADS FILES      prints "files/s"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int tmp_fd, new_fd;
static unsigned per_thread;
static char data[1400];

static void
die(const char *what)
{
	fprintf(stderr, "diskprobe: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void *
run(void *arg)
{
	unsigned id = (unsigned)(size_t)arg;
	char name[64];

	for (unsigned i = 0; i < per_thread; i++) {
		int fd;

		snprintf(name, sizeof(name), "t%u.%u", id, i);
		fd = openat(tmp_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0)
			die("create");
		if (write(fd, data, sizeof(data)) != (ssize_t)sizeof(data) || fdatasync(fd) != 0)
			die("write");
		close(fd);
		if (renameat(tmp_fd, name, new_fd, name) != 0 || fsync(new_fd) != 0)
			die("rename");
	}
	return NULL;
}

int
main(int argc, char **argv)
{
	unsigned threads, files;
	pthread_t t[256];
	struct timespec a, b;
	char path[4096];
	double s;

	if (argc != 4 || (threads = (unsigned)atoi(argv[2])) == 0 || threads > 256 ||
	    (files = (unsigned)atoi(argv[3])) == 0) {
		fprintf(stderr, "usage: diskprobe DIR THREADS FILES\n");
		return 2;
	}
	per_thread = files / threads;
	memset(data, 'x', sizeof(data));
	snprintf(path, sizeof(path), "%s/tmp", argv[1]);
	if (mkdir(argv[1], 0700) != 0 || mkdir(path, 0700) != 0 ||
	    (tmp_fd = open(path, O_RDONLY | O_DIRECTORY)) < 0)
		die(path);
	snprintf(path, sizeof(path), "%s/new", argv[1]);
	if (mkdir(path, 0700) != 0 || (new_fd = open(path, O_RDONLY | O_DIRECTORY)) < 0)
		die(path);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (unsigned i = 0; i < threads; i++)
		if (pthread_create(&t[i], NULL, run, (void *)(size_t)i) != 0)
			die("pthread_create");
	for (unsigned i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	clock_gettime(CLOCK_MONOTONIC, &b);
	s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
	printf("%.0f\n", (double)(per_thread * threads) / s);
	return 0;
}
