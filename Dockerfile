# Placeholder image (the service image comes later): builds a wheel in one stage and
# installs it with the runtime media tools in a slim Debian bookworm stage, run as a
# non-root user.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lkmedia ./lkmedia
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 lkmedia
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER lkmedia
WORKDIR /home/lkmedia
ENTRYPOINT ["lkmedia"]
CMD ["demo", "--out", "/home/lkmedia/out"]
