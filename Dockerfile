# syntax=docker/dockerfile:1
# FieldFlow: the Streamlit app, and the same image for Dask schedulers and workers.
#
#   docker build -t fieldflow .                                    # CPU torch (default)
#   docker build -t fieldflow:gpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#                                   # CUDA torch: PyPI's Linux torch wheels bundle CUDA; run
#                                   # with the NVIDIA container toolkit (--gpus all)
#   docker run -p 8501:8501 -e PC_SDK_SUBSCRIPTION_KEY -v fieldflow-cache:/cache fieldflow
#
# No secret is baked in: PC_SDK_SUBSCRIPTION_KEY (optional, Sentinel-1 on Planetary Computer)
# is passed at run time only.

ARG PYTHON_IMAGE=python:3.11-slim
ARG NODE_IMAGE=node:22-slim

# --- the map's browser files (Leaflet, leaflet-draw, jQuery, Bootstrap) from npm -------------
FROM ${NODE_IMAGE} AS static
WORKDIR /build
COPY package.json package-lock.json ./
COPY scripts/copy_static.js scripts/copy_static.js
# npm's postinstall (scripts/copy_static.js) copies them into app/static/vendor.
RUN npm ci --no-audit --no-fund && test -f app/static/vendor/leaflet/leaflet.js

# --- the runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# torch is installed first from this index: the CPU wheels by default (small, no CUDA);
# https://pypi.org/simple gives the CUDA build for GPU workers.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    FIELDFLOW_CACHE_DIR=/cache \
    FIELDFLOW_DATA_DIR=/data \
    FIELDFLOW_MODELS_DIR=/models \
    MPLCONFIGDIR=/tmp/matplotlib \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

WORKDIR /app

# rasterio, pyproj, shapely, pyogrio and netCDF4 wheels bundle GDAL, PROJ, GEOS and HDF5:
# no system packages are needed. The CPU wheel's version is 2.13.0+cpu, which satisfies the
# torch==2.13.0 pin of requirements.txt, so the second install keeps it.
COPY requirements.txt ./
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install -r requirements.txt

RUN groupadd --gid 10001 fieldflow \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin fieldflow \
    && mkdir -p /cache /data /results /models \
    && chown fieldflow:fieldflow /cache /results /models

COPY .streamlit/ .streamlit/
COPY assets/ assets/
COPY core/ core/
# Dask reads /etc/dask/: `dask worker` starts its processes with glibc's own allocation settings
# (core/dask.yaml says why).
COPY core/dask.yaml /etc/dask/fieldflow.yaml
COPY app/ app/
COPY --from=static /build/app/static/vendor/ app/static/vendor/

# numeric, so orchestrators can check runAsNonRoot
USER 10001:10001

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=40s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]

CMD ["streamlit", "run", "app/main.py", "--server.address", "0.0.0.0", "--server.port", "8501", "--server.headless", "true"]
