"""2-D layouts of unit directions for the source map (UMAP on cosine distance, seeded)."""

from __future__ import annotations

import numpy as np

MIN_UMAP = 16  # below this many units a 2-D PCA stands in (UMAP needs a neighbourhood graph)


def pca_2d(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out = centred @ vt[:2].T
    return np.pad(out, ((0, 0), (0, max(0, 2 - out.shape[1]))))


def layout_2d(directions: np.ndarray, *, seed: int = 0, n_neighbors: int = 15) -> tuple[np.ndarray, str]:
    """[n, 2] float32 coordinates of the rows of ``directions`` [n, d], and the method's name."""
    x = np.asarray(directions, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if len(x) < MIN_UMAP:
        return pca_2d(x).astype(np.float32), "pca"
    import umap  # imported here: it compiles numba code on first use (seconds)

    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(x) - 1), metric="cosine",
                        random_state=seed, n_jobs=1, low_memory=True)
    return reducer.fit_transform(x).astype(np.float32), f"umap cosine n_neighbors={min(n_neighbors, len(x) - 1)}"
