"""A minimal but honest WASI preview1 for running compute programs on the interpreter.

Why it exists: the full WASI layer (files, preopens, sockets, checkpointable host state) is its
own piece of work, but the interpreter needs real C programs to run *now* -- they are the best
end-to-end test there is. A C program built with wasi-libc needs only a handful of calls to
start, print and exit; those are implemented faithfully here (same errno values and struct
layouts as wasmtime), and everything else the module imports is linked to a stub returning
``ENOSYS``, so any module instantiates and a program that really needs files fails the way it
would on a WASI host without that feature, instead of failing to link.

There is no filesystem: ``fd_prestat_get`` answers ``EBADF`` for every fd, which is how wasi-libc
learns that there are no preopened directories.

Usage::

    wasi = MinimalWasi(["prog", "arg"], {"KEY": "value"}, stdin=b"input")
    exit_code, out, err = wasi.run("prog.wasm")

or, to drive the instance yourself::

    inst = wasmig.Instance(module, imports=wasi.imports_for(module))
    wasi.bind(inst)            # the host functions need the instance's exported memory
    inst.exports["_start"]()   # may raise ProcExit
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:  # imported lazily at run time: wasmig/__init__ may import this package
    from wasmig.binary.ir import FuncType
    from wasmig.binary.ir import Module as IRModule

__all__ = ["MinimalWasi", "ProcExit", "run", "WASI_MODULE", "Errno"]

WASI_MODULE = "wasi_snapshot_preview1"

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF


class Errno:
    """The preview1 errno values used here (``wasi_snapshot_preview1`` ``errno`` enum)."""

    SUCCESS = 0
    BADF = 8
    FAULT = 21
    INVAL = 28
    IO = 29
    NOSYS = 52
    SPIPE = 70


# Filetypes and rights (``filetype`` enum and ``rights`` flags of preview1).
FILETYPE_CHARACTER_DEVICE = 2
RIGHT_FD_READ = 1 << 1
RIGHT_FD_FDSTAT_SET_FLAGS = 1 << 3
RIGHT_FD_WRITE = 1 << 6
RIGHT_FD_FILESTAT_GET = 1 << 21
RIGHT_POLL_FD_READWRITE = 1 << 27
_STDIO_RIGHTS = RIGHT_FD_FDSTAT_SET_FLAGS | RIGHT_FD_FILESTAT_GET | RIGHT_POLL_FD_READWRITE

# Clock ids.
CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME, CLOCK_THREAD_CPUTIME = 0, 1, 2, 3

I32 = "i32"
I64 = "i64"

#: The signatures of the functions implemented here; an import with another type is a link error.
SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "args_get": ((I32, I32), (I32,)),
    "args_sizes_get": ((I32, I32), (I32,)),
    "environ_get": ((I32, I32), (I32,)),
    "environ_sizes_get": ((I32, I32), (I32,)),
    "fd_write": ((I32, I32, I32, I32), (I32,)),
    "fd_read": ((I32, I32, I32, I32), (I32,)),
    "fd_close": ((I32,), (I32,)),
    "fd_fdstat_get": ((I32, I32), (I32,)),
    "fd_seek": ((I32, I64, I32, I32), (I32,)),
    "fd_prestat_get": ((I32, I32), (I32,)),
    "fd_prestat_dir_name": ((I32, I32, I32), (I32,)),
    "clock_time_get": ((I32, I64, I32), (I32,)),
    "clock_res_get": ((I32, I32), (I32,)),
    "random_get": ((I32, I32), (I32,)),
    "proc_exit": ((I32,), ()),
    "sched_yield": ((), (I32,)),
}


class ProcExit(Exception):
    """Raised by ``proc_exit`` to unwind the whole wasm call stack; ``code`` is the exit status.

    Deliberately not a :class:`wasmig.errors.WasmError`: exiting is not a failure, and code that
    catches ``WasmError`` (or ``Trap``) around a run must not swallow it.
    """

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"proc_exit({code})")


class _Fault(Exception):
    """A pointer argument lies outside linear memory: the call returns ``EFAULT``."""


def _ir_of(module: Any) -> IRModule:
    """Accept a :class:`wasmig.Module` (via its ``.ir``) or a decoded IR module."""
    from wasmig.binary.ir import Module as IRModule

    if isinstance(module, IRModule):
        return module
    ir = getattr(module, "ir", None)
    if isinstance(ir, IRModule):
        return ir
    raise TypeError(f"expected a wasmig.Module (with .ir) or a wasmig.binary.ir.Module, got {type(module).__name__}")


def _default(t: str) -> Any:
    return 0.0 if t in ("f32", "f64") else (None if t in ("funcref", "externref") else 0)


class MinimalWasi:
    """Host state and host functions of one WASI process: argv, environment, stdio.

    ``stdout``/``stderr`` are always captured (``self.stdout``/``self.stderr`` bytearrays, which is
    what tests compare); pass ``echo_stdout``/``echo_stderr`` binary streams (e.g.
    ``sys.stdout.buffer``) to also see the output live.
    """

    def __init__(
        self,
        args: Sequence[str] = ("main",),
        env: Mapping[str, str] | None = None,
        stdin: bytes = b"",
        *,
        echo_stdout: BinaryIO | None = None,
        echo_stderr: BinaryIO | None = None,
    ) -> None:
        self.args = [str(a) for a in args]
        self.env = dict(env or {})
        self.stdin = bytes(stdin)
        self.stdin_pos = 0
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.echo = {1: echo_stdout, 2: echo_stderr}
        self.open_fds = {0, 1, 2}
        self.memory: Any = None  # the instance's exported memory, set by bind()
        self.calls: dict[str, int] = {}  # how often each WASI function was called (for reports)

    # --- wiring ---------------------------------------------------------------------------------
    def imports_for(self, module: Any) -> dict[str, dict[str, Any]]:
        """An import object providing every ``wasi_snapshot_preview1`` function the module imports.

        Implemented functions must have their preview1 signature (else :class:`wasmig.LinkError`);
        any other function gets an ``ENOSYS`` stub typed exactly as the module declares it.
        """
        from wasmig import HostFunc, LinkError

        ir = _ir_of(module)
        funcs: dict[str, Any] = {}
        for imp in ir.imports:
            if imp.module != WASI_MODULE or imp.kind != "func":
                continue
            ftype: FuncType = ir.types[imp.desc]  # type: ignore[index]
            impl = getattr(self, f"_{imp.name}", None) if imp.name in SIGNATURES else None
            if impl is not None:
                want = SIGNATURES[imp.name]
                if (tuple(ftype.params), tuple(ftype.results)) != want:
                    raise LinkError(
                        f"{WASI_MODULE}.{imp.name} is imported with type {ftype}, "
                        f"but WASI preview1 defines [{' '.join(want[0])}] -> [{' '.join(want[1])}]"
                    )
                fn = self._guard(imp.name, impl)
            else:
                fn = self._enosys(imp.name, ftype)
            host = HostFunc(list(ftype.params), list(ftype.results), fn)
            if hasattr(host, "name"):  # wasmig's HostFunc names itself in trap messages
                host.name = f"{WASI_MODULE}.{imp.name}"
            funcs[imp.name] = host
        return {WASI_MODULE: funcs}

    def bind(self, instance: Any) -> None:
        """Give the host functions the instance's memory (they are created before it exists)."""
        try:
            self.memory = instance.exports["memory"]
        except KeyError:
            raise ValueError("a WASI module must export its memory as 'memory'") from None

    def _guard(self, name: str, impl: Callable[..., int | None]) -> Callable[..., int | None]:
        """Count the call and turn an out-of-bounds pointer into ``EFAULT`` instead of a crash."""
        calls = self.calls

        def host(*args: int) -> int | None:
            calls[name] = calls.get(name, 0) + 1
            try:
                return impl(*args)
            except _Fault:
                return Errno.FAULT

        host.__name__ = name
        return host

    def _enosys(self, name: str, ftype: FuncType) -> Callable[..., Any]:
        results = tuple(ftype.results)
        calls = self.calls
        if results == (I32,):
            value: Any = Errno.NOSYS
        elif not results:
            value = None
        else:  # not a preview1 shape, but link anyway: errno first if it can be, zeros after
            value = tuple(Errno.NOSYS if i == 0 and t == I32 else _default(t) for i, t in enumerate(results))

        def stub(*_args: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return value

        stub.__name__ = f"{name}_enosys"
        return stub

    # --- memory helpers -------------------------------------------------------------------------
    def _mem(self) -> Any:
        if self.memory is None:
            raise RuntimeError("MinimalWasi host function called before bind(instance)")
        return self.memory

    def _read(self, ptr: int, n: int) -> bytes:
        mem = self._mem()
        ptr &= M32
        if n < 0 or ptr + n > mem.size_pages * 65536:
            raise _Fault
        try:
            return mem.read(ptr, n)
        except (IndexError, ValueError) as exc:
            raise _Fault from exc

    def _write(self, ptr: int, data: bytes) -> None:
        mem = self._mem()
        ptr &= M32
        if ptr + len(data) > mem.size_pages * 65536:
            raise _Fault
        try:
            mem.write(ptr, data)
        except (IndexError, ValueError) as exc:
            raise _Fault from exc

    def _iovecs(self, iovs: int, count: int) -> list[tuple[int, int]]:
        count &= M32
        raw = self._read(iovs, 8 * count)
        return [struct.unpack_from("<II", raw, 8 * i) for i in range(count)]

    # --- args and environment -------------------------------------------------------------------
    @staticmethod
    def _strings_sizes(strings: list[bytes]) -> tuple[int, int]:
        return len(strings), sum(len(s) + 1 for s in strings)

    def _put_strings(self, strings: list[bytes], ptrs: int, buf: int) -> int:
        ptrs &= M32
        buf &= M32
        table = bytearray()
        blob = bytearray()
        for s in strings:
            table += struct.pack("<I", (buf + len(blob)) & M32)
            blob += s + b"\0"
        self._write(ptrs, bytes(table))
        self._write(buf, bytes(blob))
        return Errno.SUCCESS

    def _arg_bytes(self) -> list[bytes]:
        return [a.encode() for a in self.args]

    def _env_bytes(self) -> list[bytes]:
        return [f"{k}={v}".encode() for k, v in self.env.items()]

    def _args_sizes_get(self, argc_ptr: int, size_ptr: int) -> int:
        n, size = self._strings_sizes(self._arg_bytes())
        self._write(argc_ptr, struct.pack("<I", n))
        self._write(size_ptr, struct.pack("<I", size))
        return Errno.SUCCESS

    def _args_get(self, argv: int, argv_buf: int) -> int:
        return self._put_strings(self._arg_bytes(), argv, argv_buf)

    def _environ_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        n, size = self._strings_sizes(self._env_bytes())
        self._write(count_ptr, struct.pack("<I", n))
        self._write(size_ptr, struct.pack("<I", size))
        return Errno.SUCCESS

    def _environ_get(self, environ: int, environ_buf: int) -> int:
        return self._put_strings(self._env_bytes(), environ, environ_buf)

    # --- file descriptors (stdio only) ----------------------------------------------------------
    def _fd_write(self, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
        fd &= M32
        if fd not in (1, 2) or fd not in self.open_fds:
            return Errno.BADF
        data = b"".join(self._read(base, length) for base, length in self._iovecs(iovs, iovs_len))
        (self.stdout if fd == 1 else self.stderr).extend(data)
        echo = self.echo[fd]
        if echo is not None and data:
            echo.write(data)
            echo.flush()
        self._write(nwritten_ptr, struct.pack("<I", len(data)))
        return Errno.SUCCESS

    def _fd_read(self, fd: int, iovs: int, iovs_len: int, nread_ptr: int) -> int:
        fd &= M32
        if fd != 0 or fd not in self.open_fds:
            return Errno.BADF
        total = 0
        for base, length in self._iovecs(iovs, iovs_len):
            chunk = self.stdin[self.stdin_pos : self.stdin_pos + length]
            if chunk:
                self._write(base, chunk)
            self.stdin_pos += len(chunk)
            total += len(chunk)
            if len(chunk) < length:  # end of input: a short read, as from a pipe
                break
        self._write(nread_ptr, struct.pack("<I", total))
        return Errno.SUCCESS

    def _fd_close(self, fd: int) -> int:
        fd &= M32
        if fd not in self.open_fds:
            return Errno.BADF
        self.open_fds.discard(fd)
        return Errno.SUCCESS

    def _fd_fdstat_get(self, fd: int, buf: int) -> int:
        fd &= M32
        if fd not in self.open_fds:
            return Errno.BADF
        rights = _STDIO_RIGHTS | (RIGHT_FD_READ if fd == 0 else RIGHT_FD_WRITE)
        # struct fdstat { u8 filetype; u16 flags @2; u64 rights_base @8; u64 rights_inheriting @16 }
        self._write(buf, struct.pack("<BxHxxxxQQ", FILETYPE_CHARACTER_DEVICE, 0, rights, 0))
        return Errno.SUCCESS

    def _fd_seek(self, fd: int, offset: int, whence: int, newoffset_ptr: int) -> int:
        fd &= M32
        if fd not in self.open_fds:
            return Errno.BADF
        return Errno.SPIPE  # stdio are character devices: not seekable

    def _fd_prestat_get(self, fd: int, buf: int) -> int:
        return Errno.BADF  # no preopened directories: wasi-libc stops scanning at the first EBADF

    def _fd_prestat_dir_name(self, fd: int, path: int, path_len: int) -> int:
        return Errno.BADF

    # --- clocks, randomness, process ------------------------------------------------------------
    def _clock_time_get(self, clock_id: int, precision: int, time_ptr: int) -> int:
        clock_id &= M32
        if clock_id == CLOCK_REALTIME:
            now = time.time_ns()
        elif clock_id == CLOCK_MONOTONIC:
            now = time.monotonic_ns()
        elif clock_id == CLOCK_PROCESS_CPUTIME:
            now = time.process_time_ns()
        elif clock_id == CLOCK_THREAD_CPUTIME:
            now = time.thread_time_ns()
        else:
            return Errno.INVAL
        self._write(time_ptr, struct.pack("<Q", now & M64))
        return Errno.SUCCESS

    def _clock_res_get(self, clock_id: int, res_ptr: int) -> int:
        clock_id &= M32
        names = {
            CLOCK_REALTIME: "time",
            CLOCK_MONOTONIC: "monotonic",
            CLOCK_PROCESS_CPUTIME: "process_time",
            CLOCK_THREAD_CPUTIME: "thread_time",
        }
        if clock_id not in names:
            return Errno.INVAL
        res_ns = max(1, round(time.get_clock_info(names[clock_id]).resolution * 1e9))
        self._write(res_ptr, struct.pack("<Q", res_ns))
        return Errno.SUCCESS

    def _random_get(self, buf: int, buf_len: int) -> int:
        buf_len &= M32
        self._read(buf, buf_len)  # bounds check first: no partial write on EFAULT
        self._write(buf, os.urandom(buf_len))
        return Errno.SUCCESS

    def _proc_exit(self, code: int) -> None:
        raise ProcExit(code & M32)

    def _sched_yield(self) -> int:
        return Errno.SUCCESS

    # --- running a command ----------------------------------------------------------------------
    def run(self, module_or_path: Any, **instance_kwargs: Any) -> tuple[int, bytes, bytes]:
        """Instantiate, call ``_start`` and return ``(exit_code, stdout, stderr)``.

        ``_start`` returning normally is exit code 0 (wasi-libc calls ``proc_exit`` itself for a
        non-zero ``main`` result). Traps propagate as :class:`wasmig.Trap`; ``instance_kwargs``
        go to :class:`wasmig.Instance` (e.g. ``engine="interp"``).
        """
        import wasmig

        module = module_or_path
        if isinstance(module_or_path, (str, os.PathLike)):
            module = wasmig.Module.from_file(Path(module_or_path))
        elif isinstance(module_or_path, (bytes, bytearray)):
            module = wasmig.Module.from_bytes(bytes(module_or_path))
        instance_kwargs.setdefault("engine", "interp")
        inst = wasmig.Instance(module, imports=self.imports_for(module), **instance_kwargs)
        return self.run_instance(inst)

    def run_instance(self, inst: Any) -> tuple[int, bytes, bytes]:
        """Call ``_start`` of an instance created with :meth:`imports_for`; see :meth:`run`.

        For callers that need the instance itself afterwards (its memory, its machine's
        counters); binds the instance if that has not been done yet.
        """
        import wasmig

        if self.memory is None:
            self.bind(inst)
        code = 0
        try:
            inst.exports["_start"]()
        except ProcExit as exc:
            code = exc.code
        except wasmig.WasmError as exc:  # an engine that wraps host exceptions: unwrap proc_exit
            cause = exc.__cause__ or exc.__context__
            if not isinstance(cause, ProcExit):
                raise
            code = cause.code
        return code, bytes(self.stdout), bytes(self.stderr)


def run(
    module_or_path: Any,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes = b"",
    *,
    echo: bool = False,
    **instance_kwargs: Any,
) -> tuple[int, bytes, bytes]:
    """Run a WASI command on wasmig: ``(exit_code, stdout_bytes, stderr_bytes)``.

    ``args`` defaults to just the program name; ``echo=True`` also streams the output to this
    process's stdout/stderr while it runs.
    """
    if args is None:
        name = Path(module_or_path).name if isinstance(module_or_path, (str, os.PathLike)) else "main"
        args = [name]
    wasi = MinimalWasi(
        args,
        env,
        stdin,
        echo_stdout=sys.stdout.buffer if echo else None,
        echo_stderr=sys.stderr.buffer if echo else None,
    )
    return wasi.run(module_or_path, **instance_kwargs)
