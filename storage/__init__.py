"""The artifact store: content-addressed blobs, directory manifests, numbered versions, aliases."""

from storage.refs import ArtifactRef
from storage.store import ArtifactStore, open_store

__all__ = ["ArtifactRef", "ArtifactStore", "open_store"]
