"""Sandboxed path resolution for WASI preview1: every guest path stays beneath its directory fd.

Why this module exists: a WASI guest names files as (directory fd, relative path). The guest is
the adversary -- it may write ``..``, absolute paths, or plant symlinks (relative or absolute,
chained, dangling) that point out of its preopened directories -- and the host must never touch
anything outside them. String checks on joined host paths cannot do that (symlinks and renames
change what a string means between the check and the use), so the walk happens openat-style:
one component at a time, each directory opened relative to the previous one with
``O_PATH | O_DIRECTORY | O_NOFOLLOW``, symlinks read with ``readlinkat`` and expanded by us,
never by the kernel. A component swapped for a symlink between our check and our open makes the
open fail instead of being followed.

Semantics are wasmtime's (cap-std), because differential tests compare errno values printed by
a C program under wasmig and under wasmtime:

- **Each directory fd is its own root.** ``..`` that would leave the directory ``dir_fd`` refers
  to is an escape, even if the result would still be inside the preopen.
- ``..`` pops back to the directory fd we opened before (a stack of fds), never a lookup of the
  physical ``..``, so a directory renamed elsewhere mid-walk cannot drag the walk out.
- A symlink's relative target is spliced in front of the remaining components and resolved from
  the symlink's own directory, still bounded by the root; an absolute target is an escape;
  more than 40 expansions in one resolution is ``ELOOP``.
- A trailing ``/`` (like a final ``.`` or ``..``) makes the path designate a directory: the walk
  then descends into the last named component (following a symlink there, within the sandbox)
  and the result is that directory with the name ``'.'`` -- exactly cap-std's ``open_parent``
  split, which is why e.g. ``path_remove_directory("d/")`` is ``EINVAL`` under wasmtime.
- Components are resolved in order, so ``nope/../../x`` is ``ENOENT``, not an escape.

Errno table, measured from wasmtime 50 (``wasmtime`` PyPI package, wasmtime-wasi on cap-std) with
``tests/programs/sandbox_probe.c`` calling the raw WASI functions on a preopen laid out as in
``tests/test_wasi_sandbox.py`` (``up -> ..``, ``abs -> /etc``, ``chain1 -> chain2 -> ../outside``,
``ok -> sub``, ``loop1 <-> loop2``, ``dangling -> ../outside/new.txt``)::

    case (path_open unless noted)                               wasmtime errno
    ../outside/secret.txt, .., ./../x, sub/../../x              63 EPERM
    nope/../../x  (missing component comes first)               44 ENOENT
    /etc/passwd, /  (absolute)                                  63 EPERM
    abs/passwd, abs (follow)       (symlink, absolute target)   63 EPERM
    up/outside/secret.txt, up (follow)   (symlink to ..)        63 EPERM
    chain1/secret.txt, chain1 (follow)   (chain leaving)        63 EPERM
    ok/../../x                     (.. after a followed link)   63 EPERM
    guest symlink("../outside", "gout") then gout/secret.txt    0 (create), 63 EPERM (open)
    guest symlink("/etc", "gabs")  (absolute target)            63 EPERM (not created)
    subfd: ../file.txt, ..  (fd opened on a subdirectory)      63 EPERM
    dangling, O_CREAT, follow                                   63 EPERM (nothing created outside)
    dangling, O_CREAT, nofollow                                 32 ELOOP
    dangling, O_CREAT|O_EXCL (either)                           20 EEXIST
    dangling, no O_CREAT, follow                                63 EPERM
    any symlink, nofollow (up, abs, loop1, ok + O_DIRECTORY)    32 ELOOP
    loop1 (follow), loop1/x, a 41-link chain                    32 ELOOP  (40 links still resolve)
    file.txt/x, file.txt/, file.txt + O_DIRECTORY, lnkfile/     54 ENOTDIR
    "" (empty)                                                  44 ENOENT
    path containing NUL (also "/etc\\0x", "../x\\0")            28 EINVAL
    invalid UTF-8                                               25 EILSEQ (preview1 decodes paths)
    a path of >= 4096 bytes                                     37 ENAMETOOLONG
    name/ with O_CREAT (any name: missing, file, dir, up, abs)  31 EISDIR (after intermediates)
    . or sub/. with O_CREAT / with O_CREAT|O_EXCL               31 EISDIR / 20 EEXIST
    directory with write rights or O_TRUNC                      31 EISDIR
    O_CREAT|O_DIRECTORY (any path, even "", "../x", "nope/x")   28 EINVAL  (before the path is looked at)
    stat/settimes follow up, abs, dangling, ..; stat up/        63 EPERM (nofollow on the link: 0)

Other operations, for the WASI functions built on :func:`resolve` (wasmtime's answers)::

    path_symlink with an absolute target                        63 EPERM   (check before resolving)
    path_symlink("x", "newlink/")                               44 ENOENT  ('.' semantics)
    path_readlink of a symlink with an absolute target          63 EPERM   (relative targets: 0)
    path_readlink of a file, ".", "ok/"                         28 EINVAL
    path_create_directory("newdir/"), ("dangling/")             0, 20 EEXIST (trailing '/' stripped)
    path_remove_directory("d/"), ("."), ("sub/..")              28 EINVAL  ('.' semantics)
    path_rename("d/", "e/")                                     0  (renameat with the '/' kept)
    path_rename("file/", x), (file, "x/"), ("ok/", x)          54 ENOTDIR
    path_rename(".", x), (x, "."), ("sub/..", x)                10 EBUSY
    path_link with SYMLINK_FOLLOW in old_flags                  28 EINVAL
    path_link of a directory                                    63 EPERM
    path_unlink_file("."), ("ok/")                              31 EISDIR

Escapes are ``EPERM`` (63), not ``ENOTCAPABLE`` (76): cap-std reports them as
``PermissionDenied`` and wasmtime-wasi maps that to ``EPERM``.
"""

from __future__ import annotations

import errno as _host
import os

from wasmig.wasi.errno import Errno, WasiError, from_oserror

__all__ = ["MAX_SYMLINK_EXPANSIONS", "PATH_MAX", "open_beneath", "open_dir_beneath", "resolve"]

#: cap-std's limit (and Linux's): the 41st expansion in one resolution is ``ELOOP``.
MAX_SYMLINK_EXPANSIONS = 40
#: Paths of this many bytes or more are ``ENAMETOOLONG`` (the kernel's limit, NUL included).
PATH_MAX = 4096

# How every intermediate directory is opened: O_PATH (no read permission needed, nothing can be
# read through it), O_DIRECTORY (a file fails), O_NOFOLLOW (a symlink fails -- with ENOTDIR --
# instead of being followed by the kernel, so a racing symlink swap cannot redirect us).
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _escape(detail: str) -> WasiError:
    return WasiError(Errno.PERM, f"path escapes its directory: {detail}")


def _check_path(path: str) -> None:
    """The whole-path checks, in wasmtime's order (NUL and length are rejected before the walk)."""
    if "\0" in path:
        raise WasiError(Errno.INVAL, "path contains NUL")
    if len(path) * 4 >= PATH_MAX and len(os.fsencode(path)) >= PATH_MAX:
        raise WasiError(Errno.NAMETOOLONG, "path too long")
    if not path:
        raise WasiError(Errno.NOENT, "empty path")
    if path[0] == "/":
        raise _escape(repr(path))


def _readlink(dir_fd: int, name: str) -> str | None:
    """The target of ``name`` if it is a symlink; None if it is something else or does not exist."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (_host.EINVAL, _host.ENOENT):
            return None
        raise WasiError(from_oserror(e), name) from None


class _Walk:
    """One resolution in progress: the stack of directory fds we opened, the components still to go.

    ``stack[-1]`` (or the root when the stack is empty) is the current directory. ``pending`` holds
    the remaining components in reverse, so splicing a symlink's target is a cheap ``extend``.
    With ``slash_is_dot`` (everything but ``O_CREAT`` opens) a trailing slash becomes a final
    ``'.'`` component; otherwise it is remembered in ``trailing_slash`` for the caller.
    """

    __slots__ = ("expansions", "pending", "root", "slash_is_dot", "stack", "trailing_slash")

    def __init__(self, root: int, path: str, slash_is_dot: bool) -> None:
        self.root = root
        self.stack: list[int] = []
        self.expansions = 0
        self.slash_is_dot = slash_is_dot
        self.trailing_slash = False
        self.pending: list[str] = []
        self._push(path)

    def _push(self, path: str) -> None:
        """Queue ``path``'s components in front of what is pending (a trailing '/' -> final '.')."""
        parts = [c for c in path.split("/") if c]
        if path.endswith("/") and parts:
            if self.slash_is_dot:
                parts.append(".")
            elif not self.pending:
                self.trailing_slash = True
        parts.reverse()
        self.pending.extend(parts)

    @property
    def cur(self) -> int:
        return self.stack[-1] if self.stack else self.root

    def splice(self, target: str) -> None:
        """Expand a symlink met at the current position: its target replaces it, read from ``cur``."""
        self.expansions += 1
        if self.expansions > MAX_SYMLINK_EXPANSIONS:
            raise WasiError(Errno.LOOP, "too many levels of symbolic links")
        if not target:
            raise WasiError(Errno.NOENT, "empty symlink target")
        if target[0] == "/":
            raise _escape(f"symlink to absolute path {target!r}")
        if not self.pending:
            self.trailing_slash = False  # the link replaces the final component; its target decides
        self._push(target)

    def _up(self) -> None:
        if not self.stack:
            raise _escape("'..' above the directory")
        os.close(self.stack.pop())

    def to_final(self) -> str:
        """Walk every component but the last; return the last (``'.'`` for the directory itself).

        A final ``..`` is applied here too, so the caller never sees ``..``.
        """
        pending = self.pending
        while True:
            c = pending.pop()
            if not pending:
                if c == "..":
                    self._up()
                    return "."
                return c
            if c == ".":
                continue
            if c == "..":
                self._up()
                continue
            cur = self.cur
            try:
                fd = os.open(c, _DIR_FLAGS, dir_fd=cur)
            except OSError as e:
                if e.errno in (_host.ENOTDIR, _host.ELOOP):
                    target = _readlink(cur, c)
                    if target is not None:
                        self.splice(target)
                        continue
                raise WasiError(from_oserror(e), c) from None
            self.stack.append(fd)

    def take_cur(self) -> int:
        """A new fd for the current directory, owned by the caller (ours, or a dup of the root)."""
        if self.stack:
            return self.stack.pop()
        return os.dup(self.root)

    def close(self) -> None:
        for fd in self.stack:
            os.close(fd)
        self.stack.clear()


def resolve(dir_fd: int, path: str, *, follow_final: bool) -> tuple[int, str]:
    """Walk ``path`` beneath host directory ``dir_fd``; return ``(parent_fd, name)``.

    ``parent_fd`` is a NEW host fd of the directory containing the final component (opened
    ``O_PATH | O_DIRECTORY``, or a dup of ``dir_fd`` when that is the parent); the caller must
    ``os.close`` it. ``name`` is a single name without ``/``, never ``..``; it is ``'.'`` when the
    path designates a directory itself (``.``, ``a/..``, ``a/.``, ``a/``). Intermediate symlinks
    are always followed within the sandbox; the final one only when ``follow_final`` (then the
    returned name is not a symlink -- use it with ``follow_symlinks=False`` / ``AT_SYMLINK_NOFOLLOW``
    so the kernel never follows anything itself). The final component need not exist.

    Raises :class:`WasiError`: ``EPERM`` for escapes, ``ELOOP``, ``ENOENT``, ``ENOTDIR``, ... as
    wasmtime answers (see the module docstring).
    """
    _check_path(path)
    walk = _Walk(dir_fd, path, slash_is_dot=True)
    try:
        name = walk.to_final()
        if follow_final:
            while name != ".":
                target = _readlink(walk.cur, name)
                if target is None:
                    break
                walk.splice(target)
                name = walk.to_final()
        return walk.take_cur(), name
    finally:
        walk.close()


def open_beneath(dir_fd: int, path: str, flags: int, *, follow_final: bool, mode: int = 0o644) -> int:
    """``os.open`` the final component of ``path`` beneath ``dir_fd`` with ``flags``; return the new fd.

    The final open always carries ``O_NOFOLLOW``: a final symlink makes it fail with ``ELOOP``
    (or ``ENOTDIR`` with ``O_DIRECTORY``), and only then do we read the link and, with
    ``follow_final``, continue the walk inside the sandbox -- so the common case costs one
    ``openat`` per component and no extra ``readlinkat``. wasmtime-compatible special cases:

    - a final symlink without ``follow_final`` is ``ELOOP``, with ``O_DIRECTORY`` too;
    - ``O_CREAT`` on a dangling symlink follows it within the sandbox: one pointing outside is an
      escape (``EPERM``) and creates nothing; ``O_CREAT | O_EXCL`` on any symlink is ``EEXIST``;
    - ``O_CREAT`` with a trailing slash on a named final component is ``EISDIR`` (Linux's answer,
      which wasmtime passes through), checked after the intermediate components resolve.
    - ``O_CREAT | O_DIRECTORY`` is ``EINVAL`` whatever the path (checked first, like wasmtime).
    """
    if flags & os.O_CREAT and flags & os.O_DIRECTORY:
        # wasmtime refuses the pair before looking at the path; Linux >= 6.4 agrees, older kernels don't.
        raise WasiError(Errno.INVAL, "O_CREAT with O_DIRECTORY")
    _check_path(path)
    creat = bool(flags & os.O_CREAT)
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    walk = _Walk(dir_fd, path, slash_is_dot=not creat)
    try:
        name = walk.to_final()
        while True:
            if walk.trailing_slash and name != ".":
                raise WasiError(Errno.ISDIR, "O_CREAT with a trailing slash")
            if flags & os.O_PATH and follow_final and name != ".":
                # O_PATH|O_NOFOLLOW opens a symlink itself instead of failing: look first.
                target = _readlink(walk.cur, name)
                if target is not None:
                    walk.splice(target)
                    name = walk.to_final()
                    continue
            try:
                return os.open(name, flags, mode, dir_fd=walk.cur)
            except OSError as e:
                if name != "." and e.errno in (_host.ELOOP, _host.ENOTDIR):
                    target = _readlink(walk.cur, name)
                    if target is not None:
                        if not follow_final:
                            raise WasiError(Errno.LOOP, f"{name} is a symlink") from None
                        walk.splice(target)
                        name = walk.to_final()
                        continue
                raise WasiError(from_oserror(e), name) from None
    finally:
        walk.close()


def open_dir_beneath(dir_fd: int, path: str, *, follow_final: bool) -> int:
    """An ``O_RDONLY | O_DIRECTORY`` fd of the directory ``path`` designates (for reading entries)."""
    return open_beneath(dir_fd, path, os.O_RDONLY | os.O_DIRECTORY, follow_final=follow_final)
