"""`ArtifactRef`: the small, picklable handle that stages pass to each other instead of folders."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ArtifactRef:
    """One immutable version of a named artifact.

    >>> ArtifactRef("demo/sft", "model", 3, "sha256:ab12...", metrics={"train_loss": 0.41}).label
    'demo/sft@3'
    """

    name: str
    kind: str  # model | adapter | dataset | reward_model | eval_report | deployment
    version: int
    digest: str  # "sha256:<hex>" of the manifest: the artifact's identity
    metrics: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def short_digest(self) -> str:
        return self.digest.split(":", 1)[-1][:12]

    def portable(self) -> dict:
        """The ref as JSON for a job another machine reads (`ArtifactRef(**d)` again), without its metrics."""
        return {"name": self.name, "kind": self.kind, "version": self.version, "digest": self.digest}
