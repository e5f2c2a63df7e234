"""Put the run's model and data on local disk (or pass a Hugging Face id through) before an engine starts.

The model is a Hugging Face id, an S3 prefix, or another run's checkpoint (``spec.model.fromRun``, resolved by the
operator into ``status.source.uri``). The data is staged in the shape the run's recipe trains on
(``Recipe.data_format``): prompts as they are, or conversations (demonstrations, promptKey + responseKey, become
conversations).
``builtin://`` inputs are built here instead of downloaded (loka_trainer.tiny): the same seed gives the same
model and data on every node and every attempt.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from loka_api import TrainingRunSpec
from loka_api.contract import BUILTIN_DATASETS, BUILTIN_MODELS, BUILTIN_SCHEME
from loka_api.recipes import DataFormat, recipe_for
from loka_api.storage import ObjectMissingError, ObjectStore, S3Uri
from loka_trainer.preferences import read_pairs, write_pairs_parquet
from loka_trainer.sft_data import check_conversations, demonstrations_to_conversations
from loka_trainer.source_model import stage_checkpoint_as_model

log = logging.getLogger(__name__)

HF_SCHEME = "hf://"
# builtin://<model> -> the size loka_trainer.tiny builds.
BUILTIN_MODEL_SIZES = dict(zip(BUILTIN_MODELS, ("tiny", "0.5b"), strict=True))
BUILTIN_TASKS = 1024
BUILTIN_VALIDATION_FRACTION = 1 / 16
_BUILT_MARK = ".loka-builtin"  # names what a folder was built from, so a rerun reuses it


@dataclass(frozen=True)
class StagedInputs:
    model: str  # a local folder, or a Hugging Face id that the engine loads itself (with $HF_TOKEN when set)
    train_files: Path
    val_files: Path | None


def _builtin_name(uri: str, field: str, accepted: tuple[str, ...]) -> str:
    name = uri.removeprefix(BUILTIN_SCHEME)
    if name not in accepted:
        msg = f"{field}: {uri!r} is not a built-in input (accepted: {', '.join(BUILTIN_SCHEME + a for a in accepted)})"
        raise ValueError(msg)
    return name


def _already_built(folder: Path, uri: str) -> bool:
    mark = folder / _BUILT_MARK
    return mark.is_file() and mark.read_text(encoding="utf-8") == uri


def build_builtin_model(uri: str, dest: Path) -> str:
    from loka_trainer.tiny import build_tiny_model

    size = BUILTIN_MODEL_SIZES[_builtin_name(uri, "spec.model.uri", BUILTIN_MODELS)]
    if not _already_built(dest, uri):
        build_tiny_model(dest, size=size)
        (dest / _BUILT_MARK).write_text(uri, encoding="utf-8")
        log.info("built %s (randomly initialised, nothing downloaded) into %s", uri, dest)
    return str(dest)


def build_builtin_data(uri: str, field: str, folder: Path, *, form: DataFormat = DataFormat.PROMPTS) -> Path:
    """Build the dataset's train and validation parquet files into ``folder``; return the one ``field`` names.
    As conversations the same tasks are demonstrations: a chat ``prompt`` and its worked ``response`` (responseKey).
    """
    from loka_api.dataset import TRAIN_FILE, VALIDATION_FILE, build_dataset
    from loka_trainer.tiny import write_sft_demonstrations, write_tasks

    _builtin_name(uri, field, BUILTIN_DATASETS)
    demonstrations = form is DataFormat.CONVERSATIONS
    built = folder / (uri.removeprefix(BUILTIN_SCHEME) + ("-sft" if demonstrations else ""))
    if not _already_built(built, uri):
        if demonstrations:
            write_sft_demonstrations(built, BUILTIN_TASKS, validation_fraction=BUILTIN_VALIDATION_FRACTION)
        else:
            tasks = write_tasks(built / "tasks.jsonl", BUILTIN_TASKS)
            build_dataset(tasks, built, validation_fraction=BUILTIN_VALIDATION_FRACTION, data_source="loka")
        (built / _BUILT_MARK).write_text(uri, encoding="utf-8")
    return built / (VALIDATION_FILE if field.endswith(".validation") else TRAIN_FILE)


def stage_model(uri: str, dest: Path, store: ObjectStore, *, cancel: threading.Event | None = None) -> str:
    if uri.startswith(HF_SCHEME):
        return uri.removeprefix(HF_SCHEME)
    if uri.startswith(BUILTIN_SCHEME):
        return build_builtin_model(uri, dest)
    source = S3Uri.parse(uri)
    files = store.download_prefix(source, dest, cancel=cancel)
    log.info("staged model %s (%d files) into %s", source, len(files), dest)
    return str(dest)


def stage_file(uri: str, dest: Path, store: ObjectStore) -> Path:
    source = S3Uri.parse(uri)
    if not store.exists(source):
        msg = f"{uri} does not exist"
        raise ObjectMissingError(msg)
    store.download_files([(source, dest)])
    return dest


def fetch_data(uri: str, field: str, dest: Path, store: ObjectStore, *, form: DataFormat = DataFormat.PROMPTS) -> Path:
    """The file at ``dest``, downloaded or (builtin://) built; the same path either way."""
    if uri.startswith(BUILTIN_SCHEME):
        shutil.copyfile(build_builtin_data(uri, field, dest.parent / "builtin", form=form), dest)
        return dest
    return stage_file(uri, dest, store)


def stage_conversations(spec: TrainingRunSpec, uri: str, field: str, dest: Path, store: ObjectStore) -> Path:
    """A column of conversations, checked; or demonstrations (promptKey + responseKey) made into one."""
    data, form = spec.data, DataFormat.CONVERSATIONS
    if data.messages_key is not None:
        check_conversations(fetch_data(uri, field, dest, store, form=form), messages_key=data.messages_key, label=uri)
        return dest
    if data.response_key is None:  # the CRD requires one of them
        msg = f"spec.data: algorithm {spec.algorithm} needs data.responseKey or data.messagesKey"
        raise ValueError(msg)
    source = fetch_data(uri, field, dest.with_name(f"{dest.stem}.demonstrations.parquet"), store, form=form)
    return demonstrations_to_conversations(
        source, dest, prompt_key=data.prompt_key, response_key=data.response_key, label=uri
    )


def stage_preferences(uri: str, dest: Path, store: ObjectStore) -> Path:
    """Preference pairs (an Evaluation's preferences.jsonl, or parquet with prompt, chosen and rejected) as parquet."""
    source = stage_file(uri, dest.with_name(f"{dest.stem}.preferences"), store)
    return write_pairs_parquet(read_pairs(source, label=uri), dest)


def stage_data(spec: TrainingRunSpec, uri: str, field: str, dest: Path, store: ObjectStore) -> Path:
    """One parquet file, in the shape the run's recipe trains on."""
    form = recipe_for(spec.algorithm).data_format
    if form is DataFormat.CONVERSATIONS:
        return stage_conversations(spec, uri, field, dest, store)
    if form is DataFormat.PREFERENCES:
        return stage_preferences(uri, dest, store)
    return fetch_data(uri, field, dest, store, form=form)


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


def train_data_uri(spec: TrainingRunSpec, train_data_uri: str | None) -> str:
    """What to stage as the training data: spec.data.train, or the Evaluation's preference pairs the operator
    resolved spec.data.fromEvaluation to (status.trainData.uri)."""
    if spec.data.train is not None:
        return spec.data.train
    if not train_data_uri:
        msg = (
            f"spec.data.fromEvaluation names Evaluation {spec.data.from_evaluation!r} but status.trainData has no "
            "URI (the operator records it before it launches the run)"
        )
        raise ValueError(msg)
    return train_data_uri


def stage_inputs(
    spec: TrainingRunSpec,
    work_dir: Path,
    store: ObjectStore,
    *,
    source_uri: str | None = None,
    train_uri: str | None = None,
    cancel: threading.Event | None = None,
    staged_model: str | None = None,
) -> StagedInputs:
    """The model, the training and the validation data under ``work_dir``; ``source_uri`` is status.source.uri,
    ``train_uri`` status.trainData.uri, ``staged_model`` a model already put in place (copied from the node that
    staged it): it is used as it is."""
    if staged_model is not None:
        model = staged_model
    elif spec.model.from_run is not None:
        model = str(stage_checkpoint_as_model(model_uri(spec, source_uri), work_dir / "model", store, cancel=cancel))
    else:
        model = stage_model(model_uri(spec, source_uri), work_dir / "model", store, cancel=cancel)
    field = "spec.data.train" if spec.data.train is not None else "spec.data.fromEvaluation"
    train = stage_data(spec, train_data_uri(spec, train_uri), field, work_dir / "data" / "train.parquet", store)
    validation = None
    if spec.data.validation:
        validation = stage_data(
            spec, spec.data.validation, "spec.data.validation", work_dir / "data" / "validation.parquet", store
        )
    return StagedInputs(model=model, train_files=train, val_files=validation)


def parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    rows: int = pq.ParquetFile(path).metadata.num_rows
    return rows
