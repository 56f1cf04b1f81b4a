"""The WASI path calls (``path_*``) of :class:`wasmig.wasi.preview1.Wasi`: every path is resolved
beneath a preopened directory by :mod:`wasmig.wasi.sandbox`, never outside it."""

from __future__ import annotations

import os
import stat as stat_mod

from wasmig.wasi import constants as C
from wasmig.wasi import sandbox
from wasmig.wasi.errno import Errno, WasiError
from wasmig.wasi.fdtable import DIR, FILE, FdEntry, FdTable
from wasmig.wasi.filestat import filetype_of_mode, pack_filestat


class PathCalls:
    """The ``path_*`` calls, mixed into :class:`~wasmig.wasi.preview1.Wasi`."""

    fds: FdTable  # the state these calls share with the rest of preview1.Wasi

    # --- paths ---------------------------------------------------------------------------------------
    def _path(self, ptr: int, length: int) -> str:
        path = self.mem.string(ptr, length)
        if "\0" in path:
            raise WasiError(Errno.INVAL, "path contains NUL")
        return path

    def _resolve(self, fd: int, path_ptr: int, path_len: int, *, follow: bool, need: int) -> tuple[int, str]:
        return self._resolve_str(fd, self._path(path_ptr, path_len), follow=follow, need=need)

    def _resolve_str(self, fd: int, path: str, *, follow: bool, need: int) -> tuple[int, str]:
        """``path`` beneath directory fd ``fd``, which must hold the rights ``need``."""
        entry = self._need(self._dir(fd), need)
        return sandbox.resolve(entry.fileno(), path, follow_final=follow)

    def path_create_directory(self, fd: int, path: int, path_len: int) -> None:
        # a trailing '/' names the directory to create ("newdir/" works, as under wasmtime)
        guest = self._path(path, path_len)
        parent, name = self._resolve_str(fd, guest.rstrip("/") or guest, follow=False,
                                          need=C.RIGHT_PATH_CREATE_DIRECTORY)
        try:
            if name == ".":
                raise WasiError(Errno.EXIST)
            os.mkdir(name, dir_fd=parent)
        finally:
            os.close(parent)

    def path_filestat_get(self, fd: int, flags: int, path: int, path_len: int, buf: int) -> None:
        parent, name = self._resolve(fd, path, path_len, follow=bool(flags & C.LOOKUP_SYMLINK_FOLLOW),
                                     need=C.RIGHT_PATH_FILESTAT_GET)
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)
        self.mem.write(buf, pack_filestat(st))

    def path_filestat_set_times(self, fd: int, flags: int, path: int, path_len: int, atim: int, mtim: int,
                                fst_flags: int) -> None:
        parent, name = self._resolve(fd, path, path_len, follow=bool(flags & C.LOOKUP_SYMLINK_FOLLOW),
                                     need=C.RIGHT_PATH_FILESTAT_SET_TIMES)
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            os.utime(name, ns=self._times(st, atim, mtim, fst_flags), dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)

    def path_link(self, old_fd: int, old_flags: int, old_path: int, old_len: int, new_fd: int, new_path: int,
                  new_len: int) -> None:
        if old_flags & C.LOOKUP_SYMLINK_FOLLOW:
            raise WasiError(Errno.INVAL, "path_link does not follow symlinks")
        self._need(self._dir(new_fd), C.RIGHT_PATH_LINK_TARGET)
        src_parent, src = self._resolve(old_fd, old_path, old_len, follow=False, need=C.RIGHT_PATH_LINK_SOURCE)
        try:
            dst_parent, dst = self._resolve(new_fd, new_path, new_len, follow=False, need=C.RIGHT_PATH_LINK_TARGET)
            try:
                os.link(src, dst, src_dir_fd=src_parent, dst_dir_fd=dst_parent, follow_symlinks=False)
            finally:
                os.close(dst_parent)
        finally:
            os.close(src_parent)

    def path_open(self, fd: int, dirflags: int, path: int, path_len: int, oflags: int, rights_base: int,
                  rights_inheriting: int, fdflags: int, fd_ptr: int) -> None:
        dir_entry = self._dir(fd)
        guest_rel = self._path(path, path_len)
        writing = C.RIGHT_FD_DATASYNC | C.RIGHT_FD_WRITE | C.RIGHT_FD_ALLOCATE | C.RIGHT_FD_FILESTAT_SET_SIZE
        if oflags & C.OFLAGS_DIRECTORY and rights_base & writing:
            raise WasiError(Errno.ISDIR)
        # the directory needs path_open, plus path_create_file to create and path_filestat_set_size
        # to truncate; the new fd gets the rights asked for that the directory passes on (its
        # inheriting rights), the rest silently dropped, and its open mode follows from those
        self._need(dir_entry, C.RIGHT_PATH_OPEN | (C.RIGHT_PATH_CREATE_FILE if oflags & C.OFLAGS_CREAT else 0)
                   | (C.RIGHT_PATH_FILESTAT_SET_SIZE if oflags & C.OFLAGS_TRUNC else 0))
        allowed = dir_entry.rights_inheriting
        read = bool(rights_base & allowed & (C.RIGHT_FD_READ | C.RIGHT_FD_READDIR))
        write = bool(rights_base & allowed & writing)
        flags = os.O_CLOEXEC | (os.O_RDWR if read and write else os.O_WRONLY if write else os.O_RDONLY)
        if oflags & C.OFLAGS_CREAT:
            flags |= os.O_CREAT
        if oflags & C.OFLAGS_EXCL:
            flags |= os.O_EXCL
        if oflags & C.OFLAGS_TRUNC:
            flags |= os.O_TRUNC
        if oflags & C.OFLAGS_DIRECTORY:
            flags |= os.O_DIRECTORY
        if fdflags & C.FDFLAGS_APPEND:
            flags |= os.O_APPEND
        if fdflags & C.FDFLAGS_NONBLOCK:
            flags |= os.O_NONBLOCK
        if fdflags & (C.FDFLAGS_SYNC | C.FDFLAGS_RSYNC):
            flags |= os.O_SYNC
        if fdflags & C.FDFLAGS_DSYNC:
            flags |= os.O_DSYNC
        host = sandbox.open_beneath(dir_entry.fileno(), guest_rel, flags,
                                    follow_final=bool(dirflags & C.LOOKUP_SYMLINK_FOLLOW))
        try:
            st = os.fstat(host)
            is_dir = stat_mod.S_ISDIR(st.st_mode)
            if is_dir and write:
                raise WasiError(Errno.ISDIR)
            try:
                host_path = os.readlink(f"/proc/self/fd/{host}")
            except OSError:
                host_path = None
            entry = FdEntry(
                DIR if is_dir else FILE, filetype_of_mode(st.st_mode),
                rights_base & allowed & (C.RIGHTS_DIR if is_dir else C.RIGHTS_FILE),
                rights_inheriting & allowed, fdflags & (C.FDFLAGS_APPEND | C.FDFLAGS_NONBLOCK | C.FDFLAGS_SYNC
                                                        | C.FDFLAGS_DSYNC | C.FDFLAGS_RSYNC),
                guest_path=f"{dir_entry.guest_path}/{guest_rel}", host_path=host_path,
                readable=read or is_dir, writable=write, host_fd=host)
            new_fd = self.fds.add(entry)
        except BaseException:
            os.close(host)
            raise
        try:
            self.mem.set_u32(fd_ptr, new_fd)
        except WasiError:
            self.fds.remove(new_fd).close()
            raise

    def path_readlink(self, fd: int, path: int, path_len: int, buf: int, buf_len: int, bufused_ptr: int) -> None:
        parent, name = self._resolve(fd, path, path_len, follow=False, need=C.RIGHT_PATH_READLINK)
        try:
            target_text = os.readlink(name, dir_fd=parent)
        finally:
            os.close(parent)
        if target_text.startswith("/"):
            raise WasiError(Errno.PERM, "the link's target is an absolute host path")
        target = target_text.encode("utf-8", "surrogateescape")
        data = target[:buf_len]
        self.mem.write(buf, data)
        self.mem.set_u32(bufused_ptr, len(data))

    def path_remove_directory(self, fd: int, path: int, path_len: int) -> None:
        # a trailing '/' names the directory itself, as POSIX (and wasmtime since 51) has it:
        # "d/" removes d; "link/" is the link, which is no directory (ENOTDIR), never its target
        guest = self._path(path, path_len)
        parent, name = self._resolve_str(fd, guest.rstrip("/") or guest, follow=False,
                                         need=C.RIGHT_PATH_REMOVE_DIRECTORY)
        try:
            if name == ".":
                raise WasiError(Errno.INVAL)
            os.rmdir(name, dir_fd=parent)
        finally:
            os.close(parent)

    def path_rename(self, fd: int, old_path: int, old_len: int, new_fd: int, new_path: int, new_len: int) -> None:
        # resolve without trailing slashes, then keep them on the names so renameat checks "is a directory"
        old_guest, new_guest = self._path(old_path, old_len), self._path(new_path, new_len)
        old_base, new_base = old_guest.rstrip("/") or old_guest, new_guest.rstrip("/") or new_guest
        self._need(self._dir(new_fd), C.RIGHT_PATH_RENAME_TARGET)
        src_parent, src = self._resolve_str(fd, old_base, follow=False, need=C.RIGHT_PATH_RENAME_SOURCE)
        try:
            dst_parent, dst = self._resolve_str(new_fd, new_base, follow=False, need=C.RIGHT_PATH_RENAME_TARGET)
            try:
                if "." in (src, dst):
                    raise WasiError(Errno.BUSY)
                src_name = src + "/" if old_base != old_guest else src
                dst_name = dst + "/" if new_base != new_guest else dst
                os.rename(src_name, dst_name, src_dir_fd=src_parent, dst_dir_fd=dst_parent)
            finally:
                os.close(dst_parent)
        finally:
            os.close(src_parent)

    def path_symlink(self, old_path: int, old_len: int, fd: int, new_path: int, new_len: int) -> None:
        target = self._path(old_path, old_len)
        if target.startswith("/"):
            raise WasiError(Errno.PERM, "absolute symlink targets are not allowed in the sandbox")
        parent, name = self._resolve(fd, new_path, new_len, follow=False, need=C.RIGHT_PATH_SYMLINK)
        try:
            os.symlink(target, name, dir_fd=parent)
        finally:
            os.close(parent)

    def path_unlink_file(self, fd: int, path: int, path_len: int) -> None:
        parent, name = self._resolve(fd, path, path_len, follow=False, need=C.RIGHT_PATH_UNLINK_FILE)
        try:
            if name == ".":
                raise WasiError(Errno.ISDIR)
            os.unlink(name, dir_fd=parent)
        finally:
            os.close(parent)
