"""AdaLoRA under the exact budget: counted at its final size, trained from more, pruned by PEFT while it trains,
and saved only once the pruning is done, so that the adapter a fresh process reads is within the count."""

import json
import subprocess
import sys

import pytest
from conftest import SEED_CONFIG, train_tiny

from loralab import config
from loralab.budget.count import ModelShapes, breakdown_for, load_model_config
from loralab.errors import LoralabError
from loralab.modeling.model import build_model, trainable_params
from loralab.runs.rundir import RunDir
from loralab.training.train import train

ADALORA = ["lora.method=adalora", "lora.r=2", "lora.init_r=4", "train.steps=20", "train.eval_every=4"]


def test_the_count_is_the_final_budget_and_the_model_trains_from_init_r(model_dirs):
    lora = {"method": "adalora", "scope": ["query", "value"], "r": 2, "init_r": 5}
    cfg = config.from_dict({"model": {"name": str(model_dirs["roberta"])}, "lora": lora})
    shapes = ModelShapes.of(load_model_config(cfg))
    breakdown, plan = breakdown_for(cfg, shapes)
    head = breakdown.rows[-1][1]
    per_rank = sum(shapes.modules[n].in_features + shapes.modules[n].out_features + 1 for n in plan.lora_ranks)
    assert breakdown.total - head == 2 * per_rank
    assert trainable_params(build_model(cfg, shapes, plan, breakdown)[0]) - head == 5 * per_rank


def test_the_orthogonality_penalty_vanishes_where_p_and_q_are_orthonormal(model_dirs):
    """AdaLoRA's regulariser ||P^T P - I|| + ||Q Q^T - I||, which loralab adds to the task's loss itself."""
    import torch

    from loralab.methods import method_of

    cfg = config.from_dict({"model": {"name": str(model_dirs["roberta"])},
                            "lora": {"method": "adalora", "scope": ["query", "value"], "r": 2}})  # fmt: skip
    shapes = ModelShapes.of(load_model_config(cfg))
    breakdown, plan = breakdown_for(cfg, shapes)
    model = build_model(cfg, shapes, plan, breakdown)[0]
    method = method_of(cfg)
    assert method.regularization(model).item() > 0.1  # PEFT draws P and Q at random
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name:  # r x in: orthonormal rows
                p.copy_(torch.linalg.qr(torch.randn(p.shape[1], p.shape[0]))[0].T)
            elif ".lora_B." in name:  # out x r: orthonormal columns
                p.copy_(torch.linalg.qr(torch.randn(*p.shape))[0])
    assert method.regularization(model).item() < 1e-4


def test_a_scope_of_unlike_shapes_is_refused_in_one_line(model_dirs):
    cfg = config.from_dict({"model": {"name": str(model_dirs["roberta"])},
                            "lora": {"method": "adalora", "scope": ["value", "ffn_in"]}})  # fmt: skip
    with pytest.raises(LoralabError, match="adalora moves rank between layers.*adapt only attention layers"):
        breakdown_for(cfg, ModelShapes.of(load_model_config(cfg)))
    with pytest.raises(LoralabError, match="lora.init_r is AdaLoRA's: with lora.method lora leave it at 0"):
        config.from_dict({"lora": {"init_r": 8}})


@pytest.fixture(scope="module")
def run(model_dirs, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("adalora")
    train_tiny(model_dirs["roberta"], tiny_data, root, "adalora", *ADALORA)
    return root / "adalora"


def test_only_adapters_after_the_last_pruning_are_kept(run):
    """Pruning ends at step 20 - 4 = 16: the evaluations at 4, 8, 12 and 16 are logged, never kept as best."""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["peak_step"] == 20 and summary["trainable"]["total"] <= summary["trainable"]["budget"]
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "val"] == [4, 8, 12, 16, 20]  # fmt: skip


def test_the_saved_adapter_read_by_a_fresh_process_holds_the_counted_budget(run):
    """PEFT saves the pruned ranks only: the adapter read back trains no more than the count said."""
    counted = json.loads((run / "summary.json").read_text())["trainable"]
    script = f"""
import json
from loralab.modeling.model import load_trained
cfg, tokenizer, model = load_trained({str(run)!r})
lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
head = sum(p.numel() for n, p in model.named_parameters() if "modules_to_save" in n)
print(json.dumps([lora, head]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lora, head = json.loads(done.stdout.splitlines()[-1])
    assert head == counted["rows"]["head (full: classifier.dense + classifier.out_proj)"]
    assert lora + head == counted["total"]  # init_r 4 trained, pruned to 2 on average, saved pruned


class Interrupted(Exception):
    pass


def test_an_adalora_run_does_not_resume_from_its_checkpoint(model_dirs, tiny_data, tmp_path):
    def stop(step, value):
        if step == 8:
            raise Interrupted

    where = [f"model.name={model_dirs['roberta']}", f"data.train={tiny_data}", f"output.dir={tmp_path}"]
    cfg = config.load(SEED_CONFIG, [*where, "data.val_size=64", "data.max_length=32", *ADALORA])
    with pytest.raises(Interrupted):
        train(cfg, on_eval=stop)
    assert RunDir.for_config(cfg).checkpoint.exists()
    with pytest.raises(LoralabError, match="a run of lora.method adalora cannot resume from its checkpoint"):
        train(cfg, resume=True)
