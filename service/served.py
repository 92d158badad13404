"""The indexes a replica serves, and their hot swap.

A query takes a reference to the current Gallery and keeps it to the end, so a swap never fails
or blocks a query: the new version is read and verified beside the old one, then one reference
assignment makes it current. Swaps are triggered by the Redis announcement and, as a backstop,
by polling the `current` pointers."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path

import numpy as np

from facevoice.service.errors import NotLoaded
from facevoice.service.gallery import Gallery, Item
from facevoice.service.metrics import Metrics
from facevoice.service.versions import IndexVersionError, current_version, load_version

log = logging.getLogger("facevoice.indexes")


class IndexSet:
    def __init__(self, root: Path | None, model_versions: dict[str, str], metrics: Metrics,
                 use_gpu: bool = False):
        self.root, self.model_versions, self.metrics, self.use_gpu = root, model_versions, metrics, use_gpu
        self.galleries: dict[str, Gallery] = {}
        # live upserts/deletes, replayed onto each new version so a swap does not drop them
        self.journal: dict[str, list[tuple]] = {n: [] for n in model_versions}
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()

    def get(self, name: str) -> Gallery:
        gallery = self.galleries.get(name)
        if gallery is None:
            raise NotLoaded(f"no {name} index is loaded (build one with `facevoice index build`)")
        return gallery

    def refresh(self) -> dict[str, str]:
        """Loads every index whose `current` pointer moved; returns {name: new version}."""
        if self.root is None:
            return {}
        swapped = {}
        with self._swap_lock:
            for name, model_version in self.model_versions.items():
                version = current_version(self.root, name)
                loaded = self.galleries.get(name)
                if version is None or (loaded and loaded.meta.get("version") == version):
                    continue
                try:
                    gallery = load_version(self.root, name, version, model_version, self.use_gpu)
                except (IndexVersionError, OSError) as e:
                    self.metrics.index_swaps.labels(name, "refused").inc()
                    log.error("not serving %s/%s: %s", name, version, e)
                    continue
                for entry in self.journal[name]:
                    self._apply(gallery, entry)
                old = self.galleries.get(name)
                self.galleries[name] = gallery  # the swap: one reference assignment
                self._export_metrics(name, gallery, old)
                self.metrics.index_swaps.labels(name, "swapped").inc()
                swapped[name] = version
        return swapped

    def _export_metrics(self, name: str, gallery: Gallery, old: Gallery | None) -> None:
        m = gallery.meta
        if old is not None:
            om = old.meta
            self.metrics.index_info.remove(name, om["version"], om["model_version"], om["kind"])
        self.metrics.index_info.labels(name, m["version"], m["model_version"], m["kind"]).set(1)
        self.metrics.index_items.labels(name).set(gallery.size)
        built = datetime.fromisoformat(m["built_at"].replace("Z", "+00:00"))
        self.metrics.index_built.labels(name).set(built.timestamp())

    @staticmethod
    def _apply(gallery: Gallery, entry: tuple) -> None:
        if entry[0] == "upsert":
            gallery.upsert(entry[1], entry[2])
        else:
            gallery.delete(entry[1])

    def upsert(self, name: str, items: list[Item], vectors: np.ndarray) -> int:
        with self._swap_lock:
            gallery = self.get(name)
            entry = ("upsert", items, np.asarray(vectors, np.float32))
            self._apply(gallery, entry)
            self.journal[name].append(entry)
            self.metrics.index_items.labels(name).set(gallery.size)
            return gallery.size

    def delete(self, name: str, item_ids: list[str]) -> list[str]:
        with self._swap_lock:
            gallery = self.get(name)
            missing = gallery.delete(item_ids)
            self.journal[name].append(("delete", [i for i in item_ids if i not in set(missing)]))
            self.metrics.index_items.labels(name).set(gallery.size)
            return missing

    def watch(self, every_s: float) -> threading.Thread:
        """Polls the pointers every `every_s` seconds in a daemon thread."""
        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.refresh()
                except Exception:  # the watcher must outlive any one bad version
                    log.exception("index refresh failed")

        thread = threading.Thread(target=loop, name="facevoice-index-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
