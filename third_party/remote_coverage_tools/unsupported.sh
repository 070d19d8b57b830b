#!/bin/sh
echo "bazel coverage is not supported offline: @remote_coverage_tools is a local stub" \
  "(third_party/remote_coverage_tools)." >&2
exit 1
