"""An ASGI app that starts a thread at import: the fork server must refuse to
fork it (a forked copy would inherit locks held by a thread it lacks)."""

import threading
import time

threading.Thread(target=time.sleep, args=(300,), name="import-time-worker", daemon=True).start()


async def app(scope, receive, send):  # pragma: no cover - never served
    raise RuntimeError("never forked")
