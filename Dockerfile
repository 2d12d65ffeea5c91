# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[embedded]'

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/tunggal --create-home tunggal
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER tunggal
WORKDIR /etc/tunggal
VOLUME ["/etc/tunggal", "/var/lib/tunggal"]
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz').status == 200 else 1)"
ENTRYPOINT ["tunggal"]
CMD ["run", "--config", "/etc/tunggal/tunggal.yaml"]
