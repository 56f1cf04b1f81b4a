"""README.md runs: every fenced block is executed (or, for `make` lines and command synopses,
checked) by the convention in docs/readme-tests.md.

- ```sh / ```bash / ```console blocks run with bash in a scratch directory whose PATH starts with
  this Python's bin directory (`wasmig` is the venv's console script, `python` the venv's python),
  one command per line, each line's exit code, stdout and stderr kept apart; two-machine examples
  run on loopback (hosts become 127.0.0.1, ports free ones), background commands are waited for
  until they listen or are ready to be signalled, and everything a block started is killed after.
- ```python blocks run with this Python in a scratch directory; a line `EXPR  # -> VALUE` asserts
  that EXPR == VALUE.
- A comment `<!-- readme-test: ... -->` just before a block provides files (`setup=`), names the
  lines to run in the background (`bg=`), files the block must create (`creates=`), extra checks
  (`check=`), or marks a data block (`file=`) or a command synopsis (`synopsis`).
- A block with any other language tag, or none, fails the test: nothing escapes unnoticed.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wasmig.toolchain import compile_c

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PROGRAMS = Path(__file__).parent / "programs"
BIN = Path(sys.executable).parent  # the venv's bin: wasmig, python
SHELL_LANGS = ("sh", "bash", "console")
PYTHON_LANGS = ("python",)
BLOCK_TIMEOUT = 180.0  # seconds for a whole block (its foreground commands)
WAIT_TIMEOUT = 30.0  # seconds for one background command to become ready, or for a check's condition
KEYS = ("setup", "file", "bg", "creates", "check", "synopsis")
#: commands a block may need that are not Python's: the test is skipped (saying why) without them
EXTERNAL_TOOLS = {"wat2wasm": "Debian package wabt"}

#: setup= names provided by the test (besides the README's own file= blocks, and X.wasm assembled
#: from a file= block X.wat)
FIXTURES = {
    "prog.wasm": "tests/programs/ticker.c: prints `tick I CHECKSUM` every 100 ms, 100 times, then `done`",
    "server.wasm": "tests/programs/kv_server.c: a TCP key-value server (`INCR name` -> `name N`) on fd 3",
    "token": "a fresh token file (48 hex digits, mode 0600)",
    "peer.pub": "the public key of the machine at the other end: on this one machine, the user's own "
                "(~/.config/wasmig/wasmig.pub in the block's private HOME, made now)",
    "ck": "a checkpoint directory of prog.wasm, stopped after a few ticks "
          "(`wasmig run --checkpoint-dir ck --checkpoint-at-step 55000 --checkpoint-then exit prog.wasm 30`: "
          "restored, it runs 3 s more)",
}
CK_STEP = 55000
#: prog.wasm's ticks (ticker.c's default): its 10 s must outlast the steps of a block that acts on it
#: in the background (`wasmig checkpoint PID`, `wasmig migrate $!`) on a loaded machine; at 30 (3 s),
#: `wasmig migrate $!` found the program gone once under load 10 in CI
TICKS = 100

HINT = ("\n(Blocks run in an empty scratch directory: one that needs files gets them with "
        "<!-- readme-test: setup=NAME,... --> right before it; see docs/readme-tests.md.)")

DIRECTIVE = re.compile(r"^\s*<!--\s*readme-test:(.*?)-->\s*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


# --- README.md as blocks ------------------------------------------------------------------------
@dataclass
class Block:
    line: int  # README line of the opening fence
    lang: str
    text: str
    options: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"README block at line {self.line} ({self.lang or 'no language tag'})"

    def fail(self, message: str) -> None:
        pytest.fail(f"{self.where}: {message}", pytrace=False)


def parse_directive(body: str) -> tuple[dict[str, list[str]], list[str]]:
    options: dict[str, list[str]] = {}
    problems = []
    for token in body.split():
        key, _, value = token.partition("=")
        if key not in KEYS:
            problems.append(f"unknown readme-test key {key!r} (known: {', '.join(KEYS)})")
        options.setdefault(key, []).extend(v for v in value.split(",") if v)
    return options, problems


def parse_readme(text: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown text, each with its readme-test options; and problems that
    belong to no block (a readme-test comment that is not right before a block, an unclosed fence)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    pending: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = DIRECTIVE.match(line)
        fence = FENCE.match(line)
        if directive:
            if pending is not None:
                problems.append(f"README line {pending[0]}: readme-test comment not followed by a code block")
            pending = (i + 1, directive.group(1))
        elif fence:
            marker, info = fence.group(1), fence.group(2).strip()
            closing = re.compile(rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}\s*$")
            j = i + 1
            while j < len(lines) and not closing.match(lines[j]):
                j += 1
            if j == len(lines):
                problems.append(f"README line {i + 1}: the code block is never closed")
            options, option_problems = parse_directive(pending[1]) if pending else ({}, [])
            blocks.append(Block(i + 1, info.split()[0] if info else "", "\n".join(lines[i + 1 : j]) + "\n", options,
                                option_problems))
            pending = None
            i = j
        elif line.strip() and pending is not None:
            problems.append(f"README line {pending[0]}: readme-test comment not right before a code block")
            pending = None
        i += 1
    if pending is not None:
        problems.append(f"README line {pending[0]}: readme-test comment not followed by a code block")
    return blocks, problems


def file_blocks(blocks: list[Block]) -> dict[str, Block]:
    return {b.options["file"][0]: b for b in blocks if b.options.get("file")}


def provided_by_readme(name: str, files: dict[str, Block]) -> bool:
    return name in files or (name.endswith(".wasm") and name[: -len(".wasm")] + ".wat" in files)


def convention_problems(block: Block, blocks: list[Block]) -> list[str]:
    """What in ``block`` breaks the convention (docs/readme-tests.md)."""
    problems = list(block.problems)
    opts = block.options
    files = file_blocks(blocks)
    if "file" in opts:
        if len(opts["file"]) != 1:
            problems.append("file= names one file")
        elif not any(n == opts["file"][0] or n == Path(opts["file"][0]).stem + ".wasm"
                     for b in blocks for n in b.options.get("setup", [])):
            problems.append(f"file={opts['file'][0]} is used by no block's setup=")
        if set(opts) - {"file"}:
            problems.append("a file= block takes no other keys")
        return problems
    if not block.lang:
        problems.append("has no language tag: tag it sh, bash, console or python (it then runs), or give it "
                        "<!-- readme-test: file=NAME --> (its text is a file other blocks use); "
                        "see docs/readme-tests.md")
    elif block.lang not in SHELL_LANGS + PYTHON_LANGS:
        problems.append(f"language {block.lang!r} does not run: use sh, bash, console or python, or mark the block "
                        "<!-- readme-test: file=NAME --> if it is a file other blocks use; see docs/readme-tests.md")
    for name in opts.get("setup", []):
        if name not in FIXTURES and not provided_by_readme(name, files):
            problems.append(f"setup={name}: no such fixture (known: {', '.join(FIXTURES)}) and no README block "
                            f"with file={name}")
    for name in opts.get("check", []):
        if name not in CHECKS:
            problems.append(f"check={name}: no such check (known: {', '.join(CHECKS)})")
    if block.lang in PYTHON_LANGS and ({"bg", "synopsis"} & set(opts)):
        problems.append("bg= and synopsis are for shell blocks")
    n_lines = len(block.text.splitlines())
    for value in opts.get("bg", []):
        if not value.isdigit() or not 1 <= int(value) <= n_lines:
            problems.append(f"bg={value}: not a line of the block (1..{n_lines})")
    return problems


BLOCKS, README_PROBLEMS = parse_readme(README.read_text())


# --- what blocks get: files, programs, checkpoint directories ----------------------------------
class Assets:
    """Everything ``setup=`` provides, built once per test session (and copied for each block)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._built: dict[str, Path] = {}
        self._reference: list[str] | None = None

    def program(self, name: str) -> Path:
        source = {"prog.wasm": "ticker.c", "server.wasm": "kv_server.c"}[name]
        return compile_c(PROGRAMS / source)

    @property
    def reference(self) -> list[str]:
        """prog.wasm's whole output, run without pauses."""
        if self._reference is None:
            run = subprocess.run([str(BIN / "wasmig"), "run", str(self.program("prog.wasm")), str(TICKS), "0"],
                                 capture_output=True, text=True, timeout=120, check=True)
            self._reference = run.stdout.splitlines()
        return self._reference

    def checkpoint_dir(self) -> Path:
        ck = self.base / "ck-source" / "ck"
        if not ck.exists():
            ck.parent.mkdir(parents=True)
            shutil.copy(self.program("prog.wasm"), ck.parent / "prog.wasm")
            run = subprocess.run([str(BIN / "wasmig"), "run", "--checkpoint-dir", "ck", "--checkpoint-at-step",
                                  str(CK_STEP), "--checkpoint-then", "exit", "prog.wasm", "30"],
                                 cwd=ck.parent, capture_output=True, text=True, timeout=120)
            assert run.returncode == 0 and list((ck / "snapshots").glob("*.snap")), run.stderr
        return ck

    def provide(self, name: str, dest: Path, files: dict[str, Block]) -> None:
        target = dest / name
        if name in files:
            target.write_text(files[name].text)
        elif name.endswith(".wasm") and name[:-5] + ".wat" in files:
            if shutil.which("wat2wasm") is None:
                pytest.skip("wat2wasm missing (Debian package wabt)")
            (dest / (name[:-5] + ".wat")).write_text(files[name[:-5] + ".wat"].text)
            subprocess.run(["wat2wasm", name[:-5] + ".wat", "-o", name], cwd=dest, check=True, timeout=60)
        elif name in ("prog.wasm", "server.wasm"):
            shutil.copy(self.program(name), target)
        elif name == "token":
            target.write_text(secrets.token_hex(24))
            target.chmod(0o600)
        elif name == "peer.pub":
            from wasmig.keys import KeyPair, write_key_pair

            # the user's key directory in the block's private HOME (environment() drops the test run's)
            key_dir = dest / ".readme" / "home" / ".config" / "wasmig"
            if not key_dir.exists():
                write_key_pair(KeyPair.generate("readme"), key_dir)
            shutil.copy(key_dir / "wasmig.pub", target)
        elif name == "ck":
            shutil.copytree(self.checkpoint_dir(), target)
            # ck is sealed with the test run's key, and the block's user is the one who made it: its
            # private HOME holds that key pair, so `wasmig.restore("ck")` needs no trust= (as at home)
            key_dir = dest / ".readme" / "home" / ".config" / "wasmig"
            if not key_dir.exists():
                key_dir.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(os.environ["WASMIG_KEY_DIR"], key_dir)
        else:  # pragma: no cover - convention_problems refuses these first
            raise AssertionError(f"no fixture {name}")


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return Assets(tmp_path_factory.mktemp("readme-assets"))


def environment(scratch: Path) -> dict[str, str]:
    """The environment of a block: the venv first on PATH, a private HOME and wasmig runtime
    directory (`wasmig serve`'s state, status files and control sockets stay in the scratch dir)."""
    if not (BIN / "wasmig").exists():
        pytest.fail(f"no wasmig console script in {BIN}: install the project into this Python (pip install -e .)")
    home = scratch / ".readme" / "home"
    runtime = scratch / ".readme" / "run"
    home.mkdir(parents=True, exist_ok=True)
    runtime.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "COV_")) and k not in ("WASMIG_KEY_DIR", "XDG_CONFIG_HOME")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(home), WASMIG_RUNTIME_DIR=str(runtime),
               PYTHONUNBUFFERED="1")
    return env


# --- shell blocks --------------------------------------------------------------------------------
def strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` starting a word, outside quotes)."""
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = None
        elif c == "\\":
            i += 1
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
        i += 1
    return line.rstrip()


@dataclass
class Command:
    line: int  # line in the block (1 = the first line after the fence)
    readme: str  # as written
    text: str = ""  # as run
    background: bool = False
    expected: list[str] | None = None  # console blocks: the output shown under it
    index: int = 0


def commands_of(block: Block) -> list[Command]:
    """The block's commands: one per line (``\\`` continues a line); in a console block the lines
    starting with ``$ `` are commands and the lines under one its expected output."""
    out: list[Command] = []
    raw = block.text.splitlines()
    console = block.lang == "console"
    i = 0
    while i < len(raw):
        start, line = i + 1, raw[i]
        i += 1
        if console:
            if not line.startswith("$ "):
                if out and out[-1].expected is not None:
                    out[-1].expected.append(line.rstrip())
                elif line.strip():
                    block.fail(f"line {start} of a console block is output before any `$ ` command")
                continue
            line = line[2:]
        while line.rstrip().endswith("\\") and i < len(raw):
            line = line.rstrip()[:-1] + " " + raw[i].strip().removeprefix("> ")
            i += 1
        code = strip_comment(line).strip()
        if code:
            out.append(Command(start, code, expected=[] if console else None))
    for cmd in out:  # console output: trailing blank lines are not part of it
        while cmd.expected and not cmd.expected[-1]:
            cmd.expected.pop()
    return out


HOST_PORT = re.compile(r"(?<![\w.:/-])(?:\d{1,3}(?:\.\d{1,3}){3}|localhost|[A-Za-z][\w-]*(?:\.[\w-]+)*):(\d{2,5})\b")


def rewrite(text: str, ports: dict[str, int]) -> str:
    """A command as it runs on one machine: every HOST:PORT becomes 127.0.0.1 and a free port (the
    same README port, the same free port), the placeholder PID the last background command's."""
    def host_port(m: re.Match[str]) -> str:
        if m.group(1) not in ports:
            ports[m.group(1)] = free_port()
        return f"127.0.0.1:{ports[m.group(1)]}"

    text = HOST_PORT.sub(host_port, text)
    return re.sub(r"\bPID\b", "$!", text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PRELUDE = r"""
__listening() {  # PORT: some socket listens on it (read from /proc: no connection is made)
  local hex; hex=$(printf '%04X' "$1")
  grep -qE "^ *[0-9]+: [0-9A-F]+:$hex [0-9A-F]+:[0-9A-F]+ 0A " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
__ready() {  # PID KIND PORT...: wait until a background command listens on its ports (or, for
             # KIND=runtime, has its status file or control socket), or is gone; at most WAIT s
  local pid=$1 kind=$2 deadline=$((SECONDS + WAIT)) ok p; shift 2
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || return 0
    ok=1
    for p in "$@"; do __listening "$p" || ok=0; done
    if [[ $kind == runtime && ! -e $WASMIG_RUNTIME_DIR/$pid.json && ! -e $WASMIG_RUNTIME_DIR/$pid.sock ]]; then ok=0; fi
    ((ok)) && return 0
    sleep 0.05
  done
  echo "background command (pid $pid) not ready after WAIT s" >> .readme/not-ready
}
"""


def shell_script(commands: list[Command]) -> str:
    parts = [PRELUDE.replace("WAIT", str(int(WAIT_TIMEOUT)))]
    for cmd in commands:
        k = cmd.index
        io_ = f"> .readme/{k}.out 2> .readme/{k}.err"
        parts.append(f"# block line {cmd.line}: {cmd.readme}")
        if cmd.background:
            parts.append(f"{cmd.text} {io_} &")
            parts.append(f"__pid_{k}=$!; echo $! > .readme/{k}.pid")
            ports = re.findall(r"--(?:listen|control|tcplisten)[ =]127\.0\.0\.1:(\d+)", cmd.text)
            kind = "runtime" if re.search(r"--(checkpoint-dir|migratable)\b", cmd.text) else "none"
            parts.append(f"__ready $! {kind} {' '.join(ports)}")
        else:
            parts.append(f"{{ {cmd.text}\n}} {io_}; echo $? > .readme/{k}.rc")
    parts.append("touch .readme/done")
    parts.append(f"__end=$((SECONDS + {int(BLOCK_TIMEOUT)}))")
    parts.append("while [[ ! -e .readme/stop ]] && ((SECONDS < __end)); do sleep 0.05; done")
    for cmd in commands:
        if cmd.background:
            parts.append(f"wait $__pid_{cmd.index}; echo $? > .readme/{cmd.index}.rc")
    return "\n".join(parts) + "\n"


@dataclass
class Result:
    """One command of a shell block, while and after it runs."""

    cmd: Command
    dir: Path

    def _read(self, suffix: str) -> str:
        try:
            return (self.dir / f"{self.cmd.index}.{suffix}").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def out(self) -> str:
        return self._read("out")

    @property
    def err(self) -> str:
        return self._read("err")

    @property
    def rc(self) -> int | None:
        text = self._read("rc").strip()
        return int(text) if text else None

    @property
    def pid(self) -> int | None:
        text = self._read("pid").strip()
        return int(text) if text else None

    def describe(self) -> str:
        return (f"`{self.cmd.readme}` (block line {self.cmd.line}; ran as `{self.cmd.text}`): exit {self.rc}\n"
                f"--- stdout\n{self.out[-3000:]}--- stderr\n{self.err[-3000:]}")


@dataclass
class Run:
    """A shell block being run: what checks look at."""

    block: Block
    scratch: Path
    results: list[Result]
    assets: Assets

    def find(self, pattern: str, check: str) -> Result:
        """The block's first command (as run) matching ``pattern``."""
        for r in self.results:
            if re.search(pattern, r.cmd.text):
                return r
        raise AssertionError(f"{self.block.where}: check={check} expects a command matching {pattern!r}")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.block.where}: {what} did not happen within {timeout:g} s")
            time.sleep(0.05)

    def wait_exit(self, result: Result, timeout: float = WAIT_TIMEOUT) -> None:
        pid = result.pid
        assert pid is not None
        self.wait_for(lambda: not running(pid), f"`{result.cmd.readme}` ending", timeout)


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (read from /proc), children first listed after their parents."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def check_make(block: Block, cmd: Command) -> None:
    """A `make TARGET...` line is not run (it would run this test suite inside itself, or install
    things): its targets must exist and plan without error (`make -n`), and `make test` must be
    what CI runs."""
    args = shlex.split(cmd.readme)[1:]
    run = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        block.fail(f"`{cmd.readme}` (block line {cmd.line}): `make -n` fails:\n{run.stderr[-2000:]}")
    if "test" in args and not re.search(r"^\s*make test\s*$", (REPO / ".ci" / "run").read_text(), re.M):
        block.fail("the README says `make test` is the test suite, but .ci/run does not run `make test`")


def check_synopsis(block: Block, cmd: Command) -> None:
    """A synopsis line (`wasmig SUBCOMMAND [--option ARG]... ARGS`) is not run: its subcommand's
    --help must exist and name every option it shows."""
    words = cmd.readme.split()
    if len(words) < 2 or words[0] != "wasmig":
        block.fail(f"synopsis line {cmd.line} does not start with `wasmig SUBCOMMAND`")
    run = subprocess.run([str(BIN / "wasmig"), words[1], "--help"], capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        block.fail(f"synopsis line {cmd.line}: `wasmig {words[1]} --help` fails:\n{run.stderr}")
    missing = [o for o in re.findall(r"--[\w-]+", cmd.readme) if not re.search(rf"{o}\b", run.stdout)]
    if missing:
        block.fail(f"synopsis line {cmd.line}: `wasmig {words[1]} --help` does not mention {', '.join(missing)}")


def console_matches(expected: list[str], actual: list[str]) -> bool:
    """Console output as shown, where a line `...` stands for any number of lines."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(console_matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and actual[0] == expected[0] and console_matches(expected[1:], actual[1:])


def run_shell(block: Block, scratch: Path, assets: Assets) -> None:
    commands = commands_of(block)
    if not commands:
        block.fail("has no command")
    bg_lines = {int(v) for v in block.options.get("bg", [])}
    ports: dict[str, int] = {}
    runnable = []
    for cmd in commands:
        if cmd.readme.split()[0] == "make":
            check_make(block, cmd)
            continue
        if "synopsis" in block.options:
            check_synopsis(block, cmd)
            continue
        syntax = subprocess.run(["bash", "-n", "-c", cmd.readme], capture_output=True, text=True, timeout=30)
        if syntax.returncode != 0:
            block.fail(f"line {cmd.line}: `{cmd.readme}` is not a complete command by itself; the convention is "
                       f"one command per line (docs/readme-tests.md): {syntax.stderr.strip()}")
        tool = cmd.readme.split()[0]
        if tool in EXTERNAL_TOOLS and shutil.which(tool) is None:
            pytest.skip(f"{tool} missing ({EXTERNAL_TOOLS[tool]})")
        text = cmd.readme
        if text.endswith("&") and not text.endswith("&&"):
            cmd.background, text = True, text[:-1].rstrip()
        cmd.background = cmd.background or cmd.line in bg_lines
        cmd.text = rewrite(text, ports)
        cmd.index = len(runnable) + 1
        runnable.append(cmd)
    if not runnable:
        return
    state = scratch / ".readme"
    state.mkdir(exist_ok=True)
    script = state / "block.sh"
    script.write_text(shell_script(runnable))
    results = [Result(cmd, state) for cmd in runnable]
    run = Run(block, scratch, results, assets)
    with open(state / "bash.out", "wb") as out, open(state / "bash.err", "wb") as err:
        bash = subprocess.Popen(["bash", str(script)], cwd=scratch, env=environment(scratch),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
    failure: str | None = None
    killed: set[int] = set()
    try:
        deadline = time.monotonic() + BLOCK_TIMEOUT
        while not (state / "done").exists() and bash.poll() is None:
            if time.monotonic() > deadline:
                stuck = next((r for r in results if not r.cmd.background and r.rc is None), None)
                failure = (f"did not finish within {BLOCK_TIMEOUT:g} s"
                           + (f"; still running: {stuck.describe()}" if stuck else ""))
                break
            time.sleep(0.05)
        else:
            if not (state / "done").exists():
                failure = f"bash ended early (exit {bash.returncode}): {(state / 'bash.err').read_text()[-2000:]}"
        if failure is None:
            failure = check_shell_results(run)
    finally:
        (state / "stop").touch()  # bash now collects the exit codes of the background commands...
        for pid in descendants(bash.pid):  # ...once everything the block started and still runs is ended
            if running(pid):
                killed.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            bash.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(bash.pid, signal.SIGKILL)
            bash.wait()
    if failure:
        block.fail(failure)
    for r in results:  # a background command that ended by itself must have succeeded
        if r.cmd.background and r.pid not in killed and r.rc != 0:
            block.fail(f"background command failed: {r.describe()}")


def check_shell_results(run: Run) -> str | None:
    """What is wrong with a block's foreground commands and its checks, or None."""
    not_ready = run.scratch / ".readme" / "not-ready"
    if not_ready.exists():
        return not_ready.read_text()
    for r in run.results:
        if r.cmd.background:
            continue
        if r.rc != 0:
            return f"command failed: {r.describe()}{HINT}"
        if r.cmd.expected is not None and not console_matches(r.cmd.expected, r.out.rstrip("\n").split("\n")
                                                                  if r.out else []):
            return f"output differs from the README's:\n--- README\n{chr(10).join(r.cmd.expected)}\n{r.describe()}"
    try:
        for name in run.block.options.get("check", []):
            CHECKS[name](run)
    except AssertionError as e:
        return f"check failed: {e}"
    return None


# --- named checks (check=NAME) ------------------------------------------------------------------
def check_checkpoint(run: Run) -> None:
    """`wasmig run --checkpoint-dir` in the background, `wasmig checkpoint PID`, `wasmig restore`,
    `wasmig inspect`: the checkpoint's path is printed and exists, the restored run prints the
    rest of prog.wasm's output (a tail of it, ending in `done`), the checkpointed run itself
    carries on to the end unchanged, and inspect shows the snapshot."""
    reference = run.assets.reference
    source = run.find(r"^wasmig run .*--checkpoint-dir", "checkpoint")
    taken = run.find(r"^wasmig checkpoint ", "checkpoint")
    path = run.scratch / taken.out.strip()
    assert taken.out.strip() and path.is_file(), f"`wasmig checkpoint` printed {taken.out!r}, not a snapshot file"
    restored = run.find(r"^wasmig restore ", "checkpoint").out.splitlines()
    assert restored and restored[-1] == "done" and restored == reference[-len(restored):], (
        f"the restored run's output is not the rest of prog.wasm's: {restored}")
    assert "frame" in run.find(r"^wasmig inspect ", "checkpoint").out.lower(), "inspect shows no call stack"
    run.wait_exit(source)
    assert source.out.splitlines() == reference, "the checkpointed run's output differs from an undisturbed run's"


def check_migration(run: Run) -> None:
    """serve, run --migratable &, migrate $!, then a gateway and a server behind it: the summary
    comes, the daemon commits and runs the program, whose output before (source) and after
    (daemon) is prog.wasm's exactly once; a client through the gateway reaches the server."""
    serve = run.find(r"^wasmig serve ", "migration")
    source = run.find(r"^wasmig run --migratable (?!.*--gateway)", "migration")
    migrate = run.find(r"^wasmig migrate ", "migration")
    assert "migrated to" in migrate.out + migrate.err, f"no summary line: {migrate.describe()}"
    run.wait_for(lambda: "committed: running as pid" in serve.err, "the daemon committing the migration")
    run.wait_for(lambda: serve.out.endswith("done\n"), "the migrated program ending on the daemon")
    run.wait_exit(source)
    moved = source.out.splitlines() + serve.out.splitlines()
    assert moved == run.assets.reference, f"source + target output is not prog.wasm's output once: {moved}"
    gateway = run.find(r"^wasmig gateway ", "migration")
    run.find(r"--gateway ", "migration")
    port = int(re.search(r"--listen[ =]127\.0\.0\.1:(\d+)", gateway.cmd.text).group(1))  # type: ignore[union-attr]
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_TIMEOUT) as s:
        s.settimeout(WAIT_TIMEOUT)
        s.sendall(b"INCR readme\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(100)
            assert chunk, f"the gateway closed the connection; got {reply!r}"
            reply += chunk
    assert reply == b"readme 1\n", f"the server behind the gateway answered {reply!r}"


CHECKS: dict[str, Callable[[Run], None]] = {"checkpoint": check_checkpoint, "migration": check_migration}


# --- Python blocks -------------------------------------------------------------------------------
#: Runs a Python block: ``python -c RUNNER FILE FIRST_LINE``. A top-level expression or assignment
#: followed by ``# -> VALUE`` is checked (``==``); tracebacks name README.md's lines.
RUNNER = r'''
import ast, io, sys, tokenize
path, first = sys.argv[1], int(sys.argv[2])
source = open(path).read()
expected = {t.start[0]: t.string[4:].strip() for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type == tokenize.COMMENT and t.string.startswith("# ->")}
tree = ast.parse(source)

def check(value, line, at):
    text = expected.pop(line)
    try:
        wanted = ast.parse(text, mode="eval").body
    except SyntaxError:
        sys.exit(f"README.md line {first + line - 1}: `# -> {text}` is not a Python expression")
    args = [value, wanted, ast.Constant(first + line - 1), ast.Constant(ast.unparse(value)), ast.Constant(text)]
    call = ast.Call(ast.Name("__readme_check", ast.Load()), args, [])
    return ast.copy_location(ast.Expr(call), at)

body = []
for stmt in tree.body:
    line = stmt.end_lineno
    if line in expected and isinstance(stmt, ast.Expr):
        stmt = check(stmt.value, line, stmt)
    elif line in expected and isinstance(stmt, ast.Assign) and isinstance(stmt.targets[-1], ast.Name):
        body.append(stmt)
        stmt = check(ast.Name(stmt.targets[-1].id, ast.Load()), line, stmt)
    body.append(stmt)
for line, text in expected.items():
    sys.exit(f"README.md line {first + line - 1}: `# -> {text}` must end a top-level expression or assignment")
tree.body = body
ast.fix_missing_locations(tree)
ast.increment_lineno(tree, first - 1)

def __readme_check(actual, wanted, line, expr, text):
    if actual != wanted:
        raise AssertionError(f"README.md line {line}: {expr} is {actual!r}; the README says {text}")

exec(compile(tree, "README.md", "exec"), {"__name__": "__main__", "__readme_check": __readme_check})
'''


def run_python(block: Block, scratch: Path) -> None:
    (scratch / ".readme").mkdir(exist_ok=True)
    path = scratch / ".readme" / "block.py"
    path.write_text(block.text)
    try:
        run = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(block.line + 1)], cwd=scratch,
                             env=environment(scratch), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        block.fail(f"did not finish within {BLOCK_TIMEOUT:g} s")
    if run.returncode != 0:
        block.fail(f"exit {run.returncode}\n--- stdout\n{run.stdout[-3000:]}--- stderr\n{run.stderr[-5000:]}{HINT}")


# --- the tests -----------------------------------------------------------------------------------
def test_readme_follows_the_convention() -> None:
    """Every block runs or is a file other blocks use; every readme-test comment is understood."""
    assert BLOCKS, "README.md has no code blocks?"
    problems = README_PROBLEMS + [f"{b.where}: {p}" for b in BLOCKS for p in convention_problems(b, BLOCKS)]
    assert not problems, "\n".join(problems)


def test_convention_parser() -> None:
    """The parser and the rewriting the blocks rely on."""
    text = ("# T\n\n<!-- readme-test: setup=prog.wasm,token bg=1 -->\n```sh\nwasmig serve --listen 0.0.0.0:7400 "
            "# a daemon\n```\n\n```\nplain\n```\n<!-- readme-test: file=a.wat -->\n\n~~~~wat\n(module)\n~~~~\n"
            "<!-- readme-test: nonsense -->\ntext\n")
    blocks, problems = parse_readme(text)
    assert [(b.line, b.lang, b.options) for b in blocks] == [
        (4, "sh", {"setup": ["prog.wasm", "token"], "bg": ["1"]}), (8, "", {}), (13, "wat", {"file": ["a.wat"]})]
    assert blocks[2].text == "(module)\n"
    assert problems == ["README line 16: readme-test comment not right before a code block"]
    assert "has no language tag" in convention_problems(blocks[1], blocks)[0]
    assert convention_problems(blocks[2], blocks) == ["file=a.wat is used by no block's setup="]
    assert strip_comment("echo 'a # b' \"#\" x#y # c") == "echo 'a # b' \"#\" x#y"
    ports: dict[str, int] = {}
    a = rewrite("wasmig serve --listen 0.0.0.0:7400 && migrate PID --to target:7400 --dir ./d::/d HOST:PORT", ports)
    assert a == f"wasmig serve --listen 127.0.0.1:{ports['7400']} && migrate $! --to 127.0.0.1:{ports['7400']} " \
                "--dir ./d::/d HOST:PORT"
    assert console_matches(["a", "...", "z"], ["a", "b", "c", "z"]) and not console_matches(["a"], ["a", "b"])


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}-{b.lang or 'untagged'}" for b in BLOCKS])
def test_readme_block(block: Block, tmp_path: Path, assets: Assets) -> None:
    problems = convention_problems(block, BLOCKS)
    if problems:
        block.fail("; ".join(problems))
    if "file" in block.options:  # a file other blocks use (convention_problems checked that one does)
        name = block.options["file"][0]
        if name.endswith(".wat"):
            assets.provide(name[:-4] + ".wasm", tmp_path, file_blocks(BLOCKS))  # it assembles
        return
    files = file_blocks(BLOCKS)
    for name in block.options.get("setup", []):
        assets.provide(name, tmp_path, files)
    if block.lang in PYTHON_LANGS:
        run_python(block, tmp_path)
    else:
        run_shell(block, tmp_path, assets)
    for pattern in block.options.get("creates", []):
        if not list(tmp_path.glob(pattern)):
            block.fail(f"creates={pattern}: nothing of that name exists after the block ran")
