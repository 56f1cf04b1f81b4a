"""``wasi_snapshot_preview1``, implemented once in Python for every wasmig engine.

:class:`Wasi` holds the whole host-side state of a guest (args, env, fd table, preopens,
clock bases) and exposes each preview1 function as a method taking and returning plain ints
(pointers and values as the guest passes them). :meth:`Wasi.imports` binds the methods as host
functions with their exact preview1 signatures. Guest memory is reached only through a
:class:`~wasmig.wasi.memory.GuestMemory` given to :meth:`Wasi.bind_memory`.

Errors: a method raises :class:`WasiError` (or lets an ``OSError`` through); the binding turns
either into the errno the guest receives, so no host exception reaches the guest or the user.
"""

from __future__ import annotations

import os
import socket
import stat as stat_mod
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

from wasmig.wasi import constants as C
from wasmig.wasi import gateway, sandbox
from wasmig.wasi.blocking import Gate, Waiter
from wasmig.wasi.errno import Errno, WasiError, from_oserror
from wasmig.wasi.fdtable import DIR, FILE, STDIO, TCP_LISTENER, TCP_STREAM, FdEntry, FdTable
from wasmig.wasi.memory import GuestMemory
from wasmig.wire import WireError

WASI_MODULE = "wasi_snapshot_preview1"
#: how stdio entries name the standard stream they are (kept through renumbering and snapshots)
STDIO_NAMES = ("<stdin>", "<stdout>", "<stderr>")

I32, I64 = "i32", "i64"
#: every preview1 function: parameter types (results are always one i32 errno, except proc_exit)
SIGNATURES: dict[str, tuple[str, ...]] = {
    "args_get": (I32, I32), "args_sizes_get": (I32, I32),
    "environ_get": (I32, I32), "environ_sizes_get": (I32, I32),
    "clock_res_get": (I32, I32), "clock_time_get": (I32, I64, I32),
    "fd_advise": (I32, I64, I64, I32), "fd_allocate": (I32, I64, I64), "fd_close": (I32,),
    "fd_datasync": (I32,), "fd_fdstat_get": (I32, I32), "fd_fdstat_set_flags": (I32, I32),
    "fd_fdstat_set_rights": (I32, I64, I64), "fd_filestat_get": (I32, I32), "fd_filestat_set_size": (I32, I64),
    "fd_filestat_set_times": (I32, I64, I64, I32), "fd_pread": (I32, I32, I32, I64, I32),
    "fd_prestat_get": (I32, I32), "fd_prestat_dir_name": (I32, I32, I32), "fd_pwrite": (I32, I32, I32, I64, I32),
    "fd_read": (I32, I32, I32, I32), "fd_readdir": (I32, I32, I32, I64, I32), "fd_renumber": (I32, I32),
    "fd_seek": (I32, I64, I32, I32), "fd_sync": (I32,), "fd_tell": (I32, I32), "fd_write": (I32, I32, I32, I32),
    "path_create_directory": (I32, I32, I32), "path_filestat_get": (I32, I32, I32, I32, I32),
    "path_filestat_set_times": (I32, I32, I32, I32, I64, I64, I32),
    "path_link": (I32, I32, I32, I32, I32, I32, I32),
    "path_open": (I32, I32, I32, I32, I32, I64, I64, I32, I32),
    "path_readlink": (I32, I32, I32, I32, I32, I32), "path_remove_directory": (I32, I32, I32),
    "path_rename": (I32, I32, I32, I32, I32, I32), "path_symlink": (I32, I32, I32, I32, I32),
    "path_unlink_file": (I32, I32, I32),
    "poll_oneoff": (I32, I32, I32, I32), "proc_exit": (I32,), "proc_raise": (I32,), "sched_yield": (),
    "random_get": (I32, I32),
    "sock_accept": (I32, I32, I32), "sock_recv": (I32, I32, I32, I32, I32, I32),
    "sock_send": (I32, I32, I32, I32, I32), "sock_shutdown": (I32, I32),
}


def check_wasi_imports(ir: Any) -> list[Any]:
    """The module's imports (``ir`` is its IR), all of which must be WASI preview1 functions of the
    exact preview1 type; a LinkError otherwise. One check for every engine."""
    from wasmig.errors import LinkError

    wanted = []
    for imp in ir.imports:
        where = f"{imp.module}.{imp.name}"
        if imp.module != WASI_MODULE:
            raise LinkError(f"unknown import: {where} (only {WASI_MODULE} is provided)")
        if imp.kind != "func":
            raise LinkError(f"unknown import: {where} was not provided")
        if imp.name not in SIGNATURES:
            raise LinkError(f"unknown import: {where} is not a WASI preview1 function")
        want = ir.types[imp.desc]
        params = SIGNATURES[imp.name]
        results = () if imp.name == "proc_exit" else (I32,)
        if tuple(want.params) != params or tuple(want.results) != results:
            have = f"[{' '.join(params)}] -> [{' '.join(results)}]"
            raise LinkError(f"incompatible import type: {where} is {have}, the module expects {want}")
        wanted.append(imp)
    return wanted


class ProcExit(Exception):
    """The guest called ``proc_exit``: unwinds the engine; ``code`` is the exit status."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"proc_exit({code})")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


def _filetype_of_mode(mode: int) -> int:
    if stat_mod.S_ISREG(mode):
        return C.FILETYPE_REGULAR_FILE
    if stat_mod.S_ISDIR(mode):
        return C.FILETYPE_DIRECTORY
    if stat_mod.S_ISLNK(mode):
        return C.FILETYPE_SYMBOLIC_LINK
    if stat_mod.S_ISCHR(mode):
        return C.FILETYPE_CHARACTER_DEVICE
    if stat_mod.S_ISBLK(mode):
        return C.FILETYPE_BLOCK_DEVICE
    if stat_mod.S_ISSOCK(mode):
        return C.FILETYPE_SOCKET_STREAM
    return C.FILETYPE_UNKNOWN


def _isatty(fd: int, stream: Any) -> bool:
    """Whether standard stream ``fd`` (the host's own when ``stream`` is None) is a terminal."""
    try:
        return os.isatty(fd) if stream is None else bool(stream.isatty())
    except (AttributeError, OSError, ValueError):  # a closed or file-less stream: no terminal
        return False


def _pack_filestat(st: os.stat_result, filetype: int | None = None) -> bytes:
    return struct.pack(
        "<QQB7xQQQQQ", st.st_dev & 0xFFFFFFFFFFFFFFFF, st.st_ino & 0xFFFFFFFFFFFFFFFF,
        _filetype_of_mode(st.st_mode) if filetype is None else filetype,
        st.st_nlink, st.st_size, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
    )


class Wasi:
    """The WASI state of one guest, and its preview1 functions.

    ``preopens``: host directories exposed to the guest, as ``(host_path, guest_name)``.
    ``listeners``: already-listening TCP sockets preopened first (fd 3, 4, ...), as ``wasmtime run
    --tcplisten`` does. ``stdin``/``stdout``/``stderr``: ``None`` to pass the host's own through,
    or bytes (stdin) / binary file objects.
    """

    def __init__(self, args: Sequence[str] = ("main",), env: Mapping[str, str] | None = None, *,
                 preopens: Sequence[tuple[str, str]] = (), listeners: Sequence[socket.socket] = (),
                 stdin: bytes | BinaryIO | None = None, stdout: BinaryIO | None = None,
                 stderr: BinaryIO | None = None, gateway_listeners: Sequence[tuple[str, bytes]] = ()) -> None:
        self.args = list(args)
        self.env = dict(env or {})
        self.fds = FdTable()
        self.memory: GuestMemory | None = None
        self.exit_code: int | None = None
        self.monotonic_base_ns = 0  # added to the host's monotonic clock (restores keep it increasing)
        self.cputime_base_ns = 0  # added to the CPU-time clocks, likewise
        self.calls: dict[str, int] = {}
        #: every preopen granted, guest name -> host directory, still known after the guest closed
        #: it: what it opened beneath it stays open, and a checkpoint must say where that lives
        self.preopen_roots: dict[str, str] = {}
        self.waiter = Waiter()  # every blocking wait goes through it, so a checkpoint can end it
        #: every host call passes it: closed, it holds the guest's effects (a migration's target, before the commit)
        self.gate = Gate()
        #: a migration's target key (fingerprint), named to the gateways when their connections are
        #: quiesced for it: the gateway lets that key take them over (wasmig/wasi/gateway.py)
        self.gateway_handover: str | None = None
        self._init_stdio(stdin, stdout, stderr)
        try:
            for sock in listeners:
                self.fds.add(FdEntry(TCP_LISTENER, C.FILETYPE_SOCKET_STREAM, C.RIGHTS_SOCKET, 0,
                                     readable=True, writable=True, sock=sock))
            for address, key in gateway_listeners:  # a listening socket a gateway holds for us
                self.fds.add(FdEntry(TCP_LISTENER, C.FILETYPE_SOCKET_STREAM, C.RIGHTS_SOCKET, 0, readable=True,
                                     writable=True, sock=gateway.connect_listener(address, key), gateway=address,
                                     gateway_key=key))
            for host, guest in preopens:
                self.add_preopen(host, guest)
        except BaseException:
            self.close()
            raise

    # --- setup --------------------------------------------------------------------------------
    def _init_stdio(self, stdin: bytes | BinaryIO | None, stdout: BinaryIO | None, stderr: BinaryIO | None) -> None:
        import io

        streams: list[BinaryIO | None] = [io.BytesIO(stdin) if isinstance(stdin, (bytes, bytearray)) else stdin,
                                          stdout, stderr]
        for fd, stream in enumerate(streams):
            # as wasmtime: a character device if the host's stream is a terminal, else UNKNOWN (a
            # pipe, a file, /dev/null alike); fd_read or fd_write, base and inheriting, as rights
            rights = C.RIGHTS_STDIN if fd == 0 else C.RIGHTS_STDOUT
            entry = FdEntry(STDIO, C.FILETYPE_CHARACTER_DEVICE if _isatty(fd, stream) else C.FILETYPE_UNKNOWN,
                            rights, rights, readable=fd == 0, writable=fd != 0, owns_host_fd=False,
                            guest_path=STDIO_NAMES[fd])
            if stream is None:
                entry.host_fd = fd
            else:
                entry.stream = stream
            self.fds.set(fd, entry)

    def add_preopen(self, host: str, guest: str) -> int:
        """Preopen host directory ``host`` under the guest name ``guest``; returns its fd."""
        try:
            fd = os.open(host, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise ValueError(f"cannot preopen {host!r}: {e.strerror}") from None
        entry = FdEntry(DIR, C.FILETYPE_DIRECTORY, C.RIGHTS_DIR, C.RIGHTS_DIR | C.RIGHTS_FILE, guest_path=guest,
                        host_path=os.path.realpath(host), preopen=guest, readable=True, host_fd=fd)
        self.preopen_roots.setdefault(guest, os.path.realpath(host))
        return self.fds.add(entry)

    def bind_memory(self, memory: GuestMemory) -> None:
        self.memory = memory

    def close(self) -> None:
        self.fds.close_all()
        self.waiter.close()

    @property
    def mem(self) -> GuestMemory:
        if self.memory is None:
            raise WasiError(Errno.FAULT, "WASI used before a guest memory was bound")
        return self.memory

    # --- binding as host functions --------------------------------------------------------------
    def imports(self, make_host_func: Callable[[tuple[str, ...], tuple[str, ...], Callable[..., Any], str], Any],
                names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Host functions for ``names`` (default: all), built by the engine's ``make_host_func(params,
        results, fn, name)``; each takes and returns raw ints (unsigned bit patterns)."""
        out: dict[str, Any] = {}
        for name in names if names is not None else SIGNATURES:
            if name not in SIGNATURES:
                continue  # unknown names are left unresolved: instantiation reports them
            params = SIGNATURES[name]
            results = () if name == "proc_exit" else (I32,)
            out[name] = make_host_func(params, results, self._wrap(name), name)
        return {WASI_MODULE: out}

    def _wrap(self, name: str) -> Callable[..., Any]:
        method = getattr(self, name)
        calls = self.calls
        gate = self.gate

        def call(*args: int) -> int | None:
            if gate.closed:
                gate.wait()
            calls[name] = calls.get(name, 0) + 1
            try:
                result = method(*args)
            except WasiError as e:
                return int(e.errno)
            except OSError as e:
                return int(from_oserror(e))
            return None if name == "proc_exit" else (0 if result is None else int(result))

        call.__name__ = name
        return call

    # --- args, environ ------------------------------------------------------------------------------
    @staticmethod
    def _put_strings(mem: GuestMemory, items: list[bytes], ptrs: int, buf: int) -> None:
        for i, item in enumerate(items):
            mem.set_u32(ptrs + 4 * i, buf)
            mem.write(buf, item + b"\0")
            buf += len(item) + 1

    def _encoded_args(self) -> list[bytes]:
        return [a.encode("utf-8", "surrogateescape") for a in self.args]

    def _encoded_env(self) -> list[bytes]:
        return [f"{k}={v}".encode("utf-8", "surrogateescape") for k, v in self.env.items()]

    def args_sizes_get(self, argc_ptr: int, size_ptr: int) -> None:
        items = self._encoded_args()
        self.mem.set_u32(argc_ptr, len(items))
        self.mem.set_u32(size_ptr, sum(len(a) + 1 for a in items))

    def args_get(self, argv_ptr: int, buf_ptr: int) -> None:
        self._put_strings(self.mem, self._encoded_args(), argv_ptr, buf_ptr)

    def environ_sizes_get(self, count_ptr: int, size_ptr: int) -> None:
        items = self._encoded_env()
        self.mem.set_u32(count_ptr, len(items))
        self.mem.set_u32(size_ptr, sum(len(a) + 1 for a in items))

    def environ_get(self, env_ptr: int, buf_ptr: int) -> None:
        self._put_strings(self.mem, self._encoded_env(), env_ptr, buf_ptr)

    # --- clocks, random, scheduling, process -------------------------------------------------------
    def now_ns(self, clock_id: int) -> int:
        if clock_id == C.CLOCK_REALTIME:
            return time.time_ns()
        if clock_id == C.CLOCK_MONOTONIC:
            return time.monotonic_ns() + self.monotonic_base_ns
        if clock_id == C.CLOCK_PROCESS_CPUTIME:
            return time.process_time_ns() + self.cputime_base_ns
        if clock_id == C.CLOCK_THREAD_CPUTIME:
            return time.thread_time_ns() + self.cputime_base_ns
        raise WasiError(Errno.INVAL, f"unknown clock {clock_id}")

    def clock_res_get(self, clock_id: int, res_ptr: int) -> None:
        names = {C.CLOCK_REALTIME: "time", C.CLOCK_MONOTONIC: "monotonic", C.CLOCK_PROCESS_CPUTIME: "process_time",
                 C.CLOCK_THREAD_CPUTIME: "thread_time"}
        if clock_id not in names:
            raise WasiError(Errno.INVAL)
        res = max(1, int(time.get_clock_info(names[clock_id]).resolution * 1e9))
        self.mem.set_u64(res_ptr, res)

    def clock_time_get(self, clock_id: int, precision: int, time_ptr: int) -> None:
        self.mem.set_u64(time_ptr, self.now_ns(clock_id))

    def random_get(self, buf: int, n: int) -> None:
        self.mem.write(buf, os.urandom(n))

    def sched_yield(self) -> None:
        os.sched_yield()

    def proc_exit(self, code: int) -> None:
        self.exit_code = code
        raise ProcExit(code)

    def proc_raise(self, sig: int) -> int:
        return Errno.NOSYS

    # --- descriptors --------------------------------------------------------------------------------
    # Rights (capabilities): every fd holds base rights (what it may do) and inheriting rights (what
    # fds opened beneath it may get). An operation needs its right among the fd's base rights, else
    # ENOTCAPABLE; the checks come after the checks every engine makes anyway (a directory where a
    # file is expected, a file not open for reading...), so an fd opened with the rights its open
    # mode implies (as wasi-libc, Rust std and every toolchain do) answers exactly as before.
    @staticmethod
    def _need(entry: FdEntry, rights: int) -> FdEntry:
        if rights & ~entry.rights_base:
            raise WasiError(Errno.NOTCAPABLE, "the descriptor lacks the right for this operation")
        return entry

    def _file(self, fd: int) -> FdEntry:
        entry = self.fds.get(fd)
        if entry.kind == DIR:
            raise WasiError(Errno.BADF, "directory where a file was expected")
        return entry

    def _dir(self, fd: int) -> FdEntry:
        entry = self.fds.get(fd)
        if entry.kind != DIR:
            raise WasiError(Errno.NOTDIR)
        return entry

    def fd_close(self, fd: int) -> None:
        self.fds.remove(fd).close()

    def fd_renumber(self, fd: int, to: int) -> None:
        self.fds.renumber(fd, to)

    def fd_advise(self, fd: int, offset: int, length: int, advice: int) -> None:
        entry = self._file(fd)
        if advice > 5:
            raise WasiError(Errno.INVAL)
        if entry.kind != FILE:
            raise WasiError(Errno.BADF)
        self._need(entry, C.RIGHT_FD_ADVISE)
        advices = [os.POSIX_FADV_NORMAL, os.POSIX_FADV_SEQUENTIAL, os.POSIX_FADV_RANDOM,
                   os.POSIX_FADV_WILLNEED, os.POSIX_FADV_DONTNEED, os.POSIX_FADV_NOREUSE]
        os.posix_fadvise(entry.fileno(), offset, length, advices[advice])

    def fd_allocate(self, fd: int, offset: int, length: int) -> None:
        """Unsupported, as in wasmtime (preview2 dropped it): ``ENOTSUP`` for files."""
        entry = self._file(fd)
        if entry.kind != FILE:
            raise WasiError(Errno.BADF)
        self._need(entry, C.RIGHT_FD_ALLOCATE)
        raise WasiError(Errno.NOTSUP, "fd_allocate is not supported")

    def fd_datasync(self, fd: int) -> None:
        entry = self.fds.get(fd)
        if entry.kind in (FILE, DIR):
            os.fdatasync(self._need(entry, C.RIGHT_FD_DATASYNC).fileno())
        elif entry.kind != STDIO:
            raise WasiError(Errno.INVAL)

    def fd_sync(self, fd: int) -> None:
        entry = self.fds.get(fd)
        if entry.kind in (FILE, DIR):
            os.fsync(self._need(entry, C.RIGHT_FD_SYNC).fileno())
        elif entry.kind != STDIO:
            raise WasiError(Errno.INVAL)

    def fd_fdstat_get(self, fd: int, buf: int) -> None:
        entry = self.fds.get(fd)
        self.mem.write(buf, struct.pack("<BxHxxxxQQ", entry.filetype, entry.fdflags, entry.rights_base,
                                        entry.rights_inheriting))

    def fd_fdstat_set_flags(self, fd: int, flags: int) -> None:
        entry = self.fds.get(fd)
        if entry.kind == STDIO:  # as wasmtime: a standard stream's flags cannot be changed
            raise WasiError(Errno.BADF, "the flags of a standard stream cannot be changed")
        if flags & ~(C.FDFLAGS_APPEND | C.FDFLAGS_NONBLOCK):
            raise WasiError(Errno.NOTSUP, "only APPEND and NONBLOCK can be changed")
        self._need(entry, C.RIGHT_FD_FDSTAT_SET_FLAGS)
        if entry.stream is None:
            import fcntl

            host = entry.fileno()
            current = fcntl.fcntl(host, fcntl.F_GETFL)
            current &= ~(os.O_APPEND | os.O_NONBLOCK)
            if flags & C.FDFLAGS_APPEND:
                current |= os.O_APPEND
            if flags & C.FDFLAGS_NONBLOCK:
                current |= os.O_NONBLOCK
            fcntl.fcntl(host, fcntl.F_SETFL, current)
        entry.fdflags = flags

    def fd_fdstat_set_rights(self, fd: int, base: int, inheriting: int) -> None:
        entry = self.fds.get(fd)
        if base & ~entry.rights_base or inheriting & ~entry.rights_inheriting:
            raise WasiError(Errno.NOTCAPABLE, "rights can only be dropped")
        entry.rights_base = base
        entry.rights_inheriting = inheriting

    def fd_filestat_get(self, fd: int, buf: int) -> None:
        entry = self.fds.get(fd)
        if entry.kind == STDIO:  # as wasmtime: only the filetype, every other field 0, whatever the rights
            self.mem.write(buf, struct.pack("<QQB7xQQQQQ", 0, 0, entry.filetype, 0, 0, 0, 0, 0))
            return
        self._need(entry, C.RIGHT_FD_FILESTAT_GET)
        st = os.fstat(entry.fileno())
        filetype = entry.filetype if entry.kind in (TCP_LISTENER, TCP_STREAM) else None
        self.mem.write(buf, _pack_filestat(st, filetype))

    def fd_filestat_set_size(self, fd: int, size: int) -> None:
        entry = self._file(fd)
        if entry.kind != FILE:
            raise WasiError(Errno.BADF)
        if not entry.writable:
            raise WasiError(Errno.INVAL, "not open for writing")  # Linux's (and wasmtime's) answer
        os.ftruncate(self._need(entry, C.RIGHT_FD_FILESTAT_SET_SIZE).fileno(), size)

    @staticmethod
    def _times(st: os.stat_result, atim: int, mtim: int, flags: int) -> tuple[int, int]:
        if (flags & C.FSTFLAGS_ATIM and flags & C.FSTFLAGS_ATIM_NOW) or (
                flags & C.FSTFLAGS_MTIM and flags & C.FSTFLAGS_MTIM_NOW):
            raise WasiError(Errno.INVAL, "a time and its NOW flag are exclusive")
        now = time.time_ns()
        a = atim if flags & C.FSTFLAGS_ATIM else now if flags & C.FSTFLAGS_ATIM_NOW else st.st_atime_ns
        m = mtim if flags & C.FSTFLAGS_MTIM else now if flags & C.FSTFLAGS_MTIM_NOW else st.st_mtime_ns
        return a, m

    def fd_filestat_set_times(self, fd: int, atim: int, mtim: int, flags: int) -> None:
        entry = self.fds.get(fd)
        if entry.kind not in (FILE, DIR):
            raise WasiError(Errno.BADF)
        host = self._need(entry, C.RIGHT_FD_FILESTAT_SET_TIMES).fileno()
        os.utime(host, ns=self._times(os.fstat(host), atim, mtim, flags))

    def fd_prestat_get(self, fd: int, buf: int) -> None:
        entry = self.fds.get(fd)
        if entry.preopen is None:
            raise WasiError(Errno.BADF, "not a preopened directory")
        self.mem.write(buf, struct.pack("<BxxxI", 0, len(entry.preopen.encode())))

    def fd_prestat_dir_name(self, fd: int, path: int, path_len: int) -> None:
        entry = self.fds.get(fd)
        if entry.preopen is None:
            raise WasiError(Errno.BADF, "not a preopened directory")
        name = entry.preopen.encode()
        if path_len < len(name):
            raise WasiError(Errno.NAMETOOLONG)
        self.mem.write(path, name)

    # --- reading and writing ---------------------------------------------------------------------
    def _scatter(self, iovs: list[tuple[int, int]], data: bytes) -> int:
        pos = 0
        mem = self.mem
        for ptr, length in iovs:
            if pos >= len(data):
                break
            chunk = data[pos : pos + length]
            mem.write(ptr, chunk)
            pos += len(chunk)
        return pos

    def _gather(self, iovs: list[tuple[int, int]]) -> bytes:
        mem = self.mem
        return b"".join(mem.read(ptr, length) for ptr, length in iovs)

    def _read_entry(self, entry: FdEntry, n: int) -> bytes:
        if entry.kind == DIR:
            raise WasiError(Errno.BADF, "cannot read a directory as a file")
        if not entry.readable:
            raise WasiError(Errno.BADF, "not open for reading")
        self._need(entry, C.RIGHT_FD_READ)
        if entry.stream is not None:  # read1: what is available now, as a read(2) on a pipe would
            read1 = getattr(entry.stream, "read1", None)
            return (read1(n) if read1 is not None else entry.stream.read(n)) or b""
        if entry.kind == TCP_LISTENER:
            raise WasiError(Errno.NOTCONN)
        if entry.pending:
            return self._take_pending(entry, n)
        if entry.kind == TCP_STREAM and entry.sock is None:
            return b""  # a connection that did not survive a restore: end of stream
        host = entry.fileno()
        if entry.kind != FILE and not entry.fdflags & C.FDFLAGS_NONBLOCK:
            self.waiter.wait_readable(host)  # a terminal, pipe or socket may block: wait interruptibly
        return os.read(host, n)

    def _positioned(self, fd: int) -> FdEntry:
        """A regular file (the only kind with an offset): a directory is EBADF, a stream ESPIPE."""
        entry = self.fds.get(fd)
        if entry.kind == DIR:
            raise WasiError(Errno.BADF)
        if entry.kind != FILE:
            raise WasiError(Errno.SPIPE)
        return entry

    def fd_read(self, fd: int, iovs_ptr: int, iovs_len: int, nread_ptr: int) -> None:
        entry = self.fds.get(fd)
        iovs = self.mem.iovecs(iovs_ptr, iovs_len)
        total = sum(length for _, length in iovs)
        data = self._read_entry(entry, total) if total else b""
        self.mem.set_u32(nread_ptr, self._scatter(iovs, data))

    def fd_pread(self, fd: int, iovs_ptr: int, iovs_len: int, offset: int, nread_ptr: int) -> None:
        entry = self._positioned(fd)
        if not entry.readable:
            raise WasiError(Errno.BADF)
        self._need(entry, C.RIGHT_FD_READ | C.RIGHT_FD_SEEK)
        iovs = self.mem.iovecs(iovs_ptr, iovs_len)
        total = sum(length for _, length in iovs)
        data = os.pread(entry.fileno(), total, offset) if total else b""
        self.mem.set_u32(nread_ptr, self._scatter(iovs, data))

    def _write_entry(self, entry: FdEntry, data: bytes) -> int:
        if entry.kind == DIR:
            raise WasiError(Errno.BADF, "cannot write to a directory")
        if not entry.writable:
            raise WasiError(Errno.BADF, "not open for writing")
        self._need(entry, C.RIGHT_FD_WRITE)
        if entry.stream is not None:
            entry.stream.write(data)
            entry.stream.flush()
            return len(data)
        if entry.kind == TCP_LISTENER:
            raise WasiError(Errno.NOTCONN)
        if entry.kind == TCP_STREAM and entry.sock is None:
            raise WasiError(Errno.PIPE, "the connection did not survive the restore")
        host = entry.fileno()
        if entry.kind == STDIO:  # a terminal or pipe may take less per write: pass everything on
            view = memoryview(data)
            while view:
                view = view[os.write(host, view):]
            return len(data)
        return os.write(host, data)

    def fd_write(self, fd: int, iovs_ptr: int, iovs_len: int, nwritten_ptr: int) -> None:
        entry = self.fds.get(fd)
        data = self._gather(self.mem.iovecs(iovs_ptr, iovs_len))
        self.mem.set_u32(nwritten_ptr, self._write_entry(entry, data) if data else 0)

    def fd_pwrite(self, fd: int, iovs_ptr: int, iovs_len: int, offset: int, nwritten_ptr: int) -> None:
        entry = self._positioned(fd)
        if not entry.writable:
            raise WasiError(Errno.BADF)
        self._need(entry, C.RIGHT_FD_WRITE | C.RIGHT_FD_SEEK)
        data = self._gather(self.mem.iovecs(iovs_ptr, iovs_len))
        self.mem.set_u32(nwritten_ptr, os.pwrite(entry.fileno(), data, offset) if data else 0)

    def fd_seek(self, fd: int, offset: int, whence: int, newoffset_ptr: int) -> None:
        entry = self._positioned(fd)
        if whence not in (C.WHENCE_SET, C.WHENCE_CUR, C.WHENCE_END):
            raise WasiError(Errno.INVAL)
        if not (offset == 0 and whence == C.WHENCE_CUR):  # reading the position back is only telling
            self._need(entry, C.RIGHT_FD_SEEK)
        elif not entry.rights_base & C.RIGHT_FD_SEEK:  # fd_seek implies fd_tell
            self._need(entry, C.RIGHT_FD_TELL)
        host_whence = (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END)[whence]
        self.mem.set_u64(newoffset_ptr, os.lseek(entry.fileno(), _signed64(offset), host_whence))

    def fd_tell(self, fd: int, offset_ptr: int) -> None:
        entry = self._positioned(fd)
        if not entry.rights_base & C.RIGHT_FD_SEEK:  # fd_seek implies fd_tell
            self._need(entry, C.RIGHT_FD_TELL)
        self.mem.set_u64(offset_ptr, os.lseek(entry.fileno(), 0, os.SEEK_CUR))

    # --- directories ---------------------------------------------------------------------------------
    def _dir_listing(self, entry: FdEntry) -> list[tuple[str, int, int]]:
        """(name, inode, filetype) of every entry, '.' and '..' first; a stable order for cookies."""
        host = entry.fileno()
        st = os.fstat(host)
        out = [(".", st.st_ino, C.FILETYPE_DIRECTORY)]
        try:
            parent_ino = os.stat("..", dir_fd=host).st_ino
        except OSError:
            parent_ino = 0
        out.append(("..", parent_ino, C.FILETYPE_DIRECTORY))
        with os.scandir(host) as it:
            for de in it:
                try:
                    ftype = _filetype_of_mode(de.stat(follow_symlinks=False).st_mode)
                except OSError:
                    ftype = C.FILETYPE_UNKNOWN
                out.append((de.name, de.inode(), ftype))
        return out

    def fd_readdir(self, fd: int, buf: int, buf_len: int, cookie: int, bufused_ptr: int) -> None:
        entry = self.fds.get(fd)
        if entry.kind != DIR:
            raise WasiError(Errno.NOTDIR)
        self._need(entry, C.RIGHT_FD_READDIR)
        if cookie == 0 or entry.dir_entries is None:
            entry.dir_entries = self._dir_listing(entry)  # a rewind (cookie 0) re-reads the directory
        out = bytearray()
        for index in range(cookie, len(entry.dir_entries)):
            name, ino, ftype = entry.dir_entries[index]
            raw = name.encode("utf-8", "surrogateescape")
            out += struct.pack("<QQIB3x", index + 1, ino & 0xFFFFFFFFFFFFFFFF, len(raw), ftype) + raw
            if len(out) >= buf_len:
                break
        data = bytes(out[:buf_len])
        self.mem.write(buf, data)
        self.mem.set_u32(bufused_ptr, len(data))
        entry.readdir_cookie = cookie

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
        self.mem.write(buf, _pack_filestat(st))

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
                DIR if is_dir else FILE, _filetype_of_mode(st.st_mode),
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

    # --- poll ------------------------------------------------------------------------------------------
    def poll_oneoff(self, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int) -> None:
        if nsubs == 0:
            raise WasiError(Errno.INVAL, "poll_oneoff with no subscriptions")
        mem = self.mem
        raw = mem.read(in_ptr, C.SIZE_SUBSCRIPTION * nsubs)
        mem.read(out_ptr, C.SIZE_EVENT * nsubs)  # the output array must be valid memory too
        clocks: list[tuple[int, int]] = []  # (userdata, deadline in monotonic ns)
        readers: list[tuple[int, FdEntry, int]] = []
        writers: list[tuple[int, FdEntry, int]] = []
        events: list[bytes] = []
        now_mono = time.monotonic_ns()
        for i in range(nsubs):
            userdata, tag = struct.unpack_from("<QB", raw, i * C.SIZE_SUBSCRIPTION)
            body = i * C.SIZE_SUBSCRIPTION + 16
            if tag == C.EVENTTYPE_CLOCK:
                clock_id, timeout, _precision, flags = struct.unpack_from("<IxxxxQQH", raw, body)
                try:
                    now = self.now_ns(clock_id)
                except WasiError as e:
                    events.append(struct.pack("<QHB5xQH6x", userdata, e.errno, tag, 0, 0))
                    continue
                delay = max(0, timeout - now) if flags & C.SUBCLOCK_ABSTIME else timeout
                clocks.append((userdata, now_mono + delay))
            elif tag in (C.EVENTTYPE_FD_READ, C.EVENTTYPE_FD_WRITE):
                (fd,) = struct.unpack_from("<I", raw, body)
                entry = self.fds.entries.get(fd)
                if entry is None:  # wasmtime fails the whole call, rather than reporting an event
                    raise WasiError(Errno.BADF, f"poll_oneoff on fd {fd}, which is not open")
                if entry.kind == DIR:  # as wasmtime: a directory is no stream, the whole call fails
                    raise WasiError(Errno.BADF, f"poll_oneoff on fd {fd}, a directory")
                if entry.kind != STDIO:  # stdio holds no poll right (as in wasmtime) and is polled anyway
                    self._need(entry, C.RIGHT_POLL_FD_READWRITE)
                (readers if tag == C.EVENTTYPE_FD_READ else writers).append((userdata, entry, fd))
            else:
                raise WasiError(Errno.INVAL, f"unknown subscription type {tag}")
        if not events:
            events = self._wait(clocks, readers, writers)
        for i, ev in enumerate(events):
            mem.write(out_ptr + i * C.SIZE_EVENT, ev)
        mem.set_u32(nevents_ptr, len(events))

    def _wait(self, clocks: list[tuple[int, int]], readers: list[tuple[int, FdEntry, int]],
              writers: list[tuple[int, FdEntry, int]]) -> list[bytes]:
        deadline = min((d for _, d in clocks), default=None)
        while True:
            events = self._ready_fds(readers, writers, deadline)
            if events:
                return events
            now = time.monotonic_ns()
            if deadline is not None and now >= deadline:
                return [struct.pack("<QHB5xQH6x", u, 0, C.EVENTTYPE_CLOCK, 0, 0) for u, d in clocks if d <= now]
            if not readers and not writers and deadline is not None:
                self.waiter.sleep((deadline - now) / 1e9)

    def _ready_fds(self, readers: list[tuple[int, FdEntry, int]], writers: list[tuple[int, FdEntry, int]],
                   deadline: int | None) -> list[bytes]:
        if not readers and not writers:
            return []
        events: list[bytes] = []
        selectable_r, selectable_w = [], []
        for userdata, entry, _fd in readers:
            if entry.kind in (FILE, DIR) or entry.stream is not None or entry.pending:
                nbytes = len(entry.pending)
                if entry.kind == FILE:
                    nbytes = max(0, os.fstat(entry.fileno()).st_size - entry.offset())
                events.append(struct.pack("<QHB5xQH6x", userdata, 0, C.EVENTTYPE_FD_READ, nbytes, 0))
            else:
                selectable_r.append((userdata, entry))
        for userdata, entry, _fd in writers:
            if entry.kind in (FILE, DIR) or entry.stream is not None:
                events.append(struct.pack("<QHB5xQH6x", userdata, 0, C.EVENTTYPE_FD_WRITE, 0, 0))
            else:
                selectable_w.append((userdata, entry))
        if events:
            return events
        timeout = None if deadline is None else max(0.0, (deadline - time.monotonic_ns()) / 1e9)
        r_ready, w_ready = self.waiter.wait([e.fileno() for _, e in selectable_r],
                                            [e.fileno() for _, e in selectable_w], timeout)
        for userdata, entry in selectable_r:
            if entry.fileno() in r_ready:
                events.append(struct.pack("<QHB5xQH6x", userdata, 0, C.EVENTTYPE_FD_READ, 1, 0))
        for userdata, entry in selectable_w:
            if entry.fileno() in w_ready:
                events.append(struct.pack("<QHB5xQH6x", userdata, 0, C.EVENTTYPE_FD_WRITE, 0, 0))
        return events

    # --- sockets ---------------------------------------------------------------------------------------
    def sock_accept(self, fd: int, flags: int, fd_ptr: int) -> None:
        entry = self.fds.get(fd)
        if entry.kind != TCP_LISTENER or entry.sock is None:
            raise WasiError(Errno.NOTSOCK if entry.kind != TCP_STREAM else Errno.INVAL)
        if flags & ~C.FDFLAGS_NONBLOCK:
            raise WasiError(Errno.INVAL)
        self._need(entry, C.RIGHT_SOCK_ACCEPT)
        blocking = not flags & C.FDFLAGS_NONBLOCK and not entry.fdflags & C.FDFLAGS_NONBLOCK
        if blocking:
            self.waiter.wait_readable(entry.sock.fileno())
        extra: dict[str, Any] = {}
        if entry.gateway is not None:  # a client announced by the gateway: attach a data connection
            if not blocking and not self.waiter.wait_readable(entry.sock.fileno(), 0):
                raise WasiError(Errno.AGAIN)  # (a blocking accept has just waited for it)
            try:
                conn_id = gateway.next_connection(entry.sock, entry.gateway)
                conn = gateway.attach(entry.gateway, entry.gateway_key or b"", conn_id)
            except WireError as e:
                raise WasiError(Errno.CONNABORTED, str(e)) from None
            extra = {"gateway": entry.gateway, "gateway_key": entry.gateway_key, "gateway_conn": conn_id}
        else:
            try:
                conn, _addr = entry.sock.accept()
            except BlockingIOError:
                raise WasiError(Errno.AGAIN) from None
        conn.setblocking(not flags & C.FDFLAGS_NONBLOCK)
        new = FdEntry(TCP_STREAM, C.FILETYPE_SOCKET_STREAM, C.RIGHTS_SOCKET & ~C.RIGHT_SOCK_ACCEPT, 0,
                      fdflags=flags & C.FDFLAGS_NONBLOCK, readable=True, writable=True, sock=conn, **extra)
        new_fd = self.fds.add(new)
        self.mem.set_u32(fd_ptr, new_fd)

    @staticmethod
    def _take_pending(entry: FdEntry, n: int, peek: bool = False) -> bytes:
        data = entry.pending[:n]
        if not peek:
            entry.pending = entry.pending[n:]
        return data

    # --- the socket gateway: migrating connections ----------------------------------------------
    def detach_gateway(self) -> None:
        """Before a migration stops for good: quiesce every connection that goes through a
        gateway, read what was in flight into its fd's pending bytes, and let go of the data
        and control connections (the fds stay, with what the target needs to re-attach)."""
        streams = [e for e in self.fds.entries.values()
                   if e.kind == TCP_STREAM and e.gateway is not None and e.sock is not None]
        by_gateway: dict[tuple[str, bytes], list[FdEntry]] = {}
        for e in self.fds.entries.values():  # every gateway (a listener's too: the handover names the target)
            if e.gateway is not None and e.sock is not None:
                by_gateway.setdefault((e.gateway, e.gateway_key or b""), [])
        for e in streams:
            by_gateway[(e.gateway, e.gateway_key or b"")].append(e)  # type: ignore[index]
        for (address, key), entries in by_gateway.items():
            gateway.quiesce(address, key, [e.gateway_conn for e in entries if e.gateway_conn is not None],
                            self.gateway_handover)
            for e in entries:
                assert e.sock is not None
                e.pending += gateway.drain(e.sock)
                e.sock.close()
                e.sock = None
        for e in self.fds.entries.values():
            if e.kind == TCP_LISTENER and e.gateway is not None and e.sock is not None:
                e.sock.close()
                e.sock = None

    def reattach_gateway(self) -> None:
        """Connect every detached gateway fd again (after a restore, or a migration given up); while
        the :attr:`gate` holds the program (a migration not yet committed), only when it opens."""
        if self.gate.defer(self.reattach_gateway):
            return
        for e in self.fds.entries.values():
            if e.gateway is None or e.sock is not None:
                continue
            key = e.gateway_key or b""
            if e.kind == TCP_LISTENER:
                e.sock = gateway.connect_listener(e.gateway, key)
            elif e.kind == TCP_STREAM and e.gateway_conn is not None:
                e.sock = gateway.attach(e.gateway, key, e.gateway_conn)
                e.sock.setblocking(not e.fdflags & C.FDFLAGS_NONBLOCK)

    def _stream(self, fd: int, need: int) -> socket.socket:
        entry = self.fds.get(fd)
        if entry.kind not in (TCP_STREAM, TCP_LISTENER):
            raise WasiError(Errno.NOTSOCK)
        if entry.kind == TCP_LISTENER or entry.sock is None:
            raise WasiError(Errno.NOTCONN)
        self._need(entry, need)
        return entry.sock

    def sock_recv(self, fd: int, ri_data: int, ri_len: int, ri_flags: int, ro_len_ptr: int,
                  ro_flags_ptr: int) -> None:
        entry = self.fds.get(fd)
        iovs = self.mem.iovecs(ri_data, ri_len)
        total = sum(length for _, length in iovs)
        if entry.pending and entry.kind == TCP_STREAM:
            self._need(entry, C.RIGHT_FD_READ)
            data = self._take_pending(entry, total, peek=bool(ri_flags & C.RECV_PEEK))
            self.mem.set_u32(ro_len_ptr, self._scatter(iovs, data))
            self.mem.set_u16(ro_flags_ptr, 0)
            return
        sock = self._stream(fd, C.RIGHT_FD_READ)
        flags = (socket.MSG_PEEK if ri_flags & C.RECV_PEEK else 0) | (
            socket.MSG_WAITALL if ri_flags & C.RECV_WAITALL else 0)
        if total and not entry.fdflags & C.FDFLAGS_NONBLOCK and not ri_flags & C.RECV_WAITALL:
            self.waiter.wait_readable(sock.fileno())
        try:
            data = sock.recv(total, flags) if total else b""
        except BlockingIOError:
            raise WasiError(Errno.AGAIN) from None
        self.mem.set_u32(ro_len_ptr, self._scatter(iovs, data))
        self.mem.set_u16(ro_flags_ptr, 0)

    def sock_send(self, fd: int, si_data: int, si_len: int, si_flags: int, so_len_ptr: int) -> None:
        sock = self._stream(fd, C.RIGHT_FD_WRITE)
        data = self._gather(self.mem.iovecs(si_data, si_len))
        try:
            sent = sock.send(data) if data else 0
        except BlockingIOError:
            raise WasiError(Errno.AGAIN) from None
        self.mem.set_u32(so_len_ptr, sent)

    def sock_shutdown(self, fd: int, how: int) -> None:
        sock = self._stream(fd, C.RIGHT_SOCK_SHUTDOWN)
        modes = {C.SHUT_RD: socket.SHUT_RD, C.SHUT_WR: socket.SHUT_WR, C.SHUT_RD | C.SHUT_WR: socket.SHUT_RDWR}
        if how not in modes:
            raise WasiError(Errno.INVAL)
        sock.shutdown(modes[how])


__all__ = ["ProcExit", "SIGNATURES", "WASI_MODULE", "Wasi", "check_wasi_imports"]
