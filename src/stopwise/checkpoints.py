"""Safe checkpoint IO: plain dicts of tensors and primitives, written atomically, read with
``weights_only=True`` only, so a checkpoint can never execute code."""

from __future__ import annotations

import glob
import hashlib
import io
import os
import pickle
import re
import secrets
import socket
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "WriteError",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write_text",
    "atomic_write_bytes",
    "remove_stale_temporaries",
]


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, corrupted or not a plain-data checkpoint."""


class WriteError(OSError):
    """A file could not be written (e.g. the disk is full); the previous version is intact."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# Temporary files are named after this machine and process, so that a folder shared between
# machines never has a live writer's temporary taken for a dead one's.
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def remove_stale_temporaries(path: Path) -> None:
    """Temporary files of ``path`` left by a process of this machine killed mid-write."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        own = re.fullmatch(
            r"([0-9a-f]{8})-(\d+)\.[0-9a-f]{12}\.tmp", stale.name[len(path.name) + 2 :]
        )
        if own and own.group(1) == HOST and not _pid_alive(int(own.group(2))):
            stale.unlink(missing_ok=True)


def _atomic_replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # open(), unlike mkstemp's 0600, gives the file the permissions the umask allows.
    tmp = path.parent / f".{path.name}.{HOST}-{os.getpid()}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise WriteError(
            error.errno,
            f"could not write {path} ({error.strerror or error}); its previous version, if any, "
            "is intact",
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a torn one."""
    _atomic_replace(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Atomically save a plain dict (tensors, numbers, strings, lists, tuples, dicts)."""
    buffer = io.BytesIO()  # serialise first, so a full disk surfaces as an OSError on write
    torch.save(checkpoint, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", recover: str | None = None
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; anything else raises :class:`CheckpointError`
    naming the file, saying it was not loaded and how to recover (``recover``: what to do, when
    the caller knows better than "delete it and rerun")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    recover = "It was not loaded. " + (
        recover
        or "If it belongs to a run directory, delete it and rerun the same command: the stage "
        "it saved is trained again."
    )
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it then loads fine, or refuses.
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain Python values (it could run "
            f"code), so it is refused. {recover}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError, IndexError):
        raise CheckpointError(f"{path} is truncated or corrupted. {recover}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict. {recover}"
        )
    return checkpoint
