"""cnd-fab worker: searches nonce ranges for golden nonces and reports over stdin/stdout.

This one file is everything that runs on a host. It is stdlib-only and must run on
Python 3.8+, because it is pushed as-is to machines we know nothing about. The controller
imports this same file for its protocol constants, so the two sides cannot drift apart.

Protocol: one JSON object per line, each with a "type" field.

    worker -> controller   HELLO     first line: version, cores, kernel, prefetch, pid
                           PROGRESS  heartbeat, at least once a second: cumulative hashes;
                                     the answer to STOP is a last one marked "final"
                           FOUND     a golden nonce, as soon as any core sees one
                           DONE      a unit is settled: its hashes, seconds and lowest golden
                           ERROR     a failure, with the traceback text; the worker then exits
    controller -> worker   WORK      one unit: index, [start, end), block, nonce width, D
                           CANCEL    forget every unit above "above"
                           STOP      exit now

stdout carries only the protocol; diagnostics go to stderr.
"""

import argparse
import hashlib
import heapq
import json
import os
import platform
import queue
import signal
import struct
import sys
import threading
import time
import traceback

PROTOCOL_VERSION = 1

HELLO = "HELLO"
WORK = "WORK"
CANCEL = "CANCEL"
PROGRESS = "PROGRESS"
FOUND = "FOUND"
DONE = "DONE"
ERROR = "ERROR"
STOP = "STOP"

KERNEL_NAME = "python-hashlib"
HEARTBEAT_SECONDS = 0.5
# Chunks are the pieces a unit is cut into for the cores. About a quarter of a second of
# work each at pure-Python speed keeps cancellation and progress prompt while the
# per-chunk queue overhead stays far below 1%.
DEFAULT_CHUNK_NONCES = 1 << 18
# How often a core publishes its hash count and looks for a cancel.
COUNT_STRIDE = 1 << 14
NO_CANCEL = (1 << 64) - 1

SPLIT = "split"
WHOLE = "whole"


def golden_target(difficulty):
    """A hash is golden when, read as a 256-bit big-endian number, it is below this."""
    return (1 << (256 - difficulty)).to_bytes(32, "big")


def leading_zero_bits(digest):
    value = int.from_bytes(digest, "big")
    return 256 - value.bit_length()


def double_sha256(message):
    return hashlib.sha256(hashlib.sha256(message).digest()).digest()


def scan_range(block, nonce_bytes, difficulty, start, end, on_stride=None):
    """Return (nonce, hash, checked) for the lowest golden nonce in [start, end).

    nonce and hash are None when the range holds none. on_stride(checked_so_far) is
    called every COUNT_STRIDE nonces; when it returns True the scan stops early.
    """
    prefix = hashlib.sha256(block)
    copy_prefix = prefix.copy
    sha256 = hashlib.sha256
    pack = struct.Struct(">I" if nonce_bytes == 4 else ">Q").pack
    target = golden_target(difficulty)
    position = start
    while position < end:
        stride_end = min(end, position + COUNT_STRIDE)
        for nonce in range(position, stride_end):
            inner = copy_prefix()
            inner.update(pack(nonce))
            digest = sha256(inner.digest()).digest()
            if digest < target:
                return nonce, digest, nonce - start + 1
        position = stride_end
        if on_stride is not None and on_stride(position - start):
            return None, None, position - start
    return None, None, end - start


def _cgroup_cpu_limit():
    """The CPU quota of this process's cgroup in cores (v2, then v1), or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota, period = handle.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
        try:
            with open(folder + "/cpu.cfs_quota_us") as handle:
                quota = int(handle.read())
            with open(folder + "/cpu.cfs_period_us") as handle:
                period = int(handle.read())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def effective_cores():
    """Cores this process may really use: affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, int(-(-limit // 1)))
    return max(1, cores)


def _die_with_parent():
    """Ask Linux to SIGKILL this process when its parent dies, so no core outlives the worker."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _core_main(slot, tasks, results, counters, cancel_above, parent_pid):
    """One core: take chunks off the task queue until told to quit or orphaned."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    base = 0
    while True:
        task = tasks.get()
        if task is None:
            return
        unit, start, end, block, nonce_bytes, difficulty = task
        began = time.monotonic()

        def on_stride(checked, unit=unit):
            counters[slot] = base + checked
            if os.getppid() != parent_pid:
                os._exit(1)
            return unit > cancel_above.value

        if unit > cancel_above.value:
            results.put(("chunk", unit, start, end, None, None, 0, 0.0, True))
            continue
        try:
            nonce, digest, checked = scan_range(block, nonce_bytes, difficulty, start, end, on_stride)
        except Exception:  # reported, not raised: the main process turns it into ERROR
            results.put(("error", traceback.format_exc()))
            return
        base += checked
        counters[slot] = base
        cancelled = nonce is None and checked < end - start
        results.put(("chunk", unit, start, end, nonce, digest, checked, time.monotonic() - began, cancelled))


class UnitState(object):
    """What the main process knows of one unit while its chunks are out."""

    def __init__(self, index, start, end, chunks):
        self.index = index
        self.start = start
        self.end = end
        self.began = time.monotonic()
        self.chunks_left = set(chunks)
        self.best_nonce = None
        self.best_hash = None
        self.hashes = 0

    def settled(self):
        """True when every chunk that could hold a lower golden nonce has reported."""
        if self.best_nonce is None:
            return not self.chunks_left
        return all(start > self.best_nonce for start in self.chunks_left)


class Worker(object):
    """The main process: reads the protocol, feeds the cores, writes results."""

    def __init__(self, processes, mode, chunk_nonces, out=None):
        import multiprocessing

        self.out = out or sys.stdout
        self.out_lock = threading.Lock()
        self.processes = processes
        self.mode = mode
        self.chunk_nonces = chunk_nonces
        self.inbox = queue.Queue()
        self.units = {}
        self.pending = []  # heap of (unit, start, end, block, nonce_bytes, difficulty)
        self.outstanding = 0
        self.cancel_floor = NO_CANCEL
        context = multiprocessing.get_context("fork")
        self.tasks = context.SimpleQueue()
        self.results = context.SimpleQueue()
        self.counters = context.Array("Q", processes, lock=False)
        self.cancel_above = context.Value("Q", NO_CANCEL, lock=False)
        # The cores are forked before any thread starts, so no lock is copied held.
        self.cores = [
            context.Process(
                target=_core_main,
                args=(slot, self.tasks, self.results, self.counters, self.cancel_above, os.getpid()),
                daemon=True,
            )
            for slot in range(processes)
        ]
        for core in self.cores:
            core.start()

    def send(self, message_type, **fields):
        fields["type"] = message_type
        line = json.dumps(fields, separators=(",", ":"))
        with self.out_lock:
            self.out.write(line + "\n")
            self.out.flush()

    def prefetch(self):
        """Units the controller should keep queued here so no core waits between units."""
        if self.mode == WHOLE:
            return self.processes + 1
        return 2 + self.processes // 8

    def run(self):
        self.send(
            HELLO,
            version=PROTOCOL_VERSION,
            cores=self.processes,
            kernel=KERNEL_NAME,
            mode=self.mode,
            prefetch=self.prefetch(),
            pid=os.getpid(),
            pgid=os.getpgid(0),
            python=platform.python_version(),
            host=platform.node(),
        )
        threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
        threading.Thread(target=self._read_results, name="results", daemon=True).start()
        parent = os.getppid()
        next_beat = 0.0
        try:
            while True:
                timeout = max(0.0, next_beat - time.monotonic())
                try:
                    kind, payload = self.inbox.get(timeout=timeout)
                except queue.Empty:
                    kind, payload = None, None
                if kind == "stdin":
                    if payload is None:
                        return 0
                    if payload.get("type") == STOP:
                        # The exact count, so a stopped run reports what was really checked.
                        self.send(PROGRESS, hashes=sum(self.counters), units=sorted(self.units), final=True)
                        return 0
                    self._handle_command(payload)
                elif kind == "result":
                    self._handle_result(payload)
                if time.monotonic() >= next_beat:
                    if os.getppid() != parent:
                        return 1
                    self.send(PROGRESS, hashes=sum(self.counters), units=sorted(self.units))
                    next_beat = time.monotonic() + HEARTBEAT_SECONDS
        finally:
            self.shutdown()

    def _read_stdin(self):
        for raw in sys.stdin:
            raw = raw.strip()
            if not raw:
                continue
            try:
                message = json.loads(raw)
            except ValueError:
                sys.stderr.write("cnd-fab worker: ignoring a line that is not JSON: %r\n" % raw[:200])
                continue
            self.inbox.put(("stdin", message))
        self.inbox.put(("stdin", None))

    def _read_results(self):
        while True:
            try:
                result = self.results.get()
            except (EOFError, OSError):
                return
            self.inbox.put(("result", result))

    def _handle_command(self, message):
        kind = message.get("type")
        if kind == WORK:
            self._accept_unit(message)
        elif kind == CANCEL:
            self._cancel_above(int(message["above"]))
        else:
            raise ValueError("unknown message type %r" % (kind,))
        self._feed_cores()

    def _accept_unit(self, message):
        index = int(message["unit"])
        start, end = int(message["start"]), int(message["end"])
        block = bytes.fromhex(message["block"])
        nonce_bytes = int(message["nonce_bytes"])
        difficulty = int(message["difficulty"])
        if nonce_bytes not in (4, 8) or not 1 <= difficulty <= 256 or not 0 <= start < end:
            raise ValueError("malformed WORK %r" % (message,))
        if index > self.cancel_floor:
            return
        step = end - start if self.mode == WHOLE else self.chunk_nonces
        starts = list(range(start, end, step))
        self.units[index] = UnitState(index, start, end, starts)
        for chunk_start in starts:
            heapq.heappush(
                self.pending,
                (index, chunk_start, min(end, chunk_start + step), block, nonce_bytes, difficulty),
            )
        if len(self.units) == 1:
            # Tell the controller at once that this host went from idle to working.
            self.send(PROGRESS, hashes=sum(self.counters), units=sorted(self.units))

    def _cancel_above(self, above):
        self.cancel_floor = min(self.cancel_floor, above)
        self.cancel_above.value = self.cancel_floor
        self.pending = [task for task in self.pending if task[0] <= above]
        heapq.heapify(self.pending)
        for index in [index for index in self.units if index > above]:
            del self.units[index]

    def _feed_cores(self):
        # Only a couple of chunks per core sit in the shared queue; the rest wait in our
        # heap, where a reissued lower unit can still jump ahead of them.
        while self.pending and self.outstanding < 2 * self.processes:
            self.tasks.put(heapq.heappop(self.pending))
            self.outstanding += 1

    def _handle_result(self, result):
        if result[0] == "error":
            raise RuntimeError("a core failed:\n" + result[1])
        _, index, start, end, nonce, digest, checked, seconds, cancelled = result
        self.outstanding -= 1
        state = self.units.get(index)
        if state is not None:
            state.hashes += checked
            state.chunks_left.discard(start)
            if nonce is not None and (state.best_nonce is None or nonce < state.best_nonce):
                state.best_nonce, state.best_hash = nonce, digest
                self.send(FOUND, unit=index, nonce=nonce, hash=digest.hex())
                # Chunks above a golden nonce cannot change this unit's answer.
                self.pending = [t for t in self.pending if not (t[0] == index and t[1] > nonce)]
                heapq.heapify(self.pending)
                state.chunks_left = set(s for s in state.chunks_left if s <= nonce)
            if state.settled():
                del self.units[index]
                self.send(
                    DONE,
                    unit=index,
                    hashes=state.hashes,
                    seconds=round(time.monotonic() - state.began, 6),
                    nonce=state.best_nonce,
                    hash=None if state.best_hash is None else state.best_hash.hex(),
                )
        self._feed_cores()

    def shutdown(self):
        for core in self.cores:
            if core.is_alive():
                core.terminate()
        deadline = time.monotonic() + 2.0
        for core in self.cores:
            core.join(max(0.0, deadline - time.monotonic()))
            if core.is_alive():
                core.kill()
                core.join()


RUN_DIR_PREFIX = "cnd-fab-"
PIDFILE_NAME = "worker.pid"


def parse_args(argv):
    parser = argparse.ArgumentParser(description="cnd-fab worker (speaks JSON lines on stdin/stdout)")
    parser.add_argument("--processes", type=int, default=0, help="cores to use (0: all this host may use)")
    parser.add_argument("--mode", choices=(SPLIT, WHOLE), default=SPLIT)
    parser.add_argument("--chunk-nonces", type=int, default=DEFAULT_CHUNK_NONCES)
    parser.add_argument("--run-id", default="", help="only to label the process for teardown")
    parser.add_argument("--own-session", action="store_true", help="lead a new session, so one kill ends every core")
    parser.add_argument("--pidfile", default="", help="write the session's process group id here")
    parser.add_argument("--cleanup", default="", metavar="RUN_DIR", help="kill the worker of RUN_DIR, then remove it")
    return parser.parse_args(argv)


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cleanup(run_dir, grace=1.0):
    """Kill the process group named in RUN_DIR's pidfile (TERM, then KILL), remove RUN_DIR.

    Runs on the host, started by the controller over SSH, so killing needs no shell and no
    procps. Only directories named like ours are removed.
    """
    import shutil

    run_dir = os.path.abspath(run_dir)
    if not os.path.basename(run_dir).startswith(RUN_DIR_PREFIX):
        sys.stderr.write("refusing to clean %r: not a cnd-fab run directory\n" % run_dir)
        return 2
    killed = None
    try:
        with open(os.path.join(run_dir, PIDFILE_NAME)) as handle:
            pgid = int(handle.read().strip())
    except (OSError, ValueError):
        pgid = None
    if pgid is not None and pgid > 1 and pgid != os.getpgid(0):
        killed = False
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
            killed = True
    shutil.rmtree(run_dir, ignore_errors=True)
    sys.stdout.write(json.dumps({"cleaned": run_dir, "pgid": pgid, "killed": killed}) + "\n")
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.cleanup:
        return cleanup(args.cleanup)
    if args.own_session:
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader, as under sshd: the group is ours either way
    if args.pidfile:
        with open(args.pidfile, "w") as handle:
            handle.write("%d\n" % os.getpgid(0))
    processes = args.processes if args.processes > 0 else effective_cores()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    worker = None
    try:
        worker = Worker(processes, args.mode, max(1, args.chunk_nonces))
        return worker.run()
    except SystemExit:
        raise
    except BaseException as error:
        text = traceback.format_exc()
        line = json.dumps({"type": ERROR, "message": "%s: %s" % (type(error).__name__, error), "traceback": text})
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
