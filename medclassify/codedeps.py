"""Which library files a stage depends on: the modules it names and everything they import.

Rules list these files among their inputs, so that editing any module a stage really uses
(directly or through another module) reruns that stage, and editing an unrelated one does not.
"""

import ast
import functools
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


def module_file(module):
    """Source file of a dotted module name inside the package ("io.dicom" → io/dicom.py)."""
    path = PACKAGE_DIR.joinpath(*module.split("."))
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py")


def imported_modules(module):
    """Package modules that ``module`` imports (absolute or relative), as dotted names."""
    source = module_file(module)
    stat = source.stat()
    return set(_parsed_imports(module, source, stat.st_mtime_ns, stat.st_size))


# Each rule asks for the closure of its modules, and the closures share most of their modules:
# parsing every file once per process, not once per rule, takes about a second off each
# `snakemake` start (a dry run, every cluster job). The file's stat is part of the key, so an
# edited module is parsed again.
@functools.lru_cache(maxsize=None)
def _parsed_imports(module, source, mtime_ns, size):
    is_package = source.name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in _import_statements(ast.parse(source.read_text(encoding="utf-8"), str(source))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
            elif node.module and node.module.split(".")[0] == PACKAGE:
                base = []
            else:
                continue
            stem = [*base, *(node.module.split(".") if node.module else [])]
            if not node.level:
                stem = stem[1:]  # drop the package name itself
            # "from .x import y": y may be a submodule or a name defined in x.
            names = [".".join([*stem, alias.name]) for alias in node.names] + [".".join(stem)]
            names = [PACKAGE + "." + n if n else PACKAGE for n in names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != PACKAGE or len(parts) == 1:
                continue
            relative = ".".join(parts[1:])
            if module_file(relative).exists():
                found.add(relative)
    return frozenset(found)


# Fields of the nodes that hold statements (a function's body, an if's else, a try's handlers).
_STATEMENT_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")


def _import_statements(tree):
    """The import statements of a parsed module, at any depth: statements only, since an import is
    one, where ast.walk would visit every expression too (half of the parse's time)."""
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for field in _STATEMENT_FIELDS:
            pending.extend(getattr(node, field, ()))


def module_closure(*modules):
    """Sorted source files of ``modules``, their packages' ``__init__`` files and all they import."""
    seen, pending = set(), list(modules)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]
        pending += sorted(imported_modules(module) - seen)
    files = {module_file(m) for m in seen} | {PACKAGE_DIR / "__init__.py"}
    return sorted(files)


def rule_inputs(*modules):
    """module_closure's files as paths relative to the current directory, for a rule's inputs.

    Snakemake parses the rules in its working directory and keeps each job's input paths in its
    metadata: absolute paths would change when the project folder is moved or copied, and every
    job would rerun ("Set of input files has changed").
    """
    return [os.path.relpath(path) for path in module_closure(*modules)]
