"""qwen_chat/bootstrap.py, the set-up behind start.sh and start.bat, branch by branch.

No real network and no real installs: pip is a fake script that logs what it was asked, package
indexes are HTTP servers on loopback (or a loopback port nothing listens on), apt-get and sudo
are fake scripts. Venvs are real (made without pip, which takes a fraction of a second), except
the one test that recreates a broken venv the way a user's first run does.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qwen_chat import bootstrap, package_index
from qwen_chat.bootstrap import Pip, Plan, SetupError
from qwen_chat.package_index import IndexProblem

REPO = Path(__file__).resolve().parent.parent
TSINGHUA = "https://pypi.tuna.tsinghua.edu.cn/simple"

FAKE_PIP = r'''
import json, os, sys
args = sys.argv[1:]
if args[:2] == ["config", "list"]:
    print(os.environ.get("FAKE_PIP_CONFIG", ""))
    sys.exit(0)
with open(os.environ["FAKE_PIP_LOG"], "a") as log:
    log.write(json.dumps({"args": args, "index": os.environ.get("PIP_INDEX_URL")}) + "\n")
fail = os.environ.get("FAKE_PIP_FAIL")
sys.exit(1 if fail and fail in " ".join(args) else 0)
'''


# ---- helpers -----------------------------------------------------------------

def bare_venv(path: Path) -> Path:
    """A real venv without pip (fast); returns its Python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return bootstrap.venv_python(path)


def script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def make_app_copy(root: Path) -> Path:
    """The launchers, the bootstrap and requirements in `root`, with an app.py that prints its
    arguments as JSON and a venv whose stamp matches (so nothing is installed). Returns root."""
    (root / "qwen_chat").mkdir(parents=True)
    (root / "qwen_chat" / "__init__.py").write_text("")
    for name in ("bootstrap.py", "package_index.py"):  # the bootstrap and its one part
        shutil.copy(REPO / "qwen_chat" / name, root / "qwen_chat" / name)
    for name in ("start.sh", "start-cli.sh", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(REPO / name, root / name)
    (root / "app.py").write_text(
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'prefix': sys.prefix}))\n"
        "sys.exit(int(os.environ.get('FAKE_APP_EXIT', '0')))\n")
    bare_venv(root / ".venv")
    for plan in (bootstrap.plan_for([]), bootstrap.plan_for(["--test"])):
        bootstrap.stamp_path(root / ".venv", plan.mode).write_text(
            bootstrap.requirements_hash(plan.requirements, root) + "\n")
    return root


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """A Pip whose command is the fake script; `.calls()` reads back what it was asked."""
    log = tmp_path / "pip.log"
    monkeypatch.setenv("FAKE_PIP_LOG", str(log))
    monkeypatch.delenv("FAKE_PIP_FAIL", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    path = tmp_path / "fake_pip.py"
    path.write_text(FAKE_PIP)
    pip = Pip([sys.executable, str(path)], quiet=True)

    def calls() -> list[dict]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    pip.calls = calls
    return pip


def requirements_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "requirements.txt").write_text("torch==2.13.0\npyyaml>=6\n")
    (root / "requirements-dev.txt").write_text("-r requirements.txt\npytest>=8\n")
    return root


def no_probe(url):
    return None


class Index:
    """A package index on loopback that answers every page, after `delay` seconds, with `status`."""

    def __init__(self, *, delay: float = 0.0, status: int = 200):
        self.paths: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path)
                time.sleep(delay)
                body = b"<html><a href='pip-25.0.tar.gz'>pip-25.0.tar.gz</a></html>"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def index():
    made = []

    def make(**kwargs) -> Index:
        made.append(Index(**kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


def dead_url() -> str:
    """A loopback address with nothing listening: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple"


# ---- arguments and the Python version -------------------------------------------

def test_test_flag_selects_dev_mode_and_the_rest_goes_to_pytest():
    assert bootstrap.plan_for(["--test", "-q", "tests/test_config.py"]) == Plan(
        "dev", ("requirements-dev.txt", "requirements.txt"), ("-q", "tests/test_config.py"))
    assert bootstrap.plan_for(["--cli", "--test"]) == Plan("app", ("requirements.txt",), ("--cli", "--test"))
    assert bootstrap.plan_for([]) == Plan("app", ("requirements.txt",), ())


def test_an_old_python_is_refused_with_where_to_get_a_new_one():
    message = bootstrap.python_problem((3, 9, 18))
    assert "Python 3.10 or newer is needed; this is Python 3.9.18" in message
    assert "winget install Python.Python.3.12" in message
    assert "https://www.python.org/downloads/" in message
    assert "需要 Python 3.10 或更高版本，当前为 Python 3.9.18" in message
    assert bootstrap.python_problem((3, 10, 0)) is None
    assert bootstrap.python_problem((3, 13, 1)) is None
    assert bootstrap.python_problem() is None   # the Python running these tests


def test_the_run_command_is_app_py_or_pytest_with_the_arguments():
    py = Path("/v/bin/python")
    assert bootstrap.command_for(bootstrap.plan_for(["--no-browser", "a b"]), py) == [
        "/v/bin/python", "app.py", "--no-browser", "a b"]
    assert bootstrap.command_for(bootstrap.plan_for(["--test", "-m", "not slow"]), py) == [
        "/v/bin/python", "-m", "pytest", "-m", "not slow"]
    assert bootstrap.venv_python(Path(".venv"), windows=True) == Path(".venv/Scripts/python.exe")
    assert bootstrap.venv_python(Path(".venv"), windows=False) == Path(".venv/bin/python")


# ---- the virtual environment -----------------------------------------------------

def test_a_working_venv_is_kept(tmp_path, capsys):
    venv = tmp_path / ".venv"
    vpy = bare_venv(venv)
    (venv / "marker").write_text("mine")
    # The creating Python would fail: proof it is not used.
    assert bootstrap.ensure_venv(venv, python=str(tmp_path / "no-such-python")) == vpy
    assert (venv / "marker").read_text() == "mine"
    assert capsys.readouterr().out == ""


def test_a_broken_venv_is_recreated_with_pip(tmp_path, capsys):
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("not a program")   # e.g. its base Python was removed
    (venv / "marker").write_text("old")
    vpy = bootstrap.ensure_venv(venv, python=sys.executable)
    out = capsys.readouterr().out
    assert "The existing .venv does not work" in out and "recreating it" in out
    assert "Creating virtual environment .venv" in out
    assert not (venv / "marker").exists()
    assert subprocess.run([str(vpy), "-m", "pip", "--version"], capture_output=True).returncode == 0


def test_a_venv_that_cannot_be_made_says_which_package_is_missing(tmp_path):
    venv = tmp_path / ".venv"
    no_venv_module = script(tmp_path / "python3", "#!/bin/sh\necho 'No module named venv' >&2\nexit 1\n")
    with pytest.raises(SetupError) as err:
        bootstrap.ensure_venv(venv, python=str(no_venv_module))
    assert "Could not create the virtual environment (.venv)" in str(err.value)
    assert "sudo apt install python3-venv" in str(err.value)
    assert "无法创建虚拟环境" in str(err.value)
    assert not venv.exists()


# ---- requirements stamp ----------------------------------------------------------

def test_the_stamp_is_the_shell_launchers_hash_so_old_venvs_are_not_reinstalled(tmp_path):
    root = requirements_root(tmp_path)
    plan = bootstrap.plan_for(["--test"])
    expected = hashlib.sha256((root / "requirements-dev.txt").read_bytes()
                              + (root / "requirements.txt").read_bytes()).hexdigest()
    assert bootstrap.requirements_hash(plan.requirements, root) == expected
    venv = tmp_path / ".venv"
    venv.mkdir()
    bootstrap.stamp_path(venv, "dev").write_text(expected + "\n")   # as `printf '%s\n'` wrote it
    assert bootstrap.up_to_date(venv, plan, root)
    (root / "requirements.txt").write_text("torch==2.13.0\npyyaml>=6\npsutil\n")
    assert not bootstrap.up_to_date(venv, plan, root)


def test_venv_present_and_hash_matching_installs_nothing(tmp_path, fake_pip, capsys):
    root = requirements_root(tmp_path)
    venv = tmp_path / ".venv"
    bare_venv(venv)
    plan = bootstrap.plan_for([])
    bootstrap.stamp_path(venv, "app").write_text(bootstrap.requirements_hash(plan.requirements, root))

    def probe(url):
        raise AssertionError("no index is asked when nothing is installed")

    bootstrap.install_requirements(plan, venv, fake_pip, root=root, env={}, probe=probe)
    assert fake_pip.calls() == []
    assert capsys.readouterr().out == ""


def test_a_fresh_venv_gets_cpu_torch_then_the_requirements_and_both_stamps(tmp_path, fake_pip, capsys):
    root = requirements_root(tmp_path)
    venv = tmp_path / ".venv"
    bare_venv(venv)   # no torch in it
    plan = bootstrap.plan_for(["--test"])
    bootstrap.install_requirements(plan, venv, fake_pip, root=root, env={}, probe=no_probe)
    assert [c["args"] for c in fake_pip.calls()] == [
        ["install", "-q", "--upgrade", "pip"],
        ["install", "-q", "--no-deps", "--timeout", "15", "--retries", "1",
         "--index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0"],
        ["install", "-q", "-r", str(root / "requirements-dev.txt")],
    ]
    out = capsys.readouterr().out
    assert "Installing dependencies into .venv" in out and "Dependencies installed." in out
    assert "Installing PyTorch 2.13.0 (CPU build) from https://download.pytorch.org/whl/cpu" in out
    assert bootstrap.up_to_date(venv, plan, root)
    assert bootstrap.up_to_date(venv, bootstrap.plan_for([]), root)   # the app's too
    # The next start installs nothing.
    bootstrap.install_requirements(plan, venv, fake_pip, root=root, env={}, probe=no_probe)
    assert len(fake_pip.calls()) == 3


def test_on_a_terminal_pip_shows_its_progress(tmp_path, fake_pip):
    fake_pip.quiet = False
    assert fake_pip.install("torch==2.13.0")
    assert fake_pip.calls()[-1]["args"] == ["install", "torch==2.13.0"]
    assert Pip.of(Path(sys.executable)).quiet == (not sys.stdout.isatty())


def test_torch_falls_back_to_the_pinned_version_from_the_default_index(tmp_path, fake_pip, monkeypatch, capsys):
    python = bare_venv(tmp_path / ".venv")
    monkeypatch.setenv("FAKE_PIP_FAIL", "download.pytorch.org")
    assert bootstrap.install_torch(fake_pip, python, system="Linux")
    calls = [c["args"] for c in fake_pip.calls()]
    assert calls[1] == ["install", "-q", "torch==2.13.0"]
    assert "--index-url" in calls[0]
    # Never an unpinned torch (it resolves to a multi-GB CUDA build).
    assert all(a == "torch==2.13.0" for c in calls for a in c if a.startswith("torch"))
    assert "Could not get torch from the PyTorch CPU index" in capsys.readouterr().out


def test_torch_on_macos_comes_pinned_from_pypi(tmp_path, fake_pip):
    python = bare_venv(tmp_path / ".venv")
    assert bootstrap.install_torch(fake_pip, python, system="Darwin")
    assert [c["args"] for c in fake_pip.calls()] == [["install", "-q", "torch==2.13.0"]]


def test_torch_already_at_the_pinned_version_is_not_touched(fake_pip):
    assert importlib.metadata.version("torch").split("+")[0] == bootstrap.TORCH_VERSION
    assert bootstrap.install_torch(fake_pip, Path(sys.executable), system="Linux")
    assert fake_pip.calls() == []


@pytest.mark.parametrize("failing", ["torch==2.13.0", "-r /"])
def test_a_failed_install_says_so_and_names_a_mirror(tmp_path, fake_pip, monkeypatch, failing):
    root = requirements_root(tmp_path)
    venv = tmp_path / ".venv"
    bare_venv(venv)
    monkeypatch.setenv("FAKE_PIP_FAIL", failing)
    with pytest.raises(SetupError) as err:
        bootstrap.install_requirements(bootstrap.plan_for([]), venv, fake_pip, root=root, env={}, probe=no_probe)
    text = str(err.value)
    assert "Installing the dependencies failed" in text and "安装依赖失败" in text
    assert f"export PIP_INDEX_URL={TSINGHUA}" in text
    assert not bootstrap.stamp_path(venv, "app").exists()


# ---- the package index and the mirror hint -----------------------------------------

def test_an_index_that_answers_in_time_is_fine(index):
    server = index()
    assert package_index.probe_index(server.url) is None
    assert server.paths == ["/simple/pip/"]


def test_a_slow_index_is_reported_as_slow(index):
    server = index(delay=0.3)
    problem = package_index.probe_index(server.url, slow=0.1)
    assert problem.en.startswith("is slow (it took 0.") and "响应很慢" in problem.zh
    assert not problem.unreachable


def test_an_index_that_times_out_or_refuses_is_unreachable(index):
    problem = package_index.probe_index(dead_url())
    assert problem.unreachable and problem.en.startswith("is unreachable (") and "无法访问" in problem.zh
    silent = index(delay=1.0)
    assert package_index.probe_index(silent.url, timeout=0.2).unreachable


def test_an_index_answering_with_a_server_error_is_reported(index):
    problem = package_index.probe_index(index(status=503).url)
    assert problem.en == "is not working (HTTP 503)"
    assert package_index.probe_index(index(status=404).url) is None   # it answers: a missing page is not slowness


def test_a_local_index_is_not_probed(tmp_path):
    assert package_index.probe_index(f"file://{tmp_path}") is None


def test_the_mirror_hint_gives_the_line_to_type_in_english_and_chinese():
    problem = IndexProblem("is unreachable (refused)", "无法访问（refused）", unreachable=True)
    posix = package_index.mirror_hint("https://pypi.org/simple", problem, windows=False)
    assert "The package index https://pypi.org/simple is unreachable (refused)." in posix
    assert f"    export PIP_INDEX_URL={TSINGHUA}\n" in posix and "./start.sh again" in posix
    assert "软件包索引 https://pypi.org/simple 无法访问（refused）。" in posix
    assert "请设置后重新运行 ./start.sh" in posix
    windows = package_index.mirror_hint("https://pypi.org/simple", problem, windows=True)
    assert f"set PIP_INDEX_URL={TSINGHUA}" in windows
    assert f'$env:PIP_INDEX_URL="{TSINGHUA}"' in windows and "start.bat" in windows
    # Already on that mirror: offer the other one.
    other = package_index.mirror_hint(TSINGHUA + "/", problem, windows=False)
    assert "export PIP_INDEX_URL=https://mirrors.aliyun.com/pypi/simple" in other


def test_pip_config_index_url_is_read():
    assert package_index.index_from_pip_config(
        "global.cert='/etc/ssl/ca.crt'\nglobal.extra-index-url='file:///opt/pypi/simple'\n"
        "global.index-url='https://mirror.example/simple'\n") == "https://mirror.example/simple"
    assert package_index.index_from_pip_config(
        "install.index-url='https://a/simple'\nglobal.index-url='https://b/simple'\n") == "https://a/simple"
    assert package_index.index_from_pip_config("global.find-links='/opt/wheels'\n") is None


def test_unreachable_index_prints_the_mirror_hint_and_still_installs(tmp_path, fake_pip, monkeypatch, capsys):
    root = requirements_root(tmp_path)
    venv = tmp_path / ".venv"
    bare_venv(venv)
    dead = dead_url()
    monkeypatch.setenv("FAKE_PIP_CONFIG", f"global.index-url='{dead}'")   # the index from pip's config
    bootstrap.install_requirements(bootstrap.plan_for([]), venv, fake_pip, root=root, env={})
    seen = capsys.readouterr()
    assert f"==> Package index: {dead}\n" in seen.out
    assert f"The package index {dead} is unreachable (" in seen.err
    assert f"export PIP_INDEX_URL={TSINGHUA}" in seen.err and f"软件包索引 {dead} 无法访问" in seen.err
    assert "Not upgrading pip (the index is unreachable)" in seen.out
    calls = [c["args"] for c in fake_pip.calls()]
    assert ["install", "-q", "--upgrade", "pip"] not in calls
    assert calls[-1] == ["install", "-q", "-r", str(root / "requirements.txt")]   # local files may do
    assert bootstrap.up_to_date(venv, bootstrap.plan_for([]), root)


def test_pip_index_url_is_honoured(tmp_path, fake_pip, monkeypatch, capsys, index):
    root = requirements_root(tmp_path)
    venv = tmp_path / ".venv"
    bare_venv(venv)
    mirror = index()
    monkeypatch.setenv("FAKE_PIP_CONFIG", f"global.index-url='{dead_url()}'")   # overridden
    monkeypatch.setenv("PIP_INDEX_URL", mirror.url)
    bootstrap.install_requirements(bootstrap.plan_for([]), venv, fake_pip, root=root, env=dict(os.environ))
    seen = capsys.readouterr()
    assert f"==> Package index: {mirror.url} (from PIP_INDEX_URL)" in seen.out
    assert "PIP_INDEX_URL=" not in seen.err   # it answered: no hint
    assert mirror.paths == ["/simple/pip/"]
    assert {c["index"] for c in fake_pip.calls()} == {mirror.url}   # pip is run with it


# ---- Debian packages for --test --------------------------------------------------------

@pytest.fixture(autouse=True)
def _no_debian_frontend(monkeypatch):
    monkeypatch.delenv("DEBIAN_FRONTEND", raising=False)   # so the log shows who set it


def fake_tools(tmp_path: Path, *, apt_exit: int = 0, sudo_ok: bool = True) -> dict[str, str]:
    log = tmp_path / "apt.log"
    apt = script(tmp_path / "apt-get", "#!/bin/sh\n"
                 f"echo \"$DEBIAN_FRONTEND $*\" >> {log}\nexit {apt_exit}\n")
    sudo = script(tmp_path / "sudo", "#!/bin/sh\n[ \"$1\" = -n ] && shift\n"
                  + ('exec "$@"\n' if sudo_ok else "echo 'a password is required' >&2\nexit 1\n"))
    return {"apt-get": str(apt), "sudo": str(sudo), "log": str(log)}


def test_present_packages_need_nothing(capsys):
    def which(name):
        raise AssertionError("apt-get is not looked for")

    bootstrap.ensure_system_packages([(sys.executable, "python3")], which=which, is_root=True)
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_a_missing_package_is_installed_with_apt_get(tmp_path, capsys):
    tools = fake_tools(tmp_path)
    bootstrap.ensure_system_packages([(str(tmp_path / "chromium"), "chromium")], which=tools.get, is_root=True)
    assert Path(tools["log"]).read_text().splitlines() == [" update -qq", "noninteractive install -y -qq chromium"]
    out = capsys.readouterr().out
    assert "Installing chromium for the tests (apt-get install chromium)" in out and "chromium installed." in out


def test_without_root_sudo_that_needs_no_password_is_used(tmp_path, capsys):
    tools = fake_tools(tmp_path)
    bootstrap.ensure_system_packages([(str(tmp_path / "chromium"), "chromium")], which=tools.get, is_root=False)
    assert Path(tools["log"]).read_text().splitlines()[-1] == "noninteractive install -y -qq chromium"


def test_without_root_or_passwordless_sudo_the_command_is_printed(tmp_path, capsys):
    tools = fake_tools(tmp_path, sudo_ok=False)
    bootstrap.ensure_system_packages([(str(tmp_path / "chromium"), "chromium")], which=tools.get, is_root=False)
    assert "install it with 'sudo apt-get install chromium'" in capsys.readouterr().err
    assert not Path(tools["log"]).exists()
    no_sudo = {"apt-get": tools["apt-get"]}
    bootstrap.ensure_system_packages([(str(tmp_path / "chromium"), "chromium")], which=no_sudo.get, is_root=False)
    assert "install it with 'sudo apt-get install chromium'" in capsys.readouterr().err


def test_no_apt_get_or_a_failing_one_is_a_warning(tmp_path, capsys):
    bootstrap.ensure_system_packages([(str(tmp_path / "chromium"), "chromium")], which=lambda name: None)
    assert "chromium not found and apt-get is not available" in capsys.readouterr().err
    tools = fake_tools(tmp_path, apt_exit=100)
    bootstrap.ensure_system_packages([(str(tmp_path / "chromium"), "chromium")], which=tools.get, is_root=True)
    assert "could not install chromium with apt-get" in capsys.readouterr().err


# ---- the whole bootstrap, as the launchers run it ------------------------------------------

def run_bootstrap(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen_chat.bootstrap", *args], cwd=root, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
                          env={**os.environ, **env})


def test_an_installed_copy_starts_the_app_with_the_arguments(tmp_path):
    root = make_app_copy(tmp_path / "app")
    done = run_bootstrap(root, "--no-browser", "two words", 'quote"d')
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["argv"] == ["--no-browser", "two words", 'quote"d']
    assert Path(seen["cwd"]) == root
    assert Path(seen["prefix"]) == root / ".venv"   # the venv's Python, not the system one
    assert "Installing" not in done.stdout + done.stderr


def test_the_apps_exit_code_is_the_launchers(tmp_path):
    root = make_app_copy(tmp_path / "app")
    assert run_bootstrap(root, FAKE_APP_EXIT="3").returncode == 3


@pytest.mark.skipif(not os.access("/usr/bin/chromium", os.X_OK), reason="would apt-get install chromium")
def test_test_mode_runs_pytest_with_the_rest_of_the_arguments(tmp_path):
    root = make_app_copy(tmp_path / "app")
    # `python -m pytest` finds this stand-in first (the current folder comes first on sys.path).
    (root / "pytest.py").write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    done = run_bootstrap(root, "--test", "-m", "not slow", "-q")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["-m", "not slow", "-q"]


def test_a_setup_error_is_printed_and_exits_1(tmp_path):
    root = make_app_copy(tmp_path / "app")
    shutil.rmtree(root / ".venv")
    (root / ".venv").write_text("a file where the venv should be")
    done = run_bootstrap(root)
    assert done.returncode == 1
    assert "Could not remove the old .venv folder" in done.stderr
    assert "无法删除旧的 .venv 文件夹" in done.stderr
    assert done.stdout.count("\n") == 1 and "recreating it" in done.stdout
