#!/usr/bin/env bash
# Builds MinIO (the S3 server the upload tests start) into $LKMEDIA_BIN (scripts/lib.sh:
# ~/.cache/lkmedia/bin) with `go install`.
# A no-op when the pinned version is already there. MinIO publishes no semver tags, so
# the pin is the module proxy's pseudo-version of a master commit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
BIN=$LKMEDIA_BIN
stamp=$BIN/.minio-$MINIO_VERSION

if [ -x "$BIN/minio" ] && [ -f "$stamp" ]; then exit 0; fi
need_go MinIO
mkdir -p "$BIN"
echo "install_s3_server: building MinIO $MINIO_VERSION (several minutes the first time)" >&2
GOBIN=$BIN GOFLAGS=-buildvcs=false go install "github.com/minio/minio@$MINIO_VERSION"
rm -f "$BIN"/.minio-* && touch "$stamp"
