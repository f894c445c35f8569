# lkmedia worker image: `lkmedia egress` (the default) reads the Go egress's config from
# EGRESS_CONFIG_FILE / EGRESS_CONFIG_BODY, like livekit/egress.
#
# Stage 1 builds the wheel; stage 2 is the runtime: Debian bookworm with the media tools
# the worker calls (ffmpeg for SRT relays; Chromium, Xvfb, PulseAudio and fonts for the
# Chrome engine: each Chrome job starts its own display and sound server), run as a
# non-root user. livekit-client (the template page's SDK) comes from npm in its own stage. Checked with hadolint (tests/unit/test_deploy.py); see docs/deployment.md
# for CPU/memory settings.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lkmedia ./lkmedia
# The extras' libraries too (uploads to GCS, Azure Blob, Alibaba OSS): stage 2 installs every wheel.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[gcp,azure,oss]"

FROM node:20-bookworm-slim AS template
WORKDIR /npm
RUN npm install --no-audit --no-fund livekit-client@2.23.0

FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    MALLOC_MMAP_THRESHOLD_=131072
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ffmpeg chromium xvfb pulseaudio pulseaudio-utils fonts-noto-core fonts-noto-color-emoji fonts-liberation2 tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 lkmedia
COPY --from=build /wheels /wheels
COPY --from=template /npm/node_modules/livekit-client/dist/livekit-client.umd.js \
     /usr/share/lkmedia/node_modules/livekit-client/dist/livekit-client.umd.js
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /home/lkmedia
# health_port in the config (8080 here by convention) answers GET / with the Go egress's JSON.
EXPOSE 8080
# tini passes SIGTERM on (drain) and reaps ffmpeg/Chromium children.
ENTRYPOINT ["/usr/bin/tini", "--", "lkmedia"]
CMD ["egress"]
