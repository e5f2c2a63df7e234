"""Put the run's model and data on local disk (or pass a Hugging Face id through) before an engine starts.

The model is a Hugging Face id, an S3 prefix, or another run's checkpoint (``spec.model.fromRun``, resolved by the
operator into ``status.source.uri``). SFT demonstrations (promptKey + responseKey) are staged as conversations.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from loka_api import Algorithm, TrainingRunSpec
from loka_trainer.sft_data import check_conversations, demonstrations_to_conversations
from loka_trainer.source_model import stage_checkpoint_as_model
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


def stage_data(spec: TrainingRunSpec, uri: str, dest: Path, store: ObjectStore) -> Path:
    """One parquet file; for SFT, checked against the columns the spec names (demonstrations become conversations)."""
    data = spec.data
    if spec.algorithm is not Algorithm.SFT:
        return stage_file(uri, dest, store)
    if data.messages_key is not None:
        check_conversations(stage_file(uri, dest, store), messages_key=data.messages_key, label=uri)
        return dest
    if data.response_key is None:  # the CRD requires one of them for sft
        msg = "spec.data: algorithm sft needs data.responseKey or data.messagesKey"
        raise ValueError(msg)
    source = stage_file(uri, dest.with_name(f"{dest.stem}.demonstrations.parquet"), store)
    return demonstrations_to_conversations(
        source, dest, prompt_key=data.prompt_key, response_key=data.response_key, label=uri
    )


def model_uri(spec: TrainingRunSpec, source_uri: str | None) -> str:
    """What to stage as the model: spec.model.uri, or the source run's checkpoint the operator resolved."""
    if spec.model.uri is not None:
        return spec.model.uri
    if not source_uri:
        name = spec.model.from_run.name if spec.model.from_run else "?"
        msg = (
            f"spec.model.fromRun names run {name!r} but status.source has no checkpoint URI "
            "(the operator records it before it launches the run)"
        )
        raise ValueError(msg)
    return source_uri


def stage_inputs(
    spec: TrainingRunSpec,
    work_dir: Path,
    store: ObjectStore,
    *,
    source_uri: str | None = None,
    cancel: threading.Event | None = None,
) -> StagedInputs:
    """The model, the training and the validation data under ``work_dir``; ``source_uri`` is status.source.uri."""
    uri = model_uri(spec, source_uri)
    if spec.model.from_run is not None:
        model = str(stage_checkpoint_as_model(uri, work_dir / "model", store, cancel=cancel))
    else:
        model = stage_model(uri, work_dir / "model", store, cancel=cancel)
    train = stage_data(spec, spec.data.train, work_dir / "data" / "train.parquet", store)
    validation = None
    if spec.data.validation:
        validation = stage_data(spec, spec.data.validation, work_dir / "data" / "validation.parquet", store)
    return StagedInputs(model=model, train_files=train, val_files=validation)


def parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    rows: int = pq.ParquetFile(path).metadata.num_rows
    return rows
