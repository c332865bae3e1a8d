"""Set up `.venv` and start qwen-chat: the one bootstrap behind start.sh and start.bat.

The launchers only find a Python 3.10+ and run `python -m qwen_chat.bootstrap ARGS` from the
repository folder; everything else happens here, the same on Linux, macOS and Windows:

    python -m qwen_chat.bootstrap [app args...]         set up (first run only), start app.py
    python -m qwen_chat.bootstrap --test [pytest args]  set up the test tools too, run pytest

It runs with the system Python before anything is installed, so it imports nothing outside the
standard library but its own part, package_index.py (the package index and its mirrors). It
never prompts: CI runs it with no stdin.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .package_index import (DEFAULT_INDEX, IndexProblem, index_from_pip_config, install_failed,
                            mirror_hint, probe_index)

REPO = Path(__file__).resolve().parent.parent
MIN_PYTHON = (3, 10)
TORCH_VERSION = "2.13.0"
# PyPI's Linux torch wheels pull multi-GB CUDA libraries; this index has the small CPU build.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# What --test needs from the system: (the file that shows it is there, its Debian package).
# The browser tests drive /usr/bin/chromium directly (no "playwright install"); the fonts make
# Chinese text and emoji in the page (and its screenshots) render as users see them.
TEST_SYSTEM_PACKAGES = (("/usr/bin/chromium", "chromium"),
                        ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "fonts-noto-cjk"),
                        ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
                         "fonts-noto-color-emoji"))
VERSION_CHECK = "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)"


class SetupError(Exception):
    """A step failed; the message (English, then Chinese) says what to do."""


@dataclass(frozen=True)
class Plan:
    mode: str                      # "app" or "dev" (--test)
    requirements: tuple[str, ...]  # hashed to decide on a reinstall; the first one is installed
    args: tuple[str, ...]          # for app.py, or for pytest


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def warn(text: str) -> None:
    print(f"WARNING: {text}", file=sys.stderr, flush=True)


def plan_for(argv: Sequence[str]) -> Plan:
    if list(argv[:1]) == ["--test"]:
        return Plan("dev", ("requirements-dev.txt", "requirements.txt"), tuple(argv[1:]))
    return Plan("app", ("requirements.txt",), tuple(argv))


def python_problem(version: Sequence[int] | None = None) -> str | None:
    """Why this Python cannot run the app, or None. The launchers check too; this is for
    someone who runs the module by hand with an old Python."""
    version = tuple(sys.version_info) if version is None else version
    if tuple(version[:2]) >= MIN_PYTHON:
        return None
    found = ".".join(str(n) for n in version[:3])
    return (f"Python 3.10 or newer is needed; this is Python {found}.\n"
            "Get one from https://www.python.org/downloads/ (Windows: winget install Python.Python.3.12;\n"
            "Debian/Ubuntu: sudo apt install python3 python3-venv), then run the launcher again.\n"
            f"需要 Python 3.10 或更高版本，当前为 Python {found}。\n"
            "请从 https://www.python.org/downloads/ 下载安装（Windows：winget install Python.Python.3.12；\n"
            "Debian/Ubuntu：sudo apt install python3 python3-venv），然后重新运行启动脚本。")


def venv_python(venv: Path, *, windows: bool = os.name == "nt") -> Path:
    return venv / ("Scripts/python.exe" if windows else "bin/python")


def python_works(python: Path) -> bool:
    # Run it: the file may exist but not work (its base Python removed or upgraded).
    try:
        return subprocess.run([str(python), "-c", VERSION_CHECK], capture_output=True).returncode == 0
    except OSError:
        return False


def ensure_venv(venv: Path, *, python: str = sys.executable) -> Path:
    """The venv's Python, creating (or recreating) the venv with `python` when needed."""
    vpy = venv_python(venv)
    if python_works(vpy):
        return vpy
    if venv.exists():
        say(f"The existing {venv.name} does not work (its Python is missing or older than 3.10); recreating it.")
        try:
            shutil.rmtree(venv)
        except OSError as exc:
            raise SetupError(f"Could not remove the old {venv.name} folder ({exc}); delete it and run this again.\n"
                             f"无法删除旧的 {venv.name} 文件夹，请手动删除后重新运行。") from exc
    say(f"Creating virtual environment {venv.name} with Python {platform.python_version()} ({python})")
    created = subprocess.run([python, "-m", "venv", str(venv)]).returncode == 0
    if not created or not python_works(vpy):
        shutil.rmtree(venv, ignore_errors=True)
        ver = "%d.%d" % sys.version_info[:2]
        raise SetupError(
            f"Could not create the virtual environment ({venv.name}); see the messages above.\n"
            f"On Debian/Ubuntu, install the venv module first: sudo apt install python3-venv (or python{ver}-venv)\n"
            "then run this again.\n"
            f"无法创建虚拟环境 ({venv.name})，请查看上面的信息。\n"
            f"在 Debian/Ubuntu 上请先安装 venv 模块：sudo apt install python3-venv（或 python{ver}-venv），\n"
            "然后重新运行。")
    return vpy


def requirements_hash(files: Sequence[str], root: Path) -> str:
    """sha256 of the files' bytes one after the other: the same stamp the shell launcher wrote."""
    digest = hashlib.sha256()
    for name in files:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def stamp_path(venv: Path, mode: str) -> Path:
    return venv / f".installed-{mode}"


def up_to_date(venv: Path, plan: Plan, root: Path) -> bool:
    stamp = stamp_path(venv, plan.mode)
    return stamp.is_file() and stamp.read_text().strip() == requirements_hash(plan.requirements, root)


class Pip:
    """Runs `pip install` with the venv's pip; tests give a fake command instead."""

    def __init__(self, command: Sequence[str], *, quiet: bool) -> None:
        self.command = list(command)
        self.quiet = quiet   # a log (CI) gets no progress bars; a terminal gets pip's own

    @classmethod
    def of(cls, python: Path) -> Pip:
        return cls([str(python), "-m", "pip", "--disable-pip-version-check"], quiet=not sys.stdout.isatty())

    def install(self, *args: str, hide_output: bool = False) -> bool:
        sys.stdout.flush()
        out = subprocess.DEVNULL if hide_output else None
        cmd = [*self.command, "install", *(["-q"] if self.quiet else []), *args]
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out).returncode == 0

    def configured_index(self) -> str | None:
        """The index-url of pip's config files (`pip config list`), if any."""
        try:
            done = subprocess.run([*self.command, "config", "list"], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)
        except OSError:
            return None
        return index_from_pip_config(done.stdout) if done.returncode == 0 else None


def package_index(env: dict[str, str], pip: Pip) -> tuple[str, str]:
    """(the index pip will use, where that comes from). pip reads PIP_INDEX_URL itself; the
    environment is handed to it unchanged."""
    if env.get("PIP_INDEX_URL"):
        return env["PIP_INDEX_URL"], "PIP_INDEX_URL"
    configured = pip.configured_index()
    if configured:
        return configured, "pip config"
    return DEFAULT_INDEX, "default"


def installed_version(python: Path, dist: str) -> str | None:
    code = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))"
    done = subprocess.run([str(python), "-c", code, dist], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def install_torch(pip: Pip, python: Path, *, system: str = platform.system()) -> bool:
    """The pinned torch, the CPU build where PyPI's is a CUDA one. Never an unpinned `torch`."""
    have = installed_version(python, "torch")
    if have and have.split("+")[0] == TORCH_VERSION:   # any build, e.g. 2.13.0+cpu
        return True
    pinned = f"torch=={TORCH_VERSION}"
    if system == "Darwin":   # PyPI's macOS wheels are CPU-only
        say(f"Installing PyTorch {TORCH_VERSION}")
        return pip.install(pinned)
    say(f"Installing PyTorch {TORCH_VERSION} (CPU build) from {TORCH_CPU_INDEX}")
    # --no-deps: only torch itself comes from the CPU index (one short lookup);
    # its dependencies come from the default index with the requirements.
    if pip.install("--no-deps", "--timeout", "15", "--retries", "1", "--index-url", TORCH_CPU_INDEX, pinned):
        return True
    say(f"Could not get torch from the PyTorch CPU index (see above); installing {pinned} "
        "from the default index instead")
    return pip.install(pinned)


def install_requirements(plan: Plan, venv: Path, pip: Pip, *, root: Path, env: dict[str, str],
                         probe: Callable[[str], IndexProblem | None] = probe_index) -> None:
    """Install torch and the requirements unless the stamp says they are installed already."""
    if up_to_date(venv, plan, root):
        return
    stamp_path(venv, plan.mode).unlink(missing_ok=True)
    index, source = package_index(env, pip)
    say(f"Installing dependencies into {venv.name} (first run or requirements changed; "
        "this can take several minutes)")
    say(f"Package index: {index}" + (" (from PIP_INDEX_URL)" if source == "PIP_INDEX_URL" else ""))
    problem = probe(index)
    if problem:
        warn(mirror_hint(index, problem))
    if problem and problem.unreachable:
        say("Not upgrading pip (the index is unreachable); trying with local files and caches")
    elif not pip.install("--upgrade", "pip", hide_output=True):
        warn("could not upgrade pip; continuing with the current version")
    say("[1/2] PyTorch")
    if not install_torch(pip, venv_python(venv)):
        raise SetupError(install_failed(index, problem))
    say(f"[2/2] {plan.requirements[0]}")
    if not pip.install("-r", str(root / plan.requirements[0])):
        raise SetupError(install_failed(index, problem))
    stamp_path(venv, plan.mode).write_text(requirements_hash(plan.requirements, root) + "\n")
    if plan.mode == "dev":   # requirements-dev.txt includes requirements.txt: the app is installed too
        stamp_path(venv, "app").write_text(requirements_hash(("requirements.txt",), root) + "\n")
    say("Dependencies installed.")


def ensure_system_packages(packages: Sequence[tuple[str, str]], *,
                           which: Callable[[str], str | None] = shutil.which,
                           is_root: bool | None = None) -> None:
    """Install missing Debian packages with apt-get (as root, or with sudo that needs no password);
    otherwise say what is missing. Never prompts; a failure is a warning, the tests say the rest."""
    missing = [pkg for path, pkg in packages if not os.access(path, os.R_OK)]
    if not missing:
        return
    names = " ".join(missing)
    apt = which("apt-get")
    if apt is None:
        warn(f"{names} not found and apt-get is not available; the tests that need it will report what is missing.")
        return
    if is_root is None:
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    sudo: list[str] = []
    if not is_root:
        sudo_path = which("sudo")
        if not sudo_path or subprocess.run([sudo_path, "-n", "true"], capture_output=True,
                                           stdin=subprocess.DEVNULL).returncode != 0:
            warn(f"{names} not found; install it with 'sudo apt-get install {names}'. "
                 "The tests that need it will report what is missing.")
            return
        sudo = [sudo_path, "-n"]
    say(f"Installing {names} for the tests (apt-get install {names})")
    quiet = {"stdin": subprocess.DEVNULL}
    ok = (subprocess.run([*sudo, apt, "update", "-qq"], **quiet).returncode == 0
          and subprocess.run([*sudo, "env", "DEBIAN_FRONTEND=noninteractive", apt, "install", "-y", "-qq",
                              *missing], **quiet).returncode == 0)
    if ok:
        say(f"{names} installed.")
    else:
        warn(f"could not install {names} with apt-get; the tests that need it will report what is missing.")


def command_for(plan: Plan, python: Path) -> list[str]:
    if plan.mode == "dev":
        return [str(python), "-m", "pytest", *plan.args]
    return [str(python), "app.py", *plan.args]


def hand_over(cmd: list[str]) -> int:
    """Become the app (or pytest), so Ctrl+C and SIGTERM reach it directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name != "nt":
        os.execv(cmd[0], cmd)
    # Windows has no real exec: wait for the child, which gets Ctrl+C itself and exits.
    child = subprocess.Popen(cmd)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


def main(argv: Sequence[str] | None = None, *, root: Path = REPO) -> int:
    for stream in (sys.stdout, sys.stderr):   # Chinese text on a console with a legacy code page
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    problem = python_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    plan = plan_for(list(sys.argv[1:] if argv is None else argv))
    os.chdir(root)
    venv = root / ".venv"
    try:
        python = ensure_venv(venv)
        install_requirements(plan, venv, Pip.of(python), root=root, env=dict(os.environ))
    except SetupError as exc:
        print(f"\n{exc}", file=sys.stderr, flush=True)
        return 1
    if plan.mode == "dev":
        ensure_system_packages(TEST_SYSTEM_PACKAGES)
    return hand_over(command_for(plan, python))


if __name__ == "__main__":
    sys.exit(main())
