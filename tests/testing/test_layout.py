"""The fake Discord's layout: `discord_voice.testing` reads as the product it is.

- Its parts depend one way: no two modules import each other (at any depth, ``TYPE_CHECKING``
  included), and neither do its subpackages (``gateways``, ``udp``, ``dave``) and top-level
  modules taken as units; the subpackages' ``__init__`` files import nothing, so that
  ``dave.mls`` loads without dave-py.
- No class is split across files: no class of the fake has a base class from another of its
  modules, declares attributes it leaves to a host class, or stubs methods with
  ``NotImplementedError`` for a host to fill in.
- What users are promised imports and exists: every name in ``discord_voice.testing.__all__``,
  and every name the README's section on the fake Discord uses (imports, methods of `FakeDiscord`
  and `FakeClock` and their keywords, constructor options, attributes, `ReceivedFrame` fields).

That the library itself never imports ``discord_voice.testing`` is checked with the other
layering rules in ``tests/test_hygiene.py`` (`test_library_does_not_import_testing_or_cli`), whose
import graph this file reuses.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path

import discord_voice
import discord_voice.testing
from discord_voice.testing import FakeDiscord, ReceivedFrame
from tests.test_hygiene import REPO, TESTING, import_cycles, import_graph, module_name, python_files

FACE = "discord_voice.testing"
README = REPO / "README.rst"
README_SECTION = "The fake Discord: ``discord_voice.testing``"
#: Names in that README section that are packages the fake uses, not attributes of the fake.
README_PACKAGES = frozenset({"websockets", "cryptography", "pycryptodome"})


def fake_modules() -> dict[str, tuple[str, bool]]:
    """Dotted name -> (source, is_package) of every module of the fake."""
    return {
        module_name(path): (path.read_text(), path.name == "__init__.py")
        for path in python_files(TESTING)
    }


def unit_of(module: str) -> str:
    """The part of the fake a module belongs to: its subpackage, or itself at the top level."""
    if module == FACE:
        return "__init__"
    return module[len(FACE) + 1 :].split(".")[0]


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = {}
    for module, targets in graph.items():
        edges = units.setdefault(unit_of(module), set())
        edges.update(unit_of(t) for t in targets if unit_of(t) != unit_of(module))
    return units


def test_no_two_modules_of_the_fake_import_each_other() -> None:
    cycles = import_cycles(import_graph(fake_modules()))
    assert not cycles, "modules of the fake that import each other: " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_the_parts_of_the_fake_depend_one_way() -> None:
    units = unit_graph(import_graph(fake_modules()))
    assert {"gateways", "udp", "dave"} <= set(units), f"the subpackages moved? {sorted(units)}"
    cycles = import_cycles(units)
    assert not cycles, f"parts of the fake that import each other: {cycles}; all ties: {units}"


def test_a_tie_both_ways_between_parts_is_a_cycle() -> None:
    # a DAVE module that needed the websocket layer, used by the voice gateway
    graph = {
        f"{FACE}.gateways.voice": {f"{FACE}.dave.link"},
        f"{FACE}.dave.link": {f"{FACE}.gateways.ws", f"{FACE}.records"},
        f"{FACE}.gateways.ws": set(),
        f"{FACE}.records": set(),
    }
    assert import_cycles(graph) == []
    assert import_cycles(unit_graph(graph)) == [["dave", "gateways"]]


def test_the_subpackage_faces_import_nothing() -> None:
    faces = [p for p in python_files(TESTING) if p.name == "__init__.py" and p.parent != TESTING]
    assert faces, "no subpackages found"
    for path in faces:
        imports = [
            node
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import | ast.ImportFrom)
        ]
        assert not imports, f"{path.relative_to(REPO)} imports (line {imports[0].lineno})"


# ---------------------------------------------------------------- no class split across files


def names_from_the_fake(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Local names bound by imports of the fake's own modules (``from ..x import Name``)."""
    package = module if is_package else module.rpartition(".")[0]
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                source = ".".join([*parts, source] if source else parts)
            if source == FACE or source.startswith(FACE + "."):
                bound.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(FACE):
                    bound.add(alias.asname or alias.name.split(".")[0])
    return bound


def base_root(base: ast.expr) -> str | None:
    """The local name a base-class expression starts from (``a`` of ``a.b.C``, ``C`` of ``C``)."""
    while isinstance(base, ast.Attribute):
        base = base.value
    if isinstance(base, ast.Subscript):  # Generic[T] and friends
        return base_root(base.value)
    return base.id if isinstance(base, ast.Name) else None


def is_dataclass_like(node: ast.ClassDef) -> bool:
    decorated = any(
        base_root(d.func if isinstance(d, ast.Call) else d) == "dataclass"
        for d in node.decorator_list
    )
    typed = {"Protocol", "TypedDict", "NamedTuple"} & {base_root(b) for b in node.bases}
    return decorated or bool(typed)


def split_class_problems(source: str, module: str, is_package: bool) -> list[str]:
    """How classes in `source` lean on other modules or on a host class (see the docstring)."""
    tree = ast.parse(source)
    imported = names_from_the_fake(tree, module, is_package)
    problems: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        where = f"{module}.{node.name} (line {node.lineno})"
        problems.extend(
            f"{where}: its base {ast.unparse(base)} lives in another module of the fake"
            for base in node.bases
            if base_root(base) in imported
        )
        if not is_dataclass_like(node):
            problems.extend(
                f"{where}: declares {ast.unparse(item.target)} for a host class to set"
                for item in node.body
                if isinstance(item, ast.AnnAssign) and item.value is None
            )
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and stub_only(item):
                problems.append(f"{where}: {item.name} is a NotImplementedError stub")
    return problems


def stub_only(function: ast.FunctionDef) -> bool:
    body = [s for s in function.body if not isinstance(s, ast.Expr)]  # docstrings
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc
    return base_root(exc.func if isinstance(exc, ast.Call) else exc) == "NotImplementedError"


def test_no_class_of_the_fake_is_split_across_files() -> None:
    problems = [
        problem
        for module, (source, is_package) in sorted(fake_modules().items())
        for problem in split_class_problems(source, module, is_package)
    ]
    assert not problems, "\n".join(problems)


def test_the_split_class_checker_detects() -> None:
    source = (
        "from discord_voice.testing.gateways import voice as v\n"
        "from ..records import Recorder\n"
        "from .helpers import Base\n"
        "from dataclasses import dataclass\n"
        "class A(Base): pass\n"
        "class B(v.Handshake): pass\n"
        "class Mixin:\n"
        "    _rec: Recorder\n"
        "    limit: int = 3\n"
        "    def _send(self) -> None:\n"
        "        '''from the host'''\n"
        "        raise NotImplementedError\n"
        "@dataclass\n"
        "class Record:\n"
        "    index: int\n"
        "class Local(Exception): pass\n"
        "class Sub(Local): pass\n"
    )
    problems = split_class_problems(source, "discord_voice.testing.udp.server", False)
    assert [p.split(":")[0] for p in problems] == [
        "discord_voice.testing.udp.server.A (line 5)",
        "discord_voice.testing.udp.server.B (line 6)",
        "discord_voice.testing.udp.server.Mixin (line 7)",
        "discord_voice.testing.udp.server.Mixin (line 7)",
    ], problems
    assert "_rec" in problems[2] and "_send" in problems[3]


# ---------------------------------------------------------------- what users are promised


def test_every_name_in_all_imports_from_the_face() -> None:
    names = discord_voice.testing.__all__
    assert "FakeDiscord" in names and "FakeClock" in names
    for name in names:
        value = getattr(discord_voice.testing, name)
        assert value.__module__.startswith(FACE + "."), (name, value.__module__)
        namespace: dict[str, object] = {}
        exec(f"from {FACE} import {name}", namespace)
        assert namespace[name] is value


def readme_section() -> str:
    """The README's section on the fake Discord, up to the next section title."""
    lines = README.read_text().splitlines()
    start = lines.index(README_SECTION)
    end = next(
        i for i in range(start + 2, len(lines)) if lines[i] and set(lines[i]) == {"="}
    )  # the underline of the next title
    return "\n".join(lines[start : end - 1])


def parameters(function: Callable[..., object]) -> set[str]:
    return set(inspect.signature(function).parameters)


def readme_problems(section: str) -> list[str]:
    """Every name of `section` the fake does not have (see the module docstring).

    A call is looked up on `FakeDiscord`, then on the other public names of the face (`FakeClock`
    and the records), then in `discord_voice` (``Voice(gw, clock=clock)``); a bare name must be
    an attribute of one of those classes unless it stands for an argument in one of the calls
    (``t`` in ``wait_for_deadline(t)``).
    """
    problems: list[str] = []
    fields = {f.name for f in dataclasses.fields(ReceivedFrame)}
    public = [getattr(discord_voice.testing, n) for n in discord_voice.testing.__all__]
    owners: list[object] = [FakeDiscord, *(c for c in public if c is not FakeDiscord)]

    def find(name: str) -> object:
        return next((getattr(o, name) for o in owners if hasattr(o, name)), None)

    def fake_has(name: str, what: str) -> None:
        if not hasattr(FakeDiscord, name):
            problems.append(f"{what}: FakeDiscord has no {name!r}")

    literals = [" ".join(x.split()) for x in re.findall(r"``([^`]+)``", section)]
    calls = [c.groups() for x in literals if (c := re.fullmatch(r"(\w+)\((.*)\)", x))]
    placeholders = {word for _, args in calls for word in re.findall(r"\w+", args)}
    for name, args in calls:
        target = find(name) or getattr(discord_voice, name, None)
        if not callable(target):
            problems.append(f"``{name}({args})``: no {name!r} in {FACE} or discord_voice")
            continue
        problems.extend(
            f"``{name}({args})``: {name} has no parameter {keyword!r}"
            for keyword in re.findall(r"(\w+)=", args)
            if keyword not in parameters(target)
        )
    for literal in literals:
        if re.fullmatch(r"\w+=\S+", literal):
            if literal.split("=")[0] not in parameters(FakeDiscord.__init__):
                problems.append(f"``{literal}``: FakeDiscord() has no such option")
        elif re.fullmatch(r"[a-z_]+", literal):
            if literal not in README_PACKAGES | placeholders and find(literal) is None:
                problems.append(f"``{literal}``: no {literal!r} in {FACE}")
        elif re.fullmatch(r"[A-Z]\w+", literal) and not hasattr(discord_voice.testing, literal):
            problems.append(f"``{literal}``: not in {FACE}")
        elif re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", literal):
            try:
                importlib.import_module(literal)
            except ImportError:
                problems.append(f"``{literal}``: no such module")
    for names in re.findall(r"from discord_voice\.testing import (.+)", section):
        problems.extend(
            f"from {FACE} import {name}: no such name"
            for name in re.findall(r"\w+", names)
            if not hasattr(discord_voice.testing, name)
        )
    for name in re.findall(r"\bfake\.(\w+)", section):
        fake_has(name, f"fake.{name}")
    frame_fields = re.findall(r"\bf\.(\w+)", section)
    for comment in re.findall(r"#\s*also (.*)", section):
        frame_fields += re.findall(r"\.(\w+)", comment)
    problems.extend(f"f.{n}: not a ReceivedFrame field" for n in frame_fields if n not in fields)
    return problems


def test_the_readme_section_on_the_fake_names_what_exists() -> None:
    section = readme_section()
    assert "FakeDiscord" in section and "impair_udp" in section, "the section moved?"
    problems = readme_problems(section)
    assert not problems, "\n".join(problems)


def test_the_readme_checker_detects() -> None:
    section = (
        "``drop_everything()``, ``impair_udp(drop=, jitter=)``, ``dave=False``, ``colour=red``,\n"
        "``main_messages``, ``telepathy``, ``websockets``, ``FakeClock``, ``FakeGuild``,\n"
        "``Voice(gw, clock=clock)``, ``127.0.0.1``, ``wait_for_deadline(t)`` when ``t``,\n"
        "``advance(by=2)``, ``advance_to_next``, ``discord_voice.testing.nowhere``::\n\n"
        "    from discord_voice.testing import FakeDiscord, FakeMoon\n"
        "    fake.wait_for_frames(1); fake.teleport()\n"
        "    assert [f.opus for f in frames]  # also .sequence, .colour\n"
    )
    assert readme_problems(section) == [
        "``drop_everything()``: no 'drop_everything' in discord_voice.testing or discord_voice",
        "``impair_udp(drop=, jitter=)``: impair_udp has no parameter 'jitter'",
        "``advance(by=2)``: advance has no parameter 'by'",
        "``colour=red``: FakeDiscord() has no such option",
        "``telepathy``: no 'telepathy' in discord_voice.testing",
        "``FakeGuild``: not in discord_voice.testing",
        "``discord_voice.testing.nowhere``: no such module",
        "from discord_voice.testing import FakeMoon: no such name",
        "fake.teleport: FakeDiscord has no 'teleport'",
        "f.colour: not a ReceivedFrame field",
    ]


def test_the_layout_checks_see_the_fake() -> None:
    assert Path(discord_voice.testing.__file__).parent == TESTING
    assert len(fake_modules()) == len(python_files(TESTING)) > 20
