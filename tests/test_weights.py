"""``instasam weights``: the real download code against a local HTTP server.

The server (http.server in a thread) serves a small fake checkpoint; the table of
published sizes and digests is pointed at that file, everything else runs unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import socket
import threading

import pytest

from instasam import weights
from instasam.cli import main

FAKE = os.urandom(3 * (1 << 20) + 12345)  # several 1 MiB chunks and a partial one


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    (root / "sam_vit_b_01ec64.pth").write_bytes(FAKE)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def fake_published(monkeypatch):
    """Make the served fake file the 'published' vit_b checkpoint."""
    entry = dataclasses.replace(
        weights.OFFICIAL_CHECKPOINTS["vit_b"],
        size=len(FAKE),
        sha256=hashlib.sha256(FAKE).hexdigest(),
    )
    monkeypatch.setitem(weights.OFFICIAL_CHECKPOINTS, "vit_b", entry)
    return entry


def _refused_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/sam_vit_b_01ec64.pth"


def _download(cache, url) -> int:
    argv = ["weights", "download", "vit_b", "--cache", str(cache), "--url", url, "--no-progress"]
    return main(argv)


def test_download_verifies_and_renames_into_place(tmp_path, server, fake_published, capsys):
    cache = tmp_path / "cache"
    assert _download(cache, f"{server}/sam_vit_b_01ec64.pth") == 0
    assert (cache / "sam_vit_b_01ec64.pth").read_bytes() == FAKE
    assert [p.name for p in cache.iterdir()] == ["sam_vit_b_01ec64.pth"]  # no temp file left
    assert "verified" in capsys.readouterr().out
    # A verified file is kept: a second run succeeds without touching the network.
    assert _download(cache, _refused_url()) == 0


def test_checksum_mismatch_leaves_no_file(tmp_path, server, fake_published, monkeypatch, capsys):
    wrong = dataclasses.replace(fake_published, sha256="0" * 64)
    monkeypatch.setitem(weights.OFFICIAL_CHECKPOINTS, "vit_b", wrong)
    cache = tmp_path / "cache"
    url = f"{server}/sam_vit_b_01ec64.pth"
    assert _download(cache, url) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"instasam: error: {url}: ")
    assert "fails its check" in err and str(cache / "sam_vit_b_01ec64.pth") in err
    assert list(cache.iterdir()) == []


def test_http_404_names_the_url_and_where_to_put_the_file(tmp_path, server, fake_published, capsys):
    cache = tmp_path / "cache"
    url = f"{server}/missing.pth"
    assert _download(cache, url) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert url in err and "HTTP 404" in err and str(cache / "sam_vit_b_01ec64.pth") in err
    assert list(cache.iterdir()) == []


def test_connection_refused_is_one_line(tmp_path, fake_published, capsys):
    cache = tmp_path / "cache"
    url = _refused_url()
    assert _download(cache, url) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and url in err and "download failed" in err
    assert list(cache.iterdir()) == []


def test_wrong_size_announced_by_the_server_stops_early(
    tmp_path, server, fake_published, monkeypatch, capsys
):
    bigger = dataclasses.replace(fake_published, size=len(FAKE) + 1)
    monkeypatch.setitem(weights.OFFICIAL_CHECKPOINTS, "vit_b", bigger)
    cache = tmp_path / "cache"
    assert _download(cache, f"{server}/sam_vit_b_01ec64.pth") == 2
    assert "server offers" in capsys.readouterr().err
    assert list(cache.iterdir()) == []


def test_list_shows_where_weights_are_looked_for(
    tmp_path, server, fake_published, monkeypatch, capsys
):
    monkeypatch.setenv("INSTASAM_CACHE", str(tmp_path))
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    vit_b_line = next(line for line in out.splitlines() if line.startswith("vit_b "))
    assert str(tmp_path / "sam_vit_b_01ec64.pth") in vit_b_line and "missing" in vit_b_line
    assert "$INSTASAM_CACHE" in out
    assert _download(tmp_path, f"{server}/sam_vit_b_01ec64.pth") == 0
    capsys.readouterr()
    assert main(["weights", "list", "--verify"]) == 0
    out = capsys.readouterr().out
    vit_b_line = next(line for line in out.splitlines() if line.startswith("vit_b "))
    assert "SHA-256 verified" in vit_b_line
    assert "missing" in next(line for line in out.splitlines() if line.startswith("vit_h "))


def test_cache_directory_order(tmp_path, monkeypatch):
    monkeypatch.delenv("INSTASAM_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "instasam" / "checkpoints"
    monkeypatch.setenv("INSTASAM_CACHE", str(tmp_path / "env"))
    assert weights.cache_dir() == tmp_path / "env"
    assert weights.cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_published_table_is_complete():
    for name, entry in weights.OFFICIAL_CHECKPOINTS.items():
        assert entry.filename.startswith(f"sam_{name}_") and entry.url.endswith(entry.filename)
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.size > 300_000_000
