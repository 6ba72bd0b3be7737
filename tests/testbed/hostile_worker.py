"""A worker that misbehaves in one chosen way, for the hostile-host tests.

It is self-contained (stdlib only), because the SSH row pushes it to a host in place of the
real worker: `hostile_source(mode)` gives its text with MODE set. Until it misbehaves it
speaks the protocol like the real worker: HELLO first, then PROGRESS heartbeats.
"""

import json
import os
import sys
import threading
import time

MODE = "honest-hello-then-idle"
PROTOCOL_VERSION = 1
ESCAPES = "[/oops][bold]\x1b]0;pwned\x07\x1b[2J\x1b[1;1Hgolden nonce 0 (fake)"


def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def hello(**changes):
    fields = dict(type="HELLO", version=PROTOCOL_VERSION, cores=1, kernel="python-hashlib", kernel_note=None,
                  mode="split", prefetch=2, pid=os.getpid(), pgid=os.getpgid(0), python="3", host="hostile")
    fields.update(changes)
    return json.dumps(fields)


def progress(hashes, units=()):
    return '{"type": "PROGRESS", "hashes": %s, "units": %s}' % (hashes, json.dumps(list(units)))


def heartbeat_for_ever(hashes="0"):
    """Heartbeats until the controller goes away (a write then fails)."""
    try:
        while True:
            say(progress(hashes))
            time.sleep(0.3)
    except OSError:
        os._exit(0)


def trickle_for_ever(units=()):
    """Heartbeats whose hash count grows by one each time: progress in name only."""
    try:
        for count in range(1, 10 ** 9):
            say(progress(str(count), units))
            time.sleep(0.3)
    except OSError:
        os._exit(0)


def first_work():
    """Read lines until the first WORK and return it."""
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("type") == "WORK":
            return message
    sys.exit(0)


def drain_stdin():
    """Read and ignore stdin; exit when it closes, as the real worker does."""
    def drain():
        for _ in sys.stdin:
            pass
        os._exit(0)

    threading.Thread(target=drain, daemon=True).start()


def as_the_real_worker_starts():
    """--own-session and --pidfile, as the real worker honours them, so its cleanup works."""
    if "--own-session" in sys.argv:
        try:
            os.setsid()
        except OSError:
            pass
    if "--pidfile" in sys.argv:
        with open(sys.argv[sys.argv.index("--pidfile") + 1], "w") as handle:
            handle.write("%d\n" % os.getpgid(0))


def main():
    as_the_real_worker_starts()
    if MODE == "hello-cores-infinity":
        say(hello().replace('"cores": 1', '"cores": Infinity'))
        heartbeat_for_ever()
    if MODE == "huge-line":
        say(hello())
        sys.stdout.write("x" * (8 << 20))
        sys.stdout.flush()
        heartbeat_for_ever()
    if MODE in ("never-reads", "huge-prefetch-no-work"):
        say(hello(prefetch=65536))
        if MODE == "huge-prefetch-no-work":
            drain_stdin()
            heartbeat_for_ever()
        trickle_for_ever()  # claims steady progress: only its unread input can give it away
    if MODE == "markup-and-escapes":
        say(hello(kernel=ESCAPES, kernel_note=ESCAPES))
        first_work()
        say(json.dumps({"type": "ERROR", "message": ESCAPES, "traceback": ESCAPES + "\n" + ESCAPES}))
        return
    say(hello())
    work = first_work()
    drain_stdin()
    unit, start = work["unit"], work["start"]
    if MODE == "progress-infinity":
        say(progress("Infinity", [unit]))
    elif MODE == "progress-lies":
        say(progress(str(10 ** 15), [unit]))
    elif MODE == "found-negative":
        say('{"type": "FOUND", "unit": %d, "nonce": -1, "hash": "%s"}' % (unit, "0" * 64))
    elif MODE == "found-outside-space":
        say('{"type": "FOUND", "unit": %d, "nonce": %d, "hash": "%s"}' % (unit, 1 << 40, "0" * 64))
    elif MODE == "found-outside-unit":
        say('{"type": "FOUND", "unit": %d, "nonce": %d, "hash": "%s"}' % (unit, start + (1 << 30), "0" * 64))
    elif MODE == "done-minus-infinity":
        say('{"type": "DONE", "unit": %d, "hashes": -Infinity, "seconds": 0.1, "nonce": null, "hash": null}' % unit)
    elif MODE == "done-too-many-hashes":
        say('{"type": "DONE", "unit": %d, "hashes": %d, "seconds": 0.1, "nonce": null, "hash": null}' % (unit, 1 << 40))
    elif MODE == "heartbeats-no-work":
        pass
    elif MODE in ("found-then-done-none", "flood-found"):
        found = first_golden(work)
        line = '{"type": "FOUND", "unit": %d, "nonce": %d, "hash": "%s"}' % (unit, found[0], found[1])
        if MODE == "flood-found":
            try:
                while True:
                    say(line)
            except OSError:
                os._exit(0)
        say(line)
        say('{"type": "DONE", "unit": %d, "hashes": 1, "seconds": 0.1, "nonce": null, "hash": null}' % unit)
    elif MODE == "second-hello":
        say(hello())
    elif MODE == "trickle":
        trickle_for_ever([unit])
    heartbeat_for_ever()


def first_golden(work):
    """The true lowest golden nonce of a WORK's range (the test's ranges hold one early)."""
    import hashlib

    block = bytes.fromhex(work["block"])
    for nonce in range(work["start"], work["end"]):
        digest = hashlib.sha256(hashlib.sha256(block + nonce.to_bytes(work["nonce_bytes"], "big")).digest()).digest()
        if int.from_bytes(digest, "big") >> (256 - work["difficulty"]) == 0:
            return nonce, digest.hex()
    raise SystemExit("no golden nonce in the range")


if __name__ == "__main__":
    main()
