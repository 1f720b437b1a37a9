/* An LD_PRELOAD shim that fails fsync(2) and fdatasync(2) with EIO while a control file
 * exists: the disk that loses a write under the switch (tests/test_fsync_fault.py).
 *
 * EUM_FSYNC_FAULT_FILE names the control file; while it exists every fsync/fdatasync of
 * the process returns -1 with errno EIO, and each failure is counted in EUM_FSYNC_FAULT_COUNT
 * (if set: one byte appended per failure, so the test can see the fault was met). Without
 * the control file the calls go to the C library. The data written before a failed fsync
 * stays in the page cache, as on a real disk whose writeback failed after write() returned.
 *
 * Build: gcc -shared -fPIC -O2 -o fsync_fail.so fsync_fail.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

typedef int (*sync_fn)(int);

static int faulty(void) {
    const char *control = getenv("EUM_FSYNC_FAULT_FILE");
    if (control == NULL || access(control, F_OK) != 0) {
        return 0;
    }
    const char *count = getenv("EUM_FSYNC_FAULT_COUNT");
    if (count != NULL) {
        int fd = open(count, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            (void)write(fd, "x", 1);
            close(fd);
        }
    }
    return 1;
}

static int call_real(const char *name, int fd) {
    sync_fn real = (sync_fn)dlsym(RTLD_NEXT, name);
    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    return real(fd);
}

int fsync(int fd) {
    if (faulty()) {
        errno = EIO;
        return -1;
    }
    return call_real("fsync", fd);
}

int fdatasync(int fd) {
    if (faulty()) {
        errno = EIO;
        return -1;
    }
    return call_real("fdatasync", fd);
}
