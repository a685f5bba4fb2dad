"""One server for every classifier of a base: runs of different tasks and label counts answered from one
forward pass, and adapters added and removed while it serves (real server processes, real sockets)."""

import threading
import time

import pytest
from conftest import (
    call,
    multi_label_rows,
    pair_rows,
    regression_rows,
    start,
    stop,
    synthetic_rows,
    train_tiny,
    write_csv,
)
from test_serve import predicted

from loralab.cli import main

TEXTS = [text for _, text in synthetic_rows(12, seed=5)]
PAIRS = pair_rows(12, seed=6)
TOKEN = "s3cret-token-of-the-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def runs(model_dirs, tiny_data, tmp_path_factory):
    """Four runs of one base with four tasks and three label counts, and one of another base."""
    root = tmp_path_factory.mktemp("unlike-runs")
    bert = model_dirs["bert"]
    train_tiny(bert, tiny_data, root, "four")
    # Three labels: c3 dropped from every row's set (c0 where nothing else is left).
    three = [(",".join(c for c in tags.split(",") if c != "c3") or "c0", text) for tags, text in multi_label_rows(300)]
    tags = write_csv(root / "tags.csv", three)
    train_tiny(bert, tags, root, "tags", "data.task=multi_label", "data.label_names=[]")
    scores = write_csv(root / "scores.csv", regression_rows(300))
    train_tiny(bert, scores, root, "score", "data.task=regression", "data.label_names=[]")
    pairs = write_csv(root / "pairs.csv", pair_rows(300), ("label", "premise", "hypothesis"))
    train_tiny(bert, pairs, root, "pairs", "data.text_column=premise", "data.text_pair_column=hypothesis",
               "data.label_names=[other,match]")  # fmt: skip
    train_tiny(model_dirs["roberta"], tiny_data, root, "roberta")
    train_tiny(bert, tiny_data, root, "vera", "lora.method=vera", "lora.r=16")  # PEFT mixes only LoRA in a batch
    train_tiny(bert, tiny_data, root, "bitfit", "lora.method=bitfit", "train.lr=5e-2")  # outside PEFT
    train_tiny(bert, tiny_data, root, "adalora", "lora.method=adalora", "lora.r=2", "train.steps=12")
    return root


def expected_of(runs, tmp_path) -> dict:
    """`loralab predict` of each run on the test rows, as the server answers them."""
    expected = {}
    for name in ("four", "tags", "score"):
        rows = predicted(runs / name, tmp_path, [(t,) for t in TEXTS])
        expected[name] = [served_form(name, label, probabilities) for label, probabilities in rows]
    rows = predicted(runs / "pairs", tmp_path, [(a, b) for _, a, b in PAIRS], ("premise", "hypothesis"))
    expected["pairs"] = [served_form("pairs", label, probabilities) for label, probabilities in rows]
    return expected


def served_form(name: str, label: str, probabilities: list[float]):
    if name == "score":  # a regression's answer is its score, and it has no probabilities
        return float(label), None
    if name == "tags":  # a multi-label answer is the list of labels that are on
        return [x for x in label.split(",") if x], probabilities
    return label, probabilities


def body_for(name: str) -> dict:
    if name == "pairs":
        return {"adapter": name, "texts": [a for _, a, _ in PAIRS], "text_pairs": [b for _, _, b in PAIRS],
                "probabilities": True}  # fmt: skip
    return {"adapter": name, "texts": TEXTS, "probabilities": True}


def assert_answers(port: int, name: str, expected: list) -> None:
    status, answer = call(port, "POST", "/v1/classify", body_for(name))
    assert status == 200, answer
    for got_label, (label, _) in zip(answer["labels"], expected, strict=True):
        assert got_label == pytest.approx(label, abs=1e-4) if name == "score" else got_label == label
    if expected[0][1] is None:
        assert "probabilities" not in answer
    else:
        got = [list(row.values()) for row in answer["probabilities"]]
        assert got == [pytest.approx(p, abs=1e-5) for _, p in expected]


def test_runs_of_four_tasks_and_three_label_counts_share_one_pass_and_answer_as_predict(runs, tmp_path):
    expected = expected_of(runs, tmp_path)
    process, port = start(*(f"{runs / name}" for name in ("four", "tags", "score", "pairs")), "--max-wait-ms", "50")
    errors = []

    def client(name):
        try:
            for _ in range(3):
                assert_answers(port, name, expected[name])
        except AssertionError as err:
            errors.append((name, err))

    threads = [threading.Thread(target=client, args=(name,)) for name in ("four", "tags", "score", "pairs") * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    by_name = {a["name"]: a for a in call(port, "GET", "/v1/adapters")[1]["adapters"]}
    shapes = {n: (a["task"], len(a["labels"])) for n, a in by_name.items()}
    assert shapes == {"four": ("single_label", 4), "tags": ("multi_label", 3), "score": ("regression", 1),
                      "pairs": ("single_label", 2)}  # fmt: skip
    metrics = call(port, "GET", "/metrics")[1]
    assert 'loralab_adapter_request_seconds_count{adapter="pairs"} 6.0' in metrics
    # One model group: the four runs are one base in memory, each row through its own adapter and head.
    assert all(a["shared_base"] for a in by_name.values())
    stop(process)


@pytest.mark.parametrize("name", ["bitfit", "adalora"])
def test_a_bitfit_or_adalora_run_is_served_alone_and_answers_as_predict(runs, tmp_path, name):
    """BitFit's own files (no PEFT) and AdaLoRA's pruned ranks, read by a server: its own model, merged."""
    expected = [served_form(name, *row) for row in predicted(runs / name, tmp_path, [(t,) for t in TEXTS])]
    process, port = start(str(runs / name))
    assert_answers(port, name, expected)
    assert [a["shared_base"] for a in call(port, "GET", "/v1/adapters")[1]["adapters"]] == [False]
    stop(process)


@pytest.fixture(scope="module")
def admin_server(runs):
    process, port = start(str(runs / "four"), "--admin-token", TOKEN, "--runs-dir", str(runs), "--max-wait-ms", "20")
    yield port
    assert "stopped: every request was answered" in stop(process)


def test_adapters_are_added_used_removed_and_added_again(admin_server, runs, tmp_path):
    port, expected = admin_server, expected_of(runs, tmp_path)
    assert call(port, "POST", "/v1/classify", body_for("tags"))[0] == 404
    status, info = call(port, "POST", "/v1/adapters", {"run": "tags"}, ADMIN)
    assert status == 201 and (info["name"], info["task"], info["labels"]) == ("tags", "multi_label", ["c0", "c1", "c2"])
    assert "loaded_at" in info
    status, info = call(port, "POST", "/v1/adapters", {"run": str(runs / "pairs"), "name": "nli"}, ADMIN)
    assert status == 201 and info["name"] == "nli"
    assert_answers(port, "tags", expected["tags"])
    assert_answers(port, "four", expected["four"])  # the first run, now beside the others: still its answers
    removed = call(port, "DELETE", "/v1/adapters/tags", None, ADMIN)
    assert removed == (200, {"removed": "tags", "adapters": ["four", "nli"]})
    assert call(port, "POST", "/v1/classify", body_for("tags")) == (
        404, {"error": "no adapter 'tags' here; this server has: four, nli"}
    )  # fmt: skip
    assert 'adapter="tags"' not in call(port, "GET", "/metrics")[1]
    # Wider than every head served so far (a regression's one output, added after four's): it grows the heads.
    assert call(port, "POST", "/v1/adapters", {"run": "score"}, ADMIN)[0] == 201
    assert call(port, "POST", "/v1/adapters", {"run": "tags"}, ADMIN)[0] == 201
    for name in ("four", "tags", "score"):
        assert_answers(port, name, expected[name])
    nli = body_for("pairs") | {"adapter": "nli"}
    status, answer = call(port, "POST", "/v1/classify", nli)
    assert status == 200 and answer["labels"] == [label for label, _ in expected["pairs"]]
    for name in ("tags", "score", "nli"):
        assert call(port, "DELETE", f"/v1/adapters/{name}", None, ADMIN)[0] == 200


def test_an_onnx_export_is_added_live_as_a_model_of_its_own(admin_server, runs, tmp_path):
    port, expected = admin_server, expected_of(runs, tmp_path)
    if not (runs / "four-onnx").exists():
        assert main(["export", str(runs / "four"), str(runs / "four-onnx"), "--format", "onnx", "--no-check"]) == 0
    status, info = call(port, "POST", "/v1/adapters", {"run": "four-onnx"}, ADMIN)
    assert status == 201 and (info["engine"], info["shared_base"]) == ("onnx", False)
    status, answer = call(port, "POST", "/v1/classify", body_for("four") | {"adapter": "four-onnx"})
    assert status == 200 and answer["labels"] == [label for label, _ in expected["four"]]
    assert call(port, "DELETE", "/v1/adapters/four-onnx", None, ADMIN)[0] == 200


def test_admin_requests_that_cannot_be_taken_are_4xx_and_the_server_goes_on(admin_server, runs, tmp_path):
    port = admin_server
    broken = runs / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "summary.json").write_text("{}")
    (broken / "config.yaml").write_text("model: [this is not a configuration\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (runs / "link").unlink(missing_ok=True)
    (runs / "link").symlink_to(outside)
    cases = [
        ({"run": "tags"}, {}, 401, "missing or wrong token"),
        ({"run": "tags"}, {"Authorization": "Bearer wrong-token-wrong-token"}, 401, "missing or wrong token"),
        ({"run": "../elsewhere"}, ADMIN, 403, "is not inside --runs-dir"),
        ({"run": "/etc"}, ADMIN, 403, "is not inside --runs-dir"),
        ({"run": "link"}, ADMIN, 403, "is not inside --runs-dir"),
        ({"run": "roberta"}, ADMIN, 422, "have different bases"),
        ({"run": "vera"}, ADMIN, 422, "is a VeRA adapter, which PEFT cannot mix with others in one batch"),
        ({"run": "broken"}, ADMIN, 422, "cannot serve it here"),
        ({"run": "nothing"}, ADMIN, 404, "neither a finished run"),
        ({"run": "four"}, ADMIN, 409, "already served"),
        ({"run": "tags", "name": "a/b"}, ADMIN, 422, '"name"'),
        ({"path": "tags"}, ADMIN, 422, "unknown field(s) 'path'"),
    ]
    for body, headers, status, message in cases:
        got_status, got = call(port, "POST", "/v1/adapters", body, headers)
        assert got_status == status and message in got["error"], (body, got)
    assert call(port, "DELETE", "/v1/adapters/four", None, {})[0] == 401
    assert call(port, "DELETE", "/v1/adapters/nothing", None, ADMIN)[0] == 404
    names = [a["name"] for a in call(port, "GET", "/v1/adapters")[1]["adapters"]]
    assert names == ["four"]
    assert call(port, "POST", "/v1/classify", body_for("four"))[0] == 200


def test_removal_waits_for_the_requests_that_hold_the_adapter(runs, tmp_path):
    expected = expected_of(runs, tmp_path)
    # A long batching wait: the request for tags is still queued when its removal is asked for.
    process, port = start(str(runs / "four"), "--admin-token", TOKEN, "--runs-dir", str(runs), "--max-wait-ms", "2000")
    assert call(port, "POST", "/v1/adapters", {"run": "tags"}, ADMIN)[0] == 201
    done = {}

    def client():
        done["answer"] = call(port, "POST", "/v1/classify", body_for("tags"))
        done["answered_at"] = time.monotonic()

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and f"loralab_queue_rows {len(TEXTS)}.0" not in call(port, "GET", "/metrics")[1]:
        time.sleep(0.02)
    assert f"loralab_queue_rows {len(TEXTS)}.0" in call(port, "GET", "/metrics")[1], "the request never queued"
    assert call(port, "DELETE", "/v1/adapters/tags", None, ADMIN)[0] == 200
    removed_at = time.monotonic()
    thread.join(timeout=60)
    status, answer = done["answer"]
    assert status == 200 and answer["labels"] == [label for label, _ in expected["tags"]]
    # Two threads' clocks, read after their responses: scheduling may order them by milliseconds, while a removal
    # that did not wait would return about 2 s (the batching wait) before the answer.
    assert done["answered_at"] <= removed_at + 0.25
    assert call(port, "POST", "/v1/classify", body_for("tags"))[0] == 404
    stop(process)


def test_without_a_token_nothing_is_added_and_bad_admin_arguments_are_one_line(runs, capsys):
    process, port = start(str(runs / "four"))
    status, body = call(port, "POST", "/v1/adapters", {"run": "tags"}, ADMIN)
    assert status == 403 and "start the server with --admin-token" in body["error"]
    stop(process)
    cases = [
        ([str(runs / "four"), "--admin-token", TOKEN], "--admin-token and --runs-dir go together"),
        ([str(runs / "four"), "--runs-dir", str(runs)], "--admin-token and --runs-dir go together"),
        ([str(runs / "four"), "--admin-token", "short", "--runs-dir", str(runs)], "at least 16 characters"),
        ([str(runs / "four"), "--admin-token", TOKEN, "--runs-dir", str(runs / "nothing")], "is not a folder"),
    ]
    for argv, message in cases:
        assert main(["serve", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("loralab: error: serve: ") and message in err and err.count("\n") == 1, err
