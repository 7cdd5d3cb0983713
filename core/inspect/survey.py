"""One full pass over a model's weights, shared by every page that needs it, computed once per model in
a background thread that starts right after the load.

The Parameters page (counts, tying, memory per format) and the Weights page (statistics of every weight)
both need every parameter; before, each page started its own pass when it was opened. Now the first
caller starts a `Survey` for the model and every later caller, from any session, gets the same one: the
cheap parameter report is ready first (milliseconds), the weight statistics when the pass ends, with
`progress` readable meanwhile. Core only: a page waits on it and draws the progress itself.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from core.inspect import weights as core_weights
from core.models.params import check_tying, count_parameters, weight_memory

KEEP = 4  # models whose surveys are kept (as the pages' model cache keeps 4 models)


@dataclass(frozen=True)
class ParameterReport:
    counts: dict  # core.models.params.count_parameters
    tying: dict  # core.models.params.check_tying
    memory: list[dict]  # core.models.params.weight_memory


@dataclass
class Survey:
    """The background pass of one model: `report` then `weights`, each set once (or `error`)."""

    key: str
    started: float = field(default_factory=time.perf_counter)
    report: ParameterReport | None = None
    weights: core_weights.WeightStats | None = None
    error: BaseException | None = None
    model_ref: Any = None  # weakref to the model: a survey never keeps an evicted model alive
    done_params: int = 0
    total_params: int = 0
    _report_ready: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def progress(self) -> float:
        """Share of parameters whose pass is done (0 before the first, 1 at the end)."""
        return 1.0 if self._done.is_set() else self.done_params / max(1, self.total_params)

    def wait_report(self, timeout: float | None = None) -> ParameterReport | None:
        self._report_ready.wait(timeout)
        if self.error is not None and self.report is None:
            raise self.error
        return self.report

    def wait_weights(self, timeout: float | None = None) -> core_weights.WeightStats | None:
        """The statistics, or None when `timeout` passed first; re-raises the pass's error."""
        self._done.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.weights

    def run(self, model: nn.Module, model_key: str) -> None:
        try:
            self.report = ParameterReport(count_parameters(model), check_tying(model), weight_memory(model))
            self._report_ready.set()

            def step(done: int, total: int) -> None:
                self.done_params, self.total_params = done, total

            self.weights = core_weights.weight_stats(model, model_key, progress=step)
            self.done_params = self.total_params = len(self.weights.rows)  # also when read from disk
        except BaseException as exc:  # noqa: BLE001 - handed to the page that waits, shown there
            self.error = exc
        finally:
            self._report_ready.set()
            self._done.set()


_surveys: OrderedDict[tuple[str, int], Survey] = OrderedDict()
_lock = threading.Lock()


def survey(model: nn.Module, model_key: str, background: bool = True) -> Survey:
    """The one survey of this model (started now if none is running or done); `background=False` runs
    it in the calling thread (the CLI, tests)."""
    ident = (model_key, id(model))  # a model reloaded after eviction is another object: a new survey
    with _lock:
        found = _surveys.get(ident)
        if found is not None and found.model_ref() is model:
            _surveys.move_to_end(ident)
            return found
        found = _surveys[ident] = Survey(model_key, model_ref=weakref.ref(model))
        while len(_surveys) > KEEP:
            _surveys.popitem(last=False)
    if background:
        threading.Thread(target=found.run, args=(model, model_key), name=f"survey {model_key}",
                         daemon=True).start()
    else:
        found.run(model, model_key)
    return found


def forget() -> None:
    """Drop every kept survey (tests)."""
    with _lock:
        _surveys.clear()


def status() -> list[dict[str, Any]]:
    """What is computing or kept: one row per survey (for a status line or a test)."""
    with _lock:
        return [{"key": s.key, "progress": s.progress, "done": s._done.is_set(), "error": repr(s.error) if s.error else None}
                for s in _surveys.values()]
