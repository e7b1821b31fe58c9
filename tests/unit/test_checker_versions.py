"""A checker's version moves whenever the code that decides its verdicts does (verdicts record it)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from services.verifier import fingerprints
from services.verifier.fingerprints import SOURCES, current_version, fingerprint, recorded


@pytest.mark.parametrize("checker", sorted(SOURCES))
def test_each_checker_version_names_exactly_its_code(checker: str) -> None:
    version = current_version(checker)
    assert version in recorded(), (
        f"{version} is not recorded: run `python -m services.verifier.fingerprints --write`"
    )
    assert recorded()[version] == fingerprint(checker), (
        f"the {checker} checker's code changed but its version is still {version}: bump "
        f"{fingerprints.VERSION_OF[checker][1]} and run `python -m services.verifier.fingerprints --write`"
    )


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).read_text()


def _with(monkeypatch: pytest.MonkeyPatch, module: str, text: str) -> None:
    real = fingerprints._tree
    monkeypatch.setattr(fingerprints, "_tree", lambda m: ast.parse(text) if m == module else real(m))


def test_a_changed_rule_moves_the_fingerprint_and_comments_or_the_version_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = "services.verifier.math_checks"
    text, before = _source(module), fingerprint("math")
    assert 'return "guard-text-case"' in text
    _with(monkeypatch, module, text.replace('return "guard-text-case"', "return None"))
    assert fingerprint("math") != before  # a rule changed: the recorded math version no longer matches
    _with(monkeypatch, module, text.replace("# -- the checker", "# -- the MATH checker, reworded"))
    assert fingerprint("math") == before
    bumped = text.replace('MATH_CHECKER_VERSION = "math-3"', 'MATH_CHECKER_VERSION = "math-4"')
    assert bumped != text
    _with(
        monkeypatch,
        module,
        bumped.replace('"""Recorded with every MATH verdict', '"""Kept with every MATH verdict'),
    )
    assert fingerprint("math") == before


def test_a_runner_or_shared_extraction_change_counts_for_the_checkers_that_use_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = {c: fingerprint(c) for c in SOURCES}
    text = _source("shared.tasks.answers")
    _with(monkeypatch, "shared.tasks.answers", text.replace("def last_boxed(", "def last_boxed(*_: object, "))
    after = {c: fingerprint(c) for c in SOURCES}
    assert after["math"] != before["math"] and after["numeric"] != before["numeric"]
    assert after["code"] == before["code"]


def test_recording_refuses_to_repoint_a_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    record = tmp_path / "checker_versions.json"
    record.write_text('{"math-3": "0000"}')
    monkeypatch.setattr(fingerprints, "RECORD", record)
    with pytest.raises(SystemExit, match="math-3 is recorded with other code: bump MATH_CHECKER_VERSION"):
        fingerprints.write()
    record.write_text('{"math-1": "0000"}')  # an older version stays; today's are added
    assert set(fingerprints.write()) == {"math-1", *(current_version(c) for c in SOURCES)}
