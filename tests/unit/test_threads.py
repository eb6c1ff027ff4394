"""OS threads under gevent: two OsThreads sharing a lock that gevent has patched, in a child process."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from scripts.launcher import PROJECT_ROOT
from service import threads
from service.threads import SHORTER_SLICES, run_process, shorter_interpreter_slices

# Each OsThread takes and releases an RLock made after patching, as a batcher thread does with the
# lock of the `tf.function` it calls, while the main thread's hub runs. Before OsThread kept its
# threads hubless, one of them soon waited for ever on the free lock, in a hub gevent had created.
CONTENDED_LOCK_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import os, threading, time
    import gevent
    from gevent._hub_local import get_hub_if_exists
    from service.threads import OsThread

    ROUNDS = 20000
    lock = threading.RLock()
    rounds_done = [0, 0]
    got_a_hub = []

    def take_and_release(index):
        for _ in range(ROUNDS):
            with lock:
                sum(range(50))
            rounds_done[index] += 1
        if get_hub_if_exists() is not None:
            got_a_hub.append(index)

    gevent.get_hub()  # the worker's hub exists before its batcher threads start
    threads = [OsThread(lambda index=index: take_and_release(index), f"contender-{index}") for index in range(2)]
    deadline = time.monotonic() + 10  # the rounds take under a second
    while min(rounds_done) < ROUNDS and time.monotonic() < deadline:
        gevent.sleep(0.05)
    print("rounds done", rounds_done, "finished threads with a hub", got_a_hub, flush=True)
    os._exit(0 if min(rounds_done) == ROUNDS and not got_a_hub else 1)  # a stuck thread would hold up exit()
    """
)


def test_two_os_threads_contending_for_a_patched_lock_both_finish_without_a_hub():
    done = subprocess.run(
        [sys.executable, "-c", CONTENDED_LOCK_SCRIPT], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=40
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_the_compute_threads_are_lowered_below_the_thread_that_serves_requests():
    # In a child process: lowering priority cannot be undone without privilege.
    script = textwrap.dedent(
        """
        import os, threading
        from service.threads import yield_cores_to_this_thread
        started, done = threading.Event(), threading.Event()
        ids = []
        def compute():
            ids.append(threading.get_native_id())
            started.set()
            done.wait()
        thread = threading.Thread(target=compute)
        thread.start()
        started.wait()
        lowered = yield_cores_to_this_thread(10)
        later = threading.Thread(target=lambda: ids.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        later.start(); later.join()
        print(lowered, os.getpriority(os.PRIO_PROCESS, ids[0]), os.getpriority(os.PRIO_PROCESS, 0), ids[1],
              yield_cores_to_this_thread(0))
        done.set()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    lowered, compute, serving, started_later, disabled = map(int, result.stdout.split())
    assert lowered == 1 and compute == 10, "the thread that existed is lowered"
    assert serving == 0 and started_later == 0, "the serving thread and the threads it starts later keep their priority"
    assert disabled == 0, "COMPUTE_NICENESS=0 changes nothing"


def test_a_lowered_thread_starts_its_threads_and_processes_lowered_too():
    script = textwrap.dedent(
        """
        import os, subprocess, sys, threading
        from service.threads import lower_this_thread
        seen = []
        def niceness():
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        def loader():
            lower_this_thread(19)
            child = threading.Thread(target=niceness)
            child.start(); child.join()
            probe = "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"
            seen.append(int(subprocess.check_output([sys.executable, "-c", probe])))
        thread = threading.Thread(target=loader)
        thread.start(); thread.join()
        print(*seen, os.getpriority(os.PRIO_PROCESS, 0))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert list(map(int, result.stdout.split())) == [19, 19, 0]  # the caller's thread, its thread and child; not main


def test_a_child_process_runs_from_an_os_thread_of_a_gevent_process_and_is_killed_past_its_time():
    """What the version poller does before a swap: measure the new version in a child process (gevent's
    own `subprocess` fails there: "child watchers are only available on the default loop")."""
    script = textwrap.dedent(
        """
        from gevent import monkey; monkey.patch_all()
        import os, sys, time
        from service.threads import OsThread, run_process

        outcomes = []

        def run():
            echo = "import sys; print('out'); sys.stderr.write('err'); sys.exit(3)"
            outcomes.append(run_process([sys.executable, "-c", echo], os.environ, timeout_s=30))
            started = time.monotonic()
            try:
                run_process([sys.executable, "-c", "import time; time.sleep(30)"], os.environ, timeout_s=0.5)
            except TimeoutError as error:
                outcomes.append((type(error).__name__, time.monotonic() - started < 10))

        print(OsThread(run, "poller").join(60), outcomes, flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    expected = "True [ProcessResult(returncode=3, stdout='out\\n', stderr='err'), ('TimeoutError', True)]"
    assert done.stdout.strip() == expected, done.stdout + done.stderr[-2000:]


def test_a_child_reaped_by_another_waiter_ends_the_wait_without_its_exit_status(monkeypatch):
    """In a gevent worker, libev's SIGCHLD watcher reaps every child: waitpid then finds none."""
    real = threads._original

    def original(module: str, name: str):
        if name != "waitpid":
            return real(module, name)

        def reaped_by_another(pid: int, options: int):
            os.waitpid(pid, 0)  # the other reaper takes the status
            raise ChildProcessError(errno.ECHILD, "No child processes")

        return reaped_by_another

    monkeypatch.setattr(threads, "_original", original)
    done = run_process([sys.executable, "-c", "print('all done')"], os.environ, timeout_s=30)
    assert (done.returncode, done.stdout) == (None, "all done\n")


def test_the_interpreters_slices_are_shorter_while_any_load_runs_and_as_before_after():
    before = sys.getswitchinterval()
    with shorter_interpreter_slices():
        assert sys.getswitchinterval() == pytest.approx(before / SHORTER_SLICES)
        with shorter_interpreter_slices():  # a second load at once
            assert sys.getswitchinterval() == pytest.approx(before / SHORTER_SLICES)
        assert sys.getswitchinterval() == pytest.approx(before / SHORTER_SLICES), "the first load still runs"
    assert sys.getswitchinterval() == before
