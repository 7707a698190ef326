# syntax=docker/dockerfile:1.7
# Images for running ReasonDistill on Kubernetes (k8s/). Three targets:
#
#   job        Ray head/workers and the RayJob driver: CUDA torch, DeepSpeed with fused Adam and CPU Adam
#              built ahead of time, this repository, requirements.txt exactly as pinned.
#   retrieval  the retrieval service, its Elasticsearch indexer and its KARD reranker (`serve --reranker`): CPU
#              torch, retrieval_service and retrieval_core, no trainer (docker/requirements-retrieval.txt).
#   mlflow     the MLflow tracking server with PostgreSQL and S3 support (docker/requirements-mlflow.txt).
#
#   docker build --target job       -t $REGISTRY/reasondistill-job:$TAG .
#   docker build --target retrieval -t $REGISTRY/reasondistill-retrieval:$TAG .
#   docker build --target mlflow    -t $REGISTRY/reasondistill-mlflow:$TAG .
#
# Every pip install is constrained by constraints.txt (torch==2.13.0), so no dependency can replace the CUDA
# build of torch installed first. Images run as uid 1000 with code under /app, read-only at run time.

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=22.04
ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------------------------------
# Build stage: the CUDA toolkit (nvcc) is only needed to compile DeepSpeed's ops.
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION} AS job-build
ARG PYTHON_VERSION
# The CUDA build of torch 2.13.0 whose CUDA major version matches CUDA_VERSION: DeepSpeed refuses to compile
# ops when nvcc's major version differs from torch.version.cuda's.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# GPU architectures to compile DeepSpeed's kernels for: A100 (8.0), A10/L4/RTX (8.6, 8.9), H100/H200 (9.0).
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends \
      python${PYTHON_VERSION} python${PYTHON_VERSION}-dev python${PYTHON_VERSION}-venv build-essential ninja-build \
 && rm -rf /var/lib/apt/lists/*
RUN python${PYTHON_VERSION} -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.txt constraints.txt ./
# 1. torch first, from the CUDA index (PyPI's default wheel may be another CUDA build).
RUN pip install --upgrade pip \
 && pip install -c constraints.txt --index-url ${TORCH_INDEX_URL} --extra-index-url https://pypi.org/simple \
      "$(grep '^torch==' requirements.txt)"
# 2. DeepSpeed with its fused Adam (GPU) and CPU Adam (ZeRO-Offload) kernels built now, not JIT-compiled on
#    first use (~2 min per op and per node, with -march=native on whatever node runs it). No build isolation,
#    so setup.py sees the CUDA torch above; the other ops stay JIT-able.
RUN DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
    pip install --no-build-isolation -c constraints.txt "$(grep '^deepspeed==' requirements.txt)"
# 3. Everything else exactly as pinned; `pip check` fails the build on any conflict.
RUN pip install -c constraints.txt -r requirements.txt \
 && pip check \
 && python -c "import torch, deepspeed; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
 && ds_report

# ---------------------------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION} AS job
ARG PYTHON_VERSION
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python${PYTHON_VERSION} libgomp1 \
 && apt-get purge -y software-properties-common && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray
COPY --from=job-build /opt/venv /opt/venv
COPY --chown=root:root . /app
# /app is importable from any working directory (Ray's job driver and workers start elsewhere); Python must
# not try to write bytecode into the read-only root filesystem.
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/home/ray HF_HOME=/home/ray/.cache/huggingface TORCH_EXTENSIONS_DIR=/home/ray/.cache/torch_extensions \
    OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
WORKDIR /app
USER 1000:1000

# ---------------------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS retrieval
# The reranker runs on the pod's CPUs: torch's CPU build comes from this index (PyPI's Linux wheel is the CUDA
# one, gigabytes of libraries no retrieval pod uses); a CPU build sorts above PyPI's (2.13.0+cpu > 2.13.0).
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/requirements-retrieval.txt constraints.txt /tmp/
RUN pip install -c /tmp/constraints.txt --index-url ${TORCH_CPU_INDEX_URL} --extra-index-url https://pypi.org/simple \
      -r /tmp/requirements-retrieval.txt \
 && pip check \
 && python -c "import torch; assert torch.__version__.startswith('2.13.0') and torch.version.cuda is None, torch.__version__" \
 && useradd --uid 1000 --create-home --shell /bin/bash app
COPY --chown=root:root retrieval_core /app/retrieval_core
COPY --chown=root:root retrieval_service /app/retrieval_service
# One torch thread per uvicorn worker (the manifests give each worker about one CPU); caches and downloads go to
# the writable /tmp, the root filesystem is read-only.
ENV PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HOME=/tmp/huggingface OMP_NUM_THREADS=1 \
    TOKENIZERS_PARALLELISM=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
WORKDIR /app
USER 1000:1000
ENTRYPOINT ["python", "-m", "retrieval_service"]

# ---------------------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS mlflow
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/requirements-mlflow.txt constraints.txt /tmp/
RUN pip install -c /tmp/constraints.txt -r /tmp/requirements-mlflow.txt && pip check \
 && useradd --uid 1000 --create-home --shell /bin/bash mlflow
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
WORKDIR /home/mlflow
USER 1000:1000
ENTRYPOINT ["mlflow"]
