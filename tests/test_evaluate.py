"""The evaluation harness: outputs, resume, config mismatch, rag/self-ask wiring, the bm25-ranker, ask traces.

LLM methods run against a scripted generator (no model): `_prompt_ids` and `_generate` are replaced so each prompt
maps to a fixed completion. An end-to-end test with a tiny random Llama and the real rollout engine is at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from medr1 import evaluate as ev
from medr1 import traces
from medr1.data.schema import Document, Question
from medr1.errors import ConfigError, DataError
from medr1.io import iter_jsonl
from medr1.retrieval.base import Hit
from medr1.retrieval.ranker import OptionRanker

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def load_fixture_questions() -> list[Question]:
    return [Question.from_dict(obj, f"questions.jsonl:{n}") for n, obj in iter_jsonl(FIXTURES / "questions.jsonl")]


def load_fixture_docs() -> list[Document]:
    return [Document.from_dict(obj, f"docs.jsonl:{n}") for n, obj in iter_jsonl(FIXTURES / "corpus" / "docs.jsonl")]


class ScriptedLLM(ev.Generator):
    """A scripted `medr1.evaluate.Generator` (passed as `generator=`): the completion of each question comes from
    `script`; each call records its prompts, retriever and rollout config."""

    def __init__(self, script: dict[str, str], searches: dict[str, list[str]] | None = None) -> None:
        self.script = script
        self.searches = searches or {}
        self.messages: list[list[dict]] = []
        self.calls: list[dict] = []

    def prompt_ids(self, loaded, messages):
        self.messages.append(messages)
        return [len(self.messages) - 1]

    def backend(self, loaded, kind):
        return None

    def rollouts(self, loaded, prompts, retriever, rcfg, backend=None, seed_offset=0, bar=None):
        self.calls.append({"n": len(prompts), "retriever": retriever, "cfg": rcfg, "seed_offset": seed_offset})
        out = []
        for (pid,) in prompts:
            content = self.messages[pid][0]["content"]
            qid = next(k for k in self.script if f"[{k}]" in content)
            queries = self.searches.get(qid, [])
            out.append(SimpleNamespace(
                text=self.script[qid], queries=queries, retrieved_doc_ids=[["OMIM:154700"] for _ in queries],
                retrieved_titles=[["Marfan syndrome"] for _ in queries], finish_reason="answer", tool_errors=0,
                n_generated=len(self.script[qid].split()), turns=1 + len(queries),
            ))
        return out


class FakeRetriever:
    def __init__(self, docs: list[Document], fail: bool = False) -> None:
        self._docs = docs
        self.fail = fail
        self.queries: list[str] = []

    def search(self, queries, k=5):
        if self.fail:
            raise ConnectionError("retriever down")
        self.queries.extend(queries)
        return [[Hit(d, 1.0 / (i + 1)) for i, d in enumerate(self._docs[:k])] for _ in queries]


@pytest.fixture
def questions() -> list[Question]:
    qs = load_fixture_questions()
    for q in qs:  # tag each question text so the scripted LLM can tell prompts apart
        q.question = f"[{q.id}] {q.question}"
    return qs


@pytest.fixture
def llm() -> ScriptedLLM:
    fake = ScriptedLLM({
        "q1": "<think>Tall stature, arachnodactyly, ectopia lentis and aortic root aneurysm.</think><answer>B</answer>",
        "q2": "<think>sweat chloride</think><answer>A</answer>",
        "q3": "<think>I am not sure</think>",
        "q4": "<think>skin</think><answer>D. Ehlers-Danlos</answer>",
    })
    return fake


def _cfg(tmp_path: Path, **kw) -> ev.EvalConfig:
    base = {"method": "cot", "out": str(tmp_path / "run"), "batch_size": 1, "data": "jsonl:fixture"}
    base.update(kw)
    return ev.EvalConfig(**base)


def _samples(cfg: ev.EvalConfig) -> list[dict]:
    return [obj for _, obj in iter_jsonl(Path(cfg.out) / "samples.jsonl")]


def test_cot_run_writes_samples_metrics_and_config(tmp_path, questions, llm) -> None:
    cfg = _cfg(tmp_path)
    metrics = ev.run_eval(cfg, questions=questions, loaded=object(), progress=False, generator=llm)
    assert metrics["n"] == 4 and metrics["accuracy"] == 0.5 and metrics["unparseable_rate"] == 0.25
    assert metrics["gold_hit_rate"] is None  # cot retrieves nothing
    assert metrics["n_with_explanation"] == 3 and metrics["rouge_l"] > 0
    samples = _samples(cfg)
    assert [s["id"] for s in samples] == ["q1", "q2", "q3", "q4"]
    assert [s["prediction"] for s in samples] == ["B", "A", None, "D"]
    assert [s["correct"] for s in samples] == [True, False, False, True]
    assert samples[0]["completion"].startswith("<think>Tall") and samples[0]["gold"] == "B"
    assert all(c["retriever"] is None and c["cfg"].max_turns == 1 for c in llm.calls)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["accuracy"] == 0.5
    assert "method: cot" in (tmp_path / "run" / "config.yaml").read_text()
    assert "accuracy" in ev.format_metrics_table(metrics) and "95% CI" in ev.format_metrics_table(metrics)


def test_resume_continues_after_last_sample_and_drops_a_torn_line(tmp_path, questions, llm) -> None:
    ev.run_eval(_cfg(tmp_path, limit=2), questions=questions, loaded=object(), progress=False, generator=llm)
    assert len(llm.calls) == 1
    samples_path = tmp_path / "run" / "samples.jsonl"
    with open(samples_path, "a") as fh:
        fh.write('{"id": "q3", "trunc')  # a writer killed mid-line
    metrics = ev.run_eval(_cfg(tmp_path, limit=4), questions=questions, loaded=object(), progress=False, generator=llm)
    assert len(llm.calls) == 2 and llm.calls[1]["n"] == 2  # only q3, q4 were generated
    assert [(c["cfg"].seed, c["seed_offset"]) for c in llm.calls] == [(0, 0), (0, 2)]  # seeds follow positions
    assert [s["id"] for s in _samples(_cfg(tmp_path))] == ["q1", "q2", "q3", "q4"]
    assert metrics["n"] == 4 and metrics["resumed_from"] == 2
    again = ev.run_eval(_cfg(tmp_path, limit=4), questions=questions, loaded=None, progress=False, generator=llm)
    assert len(llm.calls) == 2 and again["accuracy"] == metrics["accuracy"]  # nothing left: no model loaded


def test_a_different_config_is_refused_unless_forced(tmp_path, questions, llm) -> None:
    ev.run_eval(_cfg(tmp_path, limit=2), questions=questions, loaded=object(), progress=False, generator=llm)
    with pytest.raises(ConfigError, match=r"topk: 3 -> 5.*--force"):
        ev.run_eval(_cfg(tmp_path, topk=5), questions=questions, loaded=object(), progress=False, generator=llm)
    ev.run_eval(_cfg(tmp_path, topk=5), force=True, questions=questions, loaded=object(), progress=False, generator=llm)
    assert len(_samples(_cfg(tmp_path))) == 4


def test_changed_data_is_refused(tmp_path, questions, llm) -> None:
    ev.run_eval(_cfg(tmp_path, limit=2), questions=questions, loaded=object(), progress=False, generator=llm)
    with pytest.raises(DataError, match="does not match question 1"):
        ev.run_eval(_cfg(tmp_path), questions=questions[::-1], loaded=object(), progress=False, generator=llm)


def test_rag_retrieves_with_the_question_and_shows_passages(tmp_path, questions, llm) -> None:
    retriever = FakeRetriever(load_fixture_docs())
    metrics = ev.run_eval(_cfg(tmp_path, method="rag", topk=2), questions=questions, loaded=object(),
                          retriever=retriever, progress=False, generator=llm)
    assert retriever.queries == [q.question for q in questions]
    content = llm.messages[0][0]["content"]
    assert "Doc 1 (Title: Marfan syndrome)" in content and "Doc 2 (Title: Homocystinuria)" in content
    assert content.index("Doc 1") < content.index(questions[0].question)
    assert all(c["retriever"] is None for c in llm.calls)  # passages are in the prompt; no search in the loop
    s = _samples(_cfg(tmp_path, method="rag"))[0]
    assert s["retrieved_ids"] == [["OMIM:154700", "OMIM:236200"]] and s["queries"] == [questions[0].question]
    assert metrics["gold_hit_rate"] == 0.25 and metrics["searches_per_question"] == 1.0


def test_rag_retrieval_failure_is_recorded_not_raised(tmp_path, questions, llm) -> None:
    metrics = ev.run_eval(_cfg(tmp_path, method="rag"), questions=questions, loaded=object(),
                          retriever=FakeRetriever([], fail=True), progress=False, generator=llm)
    assert metrics["tool_errors"] == 4 and metrics["n"] == 4
    assert "No documents found." in llm.messages[0][0]["content"]
    assert "retriever down" in _samples(_cfg(tmp_path, method="rag"))[0]["tool_errors"][0]


def test_self_ask_passes_the_retriever_into_the_loop(tmp_path, questions, llm) -> None:
    llm.searches = {"q1": ["tall stature ectopia lentis"]}
    retriever = FakeRetriever(load_fixture_docs())
    metrics = ev.run_eval(_cfg(tmp_path, method="self-ask"), questions=questions, loaded=object(),
                          retriever=retriever, progress=False, generator=llm)
    assert all(c["retriever"] is retriever and not c["cfg"].max_turns == 1 for c in llm.calls)
    assert "<search>" in llm.messages[0][0]["content"]
    assert metrics["searches_per_question"] == 0.25 and metrics["gold_hit_rate"] == 0.25


# --- bm25-ranker ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bm25():
    from medr1.retrieval.bm25 import BM25Retriever

    return BM25Retriever.build(load_fixture_docs(), show_progress=False)


def test_ranker_with_exact_bm25_scores(tmp_path, bm25) -> None:
    qs = load_fixture_questions()
    metrics = ev.run_eval(_cfg(tmp_path, method="bm25-ranker"), questions=qs, retriever=bm25, progress=False)
    samples = _samples(_cfg(tmp_path, method="bm25-ranker"))
    assert [s["prediction"] for s in samples] == ["B", "C", "A", "D"]
    assert metrics["accuracy"] == 1.0 and metrics["gold_hit_rate"] == 1.0 and metrics["generated_tokens_mean"] == 0
    assert metrics["bleu"] is None  # the ranker writes scores, not reasoning
    q3 = samples[2]["ranker"]
    assert q3["D"]["exact"] is False  # "Unknown periodic syndrome X" has no title match: nearest document stands in
    assert q3["A"]["exact"] is True and q3["A"]["doc_id"] == "OMIM:249100"
    assert "Familial Mediterranean fever [OMIM:249100, title] BM25" in samples[2]["completion"]


def test_ranker_titles_are_case_and_punctuation_insensitive(bm25) -> None:
    q = Question(id="x", question="skin hyperextensibility atrophic scars", answer="A",
                 options={"A": "ehlers danlos syndrome classic type", "B": "MARFAN SYNDROME"})
    result = OptionRanker(bm25).rank(q)
    assert result["prediction"] == "A"
    assert result["options"]["A"]["doc_id"] == "OMIM:130000" and result["options"]["A"]["exact"]


def test_ranker_through_search_only_retriever() -> None:
    """A retriever without a bm25s model (dense, HTTP): scores come from the findings' top hits."""
    docs = load_fixture_docs()

    class SearchOnly:
        def search(self, queries, k=5):
            out = []
            for q in queries:
                words = set(q.lower().split())
                scored = [(len(words & set(d.contents.lower().replace(";", " ").split())), d) for d in docs]
                out.append([Hit(d, float(s)) for s, d in sorted(scored, key=lambda t: -t[0])[:k] if s > 0])
            return out

    q = load_fixture_questions()[1]
    result = OptionRanker(SearchOnly()).rank(q)
    assert result["prediction"] == "C"


def test_ranker_without_any_document_is_unparseable() -> None:
    class Empty:
        def search(self, queries, k=5):
            return [[] for _ in queries]

    q = load_fixture_questions()[0]
    assert OptionRanker(Empty()).rank(q)["prediction"] is None
    rec = ev.ranker_batch([q], OptionRanker(Empty()))[0]
    assert rec["parsed"] is False and "A: no document" in rec["completion"]


def test_ranker_cli_end_to_end(tmp_path) -> None:
    """`medr1 eval --method bm25-ranker` over a fixture corpus index and a jsonl source: real CLI, no LLM."""
    from typer.testing import CliRunner

    from medr1.cli import app
    from medr1.retrieval.index import build_index

    index = build_index(FIXTURES / "corpus", "bm25", tmp_path / "index", show_progress=False)
    out = tmp_path / "ranker"
    args = ["eval", "--data", f"jsonl:{FIXTURES / 'questions.jsonl'}", "--method", "bm25-ranker", "--out", str(out),
            "--index", str(index), "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "100.0%" in result.output and "bm25-ranker" in result.output
    assert json.loads((out / "metrics.json").read_text())["n"] == 4
    bad = CliRunner().invoke(app, [*args, "topk=7"])
    assert bad.exit_code == 2 and "different config" in bad.output
    unknown = CliRunner().invoke(app, [*args, "--force", "nonsense=1"])
    assert unknown.exit_code == 2 and "unknown key" in unknown.output


# --- config, ask, traces ----------------------------------------------------------------------------------------------


def test_config_layers_and_validation(tmp_path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("rollout:\n  topk: 5\n  max_turns: 2\neval:\n  method: rag\n  out: runs/a\nsft:\n  lr: 1\n")
    cfg = ev.load_eval_config(path, {"out": "runs/b", "limit": None}, ["topk=2"])
    assert (cfg.method, cfg.topk, cfg.max_turns, cfg.out, cfg.limit) == ("rag", 2, 2, "runs/b", None)
    path.write_text("eval:\n  method: rag\n  topk: 5\n")  # a budget in the eval section of a recipe
    with pytest.raises(ConfigError, match=r"\['topk'\] belong in the rollout: section"):
        ev.load_eval_config(path, {"out": "x"})
    with pytest.raises(ConfigError, match="method"):
        ev.load_eval_config(None, {"method": "magic", "out": "x"})
    with pytest.raises(ConfigError, match="'out' is required"):
        ev.load_eval_config(None, {"method": "cot"})


@pytest.mark.parametrize("text,expected", [
    ("A=Marfan syndrome;B=Homocystinuria", {"A": "Marfan syndrome", "B": "Homocystinuria"}),
    (" a = x ; b=y ;", {"A": "x", "B": "y"}),
    ("", {}),
    (None, {}),
])
def test_parse_options(text, expected) -> None:
    assert ev.parse_options(text) == expected


@pytest.mark.parametrize("text", ["A=x;A=y", "Marfan;B=y", "A=x", "AB=x;C=y", "A=;B=y"])
def test_parse_options_errors(text) -> None:
    with pytest.raises(ConfigError, match="--options"):
        ev.parse_options(text)


def test_ask_free_text_and_render_trace(llm) -> None:
    llm.script = {"ask": "<think>fever</think><search>recurrent fever serositis</search>\n<information>\nDoc 1 ...\n"
                         "</information>\n<think>fits</think><answer>Familial Mediterranean fever</answer>"}
    llm.searches = {"ask": ["recurrent fever serositis"]}
    cfg = ev.EvalConfig(out="-", method="self-ask")
    rec = ev.ask_case("[ask] Recurrent fever and serositis", None, cfg, loaded=object(), retriever=FakeRetriever([]), generator=llm)
    assert rec["prediction"] == "Familial Mediterranean fever" and rec["correct"] is None
    assert "diagnosis name" in llm.messages[-1][0]["content"]
    text = traces.render_trace(rec)
    lines = text.splitlines()
    assert lines[0].startswith("Case: [ask] Recurrent fever")
    assert "search 1: recurrent fever serositis" in lines
    assert "  evidence: Marfan syndrome" in lines  # titles come from the record, not the raw block
    assert "diagnosis: Familial Mediterranean fever" in lines
    assert "\x1b[" not in text and "\x1b[" in traces.render_trace(rec, color=True)


def test_render_trace_marks_right_and_wrong() -> None:
    rec = {"question": "q", "options": {"A": "Marfan", "B": "EDS"}, "completion": "<answer>B</answer>",
           "prediction": "B", "gold": "A", "correct": False, "queries": [], "finish_reason": "answer"}
    assert "diagnosis: B. EDS  [gold A: wrong]" in traces.render_trace(rec)
    assert traces.trace_segments("hi <think>a</think> x <answer>B") == [("text", "hi"), ("think", "a"), ("text", "x"),
                                                                    ("answer", "B")]


# --- end to end with a tiny random Llama and the real rollout engine ---------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tiny_llama_end_to_end_self_ask_and_resume(tmp_path, bm25, tiny_llama, temperature) -> None:
    """A run interrupted after one question and resumed equals an uninterrupted run, greedy or sampled."""
    from medr1.rollout import FINISH_REASONS

    loaded = tiny_llama
    qs = load_fixture_questions()
    budgets = {"max_turns": 3, "max_new_tokens_per_turn": 12, "max_total_tokens": 96, "max_info_tokens": 48,
               "batch_size": 2, "temperature": temperature}
    whole = _cfg(tmp_path / "whole", method="self-ask", **budgets)
    metrics = ev.run_eval(whole, questions=qs, loaded=loaded, retriever=bm25, progress=False)
    samples = _samples(whole)
    assert metrics["n"] == 4 and len(samples) == 4
    assert all(s["finish_reason"] in FINISH_REASONS for s in samples)
    assert all(0 < s["n_generated"] <= 96 and s["seconds"] > 0 for s in samples)
    assert all(len(s["retrieved_ids"]) == len(s["queries"]) for s in samples)
    from medr1.metrics import extract_answer, wilson_interval

    for s in samples:  # what is scored is what the completion says, and accuracy is their mean
        assert s["prediction"] == extract_answer(s["completion"], "".join(s["options"]), s["options"])
        assert s["correct"] == (s["prediction"] is not None and s["prediction"] == s["gold"])
    right = sum(s["correct"] for s in samples)
    assert metrics["accuracy"] == right / 4 and (metrics["ci_low"], metrics["ci_high"]) == wilson_interval(right, 4)

    split = _cfg(tmp_path / "split", method="self-ask", **budgets)
    ev.run_eval(dataclasses_replace(split, limit=1), questions=qs, loaded=loaded, retriever=bm25, progress=False)
    ev.run_eval(split, questions=qs, loaded=loaded, retriever=bm25, progress=False)
    resumed = _samples(split)
    keys = ("id", "completion", "prediction", "queries", "retrieved_ids", "finish_reason", "n_generated")
    assert [{k: s[k] for k in keys} for s in resumed] == [{k: s[k] for k in keys} for s in samples]


@pytest.mark.parametrize("method", ["cot", "rag"])
def test_tiny_llama_single_turn_methods(tmp_path, bm25, tiny_llama, method) -> None:
    cfg = _cfg(tmp_path, method=method, max_new_tokens_per_turn=10, max_total_tokens=10, batch_size=4)
    metrics = ev.run_eval(cfg, questions=load_fixture_questions(), loaded=tiny_llama, retriever=bm25,
                          progress=False)
    samples = _samples(cfg)
    assert metrics["n"] == 4 and all(s["turns"] == 1 and s["n_generated"] <= 10 for s in samples)
    assert metrics["searches_per_question"] == (1.0 if method == "rag" else 0.0)


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_rescore_reextracts_without_generating(tmp_path, questions, llm) -> None:
    cfg = _cfg(tmp_path)
    ev.run_eval(cfg, questions=questions, loaded=object(), progress=False, generator=llm)
    path = Path(cfg.out) / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[2]["completion"] = "A. Familial Mediterranean fever"  # as if extraction rules had missed it before
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = ev.rescore(cfg.out)
    assert metrics["accuracy"] == 0.75 and metrics["unparseable_rate"] == 0.0 and len(llm.calls) == 1
    assert _samples(cfg)[2]["correct"] is True


def test_render_trace_marks_unfinished_and_unexecuted_searches() -> None:
    rec = {"question": "q", "options": {"A": "x", "B": "y"}, "prediction": None, "gold": "A", "correct": False,
           "completion": "<search>one</search><information>i</information><search>two</search><search>thr",
           "queries": ["one"], "retrieved_titles": [["T1"]], "finish_reason": "budget"}
    lines = traces.render_trace(rec).splitlines()
    assert "search 1: one" in lines and "  evidence: T1" in lines
    assert "search 2: two (not run: turn limit)" in lines
    assert "search 3: thr (unfinished: budget)" in lines
    assert traces.trace_segments("<think>a</think><answer>B", with_closed=True) == [("think", "a", True),
                                                                                ("answer", "B", False)]


# --- the real embedded default (slow) -------------------------------------------------------------------------------


@pytest.mark.slow
def test_bm25_ranker_is_a_strong_reference_on_hpo_dx(tmp_path) -> None:
    cfg = ev.EvalConfig(data="hpo-dx:test", method="bm25-ranker", out=str(tmp_path / "r"), limit=40)
    metrics = ev.run_eval(cfg, progress=False)
    assert metrics["n"] == 40 and metrics["unparseable_rate"] == 0.0
    assert metrics["accuracy"] >= 0.6  # measured 8/8 on the first 8 test questions; chance is 0.25
    assert metrics["gold_hit_rate"] >= 0.9  # the true disease's document is found by title


@pytest.mark.slow
def test_smollm2_self_ask_end_to_end(tmp_path) -> None:
    cfg = ev.EvalConfig(model="smollm2-135m", data="hpo-dx:test", method="self-ask", out=str(tmp_path / "s"),
                        limit=2, max_new_tokens_per_turn=48, max_total_tokens=160)
    metrics = ev.run_eval(cfg, progress=False)
    samples = _samples(cfg)
    assert metrics["n"] == 2 and [s["id"] for s in samples] == ["hpo-dx-test-00000", "hpo-dx-test-00001"]
    assert all(s["n_generated"] > 0 and s["completion"] for s in samples)
    assert (tmp_path / "s" / "metrics.json").is_file() and (tmp_path / "s" / "config.yaml").is_file()


def test_a_method_registered_in_one_place_runs_through_eval(tmp_path, bm25, tiny_llama) -> None:
    """Adding a method is one entry of the method table: eval, its budget rule and its prompt follow from it."""
    from medr1 import methods

    seen: list[str] = []

    def brief(question, passages=None):
        seen.append(question.id)
        return [{"role": "user", "content": f"{question.question}\nAnswer with <answer>LETTER</answer>."}]

    methods.register(methods.Method("brief", "none", brief, note="test-only method"))
    try:
        cfg = _cfg(tmp_path, method="brief", max_turns=2, max_new_tokens_per_turn=6, max_total_tokens=40, batch_size=4)
        metrics = ev.run_eval(cfg, questions=load_fixture_questions(), loaded=tiny_llama, retriever=bm25,
                              progress=False)
        samples = _samples(cfg)
        assert seen == [q.id for q in load_fixture_questions()]
        assert metrics["n"] == 4 and {s["method"] for s in samples} == {"brief"}
        assert all(s["turns"] == 1 and s["queries"] == [] for s in samples)  # no retrieval: one turn
        assert max(s["n_generated"] for s in samples) <= 12  # the single-turn budget: 2 turns x 6 tokens
        assert metrics["gold_hit_rate"] is None
    finally:
        methods.METHODS.pop("brief")
    with pytest.raises(ConfigError, match="'brief' is not one of"):
        _cfg(tmp_path / "again", method="brief").validate()


def test_eval_command_loads_the_tiny_random_llama_by_name(tmp_path) -> None:
    from typer.testing import CliRunner

    from medr1.cli import app

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(q.to_dict()) + "\n" for q in load_fixture_questions()[:2]))
    out = tmp_path / "e"
    result = CliRunner().invoke(app, ["eval", "--model", "tiny-random-llama", "--data", f"jsonl:{data}", "--method",
                                      "cot", "--limit", "2", "--out", str(out), "max_new_tokens_per_turn=4",
                                      "device=cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["n"] == 2


def test_rotate_options_moves_the_gold_with_its_text() -> None:
    q = load_fixture_questions()[0]
    r = ev.rotate_options(q, 1)
    letters = sorted(q.options)
    assert r.options[r.answer] == q.options[q.answer] and r.answer != q.answer
    assert [r.options[letters[(i + 1) % len(letters)]] for i in range(len(letters))] == [q.options[k] for k in letters]
    assert ev.rotate_options(q, len(letters)) == q
