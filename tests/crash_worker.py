"""Workload for the crash-consistency test: random file operations until killed.

Usage: ``python crash_worker.py DATA_DIR ACK_LOG SEED``

On start it opens the file service, takes whatever the directory holds as its
model of the contents (the test has just checked it) and records that state
in the acknowledgement log as acknowledged.  Then, forever: a few random
operations (create, write at random offsets including overwrites and
extensions, delete, mkdir, rmdir; several writes in flight at once), then
the expected state (every file's SHA-256 and size, every directory) is
appended to the log as *pending* with fsync, ``flush()`` is called, and once
it has completed an *ack* line for that state is appended with fsync.  So
after a kill the durable state must be the last acknowledged one or, if the
kill hit between a flush's commit and its ack line, the pending one after it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import sys
from typing import Any

from dpdpu.storage import FileService

BS = 4096
MAX_FILES = 16
MAX_DIRS = 4
MAX_OFFSET = 256 << 10
MAX_WRITE = 96 << 10


def load_model(fs: FileService) -> tuple[dict[str, bytearray], set[str]]:
    files: dict[str, bytearray] = {}
    dirs: set[str] = set()
    for where, subdirs, names in fs.walk():
        for d in subdirs:
            dirs.add(f"{where}/{d}" if where else d)
        for n in names:
            path = f"{where}/{n}" if where else n
            files[path] = bytearray(fs.read(path, 0, fs.stat(path).size).result())
    return files, dirs


def state_of(files: dict[str, bytearray], dirs: set[str]) -> dict[str, Any]:
    return {
        "files": {p: [len(c), hashlib.sha256(c).hexdigest()] for p, c in sorted(files.items())},
        "dirs": sorted(dirs),
    }


def log(fd: int, entry: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(entry) + "\n").encode())
    os.fsync(fd)


def main() -> None:
    data_dir, ack_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    # Small checkpoints so that kills also land in the middle of them.  The
    # device is small, so freed blocks are soon reused, yet holds the largest
    # possible live data (MAX_FILES x (MAX_OFFSET + MAX_WRITE)) plus one
    # step's copies, so no write ever forces a commit of its own.
    fs = FileService(data_dir, capacity=12 << 20, checkpoint_bytes=16 << 10, device=None, workers=4)
    files, dirs = load_model(fs)
    ack = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    log(ack, {"kind": "base", "seed": seed, **state_of(files, dirs)})
    print("ready", flush=True)
    tag = f"{seed:x}"  # names stay unique across runs on the same directory
    serial = itertools.count()
    step = 0
    commits = fs.stats()["commits"]
    while True:
        step += 1
        writes = []
        for _ in range(rng.randint(1, 6)):
            choice = rng.random()
            if choice < 0.15 and len(files) < MAX_FILES:
                parent = rng.choice(["", *sorted(dirs)])
                name = f"f{tag}-{next(serial)}"
                path = f"{parent}/{name}" if parent else name
                if path not in files:
                    fs.create(path)
                    files[path] = bytearray()
            elif choice < 0.22 and files:
                path = rng.choice(sorted(files))
                if not any(w[0] == path for w in writes):
                    fs.delete(path)
                    del files[path]
            elif choice < 0.26 and len(dirs) < MAX_DIRS:
                path = f"d{tag}-{next(serial)}"
                fs.mkdir(path)
                dirs.add(path)
            elif choice < 0.28 and dirs:
                path = rng.choice(sorted(dirs))
                if not any(f.startswith(path + "/") for f in files):
                    fs.rmdir(path)
                    dirs.discard(path)
            elif files:
                path = rng.choice(sorted(files))
                if any(w[0] == path for w in writes):
                    # writes to one file in flight together may land in either order
                    for _, fut in writes:
                        fut.result()
                    writes.clear()
                content = files[path]
                inside = content and rng.random() < 0.5  # overwrite inside the file, or anywhere
                offset = rng.randrange(len(content)) if inside else rng.randrange(MAX_OFFSET)
                data = rng.randbytes(rng.randint(1, MAX_WRITE))
                end = offset + len(data)
                if end > len(content):
                    content.extend(bytes(end - len(content)))
                content[offset:end] = data
                writes.append((path, fs.write(path, offset, data)))
                if len(writes) >= 3:
                    for _, fut in writes:
                        fut.result()
                    writes.clear()
        for _, fut in writes:
            fut.result()
        log(ack, {"kind": "pending", "step": step, **state_of(files, dirs)})
        if fs.stats()["commits"] != commits:
            sys.exit("a commit happened outside flush(): the expected states no longer hold")
        fs.flush().result()
        log(ack, {"kind": "ack", "step": step})
        commits = fs.stats()["commits"]


if __name__ == "__main__":
    main()
