"""What the repository APIs changed, shared by the workers of one server through a small file.

A call to `.../load`, `.../unload` or TF Serving's HandleReloadConfigRequest reaches one worker;
that worker applies it at once and writes it here, and the others apply it at their next look
(`CatalogWatcher`). The record belongs to the master that forked the worker: a record left by
an earlier server on the same port is not read, so a restart serves what the files say.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ControlRecord:
    """The changes the APIs made: models unloaded on request, and a model config given over gRPC (its text)."""

    unloaded: frozenset[str] = frozenset()
    config_text: str | None = None
    config_file_stamp: tuple = ()  # MODEL_CONFIG_FILE as it was then: once it changes, the file is read again
    changes: int = 0  # how many changes so far: a worker applies the record when this moves
    server: int = field(default=0, compare=False)


class ControlFile:
    """The record of one server (its port and what it serves from), read and written by each of its workers."""

    def __init__(self, port: int, source: str, server: int | None = None):
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]  # the config file's or repository's path
        self.path = os.path.join(tempfile.gettempdir(), f"tf-model-server-{port}-{digest}.models.json")
        self._server = server if server is not None else os.getppid()  # the master, under Gunicorn

    def read(self) -> ControlRecord:
        """This server's record; an empty one when there is none, it is an earlier server's or it is unreadable."""
        try:
            with open(self.path) as file:
                data = json.load(file)
        except (OSError, ValueError):
            return ControlRecord(server=self._server)
        if data.get("server") != self._server:
            return ControlRecord(server=self._server)
        return ControlRecord(
            unloaded=frozenset(data.get("unloaded", ())),
            config_text=data.get("config_text"),
            config_file_stamp=tuple(data.get("config_file_stamp", ())),
            changes=int(data.get("changes", 0)),
            server=self._server,
        )

    def change(self, unload: str | None = None, load: str | None = None, config: tuple[str, tuple] | None = None):
        """Record a model unloaded or loaded again, or a whole config with its file's stamp; the new record."""
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # read, change and write as one: two workers may take calls at once
            record = self.read()
            unloaded = set(record.unloaded) if config is None else set()  # a config given says all that serves
            if unload is not None:
                unloaded.add(unload)
            if load is not None:
                unloaded.discard(load)
            text, stamp = config if config is not None else (record.config_text, record.config_file_stamp)
            changed = ControlRecord(frozenset(unloaded), text, tuple(stamp), record.changes + 1, self._server)
            written = self.path + f".{os.getpid()}"
            with open(written, "w") as file:
                json.dump(
                    {
                        "server": self._server,
                        "unloaded": sorted(changed.unloaded),
                        "config_text": changed.config_text,
                        "config_file_stamp": list(changed.config_file_stamp),
                        "changes": changed.changes,
                    },
                    file,
                )
            os.replace(written, self.path)  # a reader sees the old record or the new one, never half
            return changed
