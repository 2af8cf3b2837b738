/*
 * cpufloor — how much of the machine's CPU the durable part of a message
 * costs, with no SMTP and no server: the floor under petrel's loads A and
 * A-d, where the CPU and not the disk runs out.  Two measurements, one
 * thread each, FILES messages each:
 *   maildir   what petrel's delivery does at the least, 16 copies a batch:
 *             each copy an unnamed file in new/ (O_TMPFILE) with 1,400
 *             octets written; one syncfs; each linked into new/ and closed;
 *             one fsync of new/.
 *   journal   what petrel's journal does at the least, 4 records a flush
 *             (its batches in load A-d): 4 appends of 1,400 octets to a
 *             preallocated file, one fdatasync.
 * "machine" is the busy time of all CPUs (/proc/stat: user, system, irq,
 * softirq; not idle, not iowait) over the measurement, so the kernel's
 * writeback threads and the disk's interrupts count too: run it on a quiet
 * machine.
 *
 *   cpufloor DIR FILES     prints "maildir MS journal MS" (machine ms a message)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BATCH	  16
#define PER_FLUSH 4

static char data[1400];

static void
die(const char *what)
{
	fprintf(stderr, "cpufloor: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Busy clock ticks of all CPUs since boot. */
static long long
busy_ticks(void)
{
	long long v[8] = {0};
	FILE *f = fopen("/proc/stat", "r");

	if (f == NULL)
		die("/proc/stat");
	if (fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld", &v[0], &v[1], &v[2], &v[3],
		   &v[4], &v[5], &v[6], &v[7]) != 8)
		die("/proc/stat format");
	fclose(f);
	return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]; /* all but idle and iowait */
}

static void
maildir(int new_fd, unsigned files)
{
	int fd[BATCH];
	char name[64];

	for (unsigned i = 0; i < files; i += BATCH) {
		unsigned n = files - i < BATCH ? files - i : BATCH;

		for (unsigned k = 0; k < n; k++) {
			fd[k] = openat(new_fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
			if (fd[k] < 0)
				die("O_TMPFILE");
			if (write(fd[k], data, sizeof(data)) != (ssize_t)sizeof(data))
				die("write");
		}
		if (syncfs(new_fd) != 0)
			die("syncfs");
		for (unsigned k = 0; k < n; k++) {
			snprintf(name, sizeof(name), "%u.M%u.floor", i + k, i);
			if (linkat(fd[k], "", new_fd, name, AT_EMPTY_PATH) != 0)
				die("linkat");
			close(fd[k]);
		}
		if (fsync(new_fd) != 0)
			die("fsync new/");
	}
}

static void
journal(int dir_fd, unsigned files)
{
	int fd = openat(dir_fd, "journal", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	off_t off = 0;

	if (fd < 0 || posix_fallocate(fd, 0, (off_t)files * sizeof(data)) != 0 || fsync(fd) != 0)
		die("journal");
	for (unsigned i = 0; i < files; i++) {
		if (pwrite(fd, data, sizeof(data), off) != (ssize_t)sizeof(data))
			die("pwrite");
		off += (off_t)sizeof(data);
		if ((i + 1) % PER_FLUSH == 0 && fdatasync(fd) != 0)
			die("fdatasync");
	}
	close(fd);
}

int
main(int argc, char **argv)
{
	unsigned files;
	int dir_fd, new_fd;
	long long t0, t1, t2;
	double ms_tick;

	if (argc != 3 || (files = (unsigned)strtoul(argv[2], NULL, 10)) == 0) {
		fprintf(stderr, "usage: cpufloor DIR FILES\n");
		return 2;
	}
	memset(data, 'x', sizeof(data));
	if (mkdir(argv[1], 0700) != 0 && errno != EEXIST)
		die(argv[1]);
	dir_fd = open(argv[1], O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (dir_fd < 0 || (mkdirat(dir_fd, "new", 0700) != 0 && errno != EEXIST))
		die("new/");
	new_fd = openat(dir_fd, "new", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (new_fd < 0)
		die("new/");
	ms_tick = 1000.0 / (double)sysconf(_SC_CLK_TCK);
	t0 = busy_ticks();
	maildir(new_fd, files);
	t1 = busy_ticks();
	journal(dir_fd, files);
	t2 = busy_ticks();
	printf("maildir %.3f journal %.3f\n", (double)(t1 - t0) * ms_tick / files,
	       (double)(t2 - t1) * ms_tick / files);
	return 0;
}
