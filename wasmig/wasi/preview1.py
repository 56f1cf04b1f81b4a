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
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

from wasmig.wasi import constants as C
from wasmig.wasi import gateway
from wasmig.wasi.blocking import Gate, Waiter
from wasmig.wasi.errno import Errno, WasiError, from_oserror
from wasmig.wasi.fdtable import DIR, FILE, STDIO, TCP_LISTENER, TCP_STREAM, FdEntry, FdTable
from wasmig.wasi.filestat import filetype_of_mode, isatty, pack_filestat, signed64
from wasmig.wasi.memory import GuestMemory
from wasmig.wasi.paths import PathCalls
from wasmig.wasi.sockets import SocketCalls

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



class Wasi(PathCalls, SocketCalls):
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
        #: called before every host call (after the gate), when set: raises once the program may no
        #: longer act, which ends the run there (a fleet job whose runner lost the job's lease)
        self.fence: Callable[[], None] | None = None
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
            entry = FdEntry(STDIO, C.FILETYPE_CHARACTER_DEVICE if isatty(fd, stream) else C.FILETYPE_UNKNOWN,
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
            if self.fence is not None:
                self.fence()
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
        self.mem.write(buf, pack_filestat(st, filetype))

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
        self.mem.set_u64(newoffset_ptr, os.lseek(entry.fileno(), signed64(offset), host_whence))

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
                    ftype = filetype_of_mode(de.stat(follow_symlinks=False).st_mode)
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


__all__ = ["ProcExit", "SIGNATURES", "WASI_MODULE", "Wasi", "check_wasi_imports"]
