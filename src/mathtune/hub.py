"""Whether the Hugging Face hub can be reached, asked once and in under 3 s.

Without a network, transformers and datasets retry every hub request with backoff (about 30 s and
20 lines of `Retrying in 8s` before their error). One probe decides instead: when the hub cannot be
reached, the process goes offline (huggingface_hub's own offline mode), so the libraries use their
local caches and fail at once when something is not there.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import threading
import urllib.parse

PROBE_TIMEOUT_S = 2.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@functools.cache
def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (offline mode set, no name resolution, no connection), or None.
    Behind a proxy the proxy decides, so then the probe is skipped."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    url = urllib.parse.urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    failure: list[str] = [f"no answer within {PROBE_TIMEOUT_S:.0f} s"]

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            failure.clear()
        except OSError as exc:
            failure[0] = exc.strerror or type(exc).__name__

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 0.5)
    if not failure:
        return None
    go_offline()
    return f"no connection to {host}: {failure[0]}"


def go_offline() -> None:
    """huggingface_hub's offline mode for the rest of this process: transformers reads it per call,
    datasets copied it when imported."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True


def cached_snapshot(repo_id: str) -> str | None:
    """The local folder of a hub model already in the hub cache (its config.json is there), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub would reject (bad characters): not cached either
        return None
    return os.path.dirname(found) if isinstance(found, str) else None
