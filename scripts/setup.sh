#!/usr/bin/env bash
# Set up everything edgeprune needs in ./.venv from a fresh clone on a fresh machine.
#   bash scripts/setup.sh          # runtime only
#   bash scripts/setup.sh --test   # plus the test tools and the system packages the tests use
set -euo pipefail
cd "$(dirname "$0")/.."

with_test=0
[ "${1:-}" = "--test" ] && with_test=1

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
extras=""
[ "$with_test" = 1 ] && extras="[test,hub]"  # the tests cover the keras-hub extra too
echo "[setup] installing edgeprune$extras with the pinned set in constraints.txt"
# The one filter: setuptools' editable finder prints a notice about folders named like the
# package on every install; nothing else is hidden.
PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" \
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".$extras"

if [ "$with_test" = 1 ]; then
  # System packages the tests drive for real, installed in one apt-get run:
  #   openssh-server        the remote-target tests start a real sshd on 127.0.0.1
  #   qemu-user-static, binfmt-support, debootstrap
  #                         the emulated tier (pytest -m emulated) builds an arm64 Debian once
  #   dataset-fashion-mnist the Fashion-MNIST benchmarks' loader and smoke tests
  #   chromium              report.html is rendered headless (screenshot + DOM checks)
  #   libusb-1.0-0          tflite-support's metadata reader (below) imports it
  #   postgresql            the shared-study search tests start initdb/pg_ctl on 127.0.0.1
  missing=""
  [ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
  command -v qemu-aarch64-static >/dev/null || missing="$missing qemu-user-static"
  command -v update-binfmts >/dev/null || missing="$missing binfmt-support"
  command -v debootstrap >/dev/null || missing="$missing debootstrap"
  [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || missing="$missing dataset-fashion-mnist"
  command -v chromium >/dev/null || missing="$missing chromium"
  ldconfig -p 2>/dev/null | grep -q libusb-1.0 || missing="$missing libusb-1.0-0"
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$missing postgresql"
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "[setup] installing$missing for the tests"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
      echo "[setup] warning: missing$missing and cannot apt-get install them; the tests that need them will be skipped" >&2
    fi
  fi
  # tflite-support's MetadataDisplayer is the reference reader of TFLite metadata in the tests. It
  # pins protobuf<4, which TensorFlow 2.21 cannot use, so it is installed without its dependencies
  # (only its metadata module, which needs flatbuffers and libusb, is used).
  .venv/bin/python -m pip install --quiet --no-deps tflite-support==0.4.4 \
    || echo "[setup] warning: tflite-support not installable; the metadata reader test will be skipped" >&2
fi
echo "[setup] done: $(.venv/bin/edgeprune --version)"
