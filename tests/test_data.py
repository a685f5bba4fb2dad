import json

import pytest
from conftest import AG_NEWS_CSV, make_tokenizer, synthetic_rows, write_csv

from loralab.config import DataConfig
from loralab.data import encode, eval_batches, load_labelled, split_validation, training_batches
from loralab.errors import LoralabError

CFG = DataConfig()


def test_csv_with_header(tmp_path):
    rows = load_labelled(str(write_csv(tmp_path / "a.csv", [(0, "hello world"), (3, "space news")])), CFG)
    assert rows.texts == ["hello world", "space news"] and rows.labels == [0, 3]


def test_original_ag_news_layout(tmp_path):
    path = write_csv(tmp_path / "train.csv", [(3, "Wall St.", "Bears claw back"), (1, "Title", "Body")], header=None)
    rows = load_labelled(str(path), CFG)
    assert rows.texts == ["Wall St. Bears claw back", "Title Body"] and rows.labels == [2, 0]


def test_jsonl_and_parquet(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"text": ["a b", "c d"], "label": [1, 2]})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.parquet"):
        rows = load_labelled(str(tmp_path / name), CFG)
        assert rows.texts == ["a b", "c d"] and rows.labels == [1, 2]


@pytest.mark.parametrize(
    "content, message",
    [
        ('label,text\n0,"unclosed\n1,ok\n', "cannot parse as csv"),
        ("label,body\n0,hello\n", "no 'text' column"),
        ("label,text\n7,hello\n", "row 0 has label 7, outside 0..3"),
        ("label,text\n0,hello\n1,\n", "row 1 has an empty 'text'"),
        ("label,text\n0,hello\n1,   \n", "row 1 has an empty 'text'"),
    ],
)
def test_bad_csv(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(LoralabError, match=message):
        load_labelled(str(path), CFG)


def test_missing_file(tmp_path):
    with pytest.raises(LoralabError, match="data file not found"):
        load_labelled(str(tmp_path / "missing.csv"), CFG)


def test_split_is_seeded_and_disjoint(tmp_path):
    rows = load_labelled(str(write_csv(tmp_path / "a.csv", synthetic_rows(100))), CFG)
    train, val = split_validation(rows, 20, seed=42)
    again_train, again_val = split_validation(rows, 20, seed=42)
    assert len(val.texts) == 20 and len(train.texts) == 80
    assert val.texts == again_val.texts and train.texts == again_train.texts
    assert split_validation(rows, 20, seed=1)[1].texts != val.texts
    with pytest.raises(LoralabError, match="leaves no training rows"):
        split_validation(rows, 100, seed=42)


def test_training_batches_cover_each_row_once_and_group_lengths():
    lengths = [(i * 37) % 97 + 3 for i in range(1000)]
    batches = training_batches(lengths, 16, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == training_batches(lengths, 16, seed=3, epoch=0)
    assert batches != training_batches(lengths, 16, seed=3, epoch=1)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    random_batches = [list(range(i, min(i + 16, 1000))) for i in range(0, 1000, 16)]
    padded_random = sum(len(b) * max(lengths[i] for i in b) for b in random_batches)
    assert padded < 0.7 * padded_random


def test_eval_batches_sorted_and_complete():
    lengths = [5, 1, 9, 3, 7]
    batches = eval_batches(lengths, 2)
    assert batches == [[1, 3], [0, 4], [2]]


def test_encode_truncates():
    tokenizer = make_tokenizer()
    from loralab.data import LabelledTexts

    encoded = encode(tokenizer, LabelledTexts(["f1 " * 50, "f2"], [0, 1]), max_length=10)
    assert encoded.lengths == [10, 3]


@pytest.mark.skipif(not AG_NEWS_CSV.exists(), reason="../shared/data/ag_news/train.csv is not beside the repo")
def test_real_ag_news_csv():
    rows = load_labelled(str(AG_NEWS_CSV), CFG)
    assert len(rows.texts) == 8791
    assert [rows.labels.count(c) for c in range(4)] == [2198, 2219, 2199, 2175]
