"""Atomic writes and the cache folder: where and how genrec puts files on disk.

A reader (a server, a resumed run, a second process) must never see half a file, and a
failure must never destroy what was there before. Everything genrec writes for later
reading goes through these helpers: the new content is written beside the target under a
name no other writer uses (process, thread and a random suffix), then renamed over it;
on any exception the temporary is removed and the target is untouched.

Caches (text embeddings, SASRecs fitted while tokenizing, base models converted from their
packages) live in one folder per user, :func:`cache_dir`, whatever the working directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import IO, Any, Iterator


def _temp_sibling(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary beside ``path`` for writing; it replaces ``path`` when the block ends without error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(target, "tmp")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one rename."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps: Any) -> None:
    """Replace ``path`` with ``obj`` as indented JSON and a final newline."""
    dumps.setdefault("indent", 2)
    atomic_write_text(path, json.dumps(obj, **dumps) + "\n")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces the folder ``path`` when the block succeeds.

    The old folder is renamed aside first and deleted after the swap, so ``path`` is at every
    moment either the whole old folder or the whole new one (or, for an instant, absent).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _temp_sibling(target, "old")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder; each file written into it replaces its namesake in ``folder``.

    For updating some files of a folder that others read (a catalog inside an exported model):
    every file is swapped in whole, each writer has its own temporary folder.
    """
    target = Path(folder)
    tmp = _temp_sibling(target / "files", "tmp")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in sorted(tmp.iterdir()):
            os.replace(f, target / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: Environment variable that moves genrec's cache folder (default ``~/.cache/genrec``).
CACHE_ENV = "GENREC_CACHE"


def cache_dir(kind: str) -> Path:
    """The cache folder for ``kind`` (``embeddings``, ``models``), not created here.

    ``$GENREC_CACHE/<kind>`` when that variable is set, else ``$XDG_CACHE_HOME/genrec/<kind>``,
    else ``~/.cache/genrec/<kind>``: one cache per user, so two working folders share it.
    Entries are keyed by content hash and written atomically, so runs can share them safely.
    """
    root = os.environ.get(CACHE_ENV)
    if root:
        base = Path(os.path.expanduser(root))
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(os.path.expanduser(xdg)) if xdg else Path.home() / ".cache") / "genrec"
    return base / kind
