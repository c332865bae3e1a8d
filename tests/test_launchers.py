"""start.sh, start-cli.sh, start.bat and start-cli.bat: thin, and handing their arguments over.

The shell launchers are run for real (in a copy of the app whose venv is already set up, so
nothing is installed); the batch files cannot run on Linux, so what can be read is checked:
CRLF line endings (which git must keep), the hand-over to the bootstrap with %*, no bash syntax.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bootstrap import make_app_copy, script

REPO = Path(__file__).resolve().parent.parent
BATCH_FILES = ("start.bat", "start-cli.bat")


def batch_lines(name: str) -> list[str]:
    return (REPO / name).read_bytes().decode("utf-8").split("\r\n")


def code_lines(name: str) -> list[str]:
    """The batch file's commands: no comments, no echoed text."""
    lines = [line.strip() for line in batch_lines(name)]
    return [line for line in lines if line and not re.match(r"(?i)(rem\b|echo\b|echo\.|::)", line)]


# ---- start.bat / start-cli.bat -------------------------------------------------------

@pytest.mark.parametrize("name", BATCH_FILES)
def test_batch_files_have_crlf_line_endings(name):
    data = (REPO / name).read_bytes()
    assert data.endswith(b"\r\n")
    assert data.count(b"\n") == data.count(b"\r\n"), f"{name} has LF-only lines: cmd.exe misreads labels"
    assert data.count(b"\r") == data.count(b"\r\n")


@pytest.mark.parametrize("name", BATCH_FILES)
def test_git_checks_batch_files_out_with_crlf_and_shell_scripts_with_lf(name):
    out = subprocess.run(["git", "check-attr", "eol", "--", name, "start.sh", "start-cli.sh", ".ci/run"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert f"{name}: eol: crlf" in out
    for sh in ("start.sh", "start-cli.sh", ".ci/run"):
        assert f"{sh}: eol: lf" in out


def test_start_bat_hands_over_to_the_bootstrap_with_all_its_arguments():
    code = code_lines("start.bat")
    assert "%PY% -m qwen_chat.bootstrap %*" in code
    assert 'cd /d "%~dp0"' in code   # run from its own folder, as the bootstrap expects
    # Finds Python with the py launcher first, then python, each checked for 3.10+.
    tries = [line for line in code if line.endswith('-c "%VERCHK%" >nul 2>&1')]
    assert tries == ['py -3 -c "%VERCHK%" >nul 2>&1', 'python -c "%VERCHK%" >nul 2>&1']
    assert "sys.version_info >= (3, 10)" in "\n".join(code)
    # Nothing of the old copy of the set-up is left in it.
    assert not any(word in "\n".join(code).lower() for word in ("pip", "venv", "torch", "requirements"))


def test_start_bat_says_how_to_get_python_in_english_and_chinese():
    lines = batch_lines("start.bat")
    text = "\n".join(lines)
    assert "echo Install it with:  winget install Python.Python.3.12" in lines
    assert "https://www.python.org/downloads/" in text
    assert "echo 需要 Python 3.10 或更高版本，但没有找到。" in lines
    assert "echo 请运行：winget install Python.Python.3.12" in lines
    # The console shows UTF-8 only after chcp 65001, which must come before any Chinese.
    first_chinese = next(i for i, line in enumerate(lines) if re.search(r"[\u4e00-\u9fff]", line))
    assert lines.index("chcp 65001 >nul") < first_chinese


def test_start_cli_bat_passes_cli_and_its_arguments_to_start_bat():
    assert 'call "%~dp0start.bat" --cli %*' in code_lines("start-cli.bat")


@pytest.mark.parametrize("name", BATCH_FILES)
def test_batch_files_have_no_bash_syntax(name):
    bash_only = [r"\$\(", r"\$\{", r"\$@", r"\$[0-9A-Za-z_]", r"\[\[", r"^#!", r"^#", r"\bfi$", r"\bthen$",
                 r"^export\b", r"^exec\b", r"^source\b", r"/dev/null", r";\s*then\b", r"\besac\b", r"^done$"]
    for line in code_lines(name):
        for pattern in bash_only:
            assert not re.search(pattern, line), f"{name}: {line!r} looks like bash ({pattern})"


def test_every_goto_in_start_bat_has_its_label():
    code = code_lines("start.bat")
    labels = {line[1:].lower() for line in code if line.startswith(":")}
    targets = {m.group(1).lower() for line in code for m in re.finditer(r"(?i)\bgoto\s+:?(\w+)", line)}
    assert targets and targets <= labels | {"eof"}


# ---- start.sh / start-cli.sh ---------------------------------------------------------

def test_start_sh_is_thin():
    text = (REPO / "start.sh").read_text()
    code = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert 'exec "$py" -m qwen_chat.bootstrap "$@"' in text
    assert len(code) <= 40
    assert not re.search(r"\bpip\b|-m venv|torch==|apt-get", "\n".join(code))
    subprocess.run(["bash", "-n", str(REPO / "start.sh")], check=True)


def run_launcher(root: Path, name: str, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path if path is not None else os.environ["PATH"]}
    # From another folder and by absolute path: the launcher must find its own folder.
    return subprocess.run(["/bin/bash", str(root / name), *args], cwd=root.parent, env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=60)


def test_start_sh_passes_every_argument_unchanged_to_the_app(tmp_path):
    root = make_app_copy(tmp_path / "app")
    args = ["--no-browser", "two words", 'a "quoted" one', "$HOME", "*", ""]
    done = run_launcher(root, "start.sh", *args)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["argv"] == args
    assert Path(seen["cwd"]) == root
    assert Path(seen["prefix"]) == root / ".venv"


def test_start_cli_sh_starts_the_terminal_chat(tmp_path):
    root = make_app_copy(tmp_path / "app")
    done = run_launcher(root, "start-cli.sh", "--config", "my config.yaml")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["argv"] == ["--cli", "--config", "my config.yaml"]


def test_start_sh_without_a_new_enough_python_says_how_to_get_one(tmp_path):
    root = make_app_copy(tmp_path / "app")
    tools = tmp_path / "bin"
    tools.mkdir()
    os.symlink("/usr/bin/dirname", tools / "dirname")
    for name in ("python3", "python"):   # present, but too old: fails the version check
        script(tools / name, "#!/bin/sh\nexit 1\n")
    done = run_launcher(root, "start.sh", path=str(tools))
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Python 3.10 or newer is needed, but was not found." in done.stderr
    assert "https://www.python.org/downloads/" in done.stderr
    assert "sudo apt install python3 python3-venv" in done.stderr
    assert "需要 Python 3.10 或更高版本，但没有找到。" in done.stderr


def test_start_sh_uses_the_first_python_that_is_new_enough(tmp_path):
    root = make_app_copy(tmp_path / "app")
    tools = tmp_path / "bin"
    tools.mkdir()
    os.symlink("/usr/bin/dirname", tools / "dirname")
    script(tools / "python3.13", "#!/bin/sh\nexit 1\n")   # e.g. a pyenv shim for a missing version
    os.symlink(sys.executable, tools / "python3")
    done = run_launcher(root, "start.sh", "--no-browser", path=str(tools))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["argv"] == ["--no-browser"]
