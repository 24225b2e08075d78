"""`playbook lab` (what `make lab` runs), as the operator starts it: one URL with a token,
on 127.0.0.1 only, nothing served without the token, no password printed, and stopping
the command stops JupyterLab with it. (No browser needed: plain HTTP.)"""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from playbook.db import connecting


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_playbook_lab_prints_a_token_url_on_localhost_and_stops_with_the_command(
        demo_db, project_env, tmp_path):
    env = dict(project_env, DATABASE_URL=demo_db.url)
    process = subprocess.Popen(
        [sys.executable, "-m", "playbook", "lab", "--port", "0", "--root", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    printed: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, printed), daemon=True).start()
    out = []
    try:
        deadline = time.monotonic() + 90
        while not any("database:" in line for line in out) and time.monotonic() < deadline:
            try:
                out.append(printed.get(timeout=1))
            except queue.Empty:
                assert process.poll() is None, f"playbook lab exited: {''.join(out)}"
        text = "".join(out)
        match = re.search(r"open:\s+http://127\.0\.0\.1:(\d+)/lab\?token=(\S+)", text)
        assert match, text
        port, token = int(match.group(1)), match.group(2)
        assert len(token) >= 24
        for secret in connecting.secrets_of(demo_db.url):
            assert secret not in text
        assert connecting.summary(demo_db.url) in text

        base = f"http://127.0.0.1:{port}"
        assert _status(f"{base}/api/status?token={token}") == 200
        assert _status(f"{base}/api/status") == 403
        assert _status(f"{base}/api/contents?token=wrong") == 403
        outside = socket.gethostbyname(socket.gethostname())
        if not outside.startswith("127."):
            with socket.socket() as probe:
                probe.settimeout(2)
                assert probe.connect_ex((outside, port)) != 0, "lab listens beyond localhost"

        process.terminate()
        assert process.wait(timeout=30) == 0
        time.sleep(0.2)  # let the reader thread take the last lines
        while not printed.empty():
            out.append(printed.get_nowait())
        assert "JupyterLab stopped." in "".join(out)
        for _ in range(50):
            if _refused(port):
                break
            time.sleep(0.2)
        assert _refused(port), "JupyterLab kept running after `playbook lab` was stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
