"""Tables of the metadata store. Changes to them go with a migration in ``migrations.py``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: UTCDateTime,
    }


class Meta(Base):
    __tablename__ = "edgeops_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset", order_by="DatasetVersion.version"
    )


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        UniqueConstraint("dataset_id", "sha256"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(255))
    rows: Mapped[int] = mapped_column(BigInteger)
    schema: Mapped[list[Any]] = mapped_column(JSON)
    profile: Mapped[dict[str, Any]] = mapped_column(JSON)
    message: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(128), default="")
    origin: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dataset: Mapped[Dataset] = relationship(back_populates="versions", lazy="joined")

    @property
    def ref(self) -> str:
        return f"{self.dataset.name}@{self.version}"


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    kind: Mapped[str] = mapped_column(String(32), default="train")
    status: Mapped[str] = mapped_column(String(16), default="running")
    reason: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    seeds: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    config_name: Mapped[str] = mapped_column(String(255), default="")
    config_text: Mapped[str] = mapped_column(Text, default="")
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id"), nullable=True
    )
    feature_ref: Mapped[str] = mapped_column(String(160), default="")
    packages: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    git_commit: Mapped[str] = mapped_column(String(64), default="")
    git_dirty: Mapped[bool] = mapped_column(Boolean, default=False)
    author: Mapped[str] = mapped_column(String(128), default="")
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dataset_version: Mapped[DatasetVersion | None] = relationship(lazy="joined")


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version"
    )
    aliases: Mapped[list[Alias]] = relationship(back_populates="model", order_by="Alias.alias")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int] = mapped_column(Integer)
    flavor: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id"), nullable=True
    )
    feature_ref: Mapped[str] = mapped_column(String(160), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    labels: Mapped[list[Any]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    model: Mapped[Model] = relationship(back_populates="versions", lazy="joined")
    run: Mapped[Run | None] = relationship(lazy="joined")
    dataset_version: Mapped[DatasetVersion | None] = relationship(lazy="joined")
    variants: Mapped[list[Variant]] = relationship(
        back_populates="model_version", order_by="Variant.id", lazy="selectin"
    )

    @property
    def ref(self) -> str:
        return f"{self.model.name}@{self.version}"


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    alias: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    model: Mapped[Model] = relationship(back_populates="aliases")
    model_version: Mapped[ModelVersion] = relationship(lazy="joined")


class AliasEvent(Base):
    """Every alias move, so that a move can be seen and undone."""

    __tablename__ = "alias_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    alias: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    author: Mapped[str] = mapped_column(String(128), default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Variant(Base):
    """One artifact of a model version: the original model, or a TFLite/ONNX/C form of it."""

    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("version_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    name: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    model_version: Mapped[ModelVersion] = relationship(back_populates="variants")


# --- schema 2: feature store and pipeline step cache ------------------------------------


class FeatureSet(Base):
    __tablename__ = "feature_sets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    current_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list[FeatureVersion]] = relationship(
        back_populates="feature_set", order_by="FeatureVersion.version", lazy="selectin"
    )


class FeatureVersion(Base):
    __tablename__ = "feature_versions"
    __table_args__ = (
        UniqueConstraint("set_id", "version"),
        UniqueConstraint("set_id", "definition_hash"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("feature_sets.id"))
    version: Mapped[int] = mapped_column(Integer)
    definition_hash: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    columns: Mapped[list[Any]] = mapped_column(JSON, default=list)
    author: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    feature_set: Mapped[FeatureSet] = relationship(back_populates="versions", lazy="joined")

    @property
    def ref(self) -> str:
        return f"{self.feature_set.name}@{self.version}"


class FeatureEvent(Base):
    """Every change of a feature set's current version: added, re-added or reverted."""

    __tablename__ = "feature_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("feature_sets.id"))
    action: Mapped[str] = mapped_column(String(16))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int] = mapped_column(Integer)
    author: Mapped[str] = mapped_column(String(128), default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Materialization(Base):
    """A feature table computed once for (feature version, data version, rows fitted on)."""

    __tablename__ = "materializations"
    __table_args__ = (UniqueConstraint("feature_version_id", "dataset_version_id", "fit_on"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feature_version_id: Mapped[int] = mapped_column(ForeignKey("feature_versions.id"))
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    fit_on: Mapped[str] = mapped_column(String(128))
    fitted: Mapped[dict[str, Any]] = mapped_column(JSON)
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(BigInteger)
    n_features: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    feature_version: Mapped[FeatureVersion] = relationship(lazy="joined")
    dataset_version: Mapped[DatasetVersion] = relationship(lazy="joined")


class StepCache(Base):
    """Outputs of pipeline steps by the hash of their inputs, so unchanged steps are reused."""

    __tablename__ = "step_cache"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64), default="")
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


SCHEMA_2_TABLES = (
    "feature_sets",
    "feature_versions",
    "feature_events",
    "materializations",
    "step_cache",
)


# --- schema 3: fleet, deployments and rollouts ---------------------------------------------


class Device(Base):
    """A device as last reported on its state topic, plus the server's own tags."""

    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("fleet", "device_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(64))
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reported_tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceEvent(Base):
    __tablename__ = "device_events"
    __table_args__ = (Index("ix_device_events_device_seq", "fleet", "device_id", "seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    rollout_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[float | None] = mapped_column(nullable=True)
    device_ts: Mapped[float] = mapped_column()
    at: Mapped[datetime] = mapped_column(default=utcnow)


class FleetSeq(Base):
    """The fleet's deployment sequence counter: every manifest gets the next number."""

    __tablename__ = "fleet_seq"
    fleet: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)


class Desired(Base):
    """The signed desired state last published for a device (kept to re-sign before expiry)."""

    __tablename__ = "desired"
    fleet: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    rollout_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_ref: Mapped[str] = mapped_column(String(200))
    variant: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    envelope: Mapped[dict[str, Any]] = mapped_column(JSON)
    expires_at: Mapped[float] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Rollout(Base):
    """A rollout: its plan, the engine's state, and operator requests waiting for the engine."""

    __tablename__ = "rollouts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64))
    model_ref: Mapped[str] = mapped_column(String(200))
    selector: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    targets: Mapped[dict[str, Any]] = mapped_column(JSON)  # device -> variant, previous model
    requests: Mapped[list[Any]] = mapped_column(JSON, default=list)
    lease_owner: Mapped[str] = mapped_column(String(64), default="")
    lease_until: Mapped[float] = mapped_column(default=0.0)
    author: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


SCHEMA_3_TABLES = ("devices", "device_events", "fleet_seq", "desired", "rollouts")


# --- schema 4: telemetry, samples, labels, alerts -------------------------------------------


class TelemetryWindow(Base):
    """One statistics window from one device, stored once per (device, boot, seq)."""

    __tablename__ = "telemetry_windows"
    __table_args__ = (UniqueConstraint("fleet", "device_id", "boot", "seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(64))
    boot: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    model_ref: Mapped[str] = mapped_column(String(200))
    variant: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    start: Mapped[float] = mapped_column()
    end: Mapped[float] = mapped_column()
    count: Mapped[int] = mapped_column(BigInteger)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sample(Base):
    """A sampled prediction (raw input, model input, outputs) and its label when known."""

    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("fleet", "sample_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(64))
    sample_id: Mapped[str] = mapped_column(String(200))
    model_ref: Mapped[str] = mapped_column(String(200))
    variant: Mapped[str] = mapped_column(String(64))
    ts: Mapped[float] = mapped_column()
    input: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    features: Mapped[list[Any]] = mapped_column(JSON, default=list)
    outputs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    predicted: Mapped[str] = mapped_column(String(128), default="")
    label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    labelled_at: Mapped[datetime | None] = mapped_column(nullable=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class IngestCounter(Base):
    """Messages the collector rejected or dropped, by reason (what 'counted' means)."""

    __tablename__ = "ingest_counters"
    fleet: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class Alert(Base):
    """A drift or skew alert: opened when a metric crosses its threshold, closed with
    hysteresis; retraining listens to these."""

    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64))
    model_ref: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(200))  # "fleet", "device:ID", "tag:T"
    metric: Mapped[str] = mapped_column(String(64))  # psi, js, ks, chi2_p, agreement, ...
    subject: Mapped[str] = mapped_column(String(200))  # feature name, "outputs", ...
    value: Mapped[float] = mapped_column()
    threshold: Mapped[float] = mapped_column()
    samples: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default="open")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(nullable=True)


SCHEMA_4_TABLES = ("telemetry_windows", "samples", "ingest_counters", "alerts")


class RetrainPolicy(Base):
    """A model's retraining policy (``edgeops retrain policy set``): its YAML and the parsed
    document."""

    __tablename__ = "retrain_policies"
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    doc: Mapped[dict[str, Any]] = mapped_column(JSON)
    author: Mapped[str] = mapped_column(String(128), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RetrainDecision(Base):
    """One retraining: what triggered it, the champion and challenger compared, what was
    decided and why, and the canary rollout it started (``models lineage`` shows these)."""

    __tablename__ = "retrain_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128), index=True)
    trigger: Mapped[str] = mapped_column(String(32))  # alert, new_data, samples, schedule, manual
    cause: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    champion_ref: Mapped[str] = mapped_column(String(200))
    challenger_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    data_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    comparison: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    decision: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # done, canary, promoted, rolled_back
    reason: Mapped[str] = mapped_column(Text, default="")
    rollout_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


SCHEMA_6_TABLES = ("retrain_policies", "retrain_decisions")


class ApiToken(Base):
    """A token of the HTTP API (``edgeops tokens create``): only the SHA-256 of the token is
    stored, never the token. A name belongs to one unrevoked token at a time."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # viewer, operator, admin
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


Index(
    "ux_api_tokens_live_name",
    ApiToken.name,
    unique=True,
    sqlite_where=ApiToken.revoked_at.is_(None),
    postgresql_where=ApiToken.revoked_at.is_(None),
)


class AuditEntry(Base):
    """Who changed what, when: rollouts, alias moves, retraining decisions, keys, tokens.
    Written in the transaction of the change it describes (see ``edgeops.audit``)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))  # CLI user, or the API token's name
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. alias.move
    subject: Mapped[str] = mapped_column(String(200))  # e.g. wrist@production, r-1a2b3c4d
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


SCHEMA_7_TABLES = ("api_tokens", "audit_log")
