"""Child process of the crash test: saves and prunes savepoints until it is killed.

    python tests/crash_writer.py URL RUN_ID SEED KEEP_N

Resumes the run from its latest savepoint, takes the writer token, then loops: save
the next savepoint (now and then the same timestamp again, as a retried save does),
print ``ACK <ts>`` once the save returned, prune to the ``KEEP_N`` newest. Every state
names its savepoint (:func:`statestore.testing._worker.payload`), so the parent can
tell a whole savepoint from a mix of two.
"""

from __future__ import annotations

import random
import sys

from statestore import NoSavepointError, open_storage
from statestore.testing._worker import payload


def main(url: str, run_id: str, seed: int, keep_n: int) -> None:
    rng = random.Random(seed)
    with open_storage(url) as storage:
        print("READY", flush=True)
        storage.init_storage(run_id)
        token = storage.acquire_writer(run_id)
        try:
            timestamp = storage.get_latest_savepoint_timestamp(run_id)
        except NoSavepointError:
            timestamp = 0
        while True:
            if rng.random() >= 0.1:  # otherwise save the same timestamp again
                timestamp += rng.randint(1, 60_000)
            storage.save_savepoint(run_id, timestamp, payload(timestamp), writer_token=token)
            print(f"ACK {timestamp}", flush=True)
            storage.delete_old_savepoints(run_id, keep_n)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
