/*
 * unit_tmpdir — one scratch directory per cmocka group: created by
 * group_setup, removed with everything below it by group_teardown.
 * Include after defining  static char tmp_root[] = "/tmp/petrel-test-NAME-XXXXXX";
 */
#ifndef PETREL_UNIT_TMPDIR_H
#define PETREL_UNIT_TMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int
group_setup(void **state)
{
	return mkdtemp(tmp_root) != NULL ? 0 : -1;
}

static int
group_teardown(void **state)
{
	return nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
