"""Experiments and run annotations: group runs, star, notes, tags, search and compare.

An experiment is a named group of training runs ("backbone sweep") with a markdown
description; a run belongs to at most one experiment (``TrainingRun.experiment_id``).
Deleting an experiment keeps its runs, ungrouped.

Which value of a metric is best is decided from its key alone (:func:`metric_direction`):
a key that names a loss is better lower; a key that names mAP, AP, precision, recall,
accuracy, top-1/top-5, F1, IoU or fitness is better higher (loss wins when a key names
both); any other key (learning rates, timings) is shown but never ranked. The best metrics of an experiment are worked out from its
runs' final metrics each time they are asked for, so they always agree with the runs it holds.

Runs are addressed by id or ``latest`` (the newest completed run), as everywhere else.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.orm import Session

from desktop_app.core.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from desktop_app.core.models import (
    Dataset,
    DatasetVersion,
    Experiment,
    RunMetric,
    TrainingRun,
)

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace

__all__ = [
    "MAX_NAME_CHARS",
    "MAX_TAGS",
    "MAX_TEXT_BYTES",
    "TAG_RE",
    "MetricFilter",
    "add_runs",
    "add_tags",
    "compare_runs",
    "create_experiment",
    "check_tags",
    "delete_experiment",
    "describe_experiment",
    "ensure_experiment",
    "get_experiment",
    "list_experiments",
    "metric_direction",
    "parse_metric_filter",
    "primary_metric_key",
    "remove_runs",
    "remove_tags",
    "rename_experiment",
    "search_runs",
    "set_notes",
    "star_run",
]

MAX_TEXT_BYTES = 64 * 1024  # a run's notes or an experiment's description, UTF-8 encoded
MAX_NAME_CHARS = 128  # the experiments.name column
MAX_TAGS = 64  # per run
TAG_RE = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")

# Checked in this order on the lower-cased key: a loss is a loss even when it says "iou".
_LOWER_IS_BETTER = ("loss",)
_HIGHER_IS_BETTER = (
    "map",
    "miou",
    "precision",
    "recall",
    "accuracy",
    "top1",
    "top5",
    "fitness",
    "f1",
    "iou",
)
_HIGHER_IS_BETTER_WORD = re.compile(r"^(ap|acc)\d*$")  # whole words only: not "approx"
# The headline metric of each task, as the trainer reports it in its final metrics.
_PRIMARY_BY_TASK = {
    "detect": "metrics/mAP50-95(B)",
    "segment": "metrics/mAP50-95(M)",
    "pose": "metrics/mAP50-95(P)",
    "classify": "metrics/accuracy_top1",
}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "=": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
}
_FILTER_RE = re.compile(r"^(?P<key>[^<>=!~]+?)\s*(?P<op>[<>=!~]+)\s*(?P<value>[^<>=!~]+)$")
_TOKEN_RE = re.compile(r"[a-z0-9]+")
_STATUSES = ("queued", "running", "completed", "failed", "cancelled", "orphaned")


# ---- metric rules ----------------------------------------------------------------------


def metric_direction(key: str) -> str | None:
    """``"min"`` when lower is better, ``"max"`` when higher is, None when it is not ranked.

    The rule reads the key's words (split at anything not a letter or digit, lower-cased):
    a word holding ``loss`` → lower is better; else a word starting with mAP, mIoU, IoU,
    precision, recall, accuracy, top1, top5, F1 or fitness, or a word that is AP or ACC with
    optional digits (``ap50``) → higher is better; anything else (``lr/pg0``, timings) is not
    ranked.

    Example:
        >>> metric_direction("val/box_loss"), metric_direction("metrics/mAP50(B)")
        ('min', 'max')
    """
    words = _TOKEN_RE.findall(key.lower())
    if any(low in word for word in words for low in _LOWER_IS_BETTER):
        return "min"
    if any(
        word.startswith(_HIGHER_IS_BETTER) or _HIGHER_IS_BETTER_WORD.match(word) for word in words
    ):
        return "max"
    return None


def _better(direction: str, a: float, b: float) -> bool:
    """True when ``a`` beats ``b`` under ``direction``."""
    return a < b if direction == "min" else a > b


def primary_metric_key(run: TrainingRun) -> str | None:
    """The key of a run's headline metric.

    The trainer's ``validation.primary_metric.key`` when it sent one, else the task's usual
    key (mAP50-95 of boxes, masks or keypoints; top-1 accuracy for classify) when the run
    reported it, else None.
    """
    validation = run.validation or {}
    primary = validation.get("primary_metric")
    if isinstance(primary, dict) and isinstance(primary.get("key"), str):
        return str(primary["key"])
    key = _PRIMARY_BY_TASK.get(run.task)
    if key is not None and key in (run.final_metrics or {}):
        return key
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _primary(run: TrainingRun) -> dict[str, Any] | None:
    key = primary_metric_key(run)
    if key is None:
        return None
    value = _number((run.final_metrics or {}).get(key))
    if value is None:
        primary = (run.validation or {}).get("primary_metric") or {}
        value = _number(primary.get("value")) if isinstance(primary, dict) else None
    return None if value is None else {"key": key, "value": value}


def _best_by_key(runs: Sequence[TrainingRun]) -> dict[str, dict[str, Any]]:
    """For each ranked key of the runs' final metrics: the best value and which run has it."""
    best: dict[str, dict[str, Any]] = {}
    for run in runs:
        for key, raw in sorted((run.final_metrics or {}).items()):
            direction = metric_direction(key)
            value = _number(raw)
            if direction is None or value is None:
                continue
            current = best.get(key)
            if current is None or _better(direction, value, current["value"]):
                best[key] = {"value": value, "run": run.id, "direction": direction}
    return dict(sorted(best.items()))


def _best_primary(runs: Sequence[TrainingRun]) -> dict[str, Any] | None:
    """The best headline value among the runs, under the key most of them report."""
    primaries = [(run.id, p) for run in runs if (p := _primary(run)) is not None]
    if not primaries:
        return None
    keys = [p["key"] for _, p in primaries]
    key = max(dict.fromkeys(keys), key=keys.count)
    direction = metric_direction(key) or "max"
    best: dict[str, Any] | None = None
    for run_id, p in primaries:
        if p["key"] == key and (best is None or _better(direction, p["value"], best["value"])):
            best = {"key": key, "value": p["value"], "run": run_id}
    return best


# ---- validation helpers ----------------------------------------------------------------


def _check_name(name: str) -> str:
    cleaned = name.strip() if isinstance(name, str) else ""
    if not cleaned or len(cleaned) > MAX_NAME_CHARS or any(ord(c) < 32 for c in cleaned):
        raise InvalidArgumentError(
            f"experiment name {name!r} must be 1-{MAX_NAME_CHARS} characters on one line; "
            "choose another name"
        )
    return cleaned


def _check_text(text: str | None, what: str) -> str | None:
    """Markdown text within :data:`MAX_TEXT_BYTES`; blank text clears (None)."""
    if text is None or not text.strip():
        return None
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        raise InvalidArgumentError(
            f"{what} is {size} bytes, over the {MAX_TEXT_BYTES // 1024} KiB limit; "
            "shorten it or link to a file instead"
        )
    return text


def check_tags(tags: Iterable[str]) -> list[str]:
    """Tags as given, checked and deduplicated case-insensitively (first spelling kept).

    Raises:
        InvalidArgumentError: a tag is not 1-64 letters, digits or ``. _ - : /``.
    """
    out: list[str] = []
    seen: set[str] = set()
    for tag in tags:
        if not isinstance(tag, str) or not TAG_RE.match(tag):
            raise InvalidArgumentError(
                f"tag {tag!r} must be 1-64 letters, digits or . _ - : / (no spaces); "
                "choose another tag"
            )
        if tag.lower() not in seen:
            seen.add(tag.lower())
            out.append(tag)
    return out


# ---- lookups ---------------------------------------------------------------------------


def _find_experiment(s: Session, name: str) -> Experiment:
    exp = s.scalar(select(Experiment).where(Experiment.name == name))
    if exp is None:
        exp = s.scalar(select(Experiment).where(func.lower(Experiment.name) == name.lower()))
    if exp is None:
        raise NotFoundError(
            f"no experiment named {name!r}; list them with `outpost experiments list`"
        )
    return exp


def _name_taken(s: Session, name: str, other_than: int | None = None) -> Experiment | None:
    query = select(Experiment).where(func.lower(Experiment.name) == name.lower())
    if other_than is not None:
        query = query.where(Experiment.id != other_than)
    return s.scalar(query)


def _get_run(s: Session, ref: str) -> TrainingRun:
    """A run by id, or ``latest`` for the newest completed run, inside ``s``."""
    if ref == "latest":
        run = s.scalars(
            select(TrainingRun)
            .where(TrainingRun.status == "completed")
            .order_by(TrainingRun.created_at.desc(), TrainingRun.id.desc())
        ).first()
    else:
        run = s.get(TrainingRun, ref)
    if run is None:
        raise NotFoundError(f"no training run {ref!r}; list them with: outpost runs list")
    return run


def _get_runs(s: Session, refs: Sequence[str]) -> list[TrainingRun]:
    if not refs:
        raise InvalidArgumentError("name at least one run (id or 'latest'); see outpost runs list")
    runs: dict[str, TrainingRun] = {}
    for ref in refs:
        run = _get_run(s, ref)
        runs.setdefault(run.id, run)
    return list(runs.values())


def _dataset_labels(s: Session, version_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """Dataset name and version label (``v2``, ``draft``) of each version id."""
    ids = set(version_ids)
    if not ids:
        return {}
    rows = s.execute(
        select(DatasetVersion.id, DatasetVersion.number, Dataset.name)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(DatasetVersion.id.in_(ids))
    )
    return {vid: (name, "draft" if number == 0 else f"v{number}") for vid, number, name in rows}


def _experiment_names(s: Session, ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = s.execute(select(Experiment.id, Experiment.name).where(Experiment.id.in_(wanted)))
    return {exp_id: name for exp_id, name in rows}


def _iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands timestamps back without their zone)."""
    if dt is None:
        return None
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)).isoformat()


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    return text.strip().splitlines()[0] if text.strip() else None


def _run_row(
    run: TrainingRun, labels: dict[int, tuple[str, str]], experiments: dict[int, str]
) -> dict[str, Any]:
    dataset, version = labels.get(run.dataset_version_id, (None, None))
    return {
        "id": run.id,
        "status": run.status,
        "framework": run.framework,
        "task": run.task,
        "model": run.model,
        "dataset": dataset,
        "version": version,
        "experiment": experiments.get(run.experiment_id) if run.experiment_id else None,
        "starred": bool(run.starred),
        "tags": list(run.tags or []),
        "notes": _first_line(run.notes),
        "final_metrics": dict(run.final_metrics or {}),
        "primary_metric": _primary(run),
        "created_at": _iso(run.created_at),
        "finished_at": _iso(run.finished_at),
    }


def _rows(s: Session, runs: Sequence[TrainingRun]) -> list[dict[str, Any]]:
    labels = _dataset_labels(s, (r.dataset_version_id for r in runs))
    names = _experiment_names(s, (r.experiment_id for r in runs))
    return [_run_row(r, labels, names) for r in runs]


def _runs_of(s: Session, exp: Experiment) -> list[TrainingRun]:
    return list(
        s.scalars(
            select(TrainingRun)
            .where(TrainingRun.experiment_id == exp.id)
            .order_by(TrainingRun.created_at, TrainingRun.id)
        )
    )


# ---- experiments -----------------------------------------------------------------------


def create_experiment(ws: Workspace, name: str, description: str | None = None) -> dict[str, Any]:
    """Create an empty experiment.

    Args:
        ws: The workspace.
        name: 1-128 characters on one line; unique, ignoring case.
        description: Markdown, at most 64 KiB.

    Raises:
        AlreadyExistsError: an experiment with that name exists.
        InvalidArgumentError: a bad name or an over-long description.
    """
    cleaned = _check_name(name)
    text = _check_text(description, f"the description of experiment {cleaned!r}")
    with ws.session() as s:
        if _name_taken(s, cleaned) is not None:
            raise AlreadyExistsError(
                f"an experiment named {cleaned!r} already exists; choose another name or "
                f"add runs to it with `outpost experiments add {cleaned} RUN`"
            )
        exp = Experiment(project_id=ws.default_project_id(), name=cleaned, description=text)
        s.add(exp)
        s.flush()
        return {
            "name": exp.name,
            "description": exp.description,
            "runs": 0,
            "created_at": _iso(exp.created_at),
        }


def ensure_experiment(s: Session, name: str, project_id: int) -> Experiment:
    """The experiment of that name (ignoring case) inside ``s``, created when missing.

    For callers that group a run as they create it (``outpost train --experiment NAME``).

    Raises:
        InvalidArgumentError: a bad name.
    """
    cleaned = _check_name(name)
    exp = _name_taken(s, cleaned)
    if exp is None:
        exp = Experiment(project_id=project_id, name=cleaned)
        s.add(exp)
        s.flush()
    return exp


def list_experiments(ws: Workspace) -> list[dict[str, Any]]:
    """Every experiment, oldest first: name, description, run count, best headline metric.

    ``best`` is ``{"key", "value", "run"}``: the best value of the runs' primary metric
    (see :func:`primary_metric_key`; with mixed keys, the key most runs report), or None.
    """
    with ws.session() as s:
        exps = s.scalars(select(Experiment).order_by(Experiment.created_at, Experiment.id)).all()
        out = []
        for exp in exps:
            runs = _runs_of(s, exp)
            out.append(
                {
                    "name": exp.name,
                    "description": exp.description,
                    "runs": len(runs),
                    "best": _best_primary(runs),
                    "created_at": _iso(exp.created_at),
                }
            )
        return out


def get_experiment(ws: Workspace, name: str) -> dict[str, Any]:
    """One experiment: its runs and the best metrics kept across them.

    Returns:
        ``name``, ``description``, ``created_at``, ``runs`` (status, model, dataset, version,
        final metrics, primary metric, star, tags, first line of the notes; oldest first),
        ``best`` (the best primary metric, as in :func:`list_experiments`) and
        ``best_metrics``: for every ranked key in the runs' final metrics,
        ``{"value", "run", "direction"}`` (see :func:`metric_direction`).

    Raises:
        NotFoundError: no such experiment.
    """
    with ws.session() as s:
        exp = _find_experiment(s, name)
        runs = _runs_of(s, exp)
        return {
            "name": exp.name,
            "description": exp.description,
            "created_at": _iso(exp.created_at),
            "runs": _rows(s, runs),
            "best": _best_primary(runs),
            "best_metrics": _best_by_key(runs),
        }


def rename_experiment(ws: Workspace, name: str, new_name: str) -> dict[str, Any]:
    """Rename an experiment (its runs stay in it).

    Raises:
        NotFoundError: no such experiment.
        AlreadyExistsError: another experiment has the new name.
        InvalidArgumentError: a bad new name.
    """
    cleaned = _check_name(new_name)
    with ws.session() as s:
        exp = _find_experiment(s, name)
        if _name_taken(s, cleaned, other_than=exp.id) is not None:
            raise AlreadyExistsError(
                f"an experiment named {cleaned!r} already exists; choose another name"
            )
        old = exp.name
        exp.name = cleaned
        return {"name": cleaned, "renamed_from": old}


def describe_experiment(ws: Workspace, name: str, markdown: str | None) -> dict[str, Any]:
    """Set (or, with blank text, clear) an experiment's markdown description.

    Raises:
        NotFoundError: no such experiment.
        InvalidArgumentError: the text is over 64 KiB.
    """
    with ws.session() as s:
        exp = _find_experiment(s, name)
        exp.description = _check_text(markdown, f"the description of experiment {exp.name!r}")
        return {"name": exp.name, "description": exp.description}


def delete_experiment(ws: Workspace, name: str) -> dict[str, Any]:
    """Delete an experiment; its runs stay, ungrouped.

    Raises:
        NotFoundError: no such experiment.
    """
    with ws.session() as s:
        exp = _find_experiment(s, name)
        runs = _runs_of(s, exp)
        for run in runs:
            run.experiment_id = None
        s.flush()
        s.delete(exp)
        return {"deleted": exp.name, "ungrouped_runs": [r.id for r in runs]}


def add_runs(
    ws: Workspace, name: str, run_ids: Sequence[str], *, move: bool = False
) -> dict[str, Any]:
    """Put runs into an experiment. A run belongs to at most one experiment.

    Args:
        ws: The workspace.
        name: The experiment.
        run_ids: Run ids (or ``latest``).
        move: Take runs out of the experiment they are in; without it such runs are refused.

    Returns:
        ``{"experiment", "added", "already", "moved": {run: from experiment}}``.

    Raises:
        NotFoundError: no such experiment or run (nothing is changed).
        InvalidArgumentError: a run is in another experiment and ``move`` is False.
    """
    with ws.session() as s:
        exp = _find_experiment(s, name)
        runs = _get_runs(s, run_ids)
        others = _experiment_names(s, (r.experiment_id for r in runs if r.experiment_id != exp.id))
        if others and not move:
            run = next(r for r in runs if r.experiment_id in others)
            other = others[run.experiment_id] if run.experiment_id is not None else ""
            raise InvalidArgumentError(
                f"run {run.id} is in experiment {other!r}; a run belongs to one experiment: "
                f"remove it there first, or move it (--move)"
            )
        added, already, moved = [], [], {}
        for run in runs:
            if run.experiment_id == exp.id:
                already.append(run.id)
                continue
            if run.experiment_id is not None:
                moved[run.id] = others[run.experiment_id]
            run.experiment_id = exp.id
            added.append(run.id)
        return {"experiment": exp.name, "added": added, "already": already, "moved": moved}


def remove_runs(ws: Workspace, name: str, run_ids: Sequence[str]) -> dict[str, Any]:
    """Take runs out of an experiment (the runs stay, ungrouped).

    Raises:
        NotFoundError: no such experiment or run.
        InvalidArgumentError: a run is not in this experiment (nothing is changed).
    """
    with ws.session() as s:
        exp = _find_experiment(s, name)
        runs = _get_runs(s, run_ids)
        for run in runs:
            if run.experiment_id != exp.id:
                raise InvalidArgumentError(
                    f"run {run.id} is not in experiment {exp.name!r}; see "
                    f"`outpost experiments show {exp.name}`"
                )
        for run in runs:
            run.experiment_id = None
        return {"experiment": exp.name, "removed": [r.id for r in runs]}


# ---- run annotations -------------------------------------------------------------------


def star_run(ws: Workspace, run: str, starred: bool = True) -> dict[str, Any]:
    """Star (or unstar) a run.

    Raises:
        NotFoundError: no such run.
    """
    with ws.session() as s:
        row = _get_run(s, run)
        row.starred = bool(starred)
        return {"run": row.id, "starred": row.starred}


def set_notes(ws: Workspace, run: str, markdown: str | None) -> dict[str, Any]:
    """Replace a run's markdown notes; blank text clears them.

    Raises:
        NotFoundError: no such run.
        InvalidArgumentError: the notes are over 64 KiB (UTF-8).
    """
    with ws.session() as s:
        row = _get_run(s, run)
        row.notes = _check_text(markdown, f"the notes of run {row.id}")
        return {"run": row.id, "notes": row.notes}


def add_tags(ws: Workspace, run: str, tags: Sequence[str]) -> dict[str, Any]:
    """Add tags to a run (case-preserving; a tag it has in any case is not added twice).

    Raises:
        NotFoundError: no such run.
        InvalidArgumentError: a bad tag, or the run would have more than 64 tags.
    """
    wanted = check_tags(tags)
    with ws.session() as s:
        row = _get_run(s, run)
        current = check_tags(str(t) for t in (row.tags or []))
        merged = check_tags([*current, *wanted])
        if len(merged) > MAX_TAGS:
            raise InvalidArgumentError(
                f"run {row.id} would have {len(merged)} tags, over the limit of {MAX_TAGS}; "
                "remove some first"
            )
        row.tags = merged
        have = {t.lower() for t in current}
        return {
            "run": row.id,
            "tags": merged,
            "added": [t for t in wanted if t.lower() not in have],
        }


def remove_tags(ws: Workspace, run: str, tags: Sequence[str]) -> dict[str, Any]:
    """Remove tags from a run, ignoring case; tags it does not have are left out of ``removed``.

    Raises:
        NotFoundError: no such run.
        InvalidArgumentError: a bad tag.
    """
    unwanted = {t.lower() for t in check_tags(tags)}
    with ws.session() as s:
        row = _get_run(s, run)
        current = [str(t) for t in (row.tags or [])]
        row.tags = [t for t in current if t.lower() not in unwanted]
        return {
            "run": row.id,
            "tags": row.tags,
            "removed": [t for t in current if t.lower() in unwanted],
        }


# ---- search ----------------------------------------------------------------------------


class MetricFilter:
    """``KEY OP VALUE`` on a run's final metrics, e.g. ``metrics/mAP50(B)>=0.5``."""

    __slots__ = ("key", "op", "value")

    def __init__(self, key: str, op: str, value: float) -> None:
        self.key, self.op, self.value = key, op, value

    def matches(self, metrics: dict[str, Any]) -> bool:
        """True when the run reports the key and its value passes (a missing key fails)."""
        value = _number(metrics.get(self.key))
        return value is not None and _OPS[self.op](value, self.value)

    def __repr__(self) -> str:
        return f"MetricFilter({self.key!r} {self.op} {self.value!r})"


def parse_metric_filter(text: str) -> MetricFilter:
    """Parse ``KEY OP VALUE`` with OP one of ``>``, ``>=``, ``<``, ``<=``, ``=`` (or ``==``).

    Raises:
        InvalidArgumentError: no operator, an unknown operator, or a value that is not a number.
    """
    m = _FILTER_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise InvalidArgumentError(
            f"metric filter {text!r} is not KEY OP VALUE; write e.g. 'metrics/mAP50(B)>=0.5'"
        )
    key, op, raw = m.group("key").strip(), m.group("op"), m.group("value").strip()
    if op not in _OPS:
        raise InvalidArgumentError(
            f"metric filter {text!r} has an unknown operator {op!r}; use >, >=, <, <= or ="
        )
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgumentError(
            f"metric filter {text!r} compares with {raw!r}, which is not a number; "
            "write e.g. 'metrics/mAP50(B)>=0.5'"
        ) from None
    if not math.isfinite(value):
        raise InvalidArgumentError(f"metric filter {text!r} needs a finite number")
    return MetricFilter(key, op, value)


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


def search_runs(
    ws: Workspace,
    *,
    text: str | None = None,
    status: str | None = None,
    experiment: str | None = None,
    tags: Sequence[str] | None = None,
    starred: bool | None = None,
    model: str | None = None,
    framework: str | None = None,
    task: str | None = None,
    dataset: str | None = None,
    metric_filters: Sequence[str] | None = None,
    sort: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Runs that pass every filter given, newest first unless ``sort`` says otherwise.

    Args:
        ws: The workspace.
        text: Case-insensitive substring of the run id, model, notes, a tag or the
            experiment's name.
        status: queued, running, completed, failed, cancelled or orphaned.
        experiment: Only runs of this experiment.
        tags: Only runs that have every one of these tags (ignoring case).
        starred: True for starred runs only, False for unstarred only.
        model: Case-insensitive substring of the model (``yolo11n``).
        framework: The trainer (``ultralytics``).
        task: detect, segment, classify or pose.
        dataset: ``NAME`` or ``NAME@VERSION`` (a version number or tag).
        metric_filters: ``KEY OP VALUE`` strings on the final metrics (see
            :func:`parse_metric_filter`); a run without the key is left out.
        sort: ``created_at`` or a metric key; a leading ``-`` sorts descending. Runs
            without the metric come last either way.
        limit: At most this many runs.

    Returns:
        One row per run: id, status, framework, task, model, dataset, version, experiment,
        starred, tags, notes (first line), final_metrics, primary_metric, created_at,
        finished_at.

    Raises:
        InvalidArgumentError: a bad status, tag, metric filter or limit.
        NotFoundError: an unknown experiment or dataset.
    """
    filters = [parse_metric_filter(f) for f in metric_filters or []]
    wanted_tags = {t.lower() for t in check_tags(tags or [])}
    if status is not None and status not in _STATUSES:
        raise InvalidArgumentError(
            f"status {status!r} is not one of {', '.join(_STATUSES)}; choose one of them"
        )
    if limit is not None and limit < 1:
        raise InvalidArgumentError(f"limit {limit} must be 1 or more")
    descending, sort_key = True, "created_at"
    if sort:
        descending, sort_key = sort.startswith("-"), sort.lstrip("-").strip()
        if not sort_key:
            raise InvalidArgumentError(
                f"sort {sort!r} names no key; use created_at or a metric key, '-' for descending"
            )
    with ws.session() as s:
        query = select(TrainingRun).outerjoin(
            Experiment, Experiment.id == TrainingRun.experiment_id
        )
        if status is not None:
            query = query.where(TrainingRun.status == status)
        if experiment is not None:
            query = query.where(TrainingRun.experiment_id == _find_experiment(s, experiment).id)
        if starred is not None:
            query = query.where(TrainingRun.starred == bool(starred))
        if model:
            query = query.where(func.lower(TrainingRun.model).like(_like(model), escape="\\"))
        if framework:
            query = query.where(TrainingRun.framework == framework)
        if task:
            query = query.where(TrainingRun.task == task)
        if dataset:
            query = _filter_dataset(s, query, dataset)
        if text:
            pattern = _like(text)
            query = query.where(
                or_(
                    func.lower(TrainingRun.id).like(pattern, escape="\\"),
                    func.lower(TrainingRun.model).like(pattern, escape="\\"),
                    func.lower(func.coalesce(TrainingRun.notes, "")).like(pattern, escape="\\"),
                    func.lower(func.coalesce(Experiment.name, "")).like(pattern, escape="\\"),
                    func.lower(cast(TrainingRun.tags, String)).like(pattern, escape="\\"),
                )
            )
        order = TrainingRun.created_at.desc() if descending else TrainingRun.created_at
        tiebreak = TrainingRun.id.desc() if descending else TrainingRun.id
        runs = list(s.scalars(query.order_by(order, tiebreak)))
        if text:
            # SQL matched the tag list as JSON text; keep the runs whose match is a real one.
            names = _experiment_names(s, (r.experiment_id for r in runs))
            runs = [r for r in runs if _text_hit(r, text.lower(), names)]
        if wanted_tags:
            runs = [r for r in runs if wanted_tags <= {str(t).lower() for t in r.tags or []}]
        if filters:
            runs = [r for r in runs if all(f.matches(r.final_metrics or {}) for f in filters)]
        if sort_key != "created_at":
            runs = _sort_by_metric(runs, sort_key, descending)
        if limit is not None:
            runs = runs[:limit]
        return _rows(s, runs)


def _text_hit(run: TrainingRun, needle: str, experiments: dict[int, str]) -> bool:
    fields = [run.id, run.model, run.notes or "", *(str(t) for t in run.tags or [])]
    if run.experiment_id is not None:
        fields.append(experiments.get(run.experiment_id, ""))
    return any(needle in f.lower() for f in fields)


def _sort_by_metric(runs: list[TrainingRun], key: str, descending: bool) -> list[TrainingRun]:
    have = [r for r in runs if _number((r.final_metrics or {}).get(key)) is not None]
    missing = [r for r in runs if _number((r.final_metrics or {}).get(key)) is None]
    have.sort(key=lambda r: _number(r.final_metrics[key]) or 0.0, reverse=descending)
    return have + missing


def _filter_dataset(s: Session, query: Any, ref: str) -> Any:
    from desktop_app.core.datasets import find_version, split_ref

    name, version = split_ref(ref)
    if version is not None:
        _, row = find_version(s, name, version)
        return query.where(TrainingRun.dataset_version_id == row.id)
    ds = s.scalar(select(Dataset).where(Dataset.name == name))
    if ds is None:
        raise NotFoundError(f"no dataset named {name!r}; list datasets with `outpost dataset list`")
    ids = select(DatasetVersion.id).where(DatasetVersion.dataset_id == ds.id)
    return query.where(TrainingRun.dataset_version_id.in_(ids))


# ---- compare ---------------------------------------------------------------------------


def compare_runs(ws: Workspace, run_ids: Sequence[str]) -> dict[str, Any]:
    """Runs side by side: parameters, data, final metrics, curves and per-class results.

    Returns:
        ``runs``: the rows of :func:`search_runs` (dataset and version of each) in the order
        asked; ``params``: ``{"differing": {key: {run: value}}, "shared": {key: value}}`` (a
        key some runs lack differs, the lacking ones showing None); ``final_metrics``:
        ``{key: {"values": {run: value or None}, "best_run", "direction"}}`` (``best_run``
        None for unranked keys); ``curves``: for every key any run reported per epoch,
        ``{"direction", "series": {run: {"epochs", "values", "last", "best", "best_epoch"}}}``
        (runs without the key are absent from ``series``); ``validation``: when any run has
        end-of-run results, ``{"primary_metric": {run: {...}}, "per_class": {class:
        {run: {metric: value}}}}``, else None.

    Raises:
        NotFoundError: an unknown run.
        InvalidArgumentError: fewer than two different runs.
    """
    with ws.session() as s:
        runs = _get_runs(s, run_ids)
        if len(runs) < 2:
            raise InvalidArgumentError(
                "name at least two different runs to compare; see outpost runs list"
            )
        ids = [r.id for r in runs]
        curves: dict[str, dict[str, Any]] = {}
        for m in s.scalars(
            select(RunMetric)
            .where(RunMetric.run_id.in_(ids))
            .order_by(RunMetric.key, RunMetric.run_id, RunMetric.epoch)
        ):
            entry = curves.setdefault(m.key, {"direction": metric_direction(m.key), "series": {}})
            series = entry["series"].setdefault(m.run_id, {"epochs": [], "values": []})
            series["epochs"].append(m.epoch)
            series["values"].append(m.value)
        for entry in curves.values():
            entry["series"] = {rid: entry["series"][rid] for rid in ids if rid in entry["series"]}
            for series in entry["series"].values():
                _summarize_series(series, entry["direction"])
        return {
            "runs": _rows(s, runs),
            "params": _param_diff(runs),
            "final_metrics": _metrics_side_by_side(runs),
            "curves": curves,
            "validation": _validation_side_by_side(runs),
        }


def _summarize_series(series: dict[str, Any], direction: str | None) -> None:
    values: list[float] = series["values"]
    epochs: list[int] = series["epochs"]
    series["last"] = values[-1] if values else None
    finite = [(v, e) for v, e in zip(values, epochs, strict=True) if math.isfinite(v)]
    if direction is None or not finite:
        series["best"], series["best_epoch"] = None, None
        return
    pick = min if direction == "min" else max
    best_value, best_epoch = pick(finite, key=lambda pair: pair[0])
    series["best"], series["best_epoch"] = best_value, best_epoch


def _param_diff(runs: Sequence[TrainingRun]) -> dict[str, dict[str, Any]]:
    missing = object()
    keys = sorted({k for r in runs for k in (r.params or {})})
    differing: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    for key in keys:
        values = [(r.params or {}).get(key, missing) for r in runs]
        first = values[0]
        if first is not missing and all(v == first and v is not missing for v in values):
            shared[key] = first
        else:
            differing[key] = {
                r.id: (None if v is missing else v) for r, v in zip(runs, values, strict=True)
            }
    return {"differing": differing, "shared": shared}


def _metrics_side_by_side(runs: Sequence[TrainingRun]) -> dict[str, dict[str, Any]]:
    keys = sorted({k for r in runs for k in (r.final_metrics or {})})
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        direction = metric_direction(key)
        values = {r.id: _number((r.final_metrics or {}).get(key)) for r in runs}
        best_run: str | None = None
        if direction is not None:
            for rid, value in values.items():
                if value is None:
                    continue
                best = values[best_run] if best_run is not None else None
                if best is None or _better(direction, value, best):
                    best_run = rid
        out[key] = {"values": values, "best_run": best_run, "direction": direction}
    return out


def _validation_side_by_side(runs: Sequence[TrainingRun]) -> dict[str, Any] | None:
    if not any(r.validation for r in runs):
        return None
    primary: dict[str, Any] = {}
    per_class: dict[str, dict[str, Any]] = {}
    for run in runs:
        validation = run.validation or {}
        if isinstance(validation.get("primary_metric"), dict):
            primary[run.id] = validation["primary_metric"]
        for entry in validation.get("per_class") or []:
            if not isinstance(entry, dict) or "class" not in entry:
                continue
            values = {k: v for k, v in entry.items() if k != "class"}
            per_class.setdefault(str(entry["class"]), {})[run.id] = values
    return {"primary_metric": primary, "per_class": per_class}
