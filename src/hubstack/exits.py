"""Ending a hubstack process once its work is stopped, without waiting for worker threads.

Python's exit runs every item still queued in ``asyncio.to_thread``'s pool before it ends
(``concurrent.futures`` joins its workers only once their queues are empty), and
``asyncio.run`` waits for that pool too. After a class's starts, that is one storage
preparation after another for servers that will never start: tens of seconds between the
signal and the end of ``hubstack up``. Everything those threads do is built to survive
``kill -9`` (images are made under a temporary name, mounts and cgroups are found again by
the next start), so leaving them unfinished is safe.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def exit_now(status: int = 0) -> NoReturn:
    """Flush the logs and output, then end the process with ``status``."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)
