"""Architecture rules, checked on the source tree as ordinary tests so CI enforces them.

- tests never call ``time.sleep`` (a line may opt out with ``# sleep-ok: <reason>``);
- ``discord_voice/core`` is sans-I/O: it imports no socket/thread/time/process/file/event-loop
  module, nor the threaded layers, directly or through the other library modules it imports;
- time goes through the injected clock: no module of ``discord_voice`` reads or sleeps on the
  ``time`` module's clocks except ``clock.py``, ``_shell/threads.py`` (thread joins are a shutdown
  bound, not protocol time) and the CLI modules; the fake Discord (``discord_voice/testing``)
  may, because it plays Discord's servers, which keep real time whatever clock the library under
  test is given (its `FakeClock` bounds its own waits for sleepers in real time too);
- no two modules of ``discord_voice`` import each other, directly or round a loop (any import
  counts, ``TYPE_CHECKING`` ones too: a loop is a design tie either way);
- the library does not import ``discord_voice.testing`` (the CLI modules, which run the offline
  demo against the fake, may; nothing else may import them);
- no daemon threads, no ``print`` outside the CLI modules, and every thread gets a name with the
  prefix the thread-leak check in conftest.py watches (``dv-`` library, ``fake-`` testing);
- every folder of tests is a package, so same-named test files in two folders do not clash.

Each checker is a small function over source text; the ``*_detects_*`` tests feed it known-bad
source to prove that it can fail.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "discord_voice"
CORE = PACKAGE / "core"
TESTING = PACKAGE / "testing"
TESTS = REPO / "tests"
CLI_MODULES = frozenset(
    {PACKAGE / "__main__.py", PACKAGE / "demo.py", PACKAGE / "cli.py", PACKAGE / "offline.py"}
)

SLEEP_OK = "# sleep-ok:"
# core must not reach these (a name matches itself and its submodules)
CORE_FORBIDDEN = (
    "socket", "ssl", "select", "selectors", "socketserver", "http", "urllib.request",
    "threading", "_thread", "queue", "concurrent", "multiprocessing", "subprocess",
    "asyncio", "time", "websocket", "websockets",
    "os", "io", "pathlib", "shutil", "tempfile", "fcntl", "mmap", "signal", "sched",
    "discord_voice._shell", "discord_voice.voice", "discord_voice.connection",
    "discord_voice.gateway", "discord_voice.testing",
)  # fmt: skip
LIBRARY_FORBIDDEN = ("discord_voice.testing", "discord_voice.demo", "discord_voice.__main__")
#: the `time` module's clocks and sleeps; reading them bypasses the injected clock
TIME_FUNCTIONS = frozenset({
    "monotonic", "monotonic_ns", "time", "time_ns", "sleep", "perf_counter", "perf_counter_ns",
})  # fmt: skip
#: the only library modules that may use TIME_FUNCTIONS (see the module docstring)
REAL_TIME_MODULES = frozenset(
    {PACKAGE / "clock.py", PACKAGE / "_shell" / "threads.py", *CLI_MODULES}
)


# ---------------------------------------------------------------- helpers over files and ASTs


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> Path | None:
    """The file of a module of this repository, or None for anything else."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def matches(name: str, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return None


@dataclass(frozen=True)
class Import:
    """One module an import statement may load (``from a import b`` yields ``a`` and ``a.b``)."""

    name: str
    line: int
    type_checking_only: bool
    imported_names: tuple[str, ...] = ()  # for the `a` of `from a import b, c`: ("b", "c")

    def loads_itself(self) -> bool:
        """False for `from pkg import mod1, mod2` (only the submodules are this import's doing)."""
        return not self.imported_names or not all(
            module_path(f"{self.name}.{n}") for n in self.imported_names
        )


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import in `source` (at any depth), relative ones resolved against `module`."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            names = tuple(alias.name for alias in node.names)
            found.append(Import(base, node.lineno, guarded, names))
            found.extend(
                Import(f"{base}.{alias.name}", node.lineno, guarded)
                for alias in node.names
                if alias.name != "*"
            )
        for inner in ast.iter_child_nodes(node):
            visit(inner, guarded)

    visit(ast.parse(source), False)
    return found


def file_imports(path: Path) -> list[Import]:
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


# ---------------------------------------------------------------- checkers over source text


def sleep_calls(source: str) -> list[int]:
    """Lines that call time.sleep (however imported) without a ``# sleep-ok:`` reason."""
    tree = ast.parse(source)
    time_names: set[str] = set()
    sleep_names: set[str] = set()
    hits: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            time_names.update(a.asname or a.name for a in node.names if a.name == "time")
        elif isinstance(node, ast.ImportFrom) and node.module == "time":
            for alias in node.names:
                if alias.name == "sleep":
                    sleep_names.add(alias.asname or alias.name)
                    hits.add(node.lineno)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "sleep"
            and isinstance(func.value, ast.Name)
            and func.value.id in time_names
        ) or (isinstance(func, ast.Name) and func.id in sleep_names):
            hits.add(node.lineno)
    lines = source.splitlines()
    return sorted(n for n in hits if not lines[n - 1].partition(SLEEP_OK)[2].strip())


def time_calls(source: str) -> list[tuple[int, str]]:
    """Uses of the `time` module's clocks and sleep, with their lines: ``time.monotonic`` and the
    like however `time` is imported (called or passed around), and ``from time import ...`` of
    them (or ``*``)."""
    tree = ast.parse(source)
    modules = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "time"
    }
    hits: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "time" and not node.level:
            hits.extend(
                (node.lineno, f"from time import {alias.name}")
                for alias in node.names
                if alias.name in TIME_FUNCTIONS or alias.name == "*"
            )
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in TIME_FUNCTIONS
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            hits.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return sorted(hits)


def import_graph(modules: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Module -> the modules among `modules` it imports; `modules` maps a dotted name to its
    (source, is_package).

    Every import counts, at any depth and under ``TYPE_CHECKING`` too. A package's face (its
    ``__init__``) is a target only when the import takes a name defined there (``from pkg import
    Name``, ``import pkg``): importing a submodule (``from pkg import mod``, ``import pkg.mod``)
    runs the face too, but that is the package's own structure, not a tie between modules (the
    rule of /work/shared/hooks/structure.py).
    """
    faces = {name for name, (_, is_package) in modules.items() if is_package}
    graph: dict[str, set[str]] = {}
    for name, (source, is_package) in modules.items():
        targets: set[str] = set()
        for imp in imports_of(source, name, is_package):
            if imp.name == name or imp.name not in modules:
                continue
            takes_names = not imp.imported_names or any(
                f"{imp.name}.{n}" not in modules for n in imp.imported_names
            )
            if imp.name not in faces or takes_names:
                targets.add(imp.name)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def daemon_threads(source: str) -> list[int]:
    """Lines that make a thread a daemon: ``daemon=<not False>``, ``.daemon = ...``, setDaemon."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "setDaemon":
                hits.append(node.lineno)
            for keyword in node.keywords:
                if keyword.arg == "daemon" and not _is_false(keyword.value):
                    hits.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr == "daemon" for t in targets) and not (
                node.value is not None and _is_false(node.value)
            ):
                hits.append(node.lineno)
    return sorted(hits)


def _is_false(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def print_calls(source: str) -> list[int]:
    return sorted(
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
    )


def thread_naming_problems(source: str, prefix: str) -> list[str]:
    """Threads (and thread pools, timers) created without a name starting with `prefix`."""
    tree = ast.parse(source)
    kinds = ("Thread", "Timer", "ThreadPoolExecutor")
    module_aliases = {"threading": set[str](), "concurrent.futures": set[str]()}
    class_names: dict[str, str] = {}  # local name -> one of `kinds`
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in module_aliases:
                    module_aliases[alias.name].add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module in module_aliases:
            for alias in node.names:
                if alias.name in kinds:
                    class_names[alias.asname or alias.name] = alias.name

    def kind(func: ast.expr) -> str | None:
        if isinstance(func, ast.Name):
            return class_names.get(func.id)
        if isinstance(func, ast.Attribute) and func.attr in kinds:
            owner = ast.unparse(func.value)
            if any(owner in names for names in module_aliases.values()):
                return func.attr
        return None

    def check_name(call: ast.Call, keyword_name: str, what: str) -> str | None:
        keyword = next((k for k in call.keywords if k.arg == keyword_name), None)
        if keyword is None:
            return f"line {call.lineno}: {what} without {keyword_name}="
        value = keyword.value
        if isinstance(value, ast.JoinedStr) and value.values:
            value = value.values[0]
        literal = value.value if isinstance(value, ast.Constant) else None
        if isinstance(literal, str) and not literal.startswith(prefix):
            return f"line {call.lineno}: {what} named {literal!r}, not {prefix!r}..."
        return None

    problems: list[str | None] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found = kind(node.func)
            if found == "Timer":
                problems.append(f"line {node.lineno}: threading.Timer makes an unnamed thread")
            elif found == "Thread":
                problems.append(check_name(node, "name", "Thread(...)"))
            elif found == "ThreadPoolExecutor":
                problems.append(check_name(node, "thread_name_prefix", "ThreadPoolExecutor(...)"))
        elif isinstance(node, ast.ClassDef) and any(kind(base) == "Thread" for base in node.bases):
            inits = [
                call
                for call in ast.walk(node)
                if isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "__init__"
                and ast.unparse(call.func.value) in ("super()", "threading.Thread", "Thread")
            ]
            if not inits:
                problems.append(
                    f"line {node.lineno}: Thread subclass {node.name} never calls Thread.__init__"
                )
            problems.extend(check_name(call, "name", f"{node.name}.__init__") for call in inits)
    found_problems = [p for p in problems if p]
    return sorted(found_problems, key=lambda p: int(p.split(":")[0].removeprefix("line ")))


# ---------------------------------------------------------------- the rules, on the real tree


def test_the_scans_see_files() -> None:
    assert len(python_files(CORE)) >= 2, "discord_voice/core has no modules: wrong path?"
    assert Path(__file__) in python_files(TESTS)


def test_no_sleep_in_tests() -> None:
    problems = [
        f"{relative(path)}:{line}: time.sleep in a test; wait on an event/condition with a "
        f"timeout from tests/timeouts.py (or justify with '{SLEEP_OK} <reason>')"
        for path in python_files(TESTS)
        for line in sleep_calls(path.read_text())
    ]
    assert not problems, "\n".join(problems)


def forbidden_reached_indirectly(path: Path) -> list[str]:
    """Forbidden modules that a core module reaches through non-core library modules.

    Follows run-time imports only (not those under ``if TYPE_CHECKING:``); other core modules are
    not followed because each is checked on its own.
    """
    start = module_name(path)
    seen, todo = {start}, deque([[start]])
    problems = []
    while todo:
        chain = todo.popleft()
        source = module_path(chain[-1])
        assert source is not None
        for imp in file_imports(source):
            if imp.type_checking_only or not imp.loads_itself():
                continue
            hit = matches(imp.name, CORE_FORBIDDEN)
            if hit and len(chain) > 1:
                problems.append(
                    f"{relative(path)}: reaches {hit} via {' -> '.join(chain)} "
                    f"({relative(source)}:{imp.line})"
                )
            follow = (
                imp.name.startswith("discord_voice")
                and not imp.name.startswith("discord_voice.core")
                and imp.name not in seen
                and module_path(imp.name) is not None
            )
            if follow:
                seen.add(imp.name)
                todo.append([*chain, imp.name])
    return problems


def test_core_is_sans_io() -> None:
    problems: list[str] = []
    for path in python_files(CORE):
        problems.extend(
            f"{relative(path)}:{imp.line}: imports {imp.name} ({hit})"
            for imp in file_imports(path)
            if (hit := matches(imp.name, CORE_FORBIDDEN))
        )
        problems.extend(forbidden_reached_indirectly(path))
    assert not problems, "\n".join(sorted(set(problems)))


def test_time_goes_through_the_clock() -> None:
    problems = [
        f"{relative(path)}:{line}: {what} (use the injected Clock; see discord_voice/clock.py)"
        for path in library_files()
        if path not in REAL_TIME_MODULES
        for line, what in time_calls(path.read_text())
    ]
    assert not problems, "\n".join(problems)


def test_the_real_time_exceptions_exist() -> None:
    """A renamed module must not leave a stale exception behind that hides nothing."""
    missing = [relative(p) for p in REAL_TIME_MODULES if not p.is_file()]
    assert not missing, f"REAL_TIME_MODULES names files that do not exist: {missing}"


def test_no_import_cycles() -> None:
    modules = {
        module_name(path): (path.read_text(), path.name == "__init__.py")
        for path in python_files(PACKAGE)
    }
    graph = import_graph(modules)
    assert len(graph) == len(python_files(PACKAGE))
    cycles = import_cycles(graph)
    assert not cycles, "modules that import each other: " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def library_files() -> list[Path]:
    return [
        p for p in python_files(PACKAGE)
        if TESTING not in p.parents and p not in CLI_MODULES
    ]  # fmt: skip


def test_library_does_not_import_testing_or_cli() -> None:
    problems = [
        f"{relative(path)}:{imp.line}: imports {imp.name}"
        for path in library_files()
        for imp in file_imports(path)
        if matches(imp.name, LIBRARY_FORBIDDEN)
    ]
    assert not problems, "\n".join(problems)


def test_no_daemon_threads() -> None:
    problems = [
        f"{relative(path)}:{line}: daemon thread (threads are owned and joined instead)"
        for path in python_files(PACKAGE)
        for line in daemon_threads(path.read_text())
    ]
    assert not problems, "\n".join(problems)


def test_no_print_outside_cli() -> None:
    problems = [
        f"{relative(path)}:{line}: print() in the library (use logging or return values)"
        for path in python_files(PACKAGE)
        if path not in CLI_MODULES
        for line in print_calls(path.read_text())
    ]
    assert not problems, "\n".join(problems)


def test_every_thread_is_named() -> None:
    problems = [
        f"{relative(path)}: {problem}"
        for path in python_files(PACKAGE)
        for problem in thread_naming_problems(
            path.read_text(), "fake-" if TESTING in path.parents else "dv-"
        )
    ]
    assert not problems, "\n".join(problems)


def test_every_test_folder_is_a_package() -> None:
    folders = {p.parent for p in python_files(TESTS)}
    missing = sorted(relative(f) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"no __init__.py (same-named test files would clash) in: {missing}"


# ---------------------------------------------------------------- the checkers can fail


def test_sleep_checker_detects_sleeps() -> None:
    sleep = "time." + "sleep"  # spelled apart so that text scans of tests/ do not flag this fixture
    source = (
        "import time\nimport time as t\nfrom time import sleep as nap\n"
        f"{sleep}(1)\nt.sleep(1)\nnap(1)\n{sleep}(0)  # sleep-ok: documented reason\n"
        f"{sleep}(0)  # sleep-ok:\nevent.wait(1)\n"
    )
    assert sleep_calls(source) == [3, 4, 5, 6, 8]


def test_import_resolution_and_type_checking() -> None:
    source = (
        "import socket\nfrom .. import voice\nfrom ..testing.fake import X\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import threading\n"
        "def f():\n    from discord_voice._shell import threads\n"
    )
    found = {(i.name, i.type_checking_only) for i in imports_of(source, "discord_voice.core.x")}
    assert {
        ("socket", False),
        ("discord_voice.voice", False),
        ("discord_voice.testing.fake", False),
        ("threading", True),
        ("discord_voice._shell.threads", False),
    } <= found
    assert matches("discord_voice.testing.fake", CORE_FORBIDDEN) == "discord_voice.testing"
    assert matches("timeit", CORE_FORBIDDEN) is None
    assert matches("urllib.parse", CORE_FORBIDDEN) is None


def test_time_checker_detects_every_spelling() -> None:
    clock = "time." + "monotonic"  # spelled apart: these fixtures are not this file's own calls
    source = (
        "import time\nimport time as t\nfrom time import perf_counter as pc, strftime\n"
        f"a = {clock}()\nb = t.sleep(1)\nc = pc()\nsort(key=time.time)\n"
        "d = time.strftime('%Y')\ne = record.time\nfrom time import *\n"
        "f = time.monotonic_ns()\n"
    )
    assert time_calls(source) == [
        (3, "from time import perf_counter"), (4, "time.monotonic"), (5, "t.sleep"),
        (7, "time.time"), (10, "from time import *"), (11, "time.monotonic_ns"),
    ]  # fmt: skip


def test_cycle_checker_detects_loops_and_skips_package_faces() -> None:
    modules = {
        "pkg": ("from pkg.a import A\nfrom pkg.b import B\n", True),
        "pkg.a": ("from pkg import b\nfrom typing import TYPE_CHECKING\n", False),
        "pkg.b": ("if TYPE_CHECKING:\n    from pkg.c import C\n", False),
        "pkg.c": ("def f():\n    from . import a\n", False),
        "pkg.d": ("import pkg.e\n", False),
        "pkg.e": ("from pkg import Name\n", False),  # a name from the face, which imports...
        "pkg.f": ("import pkg.g\n", False),
        "pkg.g": ("x = 1\n", False),
    }
    modules["pkg"] = (modules["pkg"][0] + "from pkg.d import D\n", True)
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b"}  # `from pkg import b` is the submodule, not the face
    assert graph["pkg.e"] == {"pkg"}
    assert import_cycles(graph) == [["pkg", "pkg.d", "pkg.e"], ["pkg.a", "pkg.b", "pkg.c"]]
    assert import_cycles({"x": {"y"}, "y": set()}) == []


def test_daemon_and_print_checkers_detect() -> None:
    source = (
        "t = Thread(target=f, daemon=True)\nt.daemon = True\nt.setDaemon(True)\n"
        "u = Thread(target=f, daemon=False)\nprint('x')\nlog.info('print(')\n"
    )
    assert daemon_threads(source) == [1, 2, 3]
    assert print_calls(source) == [5]


def test_thread_name_checker_detects() -> None:
    source = (
        "import threading\nfrom threading import Thread as T\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "threading.Thread(target=f)\nT(target=f, name='worker')\n"
        "threading.Thread(target=f, name=f'dv-reader-{n}')\nthreading.Timer(1, f)\n"
        "ThreadPoolExecutor(2)\n"
        "class R(threading.Thread):\n    def __init__(self):\n        super().__init__()\n"
    )
    problems = thread_naming_problems(source, "dv-")
    assert [p.split(":")[0] for p in problems] == [
        "line 4", "line 5", "line 7", "line 8", "line 11",
    ]  # fmt: skip
