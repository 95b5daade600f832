"""Drive the workshop hub from a script: start it, start learners' servers, run code in their kernels.

Used by tests/test_hub.py (3 learners, loopback only) and benchmarks/hub_memory.py (memory per learner). Only the
hub's REST API, each server's Jupyter REST API and its kernel websocket are used, as a browser would.

    with running_hub(state, learners=3) as hub:
        hub.start_server("learner01")
        outputs = hub.execute("learner01", kernel_id, "print(6 * 7)")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "jupyterhub_config.py"


def _free_port() -> int:
    sys.path.insert(0, str(HERE.parent))
    from course_utils.net import free_port

    return free_port()


class Hub:
    """A running hub on 127.0.0.1: its URL, its admin service token, and the folder it keeps its state in."""

    def __init__(self, url: str, token: str, state: Path, proc: subprocess.Popen, log: Path):
        self.url, self.token, self.state, self.proc, self.log = url, token, state, proc, log
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"
        self.user_tokens: dict[str, str] = {}

    def api(self, method: str, path: str, **kw) -> requests.Response:
        r = self.http.request(method, f"{self.url}/hub/api{path}", timeout=60, **kw)
        r.raise_for_status()
        return r

    def login(self, name: str, password: str) -> requests.Session:
        """Log ``name`` in through the hub's login form (the authenticator checks the password); the session
        holds the login cookie. A wrong password raises ``requests.HTTPError`` (403)."""
        s = requests.Session()
        s.get(f"{self.url}/hub/login", timeout=30).raise_for_status()
        form = {"username": name, "password": password, "_xsrf": s.cookies.get("_xsrf", "")}
        r = s.post(f"{self.url}/hub/login", data=form, allow_redirects=False, timeout=60)
        r.raise_for_status()
        if r.status_code != 302:
            raise requests.HTTPError(f"login of {name} answered {r.status_code}, not a redirect", response=r)
        return s

    def start_server(self, name: str, *, wait: bool = True, timeout_s: float = 240) -> str:
        """Create ``name`` if needed, give them an API token and start their server (and, with ``wait``, wait
        until it answers: :meth:`wait_ready`); returns the token (also kept in :attr:`user_tokens`)."""
        if self.http.get(f"{self.url}/hub/api/users/{name}", timeout=30).status_code == 404:
            self.api("POST", f"/users/{name}")
        token = self.api("POST", f"/users/{name}/tokens", json={"note": "hubctl"}).json()["token"]
        self.user_tokens[name] = token
        self.api("POST", f"/users/{name}/server")
        if wait:
            self.wait_ready(name, timeout_s)
        return token

    def wait_ready(self, name: str, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            server = self.api("GET", f"/users/{name}").json().get("servers", {}).get("")
            if server and server.get("ready"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"{name}'s server was not ready after {timeout_s:.0f} s; see {self.log}")

    def user(self, name: str, method: str, path: str, **kw) -> requests.Response:
        """A request to ``name``'s own server (through the hub's proxy), with their token."""
        headers = {"Authorization": f"token {self.user_tokens[name]}"}
        r = requests.request(method, f"{self.url}/user/{name}{path}", headers=headers, timeout=60, **kw)
        r.raise_for_status()
        return r

    def start_kernel(self, name: str) -> str:
        return self.user(name, "POST", "/api/kernels", json={"name": "python3"}).json()["id"]

    def execute(self, name: str, kernel: str, code: str, timeout_s: float = 600) -> list[dict]:
        """Run ``code`` in ``name``'s kernel through its websocket; returns the iopub outputs (stream, error,
        execute_result, display_data) as Jupyter messages' ``msg_type`` + ``content``."""
        return asyncio.run(self._execute(name, kernel, code, timeout_s))

    async def _execute(self, name: str, kernel: str, code: str, timeout_s: float) -> list[dict]:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        url = f"{self.url.replace('http', 'ws', 1)}/user/{name}/api/kernels/{kernel}/channels"
        req = HTTPRequest(url, headers={"Authorization": f"token {self.user_tokens[name]}"})
        ws = await websocket_connect(req)
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": "execute_request", "username": name, "session": uuid.uuid4().hex}
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
        msg = {"header": {**header, "version": "5.3"}, "parent_header": {}, "metadata": {}, "content": content}
        await ws.write_message(json.dumps({**msg, "channel": "shell"}))
        outputs, deadline = [], time.monotonic() + timeout_s
        try:
            while True:
                raw = await asyncio.wait_for(ws.read_message(), max(1.0, deadline - time.monotonic()))
                if raw is None:
                    raise ConnectionError(f"{name}'s kernel websocket closed")
                reply = json.loads(raw)
                if reply.get("parent_header", {}).get("msg_id") != msg_id or reply.get("channel") != "iopub":
                    continue
                kind = reply["header"]["msg_type"]
                if kind in ("stream", "error", "execute_result", "display_data"):
                    outputs.append({"msg_type": kind, **reply["content"]})
                elif kind == "status" and reply["content"]["execution_state"] == "idle":
                    return outputs
        finally:
            ws.close()

    def server_pids(self, name: str) -> list[int]:
        """The process ids of ``name``'s server and everything it started (its kernels)."""
        import psutil

        server = self.api("GET", f"/users/{name}").json()["servers"][""]
        pid = (server.get("state") or {}).get("pid")
        if not pid:
            raise RuntimeError(f"the hub does not report {name}'s server pid")
        proc = psutil.Process(pid)
        return [proc.pid, *(p.pid for p in proc.children(recursive=True))]


def text_of(outputs: list[dict]) -> str:
    """What a reader sees: streams, results and errors (name, value and traceback) as one string."""
    parts = []
    for o in outputs:
        if o["msg_type"] == "stream":
            parts.append(o["text"])
        elif o["msg_type"] == "error":
            parts.append(f"{o['ename']}: {o['evalue']}")
        else:
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "".join(parts)


@contextlib.contextmanager
def running_hub(state: Path, learners: int = 3, password: str | None = None, timeout_s: float = 120):
    """Start ``jupyterhub -f hub/jupyterhub_config.py`` on 127.0.0.1 with free ports and ``state`` as its folder;
    yield a :class:`Hub`; stop it (and every learner's server) on exit. The learners' password is
    ``password`` (random when None), readable as ``hub.password``."""
    state = Path(state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), secrets.token_hex(16)
    password = password or secrets.token_urlsafe(12)
    env = dict(
        os.environ,
        HUB_STATE=str(state),
        HUB_IP="127.0.0.1",
        HUB_PORT=str(port),
        HUB_API_PORT=str(_free_port()),
        HUB_PROXY_API_PORT=str(_free_port()),
        HUB_API_TOKEN=token,
        HUB_PASSWORD=password,
        HUB_LEARNERS=str(learners),
    )
    log = state / "hub.log"
    bin_dir = Path(sys.executable).parent
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(bin_dir / "jupyterhub"), "-f", str(CONFIG)],
            cwd=state,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the proxy and every server stop with it
        )
    hub = Hub(f"http://127.0.0.1:{port}", token, state, proc, log)
    hub.password = password
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(requests.ConnectionError):
                if hub.http.get(f"{hub.url}/hub/api/", timeout=5).ok:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"jupyterhub did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield hub
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the hub (it stops the learners' servers and its proxy), then kill what is left: the servers run in
    sessions of their own, so they are found as the hub's descendants, not by its process group."""
    import psutil

    family = []
    with contextlib.suppress(psutil.NoSuchProcess):
        family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
