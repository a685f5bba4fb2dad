"""Mean pooling: the head reads the masked mean of the last layer, whatever the family."""

import pytest
import torch
from conftest import FAMILIES, synthetic_rows

from loralab.modeling.model import pool_mean_into_first_token

# How each family's head turns a (batch, 1, hidden) tensor into logits, written out by hand.
HEADS = {
    "roberta": lambda m, h: m.classifier(h),
    "mpnet": lambda m, h: m.classifier(h),
    "bert": lambda m, h: m.classifier(m.bert.pooler(h)),
    "distilbert": lambda m, h: m.classifier(torch.relu(m.pre_classifier(h[:, 0]))),
    "deberta-v2": lambda m, h: m.classifier(m.pooler(h)),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_pooling_feeds_the_head_the_masked_mean(family, model_dirs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dirs[family])
    model = AutoModelForSequenceClassification.from_pretrained(model_dirs[family]).eval()
    batch = tokenizer([t for _, t in synthetic_rows(8, seed=5)], padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # some rows are padded: the mask matters
    with torch.no_grad():
        hidden = model.base_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        by_hand = HEADS[family](model, ((hidden * mask).sum(1) / mask.sum(1)).unsqueeze(1))
        first_token = model(**batch).logits
        pool_mean_into_first_token(model)
        pooled = model(**batch).logits
        alone = model(
            **tokenizer([tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)], return_tensors="pt")
        ).logits
    assert (pooled - by_hand).abs().max().item() <= 1e-5
    assert (pooled - first_token).abs().max().item() > 1e-3  # pooling changed what the head reads
    assert (pooled[:1] - alone).abs().max().item() <= 1e-5  # padding tokens do not enter the mean


def test_position_limits_and_max_length(model_dirs, capsys):
    from transformers import AutoConfig, AutoTokenizer, BertConfig, DebertaV2Config, RobertaConfig

    from loralab.config import Config
    from loralab.errors import LoralabError
    from loralab.modeling.model import check_max_length, position_limit

    assert position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512  # roberta-base
    assert position_limit(BertConfig(max_position_embeddings=512)) == 512
    assert position_limit(DebertaV2Config(position_biased_input=False)) is None  # relative positions only
    model_config = AutoConfig.from_pretrained(model_dirs["roberta"])  # 72 positions, padding index 0
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["roberta"])
    cfg = Config()
    cfg.data.max_length = 71
    check_max_length(cfg, model_config, tokenizer)
    assert capsys.readouterr().err == ""
    cfg.data.max_length = 72
    with pytest.raises(LoralabError, match="data.max_length 72 is more than .* can read \\(71 token positions\\)"):
        check_max_length(cfg, model_config, tokenizer)
    tokenizer.model_max_length = 16
    cfg.data.max_length = 32
    check_max_length(cfg, model_config, tokenizer)
    assert "declares model_max_length 16, below data.max_length 32" in capsys.readouterr().err
