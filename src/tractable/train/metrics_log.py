"""Writing a run's metrics: ``metrics.jsonl`` (+ ``metrics.csv``), optional TensorBoard, a tqdm progress bar.

Every record is a flat dict with ``kind`` (``"step"`` or ``"epoch"``), ``step`` and ``epoch``. ``metrics.jsonl``
is the source of truth (one JSON object per line, appended and flushed as it goes); ``metrics.csv`` is
regenerated from it at every epoch record and on close, with the union of all keys as columns. Only the main
rank writes (``enabled=False`` elsewhere). On resume, :meth:`MetricsLogger.truncate_to` drops the records written
after the checkpoint so the log continues without duplicates.

Step records hold ``loss``/``acc`` (this step, averaged over ranks), ``lr``, ``img_s`` and hook scalars; epoch
records hold ``train_*``, ``test_*`` and (with EMA) ``ema_test_*`` metrics, ``lr`` and ``time_s``.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

__all__ = ["MetricsLogger", "ProgressBar", "read_metrics", "METRICS_JSONL", "METRICS_CSV"]

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


def read_metrics(run_dir: Union[str, Path]) -> List[Dict[str, Any]]:
    """All records of ``run_dir/metrics.jsonl`` (an empty list if there is none)."""
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a crash
    return out


class MetricsLogger:
    """Append-only metrics writer for one run directory."""

    def __init__(self, run_dir: Union[str, Path], *, enabled: bool = True, tensorboard: Optional[bool] = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._file = None
        self.count = 0  # records written by this logger (and kept from before a resume)
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            except ImportError as e:
                if tensorboard:
                    raise ImportError("train.tensorboard=true needs TensorBoard: "
                                      "pip install 'tractable[tensorboard]'") from e

    @property
    def jsonl_path(self) -> Path:
        return self.run_dir / METRICS_JSONL

    @property
    def csv_path(self) -> Path:
        return self.run_dir / METRICS_CSV

    def _open(self):
        if self._file is None:
            self._file = open(self.jsonl_path, "a")
        return self._file

    def log(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        f = self._open()
        f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        f.flush()
        self.count += 1
        if self._tb is not None:
            kind = record.get("kind", "step")
            x = record.get("step", 0) if kind == "step" else record.get("epoch", 0)
            for k, v in record.items():
                if k in ("kind", "step", "epoch") or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                self._tb.add_scalar(f"{kind}/{k}", v, x)
        if record.get("kind") == "epoch":
            self.write_csv()

    def truncate_to(self, n: int) -> None:
        """Keep only the first ``n`` records (used when resuming from a checkpoint that saw ``n`` records)."""
        if not self.enabled:
            return
        if self._file is not None:
            self._file.close()
            self._file = None
        records = read_metrics(self.run_dir)[:n]
        tmp = self.jsonl_path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.jsonl_path)
        self.count = len(records)
        self.write_csv()

    def write_csv(self) -> None:
        if not self.enabled:
            return
        if self._file is not None:
            self._file.flush()
        records = read_metrics(self.run_dir)
        columns: List[str] = []
        for r in records:
            for k in r:
                if k not in columns:
                    columns.append(k)
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, restval="")
            w.writeheader()
            for r in records:
                w.writerow(r)
        os.replace(tmp, self.csv_path)

    def close(self) -> None:
        if not self.enabled:
            return
        self.write_csv()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class ProgressBar:
    """A tqdm bar over one epoch's steps on the main rank (a no-op elsewhere or with ``enabled=False``)."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "", enabled: bool = True):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **values) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()},
                                  refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
