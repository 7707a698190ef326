"""Entry point so ``python -m retrieval_service ...`` works from the repo root."""

from retrieval_service.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
