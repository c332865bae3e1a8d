"""`python -m qwen_chat import PATH` and `python -m qwen_chat export --all PATH.zip`.

Import takes ChatGPT's or DeepSeek's data export (the .zip, or its conversations.json) or this
app's own exports (a conversation's .json, or a zip made by export --all), told apart by their
content; export --all writes every conversation as Markdown and JSON into one zip. Both work on
the conversations of the browser used last (as the terminal chat does), in the data folder of
config.yaml, and are safe while the app runs (SQLite, one transaction). No model is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m qwen_chat",
                                     description="Move conversations in and out of Qwen Chat.")
    parser.add_argument("--config", type=Path,
                        default=Path(os.environ.get("QWEN_CHAT_CONFIG", REPO / "config.yaml")),
                        help="settings file (its data_dir holds the conversations)")
    commands = parser.add_subparsers(dest="command", required=True)
    imported = commands.add_parser("import", help="add the conversations of an export")
    imported.add_argument("path", type=Path, help="a .zip or .json export of ChatGPT, DeepSeek "
                          "or Qwen Chat")
    exported = commands.add_parser("export", help="write conversations to a zip")
    exported.add_argument("--all", action="store_true", required=True,
                          help="every conversation (Markdown and JSON each)")
    exported.add_argument("path", type=Path, help="the .zip to write (not overwritten)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .cli import last_owner
    from .config import load_config
    from .errors import ConfigError
    from .library import export_all, import_file
    from .store import Store
    from .transfer import ImportRefused

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    data_dir = config.data_path
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(data_dir / "chat.db")
    try:
        owner = last_owner(store, data_dir)
        if args.command == "import":
            try:
                result = import_file(store, owner, args.path.read_bytes())
            except (ImportRefused, OSError) as exc:
                print(f"Nothing imported: {exc}.", file=sys.stderr)
                return 1
            print(f"Imported {result.added} conversation(s) from {result.source}"
                  + (f"; {result.skipped} were already here" if result.skipped else "") + ".")
            return 0
        if args.path.exists():
            print(f"Nothing exported: {args.path} already exists; choose a new file name.",
                  file=sys.stderr)
            return 1
        count, data = export_all(store, owner)
        args.path.parent.mkdir(parents=True, exist_ok=True)
        args.path.write_bytes(data)
        print(f"Exported {count} conversation(s) to {args.path.resolve()}.")
        return 0
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
