"""Every fenced code block of README.md, README.zh-CN.md and docs/*.md, checked or run.

Every block is parsed in its language (PowerShell with the PowerShell grammar, JSON, YAML,
TOML, Python, bash with ``bash -n``). An HTML comment on the line before the fence,
``<!-- doc-example: TAG (reason) -->``, says what else happens; a bash or console block
must have one:

* ``run``: run in a fresh copy of a scratch folder holding the file names the examples
  use (see ``scratch``), with ``mlsharp`` on PATH, ``MLSHARP_PRESET=tiny`` and untrained
  tiny weights as the checkpoint, so the commands run as written, in seconds. A bash
  block runs with ``bash -euo pipefail``; a console block runs each ``$`` command and
  checks what the transcript shows (an error line exactly, else success and its JSON
  keys); a Python block runs with this Python. Lines are bounded (``bounded``:
  ``predict``/``render`` overwrite, ``render`` makes 2 small frames, ``mlsharp serve``
  runs on a free loopback port until ready). Commands named in backticks in the reason
  (``run (except `mlsharp download`: ...)``) are left out, for the reason given.
* ``run-with-server``: the same, against a tiny ``mlsharp serve`` with docs/api.md's API
  keys, started by the test: ``127.0.0.1:8000`` (and ``host:8000``) become its address,
  the examples' job and batch ids and ETag those of real ones, ``mlsharp serve`` lines
  are left out, and ``curl`` fails on an HTTP error and sends a key unless it names one.
* ``skip (reason)``: not run here (a GPU, the network, Apple's weights, Docker, minutes
  of CPU...); listed as skipped with the reason.
* ``python-client``, ``js-browser``, ``js-node``, ``js-webhook``: the API examples, run
  against a real server by the tests at the end of this file.
* untagged (not bash or console): parsed only; output and file layouts are listed as
  skipped.
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

#: The names the examples use for the user's own files; the scratch folder holds each.
PHOTO_NAMES = (
    "photo.jpg",
    "img.jpg",
    "a.jpg",
    "b.jpg",
    "more.jpg",
    "examples/photo.jpg",
    "photos/one.jpg",
    "photos/trip/two.jpg",
)
#: Keys of the doc server (docs/api.md's example); curl calls naming no key get the first.
DOC_KEYS = ("key-for-alice", "key-for-bob")
#: docs/api.md's illustrative ids and ETag, replaced by those of real jobs on the server.
EXAMPLE_JOB = "job_DHNkj9fGE0oR4Siu"
EXAMPLE_BATCH = "batch_73XhL8hzR9Mi6jXO"
EXAMPLE_ETAG = '"job_DHNkj9fGE0oR4Siu-ply-70031d-18ea0ac8071b907a"'
#: Paths of production examples, kept inside the scratch folder.
PATH_SUBSTITUTIONS = {"/srv/mlsharp": "srv/mlsharp"}

# Run before each block: `curl` fails on an HTTP error (so a wrong example fails the test)
# and sends the doc server's key unless the command names one; `mlsharp serve` lines run
# until the server is ready, then are stopped.
BASH_PRELUDE = r"""
curl() {
  case " $* " in
    *"Authorization:"* | *"X-API-Key:"*) ;;
    *) set -- -H "Authorization: Bearer $DOC_KEY" "$@" ;;
  esac
  command curl --fail-with-body "$@"
}
serve_until_ready() {
  "$@" >serve.log 2>&1 &
  local pid=$! tries=0
  until command curl -sf "http://127.0.0.1:$DOC_PORT/v1/ready" >/dev/null; do
    tries=$((tries + 1))
    if ! kill -0 "$pid" 2>/dev/null || [ "$tries" -gt 900 ]; then
      kill -TERM "$pid" 2>/dev/null || true
      cat serve.log >&2
      return 1
    fi
    sleep 0.1
  done
  kill -TERM "$pid"
  wait "$pid" || true
}
"""


def _make_heic(jpeg: Path, dest: Path) -> None:
    from PIL import Image
    from pillow_heif import register_heif_opener

    register_heif_opener()
    with Image.open(jpeg) as image:
        image.save(dest, format="HEIF")


def _make_small_scenes(folder: Path, env: dict) -> None:
    """photo.ply (and out/photo.ply, pano.ply): a tiny prediction cut to 3,000 splats, so
    the examples that render it take seconds; pano.ply is marked as a panorama."""
    from mlsharp import splat

    def mlsharp(*args: str) -> None:
        result = subprocess.run(
            ["mlsharp", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr

    mlsharp("predict", "photo.jpg", "-o", "full", "-q")
    mlsharp("convert", "full/photo.ply", "photo.ply", "--max-splats", "3000")
    shutil.rmtree(folder / "full")
    (folder / "out").mkdir()
    shutil.copy(folder / "photo.ply", folder / "out" / "photo.ply")
    scene = splat.read(folder / "photo.ply")
    scene.metadata["panorama"] = True
    splat.write(scene, folder / "pano.ply", "ply")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, tiny_checkpoint) -> dict:
    """The folder (copied afresh for each block) and environment that blocks run with.

    It holds the file names the examples use (see ``PHOTO_NAMES``; ``img.heic``,
    ``photos.zip``, a 2:1 ``pano.jpg`` tagged as a panorama, small scenes ``photo.ply``,
    ``out/photo.ply`` and ``pano.ply``, ``mlsharp.yaml``), ``tiny.pt`` (also as
    ``~/weights/sharp.pt``: HOME is the folder) and ``MLSHARP_PRESET=tiny``,
    ``MLSHARP_CHECKPOINT=tiny.pt``: untrained tiny weights, so commands run as written.
    """
    from tests.panorama.room import encode, equirect_room, gpano_xmp
    from tests.service.conftest import free_port

    base = tmp_path_factory.mktemp("doc-base")
    folder = base / "template"
    for name in PHOTO_NAMES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PHOTO, folder / name)
    _make_heic(PHOTO, folder / "img.heic")
    shutil.make_archive(str(folder / "photos"), "zip", folder / "photos")
    (folder / "pano.jpg").write_bytes(encode(equirect_room(512), "JPEG", xmp=gpano_xmp()))
    (folder / "weights").mkdir()
    for dest in ("tiny.pt", "weights/sharp.pt"):
        shutil.copy(tiny_checkpoint, folder / dest)
    (folder / "mlsharp.yaml").write_text("log_level: INFO\nworkers: 1\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(folder),
        MLSHARP_PRESET="tiny",
        MLSHARP_CHECKPOINT=str(tiny_checkpoint),
        MLSHARP_DEVICE="cpu",
        MLSHARP_OFFLINE="true",
        MLSHARP_CACHE=str(base / "cache"),  # shared: a backend's export is made once
        MLSHARP_DATA_DIR=str(base / "data"),
        MLSHARP_HOST="127.0.0.1",
        MLSHARP_PORT=str(port),
        DOC_PORT=str(port),
        DOC_KEY=DOC_KEYS[0],
    )
    _make_small_scenes(folder, env)
    return {"template": folder, "env": env}


@pytest.fixture()
def workdir(scratch, tmp_path) -> Path:
    """A fresh copy of the scratch folder, HOME included, for one block."""
    folder = tmp_path / "work"
    shutil.copytree(scratch["template"], folder)
    return folder


@pytest.fixture(scope="module")
def doc_server(scratch, tiny_checkpoint, tmp_path_factory):
    """A tiny ``mlsharp serve`` with docs/api.md's API keys, for ``run-with-server`` blocks
    (started on first use); yields its address and the ids of a finished job and batch."""
    from tests.service.conftest import launch_serve, wait_until_ok

    folder = tmp_path_factory.mktemp("doc-server")
    keys = {"MLSHARP_API_KEYS": ",".join(DOC_KEYS)}
    process, url = launch_serve(
        folder / "data", tiny_checkpoint, folder / "serve.log", cache_dir=folder / "c", env=keys
    )
    try:
        ready = wait_until_ok(f"{url}/v1/ready", process, timeout=60)
        assert ready, (folder / "serve.log").read_text(errors="replace")
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {DOC_KEYS[0]}"})
        job = _finished(client, "/v1/jobs", {"file": ("photo.jpg", PHOTO.read_bytes())})
        etag = client.get(f"/v1/jobs/{job}/result").headers["etag"]
        photos = [("files", (name, PHOTO.read_bytes())) for name in ("a.jpg", "b.jpg")]
        batch = _finished(client, "/v1/batches", photos)
        yield {"url": url, "client": client, "job": job, "etag": etag, "batch": batch}
    finally:
        process.terminate()
        process.wait(30)


def _finished(client: httpx.Client, path: str, files) -> str:
    """POST files; wait until the job or batch has finished; its id."""
    created = client.post(path, files=files)
    assert created.status_code in (201, 202), created.text
    item = created.json()["id"]
    for _ in range(600):
        status = client.get(f"{path}/{item}").json()["status"]
        if status in ("succeeded", "completed"):
            return item
        assert status not in ("failed", "canceled"), status
        time.sleep(0.1)
    raise AssertionError(f"{item} still {status}")


def with_server(text: str, server: dict) -> str:
    """The block aimed at the doc server: its address, and real ids for the examples'."""
    job = server["job"]
    if "-X DELETE" in text:  # a job of its own, as it is deleted
        job = _finished(server["client"], "/v1/jobs", {"file": ("del.jpg", PHOTO.read_bytes())})
    address = server["url"].removeprefix("http://")
    kept = [line for line in text.splitlines() if not line.startswith("mlsharp serve")]
    text = "\n".join(kept) + "\n"
    for old, new in (
        (EXAMPLE_ETAG, server["etag"] if job == server["job"] else EXAMPLE_ETAG),
        (EXAMPLE_JOB, job),
        (EXAMPLE_BATCH, server["batch"]),
        ("127.0.0.1:8000", address),
        ("localhost:8000", address),
        ("host:8000", address),
    ):
        text = text.replace(old, new)
    return text


def excepted_lines(block: Block) -> list[str]:
    """Command prefixes a ``run`` tag leaves out, named in backticks in its reason."""
    return re.findall(r"`([^`]+)`", block.reason or "")


def commented(line: str) -> tuple[str, str]:
    """A shell line split into its command and its trailing `` # comment`` (if any)."""
    match = re.match(r"(.*?)(\s+#\s.*)?$", line)
    assert match is not None
    return match.group(1), match.group(2) or ""


def bounded(line: str) -> str:
    """A command line made quick and repeatable: ``predict`` and ``render`` lines overwrite
    (each redoes its work, even after the line before), ``render`` lines make 2 frames of
    160x120 (60 frames are a CPU minute); ``serve`` lines stop once ready."""
    command, comment = commented(line)
    if "mlsharp predict" in command:
        command += " --overwrite"
    elif "mlsharp render" in command:
        command += " --overwrite --size 160x120" + ("" if ".png" in command else " --frames 2")
    elif re.search(r"(^|\s)mlsharp serve", command):
        command = re.sub(r"(^|\s)mlsharp serve", r"\1serve_until_ready mlsharp serve", command)
        command = re.sub(r"--port \d+", "--port $DOC_PORT", command)
        command = command.replace("--host 0.0.0.0", "--host 127.0.0.1")
    return command + comment


def runnable(block: Block, text: str) -> str:
    """The block's text as it is run: lines the tag leaves out dropped, the rest bounded."""
    skipped = excepted_lines(block)
    for prefix in skipped:
        assert any(line.startswith(prefix) for line in text.splitlines()), prefix
    kept = [line for line in text.splitlines() if not line.startswith(tuple(skipped) or "\0")]
    text = "\n".join(bounded(line) for line in kept) + "\n"
    for old, new in PATH_SUBSTITUTIONS.items():
        text = text.replace(old, new)
    return text


def run_bash(text: str, folder: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", BASH_PRELUDE + text],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def run_script(block: Block, text: str, folder: Path, env: dict) -> None:
    if block.lang == "python":
        text = re.sub(r"frames=\d+", "frames=2", text)  # as bounded() does for the CLI
        command = [sys.executable, "-c", text]
        result = subprocess.run(
            command, cwd=folder, env=env, capture_output=True, text=True, timeout=180
        )
    else:
        result = run_bash(runnable(block, text), folder, env)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def transcript(text: str) -> list[tuple[str, list[str]]]:
    """A console transcript's ``$ command`` lines (with ``\\`` continuations) and the
    output shown after each."""
    steps: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    while lines:
        line = lines.pop(0)
        if not line.startswith("$ "):
            assert steps, f"output before a command: {line}"
            steps[-1][1].append(line)
            continue
        command = line[2:]
        while command.endswith("\\") and lines:
            command = command[:-1] + " " + lines.pop(0).strip()
        steps.append((command, []))
    return steps


def run_transcript(block: Block, text: str, folder: Path, env: dict) -> None:
    """Each command of a console block runs; an ``mlsharp: error:`` shown must be the
    error printed (and the exit non-zero), else it must succeed and print every JSON key
    the transcript shows."""
    for command, shown in transcript(text):
        result = run_bash(runnable(block, command), folder, env)
        printed = result.stdout + result.stderr
        if shown and shown[0].startswith("mlsharp: error:"):
            assert result.returncode != 0, printed
            assert shown[0] in printed.splitlines(), printed
            continue
        assert result.returncode == 0, f"{command}: exit {result.returncode}\n{printed}"
        for key in re.findall(r'"(\w+)"\s*:', "\n".join(shown)):
            assert f'"{key}"' in result.stdout, f"{command}: no {key!r} in\n{result.stdout}"


def check_syntax(block: Block) -> bool:
    """Parse the block in its language; False when there is nothing to parse."""
    if block.lang in ("powershell", "ps1", "pwsh"):
        assert_parses(block.text, block.name)
    elif block.lang == "json" and "..." not in block.text:
        json.loads(block.text)
    elif block.lang == "yaml":
        yaml.safe_load(block.text)
    elif block.lang == "toml":
        if sys.version_info >= (3, 11):  # tomllib is 3.11's; 3.10 leaves TOML unparsed
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
        assert block.lang in ("bash", "sh", "console", "python"), block.name
        text = block.text
        if block.tag == "run-with-server":
            text = with_server(text, request.getfixturevalue("doc_server"))
        folder = request.getfixturevalue("workdir")
        env = request.getfixturevalue("scratch")["env"]
        if block.tag == "run-with-server":  # a download is named after the job's photo, and
            for scene in folder.glob("*.ply"):  # `curl -OJ` does not overwrite a file
                scene.unlink()
        if block.lang == "console":
            run_transcript(block, text, folder, env)
        else:
            run_script(block, text, folder, env)
    elif block.tag is not None:
        pytest.fail(f"{block.name}: unknown tag {block.tag!r}")
    elif block.lang in ("bash", "sh", "shell", "console"):
        pytest.fail(f"{block.name}: a command block must be tagged run, run-with-server or skip")
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
        line = receiver.stdout.readline()
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
