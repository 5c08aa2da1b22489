# paper_unet: the U-Net paper's ISBI 2012 reproduction in a pinned CUDA environment.
#   docker build -t paper_unet .
#   docker run --gpus all --user "$(id -u):$(id -g)" -v "$PWD/data:/data" \
#              -v "$PWD/results:/opt/paper_unet/results" -v "$PWD/runs:/opt/paper_unet/runs" paper_unet [options]
# Checked by reproduction/docker_check.sh (on a stand-in CPU base where no registry is reachable).
# The base image's torch must equal the torch pin in pyproject.toml (tests/test_environment.py).
# Pin its digest for bit-for-bit rebuilds: docker buildx imagetools inspect <image> shows it;
# build with --build-arg BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime@sha256:<digest>.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="paper_unet" \
      org.opencontainers.image.description="Faithful U-Net (MICCAI 2015) and its ISBI 2012 experiment"

# numba's compiled functions and matplotlib's settings go to /tmp: the image also runs under any uid
# (docker run --user "$(id -u):$(id -g)", so that the results on the host belong to the caller), and
# such a user cannot write into the installed package (numba's default cache: "no locator available")
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PAPER_UNET_PYTHON=python \
    PAPER_UNET_DATA=/data \
    NUMBA_CACHE_DIR=/tmp/numba_cache \
    MPLCONFIGDIR=/tmp/matplotlib

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
