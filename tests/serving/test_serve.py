"""`loralab serve`, met as users meet it: a real server process on loopback, real HTTP requests."""

import csv
import json
import signal
import socket
import threading
import time

import pytest
from conftest import call, pair_rows, start, stop, synthetic_rows, train_tiny, write_csv

from loralab.cli import main

TEXTS = [text for _, text in synthetic_rows(24, seed=11)]
# How far a shared bf16 pass may answer from predict in probability (README, Serve): 6.6e-4 measured here.
BF16_SHARED_PASS_TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def runs(model_dirs, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-runs")
    train_tiny(model_dirs["roberta"], tiny_data, root, "one")
    # Another rank, seed and trained head on the same base: shares the server's one copy of it.
    train_tiny(model_dirs["roberta"], tiny_data, root, "two", "lora.r=2", "train.seed=7", "train.lr=3e-2")
    train_tiny(model_dirs["roberta"], tiny_data, root, "mean", "model.pooling=mean")
    train_tiny(model_dirs["bert"], tiny_data, root, "bert")
    pairs = write_csv(root / "pairs.csv", pair_rows(300), ("label", "premise", "hypothesis"))
    train_tiny(model_dirs["bert"], pairs, root, "pairs", "data.text_column=premise", "data.text_pair_column=hypothesis")
    return root


def predicted(run, tmp_path, rows, header=("text",), *extra) -> list[list[str]]:
    """`loralab predict RUN --label-names --probs` of the same rows in fp32: (label, probabilities) per row."""
    source = write_csv(tmp_path / f"{run.name}-in.csv", rows, header)
    out = tmp_path / f"{run.name}-out.csv"
    argv = ["predict", str(run), "--input", str(source), "--out", str(out), "--label-names", "--probs"]
    assert main([*argv, "--precision", "fp32", *extra]) == 0
    with open(out) as handle:
        return [(row[1], [float(x) for x in row[2:]]) for row in list(csv.reader(handle))[1:]]


def answered_concurrently(port: int, clients: tuple[str, ...], expected: dict, per_request: int) -> None:
    """One client thread per entry of `clients` (an adapter's name) sends TEXTS, `per_request` at a time, at
    once with the others; every row must answer as `expected[adapter][row]` (label, probabilities)."""
    answers, errors = {}, []

    def client(adapter: str) -> None:
        for i in range(0, len(TEXTS), per_request):
            body = {"adapter": adapter, "texts": TEXTS[i : i + per_request], "probabilities": True}
            status, answer = call(port, "POST", "/v1/classify", body)
            if status != 200:
                errors.append(answer)
                continue
            for j, (label, probabilities) in enumerate(zip(answer["labels"], answer["probabilities"])):
                answers[adapter, i + j] = (label, list(probabilities.values()))

    threads = [threading.Thread(target=client, args=(adapter,)) for adapter in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(answers) == len(set(clients)) * len(TEXTS)
    for (adapter, i), (label, probabilities) in answers.items():
        assert label == expected[adapter][i][0]
        assert probabilities == pytest.approx(expected[adapter][i][1], abs=1e-5)


@pytest.fixture(scope="module")
def server(runs):
    process, port = start(f"{runs / 'one'}", f"second={runs / 'two'}", "--max-wait-ms", "100", "--max-batch", "64")
    yield port
    assert "stopped: every request was answered" in stop(process)


def test_mixed_adapter_batches_answer_as_predict_does(server, runs, tmp_path):
    """Concurrent requests for two adapters share forward passes; each row answers as `predict` of its run
    (label and probabilities: the LoRA layers and the trained head both follow the row's adapter)."""
    expected = {
        "one": predicted(runs / "one", tmp_path, [(t,) for t in TEXTS]),
        "second": predicted(runs / "two", tmp_path, [(t,) for t in TEXTS]),
    }
    assert [p for _, p in expected["one"]] != [p for _, p in expected["second"]], "two adapters must differ"
    answered_concurrently(server, ("one", "second", "second", "one"), expected, 3)
    assert 'loralab_rows_total{adapter="second"} 48.0' in call(server, "GET", "/metrics")[1]


def served(port: int, adapter: str) -> list:
    status, answer = call(port, "POST", "/v1/classify", {"adapter": adapter, "texts": TEXTS, "probabilities": True})
    assert status == 200, answer
    return [(label, list(p.values())) for label, p in zip(answer["labels"], answer["probabilities"], strict=True)]


def test_in_bf16_a_run_alone_answers_as_predict_and_a_shared_pass_within_the_stated_tolerance(runs, tmp_path):
    """The contract per precision (README, Serve): a run served alone runs predict's very pass, in bf16 too; runs
    sharing a pass add each row's LoRA update in stacked matmuls, which round otherwise in bf16."""
    rows = [(t,) for t in TEXTS]
    expected = {
        name: predicted(runs / name, tmp_path, rows, ("text",), "--precision", "bf16") for name in ("one", "two")
    }
    process, port = start(str(runs / "one"), precision="bf16")
    alone = served(port, "one")
    stop(process)
    assert [label for label, _ in alone] == [label for label, _ in expected["one"]]
    assert max(abs(a - b) for (_, x), (_, y) in zip(alone, expected["one"]) for a, b in zip(x, y)) <= 1e-6
    process, port = start(str(runs / "one"), f"second={runs / 'two'}", precision="bf16")
    shared = {"one": served(port, "one"), "two": served(port, "second")}
    stop(process)
    for name, answers in shared.items():
        for (label, probabilities), (want, wanted) in zip(answers, expected[name], strict=True):
            assert max(abs(a - b) for a, b in zip(probabilities, wanted)) <= BF16_SHARED_PASS_TOLERANCE
            top = sorted(wanted, reverse=True)
            assert label == want or top[0] - top[1] <= 2 * BF16_SHARED_PASS_TOLERANCE  # a near tie may go either way


def test_rows_of_requests_waiting_together_share_one_pass_each_through_its_adapter(runs):
    """Four requests of two adapters queued at once: one forward pass of all their rows, and each request's
    answer is what its rows alone give through its own adapter."""
    import asyncio

    import torch

    from loralab.serving.serve import Batcher, Classifiers, Metrics, ServeOptions

    options = ServeOptions(runs=[str(runs / "one"), f"second={runs / 'two'}"], precision="fp32", max_batch=12,
                           max_wait_ms=30_000)  # fmt: skip
    classifiers = Classifiers(options)
    group = classifiers.adapters["one"].group
    real, passes = group.logits, []
    group.logits = lambda data, names, options: passes.append(list(names)) or real(data, names, options)
    names = ("one", "second", "second", "one")
    requests = [(classifiers.adapters[n], classifiers.encode(classifiers.adapters[n], TEXTS[3 * i : 3 * i + 3], None))
                for i, n in enumerate(names)]  # fmt: skip

    async def scenario():
        batcher = Batcher(classifiers, Metrics(options.max_batch))
        worker = asyncio.create_task(batcher.run())
        answers = await asyncio.wait_for(asyncio.gather(*(batcher.classify(a, d) for a, d in requests)), 60)
        worker.cancel()
        return answers

    answers = asyncio.run(scenario())
    assert len(passes) == 1 and len(passes[0]) == 12 and set(passes[0]) == {"a0", "a1"}
    alone = [real(data, [adapter.peft_name] * len(data), options) for adapter, data in requests]
    assert all(torch.allclose(got, want, atol=1e-5) for got, want in zip(answers, alone, strict=True))
    assert not torch.allclose(alone[0], real(requests[0][1], ["a1"] * 3, options), atol=1e-3)  # the adapters differ


def test_adapters_health_and_metrics(server, runs):
    status, body = call(server, "GET", "/v1/adapters")
    assert status == 200
    by_name = {a["name"]: a for a in body["adapters"]}
    assert set(by_name) == {"one", "second"}
    summary = json.loads((runs / "two" / "summary.json").read_text())
    assert by_name["second"]["trainable"] == summary["trainable"]["total"] < by_name["one"]["trainable"]
    assert by_name["second"]["peak_validation_accuracy"] == summary["peak_val_accuracy"]
    assert by_name["one"]["labels"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert call(server, "GET", "/healthz") == (200, {"status": "ok", "adapters": 2})
    before = call(server, "GET", "/metrics")[1]
    call(server, "POST", "/v1/classify", {"adapter": "one", "texts": ["a", "b", "c"]})
    after = call(server, "GET", "/metrics")[1]

    def value(text: str, key: str) -> float:
        return float(next((line.split()[-1] for line in text.splitlines() if line.startswith(key)), 0))

    assert value(after, 'loralab_rows_total{adapter="one"}') - value(before, 'loralab_rows_total{adapter="one"}') == 3
    key = 'loralab_requests_total{path="/v1/classify",status="200"}'
    assert value(after, key) - value(before, key) == 1


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """ONNX exports of a run, fp32 and int8, each checked against its run as `loralab export` does."""
    from loralab.serving.export import ExportOptions, export_run

    root = tmp_path_factory.mktemp("serve-exports")
    fp32, _ = export_run(str(runs / "one"), str(root / "fp32"), ExportOptions(format="onnx"))
    int8, _ = export_run(str(runs / "one"), str(root / "int8"), ExportOptions(format="onnx", quantize="int8"))
    return fp32, int8


def test_onnx_exports_are_served_by_onnx_runtime_beside_a_run(runs, exports, tmp_path):
    """Two exports and a run in one server: three models, each row answered by its own, as `predict` answers
    from the same export or run; rows for several models that arrive together are split by model."""
    fp32, int8 = exports
    rows = [(t,) for t in TEXTS]
    int8_batches = ("text",), "--batch-size", "16"
    expected = {"fp32": predicted(fp32, tmp_path, rows), "int8": predicted(int8, tmp_path, rows, *int8_batches),
                "one": predicted(runs / "one", tmp_path, rows)}  # fmt: skip
    # --max-batch 16 as predict's batches: int8's activation scales are per batch, so equal batches answer equally.
    process, port = start(f"fp32={fp32}", f"int8={int8}", f"one={runs / 'one'}", "--max-batch", "16", "--threads", "1")
    status, body = call(port, "POST", "/v1/classify", {"adapter": "int8", "texts": TEXTS, "probabilities": True})
    assert status == 200 and body["labels"] == [label for label, _ in expected["int8"]]
    served = [x for row in body["probabilities"] for x in row.values()]
    assert served == pytest.approx([x for _, row in expected["int8"] for x in row], abs=1e-5)
    answered_concurrently(port, ("fp32", "one", "fp32", "one"), expected, 4)
    by_name = {a["name"]: a for a in call(port, "GET", "/v1/adapters")[1]["adapters"]}
    assert (by_name["int8"]["engine"], by_name["int8"]["precision"]["used"]) == ("onnx", "int8")
    assert (by_name["fp32"]["engine"], by_name["fp32"]["precision"]["used"]) == ("onnx", "fp32")
    assert (by_name["one"]["engine"], by_name["one"]["precision"]["used"]) == ("pytorch", "fp32")
    assert "stopped: every request was answered" in stop(process)


BAD_REQUESTS = [
    ("POST", "/v1/classify", b'{"adapter": ', 400, "not JSON"),
    ("POST", "/v1/classify", b"", 400, "not JSON"),
    ("POST", "/v1/classify", b'{"adapter": "one", "texts": ["caf\xe9"]}', 400, "not UTF-8"),
    ("POST", "/v1/classify", [1, 2], 422, "JSON object"),
    ("POST", "/v1/classify", "hello", 422, "JSON object"),
    ("POST", "/v1/classify", {"adapter": "one"}, 422, 'no "texts"'),
    ("POST", "/v1/classify", {"adapter": "one", "texts": "a text"}, 422, "list of strings"),
    ("POST", "/v1/classify", {"adapter": "one", "texts": ["a", 3]}, 422, "list of strings"),
    ("POST", "/v1/classify", {"adapter": "one", "texts": [None]}, 422, "list of strings"),
    ("POST", "/v1/classify", {"adapter": "one", "texts": [["nested"]]}, 422, "list of strings"),
    ("POST", "/v1/classify", {"adapter": "one", "texts": []}, 422, "empty"),
    ("POST", "/v1/classify", {"adapter": "nope", "texts": ["a"]}, 404, "no adapter 'nope'"),
    ("POST", "/v1/classify", {"adapter": 3, "texts": ["a"]}, 422, '"adapter" must be'),
    ("POST", "/v1/classify", {"texts": ["a"]}, 422, "one, second"),  # two adapters: which one?
    ("POST", "/v1/classify", {"adapter": "one", "texts": ["x" * 1_048_576]}, 413, "1,048,576 characters"),
    ("POST", "/v1/classify", {"adapter": "one", "texts": ["a"] * 100_000}, 413, "100,000 texts"),
    ("POST", "/v1/classify", {"adapter": "one", "texts": ["a"], "text_pairs": ["b"]}, 422, "single texts"),
    ("POST", "/v1/classify", {"adapter": "one", "texts": ["a", "b"], "text_pairs": ["c"]}, 422, "one pair per"),
    ("POST", "/v1/classify", {"adapter": "one", "texts": ["a"], "probabilities": "yes"}, 422, "true or false"),
    ("POST", "/v1/classify", {"adapter": "one", "text": ["a"]}, 422, "unknown field(s) 'text'"),
    ("GET", "/v1/classify", None, 405, "GET is not allowed"),
    ("DELETE", "/v1/adapters", None, 405, "DELETE is not allowed"),
    ("POST", "/healthz", None, 405, "POST is not allowed"),
    ("GET", "/v2/classify", None, 404, "no such path /v2/classify"),
]


def test_bad_requests_are_4xx_naming_the_problem_and_the_server_goes_on(server):
    good = {"adapter": "one", "texts": TEXTS[:2]}
    expected = call(server, "POST", "/v1/classify", good)
    assert expected[0] == 200
    for method, path, body, status, message in BAD_REQUESTS:
        got_status, got = call(server, method, path, body)
        assert (got_status, message in got.get("error", "")) == (status, True), (method, path, got)
        assert call(server, "POST", "/v1/classify", good) == expected


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: its terminal or ssh closed
def test_a_pair_run_served_alone_and_a_stop_signal_answers_what_is_in_flight(runs, tmp_path, stop_signal):
    rows = pair_rows(12, seed=4)
    expected = predicted(runs / "pairs", tmp_path, [(a, b) for _, a, b in rows], ("premise", "hypothesis"))
    # A long batching wait: the request is still waiting in the server when SIGTERM arrives.
    process, port = start(str(runs / "pairs"), "--max-wait-ms", "3000")
    assert call(port, "POST", "/v1/classify", {"texts": ["a"]}) == (
        422,
        {"error": 'adapter pairs was trained on text pairs: send "text_pairs" beside "texts"'},
    )
    answered = {}

    def client():
        body = {"texts": [a for _, a, _ in rows], "text_pairs": [b for _, _, b in rows], "probabilities": True}
        answered["response"] = call(port, "POST", "/v1/classify", body)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 60  # until the request waits in the batcher (its rows in the queue gauge)
    while time.monotonic() < deadline and "loralab_queue_rows 12.0" not in call(port, "GET", "/metrics")[1]:
        time.sleep(0.05)
    assert "loralab_queue_rows 12.0" in call(port, "GET", "/metrics")[1]
    assert "every request was answered" in stop(process, stop_signal)
    thread.join(timeout=60)
    assert "response" in answered, "the request in flight was not answered"
    status, body = answered["response"]
    assert status == 200 and body["labels"] == [label for label, _ in expected]
    served = [x for row in body["probabilities"] for x in row.values()]
    assert served == pytest.approx([x for _, row in expected for x in row], abs=1e-5)


def test_bad_serve_arguments_are_one_line(runs, capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cases = [
        ([str(runs / "nothing")], "is neither a finished run (no summary.json) nor an ONNX export"),
        ([str(runs / "one"), str(runs / "bert")], "have different bases"),
        ([str(runs / "one"), f"one={runs / 'two'}"], "'one' is given twice"),
        ([str(runs / "one"), str(runs / "mean")], "pool differently"),
        ([str(runs / "one"), "--port", str(taken.getsockname()[1])], "choose another --port"),
        ([str(runs / "one"), "--max-batch", "0"], "--max-batch must be at least 1"),
        ([f"={runs / 'one'}"], "names no adapter"),
    ]
    for argv, message in cases:
        assert main(["serve", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("loralab: error: serve: ") and message in err and err.count("\n") == 1, err
    taken.close()
