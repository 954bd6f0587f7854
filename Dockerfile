# podpost: one image for every role (`podpost ingress|dispatcher|reconciler|...`).
#
#   docker build -t podpost .
#   docker run --rm podpost --help
#
# Stage 1 builds the wheel; stage 2 installs only that wheel (and its dependencies) into a
# clean python:3.11-slim and runs as an unprivileged numeric user, so Kubernetes can verify
# runAsNonRoot. The root filesystem may be read-only: byte code is compiled at build time
# and nothing is written at run time except to /tmp (an emptyDir in the Helm chart).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY podpost ./podpost
COPY schemas ./schemas
COPY runtime ./runtime
COPY admin ./admin
COPY console ./console
COPY ingress ./ingress
COPY dispatcher ./dispatcher
COPY reconciler ./reconciler
RUN pip wheel --no-deps --wheel-dir /dist .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="podpost" \
      org.opencontainers.image.description="Policy-based SMTP relay for Kubernetes on NATS JetStream" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist/ /tmp/dist/
RUN pip install --compile /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && groupadd --system --gid 10001 podpost \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin podpost
WORKDIR /tmp
USER 10001:10001
# SMTP (the Service maps 25 onto it) and /healthz, /readyz, /metrics.
EXPOSE 2525 8080
ENTRYPOINT ["podpost"]
CMD ["--help"]
