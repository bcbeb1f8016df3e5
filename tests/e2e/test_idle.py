"""Idle stop: jupyterhub-idle-culler, run by the hub, stops servers nobody uses."""

from __future__ import annotations

import pytest
from conftest import needs_default_env, needs_root
from hubtest import running_hub, wait_for

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]


def test_an_idle_server_is_stopped_but_not_deleted() -> None:
    with running_hub({"policy": {"idle_timeout": "10s"}}) as hub:
        dana = hub.new_user("dana")
        assert dana.start("quiet").status_code in (201, 202)
        dana.wait_ready("quiet")
        assert dana.model("quiet") is not None
        wait_for(lambda: dana.model("quiet") is None, 90, "the idle culler to stop the server")
        kept = dana.model("quiet", include_stopped=True)
        assert kept is not None, "idle stop keeps the named server (and its volume)"
        image = hub.data_dir / "storage/servers" / f"{hub.prefix}dana" / "quiet.img"
        assert image.exists()
        assert "idle-culler" in hub.log() and "Culling server dana/quiet" in hub.log()
