"""The example REST service (orders, items, emails, payments), installed as `goex.service`.

    with serve() as url:          # uvicorn on 127.0.0.1, a free port, a fresh SQLite file
        httpx.post(f"{url}/orders", json={"item": "book", "qty": 1})

`create_app(db_path)` gives the FastAPI app itself; `python -m goex.service --port N --db PATH`
runs it in the foreground. See `app.py` for the resources and the test hooks.
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
