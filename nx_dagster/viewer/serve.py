"""Serve a written viewer folder over HTTP on this machine (`nxd viewer --serve`): the standard
library's `http.server`, bound to 127.0.0.1 by default, files only from that folder."""

from __future__ import annotations

import functools
import http.server
import logging
from pathlib import Path

log = logging.getLogger(__name__)
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):  # requests go to logging, not stderr
        log.debug("viewer: " + fmt, *args)


def make_server(folder: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> http.server.ThreadingHTTPServer:
    """A server for `folder` (not yet serving: call `serve_forever`, or use it in a thread). Port 0 picks
    a free port (`server.server_address[1]`)."""
    handler = functools.partial(_Quiet, directory=str(Path(folder).resolve()))
    return http.server.ThreadingHTTPServer((host, port), handler)


def page_url(layer: int, neuron: int, base: str = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}") -> str:
    """Where `nxd viewer --serve` (default host and port) shows a neuron's page."""
    from nx_dagster.viewer.pages import page_path

    return f"{base.rstrip('/')}/{page_path(layer, neuron)}"
