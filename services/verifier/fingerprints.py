"""What each checker version stands for: a fingerprint of the code that decides its verdicts.

Every verdict records its checker's version (`numeric-1`, `math-3`, `code-1`), so a verdict can be
traced to the rules that produced it and redone when they change. That only holds if the version
moves whenever the rules do. `checker_versions.json` records the fingerprint of each version; a
unit test recomputes them and fails when a checker's code changed under an unchanged version.

The fingerprint is the sha256 of the checker's syntax trees (docstrings dropped), so comments and
formatting do not count, and any change to code does: when in doubt, a new version. After a
deliberate change: bump the version constant, then record it with
`python -m services.verifier.fingerprints --write` (earlier versions stay in the file).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

RECORD = Path(__file__).with_name("checker_versions.json")

# checker -> (module, the functions and classes that decide its verdicts; () = the whole module)
SOURCES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "numeric": (("shared.tasks.answers", ()),),
    "math": (
        ("services.verifier.math_checks", ()),
        ("services.verifier.sandbox.runners", ("run_math", "_same_number", "_as_written")),
        ("shared.tasks.answers", ("last_boxed",)),
    ),
    "code": (
        ("services.verifier.code_checks", ()),
        ("services.verifier.code_grader", ()),
        ("services.verifier.sandbox.judge", ()),
        ("services.verifier.sandbox.tester", ()),
        ("services.verifier.sandbox.runners", ("run_program", "run_call", "run_candidate", "run_checker")),
    ),
}
VERSION_OF = {
    "numeric": ("shared.tasks.answers", "CHECKER_VERSION"),
    "math": ("services.verifier.math_checks", "MATH_CHECKER_VERSION"),
    "code": ("services.verifier.code_checks", "CODE_CHECKER_VERSION"),
}


def _tree(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"no source for {module}")
    return ast.parse(Path(spec.origin).read_text())


def _is_doc(stmt: ast.AST) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _without_docstrings(node: ast.AST) -> ast.AST:
    """`node` without docstrings, attribute docstrings included (bare strings are no-ops)."""
    for n in ast.walk(node):
        body = getattr(n, "body", None)
        if isinstance(body, list) and any(_is_doc(b) for b in body):
            n.body = [b for b in body if not _is_doc(b)] or [ast.Pass()]  # type: ignore[attr-defined]
    return node


def _version_line(node: ast.stmt, constant: str | None) -> bool:
    """The version assignment itself is not part of the rules (bumping it must not move them)."""
    targets = node.targets if isinstance(node, ast.Assign) else []
    return constant is not None and any(isinstance(t, ast.Name) and t.id == constant for t in targets)


def fingerprint(checker: str) -> str:
    digest = hashlib.sha256()
    for module, names in SOURCES[checker]:
        tree = _tree(module)
        constant = next((c for m, c in VERSION_OF.values() if m == module), None)
        nodes = [
            n for n in tree.body
            if not _version_line(n, constant) and not _is_doc(n)
            and (not names or getattr(n, "name", None) in names)
        ]  # fmt: skip
        found = {getattr(n, "name", None) for n in nodes}
        missing = set(names) - found
        if missing:
            raise ValueError(f"{module} has no {', '.join(sorted(missing))} (update SOURCES in {__name__})")
        for n in nodes:
            digest.update(ast.dump(_without_docstrings(n)).encode())
    return digest.hexdigest()


def current_version(checker: str) -> str:
    module, constant = VERSION_OF[checker]
    return str(getattr(importlib.import_module(module), constant))


def recorded() -> dict[str, str]:
    return dict(json.loads(RECORD.read_text())) if RECORD.is_file() else {}


def write() -> dict[str, str]:
    """Record today's versions with their fingerprints (refusing to re-point a recorded version)."""
    record = recorded()
    for checker in SOURCES:
        version, fp = current_version(checker), fingerprint(checker)
        if record.get(version, fp) != fp:
            raise SystemExit(
                f"{version} is recorded with other code: bump {VERSION_OF[checker][1]} in "
                f"{VERSION_OF[checker][0]} first (a version must mean one set of rules)"
            )
        record[version] = fp
    RECORD.write_text(json.dumps(dict(sorted(record.items())), indent=2) + "\n")
    return record


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m services.verifier.fingerprints --write")
    for version, fp in write().items():
        print(f"{version}: {fp}")
