# The worker image used by docker-compose.yml: the library and its examples.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY faust_backpressure ./faust_backpressure
COPY examples ./examples
RUN pip install --no-cache-dir .
CMD ["faust", "-A", "examples.demo_app", "worker", "--without-web", "-l", "info"]
