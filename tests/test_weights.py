"""Tests for mlsharp.weights: cache location, downloads against a real local HTTP server
(resume, restart, verification, locking), checkpoint resolution and loading."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch import nn

from mlsharp import weights
from mlsharp.errors import CheckpointError, CheckpointNotFound, DownloadError
from mlsharp.weights import (
    DEFAULT_CHECKPOINT_NAME,
    cache_dir,
    download,
    load_into,
    load_state_dict,
    resolve_checkpoint,
    sha256_file,
)

PAYLOAD = os.urandom(300_000)
CHUNK = 16 * 1024


# --------------------------------------------------------------------------------------
# A small HTTP server with Range support and failure modes
# --------------------------------------------------------------------------------------


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    drop_at: int | None = None  # close the connection once this absolute offset is sent
    per_response: int | None = None  # close the connection after this many body bytes
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    delay: float = 0.0
    unavailable: int = (
        0  # answer this many requests with 503 first  # seconds to wait before sending the body
    )
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state
        rng = self.headers.get("Range")
        state.requests.append((self.path, rng))
        data = state.files.get(self.path)
        if state.unavailable > 0:
            state.unavailable -= 1
            self.send_error(503, "Service Unavailable")
            return
        if data is None:
            self.send_error(404, "Not Found")
            return
        start, status = 0, 200
        if rng and not state.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, rng
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))  # always the full length
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if state.delay:
            time.sleep(state.delay)
        cut = None
        if state.drop_at is not None:
            cut = max(0, state.drop_at - start)
        if state.per_response is not None:
            cut = min(cut if cut is not None else len(body), state.per_response)
        if cut is not None and cut < len(body):
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True  # hang up with bytes still owed
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    """A real HTTP server on 127.0.0.1 (free port), serving PAYLOAD at /sharp.pt."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState(files={"/sharp.pt": PAYLOAD})
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MLSHARP_CHECKPOINT", "MLSHARP_CHECKPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLSHARP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "DEFAULT_RETRY_DELAY", 0.0)
    for name in ("no_proxy", "NO_PROXY"):  # never send 127.0.0.1 through a proxy
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p.name != dest.name)


# --------------------------------------------------------------------------------------
# cache_dir
# --------------------------------------------------------------------------------------


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLSHARP_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG applies to Linux")
def test_cache_dir_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLSHARP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mlsharp"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert cache_dir() == Path.home() / ".cache" / "mlsharp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "mlsharp"


def test_import_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, mlsharp.weights; print('torch' in sys.modules, 'tqdm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------


def test_download_ok(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "dl" / "sharp.pt"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    out = download(
        url + "/sharp.pt",
        dest,
        progress=False,
        chunk_size=CHUNK,
        expected_size=len(PAYLOAD),
        sha256=sha.upper(),
    )
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest) == []  # no .part, no .lock
    assert state.requests == [("/sharp.pt", None)]
    assert sha256_file(dest) == sha


def test_download_sha256_mismatch(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = server
    dest = tmp_path / "sharp.pt"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as exc:
        download(url + "/sharp.pt", dest, progress=False, sha256=wrong)
    msg = str(exc.value)
    assert wrong in msg and hashlib.sha256(PAYLOAD).hexdigest() in msg
    assert "\n" not in msg
    assert not dest.exists()
    assert _leftovers(dest) == []


def test_download_wrong_expected_size(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = server
    dest = tmp_path / "sharp.pt"
    with pytest.raises(DownloadError, match=rf"expected 1234 bytes.*{len(PAYLOAD)}"):
        download(url + "/sharp.pt", dest, progress=False, expected_size=1234)
    assert not dest.exists()
    assert _leftovers(dest) == []


def test_download_drop_then_resume(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "sharp.pt"
    half = len(PAYLOAD) // 2
    state.drop_at = half
    with pytest.raises(DownloadError, match="resume") as exc:
        download(url + "/sharp.pt", dest, progress=False, chunk_size=CHUNK, retries=1)
    assert "\n" not in str(exc.value)
    assert not dest.exists()
    part = dest.with_name(dest.name + ".part")
    assert part.read_bytes() == PAYLOAD[:half]
    # one full attempt, then retries that resumed but got nothing more
    assert state.requests[0] == ("/sharp.pt", None)
    assert all(r == ("/sharp.pt", f"bytes={half}-") for r in state.requests[1:])

    state.drop_at = None
    state.requests.clear()
    download(url + "/sharp.pt", dest, progress=False, chunk_size=CHUNK)
    assert state.requests == [("/sharp.pt", f"bytes={half}-")]
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest) == []


def test_download_retries_resume_within_one_call(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    """Each attempt makes progress, so retries are not used up; the call completes."""
    url, state = server
    dest = tmp_path / "sharp.pt"
    third = len(PAYLOAD) // 3 + 1
    state.per_response = third
    download(url + "/sharp.pt", dest, progress=False, chunk_size=CHUNK, retries=0)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests == [
        ("/sharp.pt", None),
        ("/sharp.pt", f"bytes={third}-"),
        ("/sharp.pt", f"bytes={2 * third}-"),
    ]


def test_download_server_ignores_range(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "sharp.pt"
    dest.with_name(dest.name + ".part").write_bytes(b"garbage!" * 1000)
    state.ignore_range = True
    download(url + "/sharp.pt", dest, progress=False, chunk_size=CHUNK)
    assert state.requests == [("/sharp.pt", "bytes=8000-")]  # asked, got a 200
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest) == []


def test_download_part_larger_than_expected(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    url, state = server
    dest = tmp_path / "sharp.pt"
    dest.with_name(dest.name + ".part").write_bytes(b"x" * (len(PAYLOAD) + 10))
    download(url + "/sharp.pt", dest, progress=False, expected_size=len(PAYLOAD))
    assert state.requests == [("/sharp.pt", None)]  # restarted from zero
    assert dest.read_bytes() == PAYLOAD


def test_download_complete_part_gets_416(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "sharp.pt"
    dest.with_name(dest.name + ".part").write_bytes(PAYLOAD)
    download(url + "/sharp.pt", dest, progress=False)
    assert state.requests == [("/sharp.pt", f"bytes={len(PAYLOAD)}-")]
    assert dest.read_bytes() == PAYLOAD


def test_download_bad_leftover_part_is_redownloaded(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    """A stale .part from another file version fails the checksum once, then restarts."""
    url, state = server
    dest = tmp_path / "sharp.pt"
    dest.with_name(dest.name + ".part").write_bytes(b"\0" * 1000)
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    download(url + "/sharp.pt", dest, progress=False, sha256=sha)
    assert state.requests == [("/sharp.pt", "bytes=1000-"), ("/sharp.pt", None)]
    assert dest.read_bytes() == PAYLOAD


def test_download_404(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "missing.pt"
    with pytest.raises(DownloadError, match="HTTP 404") as exc:
        download(url + "/missing.pt", dest, progress=False)
    assert "\n" not in str(exc.value)
    assert len(state.requests) == 1  # a 404 is not retried
    assert not dest.exists()
    assert _leftovers(dest) == []


def test_download_retries_503(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "sharp.pt"
    state.unavailable = 2
    download(url + "/sharp.pt", dest, progress=False, retries=2)
    assert len(state.requests) == 3
    assert dest.read_bytes() == PAYLOAD
    state.unavailable = 5
    state.requests.clear()
    with pytest.raises(DownloadError, match="HTTP 503"):
        download(url + "/sharp.pt", dest, progress=False, retries=1)
    assert len(state.requests) == 2
    assert dest.read_bytes() == PAYLOAD  # a failed download leaves the old file alone


def test_download_rejects_other_schemes(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="http"):
        download("ftp://example.com/x.pt", tmp_path / "x.pt", progress=False)


def test_download_concurrent_writers(server: tuple[str, ServerState], tmp_path: Path) -> None:
    """Two concurrent downloads of one dest: one fetches, the other waits and reuses it."""
    url, state = server
    state.delay = 0.3
    dest = tmp_path / "sharp.pt"
    results: list[Path | BaseException] = []

    def run() -> None:
        try:
            results.append(download(url + "/sharp.pt", dest, progress=False))
        except BaseException as e:  # surfaced by the assertions below
            results.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [dest, dest]
    assert len(state.requests) == 1
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest) == []


# --------------------------------------------------------------------------------------
# resolve_checkpoint
# --------------------------------------------------------------------------------------


def test_resolve_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    arg, env = tmp_path / "arg.pt", tmp_path / "env.pt"
    cached = cache_dir() / DEFAULT_CHECKPOINT_NAME
    cached.parent.mkdir(parents=True)
    for p in (arg, env, cached):
        p.write_bytes(b"x")
    monkeypatch.setenv("MLSHARP_CHECKPOINT", str(env))
    assert resolve_checkpoint(arg, download=False) == arg
    assert resolve_checkpoint(str(arg), download=False) == arg
    assert resolve_checkpoint(download=False) == env
    monkeypatch.delenv("MLSHARP_CHECKPOINT")
    assert resolve_checkpoint(download=False) == cached


def test_resolve_missing_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(
        CheckpointNotFound, match=f"^checkpoint not found: {re.escape(str(missing))}$"
    ):
        resolve_checkpoint(missing)
    monkeypatch.setenv("MLSHARP_CHECKPOINT", str(missing))
    with pytest.raises(CheckpointNotFound, match="MLSHARP_CHECKPOINT"):
        resolve_checkpoint()
    with pytest.raises(CheckpointError, match="directory"):
        resolve_checkpoint(tmp_path)


def test_resolve_offline_message(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/{DEFAULT_CHECKPOINT_NAME}"
    monkeypatch.setenv("MLSHARP_CHECKPOINT_URL", url)
    with pytest.raises(CheckpointNotFound) as exc:
        resolve_checkpoint(progress=False)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "mlsharp download" in msg
    assert str(cache_dir() / DEFAULT_CHECKPOINT_NAME) in msg
    assert url in msg
    assert "--checkpoint" in msg and "MLSHARP_CHECKPOINT" in msg
    assert not (cache_dir() / DEFAULT_CHECKPOINT_NAME).exists()


def test_resolve_no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointNotFound, match="mlsharp download"):
        resolve_checkpoint(download=False)


def test_resolve_downloads_into_cache(
    monkeypatch: pytest.MonkeyPatch, server: tuple[str, ServerState]
) -> None:
    url, state = server
    monkeypatch.setenv("MLSHARP_CHECKPOINT_URL", url + "/sharp.pt")
    path = resolve_checkpoint(progress=False)
    assert path == cache_dir() / DEFAULT_CHECKPOINT_NAME
    assert path.read_bytes() == PAYLOAD
    assert resolve_checkpoint(progress=False) == path
    assert len(state.requests) == 1  # the second call used the cache

    # an http(s) URL as the argument lands in the cache under its basename, once
    other = resolve_checkpoint(url + "/sharp.pt", progress=False)
    assert other == cache_dir() / "sharp.pt"
    assert other.read_bytes() == PAYLOAD
    assert resolve_checkpoint(url + "/sharp.pt", progress=False) == other
    assert len(state.requests) == 2


def test_resolve_http_error_is_download_error(
    monkeypatch: pytest.MonkeyPatch, server: tuple[str, ServerState]
) -> None:
    url, _ = server
    monkeypatch.setenv("MLSHARP_CHECKPOINT_URL", url + "/gone.pt")
    with pytest.raises(DownloadError, match="HTTP 404"):
        resolve_checkpoint(progress=False)


# --------------------------------------------------------------------------------------
# load_state_dict / load_into
# --------------------------------------------------------------------------------------


def _model(out_channels: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 3), nn.Conv2d(3, out_channels, 1))


@pytest.fixture
def ckpt(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    sd = _model().state_dict()
    path = tmp_path / "tiny.pt"
    torch.save(sd, path)
    return path, sd


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_load_state_dict_good(ckpt: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    path, sd = ckpt
    _assert_same(load_state_dict(path), sd)
    for wrapper in ("state_dict", "model"):
        wrapped = tmp_path / f"{wrapper}.pt"
        torch.save({wrapper: sd, "epoch": 3}, wrapped)
        _assert_same(load_state_dict(wrapped), sd)
    legacy = tmp_path / "legacy.pt"  # not mmap-able: falls back to a plain read
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    _assert_same(load_state_dict(legacy), sd)


def _bad(path: Path, pattern: str) -> None:
    with pytest.raises(CheckpointError, match=pattern) as exc:
        load_state_dict(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"cannot read checkpoint {path}: ")
    assert "SHARP .pt file" in msg


def test_load_state_dict_bad_files(
    ckpt: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    path, _ = ckpt
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    _bad(truncated, "truncated")
    text = tmp_path / "text.pt"
    text.write_text("hello, I am not a checkpoint\n")
    _bad(text, "not a PyTorch file")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _bad(empty, "empty")
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "f": print}, evil)
    _bad(evil, "may not contain")
    legacy_pickle = tmp_path / "pickle.pt"
    legacy_pickle.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=2))
    _bad(legacy_pickle, "magic number")
    not_tensor = tmp_path / "numbers.pt"
    torch.save({"w": torch.zeros(1), "step": 3}, not_tensor)
    _bad(not_tensor, "'step' is a int, not a tensor")
    with pytest.raises(CheckpointNotFound):
        load_state_dict(tmp_path / "absent.pt")


def test_load_into_ok(ckpt: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, sd = ckpt
    torch.manual_seed(1)
    model = _model()
    load_into(model, load_state_dict(path), what=str(path), preset="tiny")
    _assert_same(model.state_dict(), sd)


def _mismatch(model: nn.Module, sd: dict[str, torch.Tensor]) -> str:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as exc:
        load_into(model, sd, what="tiny.pt", preset="sharp")
    _assert_same(model.state_dict(), before)  # untouched
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("checkpoint tiny.pt does not match the model (preset 'sharp'): ")
    return msg


def test_load_into_missing_keys(ckpt: tuple[Path, dict[str, torch.Tensor]]) -> None:
    _, sd = ckpt
    partial = {k: v for k, v in sd.items() if not k.startswith("1.")}
    msg = _mismatch(_model(), partial)
    assert msg.endswith("2 missing keys (first: 1.weight, 1.bias)")


def test_load_into_unexpected_keys(ckpt: tuple[Path, dict[str, torch.Tensor]]) -> None:
    _, sd = ckpt
    extra = {**sd, "2.weight": torch.zeros(1)}
    msg = _mismatch(_model(), extra)
    assert msg.endswith("1 unexpected key (first: 2.weight)")
    missing_and_extra = {k: v for k, v in extra.items() if k != "0.bias"}
    msg = _mismatch(_model(), missing_and_extra)
    assert "1 missing key (first: 0.bias), 1 unexpected key (first: 2.weight)" in msg


def test_load_into_shape_mismatch(ckpt: tuple[Path, dict[str, torch.Tensor]]) -> None:
    _, sd = ckpt
    msg = _mismatch(_model(out_channels=1), sd)
    assert msg.endswith(
        "2 shape mismatches (first: 1.weight: checkpoint [2,3,1,1] vs model [1,3,1,1])"
    )


def test_load_into_meta_model(ckpt: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, sd = ckpt
    with torch.device("meta"):
        model = _model()
    assert all(p.is_meta for p in model.parameters())
    load_into(model, load_state_dict(path))
    assert not any(t.is_meta for t in model.state_dict().values())
    _assert_same(model.state_dict(), sd)
    assert all(p.requires_grad for p in model.parameters())
    x = torch.randn(1, 3, 5, 4)
    reference = _model()
    reference.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
