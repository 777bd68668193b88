# edgeprune CLI with the same pinned dependency set the README installs (constraints.txt).
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 edgeprune
WORKDIR /opt/edgeprune
COPY setup.py setup.cfg pyproject.toml constraints.txt README.md ./
COPY edgeprune ./edgeprune
COPY targets ./targets
COPY calibration ./calibration
RUN pip install --no-cache-dir -c constraints.txt .

USER edgeprune
WORKDIR /work
ENV TF_CPP_MIN_LOG_LEVEL=3
ENTRYPOINT ["edgeprune"]
CMD ["--help"]
