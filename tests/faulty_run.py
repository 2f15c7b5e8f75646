"""``python faulty_run.py EVENT:N [stopwise arguments...]``: the ``stopwise`` command with a fault
injected at the N-th occurrence (1-based) of an event:

* ``metrics``    SIGKILL right after the N-th metrics record is written;
* ``torn``       write half of the N-th metrics record, then SIGKILL (a torn last line);
* ``checkpoint`` SIGKILL in the middle of the N-th checkpoint write (temp file written, not renamed);
* ``record``     SIGKILL in the middle of writing the N-th job record;
* ``report``     SIGKILL in the middle of writing results.json (table and figures written);
* ``sigterm`` / ``sigint``  the process sends itself that signal after the N-th metrics record;
* ``enospc``     the N-th checkpoint write fails with "No space left on device".

``none:0`` runs the command untouched. The production code has no test hooks: this wrapper
patches the writers before calling the CLI. (Worker processes are not patched.)
"""

import errno
import json
import os
import signal
import sys

from stopwise import checkpoints, training
from stopwise.cli import main

event, count = sys.argv[1].split(":")
count = int(count)
seen = 0


def due(name: str) -> bool:
    global seen
    if name != event:
        return False
    seen += 1
    return seen == count


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


write_metrics = training.MetricsLog.write


def metrics(self, record):
    if event == "torn" and due("torn"):
        with self.path.open("a") as f:
            f.write(json.dumps(record)[:20])
        kill()
    write_metrics(self, record)
    if due("metrics"):
        kill()
    if event in ("sigterm", "sigint") and due(event):
        os.kill(os.getpid(), signal.SIGTERM if event == "sigterm" else signal.SIGINT)


training.MetricsLog.write = metrics

replace = checkpoints._atomic_replace


def atomic(path, write):
    def torn(f):
        if path.suffix == ".pt" and due("enospc"):
            raise OSError(errno.ENOSPC, "No space left on device")
        write(f)
        f.flush()
        if path.suffix == ".pt" and due("checkpoint"):
            kill()
        elif path.parent.name == "jobs" and due("record"):
            kill()
        elif path.name == "results.json" and due("report"):
            kill()

    replace(path, torn)


checkpoints._atomic_replace = atomic

if __name__ == "__main__":
    sys.exit(main(sys.argv[2:]))
