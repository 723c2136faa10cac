# shellcheck shell=sh
# Environment for cellfarm tests and the demo. Source it, do not run it:
#   . scripts/env.sh
# Every value keeps what the caller already set. No `set -e` here on purpose:
# it would leak into the caller's interactive shell.

# Local services started by scripts/services.sh.
export CELLFARM_TEST_AMQP="${CELLFARM_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export CELLFARM_TEST_PG="${CELLFARM_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"
export CELLFARM_TEST_REDIS="${CELLFARM_TEST_REDIS:-redis://127.0.0.1:6379}"
export CELLFARM_TEST_S3="${CELLFARM_TEST_S3:-http://127.0.0.1:8014}"
export CELLFARM_TEST_EC2="${CELLFARM_TEST_EC2:-http://127.0.0.1:5000}"

# Credentials s3s-fs was started with; moto accepts any.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-cellfarm}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-cellfarm-secret}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
# boto3/botocore and older SDKs read this name instead of AWS_REGION.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-$AWS_REGION}"
# Never let an AWS SDK probe the instance-metadata address: only loopback here.
export AWS_EC2_METADATA_DISABLED="${AWS_EC2_METADATA_DISABLED:-true}"

# One target dir outside the clone, so fresh clones (CI) reuse earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cellfarm-target}"

# rustup installs cargo and s3s-fs lands in ~/.cargo/bin.
case ":${PATH}:" in
    *":${HOME:-/root}/.cargo/bin:"*) ;;
    *) export PATH="${HOME:-/root}/.cargo/bin:${PATH}" ;;
esac
