"""``make bench``: the tantivy service against in-process tantivy, bm25s and rank_bm25, side by side.

    python -m retrieval_service.benchmark --out bench_results/retrieval            # wiki + 1M synthetic
    python -m retrieval_service.benchmark --out /tmp/b --passages 2000 --queries 50  # smoke size

Per corpus it measures build time, index size, RSS, single-query p50/p99 (HTTP at 1 and 8 concurrent
clients, and in-process), batch throughput, and top-10 agreement with tantivy. Each engine runs in
its own subprocess so RSS is its own. bm25s and rank_bm25 get the same tokens (the tokenization
contract) and k1=1.2, b=0.75; rank_bm25 runs on a slice because it scores every document per query.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from retrieval_core.documents import Document, iter_passages
from retrieval_core.tokenization import tokenize
from retrieval_service.local_server import ServerProcess
from retrieval_service.settings import REPO_ROOT, wikipedia_passages
from trainer.perf.process_memory import proc_status_kib

K = 10
BATCH = 64
_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "ze",
    "pa",
    "qu",
    "dor",
    "len",
    "mar",
    "tis",
    "bel",
)


# -- corpora and queries ---------------------------------------------------------------------------
def synthetic_vocabulary(size: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4))))
    return sorted(words)


def synthetic_passages(n: int, seed: int = 13, vocabulary: int = 50_000) -> Iterator[Document]:
    """Zipf-distributed words (exponent ~1.07), 20-150 words per passage: term statistics like prose."""
    rng = random.Random(seed)
    words = synthetic_vocabulary(vocabulary, seed)
    rng.shuffle(words)
    cum: list[float] = []
    total = 0.0
    for rank in range(len(words)):
        total += 1.0 / (rank + 1) ** 1.07
        cum.append(total)
    for i in range(n):
        title = " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(1, 4)))
        text = " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(20, 150)))
        yield Document(f"syn-{i}", title, text)


def write_corpus(docs: Iterator[Document], path: Path) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps(doc.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    return count


def make_queries(corpus: Path, n: int, seed: int = 5) -> list[str]:
    """Queries as the trainer sends them: a title plus a few words from a random passage."""
    rng = random.Random(seed)
    sample: list[Document] = []
    for i, doc in enumerate(iter_passages(corpus)):  # reservoir sample, constant memory
        if len(sample) < n:
            sample.append(doc)
        elif (j := rng.randint(0, i)) < n:
            sample[j] = doc
    queries = []
    for doc in sample:
        words = doc.text.split()
        start = rng.randint(0, max(0, len(words) - 6))
        queries.append(f"{doc.title} {' '.join(words[start : start + rng.randint(2, 6)])}".strip())
    return queries


# -- measurements ----------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def vm_rss(pid: int | str = "self") -> int:
    """Resident bytes of a process; 0 once it has exited (the tree walk races with workers that stop)."""
    try:
        return proc_status_kib("VmRSS", pid) * 1024
    except (OSError, KeyError):
        return 0


def tree_rss(pid: int) -> int:
    """RSS of a process and its descendants (the uvicorn supervisor and its workers)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += vm_rss(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo.extend(int(c) for c in task.read_text().split())
    return total


def timed_queries(
    search: Callable[[str], list[str]], queries: list[str]
) -> tuple[list[float], list[list[str]]]:
    latencies, tops = [], []
    for query in queries:
        start = time.perf_counter()
        tops.append(search(query))
        latencies.append(time.perf_counter() - start)
    return latencies, tops


def batch_qps(search_batch: Callable[[list[str]], Any], queries: list[str]) -> float:
    start = time.perf_counter()
    for i in range(0, len(queries), BATCH):
        search_batch(queries[i : i + BATCH])
    return len(queries) / (time.perf_counter() - start)


# -- engines (each runs in its own subprocess) -----------------------------------------------------
def engine_tantivy(corpus: Path, workdir: Path, queries: list[str], limit: int | None) -> dict[str, Any]:
    from retrieval_core.backends.tantivy_backend import TantivyBackend

    index = workdir / "tantivy_index"
    shutil.rmtree(index, ignore_errors=True)
    docs = iter_passages(corpus)
    if limit:
        docs = (d for i, d in zip(range(limit), docs, strict=False))
    start = time.perf_counter()
    with TantivyBackend(index, create=True) as backend:
        backend.index_documents(docs)
    build = time.perf_counter() - start
    with TantivyBackend(index) as backend:
        latencies, tops = timed_queries(lambda q: [h.id for h in backend.search(q, K)], queries)
        qps = batch_qps(lambda b: backend.search_batch(b, K), queries)
    return {
        "build_s": build,
        "index_bytes": dir_size(index),
        "latencies": latencies,
        "batch_qps": qps,
        "tops": tops,
        "index_path": str(index),
    }


def _tokenized_corpus(corpus: Path, limit: int | None) -> tuple[list[str], list[list[str]]]:
    ids, tokens = [], []
    for i, doc in enumerate(iter_passages(corpus)):
        if limit and i >= limit:
            break
        ids.append(doc.id)
        tokens.append([sys.intern(t) for t in tokenize(doc.contents)])  # shared strings: ~8 B per token
    return ids, tokens


def engine_bm25s(corpus: Path, workdir: Path, queries: list[str], limit: int | None) -> dict[str, Any]:
    import bm25s

    start = time.perf_counter()
    ids, tokens = _tokenized_corpus(corpus, limit)
    retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    retriever.index(tokens, show_progress=False)
    del tokens
    build = time.perf_counter() - start
    saved = workdir / "bm25s_index"
    retriever.save(str(saved))

    def top(batch: list[str]) -> list[list[str]]:
        k = min(K, len(ids))
        res = retriever.retrieve([tokenize(q) or [""] for q in batch], k=k, show_progress=False, n_threads=1)
        return [
            [ids[d] for d, s in zip(docs, scores, strict=True) if s > 0]
            for docs, scores in zip(res.documents, res.scores, strict=True)
        ]

    latencies, tops = timed_queries(lambda q: top([q])[0], queries)
    qps = batch_qps(top, queries)
    return {
        "build_s": build,
        "index_bytes": dir_size(saved),
        "latencies": latencies,
        "batch_qps": qps,
        "tops": tops,
    }


def engine_rank_bm25(corpus: Path, workdir: Path, queries: list[str], limit: int | None) -> dict[str, Any]:
    import numpy as np
    from rank_bm25 import BM25Okapi

    start = time.perf_counter()
    ids, tokens = _tokenized_corpus(corpus, limit)
    model = BM25Okapi(tokens, k1=1.2, b=0.75)
    del tokens
    build = time.perf_counter() - start

    def top(query: str) -> list[str]:
        scores = model.get_scores(tokenize(query))
        best = np.argsort(-scores)[:K]
        return [ids[i] for i in best if scores[i] > 0]

    latencies, tops = timed_queries(top, queries)
    qps = batch_qps(lambda b: [top(q) for q in b], queries)
    return {"build_s": build, "index_bytes": None, "latencies": latencies, "batch_qps": qps, "tops": tops}


ENGINES = {"tantivy": engine_tantivy, "bm25s": engine_bm25s, "rank_bm25": engine_rank_bm25}


def run_engine_subprocess(
    engine: str, corpus: Path, workdir: Path, queries_file: Path, limit: int | None
) -> dict[str, Any]:
    out = workdir / f"{engine}-{limit or 'all'}.json"
    cmd = [
        sys.executable,
        "-m",
        "retrieval_service.benchmark",
        "--engine",
        engine,
        "--corpus",
        str(corpus),
        "--workdir",
        str(workdir),
        "--queries-file",
        str(queries_file),
        "--result",
        str(out),
    ]
    if limit:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env)
    return json.loads(out.read_text())


def engine_main(args: argparse.Namespace) -> int:
    queries = json.loads(Path(args.queries_file).read_text())
    result = ENGINES[args.engine](Path(args.corpus), Path(args.workdir), queries, args.limit)
    result["rss_bytes"] = vm_rss()
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(args.result).write_text(json.dumps(result))
    return 0


# -- HTTP ------------------------------------------------------------------------------------------
def http_latencies(
    url: str, queries: list[str], clients: int, requests: int
) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def worker(n: int) -> None:
        nonlocal errors
        mine: list[float] = []
        bad = 0
        with httpx.Client(base_url=url, timeout=30.0) as http:
            for i in range(n, requests, clients):
                start = time.perf_counter()
                r = http.post("/search", json={"query": queries[i % len(queries)], "k": K})
                mine.append(time.perf_counter() - start)
                bad += r.status_code != 200
        with lock:
            latencies.extend(mine)
            errors += bad

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, requests / (time.perf_counter() - start), errors


def http_measure(index: Path, queries: list[str], requests: int, workers: int) -> dict[str, Any]:
    server = ServerProcess(["--index", str(index)], workers=workers).wait_live(timeout=120)
    try:
        with httpx.Client(base_url=server.url, timeout=60.0) as http:
            for q in queries[:50]:  # warm-up
                http.post("/search", json={"query": q, "k": K})
            out: dict[str, Any] = {}
            for clients in (1, 8):
                lat, rps, errors = http_latencies(server.url, queries, clients, requests)
                out[f"c{clients}"] = {
                    "p50": percentile(lat, 0.5),
                    "p99": percentile(lat, 0.99),
                    "rps": rps,
                    "errors": errors,
                }
            start = time.perf_counter()
            for i in range(0, len(queries), BATCH):
                http.post(
                    "/search/batch", json={"queries": queries[i : i + BATCH], "k": K}
                ).raise_for_status()
            out["batch_qps"] = len(queries) / (time.perf_counter() - start)
        out["rss_bytes"] = tree_rss(server.proc.pid)
    finally:
        server.stop()
    return out


# -- report ----------------------------------------------------------------------------------------
def agreement(a: list[list[str]], b: list[list[str]]) -> float:
    """Mean overlap of two engines' top-10 sets (1.0 = identical sets)."""
    scores = [len(set(x) & set(y)) / max(len(x), len(y)) for x, y in zip(a, b, strict=True) if x or y]
    return statistics.fmean(scores) if scores else float("nan")


def fmt_ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.2f}"


def fmt_mb(n: int | None) -> str:
    return "–" if not n else f"{n / 1e6:.0f}"


def bench_corpus(name: str, corpus: Path, n_docs: int, workdir: Path, args: argparse.Namespace) -> str:
    print(f"[bench] {name}: {n_docs} passages, {args.queries} queries", file=sys.stderr, flush=True)
    queries = make_queries(corpus, args.queries)
    qfile = workdir / "queries.json"
    qfile.write_text(json.dumps(queries))
    tv = run_engine_subprocess("tantivy", corpus, workdir, qfile, None)
    print(f"[bench] {name}: tantivy built in {tv['build_s']:.1f}s", file=sys.stderr, flush=True)
    http = http_measure(Path(tv["index_path"]), queries, args.http_requests, args.workers)
    bs = run_engine_subprocess("bm25s", corpus, workdir, qfile, None)
    print(f"[bench] {name}: bm25s built in {bs['build_s']:.1f}s", file=sys.stderr, flush=True)
    slice_n = min(n_docs, args.rank_bm25_max)
    rb = run_engine_subprocess("rank_bm25", corpus, workdir, qfile, slice_n)
    tv_slice = (
        tv
        if slice_n == n_docs
        else run_engine_subprocess("tantivy", corpus, workdir / "slice", qfile, slice_n)
    )

    def p(result: dict[str, Any], q: float) -> float:
        return percentile(result["latencies"], q)

    rb_label = f"rank_bm25 ({slice_n:,} slice)" if slice_n < n_docs else "rank_bm25"
    rows = [
        (
            "index build (s)",
            f"{tv['build_s']:.1f}",
            f"{tv['build_s']:.1f}",
            f"{bs['build_s']:.1f}",
            f"{rb['build_s']:.1f}",
        ),
        (
            "index size (MB)",
            fmt_mb(tv["index_bytes"]),
            fmt_mb(tv["index_bytes"]),
            fmt_mb(bs["index_bytes"]),
            "– (in RAM only)",
        ),
        (
            "RSS serving (MB)",
            f"{fmt_mb(http['rss_bytes'])} ({args.workers} workers + supervisor)",
            fmt_mb(tv["rss_bytes"]),
            fmt_mb(bs["rss_bytes"]),
            fmt_mb(rb["rss_bytes"]),
        ),
        (
            "peak RSS incl. build (MB)",
            "–",
            fmt_mb(tv["peak_rss_bytes"]),
            fmt_mb(bs["peak_rss_bytes"]),
            fmt_mb(rb["peak_rss_bytes"]),
        ),
        (
            "single query p50 / p99 (ms), 1 client",
            f"{fmt_ms(http['c1']['p50'])} / {fmt_ms(http['c1']['p99'])}",
            f"{fmt_ms(p(tv, 0.5))} / {fmt_ms(p(tv, 0.99))}",
            f"{fmt_ms(p(bs, 0.5))} / {fmt_ms(p(bs, 0.99))}",
            f"{fmt_ms(p(rb, 0.5))} / {fmt_ms(p(rb, 0.99))}",
        ),
        (
            "single query p50 / p99 (ms), 8 clients",
            f"{fmt_ms(http['c8']['p50'])} / {fmt_ms(http['c8']['p99'])} ({http['c8']['rps']:.0f} req/s)",
            "–",
            "–",
            "–",
        ),
        (
            "batch throughput (queries/s)",
            f"{http['batch_qps']:.0f}",
            f"{tv['batch_qps']:.0f}",
            f"{bs['batch_qps']:.0f}",
            f"{rb['batch_qps']:.1f}",
        ),
        (
            "top-10 agreement with tantivy",
            "1.000 (same engine)",
            "1.000",
            f"{agreement(tv['tops'], bs['tops']):.3f}",
            f"{agreement(tv_slice['tops'], rb['tops']):.3f}",
        ),
    ]
    errors = http["c1"]["errors"] + http["c8"]["errors"]
    lines = [
        f"### {name}: {n_docs:,} passages, {len(queries)} queries",
        "",
        f"| metric | tantivy via HTTP | tantivy in-process | bm25s | {rb_label} |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        f"HTTP: {args.http_requests} requests per concurrency level, {errors} errors; batch = {BATCH} "
        f"queries per request. In-process columns run one query at a time on one thread.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval_service.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="bench_results/retrieval", help="directory for results.md/json")
    parser.add_argument("--passages", type=int, default=1_000_000, help="synthetic corpus size (0 = skip)")
    parser.add_argument("--no-wiki", action="store_true", help="skip the shared Wikipedia passages")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--http-requests", type=int, default=2000)
    parser.add_argument("--rank-bm25-max", type=int, default=20_000, help="rank_bm25 slice size")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--workdir", help="scratch directory (default: a temp dir, removed afterwards)")
    parser.add_argument("--engine", choices=sorted(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine:
        return engine_main(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="retrieval-bench-"))
    sections = []
    started = time.perf_counter()
    try:
        wiki = wikipedia_passages()
        if not args.no_wiki:
            if wiki.is_file():
                work = scratch / "wiki"
                (work / "slice").mkdir(parents=True, exist_ok=True)
                n = sum(1 for _ in iter_passages(wiki))
                sections.append(bench_corpus("Wikipedia (shared)", wiki, n, work, args))
            else:
                sections.append(f"Wikipedia passages not found at {wiki}; skipped.\n")
        if args.passages > 0:
            work = scratch / "synthetic"
            (work / "slice").mkdir(parents=True, exist_ok=True)
            corpus = work / "synthetic.jsonl"
            t0 = time.perf_counter()
            n = write_corpus(synthetic_passages(args.passages), corpus)
            print(f"[bench] synthetic corpus written in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
            sections.append(bench_corpus("Synthetic (Zipf)", corpus, n, work, args))
    finally:
        if not args.workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    header = [
        "# Retrieval benchmark",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"total {time.perf_counter() - started:.0f}s. Command: `python -m retrieval_service.benchmark "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "All engines: BM25 k1=1.2 b=0.75 over title + text with the same tokens. tantivy and bm25s",
        "store indices on disk/in RAM respectively; bm25s and rank_bm25 return ids only (no stored text).",
        "HTTP latency is measured by client threads on the same machine as the server.",
        "",
    ]
    report = "\n".join(header + sections)
    (out / "results.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
