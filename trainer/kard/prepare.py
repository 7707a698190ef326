"""Build (or reuse) the knowledge dataset for a config: the work of a pipeline `knowledge` stage.

    python -m trainer.kard.prepare CONFIG.yaml [section.key=value ...]     # in this process, no Ray

Pipelines run the same function with their queries spread over Ray Data actors (ray_jobs/knowledge_stage.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from trainer.config.loader import load_config, split_config_args
from trainer.config.schema import ExperimentConfig
from trainer.data.registry import default_corpus, load_splits
from trainer.kard.knowledge import KnowledgeBuild, LocalQueries, QueryExecutor, build_knowledge
from trainer.kard.retriever import RetrieverSpec, resolve_retriever

ExecutorFactory = Callable[[RetrieverSpec, ExperimentConfig], QueryExecutor]


def knowledge_cache_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.retrieval.cache_dir or Path(cfg.run.output_dir) / "knowledge")


def local_executor(spec: RetrieverSpec, cfg: ExperimentConfig) -> QueryExecutor:
    return LocalQueries(spec, cfg.data.verifier_model)


def prepare_knowledge(cfg: ExperimentConfig, executor_factory: ExecutorFactory = local_executor) -> KnowledgeBuild:
    """Resolve the retriever (building an embedded index if needed), then find or build the dataset."""
    cache_dir = knowledge_cache_dir(cfg)
    splits = load_splits(cfg.data, cfg.run.seed)
    spec = resolve_retriever(cfg.retrieval, cache_dir, default_corpus(cfg.data, cache_dir))
    version = spec.corpus_version
    if version is None:  # an index or service we did not build: ask it what it serves
        with spec.open() as retriever:
            version = retriever.version()
    return build_knowledge(cfg, splits, spec, executor_factory(spec, cfg), cache_dir, version)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", help="[CONFIG.yaml] then dotted overrides")
    cfg = load_config(*split_config_args(parser.parse_args(argv).args))
    build = prepare_knowledge(cfg)
    print(json.dumps({"path": str(build.path), "reused": build.reused, **build.manifest["metrics"]}, indent=2))


if __name__ == "__main__":
    main()
