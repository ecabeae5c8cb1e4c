# One image for every process; the command picks the service:
#   python -m services.gateway | services.video_worker | services.story_worker | services.simulator
# Build: docker build -t generation-orchestrator .   (docker-compose.yml builds it for the stack)

# --- the project's runtime dependencies (a layer that survives source edits) ---
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# --- generated protobuf code (what `make protos` does, minus the .pyi stubs) ---
# grpcio-tools is constrained to the grpcio/protobuf installed above, so the generated code never
# asks for a newer runtime than the image has.
FROM base AS protos
RUN pip freeze > /tmp/constraints.txt \
    && pip install -c /tmp/constraints.txt 'grpcio-tools>=1.70,<2'
COPY protos protos
RUN mkdir -p gen \
    && python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
       $(find protos -name '*.proto') \
    && find gen -mindepth 1 -type d -exec touch {}/__init__.py \;

# --- the image ---
FROM base
COPY --from=protos /app/gen gen
COPY README.md ./
COPY protos protos
COPY common common
COPY services services
COPY orchestrator_client orchestrator_client
# gen/ exists before the project is installed, so the editable install maps the `orchestrator`
# package to gen/orchestrator (as `make install` does).
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin orchestrator \
    && mkdir -p /app/data /data/output \
    && chown orchestrator:orchestrator /app/data /data/output
USER orchestrator
ENV OUTPUT_ROOT=/data/output
# gRPC, HTTP side port, a worker's METRICS_ADDR, the simulator.
EXPOSE 50051 8080 9100 8100
CMD ["python", "-m", "services.gateway"]
