#!/usr/bin/env bash
# The soak (issue 9): the parts as chapper serve processes beside the
# embedded stores at 7,000 records/s with faults injected. Not built yet.
set -euo pipefail
echo "make soak: not implemented yet (issue 9, soak); the crash and fault tests in make test cover the faults" >&2
exit 1
