# One image for every process; the command picks the service.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY protos protos
COPY common common
COPY services services
# Generated protobuf code goes to gen/ before the project is installed, so the editable install
# maps the `orchestrator` package (as `make install` does).
RUN pip install --no-cache-dir -e '.[dev]' \
    && mkdir -p gen \
    && python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
       protos/orchestrator/v1/jobs.proto \
    && find gen -mindepth 1 -type d -exec touch {}/__init__.py \; \
    && pip install --no-cache-dir --no-deps -e .

CMD ["python", "-m", "services.gateway"]
