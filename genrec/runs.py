"""Run folders: where every stage writes what it made, with a manifest.

A run folder looks like::

    runs/demo/
      config.yaml          the config the run was made from
      manifest.json        one entry per finished stage (files, hashes, counts, commit)
      data/                written by `genrec data prepare`
      tokenize/            written by `genrec tokenize`

A stage is written into a temporary sibling folder and renamed into place only
when it finished, so a failure never leaves a half-written stage behind and never
touches what earlier stages wrote.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from genrec.io import atomic_folder, atomic_write_json

MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The commit the code runs from (with ``-dirty`` if tracked files changed), or None.

    Results files (``bench/results/``) and the docs (``docs/``) do not count: a benchmark writes
    its results and regenerates its docs table as it runs, and neither changes what code ran.
    """
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                ":(top,exclude)bench/results",
                ":(top,exclude)docs",
            ],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative paths, sorted), for manifests."""
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


class RunFolder:
    """A run folder and its manifest.

    Args:
        root: the folder; created on first write.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    # -- manifest -----------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.exists():
            return {"stages": {}}
        return json.loads(path.read_text())

    def has_stage(self, stage: str) -> bool:
        return stage in self.manifest().get("stages", {}) and (self.root / stage).is_dir()

    def stage_info(self, stage: str) -> dict[str, Any]:
        return self.manifest().get("stages", {}).get(stage, {})

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.root / MANIFEST, manifest, sort_keys=True)

    @contextlib.contextmanager
    def stage(self, name: str, info: dict[str, Any] | None = None) -> Iterator[Path]:
        """Write a stage atomically.

        Yields a temporary folder to write into. On success it replaces ``root/name``
        and records the stage in the manifest (``info`` plus file hashes, time and
        commit). On any exception the temporary folder is removed and the previous
        content of ``root/name`` is untouched.
        """
        record: dict[str, Any] = dict(info or {})
        # the code that made the stage is the code at its start: a commit made while a long
        # stage runs must not be credited with its output
        started_commit = git_commit()
        final = self.root / name
        with atomic_folder(final) as tmp:
            yield tmp
        manifest = self.manifest()
        record.update(
            {
                "files": file_hashes(final),
                "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "commit": started_commit,
                "commit_at_end": git_commit(),
            }
        )
        manifest.setdefault("stages", {})[name] = record
        self._write_manifest(manifest)
