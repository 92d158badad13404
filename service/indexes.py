"""The indexes a replica serves: their hot swap, and the gallery write log applied on top.

A query takes a reference to the current Gallery and keeps it to the end, so a swap never fails
or blocks a query: the new version is read, verified and brought up to date with the write log
beside the old one, then one reference assignment makes it current. Swaps are triggered by the
Redis announcement and, as a backstop, by polling the `current` pointers.

Gallery writes go through the write log (service/writelog.py): `write` appends a change (only
then is it acknowledged) and applies it here at once; a follower thread applies the changes
other replicas append, in log order. A version replays the log from the offset it was built at.
Live edits since a version are its overlay, bounded by `max_overlay` item ids per index;
`facevoice index build` folds them into a new version.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from facevoice.service.errors import (
    BadRequest,
    DependencyUnavailable,
    Exhausted,
    NotLoaded,
    Stopped,
    UsageError,
)
from facevoice.service.gallery import Gallery, Item
from facevoice.service.metrics import Metrics
from facevoice.service.versions import IndexVersionError, current_version, load_version, verify_files
from facevoice.service.writelog import Change, IndexChange, LogDamaged, LogTrimmed, WriteLog, offset_of

log = logging.getLogger("facevoice.indexes")
LAG_CAP = 10_000  # lag is counted up to this many entries
VERIFY = ("before", "background")  # when a version's large files are hashed: before it is served, or after
VERIFY_LATER_OVER = 256 << 20  # "background": files larger than this are hashed after the swap


def upsert_change(model_versions: dict[str, str], upserts: dict[str, tuple[list[Item], np.ndarray]],
                  actor: str = "") -> Change:
    """The write-log entry of an upsert: each index's items and vectors, with the model version that
    embedded them (both backends log writes this way)."""
    return Change("upsert", {name: IndexChange(model_versions[name],
                                               [{"item_id": it.item_id, "identity": it.identity,
                                                 "attributes": it.attributes} for it in items],
                                               np.asarray(v, np.float32))
                             for name, (items, v) in upserts.items()}, actor=actor)


@dataclass
class LogStatus:
    """How far this replica has applied the write log (GetIndexInfo.log, health, metrics)."""

    kind: str = "none"
    state: str = "ok"  # ok | behind | damaged | unavailable | trimmed
    applied: str = ""
    head: str = ""
    lag_entries: int = 0
    lag_seconds: float = 0.0
    writes: bool = False
    error: str = ""


class IndexSet:
    def __init__(self, root: Path | None, model_versions: dict[str, str], metrics: Metrics,
                 use_gpu: bool = False, write_log: WriteLog | None = None, max_overlay: int = 100_000,
                 refused_backoff_s: tuple[float, float] = (5.0, 300.0), mmap: bool = True,
                 max_lag_s: float = 30.0, verify: str = "before"):
        self.root, self.model_versions, self.metrics, self.use_gpu = root, model_versions, metrics, use_gpu
        self.mmap = mmap
        if verify not in VERIFY:
            raise UsageError(f"index verify must be one of {', '.join(VERIFY)}, not {verify!r}")
        self.verify_later_over = VERIFY_LATER_OVER if verify == "background" else None
        self.log, self.max_overlay = write_log, max_overlay
        self.galleries: dict[str, Gallery] = {}
        self.applied = write_log.start if write_log else "0"  # every loaded gallery is at least here
        # (name, version) -> (retry after, current delay): a refused version is not re-read every poll
        self.refused: dict[tuple[str, str], tuple[float, float]] = {}
        self.refused_backoff_s = refused_backoff_s
        self._swap_lock = threading.RLock()
        self._stop = threading.Event()
        self.threads: list[threading.Thread] = []
        # the log as the follower last found it: why it cannot apply it (damage, an outage, a trim)
        self.max_lag_s = max_lag_s
        self.follow_error: tuple[str, str] | None = None  # (state, message)
        self._caught_up = time.time()  # when this replica last had every entry applied
        self.on_status = None  # called with each LogStatus the follower computes (health)
        self._reported = 0.0

    def get(self, name: str) -> Gallery:
        gallery = self.galleries.get(name)
        if gallery is None:
            raise NotLoaded(f"no {name} index is loaded (build one with `facevoice index build`)")
        return gallery

    # versions -----------------------------------------------------------------------------
    def refresh(self) -> dict[str, str]:
        """Loads every index whose `current` pointer moved; returns {name: new version}."""
        if self.root is None:
            return {}
        swapped = {}
        with self._swap_lock:
            first_load = not self.galleries
            for name, model_version in self.model_versions.items():
                version = current_version(self.root, name)
                loaded = self.galleries.get(name)
                if version is None or (loaded and loaded.meta.version == version):
                    continue
                retry = self.refused.get((name, version))
                if retry and time.monotonic() < retry[0]:
                    continue
                try:
                    # a version refused before is hashed whole before it is served again
                    gallery = load_version(self.root, name, version, model_version, self.use_gpu, self.mmap,
                                           None if retry else self.verify_later_over)
                    self._bring_up_to_date(name, gallery)
                except (IndexVersionError, LogTrimmed, OSError) as e:
                    delay = min(retry[1] * 2, self.refused_backoff_s[1]) if retry else self.refused_backoff_s[0]
                    self.refused[(name, version)] = (time.monotonic() + delay, delay)
                    self.metrics.index_swaps.labels(name, "refused").inc()
                    log.error("not serving %s/%s: %s (next try in %.0f s)", name, version, e, delay)
                    continue
                except (DependencyUnavailable, LogDamaged) as e:  # the log's fault: try again at the next poll
                    log.warning("cannot load %s/%s yet: %s", name, version, e)
                    continue
                self.refused.pop((name, version), None)
                old = self.galleries.get(name)
                fallback = None if old is None or old.unverified else old  # one verified whole to go back to
                self.galleries[name] = gallery  # the swap: one reference assignment
                self._export_metrics(name, gallery, old)
                self.metrics.index_swaps.labels(name, "swapped").inc()
                swapped[name] = version
                if gallery.unverified:
                    self._start(lambda n=name, g=gallery, o=fallback: self._verify_later(n, g, o),
                                f"facevoice-verify-{name}")
            if first_load and self.galleries and self.log is not None and self.applied == self.log.start:
                # every entry up to the oldest loaded version's offset is folded into all of them
                self.applied = min((g.applied for g in self.galleries.values()), key=self.log.key)
        return swapped

    def _verify_later(self, name: str, gallery: Gallery, old: Gallery | None) -> None:
        """Hashes the files a "background" load left (the old version is kept until then). On a
        mismatch the version stops being served: the old one comes back, or the index is
        unloaded (searches say so), and the version is refused as at load."""
        path = self.root / name / gallery.meta.version
        started = time.monotonic()
        try:
            verify_files(path, gallery.unverified)
        except IndexVersionError as e:
            with self._swap_lock:
                if self.galleries.get(name) is gallery:
                    if old is not None and self._caught_up_again(name, old):
                        self.galleries[name] = old
                        self._export_metrics(name, old, gallery)
                    else:
                        del self.galleries[name]
                        self.metrics.index_info.remove(name, gallery.meta.version, gallery.meta.model_version,
                                                       gallery.meta.plan.kind)
                delay = self.refused_backoff_s[1]
                self.refused[(name, gallery.meta.version)] = (time.monotonic() + delay, delay)
                self.metrics.index_swaps.labels(name, "refused").inc()
            log.error("not serving %s/%s any more: %s (%s)", name, gallery.meta.version, e,
                      f"back to {old.meta.version}" if old is not None else "no version of it is served")
            return
        gallery.unverified = {}
        log.info("%s/%s: its large files match their checksums (%.1f s after the swap)", name,
                 gallery.meta.version, time.monotonic() - started)

    def _caught_up_again(self, name: str, old: Gallery) -> bool:
        """Applies to a version being brought back the log entries it missed while swapped out."""
        if self.log is None or old.applied is None:
            return True
        try:
            for offset, change in self.log.entries(old.applied, upto=self.applied):
                self._apply_one(name, old, offset, change)
        except Exception as e:  # the log, or the old version's files gone (pruned): not one to go back to
            log.error("cannot bring %s/%s back up to date: %s", name, old.meta.version, e)
            return False
        if self.log.key(old.applied) < self.log.key(self.applied):
            old.applied = self.applied
        return True

    def _bring_up_to_date(self, name: str, gallery: Gallery) -> None:
        """Replays the log from the version's offset up to what this replica has applied."""
        if self.log is None:
            return
        gallery.applied = offset_of(gallery.meta, self.log)
        if self.log.key(gallery.applied) < self.log.key(self.log.first()):
            raise LogTrimmed(f"the gallery log was trimmed past this version's offset {gallery.applied}; "
                             "build a new version")
        for offset, change in self.log.entries(gallery.applied, upto=self.applied):
            self._apply_one(name, gallery, offset, change)
        if self.log.key(gallery.applied) < self.log.key(self.applied):
            gallery.applied = self.applied  # entries up to here that touched other indexes only

    def _export_metrics(self, name: str, gallery: Gallery, old: Gallery | None) -> None:
        m = gallery.meta
        if old is not None:
            om = old.meta
            self.metrics.index_info.remove(name, om.version, om.model_version, om.plan.kind)
        self.metrics.index_info.labels(name, m.version, m.model_version, m.plan.kind).set(1)
        self._export_size(name, gallery)
        built = datetime.fromisoformat(m.built_at.replace("Z", "+00:00"))
        self.metrics.index_built.labels(name).set(built.timestamp())

    def _export_size(self, name: str, gallery: Gallery) -> None:
        self.metrics.index_items.labels(name).set(gallery.size)
        self.metrics.overlay_items.labels(name).set(len(gallery.edited))

    # the write log --------------------------------------------------------------------------
    def _apply_one(self, name: str, gallery: Gallery, offset: str, change: Change) -> None:
        """Applies one log entry to one gallery, once (entries at or below its offset are skipped)."""
        if gallery.applied is not None and not self.log.later(offset, gallery.applied):
            return
        if change.op == "upsert" and name in change.upserts:
            u = change.upserts[name]
            if u.model_version == gallery.meta.model_version:
                gallery.upsert([Item(**it) for it in u.items], u.vectors)
            else:  # embedded by another model: this index cannot hold the vector
                log.warning("log entry %s: %s vectors of model %s skipped (index runs %s)", offset, name,
                            u.model_version, gallery.meta.model_version)
        elif change.op == "delete" and name in change.indexes:
            gallery.delete(change.item_ids)
        gallery.applied = offset

    def _apply(self, entries: list[tuple[str, Change]]) -> None:
        for offset, change in entries:
            if not self.log.later(offset, self.applied):
                continue
            for name, gallery in self.galleries.items():
                self._apply_one(name, gallery, offset, change)
            self.applied = offset
        for name, gallery in self.galleries.items():
            self._export_size(name, gallery)

    def catch_up(self, upto: str | None = None) -> None:
        """Applies the log here up to `upto` (default: its end)."""
        if self.log is None:
            return
        with self._swap_lock:
            while upto is None or self.log.later(upto, self.applied):
                batch = self.log.read(self.applied, limit=1024)
                if not batch:
                    return
                self._apply(batch)

    def write(self, change: Change) -> str:
        """Appends the change (durable when this returns) and applies it here; its log offset.
        Every index it names must be loaded, so an upsert is all or nothing."""
        if self.log is None:
            raise DependencyUnavailable("no gallery log: serve with --index-root (or a Redis) to edit the gallery")
        names = list(change.upserts) if change.op == "upsert" else change.indexes
        for name in names:
            gallery = self.get(name)
            if change.op == "upsert" and change.upserts[name].model_version != gallery.meta.model_version:
                raise BadRequest(f"{name}: embedded by {change.upserts[name].model_version}, the index holds "
                                 f"{gallery.meta.model_version}")
            if change.op == "upsert":
                new = {it["item_id"] for it in change.upserts[name].items} - gallery.edited
                if len(gallery.edited) + len(new) > self.max_overlay:
                    raise Exhausted(f"the {name} index holds {len(gallery.edited)} live edits (max {self.max_overlay});"
                                    " run `facevoice index build` to fold them into a new version")
        if self.follow_error and self.follow_error[0] == "damaged":
            raise Stopped(self.follow_error[1])
        try:
            offset = self.log.append(change)
        except LogDamaged as e:  # the append marked the log: log_status says so from the mark
            self.metrics.log_damaged.set(1)
            raise Stopped(str(e)) from e
        self.metrics.log_appends.labels(change.op).inc()
        try:
            self.catch_up(offset)
        except (LogDamaged, LogTrimmed, DependencyUnavailable) as e:  # stored: the follower applies it later
            log.warning("gallery write %s is in the log but not applied here yet: %s", offset, e)
        return offset

    def upsert(self, upserts: dict[str, tuple[list[Item], np.ndarray]], actor: str = "") -> str:
        return self.write(upsert_change({name: self.get(name).meta.model_version for name in upserts}, upserts, actor))

    def delete(self, names: list[str], item_ids: list[str], actor: str = "") -> tuple[list[str], str]:
        """Deletes from every named index; (ids the first index did not hold, log offset)."""
        first = self.get(names[0])
        with first.lock.read():
            missing = [i for i in item_ids if not first.has(i)]
        offset = self.write(Change("delete", indexes=list(names), item_ids=list(item_ids), actor=actor))
        return missing, offset

    # threads --------------------------------------------------------------------------------
    def follow(self, wait_s: float = 0.5, backoff_s: float = 1.0) -> threading.Thread | None:
        """Applies other replicas' writes as they are appended (a daemon thread)."""
        if self.log is None:
            return None

        last_warning = [-float("inf")]

        def failed(state: str, e: Exception, level: int, wait_s: float) -> None:
            if self.follow_error is None or self.follow_error[1] != str(e) or \
                    time.monotonic() - last_warning[0] > 30:  # one line per 30 s of the same trouble
                last_warning[0] = time.monotonic()
                log.log(level, "gallery log: %s", e)
            self.follow_error = (state, str(e))
            self._report_safely()
            self._stop.wait(wait_s)

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    got = self.log.read(self.applied, limit=1024, wait_s=wait_s)
                    if got:
                        with self._swap_lock:  # entries another thread applied meanwhile are skipped
                            self._apply(got)
                        self.catch_up()
                    if self.follow_error:
                        log.info("gallery log: applying again (was %s)", self.follow_error[0])
                    self.follow_error = None
                    self._report_safely(every_s=1.0)
                except LogDamaged as e:  # retried: a repair lets it go on by itself
                    failed("damaged", e, logging.ERROR, backoff_s)
                except LogTrimmed as e:
                    failed("trimmed", e, logging.ERROR, backoff_s * 10)
                except DependencyUnavailable as e:
                    failed("unavailable", e, logging.WARNING, backoff_s)
                except Exception as e:  # the follower must outlive anything else too
                    log.exception("applying the gallery log failed")
                    failed("unavailable", e, logging.DEBUG, backoff_s)

        return self._start(loop, "facevoice-log-follower")

    def log_status(self) -> LogStatus:
        """Where this replica stands on the log: applied, head, lag (entries, seconds), writes."""
        if self.log is None:
            return LogStatus(error="served without a gallery log: read-only")
        st = LogStatus(self.log.kind, applied=self.applied)
        try:
            marked = self.log.damaged()  # found by any replica: every one stops writing
            if marked is not None:
                st.state, st.error = "damaged", str(LogDamaged(self.log.name, marked))
            try:
                st.head = self.log.head()
                behind = self.log.later(st.head, self.applied)
            except LogDamaged as e:  # the newest segment holds the damage: count what follows anyway
                st.state, st.error, behind = "damaged", str(e), True
            st.lag_entries = self.log.behind(self.applied, LAG_CAP) if behind else 0
        except (DependencyUnavailable, LogDamaged) as e:
            st.state, st.error = ("damaged" if isinstance(e, LogDamaged) else "unavailable"), str(e)
        if st.lag_entries == 0 and not st.error and not self.follow_error:
            self._caught_up = time.time()
        st.lag_seconds = round(time.time() - self._caught_up, 3)
        if self.follow_error and st.state == "ok":
            st.state, st.error = self.follow_error
        elif st.state == "ok" and st.lag_seconds > self.max_lag_s:
            st.state, st.error = "behind", f"{st.lag_entries} entries not applied for {st.lag_seconds:.0f} s"
        st.writes = st.state not in ("damaged", "unavailable") and bool(self.galleries)
        return st

    def _report_safely(self, every_s: float = 0.0) -> None:
        """report() from the follower: whatever it meets, the follower goes on."""
        try:
            self.report(every_s)
        except Exception:
            log.exception("reporting the gallery log's state failed")

    def report(self, every_s: float = 0.0) -> LogStatus | None:
        """Computes the status (at most once per `every_s`), exports it and tells `on_status`."""
        if time.monotonic() - self._reported < every_s:
            return None
        self._reported = time.monotonic()
        st = self.log_status()
        self.metrics.log_lag_entries.set(st.lag_entries)
        self.metrics.log_lag_seconds.set(st.lag_seconds)
        self.metrics.log_damaged.set(int(st.state == "damaged"))
        if self.on_status is not None:
            self.on_status(st)
        return st

    def watch(self, every_s: float) -> threading.Thread:
        """Polls the pointers every `every_s` seconds in a daemon thread."""
        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.refresh()
                except Exception:  # the watcher must outlive any one bad version
                    log.exception("index refresh failed")

        return self._start(loop, "facevoice-index-watch")

    def _start(self, loop, name: str) -> threading.Thread:
        self.threads = [t for t in self.threads if t.is_alive()]  # finished checks go
        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(timeout_s)
        if self.log is not None:
            self.log.close()
