"""Step checkpoints of one train job in the store, so a killed trainer resumes instead of starting over.

Layout: ``<output_key>-state/step-<n:08d>/`` holds one resumable state (``shared.llm.train_state``),
committed by its ``MANIFEST.json`` like every directory artifact: a trainer killed mid-upload leaves
a step directory without a manifest, which is ignored. After a new step commits, the older steps are
deleted (only the latest is ever resumed from). Once the job's final checkpoint is committed, the
whole ``-state`` prefix is deleted.

Not covered: two trainers on the same job at once (the work queue hands a job to one replica; after
an ack-wait expiry both might write states, and the later commit wins — each state is complete and
self-consistent, so either resumes correctly). A LocalStore prunes the directories the deletes empty.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from shared.store import MANIFEST_NAME, ArtifactCorrupt, ArtifactNotFound, ArtifactStore

log = logging.getLogger("services.trainer.state")
_STEP = re.compile(r"/step-(\d{8})/" + re.escape(MANIFEST_NAME) + "$")


class StepStates:
    def __init__(self, store: ArtifactStore, output_key: str) -> None:
        self.store = store
        self.prefix = f"{output_key}-state"

    def _key(self, step: int) -> str:
        return f"{self.prefix}/step-{step:08d}"

    def committed_steps(self) -> list[int]:
        """Steps whose state is complete (manifest present), ascending."""
        return sorted(int(m.group(1)) for k in self.store.list(f"{self.prefix}/") if (m := _STEP.search(k)))

    def fetch_latest(self, dest_root: Path) -> Path | None:
        """Download the latest complete state under ``dest_root``; None when there is none."""
        steps = self.committed_steps()
        if not steps:
            return None
        dest = dest_root / f"step-{steps[-1]:08d}"
        try:
            self.store.get_dir(self._key(steps[-1]), dest)
        except (ArtifactNotFound, ArtifactCorrupt) as exc:  # a damaged state costs a restart, not the run
            log.warning("cannot read the step-%d state (%s); training from step 0", steps[-1], exc)
            return None
        log.info("found the step-%d state of this M-step in %s", steps[-1], self.prefix)
        return dest

    def commit(self, step: int, src: Path) -> None:
        """Upload the state of ``step``, then drop the older ones (called from the training loop).

        A failed upload is logged and training goes on: a missing step state costs a longer resume
        after a crash, while failing here would throw away the M-step's progress for certain.
        """
        try:
            self.store.put_dir(self._key(step), src)
            for old in self.committed_steps():
                if old < step:
                    self._delete_dir(self._key(old))
        except (OSError, ArtifactCorrupt, ArtifactNotFound) as exc:  # StoreUnavailable is an OSError
            log.warning("could not save the step-%d state to %s: %s", step, self.prefix, exc)

    def clear(self) -> None:
        """Delete every state of this job (after its final checkpoint is committed)."""
        for step in self.committed_steps():
            self._delete_dir(self._key(step))
        for key in self.store.list(f"{self.prefix}/"):  # uncommitted leftovers of a killed upload
            self.store.delete(key)

    def _delete_dir(self, key: str) -> None:
        # The manifest goes first: a half-deleted state must never look complete.
        self.store.delete(f"{key}/{MANIFEST_NAME}")
        for k in self.store.list(f"{key}/"):
            self.store.delete(k)
