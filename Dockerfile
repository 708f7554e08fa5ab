# Legacy RunPod serverless worker: handler.py (one image per job, legacy signing "image_url|timestamp").
# The always-on pod service has its own image (Dockerfile.pod). Build: docker build -t clip-serverless .
#
# The base is pinned (no `latest`). The torch wheel pinned in requirements.txt brings its own CUDA
# libraries (the nvidia-* packages in constraints.txt), so the host's NVIDIA driver must support
# that CUDA version; the base image supplies the OS, cuDNN-era system libraries and Python.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ARG CLIP_MODEL=ViT-B-32
ARG CLIP_PRETRAINED=laion2b_s34b_b79k

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/opt/hf-cache \
    CLIP_MODEL=${CLIP_MODEL} \
    CLIP_PRETRAINED=${CLIP_PRETRAINED}

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

WORKDIR /srv
COPY requirements.txt requirements-handler.txt constraints.txt ./
RUN pip install -r requirements.txt -r requirements-handler.txt -c constraints.txt

COPY client/ client/
RUN pip install --no-deps ./client
COPY app/ app/
COPY handler.py ./

# Fetch the weights at build time (the service's own loader, warm-up included) so a cold start
# downloads nothing.
RUN ALLOW_INSECURE_AUTH=1 DEVICE=cpu python -c \
    "from app.inference.loading import load_clip; from app.settings import Settings; load_clip(Settings())" \
    && mkdir -p /opt/hf-cache \
    && useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin clip \
    && chmod -R a+rX /opt/hf-cache /srv
ENV HF_HUB_OFFLINE=1

USER clip
# EMBEDDING_HMAC_SECRET must be set on the RunPod endpoint (the handler refuses to start without it).
CMD ["python", "handler.py"]
