"""Writing files so that a reader never meets half of one, and saying in one line why a write cannot happen
(a full disk, a path that cannot be written): every file loralab writes goes through here."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from .. import strictjson
from ..errors import LoralabError


def no_space(err: BaseException) -> bool:
    """A write that failed because the disk is full: OSError ENOSPC, or how torch's zip writer and
    safetensors report it (`unexpected pos`, `No space left on device`)."""
    text = str(err)
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or any(
        words in text
        for words in ("No space left on device", "unexpected pos", "file write failed", "PytorchStreamWriter failed")
    )


def megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def disk_full(path: Path, needed: str) -> LoralabError:
    """The one line for a write the disk had no room for: which file, how much it needed, what is free."""
    free = shutil.disk_usage(Path(path).parent).free
    return LoralabError(
        f"cannot write {path}: no space left on the disk ({megabytes(free)} free, {needed} needed): free some "
        "space or move output.dir, then continue with --resume (what was written before is kept)"
    )


def shared_mode(directory: bool = False) -> int:
    """The mode a plain open() or mkdir() would give under this process's umask: mkstemp and mkdtemp make
    0600/0700, but results are meant to be read by the group (and others) where the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def unwritable(path: Path, err: OSError) -> LoralabError:
    """A path that cannot be written (read-only, a file where a folder must be, a special file system) as
    one line naming it; said before anything is written there."""
    where = err.filename or path
    return LoralabError(f"cannot write {path}: {err.strerror or err} ({where}): choose a path you can write to")


def make_dir(path: Path) -> Path:
    """A folder and its parents, or one line saying why it cannot be made."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise unwritable(Path(path), err) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise LoralabError(f"cannot write {path}: permission denied: choose a path you can write to")
    return Path(path)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    if path.exists() and not path.is_file():  # a device or a pipe would be replaced by a file: refused
        raise LoralabError(f"cannot write {path}: not a regular file (a folder, device or pipe): name a file")
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise (disk_full(path, megabytes(len(text.encode()))) if no_space(err) else unwritable(path, err)) from None
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, shared_mode())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if no_space(err):
            raise disk_full(path, megabytes(len(text.encode()))) from None
        raise


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, strictjson.dumps(data, indent=2) + "\n")


def replace_dir(target: Path, fill) -> None:
    """Build a directory in a temporary sibling with `fill(tmp_path)`, then swap it in for `target`."""
    target = Path(target)
    make_dir(target.parent)
    try:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    except OSError as err:
        raise unwritable(target, err) from None
    try:
        fill(tmp)
        # safetensors writes 0600, mkdtemp makes 0700: give everything the mode the umask would.
        for path in [tmp, *tmp.rglob("*")]:
            os.chmod(path, shared_mode(directory=path.is_dir()))
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        written = _size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if no_space(err):  # the earlier copy of target is untouched
            last = _size(target)
            raise disk_full(
                target, megabytes(last) + " (its last copy)" if last else f"more than {megabytes(written)}"
            ) from None
        raise
