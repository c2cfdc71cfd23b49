"""The package's typing contract: every public function, method and class of rsjax has a docstring
and type hints (every parameter but self/cls, *args and **kwargs included, and the return), and the
package ships the PEP 561 marker `py.typed`.

Read from the source with ast (nothing is imported), so the check is instant and sees exactly what a
reader of the file sees. Public: a name without a leading underscore, at module level or in a public
class (nested functions are not API).
"""

import ast
import configparser
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rsjax"


def _arguments(node: ast.FunctionDef | ast.AsyncFunctionDef, in_class: bool) -> list[ast.arg]:
    """Every parameter that needs a hint: all of them, *args and **kwargs included, except the
    self or cls of a method."""
    args = node.args
    named = args.posonlyargs + args.args + args.kwonlyargs
    if in_class and named and named[0].arg in ("self", "cls"):
        named = named[1:]
    return named + [a for a in (args.vararg, args.kwarg) if a is not None]


def _function_problems(node: ast.FunctionDef | ast.AsyncFunctionDef, in_class: bool) -> list[str]:
    problems = []
    if not ast.get_docstring(node):
        problems.append("no docstring")
    missing = []
    for arg in _arguments(node, in_class):
        if arg.annotation is None:
            prefix = "*" if arg is node.args.vararg else "**" if arg is node.args.kwarg else ""
            missing.append(prefix + arg.arg)
    if missing:
        problems.append(f"no hint for {', '.join(missing)}")
    if node.returns is None:
        problems.append("no return hint")
    return problems


def _offenders(path: pathlib.Path) -> list[str]:
    """'FILE:LINE NAME: problems' for each public function, method or class of one module."""
    found = []

    def visit(body: list[ast.stmt], prefix: str, in_class: bool) -> None:
        for node in body:
            definition = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            if not isinstance(node, definition) or node.name.startswith("_"):
                continue
            where = f"{path.name}:{node.lineno} {prefix}{node.name}"
            if isinstance(node, ast.ClassDef):
                if not ast.get_docstring(node):
                    found.append(f"{where}: no docstring")
                visit(node.body, f"{prefix}{node.name}.", True)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                problems = _function_problems(node, in_class)
                if problems:
                    found.append(f"{where}: {'; '.join(problems)}")

    visit(ast.parse(path.read_text(), filename=str(path)).body, "", False)
    return found


def _modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.glob("*.py"))


def test_modules_found():
    """The check reads the package's modules (a moved package must not pass by finding none)."""
    assert {"__init__.py", "certify.py", "train.py"} <= {p.name for p in _modules()}


def test_public_api_has_hints_and_docstrings():
    """Every module of rsjax, none skipped."""
    offenders = [o for p in _modules() for o in _offenders(p)]
    assert not offenders, "public API without docstring or type hints:\n" + "\n".join(offenders)


def test_checker_finds_what_is_missing(tmp_path):
    """The check itself: it flags each kind of omission and accepts a complete definition."""
    source = tmp_path / "sample.py"
    source.write_text(
        '''
def good(x: int, *args: int, key: str = "", **kwargs: float) -> int:
    """Fine."""
    return x

def bare(x, *args, **kwargs):
    return x

def _private(x):
    return x

class Documented:
    """Fine."""

    def method(self, y: int) -> int:
        """Fine."""
        return y

    @classmethod
    def make(cls, y) -> "Documented":
        """A hint is missing."""
        return cls()

class Undocumented:
    pass

class _Hidden:
    def method(self, y):
        return y
'''
    )
    assert _offenders(source) == [
        "sample.py:6 bare: no docstring; no hint for x, *args, **kwargs; no return hint",
        "sample.py:20 Documented.make: no hint for y",
        "sample.py:24 Undocumented: no docstring",
    ]


def test_package_ships_py_typed():
    """The PEP 561 marker is in the package and setup.cfg installs it with the modules."""
    assert (PACKAGE / "py.typed").is_file()
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    package_data = config.get("options.package_data", "rsjax", fallback="")
    assert "py.typed" in package_data.split()
