# One image for every pinet service: `pinet <service>` picks which.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 nftables conntrack ipvsadm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pinet ./pinet
COPY services ./services
RUN pip install --no-cache-dir .
ENTRYPOINT ["pinet"]
