"""The workspace schema (SQLAlchemy 2 ORM). Every change ships as an alembic migration."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Blob(Base):
    """A content-addressed file under ``blobs/``."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128), unique=True)
    task: Mapped[str] = mapped_column(String(32), default="detect")
    class_names: Mapped[list[Any]] = mapped_column(JSON, default=list)
    source_format: Mapped[str] = mapped_column(String(32))
    # The dataset's own split setting (method, fractions, seed, manual assignments); None
    # means the default. A training job's override wins over it.
    split_settings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset", order_by="DatasetVersion.number"
    )


class DatasetVersion(Base):
    """An immutable snapshot: items, split and class names, identified by a content hash.

    ``number`` 0 is the dataset's draft: the one mutable working copy that edits, class
    changes and added images go to, made on first edit from the latest version. Snapshots
    turn the draft into the next numbered version (or reuse one with the same content hash).
    """

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    class_names: Mapped[list[Any]] = mapped_column(JSON, default=list)
    split_method: Mapped[str] = mapped_column(String(32), default="auto")
    split_seed: Mapped[int] = mapped_column(Integer, default=42)
    val_fraction: Mapped[float] = mapped_column(Float, default=0.2)
    test_fraction: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    num_images: Mapped[int] = mapped_column(Integer, default=0)
    num_annotations: Mapped[int] = mapped_column(Integer, default=0)
    # Problems a lenient import skipped (one line each); part of the version's QA report.
    problems: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")
    # How it came to be: import | snapshot | training | restore | draft
    origin: Mapped[str] = mapped_column(String(16), default="import", server_default="import")
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    dataset: Mapped[Dataset] = relationship(back_populates="versions")
    items: Mapped[list[DatasetItem]] = relationship(
        back_populates="version", order_by="DatasetItem.file_name"
    )

    @property
    def label(self) -> str:
        return "draft" if self.number == 0 else f"v{self.number}"

    @property
    def is_draft(self) -> bool:
        return self.number == 0


class DatasetTag(Base):
    """A user's name for one version of a dataset ("stable"); moving a tag re-points it."""

    __tablename__ = "dataset_tags"
    __table_args__ = (UniqueConstraint("dataset_id", "tag"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    tag: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnnotationEdit(Base):
    """One undoable change to a dataset's draft, with everything needed to revert it.

    ``changes`` holds ``{"items": {item_id: {"before": [boxes, status], "after": [...]}},
    "class_names": {"before": [...], "after": [...]}}`` (either key may be absent).
    """

    __tablename__ = "annotation_edits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    op: Mapped[str] = mapped_column(String(32))
    summary: Mapped[str] = mapped_column(Text)
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    undone: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetItem(Base):
    """One image of a version: its blob, size, split and boxes (class, cx, cy, w, h; normalised)."""

    __tablename__ = "dataset_items"
    __table_args__ = (UniqueConstraint("version_id", "file_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # no index of its own: the unique (version_id, file_name) index serves lookups by version
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"))
    file_name: Mapped[str] = mapped_column(String(512))
    image_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(8))
    label_status: Mapped[str] = mapped_column(String(16), default="labelled")
    boxes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    version: Mapped[DatasetVersion] = relationship(back_populates="items")


class Experiment(Base):
    """A named group of runs (e.g. "backbone sweep"), with a markdown description."""

    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    framework: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(
        String(16), default="queued"
    )  # queued|running|completed|failed|cancelled
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    device: Mapped[str | None] = mapped_column(String(64), nullable=True)
    run_dir: Mapped[str] = mapped_column(Text)
    best_checkpoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    final_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    experiment_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL"), nullable=True, index=True
    )
    starred: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)  # markdown
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")
    # End-of-run validation: per-class AP/precision/recall, confusion matrix, PR curves,
    # plot and sample-prediction paths (the trainer's "validation" event).
    validation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    resumed_from: Mapped[str | None] = mapped_column(String(32), nullable=True)
    metrics: Mapped[list[RunMetric]] = relationship(order_by="(RunMetric.epoch, RunMetric.key)")


class RunMetric(Base):
    """One metric value of one epoch; keys are whatever the trainer reported."""

    __tablename__ = "run_metrics"
    __table_args__ = (UniqueConstraint("run_id", "epoch", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(
        ForeignKey("training_runs.id", ondelete="CASCADE"), index=True
    )
    epoch: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)


class Job(Base):
    """A unit of long work run by an executor (a child process now, a cluster job later).

    ``status``: queued | running | completed | failed | cancelled | orphaned. ``resource``
    is what it occupies ("cuda:0", "cpu"); one job per resource runs at a time by default.
    ``pid`` and ``pid_started`` (the process's start time, as the OS reports it) let a
    restarted desktop re-attach to a child that still runs, and tell a reused pid apart.
    ``events_path`` is the child's JSON-lines event file; ``events_offset`` how far the
    recorder has read it.
    """

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # train | evaluate | predict | export
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    executor: Mapped[str] = mapped_column(String(32), default="local")
    resource: Mapped[str] = mapped_column(String(32), default="cpu")
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    run_id: Mapped[str | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid_started: Mapped[str | None] = mapped_column(String(32), nullable=True)
    external_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    events_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    events_offset: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Evaluation(Base):
    """A run (or one of its exports) measured on a dataset version's split."""

    __tablename__ = "evaluations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(
        ForeignKey("training_runs.id", ondelete="CASCADE"), index=True
    )
    export_id: Mapped[str | None] = mapped_column(
        ForeignKey("exports.id", ondelete="SET NULL"), nullable=True
    )
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    split: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))  # completed | failed
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    per_class: Mapped[list[Any]] = mapped_column(JSON, default=list)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # confusion, curves
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PredictionSet(Base):
    """Predictions of a model over a folder or a dataset version, kept as a JSON-lines file."""

    __tablename__ = "prediction_sets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    export_id: Mapped[str | None] = mapped_column(
        ForeignKey("exports.id", ondelete="SET NULL"), nullable=True
    )
    source: Mapped[str] = mapped_column(Text)  # a folder path or "dataset@vN"
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="SET NULL"), nullable=True
    )
    num_images: Mapped[int] = mapped_column(Integer, default=0)
    num_detections: Mapped[int] = mapped_column(Integer, default=0)
    path: Mapped[str] = mapped_column(Text)  # workspace-relative JSON-lines file
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Export(Base):
    __tablename__ = "exports"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(
        ForeignKey("training_runs.id", ondelete="CASCADE"), index=True
    )
    format: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(24))  # completed|failed
    package_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    package_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Device(Base):
    """A device agent, keyed by its stable agent id."""

    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    platform: Mapped[str | None] = mapped_column(String(64), nullable=True)
    arch: Mapped[str | None] = mapped_column(String(32), nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Deployment(Base):
    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    export_id: Mapped[str] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # installed|failed
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # deploy | activate | deactivate | rollback | uninstall (the history of a model on a device)
    action: Mapped[str] = mapped_column(String(16), default="deploy", server_default="deploy")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeviceBenchmark(Base):
    """An on-device benchmark of one export: the per-device latency table."""

    __tablename__ = "device_benchmarks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    export_id: Mapped[str | None] = mapped_column(
        ForeignKey("exports.id", ondelete="SET NULL"), nullable=True, index=True
    )
    model_name: Mapped[str] = mapped_column(String(128))
    format: Mapped[str] = mapped_column(String(32))
    runtime: Mapped[str | None] = mapped_column(String(64), nullable=True)
    runs: Mapped[int] = mapped_column(Integer)
    p50_ms: Mapped[float] = mapped_column(Float)
    p90_ms: Mapped[float] = mapped_column(Float)
    p99_ms: Mapped[float] = mapped_column(Float)
    mean_ms: Mapped[float] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UsageSample(Base):
    """Latency and request counts a device reported for one model at one time."""

    __tablename__ = "usage_samples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    format: Mapped[str] = mapped_column(String(32))
    runtime: Mapped[str | None] = mapped_column(String(64), nullable=True)
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    p50_ms: Mapped[float] = mapped_column(Float)
    p90_ms: Mapped[float] = mapped_column(Float)
    p99_ms: Mapped[float] = mapped_column(Float)
    mean_ms: Mapped[float] = mapped_column(Float)
    # Requests per second over the device's last minute when the sample was taken (0005).
    throughput_rps: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    collected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
