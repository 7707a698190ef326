"""Kubernetes for ReasonDistill: render a RayJob for a run, check manifests offline.

    python -m ray_jobs.k8s render CONFIG [section.key=value ...] --image REGISTRY/job:TAG [--namespace NS]
        [--output FILE] [--from-kustomize k8s/overlays/gpu] [--use-cluster reasondistill] [--name NAME]
        [--tracking-uri URL] [--storage-path s3://...|/mnt/checkpoints/...] [--data-dir /data/shared]
    python -m ray_jobs.k8s render CONFIG ... | kubectl apply -f -
    python -m ray_jobs.k8s check FILE|- [...]      # schema validation + security lint (exit 1 on findings)
    kubectl kustomize k8s/overlays/gpu | python -m ray_jobs.k8s check -

CONFIG is a training config or a pipeline file (top-level `pipeline:`), exactly as for ray_jobs.submit; the
RayJob carries the same payload. Paths and URIs must be the pods' own: unset ones get the in-cluster defaults
(MLflow http://mlflow:5000, checkpoints on the ray-checkpoints volume, data on /data/shared) and any path or
URI of this machine (a sqlite: store, a relative path, localhost) is an error naming the field.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ray_jobs.k8s.lint import lint_document
from ray_jobs.k8s.placement import ClusterTargets
from ray_jobs.k8s.validation import SchemaUnavailable, load_documents, validate_document

DEFAULT_CRD_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "schemas"


def _render(args: argparse.Namespace) -> int:
    image = args.image or os.environ.get("REASONDISTILL_IMAGE")
    if not image:
        print("error: --image: the job image you built and pushed (or REASONDISTILL_IMAGE)", file=sys.stderr)
        return 2
    defaults = ClusterTargets()
    targets = ClusterTargets(
        tracking_uri=args.tracking_uri or defaults.tracking_uri,
        storage_path=args.storage_path or defaults.storage_path,
        data_dir=args.data_dir or defaults.data_dir,
        retrieval_url=args.retrieval_url or defaults.retrieval_url,
    )
    manifest_out = sys.stdout
    # stdout carries only the manifest (`render ... | kubectl apply -f -`): whatever the libraries print while
    # loading (DeepSpeed logs to stdout on import) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        from ray_jobs.k8s.render import RenderError, render, to_yaml
        from trainer.config.loader import ConfigError

        try:
            rendered = render(
                args.args,
                image=image,
                namespace=args.namespace,
                name=args.name,
                targets=targets,
                kustomize_dir=Path(args.from_kustomize) if args.from_kustomize else None,
                existing_cluster=args.use_cluster,
                timeout_s=args.timeout,
            )
        except (ConfigError, RenderError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    text = to_yaml(rendered.manifest)
    if args.output:
        Path(args.output).write_text(text)
    else:
        manifest_out.write(text)
        manifest_out.flush()
    print(rendered.summary(), file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    problems = 0
    for source in args.files:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        for doc in load_documents(text):
            try:
                issues = [*validate_document(doc, Path(args.schemas)), *lint_document(doc)]
            except SchemaUnavailable as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            for issue in issues:
                print(f"{source}: {issue}")
            problems += len(issues)
    print(f"{problems} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ray_jobs.k8s", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_render = sub.add_parser("render", help="write the RayJob manifest for a training config or a pipeline")
    p_render.add_argument("args", nargs="+", help="CONFIG.yaml then dotted overrides")
    p_render.add_argument("--image", help="the job image (default: $REASONDISTILL_IMAGE)")
    p_render.add_argument("--namespace", default="reasondistill")
    p_render.add_argument("--name", help="RayJob name (default: run or pipeline name + payload hash)")
    p_render.add_argument("--output", "-o", help="write here instead of stdout")
    p_render.add_argument("--tracking-uri", help="MLflow for configs without tracking.tracking_uri")
    p_render.add_argument("--storage-path", help="Ray Train storage for configs without run.storage_path")
    p_render.add_argument("--data-dir", help="shared data in the pods for configs without data.data_dir")
    p_render.add_argument("--retrieval-url", help="retrieval service for retrieval.mode=http without a url")
    p_render.add_argument("--from-kustomize", metavar="DIR", help="take the Ray pod specs from this overlay")
    p_render.add_argument("--use-cluster", metavar="NAME", help="submit to this running RayCluster instead")
    p_render.add_argument("--timeout", type=int, help="activeDeadlineSeconds of the job")
    p_render.set_defaults(func=_render)
    p_check = sub.add_parser("check", help="validate manifests against the schemas and lint their security")
    p_check.add_argument("files", nargs="+", help="YAML files, or - for stdin")
    p_check.add_argument("--schemas", default=str(DEFAULT_CRD_DIR), help="CRD directory (kuberay/, eck/)")
    p_check.set_defaults(func=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
