"""Child process of the S3 race test: one host's writer, or a host compacting the store.

    python tests/s3_race_worker.py writer URL RUN WORKER ROUNDS SAVES KEEP GO_FILE
    python tests/s3_race_worker.py compact URL RUN GO_FILE STOP_FILE

Both print ``READY`` once the store is open and start when ``GO_FILE`` exists, so every
child races from the same moment. A writer takes the writer token ``ROUNDS`` times
(``TOKEN t``) and after each tries ``SAVES`` saves with it at timestamps of its own
(``seq * 10 + WORKER``), printing ``ACK ts t`` when one returned and ``STALE t`` when
the token was taken by another writer meanwhile (then it takes a new one); it prunes
the run to its ``KEEP`` newest savepoints after every second save. The compacting child
runs ``compact`` until ``STOP_FILE`` exists and prints ``COMPACTED n``.
"""

from __future__ import annotations

import os
import sys
import time

import statestore
from statestore.errors import StaleWriterError
from statestore.testing.worker import payload


def _wait(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.005)


def writer(url: str, run: str, go: str, plan: tuple[int, int, int, int]) -> None:
    worker, rounds, saves, keep = plan
    with statestore.open_storage(url) as storage:
        storage.init_storage(run)
        print("READY", flush=True)
        _wait(go)
        seq = 0
        for _ in range(rounds):
            token = storage.acquire_writer(run)
            print(f"TOKEN {token}", flush=True)
            for attempt in range(saves):
                seq += 1
                timestamp = seq * 10 + worker
                try:
                    storage.save_savepoint(run, timestamp, payload(timestamp), writer_token=token)
                except StaleWriterError:
                    print(f"STALE {token}", flush=True)
                    break
                print(f"ACK {timestamp} {token}", flush=True)
                if attempt % 2:
                    storage.delete_old_savepoints(run, keep)


def compactor(url: str, run: str, go: str, stop: str) -> None:
    with statestore.open_storage(url) as storage:
        storage.init_storage(run)
        print("READY", flush=True)
        _wait(go)
        count = 0
        while not os.path.exists(stop):
            storage.compact()
            count += 1
        print(f"COMPACTED {count}", flush=True)


if __name__ == "__main__":
    mode, url, run, *rest = sys.argv[1:]
    if mode == "writer":
        worker, rounds, saves, keep = (int(value) for value in rest[:4])
        writer(url, run, rest[4], (worker, rounds, saves, keep))
    else:
        compactor(url, run, rest[0], rest[1])
