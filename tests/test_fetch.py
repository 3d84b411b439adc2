"""fetch(): download from a loopback HTTP server, verify, unpack safely, place atomically."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from mgrec.data import fetch as fetch_mod
from mgrec.data.fetch import ARCHIVES, FETCH_RECORD, Archive, fetch
from mgrec.data.registry import DATASETS
from mgrec.errors import ConfigError, DataError

U_DATA = b"1\t10\t5\t881250949\n2\t10\t3\t891717742\n"
README = b"tiny ml-100k lookalike\n"


def _zip(members: dict[str, bytes], *, dirs: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for d in dirs:
            zf.writestr(zipfile.ZipInfo(d), b"")
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Server:
    """Serves files from a folder on 127.0.0.1 and counts the requests it gets."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def put(self, name: str, data: bytes) -> str:
        (self.folder / name).write_bytes(data)
        return self.url(name)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "www").mkdir()
    srv = _Server(tmp_path / "www")
    yield srv
    srv.close()


def _leftovers(tmp_path: Path) -> list[str]:
    """Files left in the download cache and hidden temp entries in the data root."""
    downloads = tmp_path / "cache" / "mgrec" / "downloads"
    left = [p.name for p in downloads.iterdir()] if downloads.exists() else []
    root = tmp_path / "data"
    left += [p.name for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []
    return left


def test_fetch_unwraps_the_top_folder(server, tmp_path) -> None:
    data = _zip({"ml-100k/u.data": U_DATA, "ml-100k/README": README}, dirs=("ml-100k/",))
    url = server.put("ml-100k.zip", data)
    path = fetch("ml-100k", root=tmp_path / "data", url=url, sha256=_sha(data), progress=False)
    assert path == tmp_path / "data" / "ml-100k"
    assert sorted(p.name for p in path.iterdir()) == [FETCH_RECORD, "README", "u.data"]
    assert (path / "u.data").read_bytes() == U_DATA
    record = json.loads((path / FETCH_RECORD).read_text())
    assert record == {"name": "ml-100k", "url": url, "sha256": _sha(data)}
    assert _leftovers(tmp_path) == []
    assert server.requests == ["/ml-100k.zip"]


def test_fetch_flat_archive_with_progress_bar(server, tmp_path) -> None:
    # HetRec's zip has its files at the top level; the folder name comes from DATASETS.
    rows = b"userID\tartistID\tweight\n2\t51\t13883\n"
    data = _zip({"user_artists.dat": rows, "readme.txt": b"r"})
    url = server.put("hetrec2011-lastfm-2k.zip", data)
    path = fetch("lastfm-2k", root=tmp_path / "data", url=url, sha256=_sha(data).upper())
    assert path == tmp_path / "data" / DATASETS["lastfm-2k"][1]
    names = sorted(p.name for p in path.iterdir())
    assert names == [FETCH_RECORD, "readme.txt", "user_artists.dat"]


def test_two_top_folders_are_kept(server, tmp_path) -> None:
    data = _zip({"a/x.txt": b"x", "b/y.txt": b"y", "__MACOSX/a/._x.txt": b"junk"})
    url = server.put("two.zip", data)
    path = fetch("ml-1m", root=tmp_path / "data", url=url, sha256=_sha(data), progress=False)
    assert (path / "a" / "x.txt").read_bytes() == b"x"
    assert (path / "b" / "y.txt").read_bytes() == b"y"
    assert not (path / "__MACOSX").exists()


def test_wrong_sha256_leaves_nothing_behind(server, tmp_path) -> None:
    data = _zip({"ml-100k/u.data": U_DATA})
    url = server.put("ml-100k.zip", data)
    wrong = "0" * 64
    with pytest.raises(DataError) as err:
        fetch("ml-100k", root=tmp_path / "data", url=url, sha256=wrong, progress=False)
    message = str(err.value)
    assert url in message and wrong in message and _sha(data) in message
    assert "\n" not in message
    assert not (tmp_path / "data" / "ml-100k").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "evil", ["../evil.txt", "ml-100k/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt"]
)
def test_zip_slip_members_are_rejected(server, tmp_path, evil) -> None:
    data = _zip({"ml-100k/u.data": U_DATA, evil: b"pwned"})
    url = server.put("evil.zip", data)
    with pytest.raises(DataError, match="unsafe archive member"):
        fetch("ml-100k", root=tmp_path / "data", url=url, sha256=_sha(data), progress=False)
    assert not (tmp_path / "data" / "ml-100k").exists()
    assert not list(tmp_path.rglob("evil.txt"))
    assert _leftovers(tmp_path) == []


def test_existing_folder_is_left_alone_unless_forced(server, tmp_path) -> None:
    existing = tmp_path / "data" / "ml-100k"
    existing.mkdir(parents=True)
    (existing / "mine.txt").write_text("keep me")
    data = _zip({"ml-100k/u.data": U_DATA})
    url = server.put("ml-100k.zip", data)
    path = fetch("ml-100k", root=tmp_path / "data", url=url, sha256=_sha(data), progress=False)
    assert path == existing and (existing / "mine.txt").read_text() == "keep me"
    assert server.requests == []  # nothing was downloaded
    # A failed forced fetch keeps the old folder too.
    with pytest.raises(DataError):
        fetch("ml-100k", root=tmp_path / "data", url=url, sha256="1" * 64, force=True,
              progress=False)
    assert (existing / "mine.txt").read_text() == "keep me"
    fetch("ml-100k", root=tmp_path / "data", url=url, sha256=_sha(data), force=True, progress=False)
    assert sorted(p.name for p in existing.iterdir()) == [FETCH_RECORD, "u.data"]
    assert _leftovers(tmp_path) == []


def test_http_404_is_one_clear_line(server, tmp_path) -> None:
    url = server.url("missing.zip")
    with pytest.raises(DataError) as err:
        fetch("ml-100k", root=tmp_path / "data", url=url, sha256="a" * 64, progress=False)
    assert str(err.value) == f"{url}: download failed: HTTP 404 File not found"
    assert _leftovers(tmp_path) == []


def test_connection_refused_names_the_url(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.socket() as sock:  # a port nobody listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ml-100k.zip"
    with pytest.raises(DataError, match="download failed") as err:
        fetch("ml-100k", root=tmp_path / "data", url=url, sha256="a" * 64, progress=False)
    assert str(err.value).startswith(url) and "\n" not in str(err.value)


def test_not_a_zip(server, tmp_path) -> None:
    data = b"<html>a login page, not an archive</html>"
    url = server.put("ml-100k.zip", data)
    with pytest.raises(DataError, match="not a valid zip archive"):
        fetch("ml-100k", root=tmp_path / "data", url=url, sha256=_sha(data), progress=False)
    assert not (tmp_path / "data" / "ml-100k").exists()


def test_config_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="no public archive known for 'nope'"):
        fetch("nope", root=tmp_path)
    with pytest.raises(ConfigError, match="no public archive known for 'ciao'"):
        fetch("ciao", root=tmp_path)  # a known dataset, but no public archive without a url
    with pytest.raises(ConfigError, match="64 hexadecimal digits"):
        fetch("ml-100k", root=tmp_path, sha256="abc")
    with pytest.raises(ConfigError, match="http, https or file"):
        fetch("ml-100k", root=tmp_path, url="ftp://example.invalid/x.zip")
    unpinned = dict(ARCHIVES, **{"ml-1m": Archive("http://127.0.0.1:9/ml-1m.zip", None)})
    monkeypatch.setattr(fetch_mod, "ARCHIVES", unpinned)
    with pytest.raises(ConfigError, match="no pinned sha256 for 'ml-1m'.*--sha256"):
        fetch("ml-1m", root=tmp_path)
    assert not (tmp_path / "ml-1m").exists()


def test_explicit_sha256_overrides_a_missing_pin(server, tmp_path, monkeypatch) -> None:
    data = _zip({"ml-1m/users.dat": b"1::F::1::10::48067\n"})
    url = server.put("ml-1m.zip", data)
    monkeypatch.setattr(fetch_mod, "ARCHIVES", dict(ARCHIVES, **{"ml-1m": Archive(url, None)}))
    path = fetch("ml-1m", root=tmp_path / "data", sha256=_sha(data), progress=False)
    assert (path / "users.dat").read_bytes() == b"1::F::1::10::48067\n"


def test_registry_entries_are_pinned_and_loadable() -> None:
    assert set(ARCHIVES) == {"ml-100k", "ml-1m", "ml-latest-small", "lastfm-2k"}
    for name, archive in ARCHIVES.items():
        assert name in DATASETS
        assert archive.url.startswith("https://files.grouplens.org/datasets/")
        assert archive.sha256 is not None and len(archive.sha256) == 64
    # TensorFlow Datasets' url_checksums/movielens.txt; the HetRec value from the data README.
    assert ARCHIVES["ml-100k"].sha256 == (
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
    )
    assert ARCHIVES["lastfm-2k"].sha256 == (
        "6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c"
    )
