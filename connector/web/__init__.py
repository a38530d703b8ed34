"""``mvsync ui``: a read-only web console over the store (extra ``[web]``: FastAPI, Jinja2, uvicorn).

MIM's Synchronization Service Manager views for the photo sync: operations history, metaverse
search, a person's attributes with lineage and photos per source, pending exports as before/after
photos, and coverage. Nothing in here writes to the store.
"""

from connector.web._app import CONSOLE_READER, create_app
from connector.web._deadline import page_deadline
from connector.web._security import AccessPolicy, InsecureBindError, is_loopback
from connector.web._serve import BackgroundConsole, bind_console_socket, quiet_when_stopped, serve_in_background

__all__ = [
    "CONSOLE_READER",
    "AccessPolicy",
    "BackgroundConsole",
    "InsecureBindError",
    "bind_console_socket",
    "create_app",
    "is_loopback",
    "page_deadline",
    "quiet_when_stopped",
    "serve_in_background",
]
