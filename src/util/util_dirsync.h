/*
 * util_dirsync — group commit of directory flushes.
 *
 * A rename or a new name in a directory survives a crash only once the
 * directory itself is flushed.  When many threads rename files into the same
 * directory at about the same time, one fsync can make all of their names
 * durable: util_dirsync() lets the first caller flush on behalf of every
 * caller that arrived before its flush began, while later callers wait for
 * the next flush.  Directories are told apart by device and inode, so
 * callers may hold different descriptors of the same directory.
 *
 * Blocking: call it from a worker thread, never from the event loop.
 */
#ifndef PETREL_UTIL_DIRSYNC_H
#define PETREL_UTIL_DIRSYNC_H

/*
 * Returns once a flush of dir_fd's directory that began after this call
 * has completed: 0, or -1 with errno set (the error of that flush, which
 * every caller it covered receives).
 */
int util_dirsync(int dir_fd);

#endif
