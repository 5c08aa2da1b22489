# paper_unet: the U-Net paper's ISBI 2012 reproduction in a pinned CUDA environment.
#   docker build -t paper_unet .
#   docker run --gpus all -v "$PWD/data:/data" -v "$PWD/results:/opt/paper_unet/results" \
#              -v "$PWD/runs:/opt/paper_unet/runs" paper_unet [run_isbi.sh options]
# The base image's torch must equal the torch pin in pyproject.toml (tests/test_environment.py).
# Pin its digest for bit-for-bit rebuilds: docker buildx imagetools inspect <image> shows it;
# build with --build-arg BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime@sha256:<digest>.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="paper_unet" \
      org.opencontainers.image.description="Faithful U-Net (MICCAI 2015) and its ISBI 2012 experiment"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PAPER_UNET_PYTHON=python \
    PAPER_UNET_DATA=/data

WORKDIR /opt/paper_unet
COPY pyproject.toml README.md ./
COPY paper_unet ./paper_unet
COPY reproduction ./reproduction
COPY tests ./tests
# torch comes from the base image (same version as the pin); the rest is pinned in pyproject.toml
RUN python -m pip install --no-cache-dir -e ".[test]" \
    && python -c "import paper_unet, torch; print('paper_unet ready, torch', torch.__version__)"

VOLUME ["/data", "/opt/paper_unet/results", "/opt/paper_unet/runs"]
ENTRYPOINT ["bash", "reproduction/run_isbi.sh"]
CMD []
