"""The knowledge dataset on a real embedded index: contents, rationale relevance, the cache and its key."""

from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import KARD_TEST_OVERRIDES
from trainer.config.loader import load_config
from trainer.config.schema import ExperimentConfig
from trainer.data.example import DataError
from trainer.data.registry import default_corpus, load_splits
from trainer.kard.knowledge import MANIFEST, KnowledgeBase, LocalQueries, question_query
from trainer.kard.prepare import knowledge_cache_dir, prepare_knowledge
from trainer.kard.retriever import resolve_retriever


def open_retriever(cfg: ExperimentConfig):
    cache = knowledge_cache_dir(cfg)
    return resolve_retriever(cfg.retrieval, cache, default_corpus(cfg.data, cache)).open()


def test_rows_hold_rationale_passages_deduplicated_candidates_and_rho(kard_knowledge) -> None:
    cfg, path = kard_knowledge
    knowledge = KnowledgeBase(path)
    splits = load_splits(cfg.data, cfg.run.seed)
    retriever = open_retriever(cfg)
    example = splits.train[0]
    rows = knowledge.train_rows(example)
    assert [r.rationale for r in rows] == list(example.rationales)  # the parse filter keeps these templates
    row = rows[0]
    by_rationale = retriever.search_batch([row.rationale], 6)[0]
    assert row.passage_ids == [by_rationale[0][0]]  # k = 1: the rationale's top passage
    assert len(set(row.candidate_ids)) == len(row.candidate_ids)
    by_question = [i for i, _ in retriever.search_batch([question_query(example)], 6)[0]]
    assert set(row.candidate_ids) == {i for i, _ in by_rationale} | set(by_question)
    rho = dict(zip(row.candidate_ids, row.candidate_rho, strict=True))
    exact = retriever.score_batch([row.rationale], [row.candidate_ids])[0]
    assert rho == pytest.approx(exact, rel=1e-6)  # rho = BM25(rationale, candidate), whoever retrieved it
    assert all(p in knowledge.passages for r in knowledge.train.values() for x in r for p in x.candidate_ids)
    dev = knowledge.dev[splits.dev[0].id]
    assert len(dev.candidate_ids) == 8 and dev.oracle_ids and dev.oracle_rationale in splits.dev[0].rationales
    manifest = knowledge.manifest
    assert manifest["metrics"]["knowledge/train_rows"] == sum(len(r) for r in knowledge.train.values())
    assert manifest["metrics"]["dev/bm25_recall_at_1"] < 1.0  # the question is a worse query than the rationale


class CountingQueries(LocalQueries):
    calls = 0

    def search(self, requests):
        type(self).calls += 1
        return super().search(requests)


def test_second_build_reuses_and_any_input_change_rebuilds(tmp_path: Path) -> None:
    base = [*KARD_TEST_OVERRIDES, "data.max_train_examples=40", f"run.output_dir={tmp_path}"]

    def build(*extra: str):
        cfg = load_config(overrides=[*base, *extra])
        return prepare_knowledge(cfg, lambda spec, c: CountingQueries(spec))

    first = build()
    calls = CountingQueries.calls
    again = build()
    assert again.reused and again.path == first.path and CountingQueries.calls == calls  # no query ran
    for change in ("data.synthetic_seed=1", "data.rationale_filter=none", "method.kard.train_passages=2",
                   "method.kard.candidates=5", "data.max_dev_examples=10"):  # fmt: skip
        other = build(change)
        assert not other.reused and other.path != first.path, change
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "title": "A", "text": "alpha"}\n')
    assert build(f"retrieval.corpus={corpus}").path != first.path  # another index version


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    class BrokenFetch(LocalQueries):
        def fetch(self, ids):
            raise ConnectionError("retrieval service went away")

    cfg = load_config(overrides=[*KARD_TEST_OVERRIDES, "data.max_train_examples=20", f"run.output_dir={tmp_path}"])
    with pytest.raises(ConnectionError):
        prepare_knowledge(cfg, lambda spec, c: BrokenFetch(spec))
    datasets = [p for p in knowledge_cache_dir(cfg).iterdir() if p.name.startswith("synthetic_kb")]
    assert datasets == []
    assert not [p for p in knowledge_cache_dir(cfg).iterdir() if (p / MANIFEST).exists()]


def test_a_knowledge_dataset_for_other_questions_is_refused(kard_knowledge) -> None:
    cfg, path = kard_knowledge
    other = load_splits(cfg.data.model_copy(update={"synthetic_seed": 3}), 0).dev
    with pytest.raises(DataError, match="has no dev knowledge for 24 of 24 dev questions"):
        KnowledgeBase(path).check_covers(other)
    with pytest.raises(DataError, match="holds another question under id"):
        KnowledgeBase(path).train_rows(replace(load_splits(cfg.data, 0).train[0], question="Is it something else?"))
    with pytest.raises(DataError, match="is not a knowledge dataset"):
        KnowledgeBase(path.parent)


def test_a_users_own_question_file_and_corpus_run_with_an_index_built_on_the_fly(tmp_path: Path) -> None:
    """data.dataset=jsonl + retrieval.corpus: any question file in the shared schema, any id/title/text JSONL."""
    from trainer.data.jsonl import write_jsonl_gz
    from trainer.data.synthetic_kb import SyntheticKBSpec, generate_synthetic_kb_task

    task = generate_synthetic_kb_task(SyntheticKBSpec(seed=4))
    questions, corpus = tmp_path / "mine.jsonl.gz", tmp_path / "kb.jsonl.gz"
    write_jsonl_gz(task.train[:40], questions)
    write_jsonl_gz(task.passages, corpus)
    cfg = load_config(
        overrides=[
            "data.dataset=jsonl", f"data.train_path={questions}", "data.dev_fraction=0.2",
            f"retrieval.corpus={corpus}", f"run.output_dir={tmp_path / 'runs'}",
            "method.name=kard", "method.kard.candidates=4",
        ]
    )  # fmt: skip
    build = prepare_knowledge(cfg)
    assert (knowledge_cache_dir(cfg) / "indexes").is_dir()  # the index was built from the corpus
    knowledge = KnowledgeBase(build.path)
    assert len(knowledge.dev) == 8 and sum(len(r) for r in knowledge.train.values()) == 64
    assert build.manifest["request"]["retriever_version"].startswith("corpus-")
    missing = cfg.retrieval.model_copy(update={"corpus": str(tmp_path / "nope.jsonl")})
    from trainer.kard.retriever import RetrievalSetupError

    with pytest.raises(RetrievalSetupError, match="retrieval.corpus: .*nope.jsonl not found"):
        prepare_knowledge(cfg.model_copy(update={"retrieval": missing}))
