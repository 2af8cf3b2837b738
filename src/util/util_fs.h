/*
 * util_fs — small file-system helpers.
 */
#ifndef PETREL_UTIL_FS_H
#define PETREL_UTIL_FS_H

#include <sys/types.h>

/* mkdir -p: creates path and its missing parents with mode.  0, or -1 with errno. */
int util_mkdirs(const char *path, mode_t mode);

#endif
