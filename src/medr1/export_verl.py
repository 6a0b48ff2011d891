"""Export a medr1 training set for verl (the engine Search-R1 runs on; checked against verl 0.9.1's own loaders by
`make verl-test`): parquet data, a search tool that calls `medr1 serve-retriever`, a reward module that calls
medr1's reward functions, and PPO / GRPO launch scripts.

    medr1 export verl --data hpo-dx:train --val hpo-dx:dev --out exports/verl-hpo --limit 5000
    medr1 serve-retriever --index ~/.cache/medr1/indexes/hpo-bm25 --port 8000 &
    bash exports/verl-hpo/run_grpo.sh          # or run_ppo.sh; MODEL=... N_GPUS=... override

Files in OUT: `train.parquet` (and `val.parquet`), in verl's RL dataset schema: `data_source`, `prompt` (chat
messages: medr1's self-ask prompt, the `<search>` tag protocol Search-R1 uses), `ability`, `reward_model`
{style: rule, ground_truth: the gold letter}, `extra_info` {index, split, question_id, letters, option_texts,
gold_doc_ids}; `medr1_search_tool.py` (a verl function tool `search(query_list)` that asks the retrieval service
in Search-R1's /retrieve contract and returns medr1's `<information>` blocks); `medr1_reward.py`
(`compute_score(data_source, solution_str, ground_truth, extra_info)` = medr1's correctness + 0.2 x format, the
quickstart's weights); `run_ppo.sh`, `run_grpo.sh`; `export.json` (counts and hashes). Test-split questions are
refused, as in every medr1 training builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medr1.data.schema import Question
from medr1.errors import DataError
from medr1.io import atomic_write_json, atomic_write_text, file_sha256

ABILITY = "medical-diagnosis"
FORMAT_WEIGHT = 0.2  # the recipes' reward_weights for format (correctness 1.0)


@dataclass(frozen=True)
class VerlExport:
    data: str
    out: str
    val: str | None = None
    limit: int | None = None
    method: str = "self-ask"
    retriever_url: str = "http://127.0.0.1:8000/retrieve"
    topk: int = 3
    model: str = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"


def verl_row(q: Question, index: int, split: str, method: str = "self-ask") -> dict[str, Any]:
    """One row of verl's RL dataset for a multiple-choice question."""
    from medr1.prompts import build_messages

    letters = "".join(sorted(q.options))
    source = f"medr1/{q.source or 'questions'}"
    return {
        "data_source": source,
        "prompt": build_messages(q, method),
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": q.answer},
        "extra_info": {
            "index": index, "split": split, "question_id": q.id, "letters": letters,
            "option_texts": [q.options[k] for k in letters], "gold_doc_ids": list(q.gold_doc_ids),
        },
    }


def _rows(spec: str, split: str, cfg: VerlExport) -> list[dict[str, Any]]:
    from medr1.data.sources import load_questions

    questions = load_questions(spec, limit=cfg.limit).questions
    test = [q.id for q in questions if q.split == "test"]
    if test and split == "train":
        raise DataError(f"{spec}: question {test[0]!r} is from a test split ({len(test)} in all); verl would train "
                        "on it. Export a train split.")
    choice = [q for q in questions if q.options]
    if len(choice) != len(questions):
        raise DataError(f"{spec}: {len(questions) - len(choice)} questions have no options; the verl export writes "
                        "multiple-choice rows (medr1's rewards score a letter)")
    return [verl_row(q, i, split, cfg.method) for i, q in enumerate(choice)]


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)


TOOL_MODULE = '''"""verl function tool for medr1 rows (written by `medr1 export verl`): a search of medr1's retrieval service
(`medr1 serve-retriever`), its results shown as medr1's rollout shows them. verl loads it through
`actor_rollout_ref.rollout.multi_turn.function_tool_path`. Needs medr1 installed in verl's environment."""

from verl.tools.function_tool import function_tool

from medr1.export_verl import verl_search

RETRIEVER_URL = {url!r}
TOPK = {topk}


@function_tool("search")
def search(query_list: list[str]) -> str:
    """Searches the medical knowledge base for documents matching the queries.

    Args:
        query_list: Findings or disease names to search for; results come back for each query.
    """
    return verl_search(query_list, RETRIEVER_URL, TOPK)
'''


def verl_search(query_list: list[str], url: str, topk: int) -> str:
    """What verl's search tool returns: one `<information>` block per query, the documents numbered and cut as
    medr1's rollout shows them. A failed search is returned as text, as the rollout does, not raised."""
    from medr1.prompts import format_passages
    from medr1.retrieval.base import RetrievalError
    from medr1.retrieval.client import RetrieverClient
    from medr1.tags import format_information

    queries = [str(q).strip() for q in (query_list or []) if str(q).strip()]
    if not queries:
        return "No query given: call search with query_list, a list of findings or disease names."
    try:
        with RetrieverClient(url, timeout=30.0, retries=2) as client:
            results = client.search(queries, topk)
    except RetrievalError as exc:
        return f"Search failed: {exc}"
    return "".join(format_information(format_passages(hits)) for hits in results).strip()


REWARD_MODULE = '''"""verl reward for medr1 rows (written by `medr1 export verl`): medr1's own reward functions, so verl and
medr1's GRPO pay the same. Needs medr1 installed in verl's environment (pip install medr1)."""

from medr1.export_verl import compute_score  # noqa: F401  (verl looks up compute_score by name)
'''


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None) -> float:
    """verl's custom reward signature: medr1's correctness + FORMAT_WEIGHT x format on the decoded response."""
    from medr1.train.rewards import correctness_reward, format_reward

    info = extra_info or {}
    kw = {"letters": [info.get("letters")], "option_texts": [list(info.get("option_texts") or []) or None]}
    correct = correctness_reward([solution_str], answer=[ground_truth], **kw)[0] or 0.0
    return float(correct + FORMAT_WEIGHT * format_reward([solution_str], **kw)[0])


def launch_script(cfg: VerlExport, out: Path, estimator: str) -> str:
    """verl's main_ppo with medr1's files: `gae` (PPO, with a critic) or `grpo`."""
    val = out / ("val.parquet" if cfg.val else "train.parquet")
    critic = ("    critic.model.path=\"$MODEL\" \\\n    critic.optim.lr=1e-5 \\\n" if estimator == "gae" else "")
    n = "1" if estimator == "gae" else "5"
    return f"""#!/usr/bin/env bash
# {'PPO' if estimator == 'gae' else 'GRPO'} on medr1's export with verl (written by `medr1 export verl`).
# Start the retriever first: medr1 serve-retriever --index INDEX --port 8000 (the URL is in medr1_search_tool.py)
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
MODEL="${{MODEL:-{cfg.model}}}"
N_GPUS="${{N_GPUS:-8}}"
python3 -m verl.trainer.main_ppo \\
    algorithm.adv_estimator={estimator} \\
    data.train_files="$HERE/train.parquet" \\
    data.val_files="$HERE/{val.name}" \\
    data.train_batch_size=256 \\
    data.max_prompt_length=1024 \\
    data.max_response_length=2048 \\
    data.return_raw_chat=True \\
    actor_rollout_ref.model.path="$MODEL" \\
    actor_rollout_ref.actor.optim.lr=1e-6 \\
    actor_rollout_ref.actor.use_kl_loss=True \\
    actor_rollout_ref.actor.kl_loss_coef=0.001 \\
    actor_rollout_ref.rollout.name=sglang \\
    actor_rollout_ref.rollout.n={n} \\
    actor_rollout_ref.rollout.multi_turn.enable=True \\
    actor_rollout_ref.rollout.multi_turn.function_tool_path="$HERE/medr1_search_tool.py" \\
{critic}    reward.custom_reward_function.path="$HERE/medr1_reward.py" \\
    reward.custom_reward_function.name=compute_score \\
    trainer.n_gpus_per_node="$N_GPUS" \\
    trainer.nnodes=1 \\
    trainer.project_name=medr1 \\
    trainer.experiment_name=medr1-{estimator} "$@"
"""


def export_verl(cfg: VerlExport) -> dict[str, Any]:
    """Write the export; returns what `export.json` records."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for spec, split, name in ((cfg.data, "train", "train.parquet"), (cfg.val, "val", "val.parquet")):
        if spec:
            rows = _rows(spec, split, cfg)
            _write_parquet(rows, out / name)
            counts[name] = {"source": spec, "rows": len(rows), "sha256": file_sha256(out / name)}
    atomic_write_text(out / "medr1_search_tool.py", TOOL_MODULE.format(url=cfg.retriever_url, topk=cfg.topk))
    atomic_write_text(out / "medr1_reward.py", REWARD_MODULE)
    for estimator, name in (("gae", "run_ppo.sh"), ("grpo", "run_grpo.sh")):
        atomic_write_text(out / name, launch_script(cfg, out, estimator))
        (out / name).chmod(0o755)
    record = {"files": counts, "method": cfg.method, "retriever_url": cfg.retriever_url, "model": cfg.model}
    atomic_write_json(out / "export.json", record)
    return record
