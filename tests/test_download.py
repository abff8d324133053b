"""Downloads (loopback HTTP server with Range support) and safe tar extraction
(``lt_bench.data.download``, ``lt_bench.data.archives``)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lt_bench.data.archives import (
    ExtractionConflictError,
    UnsafeArchiveError,
    is_extracted,
    safe_extract_tar,
)
from lt_bench.data.download import ChecksumMismatchError, DownloadError, download, file_hash
from lt_bench.io import git_blob_id

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, several read chunks


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; can drop a transfer once."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server API)
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            # Announce the full length, send part of it, then hang up (once).
            n, srv.cut_after = srv.cut_after, None
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.cut_after, srv.ranges = {}, [], None, True
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_good_file_verifies(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = download(server.url + "/f.bin", tmp_path / "f.bin", _sha256(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    # A verified file is not fetched again.
    n = len(server.requests)
    download(server.url + "/f.bin", dest, _sha256(PAYLOAD), progress=False)
    assert len(server.requests) == n


def test_git_blob_and_md5_hashes(server, tmp_path):
    server.files["/f.txt"] = b"hello\n"
    dest = download(server.url + "/f.txt", tmp_path / "f.txt",
                    "gitblob:ce013625030ba8dba906f756967f9e9ca394464a", progress=False)
    assert git_blob_id(dest) == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object
    assert file_hash(dest, "md5") == hashlib.md5(b"hello\n").hexdigest()


def test_tampered_file_is_refused_and_not_kept(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD[:-1] + b"X"
    dest = tmp_path / "f.bin"
    expected = hashlib.sha256(PAYLOAD).hexdigest()
    actual = hashlib.sha256(server.files["/f.bin"]).hexdigest()
    with pytest.raises(ChecksumMismatchError) as err:
        download(server.url + "/f.bin", dest, "sha256:" + expected, progress=False)
    assert expected in str(err.value) and actual in str(err.value)
    assert "f.bin" in str(err.value)
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after = 300_000
    dest = download(server.url + "/f.bin", tmp_path / "f.bin", _sha256(PAYLOAD),
                    progress=False, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=300000-")]


def test_part_file_from_an_earlier_run_is_resumed(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:123_456])
    download(server.url + "/f.bin", tmp_path / "f.bin", _sha256(PAYLOAD), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", "bytes=123456-")]


def test_complete_part_file_gets_416_and_verifies(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    download(server.url + "/f.bin", tmp_path / "f.bin", _sha256(PAYLOAD), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.ranges = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage-prefix")
    download(server.url + "/f.bin", tmp_path / "f.bin", _sha256(PAYLOAD), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_unchecksummed_download_checks_length(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = download(server.url + "/f.bin", tmp_path / "f.bin", None, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_existing_unchecksummed_file_is_not_fetched_again(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = download(server.url + "/f.bin", tmp_path / "f.bin", None, progress=False)
    download(server.url + "/f.bin", dest, None, progress=False)
    assert len(server.requests) == 1


def test_missing_file_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url + "/nope", tmp_path / "nope", None, progress=False)
    assert not (tmp_path / "nope").exists()


# ----------------------------------------------------------------------------- tar


def _tar(path, members):
    """members: list of (TarInfo-kwargs, bytes | None)."""
    with tarfile.open(path, "w") as tf:
        for kw, data in members:
            info = tarfile.TarInfo(kw.pop("name"))
            for k, v in kw.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    return ({"name": name}, data)


def test_good_tar_extracts_and_writes_marker(tmp_path):
    tar = _tar(tmp_path / "good.tar", [_file("top/a.txt", b"a"), _file("top/sub/b.txt", b"b"),
                                       ({"name": "top/link", "type": tarfile.SYMTYPE,
                                         "linkname": "sub/b.txt"}, None)])
    dest = tmp_path / "out"
    safe_extract_tar(tar, dest)
    assert (dest / "top/a.txt").read_bytes() == b"a"
    assert (dest / "top/link").read_bytes() == b"b"
    assert is_extracted(tar, dest)
    assert [p.name for p in dest.iterdir() if p.name.startswith(".partial")] == []


def test_hard_link_inside_is_extracted(tmp_path):
    tar = _tar(tmp_path / "t.tar", [_file("top/a.txt", b"a"), _file("top/b.txt", b"b"),
                                    ({"name": "top/c.txt", "type": tarfile.LNKTYPE,
                                      "linkname": "top/a.txt"}, None)])
    safe_extract_tar(tar, tmp_path / "out")
    assert (tmp_path / "out/top/c.txt").read_bytes() == b"a"


@pytest.mark.parametrize("member, needle", [
    (_file("../evil", b"pwned"), "'../evil'"),
    (_file("ok/../../evil", b"pwned"), "'ok/../../evil'"),
    (_file("/tmp/evil-abs", b"pwned"), "'/tmp/evil-abs'"),
    (({"name": "lnk", "type": tarfile.SYMTYPE, "linkname": "../evil"}, None), "'lnk'"),
    (({"name": "lnk", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, None), "'lnk'"),
    (({"name": "hard", "type": tarfile.LNKTYPE, "linkname": "../evil"}, None), "'hard'"),
])
def test_escaping_members_are_refused(tmp_path, member, needle):
    tar = _tar(tmp_path / "bad.tar", [_file("fine.txt"), member])
    dest = tmp_path / "deep" / "out"
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract_tar(tar, dest)
    assert needle in str(err.value)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists()
    assert not is_extracted(tar, dest)
    # nothing new anywhere but the (empty) destination folder
    after = sorted(p for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before] == [tmp_path / "deep", dest]


def test_symlink_then_member_through_it_is_refused(tmp_path):
    # 'a' -> '.' is harmless alone; 'a/x/../..' style tricks must still be caught
    tar = _tar(tmp_path / "bad.tar", [
        ({"name": "d", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
        ({"name": "d/up", "type": tarfile.SYMTYPE, "linkname": ".."}, None),
        _file("d/up/../evil", b"pwned"),
    ])
    with pytest.raises(UnsafeArchiveError, match="d/up/../evil"):
        safe_extract_tar(tar, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_interrupted_extraction_is_redone(tmp_path, monkeypatch):
    tar = _tar(tmp_path / "t.tar", [_file("top/a.txt", b"new"), _file("top/b.txt", b"new")])
    dest = tmp_path / "out"
    # leftovers of an interrupted run: a staging folder (half-extracted) and a file an
    # interrupted merge had already moved in (same content as the archive's)
    (dest / ".partial-t.tar" / "top").mkdir(parents=True)
    (dest / ".partial-t.tar" / "top" / "a.txt").write_bytes(b"ne")
    (dest / "top").mkdir()
    (dest / "top" / "a.txt").write_bytes(b"new")
    safe_extract_tar(tar, dest)
    assert (dest / "top/a.txt").read_bytes() == b"new"
    assert (dest / "top/b.txt").read_bytes() == b"new"
    assert not (dest / ".partial-t.tar").exists()

    # once marked, a second call does nothing
    def boom(*a, **k):
        raise AssertionError("extracted twice")

    monkeypatch.setattr("lt_bench.data.archives._extract_checked", boom)
    safe_extract_tar(tar, dest)


def test_failure_mid_extraction_leaves_no_marker(tmp_path, monkeypatch):
    tar = _tar(tmp_path / "t.tar", [_file("top/a.txt"), _file("top/b.txt")])
    dest = tmp_path / "out"
    real_extract = tarfile.TarFile.extract
    calls = {"n": 0}

    def flaky(self, member, path="", **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_extract(self, member, path, **kw)

    monkeypatch.setattr(tarfile.TarFile, "extract", flaky)
    with pytest.raises(OSError, match="disk full"):
        safe_extract_tar(tar, dest)
    assert not is_extracted(tar, dest)
    assert not (dest / "top").exists()  # nothing half-done under the final name
    monkeypatch.setattr(tarfile.TarFile, "extract", real_extract)
    safe_extract_tar(tar, dest)
    assert sorted(os.listdir(dest / "top")) == ["a.txt", "b.txt"]


def test_extraction_merges_into_a_users_folder_and_keeps_their_files(tmp_path):
    # a bug once: a user's places365_standard/ was replaced by the archive's
    tar = _tar(tmp_path / "t.tar", [_file("places365_standard/train/a.jpg", b"A"),
                                    _file("places365_standard/train/same.jpg", b"S"),
                                    _file("places365_standard/val/b.jpg", b"B")])
    dest = tmp_path / "data"
    user = dest / "places365_standard" / "train"
    user.mkdir(parents=True)
    (user / "mine.jpg").write_bytes(b"user's own")
    (user / "same.jpg").write_bytes(b"S")  # already there, identical
    safe_extract_tar(tar, dest)
    assert (user / "mine.jpg").read_bytes() == b"user's own"
    assert (user / "a.jpg").read_bytes() == b"A" and (user / "same.jpg").read_bytes() == b"S"
    assert (dest / "places365_standard/val/b.jpg").read_bytes() == b"B"
    assert is_extracted(tar, dest)


@pytest.mark.parametrize("make_user_entry, needle", [
    (lambda p: p.write_bytes(b"user's edit"), "a file with different content"),
    (lambda p: p.mkdir(), "a folder"),
])
def test_extraction_refuses_to_overwrite_a_users_file(tmp_path, make_user_entry, needle):
    tar = _tar(tmp_path / "t.tar", [_file("top/sub/a.txt", b"archive"),
                                    _file("top/sub/new.txt", b"new")])
    dest = tmp_path / "out"
    (dest / "top" / "sub").mkdir(parents=True)
    make_user_entry(dest / "top" / "sub" / "a.txt")
    before = sorted((p.relative_to(dest), p.is_dir()) for p in dest.rglob("*"))
    with pytest.raises(ExtractionConflictError) as err:
        safe_extract_tar(tar, dest)
    assert str(dest / "top" / "sub" / "a.txt") in str(err.value) and needle in str(err.value)
    assert "never overwrites" in str(err.value)
    # nothing in the target changed: not even the new file was moved in
    assert sorted((p.relative_to(dest), p.is_dir()) for p in dest.rglob("*")) == before
    if (dest / "top/sub/a.txt").is_file():
        assert (dest / "top/sub/a.txt").read_bytes() == b"user's edit"
    assert not is_extracted(tar, dest)


def test_extraction_refuses_a_file_where_the_archive_has_a_folder(tmp_path):
    tar = _tar(tmp_path / "t.tar", [_file("top/sub/a.txt", b"a")])
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "top").write_bytes(b"a user's file named top")
    with pytest.raises(ExtractionConflictError, match="the archive has a folder there"):
        safe_extract_tar(tar, dest)
    assert (dest / "top").read_bytes() == b"a user's file named top"
