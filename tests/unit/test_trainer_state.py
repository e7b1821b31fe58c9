"""The trainer's step states in the store: only complete states count, only the latest is kept, all go at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.state import StepStates
from shared.store import LocalStore


def _state(tmp_path: Path, step: int) -> Path:
    src = tmp_path / f"src-{step}"
    src.mkdir()
    (src / "state.json").write_text(f'{{"step": {step}}}')
    (src / "trainable.safetensors").write_bytes(b"x" * step)
    return src


def test_only_the_latest_complete_state_is_kept_and_fetched(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    states = StepStates(store, "runs/r-000001/iter-1/checkpoint")
    assert states.committed_steps() == [] and states.fetch_latest(tmp_path / "dl") is None
    states.commit(5, _state(tmp_path, 5))
    states.commit(10, _state(tmp_path, 10))
    assert states.committed_steps() == [10]  # step 5 was dropped once step 10 committed
    # a state killed mid-upload (files, no manifest) is ignored
    store.put_bytes(f"{states.prefix}/step-00000015/state.json", b"{}")
    fetched = states.fetch_latest(tmp_path / "dl")
    assert fetched is not None and (fetched / "state.json").read_text() == '{"step": 10}'
    states.clear()
    assert store.list(f"{states.prefix}/") == []


def test_a_failed_upload_is_logged_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore(tmp_path / "store")
    states = StepStates(store, "runs/r-000001/iter-1/checkpoint")
    states.commit(5, tmp_path / "no-such-dir")  # put_dir raises NotADirectoryError (an OSError)
    assert "could not save the step-5 state" in caplog.text
    assert states.committed_steps() == []
