#!/usr/bin/env bash
# qwen-chat launcher for Linux and macOS.
#
#   ./start.sh [app args...]             install what is needed (first run only), then start the app
#   ./start.sh --test [pytest args...]   install the test requirements, then run pytest
#
# This only finds a Python 3.10+ and hands over to qwen_chat/bootstrap.py (shared with
# start.bat), which creates .venv next to this script, installs the CPU build of torch and the
# requirements, then starts app.py. Never prompts, so it also works in CI with no stdin.

# Re-run under bash if started as "sh start.sh".
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi

set -euo pipefail

# Work from the script's own folder, whatever the current directory is.
cd "$(dirname "${BASH_SOURCE[0]}")"

VERSION_CHECK='import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'

for py in python3.14 python3.13 python3.12 python3.11 python3.10 python3 python; do
    # Run it: a command may exist but not work (e.g. a pyenv shim for a missing version).
    if command -v "$py" >/dev/null 2>&1 && "$py" -c "$VERSION_CHECK" >/dev/null 2>&1; then
        exec "$py" -m qwen_chat.bootstrap "$@"
    fi
done

printf '%s\n' \
    "Python 3.10 or newer is needed, but was not found." \
    "Install it from https://www.python.org/downloads/" \
    "or with your system's package manager, e.g.:" \
    "    Debian/Ubuntu:  sudo apt install python3 python3-venv" \
    "    macOS:          brew install python@3.12" \
    "Then run this script again." \
    "" \
    "需要 Python 3.10 或更高版本，但没有找到。" \
    "请从 https://www.python.org/downloads/ 下载安装，" \
    "或使用系统的包管理器安装，例如：" \
    "    Debian/Ubuntu：sudo apt install python3 python3-venv" \
    "    macOS：        brew install python@3.12" \
    "然后重新运行本脚本。" >&2
exit 1
