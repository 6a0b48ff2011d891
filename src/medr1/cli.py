"""The `medr1` command line (typer). Every command has `--help` with an example.

    medr1 data build hpo-dx --out data/hpo-dx        # the HPO-Dx diagnosis benchmark
    medr1 corpus build hpo --out corpora/hpo          # the HPO knowledge base as docs.jsonl
    medr1 index build --corpus corpora/hpo --retriever bm25 --out indexes/hpo-bm25
    medr1 eval --model smollm2-135m --data hpo-dx:test --method self-ask --out runs/eval
    medr1 run --profile quickstart                   # the whole pipeline and its report

Heavy libraries (torch, transformers, trl) are imported inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer

from medr1.errors import Medr1Error
from medr1.methods import STAGES

app = typer.Typer(
    help="medr1: retrieval-augmented medical diagnostic reasoning (SFT, self-ask retrieval, GRPO, evaluation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Load, inspect and build question datasets.", no_args_is_help=True)
corpus_app = typer.Typer(help="Build retrieval corpora (docs.jsonl).", no_args_is_help=True)
index_app = typer.Typer(help="Build and evaluate retrieval indexes.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(corpus_app, name="corpus")
export_app = typer.Typer(help="Export training data for other engines (verl).", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(export_app, name="export")


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn medr1's own errors into `error: <message>` on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Medr1Error as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper


def echo_err(message: str) -> None:
    typer.echo(message, err=True)


# ---------------------------------------------------------------------------------------------------------------------
# data and corpus commands (foundation)
# ---------------------------------------------------------------------------------------------------------------------


@data_app.command("show")
@friendly_errors
def data_show(
    source: str = typer.Argument(..., help="A source spec, e.g. mirage:medqa, medmcqa:PATH/dev.json, hpo-dx:test."),
    limit: int = typer.Option(3, "--limit", "-n", min=0, help="How many questions to print (0 = all)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Count and skip malformed records instead of failing."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the questions as normalized JSON lines (counts go to stderr)."
    ),
) -> None:
    """Load any source and print its counts and its first questions, normalized.

    Example: medr1 data show mirage:medqa --limit 2

    Example: medr1 data show medmcqa: --limit 0 --json > medmcqa-dev.jsonl
    """
    import json

    from medr1.data.sources import format_counts, format_question, load_questions

    result = load_questions(source, skip_bad=skip_bad)
    shown = result.questions if limit == 0 else result.questions[:limit]
    if as_json:
        echo_err(format_counts(result))
        for q in shown:
            typer.echo(json.dumps(q.to_dict(), ensure_ascii=False))
    else:
        typer.echo(format_counts(result))
        for i, q in enumerate(shown, start=1):
            typer.echo("")
            typer.echo(format_question(q, i))
    if skip_bad or result.skips.total:
        echo_err(result.skips.summary())


@data_app.command("build")
@friendly_errors
def data_build(
    name: str = typer.Argument(..., help="Which benchmark to build; only 'hpo-dx' exists."),
    out: str = typer.Option(..., "--out", help="Output directory for train/dev/test.jsonl and stats.json."),
    seed: int = typer.Option(0, "--seed", help="Seed for vignette sampling, distractors and answer positions."),
    n_train: int = typer.Option(3000, "--n-train", min=1, help="Training vignettes."),
    n_dev: int = typer.Option(300, "--n-dev", min=1, help="Development vignettes."),
    n_test: int = typer.Option(500, "--n-test", min=1, help="Test vignettes."),
) -> None:
    """Build the HPO-Dx diagnosis benchmark (disease-disjoint train/dev/test vignettes from the HPO annotations).

    Example: medr1 data build hpo-dx --out data/hpo-dx --seed 0
    """
    import json
    import time

    from medr1.data.hpo_dx import HpoDxConfig, build_hpo_dx
    from medr1.errors import ConfigError

    if name != "hpo-dx":
        raise ConfigError(f"unknown benchmark {name!r}; `medr1 data build` knows: hpo-dx")
    start = time.perf_counter()
    stats = build_hpo_dx(out, HpoDxConfig(seed=seed, n_train=n_train, n_dev=n_dev, n_test=n_test))
    for split, s in stats["splits"].items():
        f = s["findings_per_vignette"]
        typer.echo(f"{split}: {s['questions']} questions over {s['answer_diseases_used']} diseases "
                   f"({s['diseases_in_split']} in split); findings/vignette {f['mean']} [{f['min']}-{f['max']}]; "
                   f"distractor overlap {s['distractor_score']['mean']}; letters {s['answer_letters']}")
    typer.echo(f"split overlaps (all 0): {json.dumps(stats['overlap'])}")
    typer.echo(f"HPO {stats['hpo_version']}; wrote {out} in {time.perf_counter() - start:.1f} s")


@data_app.command("explain")
@friendly_errors
def data_explain(
    teacher: str = typer.Option(..., "--teacher", help="Base URL of an OpenAI-compatible API (vLLM, medr1 serve, "
                                                       "a hosted one), e.g. http://127.0.0.1:8001/v1."),
    teacher_model: str = typer.Option(..., "--teacher-model", help="The model id the endpoint serves."),
    data: str = typer.Option(..., "--data", "-d", help="Source spec of the questions to explain."),
    out: str = typer.Option(..., "--out", "-o", help="Output jsonl (accepted questions with explanations)."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="Only the first N questions."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Requests in flight at once."),
    retries: int = typer.Option(3, "--retries", min=0, help="Retries with backoff on timeouts, 429 and 5xx."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per request."),
    max_tokens: int = typer.Option(384, "--max-tokens", min=1, help="Most tokens of one explanation."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable with the key."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Count malformed records instead of stopping."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Long-form explanations from a teacher model for questions with letter or keyword answers; explanations that
    do not support the gold are rejected and counted. Resumable: a rerun asks only for what is not cached.

    Example: medr1 data explain --teacher http://127.0.0.1:8001/v1 --teacher-model medr1 --data medqa:../shared/data/medqa/dev.jsonl --limit 50 --out data/medqa-explained.jsonl

    Then: medr1 sft --config recipes/quickstart.yaml explanation_data='["jsonl:data/medqa-explained.jsonl"]'
    """
    from medr1.data.explain import ExplainConfig, run_explain

    cfg = ExplainConfig(teacher=teacher, teacher_model=teacher_model, data=data, out=out, limit=limit,
                        concurrency=concurrency, retries=retries, timeout_s=timeout, max_tokens=max_tokens,
                        api_key_env=api_key_env, skip_bad=skip_bad)
    stats = run_explain(cfg, progress=not quiet)
    typer.echo(f"{stats['questions']} questions: {stats['cached']} cached from an earlier run, {stats['asked']} "
               f"asked; accepted {stats['accepted']}, rejected {stats['rejected'] or 0}, failed {stats['failed'] or 0}")
    typer.echo(f"wrote {out} (an SFT explanation source: jsonl:{out}) and {out}.rejected.jsonl")
    if stats["failed"]:
        echo_err(f"{sum(stats['failed'].values())} requests failed; run the same command again to retry them")
        raise typer.Exit(code=1)


@corpus_app.command("build")
@friendly_errors
def corpus_build(
    source: str = typer.Argument(..., help="hpo, medquad[:DIR], pubmedqa[:FILE] or jsonl:FILE (MedRAG chunks)."),
    out: str = typer.Option(..., "--out", help="Output directory for docs.jsonl and meta.json."),
) -> None:
    """Build a retrieval corpus (docs.jsonl + meta.json with count, sha256 and HPO release).

    Example: medr1 corpus build hpo --out corpora/hpo

    Example: medr1 corpus build medquad:../shared/data/medquad --out corpora/medquad
    """
    from medr1.corpus import build_corpus

    meta = build_corpus(source, out)
    typer.echo(f"{meta['count']} documents from {meta['source']} -> {out}/docs.jsonl ({meta['seconds']} s)")
    typer.echo(f"counts: {meta['counts']}")
    if meta["skipped"]:
        typer.echo(f"skipped (reported, not errors): {meta['skipped']}")
    if meta["hpo_version"]:
        typer.echo(f"HPO release {meta['hpo_version']}")


# ---------------------------------------------------------------------------------------------------------------------
# retrieval commands: index build, search, serve-retriever
# ---------------------------------------------------------------------------------------------------------------------


def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1 or ks[-1] > 100:
        raise typer.BadParameter(f"--k values must be between 1 and 100, got {text!r}")
    return ks


@index_app.command("build")
@friendly_errors
def index_build(
    corpus: str = typer.Option(..., "--corpus", help="Corpus directory with docs.jsonl (or the docs.jsonl file)."),
    retriever: str = typer.Option("bm25", "--retriever", "-r", help="bm25, dense or hybrid (RRF of both)."),
    out: str = typer.Option(..., "--out", "-o", help="Index directory to write (replaced atomically if it exists)."),
    embedder: str = typer.Option(None, "--embedder", help="sentence-transformers model for dense/hybrid "
                                 "(default: the bundled all-MiniLM-L6-v2; any hub name or local path)."),
    rrf_k: float = typer.Option(60.0, "--rrf-k", min=0.0, help="Reciprocal rank fusion constant (hybrid)."),
    bm25_weight: float = typer.Option(1.0, "--bm25-weight", min=0.0, help="RRF weight of the BM25 ranking (hybrid)."),
    dense_weight: float = typer.Option(1.0, "--dense-weight", min=0.0, help="RRF weight of the dense ranking (hybrid)."),
    dense_index: str = typer.Option(None, "--dense-index", help="Reuse the embeddings of this dense/hybrid index "
                                    "over the same corpus instead of encoding again (hybrid)."),
    k1: float = typer.Option(0.9, "--k1", min=0.0, help="BM25 term-frequency saturation (bm25/hybrid)."),
    b: float = typer.Option(0.4, "--b", min=0.0, max=1.0, help="BM25 length normalization (bm25/hybrid)."),
) -> None:
    """Build and persist a retrieval index over a corpus; the index records the corpus hash.

    Example: medr1 index build --corpus ~/.cache/medr1/corpora/hpo --retriever bm25 --out indexes/hpo-bm25

    Example: medr1 index build --corpus corpora/hpo --retriever hybrid --out indexes/hpo-hybrid

    Example: medr1 index build --corpus corpora/hpo --retriever hybrid --dense-index indexes/hpo-hybrid
    --rrf-k 20 --dense-weight 0.3 --out indexes/hpo-hybrid-w
    """
    from medr1.retrieval.bm25 import BM25Params
    from medr1.retrieval.hybrid import HybridParams
    from medr1.retrieval.index import build_index, read_index_meta

    out_dir = build_index(corpus, retriever.strip().lower(), out, embedder=embedder,
                          bm25=BM25Params(k1=k1, b=b), dense_index=dense_index,
                          hybrid=HybridParams(rrf_k=rrf_k, bm25_weight=bm25_weight, dense_weight=dense_weight))
    meta = read_index_meta(out_dir)
    typer.echo(f"built {meta['kind']} index over {meta['corpus']['docs']} documents in "
               f"{meta['build_seconds']:.1f} s: {out_dir}")


@index_app.command("eval")
@friendly_errors
def index_eval(
    index: list[str] = typer.Option(None, "--index", help="Index directory (repeatable; default: the HPO BM25 index)."),
    data: list[str] = typer.Option(..., "--data", help="Question source spec with gold_doc_ids (repeatable), "
                                   "e.g. hpo-dx:dev, phenopackets:DIR."),
    ks: str = typer.Option("1,5,10", "--k", help="Comma-separated cut-offs."),
    limit: int = typer.Option(None, "--limit", min=1, help="Use only the first N questions of each source."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON lines instead of a table."),
) -> None:
    """Retrieval recall@k / gold-document hit rate of questions' gold_doc_ids (query = the question text).

    Example: medr1 index eval --index indexes/hpo-bm25 --index indexes/hpo-hybrid --data hpo-dx:dev --k 1,5,10
    """
    import json

    from medr1.data.sources import load_questions
    from medr1.retrieval import open_retriever
    from medr1.retrieval.eval_retrieval import evaluate_retrieval, format_table

    cutoffs = _parse_ks(ks)
    datasets = []
    for spec in data:
        result = load_questions(spec, limit=limit)
        datasets.append((spec, result.questions))
    rows = []
    for spec_index in index or [None]:
        retriever = open_retriever(spec_index)
        name = spec_index or "hpo-bm25 (default)"
        name = f"{name} [{getattr(retriever, 'kind', '?')}]"
        for spec, questions in datasets:
            rows.append(evaluate_retrieval(retriever, questions, cutoffs, index_name=name, data_name=spec))
    if as_json:
        for r in rows:
            typer.echo(json.dumps({"index": r.index, "data": r.data, "n": r.n, "n_no_gold": r.n_no_gold,
                                   "recall": r.recall, "hit": r.hit, "mrr": r.mrr, "seconds": round(r.seconds, 2)}))
    else:
        typer.echo(format_table(rows))


@app.command("search")
@friendly_errors
def search(
    query: str = typer.Argument(..., help="The query text."),
    index: str = typer.Option(None, "--index", help="Index directory or http://host:port of a running service "
                              "(default: the HPO BM25 index, built on first use)."),
    k: int = typer.Option(5, "-k", "--topk", help="How many documents to return (1-100)."),
    as_json: bool = typer.Option(False, "--json", help="Print Search-R1-style JSON instead of text."),
    width: int = typer.Option(300, "--width", min=0, help="Characters of each document's text to print (0 = all)."),
) -> None:
    """Search an index with one query and print the ranked documents.

    Example: medr1 search "tall stature, long fingers, dislocated lens" -k 5

    Example: medr1 search --index indexes/hpo-hybrid "recurrent epistaxis telangiectasia" --json

    Example (candidate search, only the named diseases, best first):
    medr1 search "tall stature, ectopia lentis | among: Homocystinuria; Marfan syndrome" -k 2
    """
    import json

    from medr1.retrieval import open_retriever
    from medr1.retrieval.service import format_result

    hits = open_retriever(index).search([query], k)[0]
    if as_json:
        typer.echo(json.dumps(format_result([hits], return_scores=True), ensure_ascii=False, indent=2))
        return
    if not hits:
        typer.echo("no matching documents")
    for rank, hit in enumerate(hits, start=1):
        text = " ".join(hit.doc.text.split())
        if width and len(text) > width:
            text = text[:width] + " ..."
        typer.echo(f"{rank}. [{hit.score:.4f}] {hit.doc.id}  {hit.doc.title}")
        typer.echo(f"   {text}")


@app.command("serve-retriever")
@friendly_errors
def serve_retriever(
    index: str = typer.Option(None, "--index", help="Index directory (default: the HPO BM25 index)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 exposes it to the network."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level (warning for quiet)."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (off: costs throughput)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Server processes on the one port (uvicorn workers)."),
) -> None:
    """Serve an index over HTTP in Search-R1's contract: POST /retrieve, GET /health, GET /ready.

    Example: medr1 serve-retriever --index indexes/hpo-bm25 --port 8000

    Then: curl -s localhost:8000/retrieve -d '{"queries": ["arachnodactyly"], "topk": 3, "return_scores": true}'
    """
    from medr1.retrieval import open_retriever
    from medr1.retrieval.service import serve

    if str(index or "").startswith(("http://", "https://")):
        raise typer.BadParameter("--index must be an index directory, not a URL")
    retriever = open_retriever(index)
    if host not in ("127.0.0.1", "localhost", "::1"):
        echo_err(f"warning: binding {host}: the retriever is reachable from other machines (no authentication)")
    echo_err(f"serving {getattr(retriever, 'kind', '?')} index over {getattr(retriever, 'num_docs', '?')} documents "
             f"at http://{host}:{port}/retrieve")
    serve(retriever, host=host, port=port, log_level=log_level, access_log=access_log, workers=workers,
          index=str(index) if index else None)


# ---------------------------------------------------------------------------------------------------------------------
# inference commands: eval, ask
# ---------------------------------------------------------------------------------------------------------------------


@app.command("eval")
@friendly_errors
def eval_cmd(
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides of EvalConfig (e.g. topk=5 max_turns=3)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model: smollm2-135m (default), a HF id or a local dir."),
    data: str | None = typer.Option(None, "--data", "-d", help="Source spec, e.g. hpo-dx:test, mirage:medqa."),
    method: str | None = typer.Option(None, "--method", help="cot | rag | self-ask | bm25-ranker."),
    out: str | None = typer.Option(None, "--out", "-o", help="Output directory (samples.jsonl, metrics.json, config.yaml)."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="Evaluate only the first N questions."),
    index: str | None = typer.Option(None, "--index", help="Index directory or retriever URL (default: HPO BM25)."),
    config: str | None = typer.Option(None, "--config", "-c", help="YAML file (its `eval:` section if present)."),
    force: bool = typer.Option(False, "--force", help="Discard earlier outputs in --out instead of resuming."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Evaluate a model (or the bm25-ranker) on a question set; resumes an interrupted run in the same --out.

    Example: medr1 eval --model smollm2-135m --data hpo-dx:test --method self-ask --out runs/eval/self-ask --limit 50

    Example: medr1 eval --data hpo-dx:test --method bm25-ranker --out runs/eval/ranker

    Example: medr1 eval --config recipes/quickstart.yaml --method rag --out runs/eval/rag topk=5 batch_size=4
    """
    from medr1.evaluate import format_metrics_table, load_eval_config, run_eval

    flags = {"model": model, "data": data, "method": method, "out": out, "limit": limit, "index": index}
    cfg = load_eval_config(config, flags, overrides)
    metrics = run_eval(cfg, force=force, progress=not quiet)
    typer.echo(format_metrics_table(metrics))
    echo_err(f"wrote {cfg.out}/samples.jsonl and {cfg.out}/metrics.json")


@app.command("ragas")
@friendly_errors
def ragas_cmd(
    eval_dir: str = typer.Argument(..., help="An eval output directory (samples.jsonl, metrics.json)."),
    index: str | None = typer.Option(None, "--index", help="The index the eval retrieved from (default: the one in "
                                                          "its config.yaml, else HPO BM25)."),
    judge: str | None = typer.Option(None, "--judge", help="Base URL of an OpenAI-compatible API for the LLM metrics "
                                                          "(faithfulness, answer relevancy), e.g. http://127.0.0.1:8001/v1."),
    judge_model: str = typer.Option("medr1", "--judge-model", help="The model id the judge endpoint serves."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable with the key."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="Only the first N records."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Records scored at once."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per judge request."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """RAGAS metrics of an eval's traces by the ragas library: ID-based context precision and recall without a
    judge; faithfulness and answer relevancy with --judge. Adds ragas_* keys to metrics.json; resumable.

    Example: medr1 ragas runs/quickstart/eval-sft/self-ask/hpo-dx-test

    Example: medr1 ragas runs/eval/self-ask --judge http://127.0.0.1:8001/v1 --judge-model medr1 --limit 50
    """
    from medr1.ragas_eval import RAGAS_KEYS, RagasConfig, run_ragas

    cfg = RagasConfig(eval_dir=eval_dir, index=index, judge=judge, judge_model=judge_model, api_key_env=api_key_env,
                      limit=limit, concurrency=concurrency, timeout_s=timeout)
    summary = run_ragas(cfg, progress=not quiet)
    for key in RAGAS_KEYS:
        value = summary[key]
        typer.echo(f"{key}: {'n/a' if value is None else f'{value:.3f}'} (n={summary[key + '_n']})")
    typer.echo(f"{summary['n_records']} records; failures: {summary['failures'] or 'none'}")
    echo_err(f"wrote {eval_dir}/ragas.json and {eval_dir}/ragas.jsonl; metrics.json has the ragas_* keys")
    if summary["failures"]:
        echo_err("failed records are not cached: run the same command again to retry them")
        raise typer.Exit(code=1)


@app.command("ask")
@friendly_errors
def ask_cmd(
    case: str = typer.Argument(..., help="The case text: findings, age, sex, history."),
    options: str | None = typer.Option(None, "--options", help='Answer options "A=...;B=..."; none = free-text diagnosis.'),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model name, HF id or local directory."),
    index: str | None = typer.Option(None, "--index", help="Index directory or retriever URL (default: HPO BM25)."),
    max_turns: int = typer.Option(4, "--max-turns", min=1, help="Most generation turns (searches + 1)."),
    topk: int = typer.Option(3, "--topk", "-k", min=1, help="Documents per search."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for torch (0 = default; 1 on a busy CPU)."),
    as_json: bool = typer.Option(False, "--json", help="Print the trace record as JSON instead of text."),
    image: str | None = typer.Option(None, "--image", help="An image file (PNG/JPEG) for an image-text-to-text "
                                                           "model (a VLM): it goes into the first user turn."),
) -> None:
    """One self-ask diagnosis, with its trace: thinking, each search and its evidence titles, the answer.

    Example: medr1 ask "A 6-year-old boy with tall stature, arachnodactyly and ectopia lentis" --options "A=Marfan syndrome;B=Homocystinuria;C=Stickler syndrome;D=Ehlers-Danlos syndrome"

    Example: medr1 ask "Recurrent fevers, abdominal pain and serositis in a child"

    Example: medr1 ask "What does this chest film show?" --image cxr.png --model llava-hf/llava-1.5-7b-hf
    """
    import json

    from medr1.evaluate import EvalConfig, ask_case, parse_options
    from medr1.traces import render_trace

    cfg = EvalConfig(model=model, method="self-ask", out="-", index=index, max_turns=max_turns, topk=topk,
                     temperature=temperature, seed=seed, device=device, batch_size=1, num_threads=threads)
    cfg.validate()
    record = ask_case(case, parse_options(options), cfg, image=image)
    if as_json:
        typer.echo(json.dumps(record, ensure_ascii=False, indent=2))
    else:
        typer.echo(render_trace(record, color=sys.stdout.isatty()))


@app.command("serve")
@friendly_errors
def serve_cmd(
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides of the eval config (the budget)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name, HF id or local directory "
                                                                  "(default smollm2-135m)."),
    method: str | None = typer.Option(None, "--method", help="cot | rag | self-ask behind the endpoint (default: "
                                                             "plain chat completions)."),
    index: str | None = typer.Option(None, "--index", help="rag, self-ask: index directory or retriever URL."),
    config: str | None = typer.Option(None, "--config", "-c", help="Recipe or eval YAML: the budget a method runs "
                                                                   "under (its rollout: section)."),
    name: str = typer.Option("medr1", "--name", help="The model id clients send and /v1/models lists."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 exposes it to the network."),
    port: int = typer.Option(8001, "--port", min=1, max=65535),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Most concurrent requests in one engine call."),
    max_pending: int = typer.Option(64, "--max-pending", min=1, help="Queued requests beyond which clients get 503."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level (warning for quiet)."),
) -> None:
    """An OpenAI-compatible server (/v1/chat/completions, /v1/models, /health) for any medr1 model, plain or with a
    method (self-ask: retrieval inside, the trace in the reply's `medr1` field).

    Example: medr1 serve --model smollm2-135m --port 8001

    Example: medr1 serve --model runs/quickstart/sft/final --method self-ask --config recipes/quickstart.yaml

    Then: curl -s localhost:8001/v1/chat/completions -H 'content-type: application/json' -d '{"model": "medr1", "messages": [{"role": "user", "content": "Tall stature, arachnodactyly, ectopia lentis"}]}'
    """
    from medr1.evaluate import load_eval_config
    from medr1.serve import ServeConfig, build_engine, serve

    cfg = load_eval_config(config, {"model": model, "index": index, "out": "-", "method": method or "cot"}, overrides)
    engine = build_engine(cfg, method)
    if host not in ("127.0.0.1", "localhost", "::1"):
        echo_err(f"warning: binding {host}: the model is reachable from other machines (no authentication)")
    echo_err(f"serving {cfg.model} ({method or 'plain chat'}) as {name!r} at http://{host}:{port}/v1")
    serve(engine, ServeConfig(model_name=name, method=method, max_batch=max_batch, max_pending=max_pending),
          host=host, port=port, log_level=log_level)


# ---------------------------------------------------------------------------------------------------------------------
# training commands: sft, grpo
# ---------------------------------------------------------------------------------------------------------------------


def _print_plan(plan: dict[str, Any]) -> None:
    import yaml

    typer.echo(yaml.safe_dump(plan, sort_keys=False, allow_unicode=True, width=120))


@app.command("sft")
@friendly_errors
def sft_cmd(
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides of the sft section (e.g. max_steps=10)."),
    config: str = typer.Option(..., "--config", "-c", help="Recipe YAML; its `sft:` section is read."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build data, tokenizer and TRL args; print the plan; no weights."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in output_dir."),
) -> None:
    """Supervised fine-tuning (TRL SFTTrainer): explanations + search traces, loss on the model's own tokens only.

    Example: medr1 sft --config recipes/quickstart.yaml

    Example: medr1 sft --config recipes/r1-distill-llama-8b/recipe.yaml --dry-run

    Example: medr1 sft --config recipes/smoke.yaml max_steps=2 output_dir=runs/smoke/sft
    """
    from medr1.config import load_config
    from medr1.train.sft import SFTConfig, run_sft

    cfg = load_config(SFTConfig, config, overrides, section="sft")
    plan = run_sft(cfg, dry_run=dry_run, resume=resume)
    if dry_run:
        _print_plan(plan)
    else:
        echo_err(
            f"sft: {plan['global_step']} steps, train loss {plan['train_loss']:.4f}, {plan['seconds']} s, "
            f"peak RSS {plan['peak_rss_mb']} MiB; model in {plan['final_model']}, metrics in {cfg.output_dir}/metrics.jsonl"
        )


@app.command("grpo")
@friendly_errors
def grpo_cmd(
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides of the grpo section (e.g. beta=0.02)."),
    config: str = typer.Option(..., "--config", "-c", help="Recipe YAML; its `grpo:` section is read."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build data, retriever, rewards and TRL args; print the plan."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in output_dir."),
) -> None:
    """GRPO (TRL GRPOTrainer) with retrieval inside the rollout; rewards: correctness, format, optional capped bonus.

    Example: medr1 grpo --config recipes/quickstart.yaml

    Example: medr1 grpo --config recipes/quickstart.yaml --resume

    Example: medr1 grpo --config recipes/quickstart.yaml use_retrieval=false output_dir=runs/quickstart/grpo-cot

    Example: medr1 grpo --config recipes/r1-distill-llama-8b/recipe.yaml --dry-run
    """
    from medr1.config import load_config
    from medr1.train.grpo import GRPOConfig, run_grpo

    cfg = load_config(GRPOConfig, config, overrides, section="grpo")
    plan = run_grpo(cfg, dry_run=dry_run, resume=resume)
    if dry_run:
        _print_plan(plan)
    else:
        echo_err(
            f"grpo: {plan['global_step']} steps, {plan['seconds']} s, peak RSS {plan['peak_rss_mb']} MiB; "
            f"model in {plan['final_model']}, metrics in {cfg.output_dir}/metrics.jsonl"
        )


# ---------------------------------------------------------------------------------------------------------------------
# pipeline commands: run, report
# ---------------------------------------------------------------------------------------------------------------------


@app.command("run")
@friendly_errors
def run_cmd(
    recipe: str | None = typer.Argument(None, help="Recipe YAML (sections run, data, index, eval, sft, grpo)."),
    profile: str | None = typer.Option(None, "--profile", "-p", help="smoke | quickstart | study: the recipe in recipes/ "
                                       "(default when no RECIPE: quickstart)."),
    force: list[str] | None = typer.Option(None, "--force", "-f", help="Re-run this stage even if done (repeatable): "
                                           f"{', '.join(STAGES)}."),
    name: str | None = typer.Option(None, "--name", "-n", help="Run name: outputs go to runs/NAME (default: run.name)."),
    overrides: list[str] | None = typer.Option(None, "--set", "-s", help="SECTION.KEY=VALUE override (repeatable), "
                                               "e.g. --set sft.max_steps=5 --set run.max_questions=20."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (stage lines still print)."),
) -> None:
    """The whole pipeline from one recipe: knowledge base, index, HPO-Dx, baselines, SFT, GRPO with and without
    retrieval, evaluation of every variant, and the report. Finished stages (same config hash) are skipped.

    Example: medr1 run --profile smoke

    Example: medr1 run recipes/quickstart.yaml --name qs-seed1 --set run.seed=1

    Example: medr1 run --profile quickstart --force grpo
    """
    from medr1.pipeline import run_pipeline

    summary = run_pipeline(recipe, profile=profile, name=name, force=force, overrides=overrides, progress=not quiet)
    for rec in summary["stages"]:
        typer.echo(f"{rec['stage']:<14} {rec['status']:<9} {rec.get('seconds', 0):>8.1f} s")
    typer.echo(f"total {summary['total_seconds']:.1f} s; report: {summary['run_dir']}/report.html")


@app.command("report")
@friendly_errors
def report_cmd(
    run_dir: str = typer.Argument(..., help="A run directory written by `medr1 run` (e.g. runs/quickstart)."),
    exemplars: int = typer.Option(4, "--exemplars", min=0, help="How many exemplar traces to show."),
) -> None:
    """Rebuild report.md and the self-contained report.html of a run from its artifacts (missing parts: "not run").

    Example: medr1 report runs/quickstart
    """
    from medr1.report import build_report

    paths = build_report(run_dir, exemplars=exemplars)
    typer.echo(f"wrote {paths['md']} and {paths['html']}")



@app.command("table")
@friendly_errors
def table_cmd(
    eval_dirs: list[str] = typer.Argument(..., help="Output directories of `medr1 eval` (each with metrics.json)."),
    out: str | None = typer.Option(None, "--out", "-o", help="Also write the table to this markdown file."),
) -> None:
    """One markdown table of several `medr1 eval` runs: accuracy [95% CI], chance, answers by letter, unparseable, gold hit...

    Example: medr1 table runs/eval/cot runs/eval/rag runs/eval/self-ask --out runs/eval/table.md
    """
    from medr1.io import atomic_write_text
    from medr1.report import eval_table

    text = eval_table(eval_dirs)
    typer.echo(text)
    if out:
        atomic_write_text(out, text + "\n")


@app.command("compare")
@friendly_errors
def compare_cmd(
    eval_a: str = typer.Argument(..., help="An output directory of `medr1 eval` (variant A)."),
    eval_b: str = typer.Argument(..., help="Another one, on the same questions (variant B)."),
    allow_budget_mismatch: bool = typer.Option(False, "--allow-budget-mismatch",
                                               help="Compare even when the rollout budgets differ (warns)."),
    minus: tuple[str, str] | None = typer.Option(None, "--minus", help="Two more evals C D: the difference in "
                                                 "differences (A − B) − (C − D) on the same questions (H2)."),
) -> None:
    """Paired comparison of two evals on the same questions: A − B with Newcombe's paired 95% interval, McNemar's p;
    with --minus C D, H2's difference in differences with its paired-bootstrap interval.

    Example: medr1 compare runs/quickstart/eval-sft/self-ask/hpo-dx-test runs/quickstart/baselines/self-ask/hpo-dx-test

    Example: medr1 compare runs/study/eval-grpo/self-ask/hpo-dx-test runs/study/eval-sft/self-ask/hpo-dx-test --minus runs/study/eval-grpo-cot/cot/hpo-dx-test runs/study/eval-sft/cot/hpo-dx-test
    """
    from medr1.report import compare_did, compare_evals

    if minus:
        typer.echo(compare_did([eval_a, eval_b, *minus], allow_budget_mismatch))
    else:
        typer.echo(compare_evals(eval_a, eval_b, allow_budget_mismatch))


@app.command("open-eval")
@friendly_errors
def open_eval_cmd(
    overrides: list[str] | None = typer.Argument(None, help="rerank, *-open: key=value overrides of the eval config."),
    method: str = typer.Option(..., "--method", help="bm25 | hpo-sim (rank every disease) | rerank (a model picks "
                                                     "among a ranker's top k) | self-ask-open | rag-open (a model "
                                                     "names the diagnosis; top-1 only)."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory (samples.jsonl, metrics.json)."),
    data: str = typer.Option("phenopackets:", "--data", "-d", help="Real patients: phenopackets:[DIR], or a "
                                                                   "jsonl: of them (a run's benchmark/phenopackets.jsonl)."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="Rank only the first N cases."),
    model: str | None = typer.Option(None, "--model", "-m", help="rerank, *-open: the model that chooses or names."),
    first: str = typer.Option("bm25", "--first", help="rerank: the ranker whose top k become the options."),
    k: int = typer.Option(4, "--k", min=2, max=10, help="rerank: how many candidates (options)."),
    config: str | None = typer.Option(None, "--config", "-c", help="rerank, *-open: recipe or eval YAML "
                                                                   "(the budget; rerank answers by self-ask unless it sets method)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Open-ended diagnosis of real patients: rank every disease, report top-1/3/10 and MRR on the
    unseen-publication subset (the headline), the disease-in-KB cases and all cases.

    Example: medr1 open-eval --method hpo-sim --out runs/open/hpo-sim

    Example: medr1 open-eval --method bm25 --data phenopackets:../shared/data/phenopackets --limit 200 --out runs/open/bm25

    Example: medr1 open-eval --method rerank --model runs/quickstart/sft/final --config recipes/quickstart.yaml --limit 100 --out runs/open/rerank

    Example: medr1 open-eval --method self-ask-open --model runs/quickstart/sft/final --config recipes/quickstart.yaml --out runs/open/named
    """
    from medr1.methods import get_method
    from medr1.open_diagnosis import run_open_eval

    eval_cfg = None
    if get_method(method, "open-eval --method", task="open").llm:
        from medr1.evaluate import load_eval_config

        eval_cfg = load_eval_config(config, {"model": model, "data": data, "out": f"{out}/model"}, overrides)
    metrics = run_open_eval(method, data, out, limit, progress=not quiet, first=first, k=k, eval_cfg=eval_cfg)
    typer.echo(metrics["table"])
    if method == "rerank":
        typer.echo(f"gold among the {k} candidates of {first}: {metrics['gold_in_options']}; the model's answer named "
                   f"no candidate: {metrics['unparsed']} (kept {first}'s order)")
    if metrics.get("single_answer"):
        typer.echo(f"the named diagnoses, normalized to a disease id (by route): {metrics['normalized']}")
    typer.echo(f"skipped (by reason): {metrics['skipped']}; wrote {out}/samples.jsonl and metrics.json")


@export_app.command("verl")
@friendly_errors
def export_verl_cmd(
    data: str = typer.Option(..., "--data", "-d", help="Training questions (a train split), e.g. hpo-dx:train."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory."),
    val: str | None = typer.Option(None, "--val", help="Validation questions, e.g. hpo-dx:dev."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="Only the first N questions of each."),
    method: str = typer.Option("self-ask", "--method", help="The prompt the rows carry (self-ask, rag, cot)."),
    retriever_url: str = typer.Option("http://127.0.0.1:8000/retrieve", "--retriever-url",
                                      help="Where verl's search tool reaches `medr1 serve-retriever`."),
    topk: int = typer.Option(3, "--topk", min=1, max=100, help="Documents per search."),
    model: str = typer.Option("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "--model", help="The launch scripts' model."),
) -> None:
    """verl's parquet dataset, a search tool calling medr1 serve-retriever, a reward module calling medr1's
    rewards, and PPO / GRPO launch scripts (checked against verl 0.9.1 by make verl-test).

    Example: medr1 export verl --data hpo-dx:train --val hpo-dx:dev --out exports/verl-hpo
    """
    from medr1.export_verl import VerlExport, export_verl
    from medr1.methods import get_method

    if not get_method(method, "--method").llm:
        raise typer.BadParameter(f"--method {method}: the rows need an LLM prompt (cot, rag, self-ask)")
    record = export_verl(VerlExport(data=data, out=out, val=val, limit=limit, method=method,
                                    retriever_url=retriever_url, topk=topk, model=model))
    for name, entry in record["files"].items():
        typer.echo(f"{name}: {entry['rows']} rows from {entry['source']}")
    typer.echo(f"wrote {out}: medr1_search_tool.py ({retriever_url}), medr1_reward.py, run_ppo.sh, run_grpo.sh")


@app.command("trace")
@friendly_errors
def trace_cmd(
    eval_dir: str = typer.Argument(..., help="An output directory of `medr1 eval` (with samples.jsonl)."),
    ids: list[str] | None = typer.Option(None, "--id", help="Question id to show (repeatable)."),
    k: int = typer.Option(2, "-k", min=1, help="Without --id: how many traces, alternating right and wrong."),
) -> None:
    """Print readable traces (thinking, searches with retrieved titles, answer vs gold) from an eval's samples.

    Example: medr1 trace runs/eval/self-ask -k 2

    Example: medr1 trace runs/eval/self-ask --id hpo-dx-test-0007
    """
    from medr1.report import eval_traces

    typer.echo(eval_traces(eval_dir, ids or (), k))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
