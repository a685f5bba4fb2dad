"""Training throughput: loralab against the seed study's recipe, same model, config and data, one run.

The study's recipe: Hugging Face `Trainer` + PEFT (task_type SEQ_CLS), the data tokenised with
`padding=True` inside `datasets.map` (so each 1,000-row map batch is padded to its longest row),
`DataCollatorWithPadding`, 4 dataloader workers.

    python bench/train_speed.py --model $(../shared/tools/offline-models mpnet-base) \
        --data ../shared/data/ag_news/train.csv --steps 30

Prints samples/s of each (optimizer steps x batch size / seconds spent in them) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def loralab_samples_per_s(args, workdir: str) -> float:
    from loralab import config
    from loralab.training.train import train

    cfg = config.load(
        ROOT / "configs" / "seed.yaml",
        [
            f"model.name={args.model}",
            f"data.train={args.data}",
            f"train.steps={args.steps}",
            f"train.eval_every={args.steps}",
            f"train.precision={args.precision}",
            f"train.compile={args.compile}",
            f"output.dir={workdir}",
            "output.name=bench",
        ],
    )
    return train(cfg).train_samples_per_s


def study_recipe_samples_per_s(args, workdir: str) -> float:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from loralab import config
    from loralab.data import load_labelled, split_validation

    data_cfg = config.load(ROOT / "configs" / "seed.yaml").data
    train_rows, _ = split_validation(load_labelled(args.data, data_cfg), data_cfg.val_size, data_cfg.split_seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = Dataset.from_dict({"text": train_rows.texts, "label": train_rows.labels})
    dataset = dataset.map(
        lambda b: tokenizer(b["text"], truncation=True, padding=True), batched=True, remove_columns=["text"]
    )
    torch.manual_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=4)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=22, lora_alpha=44, lora_dropout=0.1, target_modules=[args.value_module]
    )
    model = get_peft_model(model, lora)
    training_args = TrainingArguments(
        output_dir=workdir,
        per_device_train_batch_size=16,
        max_steps=args.steps,
        learning_rate=5e-5,
        warmup_steps=100,
        logging_steps=100,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        dataloader_num_workers=4,
        bf16=args.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer)
    )
    return trainer.train().metrics["train_samples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (mpnet-base for the issue's figure)")
    parser.add_argument("--data", required=True, help="labelled CSV")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="loralab's train.compile")
    parser.add_argument(
        "--value-module",
        default="v",
        help="the value projection's name in the recipe ('v' for MPNet, 'value' for RoBERTa)",
    )
    parser.add_argument("--only", choices=["loralab", "recipe"], help="measure one side (a fresh process for each)")
    parser.add_argument("--json", action="store_true", help="print {side: samples/s} as one JSON object")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    with tempfile.TemporaryDirectory() as workdir:
        ours = loralab_samples_per_s(args, workdir) if args.only != "recipe" else None
        theirs = study_recipe_samples_per_s(args, workdir) if args.only != "loralab" else None
    if args.json or args.only:
        print(json.dumps({"loralab": ours, "recipe": theirs}))
        return
    print(f"model {args.model}, {args.steps} steps of batch 16, {args.precision}", file=sys.stderr)
    print(f"loralab       {ours:8.2f} samples/s")
    print(f"study recipe  {theirs:8.2f} samples/s")
    print(f"ratio         {ours / theirs:8.2f}x")


if __name__ == "__main__":
    main()
