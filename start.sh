#!/usr/bin/env bash
# qwen-chat launcher for Linux and macOS.
#
#   ./start.sh [app args...]      install what is needed (first run only), then start the app
#   ./start.sh --test [pytest args...]   install the test requirements, then run pytest
#
# Everything is installed into .venv next to this script; nothing outside this
# folder is touched (except Debian's chromium package in --test mode, see below).
# Never prompts, so it also works in CI with no standard input.

# Re-run under bash if started as "sh start.sh".
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi

set -euo pipefail

TORCH_VERSION="2.13.0"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

# Work from the script's own folder, whatever the current directory is.
cd "$(dirname "${BASH_SOURCE[0]}")"

MODE="app"
REQ_FILES=(requirements.txt)
if [ "${1:-}" = "--test" ]; then
    shift
    MODE="dev"
    REQ_FILES=(requirements-dev.txt requirements.txt)
fi

VENV=".venv"
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)
VERSION_CHECK='import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'

say()  { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf '%s\n' "$@" >&2; exit 1; }

# pip: full output (with progress bars) on a terminal, quiet in logs/CI.
PIP_VERBOSITY=()
if [ ! -t 1 ]; then PIP_VERBOSITY=(-q); fi
pip_install() { "${PIP[@]}" install ${PIP_VERBOSITY[@]+"${PIP_VERBOSITY[@]}"} "$@"; }

find_python() {
    local c
    for c in python3.13 python3.12 python3.11 python3.10 python3 python; do
        # Run it: a command may exist but not work (e.g. a pyenv shim for a missing version).
        if command -v "$c" >/dev/null 2>&1 && "$c" -c "$VERSION_CHECK" >/dev/null 2>&1; then
            printf '%s\n' "$c"
            return 0
        fi
    done
    return 1
}

# sha256 of the requirement files used by this mode (python: works on Linux and macOS).
req_hash() {
    "$VPY" -c 'import hashlib, sys
h = hashlib.sha256()
for name in sys.argv[1:]:
    with open(name, "rb") as f:
        h.update(f.read())
print(h.hexdigest())' "$@"
}

ensure_venv() {
    if [ -x "$VPY" ] && "$VPY" -c "$VERSION_CHECK" >/dev/null 2>&1; then
        return 0
    fi
    if [ -e "$VENV" ]; then
        say "The existing $VENV does not work (its Python is missing or older than 3.10); recreating it."
        rm -rf "$VENV" || die "Could not remove the old $VENV folder; delete it and run this script again." \
            "无法删除旧的 $VENV 文件夹，请手动删除后重新运行本脚本。"
    fi

    local py
    if ! py="$(find_python)"; then
        die "Python 3.10 or newer is needed, but was not found." \
            "Install it from https://www.python.org/downloads/" \
            "or with your system package manager, e.g.: sudo apt install python3 python3-venv" \
            "Then run this script again." \
            "" \
            "需要 Python 3.10 或更高版本，但没有找到。" \
            "请从 https://www.python.org/downloads/ 下载安装，" \
            "或使用系统的包管理器安装，例如：sudo apt install python3 python3-venv" \
            "然后重新运行本脚本。"
    fi

    say "Creating virtual environment $VENV with $py ($("$py" -c 'import sys; print(sys.version.split()[0])'))"
    if ! "$py" -m venv "$VENV"; then
        rm -rf "$VENV"
        local ver
        ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        die "" \
            "Could not create the virtual environment (.venv)." \
            "On Debian/Ubuntu, install the venv module first:" \
            "    sudo apt install python3-venv      (or python${ver}-venv)" \
            "then run this script again." \
            "" \
            "无法创建虚拟环境 (.venv)。" \
            "在 Debian/Ubuntu 上请先安装 venv 模块：" \
            "    sudo apt install python3-venv      （或 python${ver}-venv）" \
            "然后重新运行本脚本。"
    fi
}

install_torch() {
    # Already the pinned version (any build, e.g. 2.13.0+cpu)? Nothing to do.
    if "$VPY" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('torch').split('+')[0] == '$TORCH_VERSION' else 1)" >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(uname -s)" = "Darwin" ]; then
        # PyPI's macOS wheels are CPU-only.
        say "Installing PyTorch $TORCH_VERSION"
        pip_install "torch==$TORCH_VERSION"
        return 0
    fi
    say "Installing PyTorch $TORCH_VERSION (CPU build) from $TORCH_CPU_INDEX"
    # --no-deps: only torch itself comes from the CPU index (one short lookup);
    # its dependencies are installed from the default index with requirements.txt.
    if pip_install --no-deps --timeout 15 --retries 1 \
            --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION"; then
        return 0
    fi
    say "Could not get torch from the PyTorch CPU index (see above); installing torch==$TORCH_VERSION from the default index instead"
    pip_install "torch==$TORCH_VERSION"
}

install_requirements() {
    local stamp="$VENV/.installed-$MODE"
    local want
    want="$(req_hash "${REQ_FILES[@]}")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0   # up to date
    fi

    rm -f "$stamp"
    say "Installing dependencies into $VENV (first run or requirements changed; this can take several minutes)"
    pip_install --upgrade pip >/dev/null 2>&1 || warn "could not upgrade pip; continuing with the current version"
    install_torch
    say "Installing ${REQ_FILES[0]}"
    pip_install -r "${REQ_FILES[0]}"

    printf '%s\n' "$want" > "$stamp"
    if [ "$MODE" = "dev" ]; then
        # requirements-dev.txt includes requirements.txt, so the app is installed too.
        req_hash requirements.txt > "$VENV/.installed-app"
    fi
    say "Dependencies installed."
}

ensure_chromium() {
    # The browser tests drive /usr/bin/chromium directly (no "playwright install").
    if [ -x /usr/bin/chromium ]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        warn "/usr/bin/chromium not found and apt-get is not available; browser tests will report what is missing."
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
            sudo="sudo -n"
        else
            warn "/usr/bin/chromium not found; install it with 'sudo apt-get install chromium'. Browser tests will report what is missing."
            return 0
        fi
    fi
    say "Installing Chromium for the browser tests (apt-get install chromium)"
    if $sudo apt-get update -qq </dev/null \
        && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium </dev/null; then
        say "Chromium installed."
    else
        warn "could not install chromium with apt-get; browser tests will report what is missing."
    fi
}

ensure_venv
install_requirements

if [ "$MODE" = "dev" ]; then
    ensure_chromium
    exec "$VPY" -m pytest "$@"
fi

exec "$VPY" app.py "$@"
