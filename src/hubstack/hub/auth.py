"""The ``native`` authenticator: jupyterhub-nativeauthenticator, fitted to JupyterHub 6."""

from __future__ import annotations

from typing import Any

from nativeauthenticator import NativeAuthenticator


class HubstackNativeAuthenticator(NativeAuthenticator):
    """NativeAuthenticator with JupyterHub's own login page.

    nativeauthenticator 1.3.0's login handler uses ``handler.statsd``, which JupyterHub 6
    removed, so every login fails with a 500. Its ``authenticate`` works unchanged, so
    JupyterHub's standard login handler is used instead; its signup, authorization and
    change-password pages are kept.
    """

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [route for route in super().get_handlers(app) if route[0] != r"/login"]
