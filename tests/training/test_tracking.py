"""Trackers through Accelerate, read back with each tool's own reader, offline."""

import pytest
from conftest import SEED_CONFIG

from loralab import config
from loralab.errors import LoralabError
from loralab.training.tracking import hyperparameters
from loralab.training.train import train


def tracked_run(tiny_overrides, *trackers):
    cfg = config.load(SEED_CONFIG, tiny_overrides + [f"train.report_to=[{','.join(trackers)}]"])
    return cfg, train(cfg)


def test_tensorboard_events_hold_the_metrics_and_the_config(tiny_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, summary = tracked_run(tiny_overrides, "tensorboard")
    events = list((config_run(cfg) / "logs").rglob("events.out.tfevents.*"))
    assert events, "no event file"
    scalars = {}
    for path in events:
        reader = EventAccumulator(str(path.parent))
        reader.Reload()
        for tag in reader.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in reader.Scalars(tag)]
    assert [step for step, _ in scalars["train/loss"]] == [2, 4, 6, 8, 10, 12]
    assert [step for step, _ in scalars["val/accuracy"]] == [4, 8, 12]
    assert max(value for _, value in scalars["val/accuracy"]) == pytest.approx(summary.peak_val_accuracy)
    assert "train/samples_per_s" in scalars and "train/lr" in scalars
    hparams = next((config_run(cfg) / "logs").rglob("hparams.yml")).read_text()
    assert "lora.r: 4" in hparams and f"trainable.total: {summary.trainable['total']}" in hparams


def test_mlflow_records_params_and_metrics_inside_the_run(tiny_overrides, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg, summary = tracked_run(tiny_overrides, "mlflow")
    store = f"sqlite:///{(config_run(cfg) / 'logs' / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.params["lora.r"] == "4" and run.data.params["model.head"] == "full"
    assert run.data.params["trainable.total"] == str(summary.trainable["total"])
    history = client.get_metric_history(run.info.run_id, "val/accuracy")
    assert [m.step for m in history] == [4, 8, 12]
    assert max(m.value for m in history) == pytest.approx(summary.peak_val_accuracy)


def wandb_records(path):
    """The records of an offline W&B run file, parsed with wandb's own protobuf schema. The file is a LevelDB log
    (a 7-byte header, then 32 KiB blocks of records: crc32, length, type, data); wandb 0.31 ships no Python reader
    of its own, and `wandb sync` only uploads."""
    import struct

    from wandb.proto import wandb_internal_pb2

    raw, records, pending = path.read_bytes(), [], b""
    assert raw[:4] == b":W&B", raw[:7]
    body, block = raw[7:], 32768 - 7  # the header fills the first block's start
    position, in_block = 0, 0
    while position + 7 <= len(body):
        if block - in_block < 7:  # a block's tail too short for a header is padding
            position, in_block = position + (block - in_block), 0
            block = 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", body[position : position + 7])
        data = body[position + 7 : position + 7 + length]
        position, in_block = position + 7 + length, in_block + 7 + length
        if kind == 0 and length == 0:
            break
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):  # a record whole, or its last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_wandb_offline_run_is_written_inside_the_run(tiny_overrides, monkeypatch):
    pytest.importorskip("wandb")
    import json

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg, summary = tracked_run(tiny_overrides, "wandb")
    (path,) = list((config_run(cfg) / "logs").rglob("offline-run-*/run-*.wandb"))
    records = wandb_records(path)
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]  # fmt: skip
    accuracy = [row["val/accuracy"] for row in history if "val/accuracy" in row]
    assert len(accuracy) == 3 and max(accuracy) == pytest.approx(summary.peak_val_accuracy)
    assert [row["train/loss"] for row in history if "train/loss" in row] == pytest.approx(
        [r["loss"] for r in config_run_metrics(cfg) if r["split"] == "train"]
    )
    configs = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
               for item in r.config.update}  # fmt: skip
    assert configs["lora.r"] == 4 and configs["trainable.total"] == summary.trainable["total"]


def test_unknown_or_missing_tracker_is_refused(tiny_overrides):
    with pytest.raises(LoralabError, match="train.report_to: 'tensorbored' is not one of"):
        config.load(SEED_CONFIG, tiny_overrides + ["train.report_to=[tensorbored]"])


def test_hyperparameters_are_flat_scalars(tiny_overrides):
    from loralab.budget.count import breakdown_for

    cfg = config.load(SEED_CONFIG, tiny_overrides)
    values = hyperparameters(cfg, breakdown_for(cfg)[0])
    assert values["lora.scope"] == "['value']" and values["train.lr"] == 1e-2
    assert all(isinstance(v, (str, int, float, bool)) for v in values.values())


def config_run(cfg):
    from pathlib import Path

    return Path(cfg.output.dir) / cfg.output.name


def config_run_metrics(cfg) -> list[dict]:
    from loralab.runs.rundir import RunDir

    return RunDir(config_run(cfg)).read_metrics()
