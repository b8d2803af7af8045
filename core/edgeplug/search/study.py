"""The study file: one JSON line per finished trial, appended under a lock as trials finish, so a killed
search loses nothing it finished and `--resume` skips it."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

from ..errors import OptionError
from ..report import finite_json


class Study:
    """`study.json` (the search's identity: model, data, budgets, space) and `trials.jsonl` (finished trials)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.header_path = folder / "study.json"
        self.trials_path = folder / "trials.jsonl"

    def open(self, identity: dict[str, Any], resume: bool) -> list[dict[str, Any]]:
        """Start a study (refusing to overwrite one unless resuming) or resume it; returns finished trials."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.header_path.exists():
            previous = json.loads(self.header_path.read_text())
            if not resume:
                raise OptionError(
                    f"{self.folder} already holds a search; pass --resume to continue it or choose another "
                    "--output-dir"
                )
            if previous.get("identity") != finite_json(json.loads(json.dumps(identity, default=str))):
                raise OptionError(
                    f"--resume: the search in {self.folder} was started with another model, data, budget or "
                    "space; start a new one in another --output-dir"
                )
            return self.finished()
        if resume:
            raise OptionError(f"--resume: {self.folder} holds no search to resume")
        tmp = self.header_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"identity": identity}, default=str, indent=2))
        tmp.replace(self.header_path)
        return []

    def finished(self) -> list[dict[str, Any]]:
        if not self.trials_path.exists():
            return []
        trials = []
        for line in self.trials_path.read_text().splitlines():
            try:
                trials.append(json.loads(line))
            except ValueError:  # a line cut by a kill: that trial runs again
                continue
        return trials

    def record(self, trial: dict[str, Any]) -> None:
        line = json.dumps(finite_json(json.loads(json.dumps(trial, default=str))), allow_nan=False) + "\n"
        with open(self.trials_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(line)
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
