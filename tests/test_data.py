import json

import pytest
from conftest import AG_NEWS_CSV, make_tokenizer, synthetic_rows, write_csv

from loralab.config import AG_NEWS_LABELS, DataConfig
from loralab.data import LabelledTexts, check_label_fit, label_names_of, load_labelled, split_validation
from loralab.encoding import encode, eval_batches, training_batches
from loralab.errors import LoralabError

CFG = DataConfig(label_names=list(AG_NEWS_LABELS))


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
        ("label,text\n7,hello\n", "line 2 has label 7, outside 0..3"),
        ("label,text\n0,hello\n1,\n", "line 3 has an empty 'text'"),
        ("label,text\n0,hello\n1,   \n", "line 3 has an empty 'text'"),
        # Lines as an editor counts them: over a quoted line break and a blank line.
        ('label,text\n0,"two\nlines"\n\n7,x\n', "line 5 has label 7"),
        ("label,text\n0,a\n2.5,b\n", "line 3 has label 2.5 in 'label', a fraction"),
    ],
)
def test_bad_csv(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(LoralabError, match=message):
        load_labelled(str(path), CFG)


def test_jsonl_errors_name_the_file_line(tmp_path, capfd):
    good = "".join(json.dumps({"label": i % 4, "text": f"row {i}"}) + "\n" for i in range(4999))
    (tmp_path / "bad.jsonl").write_text(good + '{"label": 1, "text": "unclosed}\n' + good)
    with pytest.raises(LoralabError, match="bad.jsonl: line 5000 is not valid JSON"):
        load_labelled(str(tmp_path / "bad.jsonl"), CFG)
    assert capfd.readouterr().err == ""  # no stray log line before the one error
    (tmp_path / "fraction.jsonl").write_text(good + '\n{"label": 0.5, "text": "x"}\n')
    with pytest.raises(LoralabError, match="line 5001 has label 0.5"):  # blank line 5000 counted
        load_labelled(str(tmp_path / "fraction.jsonl"), CFG)


def test_texts_that_pandas_would_read_as_missing_are_texts(tmp_path):
    words = ["NA", "nan", "None", "null", "n/a", "NULL", "N/A"]
    rows = load_labelled(str(write_csv(tmp_path / "na.csv", [(i % 4, w) for i, w in enumerate(words)])), CFG)
    assert rows.texts == words and rows.labels == [0, 1, 2, 3, 0, 1, 2]


def test_whole_float_labels_are_class_indices(tmp_path):
    import pandas as pd

    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0.0, 1.0, 2.0, 3.0]}).to_parquet(tmp_path / "f.parquet")
    assert load_labelled(str(tmp_path / "f.parquet"), CFG).labels == [0, 1, 2, 3]
    pd.DataFrame({"text": ["a", "b"], "label": [0.0, 0.25]}).to_parquet(tmp_path / "g.parquet")
    with pytest.raises(LoralabError, match="row 1 has label 0.25 in 'label', a fraction"):
        load_labelled(str(tmp_path / "g.parquet"), CFG)


def test_the_label_set_comes_from_the_data_where_not_named(tmp_path):
    binary = write_csv(tmp_path / "binary.csv", [(i % 2, f"text {i}") for i in range(10)])
    from_data = DataConfig(train=str(binary))
    assert label_names_of(from_data) == ["0", "1"]
    assert load_labelled(str(binary), from_data).labels == [i % 2 for i in range(10)]
    named = write_csv(tmp_path / "named.csv", [("pos", "good"), ("neg", "bad"), ("pos", "fine")])
    assert label_names_of(DataConfig(train=str(named))) == ["neg", "pos"]
    assert load_labelled(str(named), DataConfig(train=str(named))).labels == [1, 0, 1]
    # A gap in the indices is a class without rows: it still gets its index.
    gap = write_csv(tmp_path / "gap.csv", [(0, "a"), (2, "b")])
    assert label_names_of(DataConfig(train=str(gap))) == ["0", "1", "2"]
    mixed = write_csv(tmp_path / "mixed.csv", [(0, "a"), ("pos", "b")])
    with pytest.raises(LoralabError, match="mixes class indices"):
        label_names_of(DataConfig(train=str(mixed)))
    # The default data's names ship with loralab: no network needed for them.
    assert label_names_of(DataConfig()) == AG_NEWS_LABELS


def test_label_sets_that_do_not_fit_the_data_are_said():
    train = LabelledTexts(["a", "b", "c"], [0, 1, 0])
    val = LabelledTexts(["d", "e"], [1, 2])
    problems = check_label_fit(DataConfig(train="x.csv", label_names=["w", "x", "y", "z"]), train, val)
    assert len(problems) == 2
    assert "no row of z" in problems[0] and "class y occurs only in the validation rows" in problems[1]
    assert check_label_fit(DataConfig(label_names=["w", "x", "y"]), LabelledTexts(["a"] * 3, [0, 1, 2]), val) == []


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


def test_eval_batches_end_at_a_token_budget():
    """A budget of padded tokens: short rows share a batch, long ones are not padded beside many others."""
    lengths = [100, 10, 100, 10, 10, 100]
    assert eval_batches(lengths, 8, max_tokens=250) == [[1, 3, 4], [0, 2], [5]]
    assert eval_batches(lengths, 2, max_tokens=10_000) == [[1, 3], [4, 0], [2, 5]]
    assert eval_batches([300], 8, max_tokens=100) == [[0]]  # a row longer than the budget still gets a batch


def test_encode_truncates():
    tokenizer = make_tokenizer()
    encoded = encode(tokenizer, ["f1 " * 50, "f2"], None, max_length=10, token_types=False)
    assert encoded.lengths == [10, 3]


@pytest.mark.skipif(not AG_NEWS_CSV.exists(), reason="../shared/data/ag_news/train.csv is not beside the repo")
def test_real_ag_news_csv():
    rows = load_labelled(str(AG_NEWS_CSV), CFG)
    assert len(rows.texts) == 8791
    assert [rows.labels.count(c) for c in range(4)] == [2198, 2219, 2199, 2175]


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "NaN", "1e999", "", "ten"])
def test_a_regression_target_that_is_not_a_finite_number_is_refused_naming_its_line(tmp_path, bad):
    path = tmp_path / "scores.csv"
    path.write_text(f"label,text\n1.5,a\n2,b\n{bad},c\n")
    cfg = DataConfig(task="regression", label_names=[])
    with pytest.raises(LoralabError, match=r"scores.csv: line 4 has label .* a regression target must be a finite"):
        load_labelled(str(path), cfg)
    path.write_text("label,text\n1.5,a\n2,b\n-3e2,c\n")
    assert load_labelled(str(path), cfg).labels == [1.5, 2.0, -300.0]


def test_a_class_index_that_is_not_finite_is_refused(tmp_path):
    # Python's JSON reader takes NaN and Infinity, which strict JSON has not.
    (tmp_path / "n.jsonl").write_text('{"label": 0, "text": "a"}\n{"label": NaN, "text": "b"}\n')
    with pytest.raises(LoralabError, match="line 2 has label nan in 'label', not a finite number"):
        load_labelled(str(tmp_path / "n.jsonl"), CFG)
