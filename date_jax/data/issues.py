"""Counts of bad inputs the pipeline skips or repairs: a long run never dies on one, and each kind is logged once.

Annotation problems are counted when a split is loaded; image problems found while reading (`add_image`) are counted
once per image, however many epochs or evaluations read it again.
"""
from __future__ import annotations

import collections
import logging
import threading

logger = logging.getLogger("date_jax.data")

# Kind -> what was done about it (used in the summary line).
KINDS = {
    "unknown_category": "annotations with a category id missing from 'categories' (dropped)",
    "degenerate_box": "boxes with w < 1, h < 1 or area <= 0 (dropped)",
    "box_outside_image": "boxes entirely outside their image (dropped)",
    "box_clipped": "boxes partly outside their image (clipped)",
    "annotation_unknown_image": "annotations whose image_id is not in 'images' (dropped)",
    "bad_image_record": "image records without a positive width/height or a file name (dropped)",
    "missing_image_file": "image files missing on disk (image skipped)",
    "empty_image_file": "image files of 0 bytes (image skipped)",
    "no_training_boxes": "training images without a usable non-crowd box (skipped in training)",
    "too_many_boxes": "images with more boxes than max_boxes after the transforms (smallest cut)",
    "unreadable_image": "images that could not be read or decoded during a run (skipped: replaced in their batch)",
    "channels_repaired": "grayscale / 2- / 4-channel images converted to RGB",
}


class DataIssues:
    """Counts bad inputs per kind; the first occurrence of each kind is logged with an example, summaries on demand.
    Safe to share between threads (an epoch can be assembled ahead while the current one finishes)."""

    def __init__(self, source: str):
        self.source = source
        self.counts: collections.Counter[str] = collections.Counter()
        self._images: dict[str, set] = collections.defaultdict(set)
        self._logged_kinds: set[str] = set()
        self._last_summary: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, example: str = "", count: int = 1) -> None:
        """Count `count` occurrences of `kind`; the first one of each kind is logged with `example`."""
        if kind not in KINDS:
            raise ValueError(f"unknown data issue kind {kind!r}; known: {sorted(KINDS)}")
        if count <= 0:
            return
        with self._lock:
            self.counts[kind] += count
            first = kind not in self._logged_kinds
            self._logged_kinds.add(kind)
        if first:
            logger.warning("%s: %s, e.g. %s (further ones are counted and summarised)", self.source, KINDS[kind],
                           example or "-")

    def add_image(self, kind: str, image: object, example: str = "") -> None:
        """Count the image `image` (an id or path) once under `kind`, however often it is reported."""
        with self._lock:
            seen = image in self._images[kind]
            self._images[kind].add(image)
        if not seen:
            self.add(kind, example or str(image))

    def summary(self) -> str:
        """One line listing every non-zero count, or '' when nothing was wrong."""
        return "; ".join(f"{n} {KINDS[k]}" for k, n in sorted(self.counts.items()) if n)

    def log_summary(self, final: bool = False) -> str:
        """Log the summary if anything changed since the last call (so each state is logged once), or, when `final`,
        as the run's closing line whenever anything was counted; returns the summary."""
        with self._lock:
            current = dict(self.counts)
        summary = self.summary()
        if current and (final or current != self._last_summary):
            logger.warning("%s: data issues %s: %s", self.source, "in this run" if final else "so far", summary)
        self._last_summary = current
        return summary
