"""What temperature scaling does on rows the run never saw: the run's best adapter scores --data once, and its
answers are read with the run's fitted temperature and with none (T = 1). Prints the ECE of each with its 95%
interval, the ratio, the loss of each, and how many labels differ (there should be none).

    python bench/calibration.py RUN --data HELDOUT.csv [--precision fp32]

The run must have been trained with train.calibrate: temperature, and HELDOUT must hold rows it neither
trained nor was validated on (bench/calibration.py does not check the latter: `eval --data` warns of it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--data", required=True, help="labelled rows the run never saw")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    import torch

    from loralab import hardware
    from loralab.data import load_labelled
    from loralab.modeling.forward import calibration
    from loralab.runs.rundir import RunDir
    from loralab.serving.engine import classify, open_engine
    from loralab.tasks import task_for

    print(hardware.machine_line(), file=sys.stderr)
    run = RunDir(Path(args.run))
    cfg = run.read_config()
    rows = load_labelled(args.data, cfg.data)
    engine = open_engine(run.path, "best", args.precision)
    task, fitted = task_for(cfg), engine.decision
    if fitted.temperature == 1.0:
        raise SystemExit(f"{run.path} has no fitted temperature: train it with train.calibrate=temperature")
    logits = classify(engine, rows.texts, rows.pairs)
    results = {}
    for name, decision in (("uncalibrated", dataclasses.replace(fitted, temperature=1.0)), ("calibrated", fitted)):
        scored = task.score(logits, decision)
        loss = task.loss(logits / decision.temperature, torch.tensor(rows.labels), decision).item()
        ece = calibration(task, rows.labels, scored.scores)
        results[name] = {"ece": round(ece["ece"], 4), "ece_95ci": [round(x, 4) for x in ece["ece_95ci"]],
                         "loss": round(loss, 4), "predictions": scored.predictions}  # fmt: skip
    changed = sum(
        a != b for a, b in zip(results["uncalibrated"].pop("predictions"), results["calibrated"].pop("predictions"))
    )
    before, after = results["uncalibrated"]["ece"], results["calibrated"]["ece"]
    summary = {"rows": len(rows.texts), "temperature": round(fitted.temperature, 4), **results,
               "ece_calibrated_vs_uncalibrated": round(after / before, 3), "labels_changed": changed}  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
