# Runs as `bash -eo pipefail`; values arrive in the environment only.
echo "packaging ${ARTIFACT}"
echo "package=${ARTIFACT%.tgz}.deb" >> "$RUNBOOK_OUTPUT"
