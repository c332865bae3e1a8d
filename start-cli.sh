#!/usr/bin/env bash
# Chat with Qwen in this terminal (the same conversations as the web page).
# Sets everything up on first run, like ./start.sh. Extra arguments go to app.py.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
exec "$(dirname "${BASH_SOURCE[0]}")/start.sh" --cli "$@"
