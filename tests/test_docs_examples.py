"""Every fenced code block of README.md, README.zh-CN.md and docs/*.md, checked or run.

How each block is treated (an HTML comment on the line before the fence can say more:
``<!-- doc-example: TAG (reason) -->``):

* ``skip (reason)``: not run here; the reason is listed (GPU-only, network-only, needs
  Apple's weights, starts a long-running server...).
* ``run``: a bash block run with ``bash -euo pipefail`` in a scratch folder that holds
  ``photo.jpg``, ``examples/photo.jpg`` and ``tiny.pt``, with ``mlsharp`` on PATH and
  ``MLSHARP_PRESET=tiny``, ``MLSHARP_CHECKPOINT=tiny.pt`` (untrained tiny weights: the
  commands run as written, in seconds).
* ``run-with-server``: the same, against a tiny ``mlsharp serve`` started by the test;
  ``127.0.0.1:8000`` in the block is replaced by its address and ``mlsharp serve`` lines
  are left out (the test's server is that server).
* ``python-client``, ``js-browser``, ``js-node``, ``js-webhook``: the API examples, run
  against a real server by the tests at the end of this file.
* untagged: PowerShell is parsed with the PowerShell grammar (scripts cannot run here);
  JSON, YAML, TOML are parsed; Python is compiled; bash is syntax-checked (``bash -n``)
  and listed as skipped (not tagged to run); console transcripts are listed as skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.powershell import assert_parses

# About 2–3 minutes on 2 cores (several tiny servers, Node, a prediction): over a minute.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "README.zh-CN.md", *sorted((ROOT / "docs").glob("*.md"))]
PHOTO = ROOT / "examples" / "photo.jpg"
TAG = re.compile(r"<!--\s*doc-example:\s*([\w-]+)\s*(?:\((.*?)\))?\s*-->")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
API_EXAMPLES = {"python-client", "js-browser", "js-node", "js-webhook"}


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, text and tag (if any)."""

    page: Path
    line: int
    lang: str
    text: str
    tag: str | None
    reason: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of one Markdown page, with the tag of the line before each."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = opening.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end]) + "\n"
        before = next((line for line in reversed(lines[:i]) if line.strip()), "")
        tag = TAG.search(before)
        found.append(
            Block(page, i + 1, lang.lower(), body, tag and tag.group(1), tag and tag.group(2))
        )
        i = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES if page.exists() for block in blocks(page)]


def block_by_tag(tag: str) -> Block:
    (block,) = [b for b in ALL_BLOCKS if b.tag == tag]
    return block


def need_node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is missing under CI")
        pytest.skip("node is not installed")
    return node


# -- the walk over every block -------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, tiny_checkpoint) -> dict:
    """The scratch folder and environment that ``run`` blocks get."""
    folder = tmp_path_factory.mktemp("doc-run")
    (folder / "examples").mkdir()
    for dest in ("photo.jpg", "examples/photo.jpg"):
        shutil.copy(PHOTO, folder / dest)
    shutil.copy(tiny_checkpoint, folder / "tiny.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        MLSHARP_PRESET="tiny",
        MLSHARP_CHECKPOINT=str(folder / "tiny.pt"),
        MLSHARP_DEVICE="cpu",
        MLSHARP_CACHE=str(folder / "cache"),
    )
    return {"folder": folder, "env": env}


@pytest.fixture(scope="module")
def doc_server(scratch, tiny_checkpoint, tmp_path_factory):
    """A tiny ``mlsharp serve`` for ``run-with-server`` blocks (started on first use)."""
    from tests.service.conftest import launch_serve, wait_until_ok

    folder = tmp_path_factory.mktemp("doc-server")
    process, url = launch_serve(
        folder / "data", tiny_checkpoint, folder / "serve.log", cache_dir=folder / "cache"
    )
    try:
        ready = wait_until_ok(f"{url}/v1/ready", process, timeout=60)
        assert ready, (folder / "serve.log").read_text(errors="replace")
        yield url
    finally:
        process.terminate()
        process.wait(30)


def run_bash(text: str, scratch: dict) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=scratch["folder"],
        env=scratch["env"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def check_syntax(block: Block) -> bool:
    """Parse the block in its language; False when there is nothing to parse."""
    if block.lang in ("powershell", "ps1", "pwsh"):
        assert_parses(block.text, block.name)
    elif block.lang == "json" and "..." not in block.text:
        json.loads(block.text)
    elif block.lang == "yaml":
        yaml.safe_load(block.text)
    elif block.lang == "toml":
        import tomllib

        tomllib.loads(block.text)
    elif block.lang == "python":
        compile(block.text, block.name, "exec")
    elif block.lang in ("bash", "sh", "shell"):
        check = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    else:
        return False
    return True


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.name)
def test_doc_block(block: Block, request) -> None:
    parsed = check_syntax(block)  # every block, skipped ones too
    if block.tag == "skip":
        pytest.skip(f"{block.name}: {block.reason or 'no reason given'} (syntax checked)")
    if block.tag in API_EXAMPLES:
        pytest.skip(f"{block.name}: run by test_{block.tag.replace('-', '_')} below")
    if block.tag in ("run", "run-with-server"):
        assert block.lang in ("bash", "sh"), f"{block.name}: only bash blocks run"
        text = block.text
        if block.tag == "run-with-server":
            address = request.getfixturevalue("doc_server").removeprefix("http://")
            kept = [line for line in text.splitlines() if not line.startswith("mlsharp serve")]
            text = "\n".join(kept).replace("127.0.0.1:8000", address)
            text = text.replace("localhost:8000", address)
        run_bash(text, request.getfixturevalue("scratch"))
    elif block.lang in ("bash", "sh", "shell"):
        pytest.skip(f"{block.name}: bash, syntax-checked only (not tagged to run)")
    elif block.lang == "json" and not parsed:
        pytest.skip(f"{block.name}: abridged JSON (...)")
    elif not parsed:
        pytest.skip(f"{block.name}: {block.lang or 'plain'} text (output or a file's layout)")


def test_readme_keeps_its_two_commands_and_ci_runs_the_test_one():
    readme = [b for b in blocks(ROOT / "README.md") if b.lang == "bash"]
    assert readme[0].text.strip() == (
        "scripts/setup.sh && .venv/bin/mlsharp predict examples/photo.jpg -o out/"
    )
    test_command = readme[1].text.strip().removeprefix("scripts/setup.sh && ")
    assert test_command == ".venv/bin/python -m pytest"
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_main_command_runs_as_written(tmp_path, tiny_checkpoint):
    """The README's main command after `scripts/setup.sh` (which made this .venv), from a
    fresh folder laid out like the checkout, with tiny weights instead of Apple's."""
    main = blocks(ROOT / "README.md")[0].text.strip().split(" && ", 1)[1]
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    env.update(
        MLSHARP_PRESET="tiny",
        MLSHARP_CHECKPOINT=str(tiny_checkpoint),
        MLSHARP_CACHE=str(tmp_path / "cache"),
    )
    result = subprocess.run(
        main, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "photo.ply").read_bytes().startswith(b"ply\n")


# -- the API examples of docs/api.md against a real server ------------------------------------


@pytest.fixture()
def keyed_server(tmp_path, tiny_checkpoint):
    """A tiny server with an API key, delivering webhooks to loopback receivers."""
    from tests.service.conftest import run_live_server

    with run_live_server(
        tmp_path, tiny_checkpoint, api_keys=["doc-key"], webhook_allow_private=True
    ) as server:
        yield server


def example_env(server) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    env.update(MLSHARP_URL=server.url, MLSHARP_API_KEY="doc-key")
    return env


def test_python_client(keyed_server, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(block_by_tag("python-client").text, encoding="utf-8")
    photo = tmp_path / "我的 照片.jpg"  # a space and Chinese characters: the key is a hash
    shutil.copy(PHOTO, photo)
    runs = []
    for dest in ("first.ply", "second.ply"):
        result = subprocess.run(
            [sys.executable, str(script), str(photo), str(tmp_path / dest)],
            env=example_env(keyed_server),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        runs.append(result.stdout.split()[1])  # "job <id> <status>"
        assert (tmp_path / dest).read_bytes().startswith(b"ply\n")
    assert runs[0] == runs[1]  # the content-hash key: a second upload is the same job


def test_js_browser(keyed_server, tmp_path):
    node = need_node()
    driver = tmp_path / "browser.mjs"
    driver.write_text(
        block_by_tag("js-browser").text
        + """
import { readFile } from "node:fs/promises";
const file = new File([await readFile(process.argv[2])], "照片 1.jpg", { type: "image/jpeg" });
const { MLSHARP_URL: base, MLSHARP_API_KEY: apiKey } = process.env;
const blob = await makeSplat(file, { base, apiKey });
console.log(blob.size, JSON.stringify(await blob.slice(0, 4).text()));
""",
        encoding="utf-8",
    )
    result = subprocess.run(
        [node, str(driver), str(PHOTO)],
        env=example_env(keyed_server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    size, head = result.stdout.split()
    assert int(size) > 1000 and head == '"ply\\n"'


def test_js_node(keyed_server, tmp_path):
    node = need_node()
    script = tmp_path / "splat.mjs"
    script.write_text(block_by_tag("js-node").text, encoding="utf-8")
    result = subprocess.run(
        [node, str(script), str(PHOTO), str(tmp_path / "photo.ply")],
        env=example_env(keyed_server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "photo.ply").read_bytes().startswith(b"ply\n")
    assert re.fullmatch(r".*photo\.ply: \d+ splats\n", result.stdout)


def test_js_webhook_receiver_verifies_a_real_delivery(keyed_server, tmp_path):
    from tests.service.conftest import free_port, jpeg_bytes

    node = need_node()
    client = keyed_server.client
    auth = {"Authorization": "Bearer doc-key"}
    port = free_port()
    registration = client.post(
        "/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/hook"}, headers=auth
    )
    assert registration.status_code == 201, registration.text
    script = tmp_path / "receiver.mjs"
    script.write_text(block_by_tag("js-webhook").text, encoding="utf-8")
    env = {**os.environ, "PORT": str(port), "WEBHOOK_SECRET": registration.json()["secret"]}
    receiver = subprocess.Popen(
        [node, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # wait until it listens
            try:
                forged = httpx.post(
                    f"http://127.0.0.1:{port}/hook",
                    content=b'{"type": "job.succeeded"}',
                    headers={
                        "webhook-id": "msg_x",
                        "webhook-timestamp": str(int(time.time())),
                        "webhook-signature": "v1,AAAA",
                    },
                )
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and receiver.poll() is None
                time.sleep(0.1)
        assert forged.status_code == 401  # a wrong signature is refused
        job = keyed_server.submit(jpeg_bytes(color=(1, 2, 3)), headers=auth).json()
        assert keyed_server.wait_job(job["id"], **auth)["status"] == "succeeded"
        line = receiver.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == f"verified job.succeeded {job['id']}"
    finally:
        receiver.terminate()
        receiver.wait(10)


def test_compose_example_keeps_keys_and_health_checks_on():
    """deploy/docker-compose.yml cannot run here (no Docker): it must parse, require API
    keys and secrets (no default passwords) and keep its health checks."""
    text = (ROOT / "deploy" / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    env = compose["x-mlsharp"]["environment"]
    assert env["MLSHARP_API_KEYS"].startswith("${MLSHARP_API_KEYS:?")
    assert "change-me" not in text
    services = compose["services"]
    for name in ("redis", "api1", "worker-gpu0"):
        assert services[name]["healthcheck"]["test"], name
    assert services["gateway"]["depends_on"]["api1"] == {"condition": "service_healthy"}
