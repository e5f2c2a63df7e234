"""Put the run's model and data on local disk (or pass a Hugging Face id through) before an engine starts."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from loka_api import TrainingRunSpec
from loka_trainer.storage import ObjectStore, S3Uri

log = logging.getLogger(__name__)

HF_SCHEME = "hf://"


@dataclass(frozen=True)
class StagedInputs:
    model: str  # a local folder, or a Hugging Face id that the engine loads itself (with $HF_TOKEN when set)
    train_files: Path
    val_files: Path | None


def stage_model(uri: str, dest: Path, store: ObjectStore, *, cancel: threading.Event | None = None) -> str:
    if uri.startswith(HF_SCHEME):
        return uri.removeprefix(HF_SCHEME)
    source = S3Uri.parse(uri)
    files = store.download_prefix(source, dest, cancel=cancel)
    log.info("staged model %s (%d files) into %s", source, len(files), dest)
    return str(dest)


def stage_file(uri: str, dest: Path, store: ObjectStore) -> Path:
    source = S3Uri.parse(uri)
    if not store.exists(source):
        msg = f"{uri} does not exist"
        raise FileNotFoundError(msg)
    store.download_files([(source, dest)])
    return dest


def stage_inputs(
    spec: TrainingRunSpec, work_dir: Path, store: ObjectStore, *, cancel: threading.Event | None = None
) -> StagedInputs:
    model = stage_model(spec.model.uri, work_dir / "model", store, cancel=cancel)
    train = stage_file(spec.data.train, work_dir / "data" / "train.parquet", store)
    validation = None
    if spec.data.validation:
        validation = stage_file(spec.data.validation, work_dir / "data" / "validation.parquet", store)
    return StagedInputs(model=model, train_files=train, val_files=validation)


def parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    rows: int = pq.ParquetFile(path).metadata.num_rows
    return rows
