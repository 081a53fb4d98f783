"""The agent's own priority during a dump: its thread, the threads it starts and the dump tool end
at the job's niceness (real threads and children, read back from /proc), and a paced stream."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from agent import process
from agent.process import Command, own_priority


def niceness_of(task: int) -> int:
    return int(Path(f"/proc/{task}/stat").read_text().rsplit(")", 1)[1].split()[16])


def in_a_thread(work):  # type: ignore[no-untyped-def]
    """Run `work` in a fresh thread (the test runner's own thread keeps its priority)."""
    found: dict[str, object] = {}

    def target() -> None:
        try:
            found["value"] = work()
        except BaseException as error:  # handed back to the test
            found["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in found:
        raise found["error"]  # type: ignore[misc]
    return found["value"]


def test_the_thread_its_new_threads_and_the_tool_run_at_the_job_nice() -> None:
    def work() -> dict[str, int]:
        me = threading.get_native_id()
        seen: dict[str, int] = {"before": niceness_of(me)}
        with own_priority(10):
            seen["inside"] = niceness_of(me)
            inner: dict[str, int] = {}
            worker = threading.Thread(target=lambda: inner.update(nice=niceness_of(threading.get_native_id())))
            worker.start()
            worker.join()
            seen["new thread"] = inner["nice"]
            child = process.start(Command(("cat", "/proc/self/stat"), nice=10, ionice="none"))
            assert child.popen.stdout is not None
            stat = child.popen.stdout.read().decode()
            child.wait()
            seen["tool"] = int(stat.rsplit(")", 1)[1].split()[16])  # 10, not 10 + 10
        seen["after"] = niceness_of(me)
        return seen

    seen = in_a_thread(work)
    assert seen["before"] == 0
    assert seen["inside"] == 10 and seen["new thread"] == 10 and seen["tool"] == 10
    if os.geteuid() == 0:  # only a privileged process may take a nice back
        assert seen["after"] == 0
    assert niceness_of(threading.get_native_id()) == 0  # the caller's other threads never changed


def test_it_never_raises_a_priority() -> None:
    def work() -> int:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, 15)
        with own_priority(10):
            return niceness_of(me)

    assert in_a_thread(work) == 15


class _Saturated:
    """Pressure files that always say the machine is fully contended."""

    def sample(self) -> float:
        return 1.0


def test_a_paced_stream_pauses_under_pressure_and_still_reads_everything() -> None:
    import time

    from agent.pressure import Pacer, PacingSettings

    pacer = Pacer(_Saturated(), PacingSettings(interval=0.01, step=0.25, max_share=0.5))  # type: ignore[arg-type]
    child = process.start(Command(("head", "-c", str(64 << 20), "/dev/zero")))
    received = 0

    def consume(data: bytes) -> None:
        nonlocal received
        received += len(data)
        time.sleep(0.002)  # a chunk's compression

    started = time.monotonic()
    process.stream_stdout(child, consume, process.StreamLimits(pacer=pacer), "head")
    wall = time.monotonic() - started
    assert received == 64 << 20
    assert pacer.share == 0.5
    assert 0.2 * wall < pacer.paused_seconds <= 0.5 * wall + 0.05
