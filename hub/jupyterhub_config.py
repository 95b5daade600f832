"""JupyterHub for a workshop on one machine: `make hub` (or `jupyterhub -f hub/jupyterhub_config.py`).

Every learner logs in with a name from the list (learner01 … learnerNN) and the room's shared password; the hub
starts their own JupyterLab in their own folder (.hub/home/<name>/), with a copy of labs/ and notebooks/ made on
their first start, the course's venv as the kernel, and nbgrader's exchange (.hub/exchange/) for the instructor's
release → fetch → submit → collect → autograde. Nothing is downloaded: the proxy is the Python
`configurable-http-proxy` from requirements-hub.txt (no node).

Settings come from the environment (`make hub` sets them; see docs/instructor_guide.md, "A workshop hub"):
HUB_LEARNERS (25), HUB_PASSWORD (the learners' shared password, ≥ 8 characters; required), HUB_ADMIN_PASSWORD
(optional, ≥ 32 characters: logs in the admin "instructor"), HUB_IP (0.0.0.0: every address of this machine),
HUB_PORT (8000), HUB_STATE (.hub: database, homes, exchange), HUB_API_TOKEN (optional: a service token with the
admin role, for scripts and tests).

Isolation: every learner's server runs as the user who started the hub (JupyterHub's SimpleLocalProcessSpawner),
so learners are kept apart by folders, not by the operating system. That suits one room for one day; for more,
see The Littlest JupyterHub (one OS user per learner) and Zero to JupyterHub (a container per learner).
"""

import os
import shutil
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (JupyterHub's config loader defines it)

ROOT = Path(__file__).resolve().parents[1]  # the course folder
HERE = Path(__file__).resolve().parent
STATE = Path(os.environ.get("HUB_STATE", ROOT / ".hub")).resolve()
VENV_BIN = Path(sys.executable).parent  # the hub runs in the course's venv: servers and kernels come from it too
LEARNERS = int(os.environ.get("HUB_LEARNERS", "25"))
COURSE_ID = "llm-course"
EXCHANGE = STATE / "exchange"
# What each learner gets a copy of on their first start (later starts keep their edits).
LEARNER_FOLDERS = ("labs", "notebooks")

for folder in (STATE, STATE / "home", EXCHANGE):
    folder.mkdir(parents=True, exist_ok=True)

c.JupyterHub.bind_url = f"http://{os.environ.get('HUB_IP', '0.0.0.0')}:{os.environ.get('HUB_PORT', '8000')}"
c.JupyterHub.hub_ip = "127.0.0.1"  # the hub's own API: the proxy and the servers on this machine only
c.JupyterHub.hub_port = int(os.environ.get("HUB_API_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ.get('HUB_PROXY_API_PORT', '8001')}"
c.ConfigurableHTTPProxy.command = [str(VENV_BIN / "configurable-http-proxy")]
c.ConfigurableHTTPProxy.pid_file = str(STATE / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")

# Log in: a name from the list and the room's password (JupyterHub's SharedPasswordAuthenticator).
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ.get("HUB_PASSWORD", "")
c.SharedPasswordAuthenticator.admin_password = os.environ.get("HUB_ADMIN_PASSWORD", "")
c.Authenticator.allowed_users = {f"learner{i:02d}" for i in range(1, LEARNERS + 1)}
c.Authenticator.admin_users = {"instructor"}

if os.environ.get("HUB_API_TOKEN"):  # scripts (and tests) manage users and servers with this token
    c.JupyterHub.services = [{"name": "course-admin", "api_token": os.environ["HUB_API_TOKEN"]}]
    c.JupyterHub.load_roles = [{"name": "admin", "services": ["course-admin"]}]

# Each learner's server: their own folder, the course's venv, one thread per kernel, nothing downloaded.
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = str(STATE / "home" / "{username}")
c.Spawner.cmd = [str(VENV_BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab/tree/labs"
if os.geteuid() == 0:  # a container or a throw-away VM runs everything as root; Jupyter refuses that unless asked
    c.Spawner.args = ["--allow-root"]
c.Spawner.start_timeout = c.Spawner.http_timeout = 180  # 25 servers starting at once on a small machine
c.Spawner.environment = {
    "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `!nbgrader …` and `!pip` are the venv's
    "PYTHONPATH": str(ROOT),  # course_utils from this course folder
    "JUPYTER_CONFIG_PATH": str(HERE / "learner"),  # nbgrader_config.py: the course id and the exchange
    "COURSE_EXCHANGE": str(EXCHANGE),
    "COURSE_THREADS": "1",  # 25 kernels share the cores: one thread each
    "COURSE_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def copy_course(spawner):
    """The learner's own copy of the labs and lessons, made once: a restart keeps their edits."""
    home = Path(spawner.home_dir)
    home.mkdir(parents=True, exist_ok=True)
    for name in LEARNER_FOLDERS:
        if (ROOT / name).is_dir() and not (home / name).exists():
            shutil.copytree(ROOT / name, home / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))


c.Spawner.pre_spawn_hook = copy_course
