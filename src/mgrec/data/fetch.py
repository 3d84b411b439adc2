"""Download public dataset archives, verify them and unpack them under the data root.

``fetch("ml-100k")`` downloads GroupLens' ``ml-100k.zip`` into the cache, checks its sha256
against the pinned value, unpacks it safely and moves the folder into place atomically as
``<data root>/ml-100k``, the folder :data:`mgrec.data.registry.DATASETS` reads.

Pinned checksums (:data:`ARCHIVES`): the three MovieLens sha256 values are the ones
TensorFlow Datasets pins in ``tensorflow_datasets/url_checksums/movielens.txt`` (they also
match independent projects that pin the same files); the HetRec Last.fm value is the one
published for ``hetrec2011-lastfm-2k.zip``. An archive without a pinned checksum is refused
unless the caller passes ``sha256`` explicitly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from mgrec.data.registry import DATASETS
from mgrec.errors import ConfigError, DataError
from mgrec.io import atomic_dir, atomic_write_json
from mgrec.paths import cache_dir, data_root

__all__ = ["Archive", "ARCHIVES", "fetch", "FETCH_RECORD"]

logger = logging.getLogger(__name__)

#: Name of the provenance file :func:`fetch` writes into every dataset folder it creates.
FETCH_RECORD = ".mgrec-fetch.json"
#: Refuse archives that would unpack to more than this many bytes (a zip bomb guard).
MAX_UNPACKED_BYTES = 8 << 30

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
_JUNK = ("__MACOSX/",)


@dataclass(frozen=True)
class Archive:
    """A public archive that unpacks into one dataset folder.

    Args:
        url: where to download it.
        sha256: the archive's pinned sha256 (lower-case hex), or ``None`` when unknown.
        size: its size in bytes, when known (informational).
    """

    url: str
    sha256: str | None
    size: int | None = None


_ML = "https://files.grouplens.org/datasets/movielens"

#: Dataset name -> public archive. Names are keys of :data:`mgrec.data.registry.DATASETS`.
ARCHIVES: dict[str, Archive] = {
    "ml-100k": Archive(
        f"{_ML}/ml-100k.zip",
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        4_924_029,
    ),
    "ml-1m": Archive(
        f"{_ML}/ml-1m.zip",
        "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        5_917_549,
    ),
    "ml-latest-small": Archive(
        f"{_ML}/ml-latest-small.zip",
        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        978_202,
    ),
    "lastfm-2k": Archive(
        "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
        "6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c",
    ),
}


def fetch(
    name: str,
    *,
    root: Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Download, verify and unpack a public dataset archive into the data root.

    Args:
        name: a key of :data:`ARCHIVES`, or with ``url`` any key of
            :data:`mgrec.data.registry.DATASETS`.
        root: the data root (default: :func:`mgrec.paths.data_root`).
        url: download from here instead (a mirror); the pinned checksum still applies
            unless ``sha256`` is given.
        sha256: the expected sha256 of the archive; overrides the pinned one.
        force: replace an existing dataset folder (atomically, only once the new one is
            complete).
        progress: show a tqdm progress bar while downloading.

    Returns:
        The dataset folder, ``<root>/<folder of name in DATASETS>``.

    Raises:
        ConfigError: an unknown name, a malformed ``sha256``, or no checksum to verify with.
        DataError: a network or HTTP error, a checksum mismatch (the download is deleted),
            or an archive that is not a zip or holds unsafe member names.
    """
    archive = ARCHIVES.get(name)
    if archive is None and (url is None or name not in DATASETS):
        known = ", ".join(ARCHIVES)
        raise ConfigError(
            f"no public archive known for {name!r}; fetch one of {known} or pass a url"
        )
    source = url or archive.url  # type: ignore[union-attr]
    expected = (sha256 or (archive.sha256 if archive is not None else None) or "").lower()
    if not expected:
        raise ConfigError(
            f"no pinned sha256 for {name!r} ({source}); pass --sha256 with the archive's checksum"
        )
    if not _SHA256.fullmatch(expected):
        raise ConfigError(f"sha256 must be 64 hexadecimal digits, got {expected!r}")
    if urllib.parse.urlsplit(source).scheme not in ("http", "https", "file"):
        raise ConfigError(f"cannot download {source!r}: use an http, https or file url")
    folder = DATASETS[name][1] if name in DATASETS else name
    target = data_root(root) / folder
    if target.exists() and not force:
        logger.info("%s already exists; leaving it alone (use force=True to replace it)", target)
        return target
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{folder}.", suffix=".part", dir=downloads)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        actual = _download(source, tmp, progress=progress, label=folder)
        if actual != expected:
            raise DataError(
                f"sha256 mismatch: expected {expected}, got {actual}; the download was deleted",
                file=source,
            )
        with atomic_dir(target) as staging:
            staging.chmod(0o755)  # mkdtemp makes it private; a dataset folder is not
            _unpack(tmp, staging, source)
            record = {"name": name, "url": source, "sha256": actual}
            atomic_write_json(staging / FETCH_RECORD, record)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("fetched %s from %s into %s", name, source, target)
    return target


def _download(url: str, dest: Path, *, progress: bool, label: str) -> str:
    """Stream ``url`` into ``dest``; return the sha256 of what was received."""
    digest = hashlib.sha256()
    try:
        # The scheme was checked by fetch(): http, https or file.
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:  # noqa: S310
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with open(dest, "wb") as fh, tqdm(
                total=total, unit="B", unit_scale=True, desc=label, disable=not progress
            ) as bar:
                while chunk := response.read(_CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise DataError(f"download failed: HTTP {err.code} {err.reason}", file=url) from None
    except urllib.error.URLError as err:
        raise DataError(f"download failed: {err.reason}", file=url) from None
    except (OSError, ValueError) as err:  # timeouts, resets, a malformed url
        raise DataError(f"download failed: {err}", file=url) from None
    if total is not None and received != total:
        raise DataError(f"download truncated: got {received} of {total} bytes", file=url)
    return digest.hexdigest()


def _member_path(name: str) -> PurePosixPath | None:
    """The safe relative path of a zip member, or ``None`` for junk; raises on unsafe names."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise ValueError(f"absolute path {name!r}")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {name!r} leaves the target folder")
    if not parts or norm.startswith(_JUNK) or parts[-1] == ".DS_Store":
        return None
    return PurePosixPath(*parts)


def _unpack(archive: Path, dest: Path, source: str) -> None:
    """Extract ``archive`` into ``dest`` after checking every member; unwrap a lone top folder."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = []
            for info in zf.infolist():
                try:
                    rel = _member_path(info.filename)
                except ValueError as err:
                    raise DataError(f"unsafe archive member: {err}", file=source) from None
                if rel is not None and not info.is_dir():
                    members.append((info, rel))
            if not members:
                raise DataError("archive holds no files", file=source)
            if sum(info.file_size for info, _ in members) > MAX_UNPACKED_BYTES:
                message = f"archive unpacks to more than {MAX_UNPACKED_BYTES} bytes"
                raise DataError(message, file=source)
            tops = {rel.parts[0] for _, rel in members}
            strip = len(tops) == 1 and all(len(rel.parts) > 1 for _, rel in members)
            for info, rel in members:
                out = dest.joinpath(*(rel.parts[1:] if strip else rel.parts))
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as err:
        raise DataError(f"not a valid zip archive ({err})", file=source) from None
