"""The "Object storage" commands of docs/storage.md, run as written (a free port for the server, HOME in tmp so the
default local state folder lands there): the main job's activations stage, a release, a query and a
Parquet export, all against a local S3 server."""

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_block(title: str) -> str:
    text = (ROOT / "docs" / "storage.md").read_text()
    section = text[text.index(title):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_object_storage_commands_work_as_written(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = readme_block("## Object storage").replace("9000", str(port))
    script = script.replace("--max-sequences 64", "--max-sequences 16")  # the same commands, a smaller corpus
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NX_", "DAGSTER_"))}
    env["HOME"] = str(tmp_path)
    try:
        r = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run(["pkill", "-f", f"moto_server -p {port}"], check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "release r1: snapshot" in r.stdout and "post_fix" in r.stdout and "as Parquet" in r.stderr, r.stderr[-2000:]
    state = tmp_path / ".nx_dagster" / "s3" / "my-bucket" / "nx"
    assert (state / "catalog.sqlite").is_file() and not (state / "data").exists()
