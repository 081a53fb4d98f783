"""Run the agent's command line under libfaketime with the monotonic clock left real.

    LD_PRELOAD=.../libfaketime.so.1 FAKETIME_DONT_FAKE_MONOTONIC=1 python faketime_driver.py [agent arguments...]

libfaketime 0.9.10 (Debian 12) mishandles clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) when
the monotonic clock is excluded: it hands the kernel a negative time and Python 3.11's time.sleep
fails with EINVAL (https://github.com/wolfcw/libfaketime/issues/426). So `time.sleep` becomes a
timed wait on an Event that is never set: the same monotonic sleep through a call libfaketime
leaves alone. Nothing else of the agent changes.
"""

from __future__ import annotations

import sys
import threading
import time

from agent import cli


def _sleep(seconds: float) -> None:
    threading.Event().wait(max(0.0, seconds))


if __name__ == "__main__":
    time.sleep = _sleep
    sys.exit(cli.main(sys.argv[1:]))
