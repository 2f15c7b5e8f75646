"""``python faulty_run.py EVENT:N [stopwise arguments...]``: the ``stopwise`` command with a
SIGKILL injected at the N-th occurrence (1-based) of an event, as a machine going down would:

* ``metrics`` — right after the N-th metrics record is written;
* ``checkpoint`` — in the middle of the N-th checkpoint write (temp file written, not renamed);
* ``record`` — in the middle of writing the N-th job record;
* ``report`` — in the middle of writing the report (after the table, before results.json).

``none:0`` runs the command untouched. The production code has no test hooks: this wrapper
patches the writers before calling the CLI.
"""

import os
import signal
import sys

from stopwise import checkpoints, training
from stopwise.cli import main

event, count = sys.argv[1].split(":")
count = int(count)
seen = 0


def tick(name: str) -> None:
    global seen
    if name == event:
        seen += 1
        if seen == count:
            os.kill(os.getpid(), signal.SIGKILL)


write_metrics = training.MetricsLog.write


def metrics(self, record):
    write_metrics(self, record)
    tick("metrics")


training.MetricsLog.write = metrics

replace = checkpoints._atomic_replace


def atomic(path, write):
    def torn(f):
        write(f)
        f.flush()
        if path.suffix == ".pt":
            tick("checkpoint")
        elif path.parent.name == "jobs":
            tick("record")
        elif path.name == "results.json":
            tick("report")

    replace(path, torn)


checkpoints._atomic_replace = atomic

if __name__ == "__main__":
    sys.exit(main(sys.argv[2:]))
