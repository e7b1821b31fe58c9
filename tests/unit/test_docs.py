from pathlib import Path

from shared.docs import run_config_reference

ROOT = Path(__file__).resolve().parents[2]


def test_readme_run_config_reference_is_current():
    # Regenerate with: python -m shared.docs, and paste between the markers in README.md.
    assert run_config_reference() in (ROOT / "README.md").read_text(), (
        "README's run-config reference is stale"
    )
