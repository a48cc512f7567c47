"""The baseline server: the least an aiohttp app can do with a webhook POST.

`python -m bench.bare PORT` serves `POST /stripe/webhook` by reading the body and answering
the same small JSON keyvend answers, on uvloop with access logging off, exactly as
`keyvend run` sets up its own server. Whatever keyvend's webhook costs beyond this is its
own work: signature check, parsing, the database transaction.
"""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web


async def webhook(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"received": True, "outcome": "fulfilled"})


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build() -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/stripe/webhook", webhook)
    app.router.add_get("/", ready)
    return app


def main() -> None:
    web.run_app(
        build(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
