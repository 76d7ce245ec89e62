#!/usr/bin/env python3
"""A pass-through FUSE filesystem whose writes and syncs can be made slow while it is mounted.

The chaos suite's slow disk: this machine has no device mapper (no dm-delay) and no netem, so a
node's data dir is mounted through this process instead. Every write, fsync and fdatasync waits
the number of milliseconds in CONTROL (a file outside the mount, read at most every 100 ms;
absent or 0 means full speed). The node's own syscalls are real and go through the kernel's FUSE
layer to the backing directory, so what sled sees is a disk whose writes take that long.

    slowfs.py BACKING_DIR MOUNT_POINT CONTROL_FILE

Runs in the foreground until unmounted (fusermount -u MOUNT_POINT) or killed. Needs fusepy
(PyPI) and libfuse2 (Debian), and /dev/fuse.
"""

import errno
import os
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations


class Delay:
    """The current delay in seconds, from the control file, re-read at most every 100 ms."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.read_at = 0.0
        self.seconds = 0.0

    def wait(self):
        now = time.monotonic()
        with self.lock:
            if now - self.read_at > 0.1:
                self.read_at = now
                try:
                    with open(self.path) as control:
                        self.seconds = max(0.0, float(control.read().strip() or 0) / 1000.0)
                except (OSError, ValueError):
                    self.seconds = 0.0
            seconds = self.seconds
        if seconds:
            time.sleep(seconds)


class SlowPassthrough(Operations):
    def __init__(self, backing, delay):
        self.backing = backing
        self.delay = delay

    def _path(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def __call__(self, op, *args):
        # Every OSError becomes the errno the app sees, as the real filesystem would give it.
        try:
            return super().__call__(op, *args)
        except OSError as error:
            raise FuseOSError(error.errno or errno.EIO)

    # Metadata: straight through.
    def access(self, path, mode):
        if not os.access(self._path(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._path(path), uid, gid)

    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
                "st_uid", "st_blocks")
        return {key: getattr(st, key) for key in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def readlink(self, path):
        return os.readlink(self._path(path))

    def mkdir(self, path, mode):
        return os.mkdir(self._path(path), mode)

    def rmdir(self, path):
        return os.rmdir(self._path(path))

    def unlink(self, path):
        return os.unlink(self._path(path))

    def symlink(self, name, target):
        return os.symlink(target, self._path(name))

    def rename(self, old, new):
        return os.rename(self._path(old), self._path(new))

    def link(self, target, name):
        return os.link(self._path(name), self._path(target))

    def utimens(self, path, times=None):
        return os.utime(self._path(path), times)

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")
        return {key: getattr(st, key) for key in keys}

    # Files.
    # Writes come with their offset (the kernel resolves O_APPEND), so the backing file is
    # opened without it; and create gets no flags from fusepy, so it opens read-write (an app
    # that creates a file and reads it back through the same descriptor, as the export
    # buffer's segments do, would otherwise get EBADF).
    def open(self, path, flags):
        return os.open(self._path(path), flags & ~os.O_APPEND)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path, length, offset, fh):
        return os.pread(fh, length, offset)

    def write(self, path, data, offset, fh):
        self.delay.wait()
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        with open(self._path(path), "r+") as f:
            f.truncate(length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return os.close(fh)

    def fsync(self, path, fdatasync, fh):
        self.delay.wait()
        if fdatasync:
            return os.fdatasync(fh)
        return os.fsync(fh)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: slowfs.py BACKING_DIR MOUNT_POINT CONTROL_FILE")
    backing, mount, control = sys.argv[1:]
    FUSE(SlowPassthrough(os.path.realpath(backing), Delay(control)), mount, foreground=True,
         nothreads=False, allow_other=True)


if __name__ == "__main__":
    main()
