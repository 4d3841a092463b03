# lpo with the Kubeflow extra; `docker run IMAGE optimize MODEL OUT ...`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /src
COPY pyproject.toml README.md ./
COPY lpo ./lpo
COPY components ./components
COPY operators ./operators
RUN pip install ".[kfp]" && rm -rf /src

RUN useradd --create-home --uid 1000 lpo
USER lpo
WORKDIR /work

ENTRYPOINT ["lpo"]
CMD ["--help"]
