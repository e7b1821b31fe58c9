"""The documentation: the generated reference is current, every page is reachable from the README,
and every relative link points at a file that exists."""

import re
from pathlib import Path

import pytest

from shared.docs import run_config_reference

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_run_config_reference_is_current():
    # Regenerate with: python -m shared.docs, and paste between the markers in docs/configuration.md.
    assert run_config_reference() in (ROOT / "docs" / "configuration.md").read_text(), (
        "docs/configuration.md's run-config reference is stale"
    )


def test_every_doc_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path):
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


def test_the_readme_stays_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220, "move depth into docs/"
