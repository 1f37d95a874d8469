# One image for every role; the command picks it:
#   docker run IMAGE gateway | processors | sink | migrate | teams create --name NAME | sql "SELECT 1"
# Build: docker build -t eventpipe:local .   (docker-compose.yml and deploy/k8s use this image)
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its dependencies into a self-contained virtualenv ---------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/eventpipe
WORKDIR /src
# Dependencies first, in a layer of their own: placeholder packages with the real metadata pull them
# all, so a source change does not download them again. (Plain RUN steps: the legacy builder, e.g.
# under docker-compose 1.29, builds this file as well as BuildKit.) No local ClickHouse engine (the
# `local` extra) in the image: it points at a ClickHouse server (EVENTPIPE_CLICKHOUSE_URL).
COPY pyproject.toml README.md ./
RUN mkdir -p eventpipe gateway processors clickhouse \
    && touch eventpipe/__init__.py gateway/__init__.py processors/__init__.py clickhouse/__init__.py \
    && /opt/eventpipe/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/eventpipe/bin/pip install --no-cache-dir . \
    && rm -rf eventpipe gateway processors clickhouse build ./*.egg-info
# Then the package itself: a regular (non-editable) install, so the runtime stage gets site-packages,
# not sources.
COPY eventpipe ./eventpipe
COPY gateway ./gateway
COPY processors ./processors
COPY clickhouse ./clickhouse
RUN /opt/eventpipe/bin/pip install --no-cache-dir --no-deps --force-reinstall . \
    && /opt/eventpipe/bin/eventpipe --help >/dev/null

# --- runtime: the virtualenv, a non-root user, nothing else ----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="eventpipe" \
      org.opencontainers.image.description="PostHog-compatible event ingestion: HTTP -> Kafka -> Faust -> ClickHouse" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 eventpipe \
    && useradd --system --uid 10001 --gid eventpipe --home-dir /var/lib/eventpipe --shell /usr/sbin/nologin eventpipe \
    && install -d -o eventpipe -g eventpipe -m 0750 /var/lib/eventpipe
COPY --from=build /opt/eventpipe /opt/eventpipe
# EVENTPIPE_HOME holds run files (ready markers) and Faust data.
# EVENTPIPE_HOST=0.0.0.0 so the gateway is reachable from outside the container.
ENV PATH=/opt/eventpipe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EVENTPIPE_HOME=/var/lib/eventpipe \
    EVENTPIPE_HOST=0.0.0.0 \
    EVENTPIPE_PORT=8000
USER 10001:10001
WORKDIR /var/lib/eventpipe
EXPOSE 8000
ENTRYPOINT ["eventpipe"]
CMD ["gateway"]
