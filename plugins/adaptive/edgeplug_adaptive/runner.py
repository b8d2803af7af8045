"""Running a cascade artifact: every file checked against the manifest before any session exists, then
per batch the gate splits the inputs between the models and the answers are put back in input order."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from edgeplug.plugin_api import Artifact, EdgeplugError, ModelError, session

from .manifest import Manifest, check_bytes, read_plain, sha256


class CascadeRunner:
    """A callable `inputs -> outputs` for a cascade artifact. The outputs are the models' outputs, each
    input answered by the model the gate picked, plus `route_output` (int64 [N]): the index, in the
    manifest's order (smallest first), of the model that answered each input."""

    def __init__(self, artifact: Artifact, threads: int = 1) -> None:
        self.path = Path(artifact.main)
        self.folder = self.path.parent
        data = read_plain(self.folder, self.path.name)
        _check_recorded(artifact, self.path.name, data)
        self.manifest = Manifest.parse(data, str(self.path))
        for name, expected in self.manifest.files.items():
            check_bytes(read_plain(self.folder, name), expected, self.folder / name, "cascade file")
        blobs = []
        for entry in self.manifest.models:
            blob = read_plain(self.folder, entry.file)
            check_bytes(blob, entry.sha256, self.folder / entry.file, "cascade model")
            _check_recorded(artifact, entry.file, blob)
            blobs.append(blob)
        # only now, every byte checked: sessions made from exactly the bytes hashed
        self.sessions = [session(blob, max(int(threads), 1)) for blob in blobs]
        self.names = [[o.name for o in s.get_outputs()] for s in self.sessions]
        self.one_at_a_time = [
            all(len(i.shape) and i.shape[0] == 1 for i in s.get_inputs()) for s in self.sessions
        ]
        self.gate = self.manifest.gate

    @property
    def route_output(self) -> str:
        return self.manifest.route_output

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.asarray(v) for k, v in inputs.items()}
        count = len(next(iter(feed.values()))) if feed else 0
        if count == 0:  # nothing to split: the first model answers the empty batch
            return {**self._run(0, feed), self.route_output: np.zeros(0, dtype=np.int64)}
        answered = np.full(count, -1, dtype=np.int64)
        pending = np.arange(count)
        results: dict[str, np.ndarray] = {}
        last = len(self.sessions) - 1
        for stage in range(len(self.sessions)):
            if not len(pending):
                break
            part = {k: v[pending] for k, v in feed.items()}
            if stage < last and self.gate.before_model:  # decided on the input: only kept inputs run
                scores = self.gate.score(part, None, self.folder)
                keep = ~self.gate.escalates(scores, self.manifest.thresholds[stage])
                if keep.any():
                    outputs = self._run(stage, {k: v[keep] for k, v in part.items()})
                    self._place(results, outputs, pending[keep], count)
            else:
                outputs = self._run(stage, part)
                if stage < last:
                    scores = self.gate.score(part, outputs, self.folder)
                    keep = ~self.gate.escalates(scores, self.manifest.thresholds[stage])
                else:
                    keep = np.ones(len(pending), dtype=bool)
                self._place(results, {k: v[keep] for k, v in outputs.items()}, pending[keep], count)
            answered[pending[keep]] = stage
            pending = pending[~keep]
        results[self.route_output] = answered
        return results

    def _run(self, stage: int, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess, names = self.sessions[stage], self.names[stage]
        count = len(next(iter(feed.values())))
        try:
            if self.one_at_a_time[stage] and count > 1:
                parts = [sess.run(names, {k: v[i : i + 1] for k, v in feed.items()}) for i in range(count)]
                values = [np.concatenate([p[j] for p in parts]) for j in range(len(names))]
            else:
                values = sess.run(names, dict(feed))
        except Exception as exc:
            model = self.manifest.models[stage].file
            raise EdgeplugError(
                f"onnxruntime failed to run cascade model {model}: {str(exc).strip().splitlines()[0]}"
            ) from None
        return dict(zip(names, values))

    def _place(
        self,
        results: dict[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        where: np.ndarray,
        count: int,
    ) -> None:
        """Put each output's rows at the batch positions `where` of the cascade's outputs."""
        for name, value in outputs.items():
            value = np.asarray(value)
            if name not in results:
                results[name] = np.zeros((count, *value.shape[1:]), dtype=value.dtype)
            target = results[name]
            if target.shape[1:] != value.shape[1:]:
                raise EdgeplugError(
                    f"cascade models answer output {name!r} with shapes {list(target.shape[1:])} and "
                    f"{list(value.shape[1:])} past the batch axis; they cannot be put in one batch"
                )
            target[where] = value


def _check_recorded(artifact: Artifact, name: str, data: bytes) -> None:
    """Where the Artifact itself carries a sha256 for this file (by name or path), it must match too."""
    recorded = artifact.sha256.get(name) or artifact.sha256.get(f"cascade/{name}")
    if recorded is not None and recorded != sha256(data):
        raise ModelError(
            f"cascade file {name} of the artifact does not match the sha256 the artifact records: tampered "
            "or replaced; refused"
        )
