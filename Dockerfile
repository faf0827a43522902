# The serving image: MLServer 1.7 + this project's verified scikit-learn runtime.
# Build from the repository root:  docker build -t <registry>/serving-runtime:0.1.0 .
# Seldon Core runs it as the model container of a predictor (componentSpecs); the model folder
# (model.joblib, model-settings.json, metadata.json) is mounted or downloaded to /mnt/models.
FROM python:3.12-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLSERVER_MODELS_DIR=/mnt/models \
    MLSERVER_HTTP_PORT=9000 \
    MLSERVER_GRPC_PORT=9500 \
    MLSERVER_METRICS_PORT=6000 \
    MLSERVER_PARALLEL_WORKERS=0 \
    MLSERVER_MODEL_MAX_BATCH_SIZE=32 \
    MLSERVER_MODEL_MAX_BATCH_TIME=0.001

WORKDIR /opt/serving
COPY pyproject.toml constraints.txt README.md ./
COPY serving ./serving
RUN pip install -c constraints.txt . \
 && useradd --uid 1000 --create-home mlserver \
 && mkdir -p /mnt/models && chown mlserver /mnt/models

# Pod Security "restricted": a numeric non-root user.
USER 1000
EXPOSE 9000 9500 6000
CMD ["sh", "-c", "mlserver start ${MLSERVER_MODELS_DIR}"]
