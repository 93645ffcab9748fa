"""Run the example service in the foreground: python -m goex.service [--port N] [--db PATH]."""

from __future__ import annotations

import argparse

import uvicorn

from .app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m goex.service", description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000; 0: a free one)")
    parser.add_argument("--db", help="SQLite file to keep the state in (default: a fresh temporary file)")
    args = parser.parse_args(argv)
    app = create_app(args.db)
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port)
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down already and re-raised the signal
        pass
    finally:
        app.state.store.close()


if __name__ == "__main__":
    main()
